"""What commands print: library lines lowered inside the block and restored after it."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from connectivity.lightning.output import (
    LIBRARY_LOGGERS,
    epoch_description,
    quiet_library_output,
)


def test_library_loggers_and_wandb_settings_come_back_after_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WANDB_SHOW_INFO", raising=False)
    monkeypatch.setenv("WANDB_QUIET", "false")  # the user's choice is kept
    logger = logging.getLogger(LIBRARY_LOGGERS[0])
    level = logger.level
    with quiet_library_output():
        assert logger.level == logging.WARNING
        assert os.environ["WANDB_SHOW_INFO"] == "false" and os.environ["WANDB_QUIET"] == "false"
        with quiet_library_output(verbose=True):  # an inner block keeps the outer's choice
            assert logger.level == logging.WARNING
    assert logger.level == level and "WANDB_SHOW_INFO" not in os.environ
    with quiet_library_output(verbose=True):
        assert logger.level == level and "WANDB_SHOW_INFO" not in os.environ


def test_the_epoch_bar_counts_from_one_and_out_of_the_epochs_when_known() -> None:
    assert epoch_description(SimpleNamespace(current_epoch=0, max_epochs=3)) == "epoch 1/3"
    assert epoch_description(SimpleNamespace(current_epoch=4, max_epochs=-1)) == "epoch 5"
    assert epoch_description(SimpleNamespace(current_epoch=4, max_epochs=None)) == "epoch 5"
