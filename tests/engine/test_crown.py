"""Backward (CROWN) margin bounds (engine/crown.py): soundness against dense sampling on random
ReLU, convolutional-residual, GELU / SiLU and LayerNorm-attention nets; exactness where the
net is affine on the sub-interval; the piecewise-linear relaxation's lines on dense grids; a
clear gain over the forward bound and fewer evaluations of branch and bound."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.bounds import (
    BoundProgram,
    _propagate,
    bound_program,
    margin_bounds,
    prove_segments,
)
from connectivity.engine.crown import _kink_lines, backward_margin_bounds, crown_program

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int, act: nn.Module, depth: int, width: int, inputs: int = 6) -> nn.Module:
    """Weights of He et al.'s scale (variance 2 / fan-in): values keep their size with depth."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), copy.deepcopy(act)]
        nn.init.kaiming_normal_(layers[-2].weight)
        size = width
    return nn.Sequential(*layers, nn.Linear(size, 4)).eval()


class Block(nn.Module):
    """Convolution, batch norm, ReLU, a residual sum and a ``chunk`` (tuple) read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(4)
        for norm in (self.norm1, self.norm2):
            with torch.no_grad():
                norm.running_mean.uniform_(-0.3, 0.3)
                norm.running_var.uniform_(0.5, 1.5)
                norm.weight.uniform_(-1.2, 1.2)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + x)


class SmallResNet(nn.Module):
    def __init__(self, seed: int, blocks: int = 2) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.blocks = nn.Sequential(*[Block() for _ in range(blocks)])
        self.head = nn.Linear(2 * 2 * 2 * 2, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(F.relu(self.stem(x)))
        left, right = h.chunk(2, dim=1)
        h = F.avg_pool2d(left - 0.5 * right, 2) + F.avg_pool2d(right, 2)
        return self.head(torch.cat([h, -h], 1).flatten(1))


class Attention(nn.Module):
    """A LayerNorm, a product of two point-dependent values, a softmax, GELU: the backward
    pass stops at the product, the softmax and the norm and concretises."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.norm = nn.LayerNorm(4)
        self.qkv = nn.Linear(4, 12)
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(-1, 3, 4)
        q, k, v = self.qkv(self.norm(tokens)).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)
        h = tokens + weights @ v
        h = h + self.mlp(h)
        return self.head(h.flatten(1))


def _margins(net: nn.Module, a: Tensor, b: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """``(N, P)`` float64 margins of row ``n``'s segment at ``t[n]`` (``(N, P)``)."""
    shape = (*t.shape, *[1] * (a.dim() - 1))
    points = a.unsqueeze(1) + t.view(shape) * (b - a).unsqueeze(1)
    with torch.no_grad():
        logits = net(points.flatten(0, 1)).view(*t.shape, -1)
    target = logits.gather(2, y.view(-1, 1, 1).expand(-1, t.shape[1], 1)).squeeze(2)
    others = logits.scatter(2, y.view(-1, 1, 1).expand(-1, t.shape[1], 1), -math.inf)
    return target - others.amax(2)


def _backward(
    program: BoundProgram, a: Tensor, b: Tensor, y: Tensor, t0: Tensor, t1: Tensor
) -> Tensor:
    """The backward bound alone (not the better of it and the forward one)."""
    kept: dict = {}
    with torch.no_grad():
        _propagate(program, a, b, t0, t1, kept)
    return backward_margin_bounds(program, a, b, y, t0, t1, kept)


def _both(
    program: BoundProgram, a: Tensor, b: Tensor, y: Tensor, t0: Tensor, t1: Tensor
) -> tuple[Tensor, Tensor]:
    """(forward bound, backward bound) of each sub-interval."""
    forward = margin_bounds(program, a, b, y, t0, t1)
    return forward, _backward(program, a, b, y, t0, t1)


def _random_case(
    net: nn.Module, shape: tuple[int, ...], rows: int, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``rows`` random segments of the float64 ``net`` with random sub-intervals."""
    a = torch.randn(rows, *shape, dtype=torch.float64)
    b = a + scale * torch.randn(rows, *shape, dtype=torch.float64)
    with torch.no_grad():
        y = net(a).argmax(1)
    ends = torch.rand(rows, 2, dtype=torch.float64).sort(1).values
    return a, b, y, ends[:, 0], ends[:, 1]


NETS = {
    "relu-mlp": (lambda s: _mlp(s, nn.ReLU(), 6, 12), (6,), 0.5),
    "resnet": (lambda s: SmallResNet(s).eval(), (2, 4, 4), 0.3),
    "gelu-mlp": (lambda s: _mlp(s, nn.GELU(), 3, 6), (6,), 1.0),
    "silu-mlp": (lambda s: _mlp(s, nn.SiLU(), 3, 6), (6,), 1.0),
    "kinks-mlp": (
        lambda s: nn.Sequential(
            nn.Linear(6, 8),
            nn.ReLU6(),
            nn.Linear(8, 8),
            nn.Hardtanh(-0.5, 0.7),
            nn.Linear(8, 8),
            nn.LeakyReLU(0.2),
            nn.Linear(8, 8),
            nn.Hardsigmoid(),
            nn.Linear(8, 3),
        ).eval(),
        (6,),
        1.0,
    ),
    "attention": (lambda s: Attention(s).eval(), (12,), 0.5),
}


def _sound(name: str, seeds: range) -> None:
    """Backward bounds of random sub-intervals of random segments never above the margin's
    least value at 10,001 points of the sub-interval (float64 net)."""
    make, shape, scale = NETS[name]
    for seed in seeds:
        torch.manual_seed(100 + seed)
        net = make(seed).double()
        a, b, y, t0, t1 = _random_case(net, shape, 3, scale)
        backward = _backward(bound_program(net, a[:1]), a, b, y, t0, t1)
        fractions = torch.linspace(0, 1, 10_001, dtype=torch.float64)
        t = t0.unsqueeze(1) + (t1 - t0).unsqueeze(1) * fractions
        sampled = _margins(net, a, b, y, t).amin(1)
        assert bool((backward <= sampled).all()), (backward, sampled)
        assert bool(torch.isfinite(backward).all())


@pytest.mark.parametrize("name", list(NETS))
def test_backward_bounds_never_exceed_the_densely_sampled_margin(name: str) -> None:
    _sound(name, range(1))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETS))
def test_backward_bounds_never_exceed_the_sampled_margin_on_more_seeds(name: str) -> None:
    _sound(name, range(1, 13))


def test_backward_bounds_equal_the_margin_where_the_net_is_affine() -> None:
    torch.manual_seed(3)
    net = _mlp(3, nn.ReLU(), 4, 10).double()
    for layer in net:  # every ReLU active on the segment: the tail is affine there
        if isinstance(layer, nn.Linear):
            nn.init.uniform_(layer.weight, -0.2, 0.2)
            nn.init.constant_(layer.bias, 5.0)
    a, b, y, t0, t1 = _random_case(net, (6,), 6, 1.0)
    forward, backward = _both(bound_program(net, a[:1]), a, b, y, t0, t1)
    ends = _margins(net, a, b, y, torch.stack([t0, t1], 1)).amin(1)  # concave: least at an end
    assert bool((backward <= ends).all())
    assert torch.allclose(backward, ends, rtol=0, atol=1e-7)
    assert bool((forward <= ends).all())


@pytest.mark.parametrize(
    "f, kinks",
    [
        (F.relu, [0.0]),
        (F.relu6, [0.0, 6.0]),
        (lambda x: F.hardtanh(x, -0.5, 0.7), [-0.5, 0.7]),
        (lambda x: F.leaky_relu(x, 0.2), [0.0]),
        (lambda x: F.leaky_relu(x, -1.5), [0.0]),
        (torch.abs, [0.0]),
        (F.hardsigmoid, [-3.0, 3.0]),
        (lambda x: torch.clamp(x, max=1.0), [1.0]),
    ],
)
def test_piecewise_linear_lines_hold_on_dense_grids(f, kinks: list[float]) -> None:
    torch.manual_seed(0)
    ends = (torch.randn(200, 2, dtype=torch.float64) * 4).sort(1).values
    low, high = ends[:, 0], ends[:, 1]
    a_lo, b_lo, a_hi, b_hi = _kink_lines(f, kinks, low, high)
    x = low.unsqueeze(1) + (high - low).unsqueeze(1) * torch.linspace(0, 1, 2001).double()
    y = f(x)
    assert bool((a_lo.unsqueeze(1) * x + b_lo.unsqueeze(1) <= y).all())
    assert bool((a_hi.unsqueeze(1) * x + b_hi.unsqueeze(1) >= y).all())


def test_relu_lines_are_crowns_adaptive_choice() -> None:
    low = torch.tensor([-1.0, -3.0, 0.5, -2.0], dtype=torch.float64)
    high = torch.tensor([3.0, 1.0, 2.0, -1.0], dtype=torch.float64)
    a_lo, b_lo, a_hi, b_hi = _kink_lines(F.relu, [0.0], low, high)
    assert a_lo.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert torch.allclose(a_hi, torch.tensor([0.75, 0.25, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(b_hi, torch.tensor([0.75, 0.75, 0.0, 0.0], dtype=torch.float64))
    assert b_lo.abs().amax() < 1e-8


def _same_class(
    net: nn.Module, shape: tuple[int, ...], count: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` random segments whose ends the float64 ``net`` gives one class."""
    found: list[tuple[Tensor, Tensor]] = []
    while len(found) < count:
        a, b, _, _, _ = _random_case(net, shape, 8, scale)
        with torch.no_grad():
            same = net(a).argmax(1) == net(b).argmax(1)
        found += [(a[i], b[i]) for i in same.nonzero().flatten().tolist()]
    a, b = torch.stack([f[0] for f in found[:count]]), torch.stack([f[1] for f in found[:count]])
    with torch.no_grad():
        return a, b, net(a).argmax(1)


@pytest.mark.parametrize("name", ["relu-mlp", "resnet"])
def test_backward_bounds_are_clearly_tighter_than_forward_ones(name: str) -> None:
    make, shape, _ = NETS[name]
    torch.manual_seed(7)
    net = make(7).double()
    a, b, y, _, _ = _random_case(net, shape, 2, 1.0)
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    a, b, y = a.repeat_interleave(8, 0), b.repeat_interleave(8, 0), y.repeat_interleave(8)
    t0, t1 = t[:-1].repeat(2), t[1:].repeat(2)
    forward, backward = _both(bound_program(net, a[:1]), a, b, y, t0, t1)
    inner = t0.unsqueeze(1) + (t1 - t0).unsqueeze(1) * torch.linspace(0, 1, 1001).double()
    sampled = _margins(net, a, b, y, inner).amin(1)
    # Measured (2026-12-06): mean gap to the sampled margin 0.075 forward, 0.0026 backward
    # (relu-mlp); 0.021 and 0.00072 (resnet).
    assert float((sampled - backward).mean()) < 0.2 * float((sampled - forward).mean())
    assert bool((backward <= sampled).all())


@pytest.mark.parametrize("name", ["relu-mlp", "resnet"])
def test_branch_and_bound_needs_fewer_evaluations(name: str) -> None:
    make, shape, _ = NETS[name]
    torch.manual_seed(11)
    net = make(11)
    a, b, y = _same_class(net.double(), shape, 4, 1.0)
    net, a, b = net.float(), a.float(), b.float()
    counts = {}
    for backward in (False, True):
        program = crown_program(net, a[:1]) if backward else bound_program(net, a[:1])
        proof = prove_segments(program, a, b, y, max_splits=2000)
        counts[backward] = (int(proof.bound_evaluations.sum()), proof.status)
    # Measured (2026-12-06): 24 -> 10 evaluations (relu-mlp), 22 -> 4 (resnet), all proved.
    assert counts[True][1] == counts[False][1]
    assert counts[True][0] < 0.7 * counts[False][0], counts


class Reciprocal(nn.Module):
    """Margin ``1 / x - 0.5`` along ``x`` in [-1, 1] (undefined at ``x = 0``)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([torch.reciprocal(x) - 0.5, torch.zeros_like(x)], dim=1)


def test_an_unbounded_range_gives_minus_infinity_never_nan() -> None:
    net = Reciprocal()
    a, b = torch.tensor([[-1.0], [-1.0]]).double(), torch.tensor([[1.0], [1.0]]).double()
    t0 = torch.tensor([0.25, 0.75], dtype=torch.float64)
    t1 = torch.tensor([0.75, 1.0], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    backward = _backward(bound_program(net, a[:1]), a, b, y, t0, t1)
    assert float(backward[0]) == -math.inf  # x crosses 0 there
    assert math.isfinite(float(backward[1])) and float(backward[1]) <= 0.5  # 1 / x >= 1
    lines = _kink_lines(F.relu, [0.0], torch.tensor([-math.inf, 0.0]), torch.tensor([1.0, 1.0]))
    assert lines[1][0] == -math.inf and lines[3][0] == math.inf
