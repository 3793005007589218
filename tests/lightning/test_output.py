"""What commands print: the libraries' info lines lowered inside a block and restored after it."""

from __future__ import annotations

import logging
import os
import warnings
from types import SimpleNamespace

import pytest

from connectivity.lightning.output import (
    LIBRARY_LOGGERS,
    epoch_description,
    on_terminal,
    quiet_library_output,
)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_SHOW_INFO", "WANDB_QUIET"):
        monkeypatch.delenv(name, raising=False)


def _levels() -> list[int]:
    return [logging.getLogger(name).level for name in LIBRARY_LOGGERS]


@pytest.mark.usefixtures("clean_environment")
def test_quiet_block_lowers_info_lines_and_restores_everything_after() -> None:
    before = _levels()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_library_output():
            assert _levels() == [logging.WARNING] * len(LIBRARY_LOGGERS)
            assert (os.environ["WANDB_SHOW_INFO"], os.environ["WANDB_QUIET"]) == ("false", "true")
            warnings.warn("Found 3 module(s) in eval mode", UserWarning, stacklevel=1)
            warnings.warn("a real warning", UserWarning, stacklevel=1)
        warnings.warn("Found 3 module(s) in eval mode", UserWarning, stacklevel=1)
    # Inside, what our design causes on purpose is dropped and real warnings show; after the
    # block the filter is gone.
    assert [str(w.message) for w in caught] == ["a real warning", "Found 3 module(s) in eval mode"]
    assert _levels() == before
    assert "WANDB_SHOW_INFO" not in os.environ and "WANDB_QUIET" not in os.environ


@pytest.mark.usefixtures("clean_environment")
def test_verbose_keeps_the_library_lines_and_a_users_own_setting_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _levels()
    monkeypatch.setenv("WANDB_QUIET", "false")
    with quiet_library_output(verbose=True):
        assert _levels() == before
        assert "WANDB_SHOW_INFO" not in os.environ
    with quiet_library_output():
        assert os.environ["WANDB_QUIET"] == "false"  # the user's choice wins
    assert os.environ["WANDB_QUIET"] == "false"


@pytest.mark.usefixtures("clean_environment")
def test_an_inner_block_keeps_the_outer_blocks_choice() -> None:
    before = _levels()
    with quiet_library_output(verbose=True):
        with quiet_library_output(verbose=False):
            assert _levels() == before  # --verbose holds for every stage
        assert _levels() == before
    with quiet_library_output(), quiet_library_output(verbose=True):
        assert _levels() == [logging.WARNING] * len(LIBRARY_LOGGERS)
    assert _levels() == before


def test_the_epoch_bar_counts_from_one_and_out_of_the_epochs_when_known() -> None:
    assert epoch_description(SimpleNamespace(current_epoch=0, max_epochs=3)) == "epoch 1/3"
    assert epoch_description(SimpleNamespace(current_epoch=4, max_epochs=-1)) == "epoch 5"
    assert epoch_description(SimpleNamespace(current_epoch=4, max_epochs=None)) == "epoch 5"


def test_bars_are_drawn_only_on_a_terminal() -> None:
    # Under pytest's capture stdout is not a terminal: no bar would be drawn into a log.
    assert on_terminal() is False
