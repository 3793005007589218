"""PathModule: the path search of :mod:`connectivity.engine.verdicts` run by a Lightning Trainer.

The band (:class:`~connectivity.engine.band.ElasticBand`, an ``nn.Module`` whose one parameter is
the pivots of all pairs) and the frozen tail (always in eval mode) are the module's submodules.
Each training step is one batched forward and backward of all active pivots; the NEB
projection turns the gradient into the band's effective gradient before the optimiser step.
Pairs are decided by the same code as in :func:`connectivity.engine.verdicts.connect_points`
(:class:`~connectivity.engine.verdicts.Decisions`), and each new record is queued in ``decided`` for
callbacks to take (e.g. to save it at once).

The band runs in rounds, as in ``connect_points``: the first holds the pairs whose line fails;
with the exact check, a pair found off the target between pivots leaves its band, gets a pivot
inserted in each such stretch and joins the next round's band, which replaces the finished one
(with an optimiser of its own) within the same fit.

:class:`BandCheckpoint` saves the band, its optimiser and the queued pairs every few steps (one
file per rank), and :meth:`PathModule.resume_from` continues from such a file.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from connectivity.engine.band import ElasticBand, make_optimizer
from connectivity.engine.split import FrozenTail
from connectivity.engine.verdicts import (
    Certifier,
    Decisions,
    LineCheck,
    PairRecord,
    PathOptions,
    certification_stop,
    check_lines,
    check_range,
    working_precision,
)
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
        band: The band being optimised: every pair before the fit, then each round's band.
        band_rows: ``(band.pairs,)`` long: the pair (index into ``starts``) of each band row.
        decided: ``[(pair_index, record)]`` decided since a callback last emptied it.
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
        # work; the certifier itself is built where the fit starts, with the tail on its device
        # (its traced copy is no submodule, so it would not move, nor need pickling).
        Certifier.for_tail(self.tail, self.options)
        self.certifier: Certifier | None = None
        self.band: ElasticBand | None = None
        self.band_rows = torch.zeros(0, dtype=torch.long)
        self.decisions: Decisions | None = None
        self.decided: list[tuple[int, PairRecord]] = []
        # Pairs a band decided before a resume, restored from its checkpoint (not linear).
        self.restored = 0
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
        starts, ends = working_precision(starts.detach(), ends.detach())
        check_range(starts, ends, self.options.bounds)
        # The band of every pair, on its line: the Trainer's precision plugin converts it with
        # the module, and each round's band takes its ends and dtype from it.
        self.band = ElasticBand(
            starts,
            ends,
            max_steps=self.options.steps,
            labels=targets.detach().to(starts.device).long(),
            **self.options.band_options(),
        )
        self.band_rows = torch.arange(self.band.pairs, device=starts.device)

    def _band(self) -> ElasticBand:
        if self.band is None:
            raise RuntimeError("PathModule has no pairs: give starts, ends and targets")
        return self.band

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
        return make_optimizer(self.options.optimizer, [self._band().pivots], self.options.lr)

    @torch.no_grad()
    def on_fit_start(self) -> None:
        band = self._band()
        # The ends after the precision plugin's conversion: a float64 band (64-true) starts
        # from the line of that precision, as connect_points does, not from a rounded one.
        self._pairs = (band.starts, band.ends, band.labels)
        self.band_rows = torch.arange(band.pairs, device=band.starts.device)
        self.certifier = Certifier.for_tail(self.tail, self.options)
        self.decisions = Decisions(
            self.tail, band.labels, self._check(band), self.options, self._queue, self.certifier
        )
        self.decisions.decide_lines()
        self._stop = certification_stop(
            self.tail,
            self.options,
            self.decisions.check.log_probabilities.shape[-1],
            self.certifier,
        )
        if self._resume is not None:
            self._continue(self._resume)
        else:
            self.decisions.queue_lines()
            self._next_band()

    def _check(self, band: ElasticBand) -> LineCheck:
        if band.pairs == 0:  # a rank with no pairs of its own still takes part in the fit
            path = band.path
            ok = torch.zeros(0, dtype=torch.bool, device=path.device)
            return LineCheck(path, path.new_zeros(0, 0, 2), ok)
        return check_lines(
            self.tail, band.starts, band.ends, band.labels, self.options, self.certifier
        )

    def _make_band(self, rows: Tensor, num_pivots: int) -> ElasticBand:
        """A band of the pairs ``rows`` (of this module's pairs) with ``num_pivots`` pivots on
        their lines, in the working precision and on the device of the pairs' ends."""
        starts, ends, labels = self._pairs
        return ElasticBand(
            starts[rows],
            ends[rows],
            max_steps=self.options.steps,
            labels=labels[rows],
            **{**self.options.band_options(), "num_pivots": num_pivots},
        )

    def _use_band(self, band: ElasticBand, rows: Tensor) -> torch.optim.Optimizer:
        """Make ``band`` (of the pairs ``rows``) the one optimised, with a new optimiser."""
        self.band, self.band_rows = band, rows
        optimizer = make_optimizer(self.options.optimizer, [band.pivots], self.options.lr)
        self.trainer.strategy.optimizers = [optimizer]
        return optimizer

    def _next_band(self) -> None:
        """Replace the band by the next round's (see :class:`Decisions`), and again while the
        new one is done at once; with no pair waiting for a band, an empty band is left."""
        assert self.decisions is not None
        while True:
            next_round = self.decisions.next_round()
            if next_round is None:
                rows = self.band_rows[:0]
                self._use_band(self._make_band(rows, self.options.num_pivots), rows)
                return
            rows, initial, taken, anchored = next_round
            band = self._make_band(rows, initial.shape[1] - 2)
            band.pivots.data = initial[:, 1:-1].to(band.pivots.dtype).clone()
            band.steps.copy_(taken)
            band.anchored.copy_(anchored[:, 1:-1])
            self._use_band(band, rows)
            self._start(band)
            if not band.done:
                return

    def _start(self, band: ElasticBand) -> None:
        """Evaluate the fixed ends of a new band (a pair with a non-finite end is finished
        at once) and record the pairs it finished."""
        assert self.decisions is not None
        if band.pairs:
            energies = F.cross_entropy(
                self.tail(band.end_points()), band.end_labels(), reduction="none"
            )
            band.set_end_energies_(energies)
        self.decisions.decide_band(band, self.band_rows)

    def _continue(self, checkpoint: dict[str, Any]) -> None:
        """Go on from a band checkpoint: its band and optimiser (when it holds a band), then
        its queued pairs; the module's other pairs whose line fails start from their line.

        The pairs a band decided in earlier rounds get their saved records (``decided``). A
        file written before bands ran in rounds holds one band of every pair (no
        ``band_rows``, ``queued`` or ``decided``)."""
        assert self.decisions is not None
        state = checkpoint.get("band")
        pairs = self._pairs[0]
        rows = torch.as_tensor(checkpoint.get("band_rows", range(len(pairs))), dtype=torch.long)
        rows = rows.to(pairs.device)
        decided = checkpoint.get("decided", {})
        self.decisions.restore({int(i): PairRecord(**r) for i, r in decided.items()})
        self.restored = len(decided)
        self.decisions.requeue(checkpoint.get("queued", {}))
        self.decisions.restore_nudges(checkpoint.get("nudges", {}))
        if state is None or state["pivots"].shape[0] == 0:
            self.decisions.queue_lines()
            self._next_band()
            return
        self.decisions.queue_lines(skip=set(rows.tolist()))
        band = self._make_band(rows, state["pivots"].shape[1])
        band.load_state_dict(state)
        self._use_band(band, rows).load_state_dict(checkpoint["optimizer"])
        self._start(band)
        if band.done:
            self._next_band()

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

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        band = self._band()
        if not band.done:
            self._step(band)
            if band.done:
                self._next_band()
        # Stop only when every rank's bands are done: under DDP, Lightning runs a collective in
        # every training step, so a rank that stopped alone would leave the others waiting.
        strategy = self.trainer.strategy
        done = self._band().done
        self.trainer.should_stop = bool(strategy.reduce_boolean_decision(done, all=True))

    def _step(self, band: ElasticBand) -> None:
        """One evaluation of the active pivots and, for pairs still active, one update."""
        x = band.active_points().requires_grad_(True)
        labels = band.active_labels()
        with torch.enable_grad():
            logits = self.tail(x)
            energies = F.cross_entropy(logits, labels, reduction="none")
            (grad,) = torch.autograd.grad(energies.sum(), x)
        evaluated = band.active.clone()
        moved = band.project_(grad, energies, stop=self._stop)
        self.log_dict(
            {
                f"{self.space}/max_energy": energies.detach().max(),
                f"{self.space}/max_force": band.max_force[evaluated].max(),
                f"{self.space}/on_target": (logits.argmax(dim=-1) == labels).float().mean(),
                f"{self.space}/active_pairs": float(moved.sum()),
                f"{self.space}/pivots": float(band.num_pivots),
            },
            prog_bar=True,
            batch_size=1,
        )
        if moved.any():
            # The band's gradient is no scaled loss gradient: step the torch optimizer itself,
            # not through a precision plugin's grad scaler (16-mixed would unscale it).
            self.optimizers().optimizer.step()
            band.after_step_()
        assert self.decisions is not None
        self.decisions.decide_band(band, self.band_rows)

    def records(self) -> list[PairRecord]:
        """Verdicts and metrics of every pair, after ``trainer.fit``."""
        if self.decisions is None:
            raise RuntimeError("run trainer.fit(path_module) first")
        return self.decisions.in_order()


def _steps_taken(band: ElasticBand) -> int:
    """The most steps of a pair still in the band (of any pair once none is): the pairs of a
    later round bring the steps of their earlier rounds, and one that leaves the band must not
    hold the count still."""
    if band.pairs == 0:
        return 0
    active = band.steps[band.active]
    return int(active.max()) if active.numel() else int(band.steps.max())


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
        if pl_module.band is None or pl_module.decisions is None:
            return
        band = pl_module._band()
        # The band's own step count: the Trainer's global_step does not count steps of the
        # torch optimizer that the module takes itself.
        steps = _steps_taken(band)
        # Each round's band has more pivots than the last, and its steps only add up: the
        # band's size and total steps name one state (saved once, e.g. again on Ctrl-C).
        at = (band.num_pivots, int(band.steps.sum()))
        if band.done or steps == 0 or steps % every or at == self._saved_at:
            return
        self._saved_at = at
        state = {
            "band": band.state_dict(),
            "band_rows": pl_module.band_rows.tolist(),
            "queued": pl_module.decisions.queued(),
            "nudges": pl_module.decisions.nudges(),
            "decided": {
                i: compact(asdict(r)) for i, r in pl_module.decisions.band_records().items()
            },
            "optimizer": pl_module.optimizers().optimizer.state_dict(),
            "steps": steps,
            **pl_module.checkpoint_extra(),
        }
        write_tensor(self.path(trainer.global_rank), state)
        # Only after the new file is whole: what the old ones held is in it now.
        for old in pl_module.superseded_checkpoints():
            old.unlink(missing_ok=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, PathModule)
        # Once every rank is done (a rank's file may hold band states of other ranks' pairs).
        if trainer.strategy.reduce_boolean_decision(pl_module._band().done, all=True):
            self.path(trainer.global_rank).unlink(missing_ok=True)
            for old in pl_module.superseded_checkpoints():
                old.unlink(missing_ok=True)
