"""What a person reads while a band runs: the line-check line, then one line for the band."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch

from connectivity.engine.options import PathOptions
from connectivity.lightning.path_module import PathModule
from connectivity.lightning.progress import BandProgressBar, line_check_words
from tests.toy import Annulus

# Annulus: class 0 is the ring 1 <= |z| <= 2. Pair 0's line stays on the ring's right side
# (linear); pair 1's line crosses the hole (a band goes round it).
STARTS = torch.tensor([[1.2, -0.3], [1.5, 0.2]])
ENDS = torch.tensor([[1.4, 0.3], [-1.5, 0.1]])


def _fit(module: PathModule, bar: BandProgressBar | None) -> None:
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[bar] if bar is not None else [],
        enable_progress_bar=bar is not None,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module)


def test_one_line_for_the_line_check_and_one_for_the_band(
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = PathOptions(num_pivots=8, steps=120, lr=0.05)
    module = PathModule(Annulus(), STARTS, ENDS, torch.tensor([0, 0]), options, space="toy")
    _fit(module, BandProgressBar())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "toy: line check: 1 of 2 pairs linear"
    band = re.fullmatch(r"toy band: 1 pair decided in (\d+) steps? \(.+\)", lines[1])
    assert band is not None, lines
    # The step count printed is the band's own, below the budget (it stopped when decided).
    assert 0 < int(band.group(1)) < options.steps
    assert [r.verdict for r in module.records()] == ["linear", "nonlinear"]


def test_no_band_line_when_every_line_passes(capsys: pytest.CaptureFixture[str]) -> None:
    module = PathModule(
        Annulus(), STARTS[:1], ENDS[:1], torch.tensor([0]), PathOptions(), space="toy"
    )
    _fit(module, BandProgressBar())
    assert capsys.readouterr().out.splitlines() == ["toy: line check: 1 of 1 pairs linear"]


def test_the_line_check_words_count_only_the_lines_that_passed() -> None:
    module = PathModule(
        Annulus(), STARTS, ENDS, torch.tensor([0, 0]), PathOptions(steps=3), space="toy"
    )
    _fit(module, None)
    assert line_check_words(module) == "toy: line check: 1 of 2 pairs linear"
