"""Bound propagation over flat triangles, with subdivision (``certify="bounds"``, issue 22).

Pure PyTorch, no Lightning. A triangle ``(a, b, c)`` holds the points ``w_a a + w_b b + w_c c``
(``w >= 0``, summing to 1). :func:`prove_triangles` proves the target margin ``logit[y] -
max_{k != y} logit[k]`` above the tolerance at every one of them, or finds a point where it is
``<= 0``, by branch and bound over sub-triangles; each sub-triangle is bounded by the
one-parameter forward bounds of :mod:`connectivity.engine.bounds` on a *thick segment* that
encloses it:

* The enclosure. Let ``(p, q)`` be the sub-triangle's shortest edge (in the L1 norm: the box
  below is ``|p - q| / 2`` wide in every coordinate, and a layer ``W`` turns it into ``|W| |p -
  q| / 2``), ``m = (p + q) / 2`` its midpoint and ``r`` the opposite corner. The point of
  weights ``(w_p, w_q, w_r)`` is ``m + t (r - m) + (w_p - w_q) (p - q) / 2`` with ``t = w_r``,
  and ``|w_p - w_q| <= 1 - t``: it lies in the box ``m + t (r - m) +- (1 - t) |p - q| / 2``
  (elementwise), whose lower and upper lines in ``t`` in ``[0, 1]`` are the input of
  :func:`connectivity.engine.bounds.margin_bounds` with ``radius`` (lower ``(r - m + rho) t +
  m - rho``, upper ``(r - m - rho) t + m + rho``, ``rho = |p - q| / 2``). A degenerate
  triangle whose two corners coincide is the segment case (``rho = 0``; its bound is the
  segment's less the widenings below); one that is a point is the point's bound.
* Its looseness against a genuinely two-parameter bound (``z = m + t (r - m) + s (p - q) / 2``
  with ``s`` a second parameter): the box forgets that its width lies along the one direction
  ``p - q``, so after a linear layer its radius is ``|W| |p - q| / 2`` where the two-parameter
  bound keeps ``|W (p - q)| / 2`` (up to some ``sqrt(d)`` larger for a random direction in
  ``d`` dimensions), and every later relaxation sees the wider ranges. Both errors shrink
  linearly with the sub-triangle's size, so subdivision closes the gap, at the price of more
  splits (the box's loss is measured below: it dominates); the one-parameter machinery (every
  covered operation, its float rounding) is reused unchanged.
* Subdivision: a sub-triangle whose bound is not above the tolerance (the rule of
  :func:`connectivity.engine.bounds.prove_segments`: 1,000 machine epsilons of the tail's dtype
  times the largest absolute logit seen on the triangle) is split, and the tail's real margin is
  evaluated at the new vertices (``<= 0``: a counterexample, with its barycentric weights relative
  to the original triangle). How: while the sub-triangle's shortest edge is longer than
  :data:`_THIN` (1/16) of its longest, that edge (the one the box collapsed) is bisected: two
  children, each with the box half as wide and the segment as long; a thinner one is split into
  four by its edges' midpoints (children similar to it: box and segment both halve, so it stays a
  sliver of that ratio). Why: the box costs far more than the segment's length. On random
  16-dimensional tails (``benchmarks/bound_triangles_check.py``) the whole-triangle bound fell 30
  to 1,300 times further below the sampled minimum than the bounds of the triangle's three edges
  did (on the smallest ReLU triangles the edges' bounds were exact); splitting only in four needed
  2 to 10 times the bound evaluations of this rule and proved fewer triangles within the budget,
  bisecting the collapsed edge only (never shrinking the segment) stalled where the segment itself
  needs splitting, and the ratio 1/16 did as well as or better than 1/32, 1/8 and 1/4 there (in
  more dimensions the box loses more, see above, and a smaller ratio may pay). Open sub-triangles
  are split lowest bound first, up to ``max_splits`` splits (in two or four) per triangle (status
  ``"budget"`` after).
* Cost: one bound of a sub-triangle is one forward propagation of a segment (the box's lines
  are as many as a segment's); a split costs two or four bounds and one or three evaluations of
  the tail. A piecewise-linear tail is bounded exactly on a sub-triangle only where its box
  crosses no kink: the box is wider than the sub-triangle, so proofs there need more
  subdivision than the sub-triangle alone would.

Floating point: the sub-triangles' corners are computed in float64 from dyadic barycentric
weights (exact to a depth of :data:`_MAX_DEPTH` halvings, so the sub-triangles tile the
triangle exactly); the corners' rounding is covered by widening the box by
:data:`_SLACK` times ``|a| + |b| + |c|`` elementwise (the rounding is below 4 machine epsilons
of that), and the rounding of the box's lines by the widening of
:func:`connectivity.engine.bounds.margin_bounds`' input. Real margins are the tail's own, in
its dtype, at the points :func:`connectivity.engine.triangles.triangle_points` gives for the
weights (so a consumer recomputing a counterexample gets the same margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from connectivity.engine.bounds import (
    BoundProgram,
    _check_points_apart,
    _check_program,
    _real_margins,
    bound_program,
    margin_bounds,
)
from connectivity.engine.exact import TOLERANCE_EPSILONS
from connectivity.engine.split import floating_dtype
from connectivity.engine.triangles import (
    BUDGET,
    COUNTEREXAMPLE,
    PROVED,
    TriangleCheck,
)

__all__ = ["prove_triangles"]

# Sub-triangles at this depth are not split again: their barycentric weights are dyadic with
# denominators 2**depth, exact in float64 (and their midpoints too) while depth < 53.
_MAX_DEPTH = 48
# The box's widening, relative to |a| + |b| + |c| of the original triangle: covers the float64
# rounding of a sub-triangle's corners (w_a a + w_b b + w_c c, below 4 epsilons of that).
_SLACK = 1e-12
# Barycentric weights of the corners of the original triangle: row k is corner k.
_CORNERS = torch.eye(3, dtype=torch.float64)
# A sub-triangle whose shortest edge is at most this share of its longest is split in four, a
# fatter one in two across its shortest edge (see the module docstring).
_THIN = 1 / 16


@dataclass
class _Leaves:
    """The current sub-triangles of all triangles. ``weights`` ``(L, 3, 3)``: row ``k`` the
    barycentric weights of corner ``k`` relative to the original triangle; ``bound`` NaN until
    computed, ``inherited`` the parent's bound (valid on the child) meanwhile."""

    triangle: Tensor
    weights: Tensor
    depth: Tensor
    bound: Tensor
    inherited: Tensor
    cut: Tensor  # (L,) long: how to split (see _enclosures), set when bounded

    def lowest(self, count: int) -> Tensor:
        """``(count,)`` the lowest bound of each triangle's sub-triangles."""
        known = torch.where(torch.isnan(self.bound), self.inherited, self.bound)
        out = torch.full((count,), math.inf, dtype=torch.float64, device=known.device)
        return out.scatter_reduce(0, self.triangle, known, "amin")


def _points(a: Tensor, b: Tensor, c: Tensor, weights: Tensor) -> Tensor:
    """``(K, *point_shape)`` in ``a``'s dtype: ``w_0 a + w_1 b + w_2 c`` per row, for
    ``weights`` ``(K, 3)`` and corners ``(K, *point_shape)``; the same operations as
    :func:`connectivity.engine.triangles.triangle_points`, so the same floats."""
    w = weights.to(a.device, a.dtype)
    view = (-1, *([1] * (a.dim() - 1)))
    return w[:, 0].view(view) * a + w[:, 1].view(view) * b + w[:, 2].view(view) * c


def _enclosures(
    corners: tuple[Tensor, Tensor, Tensor], leaves: _Leaves, rows: Tensor
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], Tensor]:
    """The thick segment of each sub-triangle ``rows``: ``(m, r, (radius at t = 0, at t =
    1))``, float64 ``(K, *point_shape)`` each (see the module docstring), and ``(K,)`` long how
    to split it: -1 in four (a sliver), else in two across the edge opposite that corner (the
    edge the box collapsed)."""
    a, b, c = (x[leaves.triangle[rows]] for x in corners)
    weights = leaves.weights[rows]
    points = torch.stack([_points(a, b, c, weights[:, k]) for k in range(3)], 1)
    edges = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]], device=points.device)  # p, q, r
    lengths = torch.stack(
        [(points[:, p] - points[:, q]).flatten(1).abs().sum(1) for p, q, _ in edges.tolist()], 1
    )
    shortest = edges[lengths.argmin(1)]  # (K, 3)
    picked = [
        points[torch.arange(len(rows), device=points.device), shortest[:, k]] for k in (0, 1, 2)
    ]
    p, q, r = picked
    slack = _SLACK * (a.abs() + b.abs() + c.abs())
    # (<=: a point splits in four, not into copies of itself)
    thin = lengths.amin(1) <= _THIN * lengths.amax(1)
    cut = torch.where(thin, -1, shortest[:, 2])
    return (p + q) / 2, r, ((p - q).abs() / 2 + slack, slack), cut


def _bound_leaves(
    program: BoundProgram,
    leaves: _Leaves,
    todo: Tensor,
    triangles: tuple[Tensor, Tensor, Tensor, Tensor],
    batch_size: int,
) -> None:
    a, b, c, targets = triangles
    for chunk in todo.nonzero().squeeze(1).split(batch_size):
        m, r, radius, cut = _enclosures((a, b, c), leaves, chunk)
        leaves.cut[chunk] = cut.to(leaves.cut.device)
        ones = torch.ones(len(chunk), dtype=torch.float64, device=m.device)
        y = targets[leaves.triangle[chunk]]
        bound = margin_bounds(program, m, r, y, ones * 0, ones, radius=radius)
        leaves.bound[chunk] = bound.to(leaves.bound.device)


def _split_choice(
    leaves: _Leaves, status: list[str], tolerance: Tensor, splits: Tensor, max_splits: int
) -> Tensor:
    """Rows to split (the lowest bounds first, within each triangle's budget); marks triangles
    proved or out of budget."""
    count = len(status)
    live = torch.tensor([not s for s in status], dtype=torch.bool, device=leaves.bound.device)
    open_ = live[leaves.triangle] & ~(leaves.bound > tolerance[leaves.triangle])
    splittable = open_ & (leaves.depth < _MAX_DEPTH)
    left = (max_splits - splits).clamp(min=0)
    has_open = torch.bincount(leaves.triangle[open_], minlength=count) > 0
    can = torch.bincount(leaves.triangle[splittable], minlength=count) > 0
    for s in range(count):
        if status[s]:
            continue
        if not bool(has_open[s]):
            status[s] = PROVED
        elif int(left[s]) <= 0 or not bool(can[s]):
            status[s] = BUDGET
    rows = splittable.nonzero().squeeze(1)
    undecided = [not status[int(t)] for t in leaves.triangle[rows]]
    rows = rows[torch.tensor(undecided, dtype=torch.bool, device=rows.device)]
    # rank of each candidate within its triangle, lowest bound first (two stable sorts)
    rows = rows[leaves.bound[rows].argsort(stable=True)]
    rows = rows[leaves.triangle[rows].argsort(stable=True)]
    group = leaves.triangle[rows]
    first = torch.searchsorted(group, group, right=False)
    rank = torch.arange(len(rows), device=rows.device) - first
    return rows[rank < left[group]]


def _quarters(w: Tensor) -> tuple[list[Tensor], Tensor]:
    """The four children ``(K, 3, 3)`` of sub-triangles of corner weights ``w`` ``(K, 3, 3)``
    split by their edges' midpoints, and the midpoints ``(K, 3, 3)``."""
    m01, m12, m02 = (w[:, 0] + w[:, 1]) / 2, (w[:, 1] + w[:, 2]) / 2, (w[:, 0] + w[:, 2]) / 2
    corners = ((w[:, 0], m01, m02), (m01, w[:, 1], m12), (m02, m12, w[:, 2]), (m12, m02, m01))
    return [torch.stack(c, 1) for c in corners], torch.stack([m01, m12, m02], 1)


def _halves(w: Tensor, cut: Tensor) -> tuple[list[Tensor], Tensor]:
    """The two children ``(K, 3, 3)`` of sub-triangles ``w`` ``(K, 3, 3)`` split at the
    midpoint of the edge opposite corner ``cut`` ``(K,)``, and the midpoints ``(K, 1, 3)``."""
    rows = torch.arange(w.shape[0], device=w.device)
    r, p, q = w[rows, cut], w[rows, (cut + 1) % 3], w[rows, (cut + 2) % 3]
    middle = (p + q) / 2
    return [torch.stack([p, middle, r], 1), torch.stack([middle, q, r], 1)], middle.unsqueeze(1)


def _split(leaves: _Leaves, chosen: Tensor) -> tuple[_Leaves, Tensor, Tensor]:
    """The leaves with each ``chosen`` one split (in four where its ``cut`` is -1, else in two
    at the midpoint of the edge opposite ``cut``), and the new vertices: ``(V,)`` their
    triangles, ``(V, 3)`` their weights."""
    keep = torch.ones_like(leaves.triangle, dtype=torch.bool)
    keep[chosen] = False
    kept = (leaves.triangle, leaves.weights, leaves.depth, leaves.bound, leaves.inherited)
    parts: list[tuple[Tensor, ...]] = [(*(x[keep] for x in kept), leaves.cut[keep])]
    vertices: list[tuple[Tensor, Tensor]] = []
    cut = leaves.cut[chosen]
    for rows in (chosen[cut < 0], chosen[cut >= 0]):
        if not len(rows):
            continue
        w = leaves.weights[rows]
        kids, middles = _quarters(w) if leaves.cut[rows[0]] < 0 else _halves(w, leaves.cut[rows])
        bound = leaves.bound[rows]
        parent = torch.where(torch.isnan(bound), leaves.inherited[rows], bound)
        for kid in kids:
            unknown = torch.full_like(parent, math.nan)
            depth = leaves.depth[rows] + 1
            parts.append((leaves.triangle[rows], kid, depth, unknown, parent, leaves.cut[rows]))
        vertices.append((leaves.triangle[rows].repeat_interleave(middles.shape[1]), middles))
    columns = [torch.cat(column) for column in zip(*parts, strict=True)]
    where = torch.cat([v[0] for v in vertices])
    weights = torch.cat([v[1].flatten(0, 1) for v in vertices])
    return _Leaves(*columns), where, weights


@dataclass
class _Found:
    """What the real margins showed so far, per triangle: ``status`` (``""`` while open),
    ``weights`` ``(T, 3)`` and ``margin`` ``(T,)`` of the counterexample (NaN where none),
    ``lowest`` margin evaluated, ``scale`` the largest absolute logit seen (at least 1)."""

    status: list[str]
    weights: Tensor
    margin: Tensor
    lowest: Tensor
    scale: Tensor

    def add(self, triangle: Tensor, weights: Tensor, margin: Tensor, largest: Tensor) -> None:
        """Take the margins ``(K,)`` of the tail at points ``weights`` ``(K, 3)`` of triangles
        ``triangle`` ``(K,)``: a triangle still open with margins ``<= 0`` among them ends a
        counterexample, at the lowest one."""
        self.lowest = self.lowest.scatter_reduce(0, triangle, margin, "amin")
        self.scale = self.scale.scatter_reduce(0, triangle, largest, "amax")
        for i in margin.argsort().tolist():
            s = int(triangle[i])
            if float(margin[i]) > 0:
                break
            if not self.status[s]:
                self.status[s] = COUNTEREXAMPLE
                self.weights[s] = weights[i].to(self.weights)
                self.margin[s] = float(margin[i])


def _apart(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The two corners farthest apart (the segment on which a tail is seen to keep the points
    of a batch apart, :func:`connectivity.engine.bounds._check_points_apart`)."""
    pairs = ((a, b), (b, c), (a, c))
    return max(pairs, key=lambda pair: float((pair[0].double() - pair[1].double()).abs().sum()))


def _at_corners(program: BoundProgram, a: Tensor, b: Tensor, c: Tensor, targets: Tensor) -> _Found:
    """The tail's margins at the triangles' corners (a margin ``<= 0``: a counterexample)."""
    count, device = a.shape[0], a.device
    nan = torch.full((count,), math.nan, dtype=torch.float64, device=device)
    found = _Found(
        [""] * count,
        torch.full((count, 3), math.nan, dtype=torch.float64, device=device),
        nan.clone(),
        torch.full((count,), math.inf, dtype=torch.float64, device=device),
        torch.ones(count, dtype=torch.float64, device=device),
    )
    triangle = torch.arange(count, device=device).repeat(3)
    margin, largest = _real_margins(program.tail, torch.cat([a, b, c]), targets.repeat(3))
    found.add(triangle, _CORNERS.to(device).repeat_interleave(count, 0), margin, largest)
    return found


def prove_triangles(
    program: BoundProgram | nn.Module,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    max_splits: int = 1024,
    batch_size: int = 1024,
) -> TriangleCheck:
    """Branch and bound over sub-triangles: prove the target margin above the tolerance at
    every point of each triangle, or find a point where it is ``<= 0`` (the module docstring
    gives the enclosure, the subdivision and the tolerance).

    Each round bounds the new sub-triangles; one whose bound is not above the tolerance is
    split in two (across its shortest edge) or in four (a sliver), and the tail's real margin
    is evaluated at the new vertices (as at the corners first): a margin ``<= 0`` is a
    counterexample and ends the triangle's search. A triangle ends ``"proved"`` when no
    sub-triangle is left open, ``"budget"`` after ``max_splits`` splits (or when its open
    sub-triangles are :data:`_MAX_DEPTH` halvings deep).

    Args:
        program: The tail (points ``(B, *point_shape)`` to logits ``(B, classes)``, eval mode)
            or its :func:`connectivity.engine.bounds.bound_program` (which a tail holding
            attention needs, built with an example point).
        a, b, c: ``(T, *point_shape)`` corners.
        targets: ``(T,)`` long target classes.
        max_splits: Most splits (in two or four) per triangle.
        batch_size: Most sub-triangles bounded in one propagation (bounds memory).

    Returns:
        A :class:`connectivity.engine.triangles.TriangleCheck` of kind ``"bounds"``:
        ``min_margin`` the lowest real margin evaluated (corners and new vertices),
        ``min_margin_lower_bound`` the lowest bound of the final sub-triangles (``-inf`` where
        one is not finite), ``counterexample`` barycentric weights relative to the triangle,
        ``pieces`` final sub-triangles, ``evaluations`` sub-triangles bounded.

    Raises:
        NotBoundedError: the tail cannot be bounded (see
            :func:`connectivity.engine.bounds.bound_program`), mixes the points of a batch, or
            its traced program computes other logits than it (checked once per program).
    """
    program = program if isinstance(program, BoundProgram) else bound_program(program, a[:1])
    count, device = a.shape[0], a.device
    if count and not program.points_checked:
        _check_points_apart(program, *_apart(a[0], b[0], c[0]))
        program.points_checked = True
    targets = targets.to(device).long()
    found = _at_corners(program, a, b, c, targets)
    dtype = floating_dtype(program.tail) or a.dtype
    epsilon = TOLERANCE_EPSILONS * torch.finfo(dtype).eps
    zeros = torch.zeros(count, dtype=torch.float64, device=device)
    leaves = _Leaves(
        torch.arange(count, device=device),
        _CORNERS.to(device).expand(count, 3, 3).clone(),
        torch.zeros(count, dtype=torch.long, device=device),
        zeros + math.nan,
        zeros - math.inf,
        torch.zeros(count, dtype=torch.long, device=device),
    )
    splits = torch.zeros(count, dtype=torch.long, device=device)
    evaluations = torch.zeros(count, dtype=torch.long, device=device)
    triangles = (a.double(), b.double(), c.double(), targets)
    first_round = True
    while True:
        live = torch.tensor([not s for s in found.status], dtype=torch.bool, device=device)
        todo = torch.isnan(leaves.bound) & (live[leaves.triangle] | first_round)
        evaluations += torch.bincount(leaves.triangle[todo], minlength=count)
        _bound_leaves(program, leaves, todo, triangles, batch_size)
        if first_round:
            _check_program(leaves.bound, found.lowest, epsilon * found.scale)
            first_round = False
        chosen = _split_choice(leaves, found.status, epsilon * found.scale, splits, max_splits)
        if not len(chosen):
            break
        triangle = leaves.triangle[chosen]
        splits += torch.bincount(triangle, minlength=count)
        leaves, where, weights = _split(leaves, chosen)
        points = _points(a[where], b[where], c[where], weights)
        margin, largest = _real_margins(program.tail, points, targets[where])
        found.add(where, weights, margin, largest)
    return TriangleCheck(
        "bounds",
        found.status,
        found.lowest,
        leaves.lowest(count),
        found.weights,
        found.margin,
        torch.bincount(leaves.triangle, minlength=count),
        evaluations,
    )
