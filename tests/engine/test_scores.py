"""Pair scores as detectors (issue 23): the energy barrier of a path and the ROC area, against
hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from connectivity.engine.decisions import energy_barrier
from connectivity.engine.options import PathOptions
from connectivity.engine.scores import auroc, roc_curve
from connectivity.engine.search import connect_points
from connectivity.reporting.tables import pair_barrier


def test_auroc_is_the_chance_a_positive_outscores_a_negative() -> None:
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs ranked right.
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([False, True])) == 0.5  # a tie: 1/2
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 1])) == 1.0
    # A non-finite score is left out; one kind alone has no curve.
    scores = torch.tensor([0.1, math.inf, 0.35, 0.8])
    assert auroc(scores, torch.tensor([0, 0, 1, 1])) == 1.0
    assert math.isnan(auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    fpr, tpr, _ = roc_curve(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"two \(N,\) tensors"):
        auroc(torch.zeros(3), torch.zeros(2))


def test_energy_barrier_is_the_highest_energy_above_the_higher_end() -> None:
    assert energy_barrier(torch.tensor([1.0, 3.0, 2.0])) == 1.0  # 3 above the higher end, 2
    assert energy_barrier(torch.tensor([2.0, 1.0, 0.5])) == 0.0  # the start is the highest


class OutsideDiamond(nn.Module):
    """Class 0 outside the L1 ball of radius 0.5 (logit ``|x|_1 - 0.5``; class 1 logit 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outside = x.abs().sum(dim=1, keepdim=True) - 0.5
        return torch.cat([outside, torch.zeros_like(outside)], dim=1)


def test_a_line_through_the_hole_has_the_hand_barrier() -> None:
    # The line from (-1, 0) to (1, 0), checked at t = 0, 1/2, 1: the energy softplus(-m) is
    # softplus(-0.5) at the ends and softplus(0.5) at the middle, 0.5 higher.
    starts = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    ends = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    options = PathOptions(num_pivots=1, line_points=3, steps=50, optimizer="fire", lr=0.05)
    (record,) = connect_points(OutsideDiamond(), starts, ends, torch.tensor([0]), options)
    assert record.line_barrier == pytest.approx(0.5, abs=1e-12)
    assert record.barrier >= 0.0
    saved = {k: v for k, v in vars(record).items() if k not in ("barrier", "line_barrier")}
    assert pair_barrier(saved, "line") == pytest.approx(0.5, abs=1e-12)
    assert pair_barrier(saved, "path") == pytest.approx(record.barrier, abs=1e-12)
