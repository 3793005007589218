"""The Lightning Trainer of path and graph runs: its settings, the arguments a run refuses,
and one fit of a module's pairs with its records and band checkpoints written as it goes."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.strategies import ParallelStrategy
from torch import Tensor

from connectivity.engine.decisions import PairRecord
from connectivity.errors import ConnectivityError, OptionsError
from connectivity.lightning.path_module import BandCheckpoint
from connectivity.lightning.progress import BandProgressBar
from connectivity.lightning.strategy import PairsDDPStrategy
from connectivity.runs.sampling import is_whole
from connectivity.store.records import Pair, RunStore

# The experiment's own: one epoch of steps per space, records instead of Lightning checkpoints,
# each rank its own pairs.
_OWN_SETTINGS = {
    "max_epochs": 1,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "use_distributed_sampler": False,
}


_STEPS = "set --path.steps (most band steps per pair; a fit runs until every pair is decided)"
_NO_VALIDATION = "leave it out (a path experiment has no validation loop)"
# Trainer arguments whose role the experiment plays itself, and what to set instead: a value
# the Trainer would take and then not honour is refused rather than ignored.
_OWNED_TRAINER_ARGUMENTS = {
    "max_steps": _STEPS,
    "min_steps": _STEPS,
    "max_epochs": _STEPS,
    "min_epochs": _STEPS,
    "limit_train_batches": _STEPS,
    "overfit_batches": _STEPS,
    "fast_dev_run": _STEPS + " and fewer pairs",
    "accumulate_grad_batches": "set --path.steps and --path.lr (each step is one band update)",
    "gradient_clip_val": "set --path.max_step (the longest move of a pivot in one step)",
    "gradient_clip_algorithm": "set --path.max_step (the longest move of a pivot in one step)",
    "enable_checkpointing": "set --checkpoint_every (band checkpoints and records are the run's)",
    "val_check_interval": _NO_VALIDATION,
    "check_val_every_n_epoch": _NO_VALIDATION,
    "limit_val_batches": _NO_VALIDATION,
    "num_sanity_val_steps": _NO_VALIDATION,
    "limit_test_batches": _NO_VALIDATION,
    "limit_predict_batches": _NO_VALIDATION,
    "reload_dataloaders_every_n_epochs": "leave it out (the band is the only data)",
    "use_distributed_sampler": "leave it out (each rank decides its own share of the pairs)",
    "enable_model_summary": "leave it out (the experiment fits no model of its own)",
}


# What the Trainer does when these are None (its signature's default): all batches.
_EFFECTIVE_DEFAULTS = {f"limit_{loop}_batches": 1.0 for loop in ("train", "val", "test", "predict")}


def check_trainer_arguments(given: dict[str, Any] | None) -> None:
    """Refuse Trainer arguments that a path or graph experiment would not honour.

    ``--trainer.max_steps 3`` would be silently ignored (every band runs ``path.steps``): an
    argument the experiment owns is refused unless it keeps the Trainer's default, or the
    experiment's own value (``max_epochs: 1``).

    Raises:
        OptionsError: the first such argument, with the option to set instead.
    """
    defaults = {
        name: p.default for name, p in inspect.signature(L.Trainer.__init__).parameters.items()
    }
    for name, value in (given or {}).items():
        what = _OWNED_TRAINER_ARGUMENTS.get(name)
        kept = [defaults.get(name), _EFFECTIVE_DEFAULTS.get(name, ...)]
        kept.append(_OWN_SETTINGS.get(name, ...))
        if what is None or any(value == default for default in kept):
            continue
        raise OptionsError(
            f"--trainer.{name} {value} is not honoured: the experiment runs the Trainer's "
            f"loop itself; {what}"
        )


def check_checkpoint_every(value: Any) -> None:
    """Raise :class:`ConnectivityError` unless ``value`` (steps between band checkpoints) is a
    whole number >= 1."""
    if not is_whole(value) or value < 1:
        raise ConnectivityError(
            f"checkpoint_every must be a whole number of steps >= 1, got {value!r}"
        )


def trainer_settings(given: dict[str, Any] | None) -> tuple[dict[str, Any], L.Trainer]:
    """The Trainer settings of every fit of an experiment, and a Trainer built with them.

    Raises:
        ConnectivityError: a parallel strategy other than ``ddp_pairs``: plain DDP (and its
            spawn, fork and sharded relatives) would replace every rank's pivots with rank
            zero's. ``auto`` on several devices becomes ``ddp_pairs``.
    """
    settings = {
        "accelerator": "auto",
        "devices": "auto",
        "strategy": "auto",
        "num_nodes": 1,
        "logger": None,
        "log_every_n_steps": 1,  # a band step is cheap to log and the metrics are per step
        **(given or {}),
        **_OWN_SETTINGS,
    }
    settings["callbacks"] = list(settings.get("callbacks") or [])
    probe = L.Trainer(**{**settings, "callbacks": None, "logger": False})
    unsafe = isinstance(probe.strategy, ParallelStrategy) and not isinstance(
        probe.strategy, PairsDDPStrategy
    )
    if unsafe and settings["strategy"] == "auto":
        settings["strategy"] = "ddp_pairs"
        probe = L.Trainer(**{**settings, "callbacks": None, "logger": False})
    elif unsafe:
        raise ConnectivityError(
            f"strategy {settings['strategy']!r} would overwrite every rank's pivots with rank "
            "zero's (DDP broadcasts parameters and averages gradients); use "
            "--trainer.strategy ddp_pairs (or ddp_pairs_spawn): each rank then decides its own "
            "pairs"
        )
    return settings, probe


@runtime_checkable
class RecordedModule(Protocol):
    """What :class:`RecordWriter` reads of a run's module
    (:class:`~connectivity.runs.paths.SpacePathModule` and its subclasses)."""

    space: str
    rows: list[Pair]  # the pair of each row of the band
    decided: list[tuple[int, PairRecord]]  # (row, record) decided since the last flush

    def end_images(self, pair: Pair) -> Tensor | None: ...


class RecordWriter(L.Callback):
    """Saves each pair's record the moment the module decides it (atomically, one file each)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def _flush(self, module: L.LightningModule) -> None:
        """Save the records the module queued since the last flush."""
        assert isinstance(module, RecordedModule)
        for row, record in module.decided:
            pair = module.rows[row]
            self.store.save(module.space, pair, record, module.end_images(pair))
        module.decided.clear()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        self._flush(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning ends the process after an interrupt: say what is kept, and how to go on.
        self._flush(pl_module)
        if isinstance(pl_module, RecordedModule) and isinstance(exception, KeyboardInterrupt):
            done = len(self.store.done(pl_module.space))
            print(
                f"\n{pl_module.space}: interrupted. {done} decided pairs of this space are saved "
                f"in {self.store.records_dir / pl_module.space}, and the band was checkpointed; "
                "rerun the same command to continue where it stopped.",
                flush=True,
            )


def fit_pairs(
    module: L.LightningModule,
    settings: dict[str, Any],
    store: RunStore,
    checkpoints: Path,
    checkpoint_every: int,
) -> L.Trainer:
    """Decide a module's pairs in one fit, each record saved the moment it is decided
    (:class:`RecordWriter`) and the band checkpointed every ``checkpoint_every`` steps in
    ``checkpoints`` (:class:`~connectivity.lightning.path_module.BandCheckpoint`).

    Args:
        module: A :class:`RecordedModule` (a ``SpacePathModule``).
        settings: From :func:`trainer_settings`; the user's callbacks come first, and the
            band's progress bar is added where the progress bar is on and none is given.
        store: Where the records go.
        checkpoints: The folder of the band checkpoints (one file per rank).
        checkpoint_every: Steps between band checkpoints.

    Returns:
        The Trainer of the fit (its strategy still up, for a barrier).
    """
    ours = [RecordWriter(store), BandCheckpoint(checkpoints, checkpoint_every)]
    return fit_module(module, settings, ours, BandProgressBar())


def fit_module(
    module: L.LightningModule,
    settings: dict[str, Any],
    callbacks: list[L.Callback],
    bar: ProgressBar,
) -> L.Trainer:
    """One fit of a run's module (a space's pairs or loops) with the run's ``callbacks`` after
    the user's, and ``bar`` where the progress bar is on and the user gave none.

    Returns:
        The Trainer of the fit (its strategy still up, for a barrier).
    """
    callbacks = [*settings["callbacks"], *callbacks]
    if settings.get("enable_progress_bar", True) and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        callbacks.append(bar)
    fit = L.Trainer(**{**settings, "callbacks": callbacks})
    with warnings.catch_warnings():
        # The frozen head and tail stay in eval mode on purpose.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
        # A surfaces rank whose loops its flat fills all decided has nothing to optimise.
        warnings.filterwarnings("ignore", message=r".*configure_optimizers.* returned .None.")
        fit.fit(module)
    return fit
