"""Maps of the plane through three points, and of a surface's parameter domain, coloured by the
class a tail predicts (issue 22).

The plane is the one dbViz draws (Somepalli et al., "Can Neural Nets Learn the Same Model
Twice? Investigating Reproducibility and Double Descent from the Decision Boundary
Perspective", CVPR 2022, ``get_plane``): origin ``x0``, first axis along ``x1 - x0``, second
axis the part of ``x2 - x0`` orthogonal to it (Gram-Schmidt), both of unit length, so that
distances in the plane's coordinates are distances between the points. Its grid spans the
three points' coordinates plus a padding fraction of their span on each side, ``resolution``
points per axis, as dbViz's ``plane_dataset`` does.

A surface's map is the same picture on a triangle mesh: each grid point of the mesh's 2-D
parameter domain ``uv`` is mapped to space with its barycentric weights in its ``uv``
triangle, applied to that triangle's points.

Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from connectivity.engine.options import _checked_int, _checked_number
from connectivity.engine.triangles import logit_margins
from connectivity.errors import InputError

# Three points whose triangle's smallest height is at most this fraction of its longest side
# span no plane: float32 points carry relative rounding of about 1e-7, which such a height
# would not outweigh (the second axis would be rounding noise).
COLLINEAR = 1e-6
# No class: a grid point outside a surface's domain, or where the tail's logits are not finite.
NO_CLASS = -1
# A uv point is in a triangle when each barycentric weight is at least -this: points on a
# shared edge belong to the first triangle, not to none.
INSIDE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Plane:
    """The plane through three points ``x0, x1, x2``.

    Attributes:
        origin: ``(*point_shape)``: ``x0``.
        basis: ``(2, *point_shape)`` float64, orthonormal: ``x1 - x0`` normalised, then the part
            of ``x2 - x0`` orthogonal to it, normalised.
        corners: ``(3, 2)`` float64: the three points' coordinates, ``(0, 0)``,
            ``(|x1 - x0|, 0)`` and ``(<x2 - x0, e1>, <x2 - x0, e2>)`` with the second positive;
            distances between them are the points' Euclidean distances (flattened).
    """

    origin: Tensor
    basis: Tensor
    corners: Tensor

    def points(self, coordinates: Tensor) -> Tensor:
        """``(N, *point_shape)`` points at plane ``coordinates`` ``(N, 2)``, in the origin's
        dtype and device (computed in float64)."""
        c = coordinates.to(self.basis.device, torch.float64)
        flat = self.origin.double().flatten() + c @ self.basis.flatten(1)
        return flat.view(-1, *self.origin.shape).to(self.origin.dtype)


def plane_basis(x0: Tensor, x1: Tensor, x2: Tensor) -> Plane:
    """The plane through ``x0``, ``x1``, ``x2`` (each ``(*point_shape)``, one shape).

    Raises:
        InputError: points of different shapes, non-finite values, or points that span no plane
            (two that coincide, or all three on one line: the triangle's smallest height is at
            most :data:`COLLINEAR` of its longest side).
    """
    if not x0.shape == x1.shape == x2.shape:
        raise InputError(
            f"the three points have shapes {tuple(x0.shape)}, {tuple(x1.shape)} and "
            f"{tuple(x2.shape)}; give three points of one shape"
        )
    flat = torch.stack([x0, x1, x2]).detach().flatten(1).double()
    if not bool(torch.isfinite(flat).all()):
        raise InputError("the three points hold NaN or infinite values")
    a, b = flat[1] - flat[0], flat[2] - flat[0]
    length = float(a.norm())
    longest = max(length, float(b.norm()), float((flat[2] - flat[1]).norm()))
    e1 = a / length if length > 0 else torch.zeros_like(a)
    along = float(b @ e1)
    orthogonal = b - along * e1
    height = float(orthogonal.norm())
    # Smallest height of the triangle = 2 * area / longest side = length * height / longest.
    if longest == 0 or length * height <= COLLINEAR * longest**2:
        raise InputError(
            "the three points lie on one line (or two coincide), so they span no plane: give "
            "three points that are not collinear"
        )
    e2 = orthogonal / height
    basis = torch.stack([e1, e2]).view(2, *x0.shape)
    corners = torch.tensor([[0.0, 0.0], [length, 0.0], [along, height]], dtype=torch.float64)
    return Plane(x0.detach(), basis, corners)


def grid_axes(corners: Tensor, resolution: int, padding: float = 0.0) -> tuple[Tensor, Tensor]:
    """The axes of a grid over 2-D points: ``resolution`` evenly spaced values per axis from
    the points' lowest coordinate minus ``padding`` times their span to the highest plus as
    much (dbViz's ``range_l``, ``range_r``).

    Args:
        corners: ``(K, 2)`` coordinates; each axis must have a span > 0.
        resolution: Grid points per axis (``>= 2``).
        padding: Fraction of each axis's span added on each side (``>= 0``).

    Returns:
        ``(u, v)``: ``(resolution,)`` float64 values of the first and of the second axis.

    Raises:
        OptionsError: ``resolution`` not an integer ``>= 2``, ``padding`` not a finite number
            ``>= 0``.
        InputError: an axis along which the points do not spread.
    """
    resolution = _checked_int(resolution, "resolution", 2)
    padding = _checked_number(padding, "padding", positive=False)
    axes = []
    for values in corners.double().unbind(dim=1):
        low, high = float(values.min()), float(values.max())
        if not high > low:
            raise InputError(f"the points do not spread along an axis (all at {low:g})")
        pad = padding * (high - low)
        axes.append(torch.linspace(low - pad, high + pad, resolution, dtype=torch.float64))
    return axes[0], axes[1]


def grid_coordinates(u: Tensor, v: Tensor) -> Tensor:
    """``(H * W, 2)`` coordinates ``(u[j], v[i])`` of the grid of axes ``u`` ``(W,)`` and ``v``
    ``(H,)``, row ``i`` (one value of ``v``) after row: point ``i * W + j`` is pixel
    ``(i, j)`` of an ``(H, W)`` map."""
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu.flatten(), vv.flatten()], dim=1)


def plane_grid(
    x0: Tensor, x1: Tensor, x2: Tensor, resolution: int = 64, padding: float = 0.25
) -> tuple[Tensor, Tensor, Tensor, Plane]:
    """The grid of the plane through three points (:func:`plane_basis`, :func:`grid_axes`).

    Holds ``resolution**2`` points at once: for large points, build the plane and map rows of
    :func:`grid_coordinates` with :meth:`Plane.points` a chunk at a time instead.

    Returns:
        ``(points, u, v, plane)``: ``points`` ``(H * W, *point_shape)`` in ``x0``'s dtype, in
        the order of :func:`grid_coordinates`; the axes ``u`` ``(W,)`` and ``v`` ``(H,)``
        (``H = W = resolution``); the :class:`Plane`.

    Raises:
        InputError: as :func:`plane_basis`.
        OptionsError: as :func:`grid_axes`.
    """
    _checked_int(resolution, "resolution", 2)
    _checked_number(padding, "padding", positive=False)
    plane = plane_basis(x0, x1, x2)
    u, v = grid_axes(plane.corners, resolution, padding)
    return plane.points(grid_coordinates(u, v)), u, v, plane


@torch.no_grad()
def class_map(
    tail: nn.Module, points: Tensor, targets: int | Tensor | None = None, chunk_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """The class the tail predicts at each point and its margin.

    Args:
        tail: Points ``(B, *point_shape)`` to logits ``(B, classes)``.
        points: ``(N, *point_shape)``.
        targets: None for the margin of the predicted class (``top logit - second``, ``>= 0``),
            or one class (int) or ``(N,)`` classes for the target margin ``logit[y] -
            max_{k != y} logit[k]`` (positive where ``y`` is predicted).
        chunk_size: Most points per call of the tail (``>= 1``).

    Returns:
        ``(classes, margins)``: ``(N,)`` long (:data:`NO_CLASS` where the logits are not
        finite) and ``(N,)`` float64 (``-inf`` there).

    Raises:
        OptionsError: ``chunk_size`` not an integer ``>= 1``.
    """
    chunk_size = _checked_int(chunk_size, "chunk_size", 1)
    count = points.shape[0]
    classes = torch.empty(count, dtype=torch.long)
    margins = torch.empty(count, dtype=torch.float64)
    for first in range(0, count, chunk_size):
        rows = slice(first, first + chunk_size)
        logits = tail(points[rows]).double()
        predicted = logits.argmax(dim=1)
        if targets is None:
            y = predicted
        elif isinstance(targets, Tensor) and targets.dim() > 0:
            y = targets[rows].to(logits.device).long()
        else:
            y = torch.full_like(predicted, int(targets))
        finite = torch.isfinite(logits).all(dim=1)
        classes[rows] = torch.where(finite, predicted, NO_CLASS).cpu()
        margins[rows] = logit_margins(logits, y).cpu()
    return classes, margins


def locate(
    uv: Tensor, triangles: Tensor, query: Tensor, chunk_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """The ``uv`` triangle each query point lies in, and its barycentric weights there.

    Args:
        uv: ``(V, 2)`` vertex coordinates in the parameter domain.
        triangles: ``(T, 3)`` long vertex indices.
        query: ``(N, 2)`` points of the domain.
        chunk_size: Most query points compared with every triangle at once.

    Returns:
        ``(triangle, weights)``: ``(N,)`` long, the first triangle holding the point (weights
        ``>= -INSIDE_TOLERANCE``), :data:`NO_CLASS` where none does (triangles of zero area in
        ``uv`` hold no point); ``(N, 3)`` float64 weights of its corners (NaN where none).
    """
    corners = uv.double()[triangles.long()]  # (T, 3, 2)
    a, b, c = corners.unbind(dim=1)
    ab, ac = b - a, c - a
    det = ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]  # (T,)
    usable = det.abs() > 0
    safe = torch.where(usable, det, torch.ones_like(det))
    found = torch.full((query.shape[0],), NO_CLASS, dtype=torch.long)
    weights = torch.full((query.shape[0], 3), math.nan, dtype=torch.float64)
    for first in range(0, query.shape[0], chunk_size):
        q = query[first : first + chunk_size].double().unsqueeze(1) - a  # (n, T, 2)
        # Cramer's rule for q = w1 ab + w2 ac.
        w1 = (q[..., 0] * ac[:, 1] - q[..., 1] * ac[:, 0]) / safe
        w2 = (ab[:, 0] * q[..., 1] - ab[:, 1] * q[..., 0]) / safe
        w = torch.stack([1 - w1 - w2, w1, w2], dim=-1)  # (n, T, 3)
        inside = (w >= -INSIDE_TOLERANCE).all(dim=-1) & usable
        hit = inside.any(dim=1)
        index = inside.float().argmax(dim=1)
        rows = torch.arange(q.shape[0])
        found[first : first + q.shape[0]] = torch.where(hit, index, NO_CLASS)
        picked = w[rows, index]
        weights[first : first + q.shape[0]] = torch.where(hit.unsqueeze(1), picked, math.nan)
    return found, weights


@dataclass(frozen=True)
class DomainMap:
    """A surface's parameter domain coloured by predicted class.

    Attributes:
        u: ``(W,)`` float64 grid values of the domain's first coordinate.
        v: ``(H,)`` float64 grid values of the second.
        classes: ``(H, W)`` long predicted class at grid point ``(u[j], v[i])``;
            :data:`NO_CLASS` outside the domain (or where the logits are not finite).
        margins: ``(H, W)`` float64 margins as :func:`class_map` gives them (NaN outside).
        triangle: ``(H, W)`` long: the triangle each grid point lies in (-1 outside).
    """

    u: Tensor
    v: Tensor
    classes: Tensor
    margins: Tensor
    triangle: Tensor


@torch.no_grad()
def surface_domain_map(
    tail: nn.Module,
    points: Tensor,
    triangles: Tensor,
    uv: Tensor,
    resolution: int = 64,
    *,
    target: int | None = None,
    chunk_size: int = 4096,
) -> DomainMap:
    """A triangle mesh's parameter domain coloured by the class the tail predicts on the mesh.

    The grid covers the bounding box of ``uv`` (``resolution`` points per axis, the box's
    edges included). A grid point inside ``uv`` triangle ``(i, j, k)`` with barycentric weights
    ``w`` stands for ``w_i points[i] + w_j points[j] + w_k points[k]``, the point of the flat
    triangle in space at the same weights.

    Args:
        tail: Points ``(B, *point_shape)`` to logits ``(B, classes)``.
        points: ``(V, *point_shape)`` the mesh's vertices in space.
        triangles: ``(T, 3)`` integer vertex indices.
        uv: ``(V, 2)`` the vertices' coordinates in the parameter domain.
        resolution: Grid points per axis (``>= 2``).
        target: None for the predicted class's margin, or the class whose margin is wanted.
        chunk_size: Most points per call of the tail.

    Raises:
        InputError: shapes that do not fit together, vertex indices out of range, or ``uv``
            that does not spread along both axes.
        OptionsError: ``resolution`` or ``chunk_size`` out of range.
    """
    _check_mesh(points, triangles, uv)
    # The domain's bookkeeping is small and stays on the CPU; only mapped points go to the tail.
    triangles, uv = triangles.long().cpu(), uv.detach().double().cpu()
    u, v = grid_axes(uv, resolution, 0.0)
    chunk_size = _checked_int(chunk_size, "chunk_size", 1)
    query = grid_coordinates(u, v)
    found, weights = locate(uv, triangles, query, chunk_size)
    classes = torch.full((query.shape[0],), NO_CLASS, dtype=torch.long)
    margins = torch.full((query.shape[0],), math.nan, dtype=torch.float64)
    inside = (found >= 0).nonzero().squeeze(1)
    for first in range(0, inside.numel(), chunk_size):
        rows = inside[first : first + chunk_size]
        corners = points[triangles[found[rows]].to(points.device)]  # (n, 3, *shape)
        w = weights[rows].to(points.device, torch.float64)
        w = w.view(*w.shape, *([1] * (points.dim() - 1)))
        mapped = (w * corners.double()).sum(dim=1).to(points.dtype)
        classes[rows], margins[rows] = class_map(tail, mapped, target, chunk_size)
    shape = (v.shape[0], u.shape[0])
    return DomainMap(u, v, classes.view(shape), margins.view(shape), found.view(shape))


def _check_mesh(points: Tensor, triangles: Tensor, uv: Tensor) -> None:
    if triangles.dim() != 2 or triangles.shape[1] != 3 or triangles.is_floating_point():
        raise InputError(f"triangles must be (T, 3) integer indices, got {tuple(triangles.shape)}")
    if uv.dim() != 2 or uv.shape != (points.shape[0], 2):
        raise InputError(
            f"uv has shape {tuple(uv.shape)}; give one (u, v) per vertex: ({points.shape[0]}, 2)"
        )
    if triangles.numel() and (int(triangles.min()) < 0 or int(triangles.max()) >= len(points)):
        raise InputError(f"triangles index vertices outside 0..{len(points) - 1}")
