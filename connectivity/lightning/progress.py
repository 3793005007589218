"""What a person reads while a space's band runs: the line-check line and the band's bar."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from connectivity.lightning.output import on_terminal
from connectivity.lightning.path_module import PathModule


def line_check_words(module: PathModule) -> str:
    """The line a person reads when a space's band starts, e.g. ``"input: line check: 2 of 5
    pairs linear; 1 decided by the band before it stopped (kept)"``.

    Only pairs whose straight line passed the check count as linear; pairs whose band decided
    them before a resume (from its checkpoint) and pairs decided in an earlier run are named
    apart (the counts ``reused``, ``resumed_at`` and ``taken_over`` of a run's module, where
    it has them). Call after ``on_fit_start`` (the line check has run).
    """
    decisions = module.decisions
    # The line check decides every pair whose line passes, before any checkpoint's records
    # are restored: those are exactly the linear ones.
    linear = int(decisions.check.ok.sum()) if decisions is not None else 0
    rows = int(decisions.check.ok.numel()) if decisions is not None else 0
    words = f"{module.space}: line check: {linear} of {rows} pairs linear"
    if module.restored:
        words += f"; {module.restored} decided by the band before it stopped (kept)"
    reused = len(getattr(module, "reused", ()))
    if reused:
        words += f"; {reused} decided in an earlier run (kept)"
    resumed_at = getattr(module, "resumed_at", 0)
    if resumed_at:
        words += f"; band continued from its checkpoint at step {resumed_at}"
    taken_over = getattr(module, "taken_over", 0)
    if taken_over:
        words += f"; {taken_over} pairs go on from band checkpoints of other ranks"
    return words


def step_bar(
    owner: TQDMProgressBar, desc: str, total: int | None, initial: int, idle: bool, form: str
) -> Tqdm:
    """A bar of optimisation steps (a band's, a membrane's): made with its own description,
    total and start, so no generic "Training" or "Epoch 0" bar shows first; cleared when done;
    hidden where ``idle`` (nothing to optimise)."""
    return Tqdm(
        desc=desc,
        total=total,
        initial=initial,
        position=2 * owner.process_position,
        disable=owner.is_disabled or idle,
        leave=False,
        dynamic_ncols=True,
        file=sys.stdout,
        smoothing=0,
        bar_format=form,
    )


class BandProgressBar(TQDMProgressBar):
    """Progress of one space's band, as a person follows it.

    Before the band: one line for the straight-line check (pairs decided by it, pairs reused
    from an earlier run, a band continued from its checkpoint). During the band: steps out of
    ``path.steps`` and pairs decided so far, with no ETA (pairs leave the band as they are
    decided, so most runs stop long before the last step); the bar is cleared when the band is
    done, and one line says what it did. No bar when the line check left no pair to a band.
    """

    BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]"

    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and on_terminal()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, PathModule)
        decisions = pl_module.decisions
        self._linear = len(decisions.records) if decisions is not None else 0
        if trainer.is_global_zero:
            print(line_check_words(pl_module), flush=True)
        self._module = pl_module
        # The band set up when the fit started (after the line check): empty when every pair
        # of this rank was decided without one.
        self._band_runs = pl_module.band is not None and not pl_module.band.done
        self._steps, self._started = 0, time.monotonic()
        super().on_train_start(trainer, pl_module)

    def init_train_tqdm(self) -> Tqdm:
        module = self._module
        return step_bar(
            self,
            f"{module.space} band",
            module.options.steps,
            getattr(module, "resumed_at", 0),
            not self._band_runs,
            self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # one epoch, one bar: the one made at the start of training

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        assert isinstance(pl_module, PathModule)
        band, bar = pl_module.band, self.train_progress_bar
        if band is None or not band.pairs:
            return
        self._steps = int(band.steps.max())
        if bar is None or bar.disable:
            return
        bar.n = self._steps
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, PathModule)
        super().on_train_end(trainer, pl_module)  # closes (clears) the bar
        # The band's one line also where no bar is shown (not a terminal), once, on rank zero.
        if not trainer.is_global_zero or not self._band_runs:
            return
        steps, elapsed = self._steps, Tqdm.format_interval(time.monotonic() - self._started)
        decisions = pl_module.decisions
        pairs = (len(decisions.records) if decisions is not None else 0) - self._linear
        print(
            f"{pl_module.space} band: {pairs} pair{'' if pairs == 1 else 's'} decided in {steps} "
            f"step{'' if steps == 1 else 's'} ({elapsed})",
            flush=True,
        )

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        assert isinstance(pl_module, PathModule)
        decisions = pl_module.decisions
        decided = len(decisions.records) if decisions is not None else 0
        rows = int(decisions.check.ok.numel()) if decisions is not None else 0
        return {"decided": f"{decided}/{rows}"}


class MembraneProgressBar(TQDMProgressBar):
    """Progress of one space's membranes: one line for the flat fills (loops decided by them,
    loops decided in an earlier run), the steps of the membranes while they run (no ETA: loops
    leave as they are decided), and one line when they are done."""

    BAR_FORMAT = "{desc}: {n_fmt} steps [{elapsed}{postfix}]"

    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and on_terminal()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        search = pl_module.search
        self._module = pl_module
        self._planar = len(search.decided) if search is not None else 0
        self._runs = search is not None and not search.done
        loops = len(search.loops) if search is not None else 0
        if trainer.is_global_zero:
            words = f"{pl_module.space}: flat fill: {self._planar} of {loops} loops planar"
            reused = len(getattr(pl_module, "reused", ()))
            if reused:
                words += f"; {reused} decided in an earlier run (kept)"
            print(words, flush=True)
        self._steps, self._started = 0, time.monotonic()
        super().on_train_start(trainer, pl_module)

    def init_train_tqdm(self) -> Tqdm:
        space = self._module.space
        return step_bar(self, f"{space} membrane", None, 0, not self._runs, self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # one bar, made at the start of training

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        search, bar = pl_module.search, self.train_progress_bar
        if search is None:
            return
        self._steps = search.steps_taken() or self._steps + 1
        if bar is None or bar.disable:
            return
        bar.n = self._steps
        bar.set_postfix({"decided": f"{len(search.decided)}/{len(search.loops)}"}, refresh=False)
        bar.refresh()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not trainer.is_global_zero or not self._runs:
            return
        search = pl_module.search
        loops = (len(search.decided) if search is not None else 0) - self._planar
        elapsed = Tqdm.format_interval(time.monotonic() - self._started)
        print(
            f"{pl_module.space} membrane: {loops} loop{'' if loops == 1 else 's'} decided "
            f"({elapsed})",
            flush=True,
        )
