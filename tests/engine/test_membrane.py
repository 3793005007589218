"""The membrane's meshes, refinement and state machine (issue 22), against their invariants:
Euler characteristic, the loop as boundary, orientation, the flat fill's affine map."""

from __future__ import annotations

import math

import pytest
import torch

from connectivity.engine.membrane import (
    MAX_MOVE,
    Membrane,
    Mesh,
    fan_triangles,
    flat_points,
    loop_mesh,
    mesh_edges,
    nudge_mesh,
    refine,
)
from connectivity.engine.optimizers import make_optimizer
from connectivity.engine.options import SurfaceOptions
from connectivity.engine.search import ClassifierEnergy

pytestmark = pytest.mark.usefixtures("one_thread")


def circle(count: int, dims: int = 3, radius: float = 1.0) -> torch.Tensor:
    """``(count, dims)`` float64 points of a circle in the first two coordinates."""
    angle = torch.arange(count, dtype=torch.float64) * (2 * math.pi / count)
    points = torch.zeros(count, dims, dtype=torch.float64)
    points[:, 0], points[:, 1] = radius * angle.cos(), radius * angle.sin()
    return points


def bumpy_loop() -> torch.Tensor:
    """A closed polyline of 11 points in 4-D, not in any plane, with uneven spacing."""
    t = torch.tensor([0, 0.3, 0.5, 1.4, 2.0, 2.2, 3.1, 3.9, 4.4, 5.0, 5.8], dtype=torch.float64)
    return torch.stack([t.cos(), t.sin(), 0.3 * (2 * t).sin(), 0.2 * (3 * t).cos()], dim=1)


def signed_areas(uv: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    a, b, c = uv[triangles[:, 0]], uv[triangles[:, 1]], uv[triangles[:, 2]]
    return (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]


def boundary_cycle(mesh: Mesh) -> list[int]:
    """The boundary's vertices in order, walked along its edges as the triangles orient them
    (an edge ``u -> v`` of a triangle whose reverse ``v -> u`` is in no triangle)."""
    directed = set()
    for a, b, c in mesh.triangles.tolist():
        directed |= {(a, b), (b, c), (c, a)}
    boundary = {u: v for u, v in directed if (v, u) not in directed}
    start = int(mesh.corners[0])
    cycle = [start]
    while boundary[cycle[-1]] != start:
        cycle.append(boundary[cycle[-1]])
        assert len(cycle) <= len(boundary)
    assert len(cycle) == len(boundary), "the boundary is one cycle"
    return cycle


def assert_mesh_invariants(mesh: Mesh, loop: torch.Tensor, corners: list[int]) -> None:
    edges, counts = mesh_edges(mesh.triangles)
    assert mesh.vertices - edges.shape[0] + mesh.triangles.shape[0] == 1  # a disk
    assert int(counts.max()) <= 2  # every interior edge in exactly 2 triangles
    assert bool((signed_areas(mesh.uv, mesh.triangles) > 0).all())  # one orientation
    # every input is a vertex, bit for bit
    assert torch.equal(mesh.points[mesh.corners], loop[torch.tensor(corners)])
    cycle = boundary_cycle(mesh)
    assert set(cycle) == set(mesh.fixed.nonzero().squeeze(1).tolist())
    # the boundary walks the loop's points in order, and whatever else is on it lies on the
    # straight piece between two of them
    positions = {}
    for i, v in enumerate(cycle):
        hit = (mesh.points[v] - loop).norm(dim=1) == 0
        if bool(hit.any()):
            positions[i] = int(hit.nonzero()[0])
    order = [positions[i] for i in sorted(positions)]
    count = loop.shape[0]
    assert order == [(corners[0] + i) % count for i in range(count)]
    for i, v in enumerate(cycle):
        if i in positions:
            continue
        before = max(j for j in positions if j < i)
        after = min((j for j in positions if j > i), default=len(cycle))
        p = loop[positions[before]]
        q = loop[positions[after % len(cycle)]]  # past the end: the walk's start
        x = mesh.points[v]
        t = float((x - p) @ (q - p) / ((q - p) @ (q - p)))
        assert 0 < t < 1
        assert float((p + t * (q - p) - x).norm()) < 1e-12


@pytest.mark.parametrize("rings", [1, 3])
def test_the_fan_mesh_is_a_disk_bounded_by_the_loop(rings: int) -> None:
    loop = bumpy_loop()
    corners = [0, 3, 6, 9]
    mesh = loop_mesh(loop, corners, rings)
    count = loop.shape[0]
    assert int(mesh.fixed.sum()) == count
    # a triangulated disk whose boundary vertices are the loop's
    assert mesh.triangles.shape == (2 * mesh.vertices - count - 2, 3)
    if rings == 1:
        assert mesh.vertices == 1 + count
    assert_mesh_invariants(mesh, loop, corners)
    # the corners sit on the regular 4-gon's corners in the domain
    assert torch.allclose(mesh.uv[mesh.corners].norm(dim=1), torch.ones(4, dtype=torch.float64))
    # the flat positions are the fan of the corners, mapped from uv
    assert torch.allclose(mesh.flat, flat_points(mesh.uv, loop[corners]), atol=1e-12)


def test_a_loop_of_straight_sides_starts_on_its_flat_fill() -> None:
    corners = torch.tensor([[0.0, 0, 0], [2, 0, 1], [1, 2, 0]], dtype=torch.float64)
    # two extra points on each side, at uneven places
    sides = []
    for i in range(3):
        p, q = corners[i], corners[(i + 1) % 3]
        sides += [p, p + 0.2 * (q - p), p + 0.7 * (q - p)]
    loop = torch.stack(sides)
    mesh = loop_mesh(loop, [0, 3, 6], rings=3)
    assert torch.allclose(mesh.points, mesh.flat, atol=1e-12)
    a, b, c = fan_triangles(corners)
    assert torch.allclose(a, corners.mean(0).expand(3, 3))
    assert torch.equal(b, corners) and torch.equal(c, corners[[1, 2, 0]])


def test_refinement_is_conforming_and_keeps_the_loop_and_the_flat_fill() -> None:
    loop = bumpy_loop()
    corners = [1, 4, 8]
    mesh = loop_mesh(loop, corners, 2)
    generator = torch.Generator().manual_seed(0)
    seen: set[int] = set()
    for _ in range(4):
        marked = torch.rand(mesh.triangles.shape[0], generator=generator) < 0.3
        refined = refine(mesh, marked)
        added = refined.vertices - mesh.vertices
        # each edge of a marked triangle got exactly one midpoint
        marked_edges = {
            tuple(sorted(e))
            for t in mesh.triangles[marked].tolist()
            for e in (t[:2], t[1:], t[::2])
        }
        assert added == len(marked_edges)
        # a triangle with s split edges has s + 1 children (green 2, 3, red 4)
        splits = [
            sum(tuple(sorted(e)) in marked_edges for e in (t[:2], t[1:], t[::2]))
            for t in mesh.triangles.tolist()
        ]
        assert refined.triangles.shape[0] == mesh.triangles.shape[0] + sum(splits)
        seen |= set(splits)
        assert torch.equal(refined.points[: mesh.vertices], mesh.points)
        assert_mesh_invariants(refined, loop, corners)
        assert torch.allclose(refined.flat, flat_points(refined.uv, loop[corners]), atol=1e-12)
        mesh = refined
    assert seen == {0, 1, 2, 3}
    assert refine(mesh, torch.zeros(mesh.triangles.shape[0], dtype=torch.bool)) is mesh


def test_the_nudge_leaves_the_loop_and_the_corners_span() -> None:
    loop = circle(12)
    mesh = loop_mesh(loop, [0, 4, 8], 3)
    nudged = nudge_mesh(mesh, 1e-3, seed=1)
    moved = nudged.points - mesh.points
    assert torch.equal(moved[mesh.fixed], torch.zeros_like(moved[mesh.fixed]))
    # orthogonal to the plane of the corners (z here), of 1e-3 times the diameter (2)
    assert torch.allclose(moved[~mesh.fixed][:, :2], torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(moved[~mesh.fixed][:, 2].abs(), torch.tensor(2e-3, dtype=torch.float64))
    assert torch.equal(nudge_mesh(mesh, 1e-3, seed=1).points, nudged.points)
    flat = loop_mesh(circle(12, dims=2), [0, 4, 8], 3)
    assert nudge_mesh(flat, 1e-3) is flat  # the corners span the plane: no direction is left


class Bowl(torch.nn.Module):
    """Class 0 where ``z > |x|^2 - 0.5`` (a paraboloid's inside), ``(B, 3) -> (B, 2)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 2] - (x[:, :2] ** 2).sum(dim=1) + 0.5
        return torch.stack([s, -s], dim=1)


def run_membrane(membrane: Membrane, optimizer: torch.optim.Optimizer, steps: int) -> None:
    energy = ClassifierEnergy(Bowl())
    for _ in range(steps):
        x = membrane.active_points().requires_grad_(True)
        labels = membrane.active_labels()
        e = energy(x, labels)
        (g,) = torch.autograd.grad(e.sum(), x)
        assert energy.logits is not None
        if membrane.project_(g, e, energy.logits.argmax(1) == labels).any():
            optimizer.step()
            membrane.after_step_()


@pytest.mark.parametrize("optimizer", ["adam", "fire", "lbfgs"])
def test_the_membrane_keeps_its_vertices_and_its_loop(optimizer: str) -> None:
    meshes = [loop_mesh(circle(8), [0, 3, 5], 2), loop_mesh(0.5 * circle(6), [0, 2, 4], 3)]
    options = SurfaceOptions(optimizer=optimizer, lr=0.05, steps=15, tol=0.0)
    membrane = Membrane(meshes, torch.tensor([0, 0]), options)
    opt = make_optimizer(optimizer, [membrane.free], options.lr)
    anchor = membrane.anchor.clone()
    fixed = ~torch.isin(torch.arange(anchor.shape[0]), membrane.free_index)
    run_membrane(membrane, opt, 20)
    points = membrane.points()
    free = sum(int((~m.fixed).sum()) for m in meshes)
    assert points.shape == anchor.shape and membrane.free.shape[0] == free
    assert torch.equal(points[fixed], anchor[fixed])
    assert membrane.steps.tolist() == [15, 15] and membrane.done
    # the interior rose into the bowl (the flat fill at z = 0 is partly outside it)
    assert float(points[~fixed][:, 2].min()) > 0.0
    mesh = membrane.mesh(1)
    assert mesh.vertices == meshes[1].vertices
    assert torch.equal(mesh.points[mesh.fixed], meshes[1].points[meshes[1].fixed])


def test_a_membrane_state_dict_round_trip_continues_bit_for_bit() -> None:
    meshes = [loop_mesh(circle(8), [0, 3, 5], 2)]
    options = SurfaceOptions(optimizer="fire", lr=0.05, steps=12, tol=0.0)
    whole = Membrane(meshes, torch.tensor([0]), options)
    whole_opt = make_optimizer("fire", [whole.free], options.lr)
    run_membrane(whole, whole_opt, 12)
    first = Membrane(meshes, torch.tensor([0]), options)
    first_opt = make_optimizer("fire", [first.free], options.lr)
    run_membrane(first, first_opt, 5)
    second = Membrane(meshes, torch.tensor([0]), options)
    second.load_state_dict(first.state_dict())
    second_opt = make_optimizer("fire", [second.free], options.lr)
    second_opt.load_state_dict(first_opt.state_dict())
    run_membrane(second, second_opt, 7)
    assert torch.equal(second.points(), whole.points())
    assert torch.equal(second.steps, whole.steps)


class Upwards(torch.nn.Module):
    """Class 0 only far above the plane ``z = 0``: the energy pushes up without end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 2] - 1000.0
        return torch.stack([s, -s], dim=1)


class NaNAbove(Upwards):
    """:class:`Upwards`, with NaN logits above ``z = 0.5``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0 * torch.sqrt(0.5 - x[:, 2:3])


@pytest.mark.parametrize("tail", [Upwards(), NaNAbove()])
def test_a_membrane_running_off_is_diverged_at_its_last_finite_surface(
    tail: torch.nn.Module,
) -> None:
    mesh = nudge_mesh(loop_mesh(circle(8), [0, 3, 5], 2), 1e-3)
    # without springs nothing holds the vertices back
    options = SurfaceOptions(optimizer="adam", lr=1.0, steps=500, spring_constant=0.0)
    membrane = Membrane([mesh], torch.tensor([0]), options)
    opt = make_optimizer("adam", [membrane.free], options.lr)
    energy = ClassifierEnergy(tail)
    while not membrane.done:
        x = membrane.active_points().requires_grad_(True)
        e = energy(x, membrane.active_labels())
        (g,) = torch.autograd.grad(e.sum(), x)
        if membrane.project_(g, e, torch.zeros(len(e), dtype=torch.bool)).any():
            opt.step()
            membrane.after_step_()
    assert bool(membrane.diverged[0]) and int(membrane.steps[0]) < 500
    points = membrane.points()
    assert bool(torch.isfinite(tail(points)).all())  # the last surface the tail took
    away = (points - membrane.flat).norm(dim=1)
    assert float(away.max()) <= MAX_MOVE * 2.0  # the loop's diameter is 2


def test_in_surface_parts_in_a_4096_dim_space_are_the_plane_of_a_flat_mesh() -> None:
    from connectivity.engine.membrane import in_surface

    generator = torch.Generator().manual_seed(0)
    # a fan mesh of a planar loop, carried into a random 2-D plane of a 4096-dim space
    plane = torch.linalg.qr(torch.randn(4096, 2, generator=generator, dtype=torch.float64)).Q
    flat_mesh = loop_mesh(bumpy_loop()[:, :2], [0, 4, 7], 3)
    points = flat_mesh.points @ plane.T
    mesh = Mesh(
        points, points, flat_mesh.uv, flat_mesh.triangles, flat_mesh.fixed, flat_mesh.corners
    )
    membrane = Membrane([mesh], torch.tensor([0]), SurfaceOptions())
    rows = torch.arange(membrane.free.shape[0])
    inside = torch.randn(rows.numel(), 2, generator=generator, dtype=torch.float64) @ plane.T
    across = torch.randn(rows.numel(), 4096, generator=generator, dtype=torch.float64)
    across -= across @ plane @ plane.T
    counts = membrane.neighbour_count
    tangent, laplacian = in_surface(
        points, membrane.free_index, membrane.neighbours, counts, inside + across
    )
    assert torch.allclose(tangent, inside, atol=1e-10)
    # the umbrella Laplacian of a flat mesh lies in its plane: all of it is kept
    ring = points[membrane.neighbours] - points[membrane.free_index].unsqueeze(1)
    umbrella = ring.sum(dim=1) / counts.unsqueeze(1)
    assert torch.allclose(laplacian, umbrella, atol=1e-10)
    # so the normal force is the part across the plane, and the springs act in it
    force, effective = membrane.forces(rows, inside + across)
    assert torch.allclose(force, across.norm(dim=1))
    assert torch.allclose(effective, across - umbrella, atol=1e-10)


def tangent_errors(count: int, rings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-surface part of the unit normal at each free vertex of the fan mesh of the
    equator (``count`` points, ``rings`` rings) lifted onto the upper unit hemisphere, and
    the longest edge of each vertex's ring."""
    from connectivity.engine.membrane import in_surface

    mesh = loop_mesh(circle(count), [0, count // 3, 2 * count // 3], rings)
    lifted = mesh.points.clone()
    lifted[:, 2] = (1 - (lifted[:, :2] ** 2).sum(dim=1)).clamp_min(0).sqrt()
    membrane = Membrane([mesh.with_points(lifted)], torch.tensor([0]), SurfaceOptions())
    centres = membrane.free_index
    radial = lifted[centres] / lifted[centres].norm(dim=1, keepdim=True)
    tangent, _ = in_surface(lifted, centres, membrane.neighbours, membrane.neighbour_count, radial)
    ring = lifted[membrane.neighbours] - lifted[centres].unsqueeze(1)
    return tangent.norm(dim=1), ring.norm(dim=2).amax(dim=1)


def test_the_tangent_plane_of_a_sphere_mesh_is_orthogonal_to_its_radius() -> None:
    # The radius is the sphere's normal. A chord d of the unit sphere leaves the tangent plane
    # at the angle asin(|d| / 2): the plane fitted to a ring is off by about that much, and
    # the error falls with the edges (first order) as the mesh gets finer.
    coarse, longest = tangent_errors(24, 6)
    assert bool((coarse <= 0.5 * longest).all()), float((coarse / longest).max())
    assert float(coarse[0]) < 1e-12  # the pole's ring is symmetric round its radius
    fine, _ = tangent_errors(48, 12)
    assert float(fine.max()) < 0.8 * float(coarse.max())
