"""Decisions: verdicts, how a band ended, the records of decided pairs, and the rounds of
pivot insertion."""

from __future__ import annotations

import pytest
import torch

from connectivity.engine.band import PathResult
from connectivity.engine.checks import check_lines
from connectivity.engine.decisions import (
    BandStatus,
    Decisions,
    Verdict,
    band_status,
    insert_pivots,
)
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from tests.toy import Stripes


def test_records_carry_the_checked_points_their_margins_and_predicted_classes() -> None:
    # Logits = the point itself (2 classes): the target-0 margin is z0 - z1, affine along a line.
    # Line (3, 0) -> (1, 0) stays in class 0 with margin 3 - 2 s at position s; the second
    # pair's line (2, 0) -> (0, 2) has margin 2 - 4 s: class 1 from s > 1/2 on.
    starts = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
    ends = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    options = PathOptions(num_pivots=3, steps=0, line_points=9)
    first, second = connect_points(torch.nn.Identity(), starts, ends, torch.tensor([0, 0]), options)
    assert first.certificate == "sampled"
    assert torch.allclose(first.check_position, torch.linspace(0, 1, 9))
    assert torch.allclose(first.check_margin, 3 - 2 * first.check_position)
    assert first.min_margin == pytest.approx(1.0) and first.line_min_margin == pytest.approx(1.0)
    assert (first.check_predicted == 0).all()
    assert torch.allclose(second.line_check_margin, 2 - 4 * second.line_check_position)
    assert second.line_min_margin == pytest.approx(-2.0)
    expected = (second.line_check_position > 0.5).long()
    assert torch.equal(second.line_check_predicted, expected)
    assert second.verdict == Verdict.NONE  # no steps allowed


def test_a_band_that_diverged_converged_or_was_stopped_says_so_in_that_order() -> None:
    converged = torch.tensor([True, True, False, False, True])
    stopped = torch.tensor([True, False, True, False, False])
    diverged = torch.tensor([False, False, False, False, True])
    assert band_status(converged, stopped, diverged) == [
        BandStatus.CONVERGED,
        BandStatus.CONVERGED,
        BandStatus.CERTIFIED,
        BandStatus.OUT_OF_STEPS,
        BandStatus.DIVERGED,
    ]


def test_pivots_go_into_the_widest_off_target_stretches_that_hold_no_point() -> None:
    path = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # points at 0, 1/2 and 1
    # The middle stretch holds the point at 1/2: the band sees it already.
    stretches = torch.tensor([[0.2, 0.3], [0.6, 0.9], [0.45, 0.55]])
    grown, marked = insert_pivots(path, stretches, room=1)
    assert grown.tolist() == [[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [2.0, 0.0]]  # at 0.75
    assert marked.tolist() == [False, False, True, False]
    grown, marked = insert_pivots(path, stretches, room=5)
    assert grown[:, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert marked.tolist() == [False, True, False, True, False]
    same, none = insert_pivots(path, stretches, room=0)
    assert same is path and not none.any()


def _decisions(records: list) -> Decisions:
    """Two pairs of Stripes (class 0 where x < 1) whose lines cross into class 1."""
    starts, ends = torch.tensor([[0.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [2.0, 1.0]])
    targets = torch.tensor([0, 0])
    options = PathOptions(num_pivots=2, line_points=7)
    check = check_lines(Stripes(), starts, ends, targets, options)
    on_record = lambda i, record: records.append((i, record))  # noqa: E731
    return Decisions(Stripes(), targets, check, options, on_record)


def test_rounds_hand_out_the_queued_pairs_with_the_fewest_points_first() -> None:
    decisions = _decisions([])
    decisions.decide_lines()
    assert decisions.records == {}  # both lines leave the class
    longer = torch.stack([torch.linspace(0, 2, 5), torch.zeros(5)], dim=1)
    shorter = torch.stack([torch.linspace(0, 2, 4), torch.ones(4)], dim=1)
    decisions.requeue({0: (longer, 3), 1: (shorter, 2, torch.zeros(4, dtype=torch.bool))})
    rows, paths, steps, inserted = decisions.next_round()
    assert rows.tolist() == [1] and paths.shape == (1, 4, 2) and steps.tolist() == [2]
    rows, paths, steps, inserted = decisions.next_round()
    assert rows.tolist() == [0] and steps.tolist() == [3]
    assert not inserted.any()  # a queue written without marks has none
    assert decisions.next_round() is None


def test_each_pair_is_recorded_once_and_announced_once() -> None:
    announced: list = []
    decisions = _decisions(announced)
    decisions.queue_lines()
    rows, paths, *_ = decisions.next_round()
    no = torch.zeros(2, dtype=torch.bool)
    ran_out = PathResult(
        paths, torch.zeros(2, 4), torch.full((2,), 9), torch.ones(2), no, no, no, no
    )
    decisions.decide_band(ran_out, rows, done=~no)
    assert [i for i, _ in announced] == [0, 1]
    assert [r.verdict for r in decisions.in_order()] == [Verdict.NONE, Verdict.NONE]
    assert [r.status for r in decisions.in_order()] == [BandStatus.OUT_OF_STEPS] * 2
    kept = decisions.band_records()
    assert set(kept) == {0, 1}  # decided by a band, not by their lines
    again = _decisions(announced)
    again.restore(kept)
    again.decide_lines()
    assert len(announced) == 2 and again.in_order() == decisions.in_order()


def test_linear_pairs_are_recorded_by_the_line_check_with_no_steps() -> None:
    starts, ends = torch.tensor([[-1.0, 0.0]]), torch.tensor([[0.5, 1.0]])
    (record,) = connect_points(Stripes(), starts, ends, torch.tensor([0]))
    assert (record.verdict, record.status, record.steps) == ("linear", "linear", 0)
    assert record.min_margin == pytest.approx(record.line_min_margin)
    assert record.min_margin > 0
