"""The membrane: a triangle mesh filling a loop, relaxed as a band is (issue 22).

Pure torch, no Lightning. The 2-D analogue of the NEB band (:mod:`connectivity.engine.band`):

* :class:`Mesh`: one loop's triangle mesh: points, their position on the flat fill, their
  parameter-domain coordinates ``uv``, consistently oriented triangles, the fixed loop and the
  inputs (corners) among the vertices. :func:`loop_mesh` builds the fan (cone) from the
  corners' centroid, :func:`refine` refines it conformingly where triangles failed.
* :class:`Membrane`: the free vertices of a batch of meshes as one ``(vertices, *point_shape)``
  parameter (rows are vertices, so the band optimizers' per-row state works unchanged), and
  the per-loop state machine a driver steps as it steps a band (``project_``, ``after_step_``).

Forces. A free vertex moves under the component of ``-grad L`` normal to the surface (the
in-surface component is removed, as NEB removes the component along the band: otherwise
vertices slide within the surface to low energy and leave the hard places unresolved), plus
``spring_constant`` times the in-surface part of the umbrella Laplacian ``mean_j(x_j) - x_i``
over its one-ring (the springs: they keep triangles well shaped and do not pull the surface
flat, as NEB's springs act only along the band).

Tangent plane. The tangent plane of a vertex is the plane through its one-ring that fits it
best (the top-2 principal directions of the ring's points ``x_j``, centred on their mean
``m``): from the small Gram matrix ``G = c c^T`` of ``c_j = x_j - m`` (neighbours x
neighbours), with ``U`` its top-2 eigenvectors and ``Lambda`` their eigenvalues, the
projection onto the plane is ``P v = c^T U Lambda^-1 U^T c v``. It works in any dimension (a
65536-dim layer space too) without a ``D x D`` matrix and does not depend on the order of the
ring; centring removes the offset every edge of a curved surface shares towards its centre of
curvature (uncentred edge vectors tilt the plane by about half the longest edge's angle).
Averaging the triangles' own planes would need their normals, which exist only in 3-D. Where
the ring is (nearly) collinear only its main direction is kept. In a 2-D space the plane is
the whole space: no normal force is left, and the membrane only respaces (a loop in the plane
bounds one disk). Each vertex is one system (one row) of the ``fire`` and ``lbfgs``
optimizers.

References:
    G. Henkelman, H. Jonsson, J. Chem. Phys. 113, 9978 (2000): NEB, the projection of the
    force across the path and springs along it.
    G. Taubin, SIGGRAPH 1995 ("A signal processing approach to fair surface design"): the
    umbrella operator (discrete Laplacian) on meshes.
    R. E. Bank, A. H. Sherman, A. Weiser, "Refinement algorithms and data structures for
    regular local mesh refinement" (1983): red-green conforming refinement.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from connectivity.engine.options import SurfaceOptions

__all__ = [
    "MAX_MOVE",
    "Membrane",
    "Mesh",
    "batch_meshes",
    "diameter",
    "fan_triangles",
    "flat_points",
    "in_surface",
    "loop_mesh",
    "mesh_edges",
    "nudge_mesh",
    "refine",
]

# A loop blows up when a vertex moves farther than this many times the loop's diameter from
# its position on the flat fill: a surface filling a loop need not leave the loop's
# neighbourhood, and a vertex that far has run off along a direction the classifier never
# bounds (a linear region that goes on for ever).
MAX_MOVE = 10.0
# Eigenvalues of a one-ring's Gram matrix below this fraction of its largest give no tangent
# direction (the ring is collinear there).
_RANK_TOLERANCE = 1e-9
# Elements of the one-ring difference tensor ``(vertices, neighbours, D)`` per chunk.
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class Mesh:
    """One loop's triangle mesh.

    Attributes:
        points: ``(V, *point_shape)`` vertex positions.
        flat: ``(V, *point_shape)`` each vertex's position on the flat fill (the fan of flat
            triangles ``(centroid, x_i, x_{i+1})`` over the corners, mapped affinely from
            ``uv``: :func:`flat_points`).
        uv: ``(V, 2)`` float64 parameter-domain coordinates: the corners on the regular
            ``k``-gon of radius 1 round 0 (counter-clockwise, the first at angle pi/2), the
            loop's other points on the polygon's sides by arc length, the inside by the fan.
        triangles: ``(T, 3)`` long vertex indices, counter-clockwise in ``uv``.
        fixed: ``(V,)`` bool, the vertices on the loop (they never move).
        corners: ``(k,)`` long, the vertex of each input, in loop order.
    """

    points: Tensor
    flat: Tensor
    uv: Tensor
    triangles: Tensor
    fixed: Tensor
    corners: Tensor

    @property
    def vertices(self) -> int:
        """Number of vertices ``V``."""
        return int(self.points.shape[0])

    def with_points(self, points: Tensor) -> Mesh:
        """The same mesh with other vertex positions ``(V, *point_shape)``."""
        return Mesh(points, self.flat, self.uv, self.triangles, self.fixed, self.corners)

    def to_dict(self) -> dict[str, Tensor]:
        """The tensors by name (for a checkpoint; ``Mesh(**d)`` rebuilds it)."""
        return asdict(self)

    def cpu(self) -> Mesh:
        """A copy with every tensor on the CPU."""
        return Mesh(**{k: v.detach().cpu().clone() for k, v in asdict(self).items()})


def _polygon(k: int) -> Tensor:
    """``(k, 2)`` float64 corners of the regular ``k``-gon of radius 1, counter-clockwise."""
    angle = math.pi / 2 + 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return torch.stack([angle.cos(), angle.sin()], dim=1)


def _check_corners(count: int, corners: list[int]) -> None:
    if len(corners) < 3:
        raise ValueError(f"a loop needs at least 3 corners, got {len(corners)}")
    if any(b <= a for a, b in itertools.pairwise(corners)):
        raise ValueError(f"corners must be increasing, got {corners}")
    if corners[0] < 0 or corners[-1] >= count:
        raise ValueError(f"corners {corners} must index the loop's {count} points")


def _sides(loop: Tensor, corners: list[int]) -> list[tuple[Tensor, Tensor]]:
    """Per side ``i`` (corner ``i`` to corner ``i + 1``): the loop indices of its points
    ``(n_i + 1,)`` long, both corners included, and their arc-length fractions along the side
    ``(n_i + 1,)`` float64 (index fractions for a side of length 0)."""
    count, k = loop.shape[0], len(corners)
    flat = loop.detach().reshape(count, -1).to("cpu", torch.float64)
    sides = []
    for i in range(k):
        first, last = corners[i], corners[(i + 1) % k] + (count if i == k - 1 else 0)
        index = torch.arange(first, last + 1) % count
        steps = (flat[index[1:]] - flat[index[:-1]]).norm(dim=1)
        arc = torch.cat([steps.new_zeros(1), steps.cumsum(0)])
        total = float(arc[-1])
        share = arc / total if total > 0 else torch.linspace(0, 1, len(index), dtype=arc.dtype)
        sides.append((index, share))
    return sides


def _on_side(loop: Tensor, side: tuple[Tensor, Tensor], fraction: float) -> Tensor:
    """The point of the loop's polyline at arc-length ``fraction`` of ``side``."""
    index, share = side
    at = int(torch.searchsorted(share, torch.tensor([fraction], dtype=share.dtype), right=True))
    at = min(max(at - 1, 0), len(index) - 2)
    width = float(share[at + 1] - share[at])
    w = (fraction - float(share[at])) / width if width > 0 else 0.0
    return torch.lerp(loop[index[at]], loop[index[at + 1]], w)


def loop_mesh(loop: Tensor, corners: list[int], rings: int = 3) -> Mesh:
    """The fan (cone) mesh of a closed polyline from its corners' centroid.

    The surface is the cone from the centroid ``c`` of the corners over the loop: the point
    at ``c + s (gamma - c)`` for ``gamma`` on the loop and ``s`` in ``[0, 1]``. Vertex 0 is
    ``c``; ring ``j = 1..rings`` lies at ``s = j / rings``; the last ring is the loop's own
    points, bit for bit, and ring ``j`` has about ``j / rings`` as many vertices on each side
    (at least one segment per side), evenly spaced by arc length along the loop, with a vertex
    on each corner's ray; neighbouring rings are joined side by side by triangles in order of
    their arc-length positions. Rings of equal counts (``c + (j / rings)(loop_i - c)``) would
    make slivers near ``c`` whose tangent planes no ring fit resolves (their error stays while
    the mesh is refined); graded rings keep the triangles about as wide as long. For a loop of
    straight sides the cone is its flat fill, the ``k`` triangles ``(c, x_i, x_{i+1})``,
    subdivided (``points == flat``), and no edge crosses from one of them to another.

    Args:
        loop: ``(B, *point_shape)`` the closed polyline, its first point not repeated.
        corners: Increasing indices of the ``k >= 3`` inputs in ``loop``.
        rings: Rings of vertices, the loop included (``>= 1``).

    Returns:
        A :class:`Mesh`, its boundary the loop from ``corners[0]`` on, counter-clockwise in
        ``uv``.

    Raises:
        ValueError: fewer than 3 corners, corners not increasing or outside the loop, or
            ``rings < 1``.
    """
    _check_corners(loop.shape[0], corners)
    if rings < 1:
        raise ValueError(f"rings must be at least 1, got {rings}")
    loop = loop.detach()
    k = len(corners)
    x = loop[torch.tensor(corners, dtype=torch.long)]
    centre = x.mean(dim=0)
    polygon = _polygon(k)
    sides = _sides(loop, corners)
    points, flat, uv = [centre], [centre], [torch.zeros(2, dtype=torch.float64)]
    ring_ids: list[list[list[int]]] = []  # ring -> side -> vertex ids, both ends included
    for j in range(1, rings + 1):
        s = j / rings
        ids: list[list[int]] = []
        for i, side in enumerate(sides):
            segments = len(side[0]) - 1
            count = segments if j == rings else max(1, round(segments * s))
            own = []
            for q in range(count):
                fraction = float(side[1][q]) if j == rings else q / count
                on_loop = (
                    loop[side[0][q]].clone() if j == rings else _on_side(loop, side, q / count)
                )
                on_fill = torch.lerp(x[i], x[(i + 1) % k], fraction)
                points.append(on_loop if j == rings else centre + s * (on_loop - centre))
                flat.append(centre + s * (on_fill - centre) if j < rings else on_fill)
                uv.append(s * torch.lerp(polygon[i], polygon[(i + 1) % k], fraction))
                own.append(len(points) - 1)
            ids.append(own)
        ring_ids.append([[*own, ids[(i + 1) % k][0]] for i, own in enumerate(ids)])
    uv_all = torch.stack(uv)
    triangles = _ring_triangles(ring_ids, uv_all)
    fixed = torch.zeros(len(points), dtype=torch.bool)
    last = [v for side in ring_ids[-1] for v in side[:-1]]
    fixed[last] = True
    corner_ids = torch.tensor([side[0] for side in ring_ids[-1]], dtype=torch.long)
    return Mesh(torch.stack(points), torch.stack(flat), uv_all, triangles, fixed, corner_ids)


def _ring_triangles(ring_ids: list[list[list[int]]], uv: Tensor) -> Tensor:
    """Counter-clockwise triangles of the graded rings: the centre (vertex 0) fanned to the
    first ring, then each pair of rings joined side by side in order of position."""
    rows = []
    first = [v for side in ring_ids[0] for v in side[:-1]]
    for a, b in zip(first, first[1:] + first[:1], strict=True):
        rows.append((0, a, b))
    for inner_ring, outer_ring in itertools.pairwise(ring_ids):
        for inner, outer in zip(inner_ring, outer_ring, strict=True):
            rows.extend(_zip_side(inner, outer, uv))
    return torch.tensor(rows, dtype=torch.long)


def _zip_side(inner: list[int], outer: list[int], uv: Tensor) -> list[tuple[int, int, int]]:
    """Triangles between one side of two neighbouring rings (both ends shared with the
    neighbouring sides): walk both in order, always advancing the one whose next vertex comes
    first (position: the fraction along the side, by the rings' own uv)."""

    def position(ring: list[int], at: int) -> float:
        start, end = uv[ring[0]], uv[ring[-1]]
        chord = end - start
        return float((uv[ring[at]] - start) @ chord / (chord @ chord))

    rows = []
    i = o = 0
    while i < len(inner) - 1 or o < len(outer) - 1:
        outer_next = o < len(outer) - 1 and (
            i == len(inner) - 1 or position(outer, o + 1) <= position(inner, i + 1)
        )
        if outer_next:
            rows.append((inner[i], outer[o], outer[o + 1]))
            o += 1
        else:
            rows.append((inner[i], outer[o], inner[i + 1]))
            i += 1
    return rows


def fan_triangles(corners: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The flat fill of ``k`` corners ``(k, *point_shape)``: the ``k`` triangles
    ``(c, x_i, x_{i+1})`` round their centroid ``c``, as three ``(k, *point_shape)`` tensors of
    their corners (for a check of triangles)."""
    centre = corners.mean(dim=0, keepdim=True).expand_as(corners)
    return centre.contiguous(), corners, torch.roll(corners, -1, dims=0)


def flat_points(uv: Tensor, corners: Tensor) -> Tensor:
    """``(N, *point_shape)``: the points of the flat fill of ``corners`` ``(k, *point_shape)``
    at parameter-domain coordinates ``uv`` ``(N, 2)`` (inside the ``k``-gon of
    :class:`Mesh`): the affine map of the domain triangle ``(0, u_i, u_{i+1})`` that holds
    ``uv`` onto ``(c, x_i, x_{i+1})``."""
    k = corners.shape[0]
    polygon = _polygon(k).to(uv.device)
    angle = torch.atan2(uv[:, 1], uv[:, 0]) - math.pi / 2
    sector = torch.floor(torch.remainder(angle, 2 * math.pi) / (2 * math.pi / k)).long() % k
    a, b = polygon[sector], polygon[(sector + 1) % k]
    # uv = s a + t b, solved per point by Cramer's rule
    det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    s = (uv[:, 0] * b[:, 1] - uv[:, 1] * b[:, 0]) / det
    t = (a[:, 0] * uv[:, 1] - a[:, 1] * uv[:, 0]) / det
    centre = corners.mean(dim=0)
    shape = (-1, *([1] * (corners.dim() - 1)))
    s = s.to(device=corners.device, dtype=corners.dtype).view(shape)
    t = t.to(device=corners.device, dtype=corners.dtype).view(shape)
    x = corners[sector.to(corners.device)]
    y = corners[((sector + 1) % k).to(corners.device)]
    return centre + s * (x - centre) + t * (y - centre)


def mesh_edges(triangles: Tensor) -> tuple[Tensor, Tensor]:
    """The undirected edges of ``triangles`` ``(T, 3)``: ``(E, 2)`` long (smaller index first,
    sorted) and ``(E,)`` long the number of triangles each edge belongs to (1: boundary)."""
    pairs = torch.cat([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    pairs = pairs.sort(dim=1).values
    edges, counts = torch.unique(pairs, dim=0, return_counts=True)
    return edges, counts


def refine(mesh: Mesh, marked: Tensor) -> Mesh:
    """Conforming refinement: every edge of a marked triangle is split at its midpoint.

    A triangle with 3 split edges gets 4 children (red: the midpoints' triangle and three
    corners), with 2 split edges 3 children (the corner between them, and the rest split by the
    shorter diagonal in ``uv``), with 1 split edge 2 children (green: the midpoint joined to the
    opposite vertex). Every split edge is split in both its triangles, so the mesh stays
    conforming; every child keeps its parent's orientation. A new vertex has the midpoint of
    its edge's ``points``, ``flat`` and ``uv``; one on a boundary edge is fixed: it lies on the
    straight piece of the loop between two of its points, so the boundary stays the loop's
    polyline.

    Args:
        mesh: The mesh.
        marked: ``(T,)`` bool, the triangles to refine.

    Returns:
        The refined :class:`Mesh` (the old vertices first, in order; ``mesh`` itself when
        nothing is marked).
    """
    tri = mesh.triangles.cpu()
    marked = marked.to(torch.bool).cpu()
    if not bool(marked.any()):
        return mesh
    edges, counts = mesh_edges(tri)
    first_new = mesh.vertices
    key = {(int(a), int(b)): e for e, (a, b) in enumerate(edges.tolist())}
    split: dict[int, int] = {}  # edge -> new vertex
    for t in marked.nonzero().squeeze(1).tolist():
        for u, v in _triangle_edges(tri[t].tolist()):
            e = key[(min(u, v), max(u, v))]
            if e not in split:
                split[e] = first_new + len(split)
    order = sorted(split, key=split.get)  # type: ignore[arg-type]
    ends = edges[order]
    device = mesh.points.device
    a, b = ends[:, 0].to(device), ends[:, 1].to(device)
    points = torch.cat([mesh.points, 0.5 * (mesh.points[a] + mesh.points[b])])
    flat = torch.cat([mesh.flat, 0.5 * (mesh.flat[a] + mesh.flat[b])])
    uv = torch.cat([mesh.uv, 0.5 * (mesh.uv[ends[:, 0]] + mesh.uv[ends[:, 1]])])
    boundary = (counts[order] == 1).to(mesh.fixed.device)
    fixed = torch.cat([mesh.fixed, boundary])
    children: list[tuple[int, int, int]] = []
    for row in tri.tolist():
        mids = [split.get(key[(min(u, v), max(u, v))]) for u, v in _triangle_edges(row)]
        children.extend(_children(row, mids, uv))
    triangles = torch.tensor(children, dtype=torch.long, device=mesh.triangles.device)
    return Mesh(points, flat, uv, triangles, fixed, mesh.corners.clone())


def _triangle_edges(row: list[int]) -> list[tuple[int, int]]:
    return [(row[0], row[1]), (row[1], row[2]), (row[2], row[0])]


def _children(row: list[int], mids: list[int | None], uv: Tensor) -> list[tuple[int, int, int]]:
    """The children of triangle ``row`` whose edge ``i`` (``row[i] -> row[i+1]``) has midpoint
    vertex ``mids[i]`` (None: not split), in the parent's orientation."""
    splits = sum(m is not None for m in mids)
    if splits == 0:
        return [(row[0], row[1], row[2])]
    if splits == 3:
        m0, m1, m2 = mids  # type: ignore[misc]
        v0, v1, v2 = row
        return [(v0, m0, m2), (m0, v1, m1), (m2, m1, v2), (m0, m1, m2)]  # type: ignore[list-item]
    # rotate so that, with one split, it is edge 0; with two, edge 2 is the one left whole
    shift = next(i for i in range(3) if (mids[i] is not None) == (splits == 1))
    if splits == 2:
        shift = (shift + 1) % 3
    v = row[shift:] + row[:shift]
    m = mids[shift:] + mids[:shift]
    if splits == 1:
        return [(v[0], m[0], v[2]), (m[0], v[1], v[2])]  # type: ignore[list-item]
    a, b, c, m1, m2 = v[0], v[1], v[2], m[0], m[1]
    # the quad (a, m1, m2, c): its shorter diagonal in uv keeps the children better shaped
    first = float((uv[a] - uv[m2]).norm())  # type: ignore[index]
    second = float((uv[m1] - uv[c]).norm())  # type: ignore[index]
    quad = [(a, m1, m2), (a, m2, c)] if first <= second else [(a, m1, c), (m1, m2, c)]
    return [(m1, b, m2), *quad]  # type: ignore[list-item]


def batch_meshes(meshes: list[Mesh]) -> tuple[Mesh, Tensor, Tensor, Tensor]:
    """The meshes of several loops as one: the concatenated mesh (triangles and corners offset
    to the concatenated vertices), ``(V,)`` long loop of each vertex, ``(T,)`` long loop of each
    triangle and ``(loops + 1,)`` long vertex offsets."""
    device = meshes[0].points.device
    counts = torch.tensor([m.vertices for m in meshes], dtype=torch.long)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    tri = torch.cat([m.triangles.cpu() + offsets[i] for i, m in enumerate(meshes)])
    corners = torch.cat([m.corners.cpu() + offsets[i] for i, m in enumerate(meshes)])
    vertex_loop = torch.repeat_interleave(torch.arange(len(meshes)), counts)
    triangle_loop = torch.repeat_interleave(
        torch.arange(len(meshes)), torch.tensor([m.triangles.shape[0] for m in meshes])
    )
    mesh = Mesh(
        torch.cat([m.points.to(device) for m in meshes]),
        torch.cat([m.flat.to(device) for m in meshes]),
        torch.cat([m.uv.cpu() for m in meshes]),
        tri,
        torch.cat([m.fixed.cpu() for m in meshes]),
        corners,
    )
    return mesh, vertex_loop, triangle_loop, offsets


def diameter(points: Tensor) -> float:
    """The largest distance between two of ``points`` ``(N, *point_shape)``."""
    flat = points.detach().reshape(points.shape[0], -1).double()
    return float(torch.cdist(flat, flat).max()) if flat.shape[0] > 1 else 0.0


def nudge_mesh(mesh: Mesh, length: float, seed: int = 0) -> Mesh:
    """The mesh with every free vertex displaced by one offset: length ``length`` times the
    loop's diameter, in a direction orthogonal to the corners' affine span, drawn from a
    generator seeded with ``seed`` and the bytes of the loop's points (the same loop gets the
    same nudge whatever its batch). It breaks the symmetry of a flat fill on which every force
    lies in the surface (a disk through the centre of a round hole), as the band's nudge does
    (:func:`connectivity.engine.band.symmetry_nudge`). Zero where the corners span the space."""
    if length <= 0:
        return mesh
    boundary = mesh.points[mesh.fixed.to(mesh.points.device)].detach()
    values = boundary.reshape(boundary.shape[0], -1).to("cpu", torch.float64)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(16, "little", signed=True))
    digest.update(values.numpy().tobytes())
    generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
    direction = torch.randn(values.shape[1], generator=generator, dtype=torch.float64)
    x = mesh.points[mesh.corners.to(mesh.points.device)].detach()
    x = x.reshape(x.shape[0], -1).to("cpu", torch.float64)
    span = x[1:] - x[:1]
    # the span's own directions (its rank may be below k - 1: a flat loop of 4 corners);
    # two passes keep the direction orthogonal to them in float64
    u, s, _ = torch.linalg.svd(span.T, full_matrices=False)
    basis = u[:, s > 1e-9 * s.max().clamp_min(torch.finfo(s.dtype).tiny)]
    for _ in range(2):
        direction = direction - basis @ (basis.T @ direction)
    size = float(direction.norm())
    if size <= 1e-9 * math.sqrt(values.shape[1]):
        return mesh
    offset = direction * (length * diameter(boundary) / size)
    offset = offset.reshape(mesh.points.shape[1:]).to(mesh.points.dtype).to(mesh.points.device)
    free = (~mesh.fixed).to(mesh.points.device).view(-1, *([1] * (mesh.points.dim() - 1)))
    return mesh.with_points(torch.where(free, mesh.points + offset, mesh.points))


def _neighbours(triangles: Tensor, centres: Tensor) -> Tensor:
    """``(n, m)`` long: the one-ring of each of ``centres``, padded with the centre itself
    (whose difference vector is zero, so it drops out of the Gram matrix)."""
    ring: dict[int, set[int]] = {int(c): set() for c in centres}
    for a, b, c in triangles.tolist():
        for u, v in ((a, b), (b, c), (c, a)):
            if u in ring:
                ring[u].add(v)
            if v in ring:
                ring[v].add(u)
    width = max((len(s) for s in ring.values()), default=1)
    rows = [sorted(ring[int(c)]) + [int(c)] * (width - len(ring[int(c)])) for c in centres]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), width)


def in_surface(
    points: Tensor, centres: Tensor, neighbours: Tensor, counts: Tensor, vectors: Tensor
) -> tuple[Tensor, Tensor]:
    """The in-surface parts at ``centres`` of ``vectors`` and of the umbrella Laplacian.

    Args:
        points: ``(V, D)`` all vertices, flattened.
        centres: ``(n,)`` long, the vertices.
        neighbours: ``(n, m)`` long one-rings, padded with the centre.
        counts: ``(n,)`` neighbours of each centre (not counting the padding).
        vectors: ``(n, D)`` vectors at the centres (e.g. the energy's gradient).

    Returns:
        ``(n, D)`` the projection of ``vectors`` onto the tangent planes (module docstring),
        and ``(n, D)`` the projection of ``mean_j(x_j) - x_i``.
    """
    n, m = neighbours.shape
    size = points.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, m * size))
    tangent, laplacian = torch.empty_like(vectors), torch.empty_like(vectors)
    for first in range(0, n, chunk):
        rows = slice(first, first + chunk)
        x = points[centres[rows]]
        d = points[neighbours[rows]] - x.unsqueeze(1)  # (c, m, D)
        lap = d.sum(dim=1) / counts[rows].to(d.dtype).unsqueeze(1)
        # Centred on the ring's mean: on a curved surface every edge leaves the tangent plane
        # to the same side, and that shared offset would tilt the fitted plane.
        d = d - d.mean(dim=1, keepdim=True)
        gram = torch.bmm(d, d.transpose(1, 2)).double()
        values, vecs = torch.linalg.eigh(gram)
        top, basis = values[:, -2:], vecs[:, :, -2:]
        keep = top > _RANK_TOLERANCE * top[:, -1:].clamp_min(torch.finfo(top.dtype).tiny)
        inverse = torch.where(keep, 1.0 / top.clamp_min(torch.finfo(top.dtype).tiny), 0.0)
        weights = (basis * inverse.unsqueeze(1)) @ basis.transpose(1, 2)  # (c, m, m)
        weights = weights.to(d.dtype)

        def project(v: Tensor, d: Tensor = d, weights: Tensor = weights) -> Tensor:
            coefficients = weights @ torch.bmm(d, v.unsqueeze(2))
            return torch.bmm(d.transpose(1, 2), coefficients).squeeze(2)

        tangent[rows] = project(vectors[rows])
        laplacian[rows] = project(lap)
    return tangent, laplacian


def _per_loop_max(values: Tensor, loops: Tensor, count: int) -> Tensor:
    """``(count,)`` the largest of ``values`` ``(n,)`` per loop (``-inf`` for a loop without)."""
    out = torch.full((count,), -math.inf, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, loops, values, "amax", include_self=True)


def _per_loop_all(flags: Tensor, loops: Tensor, count: int) -> Tensor:
    """``(count,)`` bool: every one of ``flags`` ``(n,)`` of the loop is True."""
    out = torch.ones(count, dtype=torch.long, device=flags.device)
    return out.scatter_reduce(0, loops, flags.long(), "amin", include_self=True).bool()


class Membrane(nn.Module):
    """The free vertices of a batch of meshes, one loop each, stepped like a band.

    An ``nn.Module``: ``free`` ``(F, *point_shape)`` (the free vertices of every loop, loop by
    loop) is its one parameter; the fixed vertices, the topology and the per-loop state are
    buffers, so ``state_dict()`` saves the whole state of a membrane built from the same meshes.

    One step of a driver (as :class:`~connectivity.engine.search.BandRun` steps a band)::

        x = membrane.active_points().requires_grad_(True)
        e = energy(x, membrane.active_labels())
        (g,) = torch.autograd.grad(e.sum(), x)
        if membrane.project_(g, e, on_target).any():
            optimizer.step()
            membrane.after_step_()

    Per loop: a blow-up (a non-finite energy, gradient or position, or a vertex farther than
    :data:`MAX_MOVE` times the loop's diameter from its flat position) returns the loop to its
    last evaluated points and marks it ``diverged``; ``max_force <= tol`` marks it converged;
    ``steps`` reached ends it. Loops never mix: every quantity is per vertex or per loop, and a
    vertex's forces read only its own loop's vertices.

    Args:
        meshes: One :class:`Mesh` per loop (all of one point shape, dtype and device).
        targets: ``(loops,)`` long target class of each loop.
        options: The surface options (``steps``, ``spring_constant``, ``tol``, ``max_step``,
            ``bounds``; see :class:`~connectivity.engine.options.SurfaceOptions`).

    Attributes:
        free: ``torch.nn.Parameter`` ``(F, *point_shape)``.
        steps: ``(loops,)`` long updates applied; ``active``, ``converged``, ``diverged``
            ``(loops,)`` bool; ``max_force`` ``(loops,)`` the largest normal force of the last
            evaluation; ``on_target`` ``(loops,)`` bool every free vertex was on the target
            then, ``vertex_on_target`` ``(F,)`` bool per free vertex.

    Raises:
        ValueError: no meshes, or ``targets`` not ``(loops,)``.
    """

    def __init__(self, meshes: list[Mesh], targets: Tensor, options: SurfaceOptions) -> None:
        if not meshes:
            raise ValueError("a membrane needs at least one mesh")
        if targets.shape != (len(meshes),):
            raise ValueError(f"targets must be (loops,) = ({len(meshes)},)")
        super().__init__()
        self.options = options
        self.meshes = meshes
        self.loops = len(meshes)
        mesh, vertex_loop, triangle_loop, offsets = batch_meshes(meshes)
        device, dtype = mesh.points.device, mesh.points.dtype
        self.point_shape = tuple(mesh.points.shape[1:])
        self.offsets = offsets
        self.triangle_loop = triangle_loop
        self.max_step = options.resolved_max_step
        free_index = (~mesh.fixed).nonzero().squeeze(1)
        neighbours = _neighbours(mesh.triangles, free_index)
        counts = (neighbours != free_index.unsqueeze(1)).sum(dim=1)
        edges, _ = mesh_edges(mesh.triangles)
        self.register_buffer("anchor", mesh.points.detach().clone())
        self.register_buffer("flat", mesh.flat.detach().clone())
        self.register_buffer("triangles", mesh.triangles.to(device))
        self.register_buffer("free_index", free_index.to(device))
        self.register_buffer("neighbours", neighbours.to(device))
        self.register_buffer("neighbour_count", counts.to(device))
        self.register_buffer("row_loop", vertex_loop[free_index].to(device))
        self.register_buffer("targets", targets.detach().to(device=device, dtype=torch.long))
        flat = mesh.points.detach().reshape(mesh.vertices, -1)
        length = (flat[edges[:, 0].to(device)] - flat[edges[:, 1].to(device)]).norm(dim=1)
        edge_loop = vertex_loop[edges[:, 0]].to(device)
        unit = torch.zeros(self.loops, dtype=dtype, device=device).index_add_(0, edge_loop, length)
        unit /= torch.bincount(edge_loop, minlength=self.loops).to(dtype)
        self.register_buffer("unit", unit)
        sizes = [diameter(m.points[m.fixed.to(m.points.device)]) for m in meshes]
        self.register_buffer("diameter", torch.tensor(sizes, dtype=dtype, device=device))
        self.free = nn.Parameter(mesh.points.detach()[free_index.to(device)].clone())
        loops = self.loops
        self.register_buffer("steps", torch.zeros(loops, dtype=torch.long, device=device))
        self.register_buffer("active", torch.ones(loops, dtype=torch.bool, device=device))
        self.register_buffer("converged", torch.zeros(loops, dtype=torch.bool, device=device))
        self.register_buffer("diverged", torch.zeros(loops, dtype=torch.bool, device=device))
        self.register_buffer(
            "max_force", torch.full((loops,), math.inf, dtype=dtype, device=device)
        )
        self.register_buffer(
            "max_energy", torch.full((loops,), math.nan, dtype=dtype, device=device)
        )
        self.register_buffer("on_target", torch.zeros(loops, dtype=torch.bool, device=device))
        rows = free_index.numel()
        self.register_buffer("vertex_on_target", torch.zeros(rows, dtype=torch.bool, device=device))
        self._before: Tensor | None = None

    @property
    def done(self) -> bool:
        """No loop is active any more."""
        return not bool(self.active.any())

    def points(self) -> Tensor:
        """``(V, *point_shape)`` every vertex of every loop, detached."""
        full = self.anchor.clone()
        full[self.free_index] = self.free.detach()
        return full

    def mesh(self, loop: int) -> Mesh:
        """Loop ``loop``'s mesh with its current points."""
        first, last = int(self.offsets[loop]), int(self.offsets[loop + 1])
        return self.meshes[loop].with_points(self.points()[first:last].clone())

    def _active_rows(self) -> Tensor:
        return self.active[self.row_loop]

    def active_points(self) -> Tensor:
        """Detached copy of the active loops' free vertices, ``(n, *point_shape)``."""
        return self.free.detach()[self._active_rows()]

    def active_labels(self) -> Tensor:
        """``(n,)`` long: the target of each of :meth:`active_points`."""
        return self.targets[self.row_loop[self._active_rows()]]

    def retire_(self, loops: Tensor) -> None:
        """Take loops out of the optimisation (e.g. decided by a check)."""
        self.active[loops] = False

    def forces(self, rows: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """``(n,)`` normal force norms and ``(n, D)`` effective gradients (minus the membrane
        force) at free-vertex ``rows`` ``(n,)`` with energy gradient ``grad`` ``(n, D)``."""
        points = self.points().reshape(self.anchor.shape[0], -1)
        tangent, laplacian = torch.empty_like(grad), torch.empty_like(grad)
        counts = self.neighbour_count[rows]
        # Vertices of one valence at a time, without padding: a vertex's sums then do not
        # depend on the valences of other loops' vertices in the batch.
        for count in torch.unique(counts).tolist():
            part = (counts == count).nonzero().squeeze(1)
            tangent[part], laplacian[part] = in_surface(
                points,
                self.free_index[rows[part]],
                self.neighbours[rows[part], :count],
                counts[part],
                grad[part],
            )
        normal = grad - tangent
        return normal.norm(dim=1), normal - self.options.spring_constant * laplacian

    def project_(self, grad: Tensor, energies: Tensor, on_target: Tensor) -> Tensor:
        """Take in one evaluation of the active loops' free vertices; set ``free.grad``.

        Args:
            grad: ``(n, *point_shape)`` energy gradient at :meth:`active_points`.
            energies: ``(n,)`` energies there.
            on_target: ``(n,)`` bool, the tail put the vertex in its target class.

        Returns:
            ``(loops,)`` bool, the loops still active (their vertices move in the next step).
        """
        rows = self._active_rows().nonzero().squeeze(1)
        dtype = self.free.dtype
        e = energies.detach().to(dtype).reshape(-1)
        g = grad.detach().to(dtype).reshape(rows.numel(), math.prod(self.point_shape))
        loops = self.row_loop[rows]
        finite = torch.isfinite(e) & torch.isfinite(g).all(dim=1)
        bad = self.active & ~_per_loop_all(finite, loops, self.loops)
        self._diverge_(bad.nonzero().squeeze(1))
        good = self.active[loops]
        rows, loops, e, g, on = rows[good], loops[good], e[good], g[good], on_target[good]
        effective = g
        if rows.numel():
            force, effective = self.forces(rows, g)
            evaluated = self.active.clone()
            self.max_force[evaluated] = _per_loop_max(force, loops, self.loops)[evaluated]
            self.max_energy[evaluated] = _per_loop_max(e, loops, self.loops)[evaluated]
            self.vertex_on_target[rows] = on.to(torch.bool)
            everyone = _per_loop_all(on.to(torch.bool), loops, self.loops)
            self.on_target[evaluated] = everyone[evaluated]
            converged = evaluated & (self.max_force <= self.options.tol)
            self.converged |= converged
            self.active &= ~converged & ~(self.steps >= self.options.steps)
        full = torch.zeros_like(self.free.detach()).reshape(self.free.shape[0], -1)
        moving = self.active[loops]
        full[rows[moving]] = effective[moving]
        self.free.grad = full.reshape(self.free.shape)
        self._before = self.free.detach().clone()
        return self.active.clone()

    def _diverge_(self, loops: Tensor) -> None:
        """Mark ``loops`` diverged and return them to their points before the last step."""
        if loops.numel() == 0:
            return
        self.diverged[loops] = True
        self.active[loops] = False
        if self._before is None:
            return
        rows = torch.isin(self.row_loop, loops)
        with torch.no_grad():
            self.free[rows] = self._before[rows]

    @torch.no_grad()
    def after_step_(self) -> None:
        """Finish an optimiser step: undo the moves of inactive loops, cap each vertex's move
        at ``max_step`` times its loop's mean edge length, clamp to ``bounds``, catch
        blow-ups (non-finite positions, a vertex too far from the flat fill) and count the
        step."""
        if self._before is None:
            raise RuntimeError("after_step_ called before project_")
        moving = self._active_rows()
        self.free[~moving] = self._before[~moving]
        step = (self.free - self._before).reshape(self.free.shape[0], -1)
        if math.isfinite(self.max_step):
            cap = (self.max_step * self.unit[self.row_loop]).unsqueeze(1)
            length = step.norm(dim=1, keepdim=True)
            factor = torch.where(length > cap, cap / length, torch.ones_like(length))
            shortened = self._before.reshape(step.shape) + factor * step
            self.free[moving] = shortened.reshape(self.free.shape)[moving]
        if self.options.bounds is not None:
            self.free[moving] = self.free[moving].clamp(*self.options.bounds)
        flat = self.free.reshape(self.free.shape[0], -1)
        away = (flat - self.flat[self.free_index].reshape(flat.shape)).norm(dim=1)
        fine = torch.isfinite(flat).all(dim=1) & (away <= MAX_MOVE * self.diameter[self.row_loop])
        blown = self.active & ~_per_loop_all(fine, self.row_loop, self.loops)
        self.steps[self.active & ~blown] += 1
        self._diverge_(blown.nonzero().squeeze(1))
        self.free.grad = None
