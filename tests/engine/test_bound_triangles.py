"""Bounds over flat triangles (engine/bound_triangles.py): soundness against dense barycentric
grids on random ReLU, GELU/tanh and attention tails, known minima of hand-built tails, affine
tails proved after few splits, counterexamples at corners and inside, degenerate triangles as
segments and points, refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.bound_triangles import prove_triangles
from connectivity.engine.bounds import NotBoundedError, bound_program, margin_bounds, prove_segments
from connectivity.engine.triangles import (
    TriangleCheck,
    barycentric_grid,
    logit_margins,
    sampled_triangles,
    triangle_points,
)
from tests.engine.test_bounds import BatchMean, Residual, Sine
from tests.engine.test_exact import Kinks

pytestmark = pytest.mark.usefixtures("one_thread")


class Attention(nn.Module):
    """A point ``(B, 8)`` as two tokens of width 4: one head of softmax attention with a
    residual, LayerNorm, mean over tokens, a linear head to 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, z: Tensor) -> Tensor:
        x = z.view(-1, 2, 4)
        weights = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 2.0, dim=-1)
        return self.head(self.norm(x + weights @ self.v(x)).mean(1))


def tail(kind: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A seeded small tail in eval mode (float32) and its point shape: a ReLU MLP, a GELU/tanh
    MLP, :class:`Attention`, or test_bounds' convolutional ``Residual`` with ReLU."""
    torch.manual_seed(seed)
    if kind == "relu":
        net: nn.Module = nn.Sequential(
            nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
        )
        return net.eval(), (3,)
    if kind == "smooth":
        net = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
        return net.eval(), (3,)
    if kind == "conv":
        return Residual(nn.ReLU()).eval(), (2, 4, 4)
    return Attention().eval(), (8,)


def dense_margins(net: nn.Module, a: Tensor, b: Tensor, c: Tensor, y: Tensor, per_edge: int):
    """``(T, G)`` float64 margins of ``net`` (in its dtype) on the barycentric grid."""
    points = triangle_points(a, b, c, barycentric_grid(per_edge))
    with torch.no_grad():
        logits = net(points.flatten(0, 1))
    return logit_margins(logits, y.repeat_interleave(points.shape[1])).view(a.shape[0], -1)


def random_triangles(
    shape: tuple[int, ...], count: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    centre = torch.randn(count, *shape)
    a, b, c = (centre + scale * torch.randn(count, *shape) for _ in range(3))
    return a, b, c


def fuzz(kinds: tuple[str, ...], seeds: range, count: int, splits: int) -> dict[str, float]:
    """For each tail kind and seed, ``count`` random triangles (targets: the class at the
    centroid), checked with no split and with ``splits``: every bound never above the lowest
    margin of the float64 tail on a grid of 30 per edge; proved triangles' float32 margins on
    that grid positive; counterexamples' margins (recomputed at their weights) ``<= 0``.

    Returns the worst of each (``bound_above`` and ``cex`` must be ``<= 0``, ``proved`` ``>
    0``) and the count of each status."""
    worst = {"bound_above": -math.inf, "proved_min": math.inf, "cex": -math.inf}
    worst.update({"proved": 0, "counterexample": 0, "budget": 0})
    for kind in kinds:
        for seed in seeds:
            net, shape = tail(kind, seed)
            a, b, c = random_triangles(shape, count, 0.4)
            with torch.no_grad():
                y = net((a + b + c) / 3).argmax(1)
            net64 = copy.deepcopy(net).double()
            lowest = dense_margins(net64, a.double(), b.double(), c.double(), y, 30).amin(1)
            program = bound_program(net, a[:1])
            whole = prove_triangles(program, a, b, c, y, max_splits=0)
            check = prove_triangles(program, a, b, c, y, max_splits=splits)
            for bound in (whole.min_margin_lower_bound, check.min_margin_lower_bound):
                worst["bound_above"] = max(worst["bound_above"], float((bound - lowest).max()))
            tally(worst, check, net, (a, b, c), y)
    return worst


def tally(worst: dict[str, float], check: TriangleCheck, net: nn.Module, corners, y) -> None:
    """Count each triangle's status in ``worst``, with the float32 margins of proved triangles
    on a grid of 30 per edge and the margin at each counterexample."""
    a, b, c = corners
    dense = dense_margins(net, a, b, c, y, 30).amin(1)
    for s, status in enumerate(check.status):
        worst[status] += 1
        if status == "proved":
            worst["proved_min"] = min(worst["proved_min"], float(dense[s]))
        if status == "counterexample":
            w = check.counterexample[s : s + 1]
            point = triangle_points(a[s : s + 1], b[s : s + 1], c[s : s + 1], w)[0]
            with torch.no_grad():
                margin = float(logit_margins(net(point), y[s : s + 1])[0])
            # the same point, in a batch of another size (float32 sums may round otherwise)
            assert margin == pytest.approx(float(check.counterexample_margin[s]), abs=1e-5)
            worst["cex"] = max(worst["cex"], margin)


def test_bounds_are_sound_on_random_relu_smooth_attention_and_conv_tails() -> None:
    worst = fuzz(("relu", "smooth", "attention", "conv"), range(3), 8, 8)
    assert worst["proved"] >= 30 and worst["counterexample"] >= 10
    assert worst["bound_above"] <= 0
    assert worst["proved_min"] > 0
    assert worst["cex"] <= 0


@pytest.mark.slow
def test_bounds_are_sound_on_many_random_tails() -> None:
    worst = fuzz(("relu", "smooth", "attention", "conv"), range(3, 13), 12, 64)
    assert worst["proved"] >= 40 and worst["counterexample"] >= 40
    assert worst["bound_above"] <= 0
    assert worst["proved_min"] > 0
    assert worst["cex"] <= 0


def test_the_minimum_of_a_hand_built_relu_tail_is_bounded_and_proved() -> None:
    # Kinks' class-0 margin depends on x alone, 0.875 - x for x >= 3/4 and larger before: on
    # the triangle with x in [0, 0.8] its minimum is 0.075, at (0.8, 0)
    net = Kinks().double()
    a, b, c = (torch.tensor([p], dtype=torch.float64) for p in ([0, 0], [0.8, 0], [0.4, 0.3]))
    check = prove_triangles(net, a, b, c, torch.tensor([0]), max_splits=256)
    assert check.kind == "bounds" and check.status == ["proved"]
    assert 0 < float(check.min_margin_lower_bound[0]) <= 0.075 + 1e-12
    assert float(check.min_margin[0]) == pytest.approx(0.075, abs=1e-12)
    assert int(check.pieces[0]) > 1 and int(check.evaluations[0]) >= int(check.pieces[0])


class Hole(nn.Module):
    """Class 0 outside the L1 ball of radius ``r`` about ``centre`` on the plane (its
    coordinates divided by ``scale``), class 1 inside: margin ``|(z - centre) / scale|_1 - r``
    (two ReLUs per coordinate)."""

    def __init__(
        self, centre: tuple[float, float], r: float, scale: tuple[float, float] = (1.0, 1.0)
    ) -> None:
        super().__init__()
        self.centre = torch.tensor(centre, dtype=torch.float64)
        self.scale = torch.tensor(scale, dtype=torch.float64)
        self.r = r

    def forward(self, z: Tensor) -> Tensor:
        d = (z - self.centre) / self.scale
        distance = (F.relu(d) + F.relu(-d)).sum(1, keepdim=True)
        return torch.cat([distance - self.r, torch.zeros_like(distance)], 1)


def test_a_hole_inside_is_found_and_a_hole_outside_is_proved_away() -> None:
    a, b, c = (torch.tensor([p], dtype=torch.float64) for p in ([0, 0], [1, 0], [0, 1]))
    y = torch.tensor([0])
    # every corner is on target; the midpoints' grid reaches (5/16, 5/16), 0.042 from the hole's
    # centre (1/3, 1/3) in L1
    inside = prove_triangles(Hole((1 / 3, 1 / 3), 0.05), a, b, c, y, max_splits=512)
    assert inside.status == ["counterexample"]
    w = inside.counterexample[0]
    point = w[0] * a[0] + w[1] * b[0] + w[2] * c[0]
    assert float((point - 1 / 3).abs().sum()) <= 0.05
    assert float(inside.counterexample_margin[0]) <= 0
    assert float(inside.min_margin_lower_bound[0]) <= float(inside.counterexample_margin[0])
    # the hole beyond the hypotenuse, 0.1 away from the triangle in L1: proved, bound <= 0.1
    outside = prove_triangles(Hole((0.6, 0.6), 0.1), a, b, c, y, max_splits=512)
    assert outside.status == ["proved"]
    assert 0 < float(outside.min_margin_lower_bound[0]) <= 0.1 + 1e-12


def test_a_hole_inside_a_sliver_is_found() -> None:
    # the sliver (0, 0), (1, 0), (1, 0.05) (shortest edge 0.05 of the longest 1.05) splits in
    # four; the hole (radius 0.1 once y is divided by 0.05) about the centroid of its first
    # middle child (1, 0.025), (0.5, 0.025), (0.5, 0) lies inside that child and holds its
    # grid point (0.625, 0.01875) of three splits
    a, b, c = (torch.tensor([p], dtype=torch.float64) for p in ([0, 0], [1, 0], [1, 0.05]))
    centre = (2 / 3, 0.05 / 3)
    check = prove_triangles(Hole(centre, 0.1, (1.0, 0.05)), a, b, c, torch.tensor([0]))
    assert check.status == ["counterexample"]
    point = triangle_points(a, b, c, check.counterexample)[0, 0]
    assert float((point[0] - centre[0]).abs() + (point[1] - centre[1]).abs() / 0.05) <= 0.1


def test_an_affine_tail_with_room_is_proved_after_few_splits() -> None:
    torch.manual_seed(3)
    net = nn.Linear(5, 3).double().eval()
    a, b, c = random_triangles((5,), 8, 0.05)
    a, b, c = a.double(), b.double(), c.double()
    margins = dense_margins(net, a, b, c, net(a).argmax(1), 1)  # the corners
    y = net(a).argmax(1)
    roomy = margins.amin(1) > 0.05  # an affine margin's minimum over a triangle is at a corner
    assert int(roomy.sum()) >= 3
    check = prove_triangles(net, a[roomy], b[roomy], c[roomy], y[roomy])
    assert all(s == "proved" for s in check.status)
    assert int(check.evaluations.max()) <= 1 + 4 * 4  # at most four splits
    assert (check.min_margin_lower_bound <= margins[roomy].amin(1)).all()


def test_the_box_is_exact_along_the_gradient_and_loose_across_it() -> None:
    # margin x + y + 1/2 (affine): on the triangle (0, 0), q, (1, -1/2) its minimum 1/2 is at
    # (0, 0). The shortest edge (0, 0) -> q is collapsed into the box (0.05, 0.05) +- (0.05,
    # 0.05) at t = 0, whose lowest margin is 1/2 when q = (0.1, 0.1) (the edge along the
    # gradient: no loss) and 0.4 when q = (0.1, -0.1) (across it: the box's corner (0, 0.1)
    # beyond the triangle, where a two-parameter bound would keep 1/2)
    net = nn.Linear(2, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        net.bias.copy_(torch.tensor([0.5, 0.0]))
    a, c = torch.tensor([[0.0, 0.0]] * 2).double(), torch.tensor([[1.0, -0.5]] * 2).double()
    b = torch.tensor([[0.1, 0.1], [0.1, -0.1]]).double()
    check = prove_triangles(net, a, b, c, torch.tensor([0, 0]), max_splits=0)
    assert check.status == ["proved", "proved"]
    bound = check.min_margin_lower_bound
    assert 0.5 - 1e-6 <= float(bound[0]) <= 0.5
    assert 0.4 - 1e-6 <= float(bound[1]) <= 0.4


def test_a_corner_off_target_is_a_counterexample_at_once() -> None:
    net = Kinks().double()
    a, b, c = (torch.tensor([p], dtype=torch.float64) for p in ([0, 0], [1, 0], [0, 1]))
    check = prove_triangles(net, a, b, c, torch.tensor([0]))
    assert check.status == ["counterexample"]
    assert check.counterexample[0].tolist() == [0.0, 1.0, 0.0]
    assert float(check.counterexample_margin[0]) == pytest.approx(-0.125, abs=1e-12)
    assert check.pieces.tolist() == [1] and check.evaluations.tolist() == [1]


def test_degenerate_triangles_reduce_to_segments_and_points() -> None:
    net, shape = tail("relu", 5)
    torch.manual_seed(5)
    a, b = torch.randn(12, *shape), torch.randn(12, *shape)
    b = a + 0.3 * (b - a)
    with torch.no_grad():
        y = net((a + b) / 2).argmax(1)
    segments = prove_segments(net, a, b, y, max_splits=256)
    twice = prove_triangles(net, a, a, b, y, max_splits=256)
    collinear = prove_triangles(net, a, b, (a + b) / 2, y, max_splits=256)
    assert {"proved", "counterexample"} <= set(segments.status)
    assert twice.status == segments.status and collinear.status == segments.status
    # two equal corners: the first bound is the segment's own (widened by 1e-9 relative)
    whole = prove_triangles(net, a, a, b, y, max_splits=0).min_margin_lower_bound
    ones = torch.ones(12, dtype=torch.float64)
    segment = margin_bounds(net, a, b, y, ones * 0, ones)
    assert torch.allclose(whole, segment, rtol=0, atol=1e-6)
    # a point: its own margin, less the widening
    point = prove_triangles(net, a, a, a, y, max_splits=0)
    margin = dense_margins(copy.deepcopy(net).double(), *[a.double()] * 3, y, 1)[:, 0]
    assert torch.allclose(point.min_margin_lower_bound, margin, rtol=0, atol=1e-6)
    assert (point.min_margin_lower_bound <= margin).all()


def test_degenerate_triangles_with_splits_inside_reduce_to_segments() -> None:
    # segments that need splitting: Kinks on x in [0, 0.8] (kinks at 1/4, 1/2, 3/4; proved),
    # the hole of radius 0.05 about (0.5, 0.5) on the diagonal (corners on target, the middle
    # off: a counterexample inside), as triangles with a corner twice and with a corner between
    origin, x, diagonal = (
        torch.tensor([p], dtype=torch.float64) for p in ([0, 0], [0.8, 0], [1, 1])
    )
    y = torch.tensor([0])
    cases = ((Kinks().double(), x, "proved"), (Hole((0.5, 0.5), 0.05), diagonal, "counterexample"))
    for net, end, expected in cases:
        assert prove_segments(net, origin, end, y).status == [expected]
        for corners in ((origin, origin, end), (origin, end, (origin + end) / 2)):
            check = prove_triangles(net, *corners, y, max_splits=256)
            assert check.status == [expected]
            if expected == "counterexample":
                point = triangle_points(*corners, check.counterexample)[0, 0]
                assert float((point - 0.5).abs().sum()) <= 0.05


def test_tails_bounds_cannot_follow_are_refused() -> None:
    a, b, c = torch.randn(3, 2, 3)
    with pytest.raises(NotBoundedError, match="other points of its batch"):
        prove_triangles(BatchMean(), a, b, c, torch.tensor([0, 1]))
    with pytest.raises(NotBoundedError, match="sin"):
        prove_triangles(nn.Sequential(nn.Linear(3, 3), Sine()), a, b, c, torch.tensor([0, 1]))


def test_the_tails_own_points_agree_with_the_sampled_check() -> None:
    # a counterexample of bounds is a real off-target point, and a proved triangle has no
    # off-target grid point of the sampled check (the shared contract's points)
    net, shape = tail("relu", 7)
    torch.manual_seed(7)
    a, b, c = random_triangles(shape, 10, 0.3)
    with torch.no_grad():
        y = net((a + b + c) / 3).argmax(1)
    check = prove_triangles(net, a, b, c, y, max_splits=64)
    sampled = sampled_triangles(net, a, b, c, y, per_edge=30)
    for s, status in enumerate(check.status):
        if status == "proved":
            assert sampled.status[s] == "sampled"
            assert float(check.min_margin_lower_bound[s]) <= float(sampled.min_margin[s])
        if sampled.status[s] == "counterexample":
            assert status != "proved"


def test_triangles_checked_together_and_alone_end_alike() -> None:
    net, shape = tail("smooth", 9)
    torch.manual_seed(9)
    a, b, c = random_triangles(shape, 6, 0.3)
    with torch.no_grad():
        y = net((a + b + c) / 3).argmax(1)
    program = bound_program(net, a[:1])
    together = prove_triangles(program, a, b, c, y, max_splits=32, batch_size=7)
    alone = [
        prove_triangles(
            program, a[i : i + 1], b[i : i + 1], c[i : i + 1], y[i : i + 1], max_splits=32
        )
        for i in range(6)
    ]
    assert together.status == [one.status[0] for one in alone]
    assert len(set(together.status)) >= 2
    for name in ("pieces", "evaluations"):
        assert getattr(together, name).tolist() == [int(getattr(one, name)[0]) for one in alone]
    bounds = torch.cat([one.min_margin_lower_bound for one in alone])
    assert torch.allclose(together.min_margin_lower_bound, bounds, rtol=0, atol=1e-9)


def test_a_margin_touching_zero_is_never_proved_and_no_triangles_is_no_work() -> None:
    # the hole touches the edge y = 0 of the triangle at (1/3, 0) (margin 0 there, positive
    # elsewhere on the triangle): within the tolerance, so never proved
    a, b, c = (torch.tensor([p], dtype=torch.float64) for p in ([0, 0], [1, 0], [0, 1]))
    check = prove_triangles(Hole((1 / 3, -0.05), 0.05), a, b, c, torch.tensor([0]), max_splits=64)
    assert check.status[0] in ("budget", "counterexample")
    assert float(check.min_margin_lower_bound[0]) <= 0
    empty = torch.zeros(0, 2, dtype=torch.float64)
    none = prove_triangles(Kinks().double(), empty, empty, empty, torch.zeros(0, dtype=torch.long))
    assert none.status == [] and none.pieces.shape == (0,)
