"""The exact check of flat triangles (plane version of ExactLine) against known answers:
regions counted by hand, activation patterns and dense barycentric grids of the same tail,
and the exact check of segments where a triangle is flat as a segment."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from connectivity.engine.exact import NotPiecewiseLinearError, check_segments
from connectivity.engine.exact_plane import exact_triangles, linear_regions
from connectivity.engine.triangles import (
    COUNTEREXAMPLE,
    PROVED,
    barycentric_grid,
    logit_margins,
    triangle_points,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _lines(weights: list[list[float]], biases: list[float], activation: nn.Module) -> nn.Module:
    """A 2-D tail whose kinks are the lines ``w . x + b = 0`` of its hidden units."""
    torch.manual_seed(0)
    hidden = nn.Linear(2, len(biases))
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor(weights))
        hidden.bias.copy_(torch.tensor(biases))
    return nn.Sequential(hidden, activation, nn.Linear(len(biases), 2)).double().eval()


BIG = ([0.0, 0.0], [4.0, 0.0], [0.0, 4.0])  # the triangle x, y >= 0, x + y <= 4


@pytest.mark.parametrize(
    ("weights", "biases", "activation", "corners", "count"),
    [
        # x = 1, y = 1, x - y = 0.5: three lines, three crossings inside: 1 + 3 + 3
        ([[1, 0], [0, 1], [1, -1]], [-1, -1, -0.5], nn.ReLU(), BIG, 7),
        # x = 1, x = 2 (parallel), y = 1, and x = -1 outside: 1 + 3 + 2 crossings
        ([[1, 0], [1, 0], [0, 1], [1, 0]], [-1, -2, -1, 1], nn.LeakyReLU(0.1), BIG, 6),
        # a hard tanh of x - 2 bends at x = 1 and x = 3: three strips
        ([[1, 0]], [-2], nn.Hardtanh(), BIG, 3),
        # collinear corners on y = 0: x = 1 and x - y = 0.5 cut it, y = 1 never does
        ([[1, 0], [0, 1], [1, -1]], [-1, -1, -0.5], nn.ReLU(), ([0, 0], [4, 0], [2, 0]), 3),
        # one point
        ([[1, 0], [0, 1]], [-1, -1], nn.ReLU(), ([2, 2], [2, 2], [2, 2]), 1),
    ],
)
def test_regions_of_hand_built_lines_are_counted_by_hand(
    weights: list[list[float]],
    biases: list[float],
    activation: nn.Module,
    corners: tuple[list[float], ...],
    count: int,
) -> None:
    tail = _lines(weights, biases, activation)
    a, b, c = (torch.tensor([corner], dtype=torch.float64) for corner in corners)
    check = exact_triangles(tail, a, b, c, torch.tensor([0]))
    assert check.kind == "exact"
    assert check.pieces.tolist() == [count]
    assert check.status[0] in (PROVED, COUNTEREXAMPLE)
    assert len(linear_regions(tail, a, b, c).regions) == count


def _relu_mlp() -> tuple[nn.Module, list[nn.Linear]]:
    torch.manual_seed(3)
    layers = [nn.Linear(3, 10), nn.Linear(10, 10), nn.Linear(10, 3)]
    tail = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2]).double().eval()
    return tail, layers


def test_regions_are_the_activation_patterns_of_the_triangle() -> None:
    """Each region holds one activation pattern of its own (no region is cut needlessly), and
    every pattern a dense grid meets is one of them (no kink is missed)."""
    tail, (first, second, _) = _relu_mlp()

    def pattern(x: Tensor) -> set[tuple[bool, ...]]:
        h = first(x)
        return {tuple(p.tolist()) for p in torch.cat([h > 0, second(h.relu()) > 0], dim=1)}

    torch.manual_seed(4)
    a, b, c = torch.randn(3, 4, 3, dtype=torch.float64) * 2
    partition = linear_regions(tail, a, b, c)
    grid = barycentric_grid(100)
    with torch.no_grad():
        for t in range(4):
            regions = partition.regions[partition.region_owner == t]
            present = (regions >= 0).unsqueeze(2)
            weights = (partition.weights[regions.clamp_min(0)] * present).sum(1) / present.sum(1)
            corners = a[t : t + 1], b[t : t + 1], c[t : t + 1]
            inside = pattern(triangle_points(*corners, weights)[0])
            assert len(inside) == len(regions) > 10
            assert pattern(triangle_points(*corners, grid)[0]) <= inside


class _Residual(nn.Module):
    """A residual block with a pointwise max of two tensors, a clamp and an abs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.inner, self.outer = nn.Linear(3, 12), nn.Linear(12, 12), nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x).relu()
        h = torch.relu(h + self.outer(torch.relu(self.inner(h))))
        h = torch.maximum(h, 0.1 - 0.5 * h)
        return self.head(torch.clamp(h, max=1.0).abs())


def _network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(5)
    if name == "relu mlp":
        tail, shape = _relu_mlp()[0], (3,)
    elif name == "leaky and hardtanh mlp":
        layers = [nn.Linear(4, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.Hardtanh(-0.5, 0.5)]
        tail, shape = nn.Sequential(*layers, nn.Linear(16, 3)).double().eval(), (4,)
    elif name == "conv and max pool":
        layers = [nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)]
        tail, shape = nn.Sequential(*layers).double().eval(), (1, 6, 6)
    else:
        tail, shape = _Residual().double().eval(), (3,)
    # Centre the logits on a sample, so that every class has a region nearby.
    head = [m for m in tail.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.bias -= tail(torch.randn(256, *shape, dtype=torch.float64)).mean(dim=0)
    return tail, shape


def _grid_neighbours(per_edge: int) -> Tensor:
    """``(E, 2)`` rows of neighbouring points of :func:`barycentric_grid`."""
    rows = {}
    for i in range(per_edge + 1):
        for j in range(per_edge + 1 - i):
            rows[(i, j)] = len(rows)
    pairs = [
        (row, rows[(i + di, j + dj)])
        for (i, j), row in rows.items()
        for di, dj in ((1, 0), (0, 1), (1, -1))
        if (i + di, j + dj) in rows
    ]
    return torch.tensor(pairs)


def _triangles(
    shape: tuple[int, ...], count: int, largest: float = 10.0, seed: int = 6
) -> tuple[Tensor, Tensor, Tensor]:
    """Triangles of sizes from 0.03 to ``largest`` (small ones stay in a class, large ones
    cross boundaries)."""
    torch.manual_seed(seed)
    a = torch.randn(count, *shape, dtype=torch.float64)
    sizes = torch.logspace(-1.5, math.log10(largest), count, dtype=torch.float64)
    size = sizes.view(-1, *[1] * len(shape))
    b = a + size * torch.randn_like(a)
    c = a + size * torch.randn_like(a)
    return a, b, c


@pytest.mark.parametrize(
    "name", ["relu mlp", "leaky and hardtanh mlp", "conv and max pool", "residual block"]
)
def test_exact_minimum_margin_matches_a_dense_grid(name: str) -> None:
    tail, shape = _network(name)
    count, per_edge = 12, 30
    # the convolutions' 200 kinks cut large triangles into thousands of regions
    a, b, c = _triangles(shape, count, largest=2.0 if name == "conv and max pool" else 10.0)
    with torch.no_grad():
        targets = tail(a).argmax(dim=1)  # corner a is on the target
    check = exact_triangles(tail, a, b, c, targets)
    assert set(check.status) == {PROVED, COUNTEREXAMPLE}, check.note

    grid = barycentric_grid(per_edge)
    points = triangle_points(a, b, c, grid).flatten(0, 1)
    with torch.no_grad():
        margins = logit_margins(tail(points), targets.repeat_interleave(len(grid)))
    margins = margins.view(count, -1)
    pairs = _grid_neighbours(per_edge)
    step = (margins[:, pairs[:, 0]] - margins[:, pairs[:, 1]]).abs().amax(dim=1)
    # The exact minimum is at most every grid margin, and within a grid step of the lowest
    # (the minimiser lies in a grid cell whose corners are one step away).
    assert bool((check.min_margin <= margins.amin(dim=1) + 1e-9).all())
    assert bool((margins.amin(dim=1) - check.min_margin <= 2 * step + 1e-9).all())
    assert torch.equal(check.min_margin_lower_bound, check.min_margin)
    proved = check.proved
    assert bool((margins[proved] > 0).all())
    # Counterexamples are real: the tail's own margin at the point is the exact minimum.
    found = check.failed
    weights = check.counterexample[found]
    assert bool((weights >= 0).all()) and torch.allclose(weights.sum(1), torch.ones(1).double())
    point = (
        weights[:, 0].view(-1, *[1] * len(shape)) * a[found]
        + weights[:, 1].view(-1, *[1] * len(shape)) * b[found]
        + weights[:, 2].view(-1, *[1] * len(shape)) * c[found]
    )
    with torch.no_grad():
        there = logit_margins(tail(point), targets[found])
    assert bool((there <= 0).all())
    assert torch.allclose(there, check.counterexample_margin[found], atol=1e-9)
    assert torch.allclose(there, check.min_margin[found], atol=1e-9)
    # The tail's own logits at every vertex of the partition are the interpolated ones, and
    # the lowest of them is the minimum.
    partition = linear_regions(tail, a, b, c)
    corners = torch.stack([a, b, c], dim=1)[partition.owner]
    weights = partition.weights.view(-1, 3, *[1] * len(shape))
    with torch.no_grad():
        own = tail((weights * corners).sum(dim=1))
    assert torch.allclose(own, partition.logits, atol=1e-9)
    vertex_margins = logit_margins(own, targets[partition.owner])
    lowest = torch.full((count,), math.inf, dtype=torch.float64)
    lowest = lowest.scatter_reduce(0, partition.owner, vertex_margins, "amin")
    assert torch.allclose(lowest, check.min_margin, atol=1e-9)
    # No lower than the exact minimum over each edge (ExactLine).
    for start, end in ((a, b), (b, c), (c, a)):
        edges = check_segments(tail, start, end, targets)
        for t in range(count):
            on_edge = edges.margin[edges.offsets[t] : edges.offsets[t + 1]].min()
            assert float(check.min_margin[t]) <= float(on_edge) + 1e-12


def test_a_flat_triangle_is_checked_as_its_segment() -> None:
    """Corners on one line: the triangle is the segment between the outer two, which the
    exact check of segments (ExactLine) splits into the same pieces with the same minimum."""
    tail, shape = _network("residual block")
    torch.manual_seed(7)
    a, b = torch.randn(2, 5, *shape, dtype=torch.float64)
    c = torch.lerp(a, b, 0.3)
    targets = torch.tensor([0, 1, 2, 0, 1])
    check = exact_triangles(tail, a, b, c, targets)
    segments = check_segments(tail, a, b, targets)
    lowest = torch.stack(
        [
            segments.margin[segments.offsets[i] : segments.offsets[i + 1]].min()
            for i in range(len(targets))
        ]
    )
    assert torch.allclose(check.min_margin, lowest, atol=1e-12)
    assert torch.equal(check.pieces, segments.pieces())


def test_non_piecewise_linear_tails_are_refused() -> None:
    tail = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    a, b, c = torch.randn(3, 1, 2)
    with pytest.raises(NotPiecewiseLinearError, match="GELU"):
        exact_triangles(tail, a, b, c, torch.tensor([0]))


def test_over_budget_triangles_are_not_decided() -> None:
    tail = _lines([[1, 0], [0, 1], [1, -1]], [-1, -1, -0.5], nn.ReLU())
    a, b, c = (torch.tensor([corner] * 2, dtype=torch.float64) for corner in BIG)
    check = exact_triangles(tail, a, b, c, torch.tensor([0, 1]), max_regions=4)
    assert check.status == ["budget", "budget"]
    assert bool(check.min_margin.isnan().all()) and bool((check.pieces > 4).all())


def test_corners_that_are_not_points_leave_the_class_and_inputs_stay_unchanged() -> None:
    tail, _ = _network("relu mlp")
    a, b, c = torch.randn(3, 2, 3, dtype=torch.float64)
    b[1, 0] = math.nan
    kept = [t.clone() for t in (a, b, c)]
    check = exact_triangles(tail, a, b, c, torch.tensor([0, 0]))
    assert check.status[1] == COUNTEREXAMPLE
    assert check.counterexample[1].tolist() == [0.0, 1.0, 0.0]
    assert check.status[0] in (PROVED, COUNTEREXAMPLE)
    for given, before in zip((a, b, c), kept, strict=True):
        assert torch.allclose(given, before, rtol=0, atol=0, equal_nan=True)


def test_a_memory_bound_cuts_triangles_into_parts_with_the_same_verdicts() -> None:
    """Batches that would hold more than ``max_values`` values go on in halves, and a triangle
    that alone would is cut into four parts: the same statuses and minima, and more pieces
    (regions cut along the parts' edges)."""
    tail, shape = _network("residual block")
    a, b, c = (corner[6:10] for corner in _triangles(shape, 12))
    with torch.no_grad():
        targets = tail(a).argmax(dim=1)
    whole = exact_triangles(tail, a, b, c, targets)
    parts = exact_triangles(tail, a, b, c, targets, max_values=1000)
    assert parts.status == whole.status
    assert torch.allclose(parts.min_margin, whole.min_margin, atol=1e-12)
    assert bool((parts.pieces >= whole.pieces).all()) and bool((parts.pieces > whole.pieces).any())
    partition = linear_regions(tail, a, b, c, max_values=1000)
    assert torch.equal(torch.bincount(partition.region_owner, minlength=4), parts.pieces)


class _Block(nn.Module):
    """A basic residual block (conv-BN-ReLU-conv-BN, identity skip, in-place ReLU)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(h)))


@pytest.mark.slow
def test_a_small_resnet_in_float32_matches_a_dense_grid() -> None:
    torch.manual_seed(8)
    tail = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        _Block(4),
        nn.MaxPool2d(2),
        _Block(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    for module in tail.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    tail.eval()
    head = tail[-1]
    with torch.no_grad():
        head.bias -= tail(torch.randn(256, 2, 6, 6)).mean(dim=0)
    count, per_edge = 24, 60
    a, b, c = (corner.float() for corner in _triangles((2, 6, 6), count, largest=1.0, seed=9))
    with torch.no_grad():
        targets = tail(a).argmax(dim=1)
    check = exact_triangles(tail, a, b, c, targets)
    assert {PROVED, COUNTEREXAMPLE} <= set(check.status) <= {PROVED, COUNTEREXAMPLE, "budget"}
    grid = barycentric_grid(per_edge)
    with torch.no_grad():
        points = triangle_points(a, b, c, grid).flatten(0, 1)
        margins = logit_margins(tail(points), targets.repeat_interleave(len(grid)))
    margins = margins.view(count, -1)
    decided = check.proved | check.failed
    pairs = _grid_neighbours(per_edge)
    step = (margins[:, pairs[:, 0]] - margins[:, pairs[:, 1]]).abs().amax(dim=1)
    lowest = margins.amin(dim=1)[decided]
    assert bool((check.min_margin[decided] <= lowest + 1e-4).all())
    assert bool((lowest - check.min_margin[decided] <= 2 * step[decided] + 1e-4).all())
    assert bool((margins[check.proved] > 0).all())
    assert bool((check.counterexample_margin[check.failed] <= 0).all())


def test_margins_of_a_hand_built_tail_are_exact() -> None:
    """Logits ``(relu(x), relu(y))``, target 0: the margin is ``relu(x) - relu(y)``."""
    tail = _lines([[1, 0], [0, 1]], [0, 0], nn.ReLU())
    with torch.no_grad():
        tail[2].weight.copy_(torch.eye(2))
        tail[2].bias.zero_()
    corners = [
        ([1, 0], [2, 0], [2, 1]),  # margins 1, 2, 1 at the corners, one region
        # x = 0 and y = 0 cross it and meet on its edge x + y = 0: 3 regions, lowest -1 at c
        ([-1, -1], [1, -1], [-1, 1]),
        ([0, 0], [1, 0], [1, 1]),  # margins 0, 1, 0: on the boundary within rounding
    ]
    a, b, c = (
        torch.tensor(list(column), dtype=torch.float64) for column in zip(*corners, strict=True)
    )
    check = exact_triangles(tail, a, b, c, torch.zeros(3, dtype=torch.long))
    assert check.status[:2] == [PROVED, COUNTEREXAMPLE]
    assert check.status[2] == "undecided" and "tolerance" in check.note[2]
    assert check.min_margin.tolist() == [1.0, -1.0, 0.0]
    assert check.pieces.tolist() == [1, 3, 1]
    assert check.counterexample[1].tolist() == [0.0, 0.0, 1.0]
    assert check.counterexample_margin[1] == -1.0
    assert bool(check.counterexample[[0, 2]].isnan().all())
