"""Exact class checks of flat triangles through a piecewise-linear network (ExactLine's plane
version).

Pure PyTorch (torch.fx), no Lightning. For a tail that :func:`exact.piecewise_linear_program
<connectivity.engine.exact.piecewise_linear_program>` accepts, the logits restricted to a
triangle ``z(w) = w_a a + w_b b + w_c c`` (barycentric weights ``w >= 0``, ``sum w = 1``) are
piecewise affine in ``w``. This module partitions each triangle into convex polygons on each of
which every value of the traced network is affine: then the target's margin ``logit[y] -
max_{k != y} logit[k]`` (a minimum of affine functions) is concave on each polygon, and its
minimum over the polygon is at one of the polygon's vertices. The lowest margin over all
vertices of all polygons is the exact minimum over the triangle.

Method: Sotoudeh & Thakur, "SyReNN: A Tool for Analyzing Deep Neural Networks", TACAS 2021,
and "Computing Linear Restrictions of Neural Networks", NeurIPS 2019 (the partition of a 2-D
plane region into linear regions), batched over triangles. Regions are convex polygons in
barycentric coordinates (where every triangle, even one with collinear corners or a single
point, is the standard simplex), given as cycles of vertex rows; every vertex carries the
values of the live traced nodes. Invariant: every value computed so far is affine on every
region, so it is the interpolation of the region's vertex values. An affine operation keeps it
(it is applied to the vertex values). At a kink operation (ReLU, LeakyReLU, ReLU6, Hardtanh,
clamp, abs...) every region where an element of the input crosses a kink is cut along the line
where it equals the kink (one element per region per round, until no region is crossed): a new
vertex on an edge ``(u, v)`` gets the values ``lerp(u, v, f_u / (f_u - f_v))``, exact by the
invariant, and the crossing element is set exactly to the kink there (as ExactLine does). A
pointwise max / min of two tensors cuts where the operands cross; a max pool cuts a region,
window by window, along the line where two winners are equal until one element of every window
is the maximum at all the region's vertices (then, and only then, the max of affine functions
is affine on the region). What each traced operation computes is decided by
:mod:`connectivity.engine.exact` (the same operations are accepted and refused).

Floating point: weights in float64, values in the network's dtype (as ExactLine). A value
within ``16`` epsilons of its column's largest magnitude over the triangle of a kink counts as
on it (the error this makes is of the size of the rounding); a region whose vertices' signs
are not those of an affine function beyond that (rounding) makes its triangle undecided, as do
a corner or the lowest vertex whose logits differ from the tail's own beyond the tolerance
(:func:`exact.margin_tolerance <connectivity.engine.exact.margin_tolerance>`'s rule), and a
margin within the tolerance of zero.

Memory: every vertex holds the live values of the network (each freed after its last reader),
and a batch of triangles whose vertices would hold more than ``max_values`` values goes on in
two halves from the operation where it overflowed (as check_segments goes on with the
stretches of a cut batch); a triangle that alone would starts again from the network's input
cut into four (its edges' midpoints), each part partitioned on its own (see
:func:`exact_triangles`).

:func:`linear_regions` returns the partition itself (the regions and the logits at their
vertices), for maps of linear regions on a plane as SplineCam (Humayun et al., CVPR 2023)
draws them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from connectivity.engine.exact import (
    _POOL_EPSILONS,
    INPUT,
    KINK,
    MAX_VALUES,
    MAX_VALUES_CPU,
    NO_OP,
    OUTPUT,
    PAIR,
    POOL,
    TOLERANCE_EPSILONS,
    NotPiecewiseLinearError,
    Program,
    UnreliableExactCheckError,
    _as_logits,
    _execute,
    _execute_argument,
    _expiring,
    _forward,
    _keep,
    _operation_name,
    _pool_dimensions,
    _pool_with_indices,
    _probe,
    _refresh_sizes,
    _Step,
    _tensors,
    piecewise_linear_program,
)
from connectivity.engine.triangles import (
    BUDGET,
    COUNTEREXAMPLE,
    PROVED,
    UNDECIDED,
    TriangleCheck,
    empty_check,
    logit_margins,
)

__all__ = ["MAX_GATHERED", "PlanePartition", "exact_triangles", "linear_regions"]

# Most values one gathered block of (regions x vertices x elements) holds while looking for
# crossings (2**22 float32 values: 16 MB); more regions are looked at in several blocks.
MAX_GATHERED = 2**22
# Seed of the order in which a region's crossing elements are cut (any order gives the same
# partition; a random one keeps chains of parallel lines to a logarithmic number of rounds).
_ORDER_SEED = 0
# A unit that alone overflows the memory bound is cut into four (midpoints); at most this
# many times over (a triangle of up to 4**6 parts), then its triangle is left undecided.
_MAX_DEPTH = 6
_BUDGET_NOTE = "more linear regions than max_regions"


class _OverflowError(Exception):
    """The vertices of a batch would hold more than its ``max_values`` live values (at
    program step ``step``, set by :func:`_run`)."""

    step = 0


class _Plane:
    """The partitions of a batch of ``U`` units (triangles or parts of them, see
    :func:`_units`).

    ``bary``: ``(P, 3)`` float64 barycentric weights of each vertex in its unit's triangle;
    ``owner``: ``(P,)`` long unit of each vertex; ``corner``: ``(P,)`` long, 0, 1, 2 for a
    unit's corners, -1 for other vertices; ``poly``: ``(R, M)`` long vertex rows of each region
    in cyclic order, padded with -1; ``region_owner``: ``(R,)`` long. ``values``: the live
    traced values at the vertices (first dimension ``P``); ``extra``: tensors of the current
    operation grown with them. ``status``: why a unit left the batch (undecided or over
    budget), with ``dropped_regions`` it had then.
    """

    def __init__(self, start: Tensor, max_regions: Tensor, max_values: int) -> None:
        count, device = start.shape[0], start.device
        self.bary = start.reshape(-1, 3).clone()
        self.owner = torch.arange(count, device=device).repeat_interleave(3)
        self.corner = torch.arange(3, device=device).repeat(count)
        self.poly = torch.arange(3 * count, device=device).view(count, 3)
        self.region_owner = torch.arange(count, device=device)
        self.active = torch.ones(count, dtype=torch.bool, device=device)  # regions to look at
        self.values: dict[fx.Node, Any] = {}
        self.dependent: set[fx.Node] = set()
        self.extra: list[Tensor] = []
        self.count = count
        self.max_regions = max_regions
        self.max_values = max_values
        self.status: dict[int, tuple[str, str]] = {}  # unit -> (status, note)
        self.dropped_regions: dict[int, int] = {}

    def live_values_per_point(self) -> int:
        seen: set[int] = set()
        total = 0
        for value in [*(self.values[n] for n in self.dependent), *self.extra]:
            for tensor in _tensors(value):
                if id(tensor) not in seen and tensor.dim() and tensor.shape[0] == self.points:
                    seen.add(id(tensor))
                    total += tensor.numel() // max(self.points, 1)
        return max(total, 1)

    @property
    def points(self) -> int:
        return int(self.bary.shape[0])

    def _map_rows(self, change: Callable[[Tensor], Tensor]) -> None:
        """Apply ``change`` to every per-vertex tensor (live values, aliases kept one)."""
        done: dict[int, Tensor] = {}
        count = self.points

        def apply(value: Any) -> Any:
            if isinstance(value, Tensor):
                if value.dim() == 0 or value.shape[0] != count:
                    return value
                if id(value) not in done:
                    done[id(value)] = change(value)
                return done[id(value)]
            if isinstance(value, tuple | list) and not isinstance(value, torch.Size):
                return type(value)(apply(v) for v in value)
            return value

        for node in self.dependent:
            self.values[node] = apply(self.values[node])
        self.extra = [apply(t) for t in self.extra]
        self.bary, self.owner, self.corner = apply(self.bary), apply(self.owner), apply(self.corner)

    def append(self, u: Tensor, v: Tensor, w: Tensor) -> Tensor:
        """Add vertices ``lerp(u, v, w)`` (rows ``u``, ``v`` ``(k,)`` of one triangle each,
        ``w`` ``(k,)`` float64 in (0, 1)); every value is interpolated (exact: values are
        affine on the region holding the edge). Returns the new rows ``(k,)``."""
        first = self.points
        if (first + len(u)) * self.live_values_per_point() > self.max_values:
            raise _OverflowError

        def grow(value: Tensor) -> Tensor:
            if not value.is_floating_point():
                return torch.cat([value, value[u]])
            weight = w.to(value.dtype).view(-1, *([1] * (value.dim() - 1)))
            return torch.cat([value, torch.lerp(value[u], value[v], weight)])

        self._map_rows(grow)
        self.corner[first:] = -1
        return torch.arange(first, self.points, device=u.device)

    def drop(self, triangles: Tensor, status: str, note: str) -> None:
        """Remove the regions and vertices of ``triangles`` (``(T,)`` bool), which end
        ``status`` with ``note`` (and the regions they have now)."""
        counts = torch.bincount(self.region_owner, minlength=self.count)
        for t in triangles.nonzero().flatten().tolist():
            self.status.setdefault(t, (status, note))
            self.dropped_regions[t] = int(counts[t])
        keep_region = ~triangles[self.region_owner]
        keep = ~triangles[self.owner]
        new_row = torch.cumsum(keep, 0) - 1
        poly = self.poly[keep_region]
        self.poly = torch.where(poly >= 0, new_row[poly.clamp_min(0)], -1)
        self.region_owner = self.region_owner[keep_region]
        self.active = self.active[keep_region]
        rows = keep.nonzero().flatten()
        self._map_rows(lambda value: value.index_select(0, rows))

    def subset(self, units: Tensor) -> _Plane:
        """A plane of ``units`` ``(k,)`` long only (renumbered in that order), with copies of
        their vertices' values."""
        keep = torch.zeros(self.count, dtype=torch.bool, device=units.device)
        keep[units] = True
        number = torch.full((self.count,), -1, dtype=torch.long, device=units.device)
        number[units] = torch.arange(len(units), device=units.device)
        rows = keep[self.owner].nonzero().flatten()
        part = copy.copy(self)
        part.values, part.dependent, part.extra = dict(self.values), set(self.dependent), []
        part._map_rows(lambda value: value.index_select(0, rows))
        new_row = torch.full((self.points,), -1, dtype=torch.long, device=units.device)
        new_row[rows] = torch.arange(len(rows), device=units.device)
        keep_region = keep[self.region_owner]
        poly = self.poly[keep_region]
        part.poly = torch.where(poly >= 0, new_row[poly.clamp_min(0)], -1)
        part.region_owner = number[self.region_owner[keep_region]]
        part.active = self.active[keep_region]
        part.owner = number[part.owner]
        part.count, part.max_regions = len(units), self.max_regions[units]
        index = {int(u): k for k, u in enumerate(units.tolist())}
        part.status = {index[u]: v for u, v in self.status.items() if u in index}
        part.dropped_regions = {index[u]: v for u, v in self.dropped_regions.items() if u in index}
        return part

    def enforce_budget(self) -> None:
        counts = torch.bincount(self.region_owner, minlength=self.count)
        over = counts > self.max_regions
        if bool(over.any()):
            self.drop(over, BUDGET, _BUDGET_NOTE)


# ---------------------------------------------------------------------------------------------
# Cutting regions along lines


def _cut(
    plane: _Plane, rows: Tensor, f: Tensor, delta: Tensor, key: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut regions ``rows`` ``(S,)`` along the zero line of an affine function with values
    ``f`` ``(S, M)`` float64 at their vertices (``|f| <= delta`` ``(S,)`` counts as zero);
    ``key`` ``(S,)`` long names the function (regions cut by one function share their new
    vertices on a common edge). Each region must have vertices beyond ``delta`` on both sides.

    A convex polygon's vertices have the signs of an affine function in one run of each sign;
    rows where rounding breaks that are not cut, and their triangles are returned as broken
    (the caller drops them, :func:`_drop_broken`).

    Returns:
        The new vertex rows ``(k,)``, the index into ``rows`` of a region each came from
        ``(k,)``, and the broken triangles ``(T,)`` bool.
    """
    poly = plane.poly[rows]
    valid = poly >= 0
    sign = torch.where(f > delta[:, None], 1, torch.where(f < -delta[:, None], -1, 0))
    sign = sign.masked_fill(~valid, 0)
    broken = torch.zeros(plane.count, dtype=torch.bool, device=poly.device)
    good = _sign_changes(sign) == 2
    broken[plane.region_owner[rows[~good]]] = True
    index = good.nonzero().flatten()
    rows, poly, valid, sign = rows[index], poly[index], valid[index], sign[index]
    f, key = f[index], key[index]
    if rows.numel() == 0:
        nothing = torch.zeros(0, dtype=torch.long, device=poly.device)
        return nothing, nothing, broken
    size = valid.sum(1, keepdim=True)
    position = torch.arange(poly.shape[1], device=poly.device).view(1, -1)
    after = (position + 1) % size.clamp_min(1)
    crossing = valid & (sign * sign.gather(1, after) < 0)
    region, slot = crossing.nonzero().unbind(1)
    u, v = poly[region, slot], poly[region, after[region, slot]]
    fu, fv = f[region, slot], f.gather(1, after)[region, slot]
    # One orientation per edge, so that two regions sharing it make the same vertex.
    swap = u > v
    u, v = torch.where(swap, v, u), torch.where(swap, u, v)
    fu, fv = torch.where(swap, fv, fu), torch.where(swap, fu, fv)
    edges = torch.stack([u, v, key[region]], dim=1)
    unique, inverse = torch.unique(edges, dim=0, return_inverse=True)
    # Any occurrence of an edge gives its vertex (same function, same ends): take the first.
    first = torch.full((len(unique),), len(inverse), dtype=torch.long, device=poly.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(inverse), device=poly.device), "amin")
    new = plane.append(unique[:, 0], unique[:, 1], fu[first] / (fu[first] - fv[first]))
    new_of_edge = torch.full_like(poly, -1)
    new_of_edge[region, slot] = new[inverse]
    _replace(plane, rows, poly, sign, new_of_edge)
    return new, index[region[first]], broken


def _drop_broken(plane: _Plane, broken: Tensor) -> None:
    if bool(broken.any()):
        plane.drop(broken, UNDECIDED, _ROUNDING_NOTE)


_ROUNDING_NOTE = (
    "rounding: the values at a region's vertices are not those of an affine function "
    "(their signs cross a kink more than once around the region)"
)


def _sign_changes(sign: Tensor) -> Tensor:
    """``(S,)``: sign changes between the nonzero entries of each row of ``sign`` ``(S, M)``,
    read as a cycle."""
    nonzero = sign != 0
    order = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)
    packed = sign.gather(1, order)
    count = nonzero.sum(1)
    last = packed.gather(1, (count - 1).clamp_min(0).view(-1, 1)).squeeze(1)
    inner = ((packed[:, 1:] != packed[:, :-1]) & (packed[:, 1:] != 0)).sum(1)
    return inner + (last != packed[:, 0]).long()


def _replace(plane: _Plane, rows: Tensor, poly: Tensor, sign: Tensor, new_of_edge: Tensor) -> None:
    """Replace regions ``rows`` by their parts with ``sign >= 0`` (in place) and ``<= 0``
    (appended); the new vertices ``new_of_edge`` ``(S, M)`` (after each slot) are in both."""
    count, width = poly.shape
    extended = torch.stack([poly, new_of_edge], dim=2).view(count, 2 * width)
    signs = torch.stack([sign, torch.zeros_like(sign)], dim=2).view(count, 2 * width)
    present = extended >= 0
    parts = []
    for mask in (present & (signs >= 0), present & (signs <= 0)):
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        part = torch.where(mask.gather(1, order), extended.gather(1, order), -1)
        parts.append(part[:, : int(mask.sum(1).max())])
    width = max(plane.poly.shape[1], *(p.shape[1] for p in parts))
    plane.poly = _padded(plane.poly, width)
    plane.poly[rows] = _padded(parts[0], width)
    plane.poly = torch.cat([plane.poly, _padded(parts[1], width)])
    plane.region_owner = torch.cat([plane.region_owner, plane.region_owner[rows]])
    plane.active[rows] = True
    plane.active = torch.cat([plane.active, torch.ones_like(rows, dtype=torch.bool)])


# ---------------------------------------------------------------------------------------------
# Kinks, pairs and pools


def _split_columns(
    plane: _Plane, flat_of: Callable[[], Tensor], levels: tuple[float, ...], generator: Any
) -> None:
    """Cut the regions until no column of ``flat_of()`` ``(P, n)`` (affine on every region)
    crosses one of ``levels`` strictly inside a region, beyond the rounding ``delta``:
    :data:`exact._POOL_EPSILONS` epsilons of the column's largest magnitude in the region's
    unit plus the level's (new vertices interpolate old ones, so the largest magnitude stays).
    The crossing column is set exactly to the level at the new vertices (interpolation would
    leave a rounding error there)."""
    plane.active[:] = True
    if plane.points == 0:
        return
    flat = flat_of()
    n = flat.shape[1]
    priority = torch.randperm(n * len(levels), generator=generator).to(flat.device) + 1
    level_of = torch.tensor(levels, dtype=torch.float64, device=flat.device)
    eps = _POOL_EPSILONS * torch.finfo(flat.dtype).eps
    delta = eps * (_unit_scale(plane, flat).unsqueeze(1) + level_of.abs().view(1, -1, 1))
    below = (level_of.view(1, -1, 1) - delta).to(flat.dtype).flatten(1)  # (U, levels * n)
    above = (level_of.view(1, -1, 1) + delta).to(flat.dtype).flatten(1)
    delta = delta.flatten(1)
    while plane.points and bool(plane.active.any()) and n:
        flat = flat_of()
        rows, choice = _crossing_columns(plane, flat, below, above, priority)
        plane.active[:] = False
        if rows.numel() == 0:
            return
        level, column = level_of[choice // n], choice % n
        poly = plane.poly[rows]
        f = flat[poly.clamp_min(0), column.view(-1, 1)].double() - level.view(-1, 1)
        cut = delta[plane.region_owner[rows], choice]
        new, region, broken = _cut(plane, rows, f, cut, choice)
        flat = flat_of()  # the grown tensor (a view of the value where it is contiguous)
        flat[new, column[region]] = level[region].to(flat.dtype)
        _drop_broken(plane, broken)
        plane.enforce_budget()


def _crossing_columns(
    plane: _Plane, flat: Tensor, below: Tensor, above: Tensor, priority: Tensor
) -> tuple[Tensor, Tensor]:
    """The active regions where a column of ``flat`` ``(P, n)`` is under ``below`` at one
    vertex and over ``above`` at another (``(U, levels * n)``, per unit, level and column),
    and one such (level, column) per region as ``level * n + column``, both ``(S,)``."""
    n = flat.shape[1]
    levels = below.shape[1] // max(n, 1)
    found_rows, found_choice = [], []
    active = plane.active.nonzero().flatten()
    width = plane.poly.shape[1]
    for chunk in active.split(max(1, MAX_GATHERED // max(1, width * n))):
        poly = plane.poly[chunk]
        # a padding slot repeats the first vertex: the extremes stay those of the region
        gathered = flat[torch.where(poly >= 0, poly, poly[:, :1])]  # (c, M, n)
        high, low = gathered.amax(1).repeat(1, levels), gathered.amin(1).repeat(1, levels)
        owner = plane.region_owner[chunk]
        score = ((low < below[owner]) & (high > above[owner])) * priority
        best = score.argmax(1)
        hit = score.gather(1, best.view(-1, 1)).squeeze(1) > 0
        found_rows.append(chunk[hit])
        found_choice.append(best[hit])
    empty = torch.zeros(0, dtype=torch.long, device=flat.device)
    rows = torch.cat(found_rows) if found_rows else empty
    return rows, torch.cat(found_choice) if found_choice else empty


def _unit_scale(plane: _Plane, values: Tensor) -> Tensor:
    """``(U, *rest)`` float64: the largest magnitude of ``values`` ``(P, *rest)`` over each
    unit's vertices (the size of their rounding errors)."""
    magnitude = values.detach().abs().nan_to_num(nan=0.0, posinf=0.0).double()
    index = plane.owner.view(-1, *[1] * (values.dim() - 1)).expand_as(magnitude)
    zeros = magnitude.new_zeros(plane.count, *values.shape[1:])
    return zeros.scatter_reduce(0, index, magnitude, "amax")


def _pair_crossings(plane: _Plane, node: fx.Node, generator: Any) -> None:
    """Cut where the two operands of a pointwise max / min cross."""
    a, b = (_execute_argument(v, plane.values) for v in [*node.args, *node.kwargs.values()])
    difference = torch.as_tensor(a) - torch.as_tensor(b)
    if difference.dim() == 0 or difference.shape[0] != plane.points:
        return  # neither operand depends on the point row by row: no crossing
    # The difference is grown with the values and set to zero where a cut makes a vertex.
    plane.extra = [difference.reshape(plane.points, -1).clone()]
    _split_columns(plane, lambda: plane.extra[0], (0.0,), generator)
    plane.extra = []


def _settle_pool(plane: _Plane, node: fx.Node, module: nn.Module, generator: Any) -> Any:
    """Cut the regions until, in every window, one element is the maximum at all vertices of
    each region (the max of affine functions is then affine there; exact.py's rule for
    segments, whose intervals are this one's regions). Returns the pool's output."""
    source = node.all_input_nodes[0]
    plane.active[:] = True
    # The rounding allowance: interpolated inputs keep the largest magnitude of the first ones.
    x = plane.values[source]
    scale = _unit_scale(plane, x.detach().flatten(2).abs().amax(2)) if x.dim() > 2 else None
    while True:
        args = fx.node.map_arg(node.args, lambda n: plane.values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: plane.values[n])
        out, index = _pool_with_indices(node, module, args, kwargs)
        x = plane.values[source]
        if x.dim() == _pool_dimensions(node, module) + 1:
            raise NotPiecewiseLinearError(
                f"{_operation_name(node, module)} (node {node.name}) pools an input without a "
                "channel dimension; the exact check needs (points, channels, ...)"
            )
        flat_x, flat_out, flat_index = x.flatten(2), out.flatten(2), index.flatten(2)
        assert scale is not None  # x has channels (checked above)
        delta = 2 * _POOL_EPSILONS * torch.finfo(x.dtype).eps * scale  # (U, C)
        rows, window = _unsettled_windows(plane, flat_x, flat_out, flat_index, delta, generator)
        plane.active[:] = False
        if rows.numel() == 0:
            return out
        channel, spot = window // flat_out.shape[2], window % flat_out.shape[2]
        f, a, b, broken = _winner_pairs(plane, rows, flat_x, flat_index, channel, spot, delta)
        keep = ~broken[plane.region_owner[rows]]
        rows, f, a, b, channel = rows[keep], f[keep], a[keep], b[keep], channel[keep]
        width = flat_x.shape[2]
        key = (channel * width + torch.minimum(a, b)) * width + torch.maximum(a, b)
        new, region, more = _cut(plane, rows, f, delta[plane.region_owner[rows], channel], key)
        x = plane.values[source]
        if x.is_contiguous():
            # The two winners are equal at the new vertices (as exact.py sets them).
            view = x.view(*x.shape[:2], -1)
            c, ia, ib = channel[region], a[region], b[region]
            tied = torch.maximum(view[new, c, ia], view[new, c, ib])
            view[new, c, ia] = tied
            view[new, c, ib] = tied
        _drop_broken(plane, broken | more)
        plane.enforce_budget()


def _unsettled_windows(
    plane: _Plane,
    flat_x: Tensor,
    flat_out: Tensor,
    flat_index: Tensor,
    delta: Tensor,
    generator: Any,
) -> tuple[Tensor, Tensor]:
    """The active regions with a window where the winner at every vertex trails the maximum
    at some vertex (beyond ``delta`` ``(U, C)``, per unit and channel: no element is the
    maximum all over the region), and one such window of each (channel times output length
    plus position), both ``(S,)``."""
    channels, length = flat_out.shape[1], flat_out.shape[2]
    priority = torch.randperm(channels * length, generator=generator).to(flat_x.device) + 1
    found_rows, found_window = [], []
    active = plane.active.nonzero().flatten()
    width = plane.poly.shape[1]
    for chunk in active.split(max(1, MAX_GATHERED // max(1, 2 * width * channels * length))):
        poly = plane.poly[chunk]
        vertices = torch.where(poly >= 0, poly, poly[:, :1])
        winners = flat_index[vertices]  # (c, M, C, L)
        # A window whose winner is one element at every vertex is settled; the others are
        # settled where some vertex's winner is the maximum at every vertex.
        row, channel, spot = (winners != winners[:, :1]).any(1).nonzero().unbind(1)
        corners = vertices[row]  # (K, M)
        won = winners[row, :, channel, spot]  # (K, M): the winner at each vertex
        floor = flat_out[corners, channel.view(-1, 1), spot.view(-1, 1)]
        floor = floor - delta[plane.region_owner[chunk[row]], channel].view(-1, 1).to(floor.dtype)
        # value[k, u, m]: the winner at vertex u, at vertex m
        value = flat_x[corners.unsqueeze(1), channel.view(-1, 1, 1), won.unsqueeze(2)]
        unsettled = ~(value >= floor.unsqueeze(1)).all(2).any(1)
        bad = torch.zeros(len(chunk), channels, length, dtype=torch.bool, device=flat_x.device)
        bad[row[unsettled], channel[unsettled], spot[unsettled]] = True
        score = bad.flatten(1) * priority
        best = score.argmax(1)
        hit = score.gather(1, best.view(-1, 1)).squeeze(1) > 0
        found_rows.append(chunk[hit])
        found_window.append(best[hit])
    if not found_rows:
        empty = torch.zeros(0, dtype=torch.long, device=flat_x.device)
        return empty, empty
    return torch.cat(found_rows), torch.cat(found_window)


def _winner_pairs(
    plane: _Plane,
    rows: Tensor,
    flat_x: Tensor,
    flat_index: Tensor,
    channel: Tensor,
    spot: Tensor,
    delta: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For each region ``rows`` ``(S,)`` and its window: the two vertices' winners ``a``,
    ``b`` whose difference changes sign most clearly over the region's vertices, that
    difference at the vertices ``(S, M)`` float64, and the units ``(U,)`` where no pair's
    does beyond ``delta`` ``(U, C)`` (winners that differ within rounding only)."""
    poly = plane.poly[rows]
    present = poly >= 0
    vertex = torch.where(present, poly, poly[:, :1])
    winner = flat_index[vertex, channel.view(-1, 1), spot.view(-1, 1)]  # (S, M)
    # value[s, u, m]: the winner at vertex u, at vertex m
    value = flat_x[vertex.unsqueeze(1), channel.view(-1, 1, 1), winner.unsqueeze(2)].double()
    difference = value.unsqueeze(2) - value.unsqueeze(1)  # (S, u, v, m)
    difference = difference.masked_fill(~present.view(len(rows), 1, 1, -1), 0.0)
    high, low = difference.amax(3), difference.amin(3)
    limit = delta[plane.region_owner[rows], channel].view(-1, 1, 1)
    score = torch.minimum(high, -low).masked_fill((high <= limit) | (low >= -limit), -math.inf)
    best = score.flatten(1).argmax(1)
    u, v = best // poly.shape[1], best % poly.shape[1]
    found = score.flatten(1).gather(1, best.view(-1, 1)).squeeze(1) > -math.inf
    broken = torch.zeros(plane.count, dtype=torch.bool, device=poly.device)
    broken[plane.region_owner[rows[~found]]] = True
    picked = torch.arange(len(rows), device=poly.device)
    f = difference[picked, u, v]
    return f, winner[picked, u], winner[picked, v], broken


# ---------------------------------------------------------------------------------------------
# Running the program on the partitions


def _run(
    program: Program, plane: _Plane, corners: Tensor, generator: Any, first: int = 0
) -> Tensor | None:
    """Run the program on the vertices of ``plane`` from step ``first`` on (the values of the
    steps before it in ``plane``), cutting regions at kinks, pairs and pools; returns the
    logits ``(P, classes)`` at the final vertices (None when every unit left the batch).
    ``corners``: ``(U, 3, *point_shape)``.

    Raises:
        _OverflowError: with the step that overflowed (the plane as it was before the
            vertices that did not fit).
    """
    steps = program.steps
    expiring = _expiring(steps)
    output = None
    for i, step in enumerate(steps):
        if i < first:
            continue
        try:
            output = _run_step(program, plane, i, corners, generator)
        except _OverflowError as overflow:
            overflow.step = i
            raise
        if step.kind == OUTPUT:
            break
        for gone in expiring.get(i, []):
            plane.values.pop(gone, None)
            plane.dependent.discard(gone)
        if plane.points == 0:
            return None
    return _as_logits(output)


def _run_step(program: Program, plane: _Plane, i: int, corners: Tensor, generator: Any) -> Any:
    """Step ``i`` of the program on the vertices; the output at the OUTPUT step."""
    step = program.steps[i]
    node = step.node
    if step.kind == INPUT:
        x = _points_at(corners, plane.owner, plane.bary)
        plane.values[node] = x.to(program.dtype) if program.dtype is not None else x
        plane.dependent.add(node)
        return None
    if step.kind == OUTPUT:
        return fx.node.map_arg(node.args[0], lambda n: plane.values[n])
    if step.kind == NO_OP:
        plane.values[node] = None  # an assertion: nothing to compute at the points
        return None
    # the vertices grow at cuts: _keep reads sizes off the values again (duck-typed points)
    _keep(plane, program, i, _cut_and_execute(program, plane, step, generator))
    return None


def _cut_and_execute(program: Program, plane: _Plane, step: _Step, generator: Any) -> Any:
    node, module = step.node, program.module
    if step.kind == KINK:
        source = node.all_input_nodes[0]
        _split_columns(
            plane,
            lambda: plane.values[source].reshape(plane.points, -1),
            step.kinks,
            generator,
        )
    if step.kind == PAIR:
        _pair_crossings(plane, node, generator)
    if step.kind == POOL:
        return _settle_pool(plane, node, module, generator)
    if plane.points == 0:
        return None  # every triangle left the batch at this cut
    return _execute(node, module, plane.values)


# ---------------------------------------------------------------------------------------------
# Triangles


@dataclass
class _Unit:
    """A triangle, or a part of one, partitioned in one batch: ``corners`` ``(3, 3)`` float64
    barycentric weights of its corners in triangle ``triangle``."""

    triangle: int
    corners: Tensor
    depth: int = 0

    def quarters(self) -> list[_Unit]:
        """The four triangles between its corners and its edges' midpoints."""
        p, q, r = self.corners
        pq, qr, rp = (p + q) / 2, (q + r) / 2, (r + p) / 2
        parts = [(p, pq, rp), (pq, q, qr), (rp, qr, r), (pq, qr, rp)]
        return [_Unit(self.triangle, torch.stack(c), self.depth + 1) for c in parts]


@dataclass
class _Outcome:
    """What the partition of a unit found: ``status`` empty when partitioned (then ``low``,
    its tolerance, the weights of its lowest vertex, the tail's own margin there and the
    largest difference of checked logits from the tail's own against its limit), else
    ``"budget"`` or ``"undecided"`` with ``note``."""

    regions: int
    status: str = ""
    note: str = ""
    low: float = math.nan
    tolerance: float = math.nan
    weights: Tensor | None = None
    direct: float = math.nan
    gap: float = 0.0
    limit: float = math.inf


def _units(
    program: Program,
    corners: Tensor,
    rows: list[int],
    max_regions: int,
    max_values: int,
    batch_size: int,
    visit: Callable[[list[_Unit], _Plane, Tensor | None, str], None],
) -> None:
    """Partition triangles ``rows`` of ``corners`` ``(T, 3, *point_shape)`` in batches of
    units, calling ``visit(units, plane, logits, reason)`` for each part of a batch.

    A batch whose vertices would hold more than ``max_values`` values goes on in two halves
    from the operation where it overflowed (:func:`_resume`; later batches are as small as
    its parts); a unit that overflows alone starts again from the network's input cut into
    four, up to :data:`_MAX_DEPTH` times (then its triangle is undecided).
    """
    pending = [_Unit(t, torch.eye(3, dtype=torch.float64, device=corners.device)) for t in rows]
    generator = torch.Generator().manual_seed(_ORDER_SEED)
    regions: dict[int, int] = dict.fromkeys(rows, 0)
    while pending:
        batch, pending = pending[:batch_size], pending[batch_size:]
        owners = torch.tensor([u.triangle for u in batch], device=corners.device)
        budget = torch.tensor([max_regions - regions[u.triangle] for u in batch])
        start = torch.stack([u.corners for u in batch])
        plane = _Plane(start, budget.to(corners.device), max_values)
        found = _resume(program, plane, corners[owners], generator, 0, owners.new_tensor([]))
        del plane  # its parts hold what is left of it
        again: list[_Unit] = []
        for index, part, logits, reason in found:
            units = [batch[i] for i in index.tolist()]
            if reason == _OVERFLOW and units[0].depth < _MAX_DEPTH:
                again += units[0].quarters()
                continue
            if logits is not None:
                counts = torch.bincount(part.region_owner, minlength=len(units)).tolist()
                for unit, count in zip(units, counts, strict=True):
                    regions[unit.triangle] += count
            visit(units, part, logits, _MEMORY_NOTE if reason == _OVERFLOW else reason)
        if len(found) > 1:
            batch_size = max(1, min(len(index) for index, *_ in found))
        pending = again + pending


_OVERFLOW = "overflow"  # a unit that alone overflows the memory bound
_MEMORY_NOTE = (
    "memory: the partition of a part of this triangle 4**6 times smaller than it needs more "
    "values than max_values"
)


def _resume(
    program: Program,
    plane: _Plane,
    corners: Tensor,
    generator: Any,
    first: int,
    units: Tensor,
) -> list[tuple[Tensor, _Plane, Tensor | None, str]]:
    """Run the program on ``plane`` from step ``first`` (see :func:`_run`); where it
    overflows, go on in two halves of its units from that step. Returns per part the indices
    of its units in the batch (``units``; empty: all), the part, the logits at its vertices
    (None when none is left or it failed) and why it failed (empty when it did not;
    :data:`_OVERFLOW` for a unit that overflows alone).

    Raises:
        NotPiecewiseLinearError: see :func:`~connectivity.engine.exact.piecewise_linear_program`.
    """
    if units.numel() == 0:
        units = torch.arange(plane.count, device=corners.device)
    try:
        logits = _run(program, plane, corners, generator, first)
    except NotPiecewiseLinearError:
        raise
    except _OverflowError as overflow:
        if plane.count == 1:
            return [(units, plane, None, _OVERFLOW)]
        halves = torch.arange(plane.count, device=corners.device).tensor_split(2)
        parts = [plane.subset(half) for half in halves]
        del plane
        found = []
        for half in halves:
            part = parts.pop(0)
            _refresh_sizes(part, program.steps, overflow.step, program.module)  # type: ignore[arg-type]
            found += _resume(program, part, corners[half], generator, overflow.step, units[half])
        return found
    except Exception as error:
        # A valid tail this check has no rule for, or rounding it cannot follow: the
        # triangles are undecided with the reason, as check_segments raises
        # UnreliableExactCheckError for its segments.
        reason = str(error).splitlines()[0] if str(error) else ""
        if not isinstance(error, UnreliableExactCheckError):
            name = type(error).__name__
            reason = f"the exact check could not follow this tail ({name}: {reason})"
        return [(units, plane, None, reason or "the exact check could not follow this tail")]
    return [(units, plane, logits, "")]


def _points_at(corners: Tensor, owner: Tensor, bary: Tensor) -> Tensor:
    """``(k, *point_shape)``: the points of weights ``bary`` ``(k, 3)`` in triangles ``owner``
    ``(k,)`` of ``corners`` ``(T, 3, *point_shape)``, in the corners' dtype."""
    weight = bary.to(corners.dtype).view(*bary.shape, *([1] * (corners.dim() - 2)))
    return (weight * corners[owner]).sum(1)


def _default_max_values(device: torch.device, max_values: int | None) -> int:
    if max_values is not None:
        return max_values
    return MAX_VALUES_CPU if device.type == "cpu" else MAX_VALUES


def _outcomes(
    program: Program,
    plane: _Plane,
    logits: Tensor | None,
    reason: str,
    corners: Tensor,
    targets: Tensor,
) -> list[_Outcome]:
    """What each unit of a batch found: from the logits ``(P, classes)`` at the vertices of
    ``plane``, for units with corners in triangles ``corners`` ``(U, 3, *point_shape)`` and
    ``targets`` ``(U,)``."""
    count = plane.count
    found = [_Outcome(0, UNDECIDED, reason) for _ in range(count)]
    for u, (status, note) in plane.status.items():
        found[u] = _Outcome(plane.dropped_regions[u], status, note)
    if logits is None or reason:
        return found
    owner, targets = plane.owner, targets.to(logits.device)
    margins = logit_margins(logits, targets[owner])
    low = margins.new_full((count,), math.inf).scatter_reduce(0, owner, margins, "amin")
    vertex = torch.arange(plane.points, device=owner.device)
    lowest = torch.where(margins == low[owner], vertex, plane.points)
    lowest = torch.full_like(low, plane.points, dtype=torch.long).scatter_reduce(
        0, owner, lowest, "amin"
    )
    # exact.margin_tolerance's rule, over each unit's vertices
    scale = logits.detach().double().abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).amax(1)
    scale = scale.new_ones(count).scatter_reduce(0, owner, scale, "amax")
    tolerance = TOLERANCE_EPSILONS * torch.finfo(logits.dtype).eps * scale
    alive = (torch.bincount(owner, minlength=count) > 0).nonzero().flatten()
    checked = _checked_rows(plane, lowest)[alive]
    gap, limit, direct = _verify(program, plane, logits, corners, checked, targets[alive])
    regions = torch.bincount(plane.region_owner, minlength=count)
    for k, u in enumerate(alive.tolist()):
        found[u] = _Outcome(
            int(regions[u]),
            low=float(low[u]),
            tolerance=float(tolerance[u]),
            weights=plane.bary[int(lowest[u])].cpu(),
            direct=float(direct[k]),
            gap=float(gap[k]),
            limit=float(limit[k]),
        )
    return found


def _checked_rows(plane: _Plane, lowest: Tensor) -> Tensor:
    """``(U, 4)`` vertex rows of each unit's three corners and its lowest vertex."""
    rows = torch.zeros(plane.count, 4, dtype=torch.long, device=lowest.device)
    is_corner = plane.corner >= 0
    vertex = torch.arange(plane.points, device=lowest.device)
    rows[plane.owner[is_corner], plane.corner[is_corner]] = vertex[is_corner]
    rows[:, 3] = lowest.clamp_max(plane.points - 1)
    return rows


def _verify(
    program: Program,
    plane: _Plane,
    logits: Tensor,
    corners: Tensor,
    checked: Tensor,
    targets: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The traced logits at vertex rows ``checked`` ``(K, 4)`` against the tail's own
    forward (as exact._assemble checks a segment's ends): per row the largest difference, its
    limit (the tolerance over the four points), and the tail's own margin at the last one."""
    flat = checked.flatten()
    points = _points_at(corners, plane.owner[flat], plane.bary[flat])
    direct = torch.cat([_forward(program, chunk) for chunk in points.split(1024)])
    direct = direct.view(len(checked), 4, -1)
    traced = logits[flat].view(len(checked), 4, -1).to(direct.dtype)
    scale = direct.detach().abs().nan_to_num(nan=0.0, posinf=0.0).flatten(1).amax(1)
    limit = TOLERANCE_EPSILONS * torch.finfo(direct.dtype).eps * scale.clamp_min(1.0)
    gap = (traced - direct).abs().nan_to_num(nan=0.0, posinf=0.0).flatten(1).amax(1)
    # NaN where the other is not, or infinite against finite: differences beyond any limit
    odd = (torch.isnan(traced) != torch.isnan(direct)) | (
        torch.isinf(traced) != torch.isinf(direct)
    )
    gap = torch.where(odd.flatten(1).any(1), math.inf, gap)
    margin = logit_margins(direct[:, 3], targets)
    return gap.double().cpu(), limit.double().cpu(), margin.cpu()


def _merge(parts: list[_Outcome]) -> dict[str, Any]:
    """A triangle's status, note, minimum margin, its proved bound, counterexample weights
    and margin, and regions, from the outcomes of its units."""
    done = [p for p in parts if not p.status]
    left = [p for p in parts if p.status]
    merged: dict[str, Any] = {"pieces": sum(p.regions for p in parts), "note": ""}
    tolerance = max((p.tolerance for p in done), default=0.0)
    low = min((p.low for p in done), default=math.nan)
    failed = [p for p in done if p.low < -tolerance and p.direct <= 0 and p.gap <= p.limit]
    unequal = [p for p in done if p.gap > p.limit]
    if failed:
        worst = min(failed, key=lambda p: p.low)
        merged.update(status=COUNTEREXAMPLE, weights=worst.weights, margin=worst.direct)
        merged.update(low=low, bound=low if not left else math.nan)
    elif left:
        merged.update(status=left[0].status, note=left[0].note, low=math.nan, bound=math.nan)
    elif unequal:
        worst = max(unequal, key=lambda p: p.gap / p.limit)
        note = (
            "the exact check's logits at a corner or at the lowest vertex differ from the "
            f"tail's own by {worst.gap:.3g}, more than its floating-point tolerance "
            f"{worst.limit:.3g} (rounding of large intermediate values)"
        )
        merged.update(status=UNDECIDED, note=note, low=math.nan, bound=math.nan)
    elif low > tolerance:
        merged.update(status=PROVED, low=low, bound=low)
    else:
        note = (
            f"the lowest margin {low:.3g} is within the floating-point tolerance "
            f"{tolerance:.3g} of zero"
        )
        merged.update(status=UNDECIDED, note=note, low=low, bound=math.nan)
    return merged


@torch.no_grad()
def exact_triangles(
    program: Program | nn.Module,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    max_regions: int = 4096,
    batch_size: int = 16,
    max_values: int | None = None,
) -> TriangleCheck:
    """The exact check of flat triangles through a piecewise-linear tail.

    Each triangle is partitioned into the convex polygons on which the traced tail is affine
    (see the module's docstring); the margin's minimum over the triangle is its minimum over
    the polygons' vertices. Status per triangle:

    * ``"proved"``: every vertex's margin is above the tolerance (:func:`exact.margin_tolerance
      <connectivity.engine.exact.margin_tolerance>`'s rule over the triangle's vertices'
      logits), so every point of the triangle is classified as the target;
    * ``"counterexample"``: a vertex's margin is below minus the tolerance and the tail's own
      margin there is ``<= 0``; its weights are ``counterexample``, the tail's own margin
      ``counterexample_margin``;
    * ``"budget"``: the partition grew past ``max_regions`` regions;
    * ``"undecided"`` (``note`` says why): the lowest margin is within the tolerance of zero,
      the traced program's logits at a corner or at the lowest vertex differ from the tail's
      own beyond the tolerance, rounding broke a region's cut, or the tail did something the
      check cannot follow (where :func:`~connectivity.engine.exact.check_segments` raises
      :class:`~connectivity.engine.exact.UnreliableExactCheckError`).

    A triangle with a NaN or infinite corner coordinate has a counterexample at that corner
    (the classifier gives it no class), as :func:`~connectivity.engine.exact.check_paths`
    decides such paths.

    Args:
        program: A piecewise-linear tail (points ``(B, *point_shape)`` to logits ``(B,
            classes)``) or its :func:`~connectivity.engine.exact.piecewise_linear_program`.
        a, b, c: ``(T, *point_shape)`` corners (not changed).
        targets: ``(T,)`` long target classes.
        max_regions: Most linear regions per triangle.
        batch_size: Triangles partitioned together.
        max_values: Most values the vertices' live activations of a batch hold at once (bounds
            memory): a batch that would hold more goes on in halves from the operation where
            it overflowed, and a triangle that alone would is cut into four parts, each
            partitioned on its own from the input (``pieces`` then counts a region cut by the
            parts' edges once per part), at most 6 times over. None:
            :data:`~connectivity.engine.exact.MAX_VALUES`, or ``MAX_VALUES_CPU`` on a CPU.

    Returns:
        A :class:`~connectivity.engine.triangles.TriangleCheck` of kind ``"exact"``;
        ``pieces`` are the regions; ``min_margin`` is the exact minimum over the triangle
        where proved, a counterexample was found or it lies within the tolerance of zero
        (NaN where over budget or not followed), ``min_margin_lower_bound`` the same where
        proved or a counterexample was found over the whole triangle.

    Raises:
        NotPiecewiseLinearError: see :func:`~connectivity.engine.exact.piecewise_linear_program`.
    """
    program = program if isinstance(program, Program) else piecewise_linear_program(program)
    count = a.shape[0]
    result = empty_check("exact", count)
    if count == 0:
        return result
    corners = torch.stack([a, b, c], dim=1)
    finite = torch.isfinite(corners.flatten(2)).all(dim=2).all(dim=1)
    rows = finite.nonzero().flatten().tolist()
    if rows:
        _probe(program, a[rows[0]], b[rows[0]])
    targets = targets.to(corners.device)
    parts: dict[int, list[_Outcome]] = {}

    def visit(units: list[_Unit], plane: _Plane, logits: Tensor | None, reason: str) -> None:
        owners = torch.tensor([u.triangle for u in units], device=corners.device)
        outcomes = _outcomes(program, plane, logits, reason, corners[owners], targets[owners])
        for unit, outcome in zip(units, outcomes, strict=True):
            parts.setdefault(unit.triangle, []).append(outcome)

    limit = _default_max_values(a.device, max_values)
    _units(program, corners, rows, max_regions, limit, batch_size, visit)
    for t, outcomes in parts.items():
        merged = _merge(outcomes)
        result.status[t], result.note[t] = merged["status"], merged["note"]
        result.pieces[t] = merged["pieces"]
        result.min_margin[t], result.min_margin_lower_bound[t] = merged["low"], merged["bound"]
        if merged["status"] == COUNTEREXAMPLE:
            result.counterexample[t] = merged["weights"]
            result.counterexample_margin[t] = merged["margin"]
    _not_points(corners, finite, result)
    return result


def _not_points(corners: Tensor, finite: Tensor, result: TriangleCheck) -> None:
    """Triangles with a NaN or infinite corner coordinate: the classifier gives such a point
    no class, so they leave it (as check_paths decides such paths), at the first such
    corner."""
    for row in (~finite).nonzero().flatten().tolist():
        bad = ~torch.isfinite(corners[row].flatten(1)).all(dim=1)
        weights = torch.zeros(3, dtype=torch.float64)
        weights[int(bad.float().argmax())] = 1.0
        result.status[row], result.note[row] = COUNTEREXAMPLE, ""
        result.min_margin[row] = -math.inf
        result.min_margin_lower_bound[row] = -math.inf
        result.counterexample[row] = weights
        result.counterexample_margin[row] = -math.inf


@dataclass
class PlanePartition:
    """The linear regions of ``T`` triangles (:func:`linear_regions`).

    Attributes:
        weights: ``(P, 3)`` float64 barycentric weights of each vertex in its triangle.
        owner: ``(P,)`` long triangle of each vertex.
        logits: ``(P, classes)`` the traced tail's logits there (network dtype).
        regions: ``(R, M)`` long vertex rows of each region, in cyclic order around it
            (convex in barycentric coordinates), padded with -1; the tail's logits are affine
            on each region.
        region_owner: ``(R,)`` long triangle of each region.
        status: Per triangle ``""`` where partitioned, else ``"budget"`` or ``"undecided"``
            (that triangle's vertices and regions are left out).
        note: Per triangle why it was not partitioned (empty otherwise).
    """

    weights: Tensor
    owner: Tensor
    logits: Tensor
    regions: Tensor
    region_owner: Tensor
    status: list[str]
    note: list[str]


@torch.no_grad()
def linear_regions(
    program: Program | nn.Module,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    *,
    max_regions: int = 4096,
    batch_size: int = 16,
    max_values: int | None = None,
) -> PlanePartition:
    """The partition of each triangle ``(a, b, c)`` into convex regions on which the tail's
    logits are affine (what :func:`exact_triangles` decides on; for maps of linear regions,
    as SplineCam draws them). A triangle cut into parts for memory (see
    :func:`exact_triangles`) has its regions cut along the parts' edges too.

    Args:
        program: A piecewise-linear tail or its program.
        a, b, c: ``(T, *point_shape)`` finite corners (not changed).
        max_regions: Most regions per triangle (a triangle past it is left out, ``"budget"``).
        batch_size: Triangles partitioned together.
        max_values: See :func:`exact_triangles`.

    Returns:
        See :class:`PlanePartition`.

    Raises:
        NotPiecewiseLinearError: see :func:`~connectivity.engine.exact.piecewise_linear_program`.
        ValueError: a corner holds a NaN or infinite coordinate.
    """
    program = program if isinstance(program, Program) else piecewise_linear_program(program)
    corners = torch.stack([a, b, c], dim=1)
    if not bool(torch.isfinite(corners).all()):
        raise ValueError("linear_regions needs finite corners")
    count = a.shape[0]
    if count:
        _probe(program, a[0], b[0])
    status, note = [""] * count, [""] * count
    parts: list[tuple[Tensor, ...]] = []
    held = [0]  # vertices so far

    def visit(units: list[_Unit], plane: _Plane, logits: Tensor | None, reason: str) -> None:
        owners = torch.tensor([u.triangle for u in units], device=a.device)
        for u, (why, text) in plane.status.items():
            status[units[u].triangle], note[units[u].triangle] = why, text
        if reason:
            for unit in units:
                status[unit.triangle], note[unit.triangle] = UNDECIDED, reason
        if reason or logits is None:
            return
        regions = torch.where(plane.poly >= 0, plane.poly + held[0], -1)
        parts.append((plane.bary, owners[plane.owner], logits, regions, owners[plane.region_owner]))
        held[0] += plane.points

    limit = _default_max_values(a.device, max_values)
    _units(program, corners, list(range(count)), max_regions, limit, batch_size, visit)
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=a.device)
        weights = torch.zeros(0, 3, dtype=torch.float64, device=a.device)
        return PlanePartition(
            weights, empty, a.new_zeros(0, 0), empty.view(0, 3), empty, status, note
        )
    # triangles left out in a later part (over budget) lose the regions of earlier ones
    gone = torch.tensor([s != "" for s in status], device=a.device)
    width = max(p[3].shape[1] for p in parts)
    weights = torch.cat([p[0] for p in parts])
    owner = torch.cat([p[1] for p in parts])
    logits = torch.cat([p[2] for p in parts])
    regions = torch.cat([_padded(p[3], width) for p in parts])
    region_owner = torch.cat([p[4] for p in parts])
    keep, keep_region = ~gone[owner], ~gone[region_owner]
    new_row = torch.cumsum(keep, 0) - 1
    regions = regions[keep_region]
    regions = torch.where(regions >= 0, new_row[regions.clamp_min(0)], -1)
    return PlanePartition(
        weights[keep], owner[keep], logits[keep], regions, region_owner[keep_region], status, note
    )


def _padded(regions: Tensor, width: int) -> Tensor:
    """``regions`` ``(R, M)`` padded with -1 to ``(R, width)``."""
    return torch.nn.functional.pad(regions, (0, width - regions.shape[1]), value=-1)
