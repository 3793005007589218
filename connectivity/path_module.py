"""PathModule: the path search of :mod:`connectivity.verdicts` run by a Lightning Trainer.

The pivots of all pairs are the module's one parameter; the fixed ends, the targets and the
frozen tail (always in eval mode) are buffers and a frozen submodule. Each training step is one
batched forward and backward of all active pivots; the NEB projection turns the gradient into
the band's effective gradient before the optimiser step. Same maths, same results as
:func:`connectivity.verdicts.connect_points` with the same options.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from connectivity.neb import ElasticBand, make_optimizer
from connectivity.split import FrozenTail
from connectivity.verdicts import (
    BandOutcome,
    LineCheck,
    PairRecord,
    PathOptions,
    certification_stop,
    check_lines,
    check_range,
    make_records,
    working_precision,
)


class PathModule(L.LightningModule):
    """Optimise one elastic band per pair with a Trainer.

    Run it with ``Trainer(max_epochs=1)``: its loader has one item per evaluation
    (``options.steps + 1``: the straight line, then one after every update), and it stops the
    trainer itself once every pair is decided.

    Args:
        tail: The part of the classifier from the path's space to logits (frozen here).
        starts: ``(pairs, *point_shape)`` first ends.
        ends: ``(pairs, *point_shape)`` second ends.
        targets: ``(pairs,)`` target class of each pair.
        options: Path options; ``steps`` bounds the optimisation of each pair.
    """

    def __init__(
        self,
        tail: nn.Module,
        starts: Tensor,
        ends: Tensor,
        targets: Tensor,
        options: PathOptions | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the band sets the pivots' gradient itself
        self.options = options or PathOptions()
        # A copy: freezing must not touch the caller's module.
        self.tail = FrozenTail(copy.deepcopy(tail))
        starts, ends = working_precision(starts.detach(), ends.detach())
        check_range(starts, ends, self.options.bounds)
        self.register_buffer("starts", starts.clone())
        self.register_buffer("ends", ends.clone())
        self.register_buffer("targets", targets.detach().clone().long())
        self.band = self._new_band()
        self.pivots = self.band.pivots
        self.check: LineCheck | None = None

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # Precision plugins convert every floating tensor of the module (bf16-true: to
        # bfloat16). The tail may run in that dtype, but the band's pivots and ends keep their
        # working precision (float32, or float64 under 64-true), so its steps stay exact.
        own = [self.pivots, self.starts, self.ends]
        before = [t.detach().clone() for t in own]
        super()._apply(fn, recurse)
        for old, name in zip(before, ("pivots", "starts", "ends"), strict=True):
            new = getattr(self, name)
            dtype = torch.float64 if torch.float64 in (old.dtype, new.dtype) else old.dtype
            if new.dtype != dtype:
                new.data = old.to(device=new.device, dtype=dtype)
        return self

    def _new_band(self) -> ElasticBand:
        return ElasticBand(
            self.starts,
            self.ends,
            max_steps=self.options.steps,
            labels=self.targets,
            **self.options.band_options(),
        )

    def train_dataloader(self) -> DataLoader:
        # One item per step; the first evaluation (the straight line) comes before any update.
        return DataLoader(range(self.options.steps + 1), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.options.optimizer, [self.pivots], self.options.lr)

    @torch.no_grad()
    def on_fit_start(self) -> None:
        self.band.to_(self.device, dtype=self.pivots.dtype)
        if int(self.band.steps.max()) == 0:
            # A precision plugin may have changed the dtype (64-true): start from the line of
            # that precision, as connect_points does, not from a rounded float32 line.
            self.pivots.data = self.band.initial_pivots()
        self.check = check_lines(self.tail, self.starts, self.ends, self.targets, self.options)
        self.band.retire_(self.check.ok)  # the line already answers for these pairs
        energies = F.cross_entropy(
            self.tail(self.band.end_points()), self.band.end_labels(), reduction="none"
        )
        self.band.set_end_energies_(energies)
        self._stop = certification_stop(
            self.tail, self.options, self.check.log_probabilities.shape[-1]
        )

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        band = self.band
        if band.done:
            self.trainer.should_stop = True
            return
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
                "path/max_energy": energies.detach().max(),
                "path/max_force": band.max_force[evaluated].max(),
                "path/on_target": (logits.argmax(dim=-1) == labels).float().mean(),
                "path/active_pairs": float(moved.sum()),
            },
            prog_bar=True,
            batch_size=1,
        )
        if moved.any():
            # The band's gradient is no scaled loss gradient: step the torch optimizer itself,
            # not through a precision plugin's grad scaler (16-mixed would unscale it).
            self.optimizers().optimizer.step()
            band.after_step_()
        if band.done:
            self.trainer.should_stop = True

    def records(self) -> list[PairRecord]:
        """Verdicts and metrics of every pair, after ``trainer.fit``."""
        if self.check is None:
            raise RuntimeError("run trainer.fit(path_module) first")
        result = self.band.result()
        # Pairs the line answered for were never evaluated by the band.
        max_force = torch.where(self.check.ok, torch.zeros_like(result.max_force), result.max_force)
        outcome = BandOutcome(result.path, result.steps, max_force, result.diverged)
        return make_records(self.tail, self.targets, self.check, outcome, self.options)
