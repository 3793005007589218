"""The surface search (issue 22) on classes of known topology: analytic tails whose class is
an annulus (2-D), a spherical shell and a solid torus (3-D). Every filled surface is checked
again here, densely, triangle by triangle."""

from __future__ import annotations

import io
import math

import pytest
import torch

from connectivity.engine.options import SurfaceOptions
from connectivity.engine.surfaces import SurfaceRecord, SurfaceSearch, fill_loops
from connectivity.engine.triangles import BUDGET, empty_check, sampled_triangles
from connectivity.errors import InputError, OptionsError
from tests.engine.test_membrane import assert_mesh_invariants, circle

OPTIMIZERS = ["adam", "fire", "lbfgs"]
LR = {"adam": 0.02, "fire": 0.05, "lbfgs": 0.05}


class Radial(torch.nn.Module):
    """Class 0 where ``|distance - 1| < width`` (logits ``(s, -s)``, margin ``2 s``), with
    ``distance`` the norm of the point (2-D: an annulus; 3-D: a spherical shell)."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.width = width

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        return x.norm(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 10 * (self.width**2 - (self.distance(x) - 1) ** 2)
        return torch.stack([s, -s], dim=1)


class SolidTorus(Radial):
    """Class 0 within ``width`` of the unit circle of the xy-plane (the torus's core)."""

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        rho = x[:, :2].norm(dim=1)
        # 1 + (distance to the core): Radial's test |distance - 1| < width
        return 1 + torch.sqrt((rho - 1) ** 2 + x[:, 2] ** 2)


ANNULUS, SHELL, TORUS = Radial(0.4), Radial(0.25), SolidTorus(0.3)


pytestmark = pytest.mark.usefixtures("one_thread")


def options(optimizer: str, **values: object) -> SurfaceOptions:
    return SurfaceOptions(optimizer=optimizer, lr=LR[optimizer], **values)  # type: ignore[arg-type]


def assert_filled(record: SurfaceRecord, tail: torch.nn.Module, loop: torch.Tensor) -> None:
    """The record's surface is bounded by ``loop`` and every point of a barycentric grid of
    20 per edge of every triangle is on the target."""
    assert record.verdict in ("planar", "curved")
    assert record.triangles_failed == 0 and record.min_margin > 0
    corners = record.points[record.corners]
    index = [int((loop - c).norm(dim=1).argmin()) for c in corners]
    assert_mesh_invariants(_mesh(record), loop, index)
    p, t = record.points, record.triangles
    targets = torch.full((t.shape[0],), record.target, dtype=torch.long)
    dense = sampled_triangles(tail, p[t[:, 0]], p[t[:, 1]], p[t[:, 2]], targets, per_edge=20)
    assert bool(dense.passed.all()), f"{int(dense.failed.sum())} triangles leave the class"


def _mesh(record: SurfaceRecord):  # type: ignore[no-untyped-def]
    from connectivity.engine.membrane import Mesh

    return Mesh(
        record.points, record.flat, record.uv, record.triangles, record.fixed, record.corners
    )


def arc_loop() -> torch.Tensor:
    """Three points on the annulus's middle circle, 0.5 rad apart: their triangle is inside."""
    angle = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    return torch.stack([angle.cos(), angle.sin()], dim=1)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_loop_round_the_annulus_hole_is_never_filled(optimizer: str) -> None:
    around = circle(4, dims=2)  # straight sides: chords at radius 0.71, inside the annulus
    inside = arc_loop()
    records = fill_loops(
        ANNULUS,
        [around, inside],
        [[0, 1, 2, 3], [0, 1, 2]],
        torch.tensor([0, 0]),
        torch.tensor([True, True]),
        options(optimizer, steps=200),
    )
    assert records[0].verdict == "none" and records[0].planar_min_margin < 0
    assert records[0].status == "budget" and records[0].refinements >= 1
    assert records[1].verdict == "planar" and records[1].status == "planar"
    assert records[1].steps == 0 and records[1].certificate == "sampled"
    assert_filled(records[1], ANNULUS, inside)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_loop_on_the_shell_equator_is_filled_by_a_curved_cap(optimizer: str) -> None:
    equator = circle(16)
    record = fill_loops(
        SHELL,
        [equator],
        [[0, 4, 8, 12]],
        torch.tensor([0]),
        torch.tensor([False]),
        options(optimizer, steps=500, samples_per_edge=6),
    )[0]
    assert record.verdict == "curved", record.metrics()
    assert record.planar_min_margin < 0  # the flat fill crosses the inner ball
    assert record.certificate == "sampled" and record.triangles_sampled > 0
    assert float(record.points[:, 2].abs().max()) > 0.5  # over a cap
    assert record.moved_ratio == pytest.approx(record.moved_max / 2.0)
    assert_filled(record, SHELL, equator)


@pytest.mark.parametrize(
    "optimizer",
    [
        "fire",
        pytest.param("adam", marks=pytest.mark.slow),
        pytest.param("lbfgs", marks=pytest.mark.slow),
    ],
)
def test_a_longitude_of_the_solid_torus_is_never_filled(optimizer: str) -> None:
    steps = 60 if optimizer == "fire" else 400
    record = fill_loops(
        TORUS,
        [circle(16)],
        [[0, 4, 8, 12]],
        torch.tensor([0]),
        torch.tensor([False]),
        options(optimizer, steps=steps),
    )[0]
    assert record.verdict in ("none", "diverged")
    assert record.min_margin < 0


def shell_loops() -> tuple[list[torch.Tensor], list[list[int]], torch.Tensor]:
    """Loops of the shell: the equator, a tilted great circle of 3 curved sides, a small
    triangle on the shell (planar) and a square round the inner ball (straight sides that
    leave the shell: no fill)."""
    tilt = torch.tensor(
        [[1.0, 0, 0], [0, math.cos(0.6), math.sin(0.6)], [0, -math.sin(0.6), math.cos(0.6)]],
        dtype=torch.float64,
    )
    small = torch.tensor([[1.0, 0, 0], [0.95, 0.3, 0], [0.95, 0, 0.3]], dtype=torch.float64)
    loops = [circle(16), circle(12) @ tilt.T, small, circle(4)]
    corners = [[0, 4, 8, 12], [0, 4, 8], [0, 1, 2], [0, 1, 2, 3]]
    return loops, corners, torch.tensor([False, False, True, True])


def same_records(a: list[SurfaceRecord], b: list[SurfaceRecord]) -> None:
    for x, y in zip(a, b, strict=True):
        mx, my = x.metrics(), y.metrics()
        assert mx.keys() == my.keys()
        for key in mx:
            same = mx[key] == my[key] or (
                isinstance(mx[key], float) and math.isnan(mx[key]) and math.isnan(my[key])
            )
            assert same, (key, mx[key], my[key])
        for name in ("points", "flat", "uv", "triangles", "fixed", "corners"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


@pytest.mark.parametrize(
    ("optimizer", "steps"),
    [
        ("fire", 40),
        pytest.param("lbfgs", 150, marks=pytest.mark.slow),
        pytest.param("adam", 150, marks=pytest.mark.slow),
    ],
)
def test_loops_batched_give_the_records_of_one_at_a_time(optimizer: str, steps: int) -> None:
    loops, corners, straight = shell_loops()
    opts = options(optimizer, steps=steps, max_vertices=120)
    targets = torch.zeros(len(loops), dtype=torch.long)
    together = fill_loops(SHELL, loops, corners, targets, straight, opts)
    alone = [
        fill_loops(SHELL, [loop], [c], targets[:1], straight[i : i + 1], opts)[0]
        for i, (loop, c) in enumerate(zip(loops, corners, strict=True))
    ]
    same_records(together, alone)
    assert [r.verdict for r in together] == ["curved", "curved", "planar", "none"]
    for record, loop in zip(together[:3], loops, strict=False):
        assert_filled(record, SHELL, loop)


@pytest.mark.parametrize(
    ("optimizer", "stop_after", "steps"),
    [
        ("fire", 3, 40),
        pytest.param("adam", 7, 150, marks=pytest.mark.slow),
        pytest.param("lbfgs", 2, 150, marks=pytest.mark.slow),
    ],
)
def test_a_search_resumed_from_its_checkpoint_ends_as_one_not_stopped(
    optimizer: str, stop_after: int, steps: int
) -> None:
    loops, corners, straight = shell_loops()
    opts = options(optimizer, steps=steps, max_vertices=120, check_every=2)
    targets = torch.zeros(len(loops), dtype=torch.long)
    told: dict[int, SurfaceRecord] = {}
    optimizers: list[torch.optim.Optimizer] = []
    search = SurfaceSearch(
        SHELL,
        loops,
        corners,
        targets,
        straight,
        opts,
        on_record=told.__setitem__,
        on_membrane=optimizers.append,
    )
    search.start()
    while not search.done:
        search.step()
    whole = search.records()
    assert sorted(told) == [0, 1, 2, 3] and all(told[i] is whole[i] for i in told)
    # a membrane per round: the first, and one per later round of refined loops
    assert len(optimizers) >= 1 + (max(r.refinements for r in whole) > 0)
    first = SurfaceSearch(SHELL, loops, corners, targets, straight, opts)
    first.start()
    for _ in range(stop_after):
        first.step()
    assert not first.done
    buffer = io.BytesIO()
    torch.save(first.checkpoint(), buffer)
    buffer.seek(0)
    second = SurfaceSearch(SHELL, loops, corners, targets, straight, opts)
    second.start(torch.load(buffer, weights_only=False))
    while not second.done:
        second.step()
    same_records(second.records(), whole)


def test_triangles_a_proof_leaves_undecided_are_decided_at_sampled_points() -> None:
    inside = arc_loop()
    calls = []

    def spent(a, b, c, targets):  # type: ignore[no-untyped-def]
        calls.append(a.shape[0])
        return empty_check("exact", a.shape[0], BUDGET, "region budget spent")

    record = fill_loops(
        ANNULUS, [inside], [[0, 1, 2]], torch.tensor([0]), torch.tensor([True]), check=spent
    )[0]
    assert calls == [3]
    assert record.verdict == "planar" and record.certificate == "sampled"
    assert "decided at sampled points (region budget spent)" in record.note
    assert math.isnan(record.min_margin_lower_bound) and record.min_margin > 0


def test_records_say_scalars_in_metrics_and_inputs_are_checked() -> None:
    record = fill_loops(
        ANNULUS, [arc_loop()], [[0, 1, 2]], torch.tensor([0]), torch.tensor([True])
    )[0]
    metrics = record.metrics()
    assert metrics["verdict"] == "planar" and metrics["size"] == 3 and metrics["vertices"] == 4
    assert all(isinstance(v, (int, float, str)) for v in metrics.values())
    with pytest.raises(InputError):
        fill_loops(ANNULUS, [arc_loop()], [[0, 1, 2]], torch.tensor([0, 0]), torch.tensor([True]))
    with pytest.raises(InputError):
        fill_loops(
            ANNULUS, [arc_loop().long()], [[0, 1, 2]], torch.tensor([0]), torch.tensor([True])
        )
    with pytest.raises(ValueError):
        fill_loops(ANNULUS, [arc_loop()], [[0, 2, 1]], torch.tensor([0]), torch.tensor([False]))


@pytest.mark.parametrize(
    "values",
    [
        {"rings": 0},
        {"max_vertices": 3},
        {"samples_per_edge": 0},
        {"check_every": 0},
        {"max_regions": 0},
        {"rings": 1.5},
        {"check_every": True},
    ],
)
def test_surface_options_refuse_values_outside_their_range(values: dict) -> None:
    with pytest.raises(OptionsError):
        SurfaceOptions(**values)


def distance_to_origin(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(T,)`` distance from the origin to each triangle ``(a, b, c)`` (``(T, D)`` each):
    the nearest of the interior stationary point (where it is inside) and the three edges'
    nearest points."""

    def to_segment(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        t = (-(p * (q - p)).sum(1) / ((q - p) ** 2).sum(1).clamp_min(1e-300)).clamp(0, 1)
        return (p + t.unsqueeze(1) * (q - p)).norm(dim=1)

    u, v = b - a, c - a
    gram = torch.stack(
        [
            torch.stack([(u * u).sum(1), (u * v).sum(1)], 1),
            torch.stack([(u * v).sum(1), (v * v).sum(1)], 1),
        ],
        1,
    )
    rhs = -torch.stack([(a * u).sum(1), (a * v).sum(1)], 1)
    st = torch.linalg.solve(gram, rhs)
    inside = (st >= 0).all(1) & (st.sum(1) <= 1)
    interior = (a + st[:, :1] * u + st[:, 1:] * v).norm(dim=1)
    edges = torch.stack([to_segment(a, b), to_segment(b, c), to_segment(c, a)], 1).amin(1)
    return torch.where(inside, torch.minimum(interior, edges), edges)


def radial_bounds(tail: Radial):  # type: ignore[no-untyped-def]
    """A proof for :class:`Radial` classes: over a triangle the norm lies between its distance
    from the origin and its largest corner norm, and the margin ``20 (w^2 - (r - 1)^2)`` is
    lowest at one of these ends. Triangles whose bound is not positive are left
    ``"budget"``."""

    def check(a, b, c, targets):  # type: ignore[no-untyped-def]
        from connectivity.engine.triangles import PROVED, TriangleCheck

        low = distance_to_origin(a, b, c) - 1e-9
        high = torch.stack([a.norm(dim=1), b.norm(dim=1), c.norm(dim=1)], 1).amax(1) + 1e-9
        worst = torch.maximum((low - 1) ** 2, (high - 1) ** 2)
        bound = 20 * (tail.width**2 - worst)
        corners = torch.stack([tail(a)[:, 0], tail(b)[:, 0], tail(c)[:, 0]], 1) * 2
        count = a.shape[0]
        nan = torch.full((count,), math.nan, dtype=torch.float64)
        return TriangleCheck(
            "bounds",
            [PROVED if float(x) > 0 else BUDGET for x in bound],
            corners.amin(1).double(),
            torch.where(bound > 0, bound, math.nan).double(),
            torch.full((count, 3), math.nan, dtype=torch.float64),
            nan,
            torch.ones(count, dtype=torch.long),
            torch.ones(count, dtype=torch.long),
            ["" if float(x) > 0 else "bound not positive" for x in bound],
        )

    return check


def dense_min_margin(record: SurfaceRecord, tail: torch.nn.Module) -> float:
    p, t = record.points, record.triangles
    targets = torch.full((t.shape[0],), record.target, dtype=torch.long)
    dense = sampled_triangles(tail, p[t[:, 0]], p[t[:, 1]], p[t[:, 2]], targets, per_edge=20)
    return float(dense.min_margin.min())


def test_a_fill_every_triangle_of_which_is_proved_rests_on_the_proof() -> None:
    record = fill_loops(
        ANNULUS,
        [arc_loop()],
        [[0, 1, 2]],
        torch.tensor([0]),
        torch.tensor([True]),
        check=radial_bounds(ANNULUS),
    )[0]
    assert record.verdict == "planar" and record.certificate == "bounds"
    assert record.triangles_proved == 3 and record.note == ""
    assert 0 < record.min_margin_lower_bound == record.min_margin
    assert record.min_margin <= dense_min_margin(record, ANNULUS)


def test_a_curved_fill_proved_triangle_by_triangle_rests_on_the_proof() -> None:
    record = fill_loops(
        SHELL,
        [circle(16)],
        [[0, 4, 8, 12]],
        torch.tensor([0]),
        torch.tensor([False]),
        options("fire", steps=300),
        check=radial_bounds(SHELL),
    )[0]
    assert record.verdict == "curved" and record.certificate == "bounds"
    assert record.triangles_proved == record.triangles.shape[0]
    assert 0 < record.min_margin_lower_bound == record.min_margin
    assert record.min_margin <= dense_min_margin(record, SHELL)
    assert_filled(record, SHELL, circle(16))


def test_a_fill_partly_proved_rests_on_the_sampled_check_and_says_why() -> None:
    proof = radial_bounds(SHELL)

    def half(a, b, c, targets):  # type: ignore[no-untyped-def]
        # the proof of the first half of the triangles only; the rest left to its budget
        result = proof(a, b, c, targets)
        rest = range(a.shape[0] // 2, a.shape[0])
        for i in rest:
            result.status[i], result.note[i] = BUDGET, "left for the test"
        result.min_margin_lower_bound[a.shape[0] // 2 :] = math.nan
        return result

    record = fill_loops(
        SHELL,
        [circle(16)],
        [[0, 4, 8, 12]],
        torch.tensor([0]),
        torch.tensor([False]),
        options("fire", steps=300),
        check=half,
    )[0]
    assert record.verdict == "curved" and record.certificate == "sampled"
    assert record.triangles_proved > 0 and record.triangles_sampled > 0
    assert math.isnan(record.min_margin_lower_bound)
    assert "decided at sampled points (left for the test)" in record.note
    assert_filled(record, SHELL, circle(16))


def test_a_straight_loop_whose_flat_fill_fails_goes_on_to_a_membrane() -> None:
    # a hexagon on the shell's equator: its sides stay in the shell, its centre does not
    hexagon = circle(6)
    record = fill_loops(
        SHELL,
        [hexagon],
        [list(range(6))],
        torch.tensor([0]),
        torch.tensor([True]),
        options("lbfgs", steps=200),
    )[0]
    assert record.planar_min_margin < 0 and record.verdict == "curved"
    assert_filled(record, SHELL, hexagon)


def test_a_loop_whose_membrane_runs_off_is_diverged_and_the_others_go_on() -> None:
    from tests.engine.test_membrane import NaNAbove

    class ShellBelow(torch.nn.Module):
        """The shell's class where ``z < 0.5``; NaN logits above (a network that breaks)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return SHELL(x) + 0 * NaNAbove()(x)

    # a circle of latitude below the equator: its cap, round the south pole, stays below
    south = 0.8 * circle(12)
    south[:, 2] = -0.6
    records = fill_loops(
        ShellBelow(),
        [circle(16), south],
        [[0, 4, 8, 12], [0, 4, 8]],
        torch.tensor([0, 0]),
        torch.tensor([False, False]),
        options("fire", steps=300),
    )
    assert records[0].verdict == "diverged" and records[0].status == "diverged"
    assert records[0].steps < 300
    assert bool(torch.isfinite(ShellBelow()(records[0].points)).all())
    assert records[1].verdict == "curved" and records[1].planar_min_margin < 0
    assert_filled(records[1], ShellBelow(), south)
