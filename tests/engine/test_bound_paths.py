"""``certify="bounds"`` through the drivers (engine/bound_paths.py, the Certifier, records):
paths proved or refuted by bound propagation, positions along polylines, agreement with the
exact check, pivots inserted at counterexamples by both drivers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from connectivity.engine.bound_paths import BoundCheck, bound_paths
from connectivity.engine.bounds import bound_program
from connectivity.engine.checks import Certifier
from connectivity.engine.decisions import Verdict
from connectivity.engine.exact import check_paths
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from tests.engine.test_exact import SLIVER_ENDS, TWO_ROUNDS, TWO_ROUNDS_OPTIONS, Kinks, Sliver

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_polyline_is_proved_or_refuted_at_the_right_position() -> None:
    # Kinks: the class-0 margin along (0, 0) -> (1, 0) is positive on [0, 7/8) and zero at 7/8
    # (see tests/engine/test_bounds.py). The path (0, 0) -> (0.5, 0) -> (0.8, 0) stays in
    # class 0; (0, 0) -> (0.5, 0) -> (1, 0) leaves it on its second segment.
    net = Kinks().double()
    program = bound_program(net)
    x = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0], [1.0, 0.0]], dtype=torch.float64)
    paths = torch.stack([x[[0, 1, 2]], x[[0, 1, 3]]])
    check = bound_paths(program, paths, torch.tensor([0, 0]))
    assert isinstance(check, BoundCheck)
    assert check.passed.tolist() == [True, False] and check.decided.tolist() == [True, True]
    # the margin's true minimum on the first path is 0.875 - 0.8 = 0.075, at its end
    assert 0 < float(check.min_margin_lower_bound[0]) <= 0.075 + 1e-12
    assert float(check.min_margin[0]) == pytest.approx(0.075)
    (point,) = check.off_target[1].tolist()
    # off target where t >= 7/8 on the straight line: on segment 1 (x from 0.5 to 1) that is
    # x >= 7/8, i.e. position (1 + 0.75) / 2 and beyond
    assert point[0] == point[1] and point[0] >= (1 + 0.75) / 2 - 1e-12
    margin_there = 0.875 - (0.5 + (2 * point[0] - 1) * 0.5)
    assert float(check.margins[1][0]) == pytest.approx(margin_there, abs=1e-9)
    assert int(check.sub_intervals[1]) >= 2 and int(check.bound_evaluations[0]) >= 2


def test_a_path_with_a_point_that_is_not_a_point_leaves_the_class() -> None:
    program = bound_program(Kinks().double())
    paths = torch.tensor([[[0.0, 0.0], [math.nan, 0.0], [0.5, 0.0]]], dtype=torch.float64)
    check = bound_paths(program, paths, torch.tensor([0]))
    assert check.decided.tolist() == [True] and check.passed.tolist() == [False]
    assert check.off_target[0].tolist() == [[0.0, 1.0]]


def test_bounds_agree_with_the_exact_check_on_piecewise_linear_paths() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    ).double()
    paths = torch.randn(24, 3, 4, dtype=torch.float64) * 0.3
    targets = net(paths[:, 0]).argmax(dim=1)
    exact = check_paths(net, paths, targets)
    bounds = bound_paths(bound_program(net), paths, targets, max_splits=4096)
    both = exact.decided & bounds.decided
    assert int(both.sum()) >= 20
    assert torch.equal(exact.passed[both], bounds.passed[both])
    assert bool(exact.passed.any()) and not bool(exact.passed.all())
    proved = bounds.passed
    # the proved bound, the true minimum and the lowest evaluated margin, in this order
    assert bool((bounds.min_margin_lower_bound[proved] <= exact.min_margin[proved] + 1e-9).all())
    assert bool((exact.min_margin[proved] <= bounds.min_margin[proved] + 1e-9).all())
    # every counterexample lies in an off-target stretch of the exact check
    for p in (bounds.decided & ~bounds.passed).nonzero().squeeze(1).tolist():
        for position, _ in bounds.off_target[p].tolist():
            stretches = exact.off_target[p]
            inside = (stretches[:, 0] - 1e-9 <= position) & (position <= stretches[:, 1] + 1e-9)
            assert bool(inside.any()), (p, position, stretches)


def test_a_sliver_between_sampled_points_is_refuted_by_bounds() -> None:
    starts, ends = SLIVER_ENDS
    options = PathOptions(num_pivots=8, steps=0, certify="bounds")
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONE and record.certificate == "bounds"
    # the line leaves the class on |x - c| <= w: t in [(1 + c - w) / 2, (1 + c + w) / 2]
    ((low, high),) = record.line_off_target_intervals.tolist()
    assert low == high and (1 + 0.0123 - 0.001) / 2 <= low <= (1 + 0.0123 + 0.001) / 2
    assert record.line_min_margin < 0 and record.line_sub_intervals > 1
    assert record.line_bound_evaluations >= record.line_sub_intervals


def test_both_drivers_insert_pivots_at_the_counterexamples_of_bounds(tmp_path) -> None:
    from connectivity.lightning.path_module import PathModule
    from tests.lightning.test_path_module import _fit

    starts, ends, targets = TWO_ROUNDS
    options = TWO_ROUNDS_OPTIONS.with_values(certify="bounds")
    expected = connect_points(Sliver(), starts, ends, targets, options)
    module = PathModule(Sliver(), starts, ends, targets, options)
    _fit(module, tmp_path)
    got = module.records()
    assert [r.path.shape[0] for r in got] == [r.path.shape[0] for r in expected]
    assert got[0].path.shape[0] > options.num_pivots + 2  # a pivot inserted for pair 0
    for a, b in zip(got, expected, strict=True):
        assert (a.verdict, a.certificate, a.status) == ("nonlinear", "bounds", "certified")
        assert (b.verdict, b.certificate, b.status) == ("nonlinear", "bounds", "certified")
        assert a.steps == b.steps and torch.equal(a.path, b.path)
        assert 0 < a.min_margin_lower_bound <= a.min_margin
        assert a.off_target_intervals.shape == (0, 2) and a.sub_intervals >= 1


def test_a_spent_split_budget_leaves_the_verdict_to_the_sampled_points() -> None:
    starts, ends = SLIVER_ENDS
    bounds = PathOptions(num_pivots=8, steps=0, certify="bounds", max_splits=2)
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), bounds)
    # two splits cannot find a strip 1/2000 of the line wide
    assert record.certificate == "sampled"
    assert record.certificate_note == (
        "bounds: 1 segment(s) of the path ran out of the split budget (max_splits=2); decided at "
        "the sampled points"
    )
    assert record.verdict == Verdict.LINEAR  # the sampled points miss the strip
    assert math.isnan(record.line_min_margin_lower_bound)
    auto = Certifier.for_tail(Sliver(), bounds.with_values(certify="auto"))
    assert auto.kind == "exact"  # the cheaper proof of a piecewise-linear tail


class Swaps(nn.Module):
    """Kinks' logits, swapped for points with x > 0.5 in the tail as run, but not in the program
    traced of it (a module that tells tracing from running): bounds find out only when run."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Kinks().double()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.net(z)
        if not isinstance(z, torch.fx.Proxy) and bool((z[:, 0] > 0.5).any()):
            return logits.flip(1)
        return logits


def test_a_tail_bounds_cannot_follow_when_run_is_decided_at_the_sampled_points() -> None:
    start = torch.tensor([[0.9, 0.0]], dtype=torch.float64)
    end = torch.tensor([[0.95, 0.0]], dtype=torch.float64)
    certifier = Certifier.for_tail(Swaps(), PathOptions(certify="bounds"), start)
    (check,) = certifier.check(torch.stack([start, end], dim=1), torch.tensor([1]))
    assert not bool(check.decided[0]) and check.note.startswith("bounds failed")
