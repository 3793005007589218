"""The bounds check of polyline paths (``certify="bounds"``, issue 21): every segment of each
path goes through :func:`connectivity.engine.bounds.prove_segments` (bound propagation with
branch and bound on ``t``), and the segments' outcomes are gathered per path into the
:class:`~connectivity.engine.exact.PathCheck` the drivers already read for the exact check
(verdicts, off-target locations for pivot insertion), with what a proof by bounds adds
(:class:`BoundCheck`).

Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from connectivity.engine.bounds import BoundProgram, SegmentProof, prove_segments
from connectivity.engine.exact import PathCheck, off_target_everywhere
from connectivity.engine.options import DEFAULT_MAX_SPLITS

__all__ = ["BoundCheck", "bound_paths"]


@dataclass
class BoundCheck(PathCheck):
    """A :class:`~connectivity.engine.exact.PathCheck` decided by bounds.

    Positions along a path of ``N`` points as there: point ``k`` sits at ``k / (N - 1)``.

    Attributes (beyond :class:`PathCheck`'s, whose ``min_margin`` here is the lowest margin of
    the tail at the points the branch and bound evaluated: the segments' ends and every split
    point, and whose ``pieces`` is 0):
        min_margin_lower_bound: ``(pairs,)`` float64: a proved lower bound of the target margin
            over every point of the path (meaningful where ``passed``; below zero elsewhere).
        sub_intervals: ``(pairs,)`` long: sub-intervals of the path's segments at the end.
        bound_evaluations: ``(pairs,)`` long: sub-intervals bounded (one propagation row each).
        budget: ``(pairs,)`` long: segments whose split budget ran out before a proof or a
            counterexample.
        max_splits: The budget per segment the check ran with.
        off_target: (inherited) per pair ``(K, 2)``: the counterexamples, as stretches of one
            position each (``[p, p]``): points where the margin is ``<= 0``, located to the
            split resolution (the off-target stretch around each lies within the sub-intervals
            next to it that are not proved); one per segment at most: the first found.
    """

    min_margin_lower_bound: Tensor = field(default_factory=lambda: torch.zeros(0))
    sub_intervals: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    bound_evaluations: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    budget: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    max_splits: int = DEFAULT_MAX_SPLITS

    def note_of(self, row: int) -> str:
        """Why path ``row`` is undecided (empty where it is decided)."""
        if bool(self.decided[row]):
            return ""
        out = int(self.budget[row])
        if out:
            return (
                f"bounds: {out} segment(s) of the path ran out of the split budget "
                f"(max_splits={self.max_splits}); decided at the sampled points"
            )
        return (
            "bounds: a margin within the floating-point tolerance of zero; decided at the "
            "sampled points"
        )


def bound_paths(
    program: BoundProgram,
    paths: Tensor,
    targets: Tensor,
    *,
    max_splits: int = DEFAULT_MAX_SPLITS,
    batch_size: int = 1024,
) -> BoundCheck:
    """Prove that every point of each polyline path is classified as its target, or find a
    point where it is not.

    All segments of all paths go through one branch and bound (batched over sub-intervals,
    segments and pairs). A path is ``passed`` when every segment is proved; ``decided`` when
    passed or some counterexample's margin is below minus the tolerance (a margin closer to zero
    is left to the network's rounding, as in the exact check); otherwise (a segment out of
    budget, or a counterexample within the tolerance) the path is undecided and
    :meth:`BoundCheck.note_of` says why. A path with a NaN or infinite coordinate has points the
    classifier gives no class: decided, off the target on its whole length, as in the exact
    check.

    Args:
        program: :func:`connectivity.engine.bounds.bound_program` of the tail.
        paths: ``(pairs, N, *point_shape)`` polylines, ``N >= 2``.
        targets: ``(pairs,)`` long.
        max_splits: Most midpoint splits per segment.
        batch_size: Most sub-intervals bounded in one propagation (bounds memory).

    Returns:
        :class:`BoundCheck`.

    Raises:
        NotBoundedError: the tail holds an operation bounds do not cover, or computes other
            values when traced (see :func:`connectivity.engine.bounds.bound_program`).
    """
    pairs, count = paths.shape[0], paths.shape[1]
    segments = count - 1
    check = _empty(pairs, count)
    finite = torch.isfinite(paths.flatten(1)).all(dim=1).cpu()
    rows = finite.nonzero().squeeze(1)
    if rows.numel():
        chosen = paths[rows.to(paths.device)].detach()
        starts = chosen[:, :-1].reshape(-1, *paths.shape[2:])
        ends = chosen[:, 1:].reshape(-1, *paths.shape[2:])
        proof = prove_segments(
            program,
            starts,
            ends,
            targets[rows.to(targets.device)].repeat_interleave(segments),
            max_splits=max_splits,
            batch_size=batch_size,
        )
        for k, p in enumerate(rows.tolist()):
            _fill(check, p, proof, slice(k * segments, (k + 1) * segments), segments)
    check.max_splits = max_splits
    return check


def _empty(pairs: int, count: int) -> BoundCheck:
    """Every path off target on its whole length (the outcome for a path that is not finite),
    to be filled in for the others."""
    return BoundCheck(
        **off_target_everywhere(pairs, count),
        min_margin_lower_bound=torch.full((pairs,), -math.inf, dtype=torch.float64),
        sub_intervals=torch.zeros(pairs, dtype=torch.long),
        bound_evaluations=torch.zeros(pairs, dtype=torch.long),
        budget=torch.zeros(pairs, dtype=torch.long),
    )


def _fill(check: BoundCheck, p: int, proof: SegmentProof, mine: slice, segments: int) -> None:
    """Path ``p``'s entries from its segments' rows ``mine`` of ``proof``."""
    status = proof.status[mine]
    tolerance = float(proof.tolerance[mine].amax().cpu())
    t = proof.counterexample_t[mine].cpu()
    margin = proof.counterexample_margin[mine].cpu()
    found = ~torch.isnan(t)
    position = (torch.arange(segments, dtype=torch.float64) + t) / segments
    check.min_margin[p] = float(proof.min_margin[mine].amin().cpu())
    check.tolerance[p] = tolerance
    check.passed[p] = all(s == "proved" for s in status)
    check.decided[p] = bool(check.passed[p]) or bool((margin[found] < -tolerance).any())
    check.min_margin_lower_bound[p] = float(proof.min_margin_lower_bound[mine].amin().cpu())
    check.sub_intervals[p] = int(proof.sub_intervals[mine].sum())
    check.bound_evaluations[p] = int(proof.bound_evaluations[mine].sum())
    check.budget[p] = sum(s == "budget" for s in status)
    check.off_target[p] = position[found].repeat(2, 1).T.contiguous()
    check.positions[p] = position[found]
    check.margins[p] = margin[found]
