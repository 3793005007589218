"""Checks of polyline paths: the sampled check, the exact check's certifier, the line check
and the band's stop rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from connectivity.engine.bounds import NotBoundedError
from connectivity.engine.checks import (
    Certifier,
    certification_stop,
    check_lines,
    distances_from_line,
    on_target,
    polyline_length_ratio,
    refine,
    target_margin,
)
from connectivity.engine.exact import NotPiecewiseLinearError
from connectivity.engine.options import PathOptions
from tests.toy import Stripes


def test_refine_keeps_the_pivots_and_spaces_points_evenly() -> None:
    path = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]])
    dense = refine(path, per_segment=3)
    assert dense.shape == (1, 9, 2)
    assert torch.equal(dense[:, ::4], path)
    assert torch.allclose(dense[0, 1], torch.tensor([0.25, 0.0]))
    assert torch.allclose(dense[0, 6], torch.tensor([1.0, 1.0]))


def test_a_tie_with_another_class_is_not_on_target() -> None:
    # argmax breaks ties towards class 0: a boundary point must not count as class 0
    log_p = torch.log(torch.tensor([[[0.5, 0.5], [0.6, 0.4], [0.3, 0.7]]]))
    assert on_target(log_p, torch.tensor([0])).tolist() == [[False, True, False]]
    assert on_target(log_p, torch.tensor([1])).tolist() == [[False, False, True]]
    nan = torch.full((1, 1, 2), float("nan"))
    assert on_target(nan, torch.tensor([0])).tolist() == [[False]]


def test_the_margin_is_the_logit_margin_over_the_best_other_class() -> None:
    logits = torch.tensor([[[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]]])
    margin = target_margin(logits.log_softmax(dim=-1), torch.tensor([0]))
    assert torch.allclose(margin, torch.tensor([[1.0, -3.0]]))


def test_length_ratio_and_distances_of_a_bent_path() -> None:
    # Up 1 and across 2 and down 1 between ends 2 apart: length 4, twice the chord.
    path = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [2.0, 1.0], [2.0, 0.0]]])
    assert polyline_length_ratio(path).tolist() == [2.0]
    line = torch.stack([torch.linspace(0, 2, 4), torch.zeros(4)], dim=1)
    l2, linf = distances_from_line(path[0], line)
    assert torch.allclose(l2, torch.tensor([0.0, (1 + (2 / 3) ** 2) ** 0.5, l2[2], 0.0]))
    assert torch.allclose(linf, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_the_line_check_decides_lines_at_their_sampled_points() -> None:
    # Stripes: class 0 where x < 1. The first line stays left of x = 1, the second crosses it.
    starts = torch.tensor([[-1.0, 0.0], [0.0, 0.0]])
    ends = torch.tensor([[0.5, 1.0], [2.0, 0.0]])
    options = PathOptions(num_pivots=3, line_points=9)
    check = check_lines(Stripes(), starts, ends, torch.tensor([0, 0]), options)
    assert check.ok.tolist() == [True, False]
    assert check.line.shape == (2, 5, 2) and check.log_probabilities.shape == (2, 9, 2)
    assert check.proofs is None
    assert check.subset(torch.tensor([1])).ok.tolist() == [False]


def test_the_stop_rule_stops_bands_whose_every_sampled_point_is_on_target() -> None:
    options = PathOptions(num_pivots=1, line_points=9)
    stop = certification_stop(Stripes(), options, num_classes=2)
    bands = torch.tensor(
        [[[0.0, 0.0], [0.5, 1.0], [0.0, 2.0]], [[0.0, 0.0], [2.0, 1.0], [0.0, 2.0]]]
    )
    energies = torch.zeros(2, 3)
    assert stop(bands, energies, torch.tensor([0, 0])).tolist() == [True, False]
    converge = certification_stop(Stripes(), PathOptions(converge=True), num_classes=2)
    assert converge(bands, energies, torch.tensor([0, 0])).tolist() == [False, False]


def test_each_certify_value_picks_the_check_that_covers_the_tail() -> None:
    relu = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    gelu = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    erf = nn.Sequential(nn.Linear(2, 4), Erf(), nn.Linear(4, 2)).eval()  # no proof covers erf
    assert Certifier.for_tail(relu, PathOptions(certify="exact")).kind == "exact"
    assert Certifier.for_tail(relu, PathOptions(certify="bounds")).kind == "bounds"
    # ExactLine is the cheaper proof of a piecewise-linear tail
    assert Certifier.for_tail(relu, PathOptions(certify="auto")).kind == "exact"
    assert not Certifier.for_tail(relu, PathOptions()).proves
    auto = Certifier.for_tail(gelu, PathOptions(certify="auto"))
    assert auto.kind == "bounds" and auto.bounds is not None
    auto = Certifier.for_tail(erf, PathOptions(certify="auto"))
    assert auto.kind == "sampled" and "auto chose sampled" in auto.note and "erf" in auto.note
    with pytest.raises(NotPiecewiseLinearError, match="certify='exact' is impossible"):
        Certifier.for_tail(gelu, PathOptions(certify="exact"))
    with pytest.raises(NotBoundedError, match=r"certify='bounds' is impossible.*erf"):
        Certifier.for_tail(erf, PathOptions(certify="bounds"))


class Erf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


def test_the_exact_check_finds_where_a_segment_leaves_the_class() -> None:
    # Logits (z0, z1) of a linear tail: target 0 holds where z0 > z1. The segment from (1, 0)
    # to (0, 1) leaves the class at its middle.
    tail = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        tail.weight.copy_(torch.eye(2))
    certifier = Certifier.for_tail(tail, PathOptions(certify="exact"))
    path = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    (check,) = certifier.check(path, torch.tensor([0]))
    assert bool(check.decided[0]) and not bool(check.passed[0])
    assert check.off_target[0][0, 0].item() == pytest.approx(0.5)
    assert math.isclose(float(check.min_margin[0]), -1.0, abs_tol=1e-9)
