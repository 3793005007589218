"""Checks of flat triangles (issue 22): the common result and the sampled check.

A triangle ``(a, b, c)`` holds the points ``w_a a + w_b b + w_c c`` with barycentric weights
``w >= 0`` summing to 1. A surface of the surfaces search is a mesh of such triangles, and its
verdict holds for every point of every triangle under the check that ran:

* ``"exact"``: the partition of the triangle into the linear regions of a piecewise-linear
  tail (the plane version of ExactLine; SyReNN, Sotoudeh & Thakur), in
  :mod:`connectivity.engine.exact_plane`;
* ``"bounds"``: bound propagation over the triangle with subdivision, in
  :mod:`connectivity.engine.bound_triangles`;
* ``"sampled"``: the tail at a barycentric grid of points per triangle (here): a failure found
  is real, a pass is only what the grid saw.

Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# What a triangle's check ended with.
PROVED = "proved"  # every point's margin is above the tolerance (exact or bounds)
COUNTEREXAMPLE = "counterexample"  # a point with margin <= 0 was found (``counterexample``)
BUDGET = "budget"  # the check's budget (regions, splits) ran out first: undecided
SAMPLED = "sampled"  # every sampled point is on the target: not a proof
UNDECIDED = "undecided"  # the check could not run here (``note`` says why)
STATUSES = (PROVED, COUNTEREXAMPLE, BUDGET, SAMPLED, UNDECIDED)


@dataclass
class TriangleCheck:
    """The check of ``T`` triangles.

    Attributes:
        kind: ``"exact"``, ``"bounds"`` or ``"sampled"``: which check ran.
        status: Per triangle one of :data:`STATUSES`.
        min_margin: ``(T,)`` float64: the lowest target margin (``logit[y] - max_{k != y}
            logit[k]``) at the points the check evaluated; for ``"exact"`` with status
            ``"proved"`` or ``"counterexample"`` the exact minimum over the triangle.
        min_margin_lower_bound: ``(T,)`` float64: a proved lower bound of the margin over the
            whole triangle (the exact minimum for ``"exact"``); NaN where none was proved
            (``"sampled"``, ``"undecided"``).
        counterexample: ``(T, 3)`` float64 barycentric weights of a point whose margin is
            ``<= 0``; NaN rows where none was found.
        counterexample_margin: ``(T,)`` float64: the tail's margin there (NaN where none).
        pieces: ``(T,)`` long: linear regions (``"exact"``), final sub-triangles
            (``"bounds"``) or sampled points (``"sampled"``).
        evaluations: ``(T,)`` long: bound evaluations (``"bounds"``), else 0.
        note: Per triangle, why it is undecided (empty otherwise).
    """

    kind: str
    status: list[str]
    min_margin: Tensor
    min_margin_lower_bound: Tensor
    counterexample: Tensor
    counterexample_margin: Tensor
    pieces: Tensor
    evaluations: Tensor
    note: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.note:
            self.note = [""] * len(self.status)

    @property
    def failed(self) -> Tensor:
        """``(T,)`` bool: a point off the target was found."""
        return torch.tensor([s == COUNTEREXAMPLE for s in self.status], dtype=torch.bool)

    @property
    def passed(self) -> Tensor:
        """``(T,)`` bool: proved, or (sampled check) every sampled point on the target."""
        return torch.tensor([s in (PROVED, SAMPLED) for s in self.status], dtype=torch.bool)

    @property
    def proved(self) -> Tensor:
        """``(T,)`` bool: every point of the triangle is proved on the target."""
        return torch.tensor([s == PROVED for s in self.status], dtype=torch.bool)


def empty_check(kind: str, count: int, status: str = UNDECIDED, note: str = "") -> TriangleCheck:
    """A :class:`TriangleCheck` of ``count`` triangles that all ended ``status`` with nothing
    evaluated (e.g. undecided, with the reason in ``note``)."""
    nan = torch.full((count,), math.nan, dtype=torch.float64)
    zeros = torch.zeros(count, dtype=torch.long)
    return TriangleCheck(
        kind,
        [status] * count,
        nan.clone(),
        nan.clone(),
        torch.full((count, 3), math.nan, dtype=torch.float64),
        nan.clone(),
        zeros.clone(),
        zeros.clone(),
        [note] * count,
    )


def barycentric_grid(per_edge: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(G, 3)`` barycentric weights ``(i, j, k) / per_edge`` with ``i + j + k = per_edge``:
    the triangle's corners, ``per_edge - 1`` points inside each edge and the grid inside;
    ``G = (per_edge + 1)(per_edge + 2) / 2``.

    Raises:
        ValueError: ``per_edge < 1``.
    """
    if per_edge < 1:
        raise ValueError(f"per_edge must be at least 1, got {per_edge}")
    rows = [(i, j, per_edge - i - j) for i in range(per_edge + 1) for j in range(per_edge + 1 - i)]
    return torch.tensor(rows, dtype=dtype) / per_edge


def triangle_points(a: Tensor, b: Tensor, c: Tensor, weights: Tensor) -> Tensor:
    """``(T, G, *point_shape)``: the points of barycentric ``weights`` ``(G, 3)`` in each
    triangle ``(a, b, c)`` (each ``(T, *point_shape)``), in ``a``'s dtype."""
    w = weights.to(a.device, a.dtype)
    view = (1, -1, *([1] * (a.dim() - 1)))
    return (
        w[:, 0].view(view) * a.unsqueeze(1)
        + w[:, 1].view(view) * b.unsqueeze(1)
        + w[:, 2].view(view) * c.unsqueeze(1)
    )


def logit_margins(logits: Tensor, targets: Tensor) -> Tensor:
    """``(B,)`` float64 ``logit[y] - max_{k != y} logit[k]`` of logits ``(B, classes)``; a
    non-finite output gives ``-inf`` (never on target)."""
    logits = logits.double()
    y = targets.view(-1, 1).to(logits.device)
    target = logits.gather(1, y).squeeze(1)
    others = logits.scatter(1, y, -math.inf).amax(dim=1)
    margin = target - others
    finite = torch.isfinite(logits).all(dim=1)
    return torch.where(finite, margin, -math.inf)


@torch.no_grad()
def sampled_triangles(
    tail: nn.Module,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    per_edge: int = 8,
    chunk_size: int = 4096,
) -> TriangleCheck:
    """The tail at a barycentric grid of each triangle (:func:`barycentric_grid`).

    A point whose margin is ``<= 0`` is a counterexample (the first one of the grid's order);
    a triangle without one ends ``"sampled"``: every grid point is on the target, which is not
    a proof for the points between them.

    Args:
        tail: Points ``(B, *point_shape)`` to logits ``(B, classes)``.
        a, b, c: ``(T, *point_shape)`` corners.
        targets: ``(T,)`` long target classes.
        per_edge: Grid divisions per edge (``>= 1``).
        chunk_size: Most points per call of the tail.

    Returns:
        A :class:`TriangleCheck` of kind ``"sampled"``.
    """
    weights = barycentric_grid(per_edge)
    count, grid = a.shape[0], weights.shape[0]
    margins = torch.empty(count, grid, dtype=torch.float64)
    per_call = max(1, chunk_size // grid)
    for first in range(0, count, per_call):
        rows = slice(first, first + per_call)
        points = triangle_points(a[rows], b[rows], c[rows], weights)
        logits = tail(points.flatten(0, 1))
        y = targets[rows].to(logits.device).repeat_interleave(grid)
        margins[rows] = logit_margins(logits, y).view(-1, grid).cpu()
    low = margins.amin(dim=1)
    off = margins <= 0
    first_off = off.float().argmax(dim=1)
    found = off.any(dim=1)
    nowhere = torch.full((count, 3), math.nan, dtype=torch.float64)
    counterexample = torch.where(found.unsqueeze(1), weights[first_off], nowhere)
    counterexample_margin = torch.where(
        found, margins.gather(1, first_off.unsqueeze(1)).squeeze(1), math.nan
    )
    return TriangleCheck(
        "sampled",
        [COUNTEREXAMPLE if bool(f) else SAMPLED for f in found],
        low,
        torch.full((count,), math.nan, dtype=torch.float64),
        counterexample,
        counterexample_margin,
        torch.full((count,), grid, dtype=torch.long),
        torch.zeros(count, dtype=torch.long),
    )
