"""What the ``connectivity`` commands print: their own lines, bars that clear when done, and
the libraries' lines only when asked for (``connectivity --verbose``).

Lightning and W&B print a dozen lines per fit (devices found, seed set, ``max_epochs``
reached, W&B's offline hints); a command with several fits buried its own few lines under
them. Here they are lowered through the libraries' own settings (logger levels, W&B's
``show_info``), never by filtering stdout: warnings and errors of either library still show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

# Library output that our own design causes on purpose and that would bury the lines a person
# follows. Errors, real warnings and the progress bars (on a terminal) are kept, with --verbose
# too.
_QUIET_WARNINGS = (
    # Frozen heads and tails stay in eval mode on purpose.
    r"Found \d+ module\(s\) in eval mode",
    # Lightning's own pytree helper on recent torch; nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # The quickstart hands its stages their arguments while sys.argv holds `quickstart`.
    r"LightningCLI's args parameter is intended",
    # The embedded digits have short epochs on purpose (quick on a CPU).
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
_QUIET_MESSAGES = (
    # Advertisements for Lightning's cloud packages, once per trainer.
    "💡 Tip:",
    # Our modules choose their own checkpoint callback on purpose.
    "The following callbacks returned in `LightningModule.configure_callbacks`",
)
# Lightning logs its info lines (and the tips) through this logger; filters on a logger only
# see records logged to that logger itself.
_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
# Their info lines ("GPU available", "Seed set to 0", "`Trainer.fit` stopped", model
# summaries, "Restoring states from the checkpoint"): warnings go through `warnings` or at
# WARNING level, so raising these loggers to WARNING hides the info lines alone.
LIBRARY_LOGGERS = ("lightning.pytorch", "lightning.fabric")
# W&B's informational lines (its offline hints) and each run's history, summary and sync hint
# when it finishes (the run keeps the value it started with, even when it finishes at exit);
# its warnings and errors still show. Read when W&B starts in the process, and at each run.
_WANDB_QUIET = {"WANDB_SHOW_INFO": "false", "WANDB_QUIET": "true"}

_active = 0  # depth of quiet_library_output blocks: an inner one keeps the outer's choice


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def quiet_library_output(verbose: bool = False) -> Iterator[None]:
    """Within the block, keep Lightning's and W&B's own lines out of a command's output.

    Always silenced: what our commands cause on purpose (see ``_QUIET_*``). Unless
    ``verbose``: Lightning's info lines (levels of :data:`LIBRARY_LOGGERS`) and W&B's
    informational lines (``WANDB_SHOW_INFO=false`` and ``WANDB_QUIET=true`` unless the user
    set them; W&B reads them when it first starts in the process, so enter the block before
    any W&B run). Warnings and errors of both libraries, and the progress bars (on a terminal),
    always show.

    A block inside another keeps the outer block's choice (the command line's ``--verbose``
    holds for every stage of the quickstart). Loggers, filters and environment variables are
    restored on exit; W&B keeps the settings it started with for the rest of the process.
    """
    global _active
    if _active:
        _active += 1
        try:
            yield
        finally:
            _active -= 1
        return
    rank_zero = logging.getLogger(_RANK_ZERO_LOGGER)
    drop = _DropMessages(_QUIET_MESSAGES)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    environment = {name: os.environ.get(name) for name in _WANDB_QUIET}
    with warnings.catch_warnings():
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        rank_zero.addFilter(drop)
        if not verbose:
            for logger in loggers:
                logger.setLevel(logging.WARNING)
            for name, value in _WANDB_QUIET.items():
                os.environ.setdefault(name, value)
        _active = 1
        try:
            yield
        finally:
            _active = 0
            rank_zero.removeFilter(drop)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            for name, value in environment.items():
                if value is None:
                    os.environ.pop(name, None)


class StageProgressBar(TQDMProgressBar):
    """Lightning's progress bars, each cleared when it is done; the epoch bar counts epochs.

    The training bar reads ``epoch k/N`` (``epoch k`` without ``max_epochs``). Validation
    during a fit takes the epoch bar's line while it runs instead of the line below: a nested
    bar moves the cursor with newlines, which a log file keeps as one line per update.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)

    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and on_terminal()

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=epoch_description(self.trainer),
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.validation_description,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
        )

    def init_test_tqdm(self) -> Tqdm:
        bar = super().init_test_tqdm()
        bar.leave = False
        return bar

    def init_predict_tqdm(self) -> Tqdm:
        bar = super().init_predict_tqdm()
        bar.leave = False
        return bar

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # Lightning's, with our description set before the bar is first drawn.
        bar = self.train_progress_bar
        bar.reset(convert_inf(self.total_train_batches))
        bar.initial = 0
        bar.set_description(epoch_description(trainer))


def on_terminal() -> bool:
    """Whether progress bars are shown: only on a terminal. In a log file every redraw of a bar
    would stay (hundreds of kilobytes of carriage returns in one line)."""
    return sys.stdout.isatty()


def epoch_description(trainer: L.Trainer) -> str:
    """``epoch k/N`` of the epoch starting (counted from 1), ``epoch k`` when the number of
    epochs is open (``max_epochs`` of -1 or None)."""
    epoch = f"epoch {trainer.current_epoch + 1}"
    epochs = trainer.max_epochs
    return f"{epoch}/{epochs}" if epochs is not None and epochs > 0 else epoch
