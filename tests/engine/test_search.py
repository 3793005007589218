"""The path search (connect_points, PathSearch, BandRun, find_paths): verdicts on toy
classifiers whose class regions are known exactly, and the step-wise interface."""

from __future__ import annotations

import math

import pytest
import torch

from connectivity.engine.band import ElasticBand
from connectivity.engine.checks import refine
from connectivity.engine.decisions import BandStatus, Verdict
from connectivity.engine.options import PathOptions
from connectivity.engine.search import (
    BandRun,
    ClassifierEnergy,
    PathSearch,
    connect_points,
    find_paths,
)
from connectivity.engine.split import FrozenTail
from tests.toy import HOLE_ENDS, Annulus, Hole, Stripes, TwoDisks


def test_straight_line_inside_the_class_is_linear() -> None:
    starts = torch.tensor([[-3.0, -2.0]])
    ends = torch.tensor([[0.5, 3.0]])
    (record,) = connect_points(Stripes(), starts, ends, torch.tensor([0]))
    assert record.verdict == Verdict.LINEAR and record.pivot_verdict == Verdict.LINEAR
    assert record.status == BandStatus.LINEAR
    assert record.steps == 0
    assert record.length_ratio == pytest.approx(1.0)
    assert record.min_target_probability > 0.5


def test_annulus_needs_a_bent_path_and_neb_certifies_it() -> None:
    # The line between opposite points of the ring crosses the hole (class 1).
    starts = torch.tensor([[1.5, 0.2]])
    ends = torch.tensor([[-1.5, 0.1]])
    options = PathOptions(num_pivots=10, steps=300, lr=0.05, spring_constant=1.0)
    (record,) = connect_points(Annulus(), starts, ends, torch.tensor([0]), options)
    assert record.line_min_target_probability < 0.5
    assert record.verdict == Verdict.NONLINEAR
    assert 0 < record.steps < 300  # stopped as soon as the path was certified
    assert record.status == BandStatus.CERTIFIED and record.max_force > options.tol
    radius = record.path.norm(dim=-1)
    assert ((radius > 1.0) & (radius < 2.0)).all()
    assert record.length_ratio > 1.2
    # densely certified: every point on every segment is in the ring
    dense = refine(record.path.unsqueeze(0), 20)[0].norm(dim=-1)
    assert ((dense > 1.0) & (dense < 2.0)).all()


def test_disconnected_class_gives_no_path() -> None:
    starts = torch.tensor([[-2.0, 0.1]])
    ends = torch.tensor([[2.0, -0.1]])
    options = PathOptions(num_pivots=8, steps=150, lr=0.05)
    (record,) = connect_points(TwoDisks(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONE
    assert record.pivot_verdict == Verdict.NONE
    # it ran to the minimum energy path (converged) or out of steps, and still found no path
    assert record.steps == 150 or record.max_force <= options.tol
    converged = record.max_force <= options.tol
    assert record.status == (BandStatus.CONVERGED if converged else BandStatus.OUT_OF_STEPS)
    assert record.max_energy > math.log(2)


def test_pairs_are_decided_together_as_one_at_a_time() -> None:
    starts = torch.tensor([[1.5, 0.2], [-2.0, 0.1], [1.2, -0.3]])
    ends = torch.tensor([[-1.5, 0.1], [2.0, -0.1], [1.4, 0.3]])
    targets = torch.tensor([0, 0, 0])
    options = PathOptions(num_pivots=10, steps=200, lr=0.05)
    model = Annulus()
    together = connect_points(model, starts, ends, targets, options)
    alone = [
        connect_points(model, starts[i : i + 1], ends[i : i + 1], targets[i : i + 1], options)[0]
        for i in range(3)
    ]
    assert [r.verdict for r in together] == [r.verdict for r in alone]
    for a, b in zip(together, alone, strict=True):
        assert torch.allclose(a.path, b.path, atol=1e-5)
        assert a.steps == b.steps


def test_pivot_only_verdict_can_be_fooled_where_the_dense_check_is_not() -> None:
    # A thin wall of class 1 across the line at x = 0.05: pivots at x = +-0.5.. miss it.
    class Wall(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            wall = 8.0 * (1.0 - 2.0 * torch.exp(-((z[..., 0] - 0.05) ** 2) / 0.0005))
            return torch.stack([wall, torch.zeros_like(wall)], dim=-1)

    starts, ends = torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    options = PathOptions(num_pivots=3, steps=20, lr=0.01, line_points=200)
    (record,) = connect_points(Wall(), starts, ends, torch.tensor([0]), options)
    assert record.pivot_verdict == Verdict.LINEAR
    assert record.verdict != Verdict.LINEAR


def test_diverging_pair_is_marked_without_stopping_the_others() -> None:
    class HoleOfNaN(torch.nn.Module):
        """The annulus, but the network yields NaN near the origin."""

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            logits = Annulus()(z)
            near = z.norm(dim=-1, keepdim=True) < 0.2
            return torch.where(near, torch.full_like(logits, float("nan")), logits)

    # pair 0's line passes through the origin (a pivot sits on it), pair 1's does not
    starts = torch.tensor([[1.5, 0.0], [1.5, 0.5]])
    ends = torch.tensor([[-1.5, 0.0], [-1.5, 0.6]])
    options = PathOptions(num_pivots=9, steps=300, lr=0.05)
    records = connect_points(HoleOfNaN(), starts, ends, torch.tensor([0, 0]), options)
    assert records[0].verdict == Verdict.DIVERGED and records[0].status == BandStatus.DIVERGED
    assert records[1].verdict == Verdict.NONLINEAR


class NaNNearOrigin(torch.nn.Module):
    """Class 0 everywhere, except that the network yields NaN within 0.5 of the origin."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z[..., 0]
        logits = torch.stack([1.0 + 0.1 * x, -0.1 * x], dim=-1)
        near = z.norm(dim=-1, keepdim=True) < 0.5
        return torch.where(near, torch.full_like(logits, float("nan")), logits)


def test_nan_outputs_never_count_as_the_target_even_for_class_zero() -> None:
    # argmax of a NaN row is 0: without care a line through NaN would pass for class 0.
    starts, ends = torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    options = PathOptions(num_pivots=5, steps=10)
    (record,) = connect_points(NaNNearOrigin(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.DIVERGED
    assert record.pivot_verdict == Verdict.DIVERGED


def test_a_pair_with_a_non_finite_end_is_diverged_not_a_crash() -> None:
    starts = torch.tensor([[0.0, 0.1], [-1.0, 2.0]])
    ends = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    options = PathOptions(num_pivots=4, steps=10)
    records = connect_points(NaNNearOrigin(), starts, ends, torch.tensor([1, 0]), options)
    assert records[0].verdict == Verdict.DIVERGED and records[0].steps == 0
    assert records[1].verdict == Verdict.LINEAR


# --- degenerate pairs have defined values ---


def test_pairs_whose_ends_coincide_are_linear_with_length_ratio_one() -> None:
    point = torch.tensor([[1.5, 0.0]])
    (record,) = connect_points(Annulus(), point, point.clone(), torch.tensor([0]))
    assert record.verdict == "linear" and record.pivot_verdict == "linear"
    assert record.length_ratio == 1.0
    assert record.steps == 0


def test_a_user_tail_starting_in_place_keeps_the_points_and_takes_steps() -> None:
    tail = torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Linear(4, 3))
    torch.manual_seed(0)
    starts = torch.tensor([[-1.0, 2.0, -3.0, 0.5]])
    before = starts.clone()
    target = int(tail(starts.clone()).argmax()) + 1
    options = PathOptions(steps=2, num_pivots=2, line_points=4, tol=0.0)
    (record,) = connect_points(tail, starts, starts * 1.01, torch.tensor([target % 3]), options)
    assert torch.equal(record.line[0], before[0]) and torch.equal(starts, before)
    assert record.steps == 2


# --- band optimizers in the verdicts, how the band ended ---


def test_lbfgs_runs_the_annulus_band_to_its_minimum_energy_path() -> None:
    # converge: true: no stop at the certificate; the band must reach tol.
    starts = torch.tensor([[1.5, 0.2]])
    ends = torch.tensor([[-1.5, 0.1]])
    options = PathOptions(num_pivots=10, steps=300, optimizer="lbfgs", converge=True)
    (record,) = connect_points(Annulus(), starts, ends, torch.tensor([0]), options)
    assert record.status == BandStatus.CONVERGED and record.max_force <= options.tol
    assert record.verdict == Verdict.NONLINEAR and record.steps < 300
    # The minimum energy path of the ring's energy runs along its middle circle, r = 1.5.
    assert torch.allclose(record.path[1:-1].norm(dim=-1), torch.tensor(1.5), atol=0.05)


# --- a band whose forces all lie along it ------------------------------------------------
# The line from (-2, 0) to (2, 0) runs through the centre of the hole: the true force on every
# pivot is along the line and the springs balance, so without the nudge every optimizer
# "converges" at step 0 with no path (the `nudge=0` test below), though the ring round the
# hole is in the class.
HOLE_OPTIONS = {"num_pivots": 8, "steps": 300, "lr": 0.1, "line_points": 257}


@pytest.mark.parametrize("method", ["neb", "string"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "fire", "lbfgs"])
def test_a_band_on_a_symmetric_line_is_nudged_round_the_hole(method: str, optimizer: str) -> None:
    starts, ends = HOLE_ENDS
    options = PathOptions(method=method, optimizer=optimizer, **HOLE_OPTIONS)
    (record,) = connect_points(Hole(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONLINEAR and record.status == BandStatus.CERTIFIED
    assert 0 < record.steps < options.steps
    # one nudge of 1e-3 of the ends' distance (4), recorded
    assert record.nudge == pytest.approx(4e-3, rel=1e-6)
    # independent check: 20,000 points per segment, all outside the disc
    dense = refine(record.path.unsqueeze(0).double(), 20_000)[0]
    assert float(dense.norm(dim=-1).min()) > 1.0


def test_without_the_nudge_the_symmetric_band_stops_at_step_0() -> None:
    starts, ends = HOLE_ENDS
    options = PathOptions(optimizer="fire", nudge=0.0, **HOLE_OPTIONS)
    (record,) = connect_points(Hole(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONE and record.status == BandStatus.CONVERGED
    assert record.steps == 0 and record.nudge == 0.0 and record.max_force <= options.tol


def test_the_nudge_is_the_same_in_any_batch_and_rerun() -> None:
    # The hole's pair alone and as the second of two pairs: the same nudge, the same path.
    starts, ends = HOLE_ENDS
    options = PathOptions(optimizer="fire", **HOLE_OPTIONS)
    (alone,) = connect_points(Hole(), starts, ends, torch.tensor([0]), options)
    both = connect_points(
        Hole(),
        torch.cat([torch.tensor([[-2.0, 0.5]]), starts]),
        torch.cat([torch.tensor([[2.0, 0.7]]), ends]),
        torch.tensor([0, 0]),
        options,
    )
    assert both[0].nudge == 0.0  # its line is off the centre: the band moves by itself
    assert both[1].nudge == alone.nudge and both[1].steps == alone.steps
    assert torch.equal(both[1].path, alone.path)


# --- the step-wise interface both drivers use ---------------------------------------------------
RING_STARTS = torch.tensor([[1.5, 0.2], [1.2, -0.3], [1.5, 0.6]])
RING_ENDS = torch.tensor([[-1.5, 0.1], [1.4, 0.3], [-1.4, 0.8]])
RING_OPTIONS = PathOptions(num_pivots=8, steps=120, lr=0.05)


def _same(a: list, b: list) -> bool:
    return all(
        x.metrics() == y.metrics() and torch.equal(x.path, y.path)
        for x, y in zip(a, b, strict=True)
    )


def test_a_hand_loop_over_the_search_gives_connect_points_records() -> None:
    targets = torch.tensor([0, 0, 0])
    expected = connect_points(Annulus(), RING_STARTS, RING_ENDS, targets, RING_OPTIONS)
    optimizers = []
    tail = FrozenTail(Annulus())
    search = PathSearch(
        tail, RING_STARTS, RING_ENDS, targets, RING_OPTIONS, on_band=optimizers.append
    )
    assert len(search.decisions.records) == 1  # the linear pair, at once
    search.start()
    while not search.done:
        evaluation = search.step()
        assert evaluation.pivots == 8 and 0 <= float(evaluation.on_target) <= 1
    assert _same(search.records(), expected)
    assert len(optimizers) == 2  # the band of the two bent pairs, then an empty one
    with pytest.raises(RuntimeError, match="done"):
        search.step()


def test_a_search_continued_from_its_checkpoint_ends_as_one_that_was_not_stopped() -> None:
    targets = torch.tensor([0, 0, 0])
    tail = FrozenTail(Annulus())
    whole = PathSearch(tail, RING_STARTS, RING_ENDS, targets, RING_OPTIONS)
    whole.start()
    while not whole.done:
        whole.step()
    stopped = PathSearch(tail, RING_STARTS, RING_ENDS, targets, RING_OPTIONS)
    stopped.start()
    for _ in range(5):
        stopped.step()
    assert not stopped.done and stopped.band.pairs == 2  # mid-way through the bent pairs' band
    checkpoint = stopped.checkpoint()
    assert set(checkpoint) == {"band", "band_rows", "queued", "nudges", "decided", "optimizer"}
    resumed = PathSearch(tail, RING_STARTS, RING_ENDS, targets, RING_OPTIONS)
    resumed.start(checkpoint)
    while not resumed.done:
        resumed.step()
    assert _same(resumed.records(), whole.records())


def test_find_paths_is_a_loop_over_one_band_run() -> None:
    energy = lambda z: ((z**2).sum(dim=1) - 1.0) ** 2  # noqa: E731  (a valley along the unit circle)
    starts, ends = torch.tensor([[1.0, 0.1]]), torch.tensor([[-1.0, 0.2]])
    result = find_paths(energy, starts, ends, num_pivots=4, steps=30, tol=0.0)
    run = BandRun(ElasticBand(starts, ends, num_pivots=4, steps=30, tol=0.0), energy)
    run.start()
    while not run.done:
        run.step()
    assert torch.equal(run.band.path, result.path) and torch.equal(run.band.steps, result.steps)


def test_the_energy_is_the_cross_entropy_of_the_tail_and_keeps_its_logits() -> None:
    points, targets = torch.tensor([[1.5, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    energy = ClassifierEnergy(Annulus())
    logits = Annulus()(points)
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert torch.equal(energy(points, targets), expected)
    assert torch.equal(energy.logits, logits)
