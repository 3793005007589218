"""Bound propagation through the operations of transformers and modern CNNs
(engine/bounds.py, issue 21): products of two point-dependent values, quotients, reciprocal /
rsqrt / sqrt / log / square / powers, softmax and log-softmax, LayerNorm and GroupNorm (module
and functional forms, with and without affine parts), ``chunk`` / ``unbind`` and ``getitem``
of their tuples. Soundness against dense sampling (the relaxations on 2,001 points of each of
hundreds of intervals; margin bounds against 10,001 points of every sub-interval), exactness
where an operand is constant, proofs of clearly positive segments and no proof of a segment
whose sampled margin dips to zero, and a ConvNeXt tail."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.bounds import (
    _DOMAIN_FUNCTIONS,
    NotBoundedError,
    _propagate,
    _relax,
    bound_program,
    margin_bounds,
    prove_segments,
)
from tests.engine.test_bounds import margins, tally

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# Relaxations of the functions defined on part of the line


@pytest.mark.parametrize("name", sorted(_DOMAIN_FUNCTIONS))
def test_domain_relaxations_hold_on_dense_grids(name: str) -> None:
    """Lines below and above at 2,001 points of each of 300 intervals inside the domain (the
    reciprocal also on negative ones; sqrt also from 0), and infinite lines where an interval
    leaves it (a reciprocal's through 0)."""
    torch.manual_seed(2)
    ends = 10 ** (torch.rand(300, 2, dtype=torch.float64) * 6 - 3)
    lower, upper = ends.amin(1), ends.amax(1)
    lower[:20] = upper[:20] * (1 - 1e-9)  # nearly degenerate
    if name == "reciprocal":
        lower[150:], upper[150:] = -upper[150:], -lower[150:]
    if name == "sqrt":
        lower[-10:] = 0.0
    a_lo, b_lo, a_hi, b_hi = _relax(name, lower, upper)
    s = torch.linspace(0, 1, 2001, dtype=torch.float64)
    x = torch.minimum(lower[:, None] + s * (upper - lower)[:, None], upper[:, None])
    f = _DOMAIN_FUNCTIONS[name](x)
    assert bool((a_lo[:, None] * x + b_lo[:, None] <= f).all())
    assert bool((f <= a_hi[:, None] * x + b_hi[:, None]).all())
    outside = torch.tensor([-1.0, -1e-9, 0.0 if name != "sqrt" else -1e-12], dtype=torch.float64)
    a_lo, b_lo, a_hi, b_hi = _relax(name, outside, outside.abs() + 1.0)
    assert bool((b_lo == -math.inf).all() and (b_hi == math.inf).all())
    assert bool((a_lo == 0).all() and (a_hi == 0).all())


# ---------------------------------------------------------------------------------------------
# Tiny networks of each operation


class Product(nn.Module):
    """Elementwise products of two point-dependent values, with broadcasting, as operator,
    function and method; a square as ``h * h``, ``pow`` and ``square``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(4, 3), nn.Linear(18 + 9, 3)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.a(x), torch.tanh(self.b(x))
        outer = (h.unsqueeze(2) * g.unsqueeze(1)).flatten(1)  # (B, 6, 1) * (B, 1, 3)
        mixed = torch.mul(h[:, :3], g) - g.mul(h[:, 3:]) + h[:, :3] * h[:, :3]
        powers = torch.pow(h, 2)[:, :3] - 0.5 * h[:, 3:].square() + (g**2) * 0.3
        return self.out(torch.cat([outer, mixed, powers, h[:, :3] * g.exp()], 1))


class Quotient(nn.Module):
    """Divisions by point-dependent values of both signs (never through 0), reciprocal,
    rsqrt, sqrt and log of positive values (a sum of squares is positive through the
    intervals kept beside the lines: its lower line alone dips below 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(3, 4), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        positive = F.softplus(h) + 0.5
        negative = -1.0 - h.square()
        ratio = h / positive + torch.div(h.flip(1), negative) + 2.0 / negative
        roots = (
            torch.sqrt(positive)
            - torch.rsqrt(positive)
            + positive.log()
            + (h.pow(2) + h.flip(1).square()).sqrt()
        )
        inverse = positive.reciprocal() + 1 / (h.abs() + 1) + positive**-0.5 + positive**0.5
        return self.out(torch.cat([ratio, roots, inverse], 1))


class Attention(nn.Module):
    """One attention block written with matmul, softmax and LayerNorm: two heads, ``q @ k^T``
    (``transpose``), ``softmax`` as method, function and module, ``attn @ v`` (``bmm`` after a
    reshape), a residual and a GELU MLP."""

    def __init__(self, length: int = 3, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.length, self.width = length, width
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 8), nn.GELU(), nn.Linear(8, width))
        self.softmax = nn.Softmax(dim=-1)
        self.head = nn.Linear(length * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = x.view(-1, self.length, self.width)
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        q = q.reshape(-1, self.length, 2, self.width // 2).transpose(1, 2)
        k = k.reshape(-1, self.length, 2, self.width // 2).transpose(1, 2)
        v = v.reshape(-1, self.length, 2, self.width // 2).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.width // 2)
        weights = 0.5 * scores.softmax(-1) + 0.3 * F.softmax(scores, dim=-1)
        weights = weights + 0.2 * self.softmax(scores)
        heads = torch.bmm(weights.flatten(0, 1), v.flatten(0, 1)).view(-1, 2, self.length, 2)
        h = h + self.proj(heads.transpose(1, 2).reshape(-1, self.length, self.width))
        h = h + self.mlp(self.norm2(h))
        return self.head(F.layer_norm(h, (self.width,), eps=1e-6).flatten(1))


class Normalised(nn.Module):
    """GroupNorm (module, affine and not; ``F.group_norm``), LayerNorm over two dimensions
    (``F.layer_norm`` with weight and bias), ConvNeXt's LayerNorm2d (permute, layer norm,
    permute), log-softmax, ``unbind`` and ``getitem`` of its tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.group = nn.GroupNorm(2, 4)
        self.plain = nn.GroupNorm(4, 4, affine=False)
        self.channels = nn.LayerNorm(4, eps=1e-6)
        self.register_buffer("weight", torch.randn(4, 4))
        self.register_buffer("bias", torch.randn(4, 4))
        self.out = nn.Linear(4 * 16 + 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.group(self.conv(x)))
        h = self.plain(h) + F.group_norm(h, 1, None, None, 1e-5)
        h = self.channels(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = F.layer_norm(h, (4, 4), self.weight, self.bias)
        rows = h.mean(1).unbind(1)
        tail = F.log_softmax(rows[0] + rows[2], dim=1)
        return self.out(torch.cat([h.flatten(1), tail], 1))


NETWORKS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "product": (Product, (4,)),
    "quotient": (Quotient, (3,)),
    "attention": (Attention, (12,)),
    "normalised": (Normalised, (2, 4, 4)),
}


def network(name: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A seeded float32 network of :data:`NETWORKS`, eval mode, and its point shape."""
    torch.manual_seed(seed)
    cls, shape = NETWORKS[name]
    return cls().eval(), shape


def bounds_against_samples(name: str, seed: int, count: int, points: int) -> float:
    """The largest ``bound - sampled minimum`` (must be <= 0) over ``count`` random
    sub-intervals (a third of them narrow) of random segments, ``points`` samples each, all
    bounded in one batch."""
    net, shape = network(name, seed)
    net64 = copy.deepcopy(net).double()
    a, b = torch.randn(count, *shape).double(), torch.randn(count, *shape).double()
    with torch.no_grad():
        targets = net64(a).argmax(1)
    t0 = torch.rand(count, dtype=torch.float64) * 0.9
    width = torch.rand(count, dtype=torch.float64) * (1 - t0)
    width[: count // 3] *= 1e-3
    t1 = t0 + width
    bounds = margin_bounds(net, a, b, targets, t0, t1)
    worst = -math.inf
    s = torch.linspace(0, 1, points, dtype=torch.float64)
    for i in range(count):
        t = t0[i] + s * (t1[i] - t0[i])
        sampled = margins(net64, a[i : i + 1], b[i : i + 1], int(targets[i]), t, torch.float64)
        worst = max(worst, float(bounds[i]) - float(sampled.min()))
    return worst


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_margin_bounds_are_below_10k_sampled_points_of_each_sub_interval(name: str) -> None:
    assert bounds_against_samples(name, 0, 8, 10_001) <= 0


def test_bounds_tighten_to_the_margin_on_narrow_sub_intervals() -> None:
    """On a sub-interval of width 1e-6 every relaxation is nearly exact: the bound is within
    1e-4 of the margin (no operation is bounded by a constant that ignores the point)."""
    for name in NETWORKS:
        net, shape = network(name, 0)
        a, b = torch.randn(1, *shape), torch.randn(1, *shape)
        target = net(a).argmax(1)
        t0 = torch.tensor([0.4], dtype=torch.float64)
        bound = float(margin_bounds(net, a, b, target, t0, t0 + 1e-6)[0])
        at = margins(
            copy.deepcopy(net).double(), a.double(), b.double(), int(target), t0, torch.float64
        )
        assert float(at[0]) - 1e-4 <= bound <= float(at[0]), name


class Scaled(nn.Module):
    """A linear map times a point-dependent value that is the constant 2 on every segment
    (``zeros_like(h) + 2``), divided by another (``ones_like(h) * 4``): McCormick's planes
    over a range that is one point are exact, so the network is bounded as the affine
    ``W z / 2``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, z: Tensor) -> Tensor:
        h = self.linear(z)
        return h * (torch.zeros_like(h) + 2) / (torch.ones_like(h) * 4)


def test_products_and_quotients_with_constant_ranges_are_exact() -> None:
    torch.manual_seed(3)
    net = Scaled().double().eval()
    a, b = torch.randn(1, 3).double(), torch.randn(1, 3).double()
    target = net(a).argmax(1)
    for t0, t1 in [(0.0, 1.0), (0.2, 0.3)]:
        t = torch.tensor([t0, t1], dtype=torch.float64)
        # the margin of an affine tail is a minimum of affine functions: lowest at an end
        exact = float(margins(net, a, b, int(target), t, torch.float64).min())
        one = torch.ones(1, dtype=torch.float64)
        bound = float(margin_bounds(net, a, b, target, one * t0, one * t1)[0])
        assert bound <= exact and bound == pytest.approx(exact, abs=1e-7)


class Divided(nn.Module):
    """Logits ``(1 / x, 0)``: the reciprocal of the coordinate, which crosses 0 on the segment
    from -1 to 1 (margin ``1/x`` changes sign through infinity)."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([1 / z, torch.zeros_like(z)], dim=1)


def test_a_divisor_through_zero_gives_no_bound_and_no_proof() -> None:
    a, b = torch.tensor([[-1.0]]).double(), torch.tensor([[1.0]]).double()
    one = torch.ones(1, dtype=torch.float64)
    bound = margin_bounds(Divided(), a, b, torch.tensor([0]), one * 0, one)
    assert float(bound[0]) == -math.inf
    proof = prove_segments(Divided(), b, a * -2, torch.tensor([0]))  # 1 -> 2: 1/x > 0
    assert proof.status == ["proved"]
    crossing = prove_segments(Divided(), b, a, torch.tensor([0]), max_splits=32)
    assert crossing.status == ["counterexample"]  # 1 -> -1


class Pieces(nn.Module):
    """An affine tail through ``chunk``, ``unbind`` and ``getitem`` of their tuples."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, z: Tensor) -> Tensor:
        first, second = self.linear(z).chunk(2, dim=1)
        columns = second.unbind(1)
        return first - torch.stack([columns[2], columns[0], columns[1]], 1) * 0.5


def test_tuples_of_chunk_and_unbind_are_exact() -> None:
    torch.manual_seed(4)
    net = Pieces().double().eval()
    a, b = torch.randn(1, 4).double(), torch.randn(1, 4).double()
    target = net(a).argmax(1)
    ends = margins(net, a, b, int(target), torch.tensor([0.0, 1.0]).double(), torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    bound = float(margin_bounds(net, a, b, target, one * 0, one)[0])
    assert bound == pytest.approx(float(ends.min()), abs=1e-7) and bound <= float(ends.min())


def proofs_against_samples(name: str, seed: int, points: int) -> dict[str, float]:
    """Short and long segments of a network: the lowest float32 margin at ``points`` points of
    each proved segment (must be > 0), the highest margin at each counterexample (<= 0), and
    how many clearly positive segments (sampled minimum > 0.05) were not proved."""
    net, shape = network(name, seed)
    a = torch.randn(6, *shape)
    b = a + torch.tensor([0.02, 0.05, 0.1, 0.5, 1.0, 2.0]).view(-1, *[1] * len(shape)) * (
        torch.randn(6, *shape)
    )
    with torch.no_grad():
        targets = net(a).argmax(1)
    proof = prove_segments(net, a, b, targets, max_splits=256)
    found = {"proved": math.inf, "counterexample": -math.inf, "missed": 0.0}
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    for s in range(6):
        ends = (a[s : s + 1], b[s : s + 1], int(targets[s]))
        dense = float(margins(net, *ends, t, torch.float32).min())
        if proof.status[s] == "proved":
            found["proved"] = min(found["proved"], dense)
        if proof.status[s] == "counterexample":
            at = proof.counterexample_t[s : s + 1]
            found["counterexample"] = max(
                found["counterexample"], float(margins(net, *ends, at, torch.float32)[0])
            )
        if dense > 0.05 and proof.status[s] != "proved":
            found["missed"] += 1
    return found


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_proofs_hold_at_10k_points_and_clear_margins_are_proved(name: str) -> None:
    found = proofs_against_samples(name, 0, 10_001)
    assert found["proved"] > 0 and found["counterexample"] <= 0
    assert found["missed"] == 0


@pytest.mark.slow  # about 5 s: torchvision's ConvNeXt-T (28M parameters) built and cut
def test_a_convnext_tail_is_bounded_soundly_and_proved() -> None:
    torchvision = pytest.importorskip("torchvision")
    from connectivity.engine.split import split

    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None, num_classes=10).eval()
    head, tail = split(model, "features.7.1")  # the last block, LayerNorm2d, the classifier
    with torch.no_grad():
        h = head(torch.randn(2, 3, 32, 32))
    a, b = h[:1], h[:1] + 0.05 * (h[1:] - h[:1])
    target = tail(a).argmax(1)
    program = bound_program(tail)
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    dense = margins(tail, a.double(), b.double(), int(target), t, torch.float32)
    one = torch.ones(1, dtype=torch.float64)
    for t0, t1 in [(0.0, 1.0), (0.3, 0.35)]:
        inside = dense[(t >= t0) & (t <= t1)]
        bound = float(margin_bounds(program, a, b, target, one * t0, one * t1)[0])
        # the tail runs in float32: its sampled margins carry float32 rounding
        assert bound <= float(inside.min()) + 1e-5 * float(inside.abs().max())
    proof = prove_segments(program, a, b, target, max_splits=64)
    assert float(dense.min()) > 0.01 and proof.status == ["proved"]


# ---------------------------------------------------------------------------------------------
# Random networks of these operations (the slow fuzz in test_bounds_fuzz.py)

BLOCKS = ("norm", "attention", "mlp", "gate", "rms", "groups", "log_softmax")
ACTIVATIONS = (nn.GELU(), nn.SiLU(), nn.ReLU(), nn.Tanh(), nn.GELU(approximate="tanh"))


class Block(nn.Module):
    """One residual block on tokens ``(B, L, d)``, of kind :data:`BLOCKS`: LayerNorm (with or
    without affine part), single-head attention (``q @ k^T``, softmax, ``@ v``), an MLP, a
    gate ``h * sigmoid(W h)``, RMS normalisation ``h * rsqrt(mean h^2 + eps)`` and a division
    by a positive value, GroupNorm over the tokens, a log-softmax."""

    def __init__(self, kind: str, length: int, width: int, act: nn.Module) -> None:
        super().__init__()
        self.kind, self.act = kind, act
        self.norm = nn.LayerNorm(width, elementwise_affine=bool(torch.rand(()) < 0.5))
        self.a, self.b, self.c = (
            nn.Linear(width, width),
            nn.Linear(width, width),
            nn.Linear(width, width),
        )
        self.groups = nn.GroupNorm(1 if length % 2 else 2, length)

    def forward(self, h: Tensor) -> Tensor:
        if self.kind == "norm":
            return self.norm(h)
        if self.kind == "attention":
            weights = torch.softmax(self.a(h) @ self.b(h).transpose(1, 2), dim=-1)
            return h + weights @ self.c(h)
        if self.kind == "mlp":
            return h + self.b(self.act(self.a(h)))
        if self.kind == "gate":
            return h * torch.sigmoid(self.a(h))
        if self.kind == "rms":
            scaled = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-3)
            return scaled / (F.softplus(self.a(h)) + 0.5)
        if self.kind == "groups":
            return self.act(self.groups(h))
        return h + 0.5 * F.log_softmax(self.a(h), dim=-1)


class Random(nn.Module):
    """A seeded stack of 2-4 :class:`Block` s on ``(B, L * d)`` points, then a linear head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.length = int(torch.randint(2, 4, (), generator=gen))
        self.width = int(torch.randint(2, 5, (), generator=gen))
        count = int(torch.randint(2, 5, (), generator=gen))
        kinds = [BLOCKS[int(i)] for i in torch.randint(len(BLOCKS), (count,), generator=gen)]
        act = ACTIVATIONS[int(torch.randint(len(ACTIVATIONS), (), generator=gen))]
        self.blocks = nn.Sequential(*(Block(k, self.length, self.width, act) for k in kinds))
        self.head = nn.Linear(self.length * self.width, 3)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.blocks(z.view(-1, self.length, self.width)).flatten(1))


def random_soundness(seeds: range | list[int], points: int) -> dict[str, float]:
    """For each seed, three segments of varied length: bounds on a random sub-interval of each
    never above 1,001 sampled margins there (float64), proofs positive at ``points`` points
    (the net's float32), counterexamples off target (float32). Returns the worst of each
    (``bound_above_sampled``, ``cex_margin`` <= 0; ``proved_margin_min`` > 0) and counts."""
    worst = {"bound_above_sampled": -math.inf, "proved_margin_min": math.inf}
    worst |= {"cex_margin": -math.inf, "proved": 0, "counterexample": 0, "budget": 0}
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    for seed in seeds:
        net = Random(seed).eval()
        net64 = copy.deepcopy(net).double()
        size = net.length * net.width
        a = torch.randn(3, size)
        b = a + torch.tensor([[0.05], [0.3], [1.5]]) * torch.randn(3, size)
        with torch.no_grad():
            targets = net(a).argmax(1)
        proof = prove_segments(net, a, b, targets, max_splits=48)
        t0 = torch.rand(3, dtype=torch.float64) * 0.8
        t1 = t0 + torch.rand(3, dtype=torch.float64) * (1 - t0)
        bounds = margin_bounds(net, a, b, targets, t0, t1)
        for s in range(3):
            ends = (a[s : s + 1], b[s : s + 1], int(targets[s]))
            inner = t0[s] + (t1[s] - t0[s]) * torch.linspace(0, 1, 1001, dtype=torch.float64)
            sampled = float(margins(net64, *ends, inner, torch.float64).min())
            lowest = float(margins(net64, *ends, t, torch.float64).min())
            above = max(float(bounds[s]) - sampled, float(proof.min_margin_lower_bound[s]) - lowest)
            worst["bound_above_sampled"] = max(worst["bound_above_sampled"], above)
            tally(worst, proof, s, net, ends, t)
    return worst


def test_random_networks_of_these_operations_are_bounded_soundly() -> None:
    worst = random_soundness(range(3), 10_001)
    assert worst["bound_above_sampled"] <= 0
    assert worst["proved_margin_min"] > 0 and worst["cex_margin"] <= 0
    assert worst["proved"] >= 2


class Interleaved(nn.Module):
    """Points laid out point-minor in the first dimension (``(2 N, 2)`` rows ``h * N + n``)
    through an elementwise function and back: correct logits, but row ``r`` of the middle value
    is not point ``r // 2``, which bound propagation would assume."""

    def forward(self, z: Tensor) -> Tensor:
        count = z.shape[0]
        u = torch.tanh(z.view(count, 2, 2).transpose(0, 1).reshape(2 * count, 2))
        return u.view(2, count, 2).transpose(0, 1).reshape(count, 4)


def test_a_value_that_lays_points_out_otherwise_is_refused_by_node() -> None:
    a, b = torch.randn(1, 4).double(), torch.randn(1, 4).double()
    one = torch.ones(1, dtype=torch.float64)
    with pytest.raises(NotBoundedError, match="does not keep the points of a batch apart"):
        margin_bounds(Interleaved(), a, b, torch.tensor([0]), one * 0, one)


# ---------------------------------------------------------------------------------------------
# Every output's lines against dense samples, one operation at a time


class Operation(nn.Module):
    """``function`` of two random linear maps of the point ``(B, 6)``, shaped ``(B, 2, 3)``
    and ``(B, 3, 2)`` (``x``, ``y``), flattened: each output element's lines are checked."""

    def __init__(self, function: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.function = function
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, z: Tensor) -> Tensor:
        x, y = self.a(z).view(-1, 2, 3), self.b(z).view(-1, 3, 2)
        return self.function(x, y).flatten(1)


OPERATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mul broadcast": lambda x, y: x.unsqueeze(-1) * y.transpose(1, 2).unsqueeze(-2),
    "matmul": lambda x, y: x @ y,
    "bmm": lambda x, y: torch.bmm(y, x),
    "einsum": lambda x, y: torch.einsum("bij,bjk->bik", x, y),
    "square": lambda x, y: x * x,
    "divide": lambda x, y: x / (y.transpose(1, 2).square() + 0.2),
    "divide negative": lambda x, y: 1.5 / (-0.3 - y.abs()),
    "sqrt rsqrt log": lambda x, y: x.square().sqrt() + (x.abs() + 0.1).rsqrt() + (x * x + 1).log(),
    "softmax": lambda x, y: F.softmax(3 * x, dim=-1),
    "log_softmax": lambda x, y: torch.log_softmax(3 * y, dim=1),
    "layer_norm": lambda x, y: F.layer_norm(x, (3,), eps=1e-5),
    "layer_norm 2d": lambda x, y: F.layer_norm(
        y, (3, 2), torch.linspace(-1.5, 1.0, 6).view(3, 2), torch.linspace(2.0, -1.0, 6).view(3, 2)
    ),
    "group_norm": lambda x, y: F.group_norm(y.reshape(-1, 6, 1), 3, eps=1e-5),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_output_lies_between_its_lines_at_10k_points(name: str) -> None:
    """Lines of every output element at or around its value at 10,001 points of each of 6
    random sub-intervals (two narrow) of random segments (float64, no tolerance)."""
    torch.manual_seed(5)
    program = bound_program(Operation(OPERATIONS[name]).double().eval())
    a, b = torch.randn(6, 6).double() * 2, torch.randn(6, 6).double() * 2
    t0 = torch.rand(6, dtype=torch.float64) * 0.8
    t1 = t0 + torch.rand(6, dtype=torch.float64) * (1 - t0)
    t1[:2] = t0[:2] + 1e-3
    with torch.no_grad():
        lines, poisoned = _propagate(program, a, b, t0, t1)
    assert not bool(poisoned.any())
    s = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    for i in range(6):
        t = (t0[i] + s * (t1[i] - t0[i])).unsqueeze(1)
        with torch.no_grad():
            values = program.module(a[i] + t * (b[i] - a[i]))
        assert bool((lines.lw[i] * t + lines.lb[i] <= values).all()), name
        assert bool((values <= lines.uw[i] * t + lines.ub[i]).all()), name
