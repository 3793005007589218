"""PathModule: the path search (:class:`~connectivity.engine.search.PathSearch`) run by a
Lightning Trainer.

The module holds the frozen tail (always in eval mode) and, before the fit, the band of every
pair on its line (an :class:`~connectivity.engine.band.ElasticBand`, whose one parameter is
the pivots): the Trainer's precision plugin converts it with the module, and the search takes
its ends, in that precision, when the fit starts. From then on the search is
:class:`~connectivity.engine.search.PathSearch`, the same object that
:func:`~connectivity.engine.search.connect_points` loops over: each training step is one
:meth:`~connectivity.engine.search.PathSearch.step` (one batched forward and backward of all
active pivots, the NEB projection, one optimiser step, the decisions, and the next round's band
when one is done). Each new record is queued in ``decided`` for callbacks to take (e.g. to save
it at once).

:class:`BandCheckpoint` saves the search's band, its optimiser and the queued pairs every few
steps (one file per rank), and :meth:`PathModule.resume_from` continues from such a file.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from connectivity.engine.band import ElasticBand
from connectivity.engine.checks import Certifier
from connectivity.engine.decisions import Decisions, PairRecord
from connectivity.engine.optimizers import make_optimizer
from connectivity.engine.options import PathOptions
from connectivity.engine.search import Evaluation, PathSearch, prepare_pairs
from connectivity.engine.split import FrozenTail
from connectivity.store.files import write_tensor
from connectivity.store.records import compact


class PathModule(L.LightningModule):
    """Optimise one elastic band per pair with a Trainer.

    Run it with ``Trainer(max_epochs=1)``: its loader has one item per evaluation
    (``options.steps + 1``: the straight line, then one after every update; and two more per
    allowed back-off, which repeats an evaluation), and it stops the trainer itself once every
    pair is decided.

    Args:
        tail: The part of the classifier from the path's space to logits (a frozen copy is
            kept; the caller's module is not changed).
        starts: ``(pairs, *point_shape)`` first ends, or None to give the pairs later with
            :meth:`set_pairs` (before the Trainer's optimiser is configured, e.g. in ``setup``).
        ends: ``(pairs, *point_shape)`` second ends.
        targets: ``(pairs,)`` target class of each pair.
        options: Path options; ``steps`` bounds the optimisation of each pair.
        space: Name of the space, the prefix of the logged metrics
            (``<space>/max_energy``, ``<space>/max_force``, ``<space>/on_target``,
            ``<space>/active_pairs``, ``<space>/pivots``: pivots per pair of the current band).

    Attributes:
        search: The search, from the start of the fit (None before).
        decided: ``[(pair_index, record)]`` decided since a callback last emptied it.

    Raises:
        NotPiecewiseLinearError, NotBoundedError: ``options.certify`` ``"exact"`` (``"bounds"``)
            with a tail that is not piecewise linear (holds an operation bounds do not cover),
            here, before any work.
    """

    def __init__(
        self,
        tail: nn.Module,
        starts: Tensor | None = None,
        ends: Tensor | None = None,
        targets: Tensor | None = None,
        options: PathOptions | None = None,
        space: str = "path",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the band sets the pivots' gradient itself
        # The band's checkpoints hold the band, not the user's network (see state_dict).
        self.strict_loading = False
        self.options = options or PathOptions()
        self.space = space
        # A copy: freezing must not touch the caller's module.
        self.tail = FrozenTail(copy.deepcopy(tail))
        # certify="exact" on a tail that is not piecewise linear is refused here, before any
        # work; the search builds its own certifier where the fit starts, with the tail on its
        # device (its traced copy is no submodule, so it would not move, nor need pickling).
        Certifier.for_tail(self.tail, self.options, None if starts is None else starts[:1])
        # Every pair's band on its line, until the fit starts (see the module docstring).
        self.lines: ElasticBand | None = None
        self.search: PathSearch | None = None
        self.decided: list[tuple[int, PairRecord]] = []
        self._resume: dict[str, Any] | None = None
        if starts is not None:
            if ends is None or targets is None:
                raise ValueError("give starts, ends and targets together")
            self.set_pairs(starts, ends, targets)

    def set_pairs(self, starts: Tensor, ends: Tensor, targets: Tensor) -> None:
        """Give the pairs: their band starts on the straight line between the ends.

        Raises:
            InputError: ends outside ``options.bounds`` or not floating point.
        """
        starts, ends, targets = prepare_pairs(
            starts.detach(), ends.detach(), targets.detach(), self.options.bounds
        )
        self.lines = ElasticBand(starts, ends, self.options, labels=targets)

    @property
    def band(self) -> ElasticBand | None:
        """The band being optimised: every pair's before the fit, then each round's band."""
        return self.search.band if self.search is not None else self.lines

    @property
    def band_rows(self) -> Tensor:
        """``(band.pairs,)`` long: the pair (index into ``starts``) of each band row."""
        if self.search is not None:
            return self.search.rows
        pairs = 0 if self.lines is None else self.lines.pairs
        return torch.arange(pairs)

    @property
    def decisions(self) -> Decisions | None:
        """The search's records and queued pairs (None before the fit starts)."""
        return None if self.search is None else self.search.decisions

    @property
    def restored(self) -> int:
        """Pairs a band decided before a resume, restored from its checkpoint (not linear)."""
        return 0 if self.search is None else self.search.restored

    def _lines(self) -> ElasticBand:
        if self.lines is None:
            raise RuntimeError("PathModule has no pairs: give starts, ends and targets")
        return self.lines

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The tail is the user's network, fixed for the run: a band checkpoint holds the band.
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not k.startswith("tail."))

    def resume_from(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a :class:`BandCheckpoint` file (loaded with ``torch.load``): its band
        (pivots, per-pair state, optimiser state) and its queued pairs are restored when the
        fit starts. The module's pairs must be the ones the file was written for."""
        self._resume = checkpoint

    def train_dataloader(self) -> DataLoader:
        # One item per evaluation; the module stops the Trainer once every pair is decided.
        # A round's last evaluation takes no step, and a back-off costs at most two evaluations
        # that count no step (the blown-up one and the one of the path it returns to). Each
        # round's band has more pivots than the last, so there are at most
        # most_pivots - num_pivots + 1 rounds with the exact check, and one without.
        options = self.options
        rounds = 1 if options.certify == "sampled" else options.most_pivots - options.num_pivots + 1
        if self._resume is not None:
            # A band continued from a checkpoint may come before pairs that start from their
            # line or from a queued path with fewer pivots: one band more.
            rounds += 1
        evaluations = rounds * (options.steps + 1 + 2 * options.backoffs)
        return DataLoader(range(evaluations), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.options.optimizer, [self._lines().pivots], self.options.lr)

    @torch.no_grad()
    def on_fit_start(self) -> None:
        lines = self._lines()
        # The ends after the precision plugin's conversion: a float64 band (64-true) starts
        # from the line of that precision, as connect_points does, not from a rounded one.
        self.search = PathSearch(
            self.tail,
            lines.starts,
            lines.ends,
            lines.labels,
            self.options,
            on_record=self._queue,
            on_band=self._use_optimizer,
        )
        self.search.start(self._resume)

    def _use_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Hand a new band's optimiser to the Trainer (``optimizers()``)."""
        self.trainer.strategy.optimizers = [optimizer]

    def checkpoint_extra(self) -> dict[str, Any]:
        """Saved beside the band in each :class:`BandCheckpoint` (e.g. which pairs its rows
        are); nothing here."""
        return {}

    def superseded_checkpoints(self) -> list[Path]:
        """Band checkpoint files that this rank's own file replaces once it is written (e.g.
        those of ranks that no longer run, whose pairs it took over): removed after each save
        and when every pair is decided; none here."""
        return []

    def _queue(self, index: int, record: PairRecord) -> None:
        self.decided.append((index, record))

    def _search(self) -> PathSearch:
        if self.search is None:
            raise RuntimeError("run trainer.fit(path_module) first")
        return self.search

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        search = self._search()
        if not search.done:
            self._log(search.step())
        # Stop only when every rank's bands are done: under DDP, Lightning runs a collective in
        # every training step, so a rank that stopped alone would leave the others waiting.
        strategy = self.trainer.strategy
        self.trainer.should_stop = bool(strategy.reduce_boolean_decision(search.done, all=True))

    def _log(self, evaluation: Evaluation) -> None:
        self.log_dict(
            {
                f"{self.space}/max_energy": evaluation.max_energy,
                f"{self.space}/max_force": evaluation.max_force,
                f"{self.space}/on_target": evaluation.on_target,
                f"{self.space}/active_pairs": float(evaluation.active_pairs),
                f"{self.space}/pivots": float(evaluation.pivots),
            },
            prog_bar=True,
            batch_size=1,
        )

    def records(self) -> list[PairRecord]:
        """Verdicts and metrics of every pair, after ``trainer.fit``."""
        return self._search().records()


class BandCheckpoint(L.Callback):
    """Save the band every ``every_n_steps`` steps: its pivots, per-pair state and optimiser,
    which pairs its rows are (``band_rows``; its size is its pivots' shape), the pairs queued
    for later rounds with the paths they go on from (``queued``), the records of the pairs
    bands decided so far (``decided``), and what :meth:`PathModule.checkpoint_extra` adds
    (:class:`~connectivity.runs.paths.SpacePathModule`: the ids of the module's pairs, and the
    saved states of pairs other ranks took over, until they are decided).

    One file per rank (``<folder>/rank<k>.pt``; each rank has its own pairs), written to a
    temporary file and renamed, so a kill leaves the previous checkpoint whole; then the files
    it replaces (:meth:`PathModule.superseded_checkpoints`) are removed. Continue with
    :meth:`PathModule.resume_from`. The files are removed once every rank's pairs are decided.

    Args:
        folder: Where the files go.
        every_n_steps: Steps between saves.
    """

    def __init__(self, folder: str | Path, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.folder = Path(folder)
        self.every_n_steps = every_n_steps
        self._saved_at: tuple[int, int] | None = None

    def path(self, rank: int) -> Path:
        return self.folder / f"rank{rank}.pt"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        self._save(trainer, pl_module, every=self.every_n_steps)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # An interrupted band (Ctrl-C) keeps every step it took, not only the last multiple.
        if isinstance(exception, KeyboardInterrupt):
            self._save(trainer, pl_module, every=1)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, every: int) -> None:
        assert isinstance(pl_module, PathModule)
        search = pl_module.search
        if search is None:
            return
        band = search.band
        # The band's own step count: the Trainer's global_step does not count steps of the
        # torch optimizer that the search takes itself.
        steps = search.steps_taken()
        # Each round's band has more pivots than the last, and its steps only add up: the
        # band's size and total steps name one state (saved once, e.g. again on Ctrl-C).
        at = (band.num_pivots, int(band.steps.sum()))
        if band.done or steps == 0 or steps % every or at == self._saved_at:
            return
        self._saved_at = at
        state = search.checkpoint()
        state["decided"] = {i: compact(asdict(r)) for i, r in state["decided"].items()}
        state = {**state, "steps": steps, **pl_module.checkpoint_extra()}
        write_tensor(self.path(trainer.global_rank), state)
        # Only after the new file is whole: what the old ones held is in it now.
        for old in pl_module.superseded_checkpoints():
            old.unlink(missing_ok=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, PathModule)
        # Once every rank is done (a rank's file may hold band states of other ranks' pairs).
        if trainer.strategy.reduce_boolean_decision(pl_module._search().done, all=True):
            self.path(trainer.global_rank).unlink(missing_ok=True)
            for old in pl_module.superseded_checkpoints():
                old.unlink(missing_ok=True)
