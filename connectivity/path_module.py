"""PathModule: the path search of :mod:`connectivity.verdicts` run by a Lightning Trainer.

The band (:class:`~connectivity.neb.ElasticBand`, an ``nn.Module`` whose one parameter is the
pivots of all pairs) and the frozen tail (always in eval mode) are the module's submodules.
Each training step is one batched forward and backward of all active pivots; the NEB
projection turns the gradient into the band's effective gradient before the optimiser step.
Pairs are decided by the same code as in :func:`connectivity.verdicts.connect_points`
(:class:`~connectivity.verdicts.Decisions`), and each new record is queued in ``decided`` for
callbacks to take (e.g. to save it at once).

:class:`BandCheckpoint` saves the band and its optimiser every few steps (one file per rank),
and :meth:`PathModule.resume_from` continues a band from such a file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from connectivity.neb import ElasticBand, make_optimizer
from connectivity.split import FrozenTail
from connectivity.verdicts import (
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
            ``<space>/active_pairs``).

    Attributes:
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
        self.decisions: Decisions | None = None
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
        starts, ends = working_precision(starts.detach(), ends.detach())
        check_range(starts, ends, self.options.bounds)
        self.band = ElasticBand(
            starts,
            ends,
            max_steps=self.options.steps,
            labels=targets.detach().to(starts.device).long(),
            **self.options.band_options(),
        )

    def _band(self) -> ElasticBand:
        if self.band is None:
            raise RuntimeError("PathModule has no pairs: give starts, ends and targets")
        return self.band

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The tail is the user's network, fixed for the run: a band checkpoint holds the band.
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not k.startswith("tail."))

    def resume_from(self, checkpoint: dict[str, Any]) -> None:
        """Continue the band of a :class:`BandCheckpoint` file (loaded with ``torch.load``):
        its pivots, per-pair state and optimiser state are restored when the fit starts."""
        self._band().load_state_dict(checkpoint["band"])
        self._resume = checkpoint

    def train_dataloader(self) -> DataLoader:
        # One item per step; the first evaluation (the straight line) comes before any update.
        # A back-off costs at most two evaluations that count no step: the blown-up one and
        # the one of the path it returns to.
        evaluations = self.options.steps + 1 + 2 * self.options.backoffs
        return DataLoader(range(evaluations), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.options.optimizer, [self._band().pivots], self.options.lr)

    @torch.no_grad()
    def on_fit_start(self) -> None:
        band = self._band()
        if self._resume is not None:
            self.optimizers().optimizer.load_state_dict(self._resume["optimizer"])
        elif _steps_taken(band) == 0:
            # A precision plugin may have changed the dtype (64-true): start from the line of
            # that precision, as connect_points does, not from a rounded float32 line.
            band.pivots.data = band.initial_pivots()
        targets = band.labels
        self.certifier = Certifier.for_tail(self.tail, self.options)
        self.decisions = Decisions(
            self.tail, targets, self._check(band), self.options, self._queue, self.certifier
        )
        self.decisions.decide_lines()
        band.retire_(self.decisions.check.ok)  # the line already answers for these pairs
        if band.pairs:
            energies = F.cross_entropy(
                self.tail(band.end_points()), band.end_labels(), reduction="none"
            )
            band.set_end_energies_(energies)
        self.decisions.decide_band(band, self._rows(band))
        # No pivots are inserted here (the band's shape is fixed for the fit): a band found off
        # the target between pivots goes on until it passes or runs out of steps.
        self._stop = certification_stop(
            self.tail,
            self.options,
            self.decisions.check.log_probabilities.shape[-1],
            self.certifier,
        )

    def _check(self, band: ElasticBand) -> LineCheck:
        if band.pairs == 0:  # a rank with no pairs of its own still takes part in the fit
            path = band.path
            ok = torch.zeros(0, dtype=torch.bool, device=path.device)
            return LineCheck(path, path.new_zeros(0, 0, 2), ok)
        return check_lines(
            self.tail, band.starts, band.ends, band.labels, self.options, self.certifier
        )

    @staticmethod
    def _rows(band: ElasticBand) -> Tensor:
        return torch.arange(band.pairs, device=band.steps.device)

    def checkpoint_extra(self) -> dict[str, Any]:
        """Saved beside the band in each :class:`BandCheckpoint` (e.g. which pairs its rows
        are); nothing here."""
        return {}

    def _queue(self, index: int, record: PairRecord) -> None:
        self.decided.append((index, record))

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        band = self._band()
        if not band.done:
            self._step(band)
        # Stop only when every rank's band is done: under DDP, Lightning runs a collective in
        # every training step, so a rank that stopped alone would leave the others waiting.
        strategy = self.trainer.strategy
        self.trainer.should_stop = bool(strategy.reduce_boolean_decision(band.done, all=True))

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
        self.decisions.decide_band(band, self._rows(band))

    def records(self) -> list[PairRecord]:
        """Verdicts and metrics of every pair, after ``trainer.fit``."""
        if self.decisions is None:
            raise RuntimeError("run trainer.fit(path_module) first")
        return self.decisions.in_order()


def _steps_taken(band: ElasticBand) -> int:
    return int(band.steps.max()) if band.pairs else 0


class BandCheckpoint(L.Callback):
    """Save the band (pivots, per-pair state, optimiser) every ``every_n_steps`` steps.

    One file per rank (``<folder>/rank<k>.pt``; each rank has its own pairs), written to a
    temporary file and renamed, so a kill leaves the previous checkpoint whole. Continue with
    :meth:`PathModule.resume_from`. The file is removed once the band is done.

    Args:
        folder: Where the files go.
        every_n_steps: Steps between saves.
    """

    def __init__(self, folder: str | Path, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.folder = Path(folder)
        self.every_n_steps = every_n_steps
        self._saved_at = -1

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
        if band.done or steps == 0 or steps % every or steps == self._saved_at:
            return
        self._saved_at = steps
        state = {
            "band": band.state_dict(),
            "optimizer": pl_module.optimizers().optimizer.state_dict(),
            "steps": steps,
            **pl_module.checkpoint_extra(),
        }
        path = self.path(trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, PathModule)
        if pl_module._band().done:
            self.path(trainer.global_rank).unlink(missing_ok=True)
