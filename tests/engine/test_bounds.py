"""Bound propagation along segments (engine/bounds.py): closed-form margins of hand-built
networks, exactness where a piecewise-linear tail is affine, soundness against dense sampling
on random networks of every covered operation, agreement with the exact check, refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.bounds import (
    _SMOOTH_FUNCTIONS,
    NotBoundedError,
    SegmentProof,
    _relax,
    bound_program,
    margin_bounds,
    prove_segments,
)
from connectivity.engine.exact import check_segments, margin_tolerance
from tests.engine.test_exact import Kinks

pytestmark = pytest.mark.usefixtures("one_thread")


# Kinks (tests/engine/test_exact.py), on the segment (0, 0) -> (1, 0):
# The class-0 margin along (0, 0) -> (1, 0) is ``1/8 + relu(t - 1/4) - 2 relu(t - 1/2) +
# relu(3/4 - t)``: 0.875 - t, 0.625, 1.625 - 2 t and 0.875 - t on the quarters (zero at
# t = 7/8).


def _kinks_margin(t: float) -> float:
    return 0.125 + max(t - 0.25, 0.0) - 2 * max(t - 0.5, 0.0) + max(0.75 - t, 0.0)


def _bounds(net: nn.Module, a: Tensor, b: Tensor, y: int, t0: float, t1: float) -> float:
    one = torch.ones(1, dtype=torch.float64)
    return float(margin_bounds(net, a, b, torch.tensor([y]), one * t0, one * t1)[0])


def test_bounds_equal_the_closed_form_margin_where_no_relu_changes_state() -> None:
    net = Kinks().eval()
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    for t0, t1 in [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (0.3, 0.4), (0.8, 0.9)]:
        exact = min(_kinks_margin(t0), _kinks_margin(t1))  # affine there: lowest at an end
        assert _bounds(net, a, b, 0, t0, t1) == pytest.approx(exact, abs=1e-7)  # widening
        assert _bounds(net, a, b, 0, t0, t1) <= exact
    # across kinks the bound is below the true minimum (the triangle relaxation)
    assert _bounds(net, a, b, 0, 0.0, 1.0) <= -0.125


def test_branch_and_bound_proves_or_finds_the_counterexample() -> None:
    net = Kinks().eval()
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.85, 0.0], [1.0, 0.0], [0.8, 0.0]])
    proof = prove_segments(net, a, b, torch.tensor([0, 0, 1]))
    assert proof.status == ["proved", "counterexample", "counterexample"]
    # proved: the lowest margin 1/8 + ... = 0.025 at the end t = 1 (x = 0.85)
    assert 0 < float(proof.min_margin_lower_bound[0]) <= 0.025 + 1e-9
    assert float(proof.min_margin[0]) == pytest.approx(0.025, abs=1e-6)
    assert float(proof.counterexample_t[1]) == 1.0  # margin -1/8 at x = 1
    assert float(proof.counterexample_t[2]) == 0.0  # class 1 is never the target's winner
    assert math.isnan(float(proof.counterexample_t[0]))
    assert int(proof.sub_intervals[0]) >= 1 and int(proof.bound_evaluations[0]) >= 1


class Valley(nn.Module):
    """Margin ``|x| - 0.1`` along x in [-1, 1]: on target at both ends, off it for |x| < 0.1."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([z.abs() - 0.1, torch.zeros_like(z)], dim=1)


def test_a_counterexample_between_on_target_ends_is_found_at_a_split_point() -> None:
    proof = prove_segments(
        Valley(), torch.tensor([[-1.0]]), torch.tensor([[1.0]]), torch.tensor([0])
    )
    assert proof.status == ["counterexample"]
    t = float(proof.counterexample_t[0])
    assert abs(-1.0 + 2.0 * t) < 0.1  # off target there
    assert float(proof.min_margin[0]) <= 0
    assert float(proof.min_margin_lower_bound[0]) <= -0.1 + 1e-9
    near = prove_segments(
        Valley(), torch.tensor([[-1.0]]), torch.tensor([[-0.2]]), torch.tensor([0])
    )
    assert near.status == ["proved"]
    assert 0 < float(near.min_margin_lower_bound[0]) <= 0.1 + 1e-9


def test_a_budget_too_small_is_reported() -> None:
    # a margin that dips to 1e-3: the triangle relaxation needs several splits to prove it
    proof = prove_segments(
        Valley(), torch.tensor([[-1.0]]), torch.tensor([[1.0]]), torch.tensor([0]), max_splits=0
    )
    assert proof.status == ["budget"]
    assert int(proof.sub_intervals[0]) == 1


def test_an_affine_network_is_proved_exactly_in_one_bound() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    with torch.no_grad():
        net[0].bias.fill_(50.0)  # every ReLU active on the segment: the tail is affine there
    a = torch.randn(1, 4).double()
    b = a + 0.3 * torch.randn(1, 4).double()
    with torch.no_grad():
        logits = net(torch.cat([a, b]))
    target = int(logits[0].argmax())
    margins = logits[:, target] - logits.scatter(1, torch.tensor([[target]] * 2), -1e9).amax(1)
    proof = prove_segments(net, a, b, torch.tensor([target]))
    assert float(margins.min()) > 0
    assert proof.status == ["proved"] and int(proof.bound_evaluations[0]) == 1
    # the margin is concave (min of affine), lowest at an end; the bound meets it
    assert float(proof.min_margin_lower_bound[0]) == pytest.approx(float(margins.min()), rel=1e-7)


# ---------------------------------------------------------------------------------------------
# Random networks of every covered operation

ACTIVATIONS: dict[str, nn.Module] = {
    "relu": nn.ReLU(),
    "leaky_relu": nn.LeakyReLU(0.1),
    "relu6": nn.ReLU6(),
    "hardtanh": nn.Hardtanh(-0.5, 0.7),
    "hardsigmoid": nn.Hardsigmoid(),
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "silu": nn.SiLU(),
    "sigmoid": nn.Sigmoid(),
    "tanh": nn.Tanh(),
    "softplus": nn.Softplus(),
    "hardswish": nn.Hardswish(),
}


class Residual(nn.Module):
    """Convolutions, batch norm, a skip connection, a concatenation, pools, a pointwise max and
    products with constants around one activation."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.act = act
        self.pool = nn.MaxPool2d(2)
        self.out = nn.Linear(5 * 2 * 2, 3)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)
            self.norm.weight.uniform_(-1.5, 1.5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.norm(self.conv(x)))
        h = torch.cat([h + x[:, :1], -0.5 * x], dim=1)
        h = torch.maximum(self.pool(h), F.avg_pool2d(h, 2) / 0.8)
        return self.out(torch.flatten(h, 1))


class Functional(nn.Module):
    """Functional and method forms: clamp, abs, leaky ReLU and hardtanh as functions, a pointwise
    minimum, a reshape and permute, a product with a signed constant matrix, a division by a
    signed constant tensor, a subtraction, batch norm without affine weights, a transposed
    convolution, adaptive average pooling, exp and softplus; ``F.conv1d``, ``F.batch_norm``
    and ``F.linear`` with constant weights."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.up = nn.ConvTranspose1d(2, 2, 2, stride=2)
        self.norm = nn.BatchNorm1d(2, affine=False)
        self.register_buffer("matrix", torch.randn(12, 4))
        self.register_buffer("divisor", torch.randn(4).sign() * (0.5 + torch.rand(4)))
        self.register_buffer("kernel", torch.randn(2, 2, 3))
        self.register_buffer("stats", torch.rand(2, 4) + 0.5)  # running mean and variance
        self.register_buffer("affine", torch.randn(2, 4))
        self.register_buffer("head", torch.randn(3, 2))
        with torch.no_grad():
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: Tensor) -> Tensor:
        u = x.reshape(-1, 2, 3)
        u = F.conv1d(u, self.kernel, padding=1) + u
        h = self.norm(self.up(u)).flatten(1) @ self.matrix / self.divisor
        mean, var = self.stats[0], self.stats[1]
        h = F.batch_norm(h, mean, var, self.affine[0], self.affine[1], training=False)
        g = torch.minimum(torch.clamp(h, -1.0, 0.5), F.leaky_relu(h, 0.2)) - h.abs() * 0.3
        g = self.act(g.view(-1, 2, 2).permute(0, 2, 1).reshape(-1, 4))
        g = F.hardtanh(g, -2.0, 2.0) + 0.1 * torch.exp(-h) - F.softplus(h)
        out = F.adaptive_avg_pool1d(g.unsqueeze(1), 2).flatten(1) + g[:, :2]
        return F.linear(out, self.head, self.affine[0, :3])


def random_network(seed: int, activation: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A seeded small MLP, convolutional net or functional-form net (by ``seed % 3``), eval
    mode, float32."""
    torch.manual_seed(seed)
    act = ACTIVATIONS[activation]
    if seed % 3 == 0:
        net: nn.Module = nn.Sequential(nn.Linear(3, 6), act, nn.Linear(6, 5), act, nn.Linear(5, 3))
        return net.eval(), (3,)
    if seed % 3 == 1:
        return Residual(act).eval(), (2, 4, 4)
    return Functional(act).eval(), (6,)


def margins(net: nn.Module, a: Tensor, b: Tensor, y: int, t: Tensor, dtype: torch.dtype) -> Tensor:
    """The target margin of ``net`` (in ``dtype``) at ``a + t (b - a)``, float64 ``(len(t),)``."""
    a, b = a.to(dtype), b.to(dtype)  # (b - a) in float32 would move a float64 point
    points = a + t.to(dtype).view(-1, *[1] * (a.dim() - 1)) * (b - a)
    with torch.no_grad():
        logits = net.to(dtype)(points).double()
    other = logits.clone()
    other[:, y] = -math.inf
    return logits[:, y] - other.amax(1)


def soundness(seeds: range | list[int], points: int) -> dict[str, float]:
    """For each seed and activation, two random segments: bounds on random sub-intervals never
    above the margin at 1,001 points of the sub-interval (float64 net), every segment's lower
    bound never above its lowest margin at ``points`` evenly spaced points (float64), proofs
    positive at those points (the net's float32), counterexamples off target (float32).

    Returns the worst of each (``bound_above_sampled`` and ``cex_margin`` must be <= 0,
    ``proved_margin_min`` > 0) and the count of each status."""
    worst = {"bound_above_sampled": -math.inf, "proved_margin_min": math.inf}
    worst.update({"cex_margin": -math.inf, "proved": 0, "counterexample": 0, "budget": 0})
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    for seed in seeds:
        for name in ACTIVATIONS:
            net, shape = random_network(seed, name)
            a, b = torch.randn(2, *shape), torch.randn(2, *shape)
            with torch.no_grad():
                targets = net(a).argmax(1)
            net64 = _double(net)
            proof = prove_segments(net, a, b, targets, max_splits=64)
            for s in range(2):
                ends = (a[s : s + 1], b[s : s + 1], int(targets[s]))
                t0, t1 = sorted(torch.rand(2, dtype=torch.float64).tolist())
                inner = t0 + (t1 - t0) * torch.linspace(0, 1, 1001, dtype=torch.float64)
                sampled = float(margins(net64, *ends, inner, torch.float64).min())
                bound = _bounds(net, *ends, t0, t1)
                lowest = float(margins(net64, *ends, t, torch.float64).min())
                lower = float(proof.min_margin_lower_bound[s])
                above = max(bound - sampled, lower - lowest)
                worst["bound_above_sampled"] = max(worst["bound_above_sampled"], above)
                tally(worst, proof, s, net, ends, t)
    return worst


def tally(
    worst: dict[str, float], proof: SegmentProof, s: int, net: nn.Module, ends: tuple, t: Tensor
) -> None:
    """Count segment ``s``'s outcome in ``worst``, with the lowest float32 margin at the points
    ``t`` of a proved segment and the margin at a counterexample."""
    worst[proof.status[s]] += 1
    if proof.status[s] == "proved":
        dense = float(margins(net, *ends, t, torch.float32).min())
        worst["proved_margin_min"] = min(worst["proved_margin_min"], dense)
    if proof.status[s] == "counterexample":
        at = proof.counterexample_t[s : s + 1]
        cex = float(margins(net, *ends, at, torch.float32)[0])
        worst["cex_margin"] = max(worst["cex_margin"], cex)


def _double(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).double()


def test_soundness_on_random_networks_of_every_covered_activation() -> None:
    worst = soundness(range(2), 10_000)
    assert worst["proved"] >= 20 and worst["counterexample"] >= 10
    assert worst["bound_above_sampled"] <= 0
    assert worst["proved_margin_min"] > 0
    assert worst["cex_margin"] <= 0


def test_agreement_with_the_exact_check_on_piecewise_linear_tails() -> None:
    found = {"proved": 0, "counterexample": 0}
    for seed in (0, 1, 3, 4, 6, 7):  # MLPs and convolutional nets: piecewise linear
        net, shape = random_network(seed, "relu")
        net = net.double()
        a, b = torch.randn(3, *shape).double(), torch.randn(3, *shape).double()
        targets = net(a).argmax(1)
        exact = check_segments(net, a, b, targets)
        proof = prove_segments(net, a, b, targets, max_splits=4096)
        for s in range(3):
            rows = slice(int(exact.offsets[s]), int(exact.offsets[s + 1]))
            lowest = float(exact.margin[rows].min())
            tolerance = float(margin_tolerance(exact.logits[rows])[0])
            assert float(proof.min_margin_lower_bound[s]) <= lowest + 1e-9
            assert lowest <= float(proof.min_margin[s]) + 1e-9
            if lowest > tolerance:
                assert proof.status[s] == "proved"
            if lowest < -tolerance:
                assert proof.status[s] == "counterexample"
            found[proof.status[s]] = found.get(proof.status[s], 0) + 1
    assert found["proved"] >= 3 and found["counterexample"] >= 3


class Cube(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return h**3


class Sine(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return torch.sin(h)


@pytest.mark.parametrize(
    ("net", "named"),
    [
        (nn.Sequential(nn.Linear(3, 4), nn.ELU()), "ELU"),
        (Sine(), "sin"),
        (Cube(), "pow"),
    ],
)
def test_operations_of_the_next_slice_are_refused_by_name(net: nn.Module, named: str) -> None:
    with pytest.raises(NotBoundedError, match=named):
        bound_program(net.eval())


@pytest.mark.parametrize("name", ["relu", *_SMOOTH_FUNCTIONS])
def test_relaxations_hold_on_dense_grids(name: str) -> None:
    """Lines below and above the function at 2,001 points of each of 400 intervals, including
    ones across the kink, the minima of GELU / SiLU / hard-swish and saturation."""
    torch.manual_seed(1)
    ends = torch.cat([torch.randn(300, 2) * 3, torch.randn(100, 2) * 0.3 - 1.0]).double()
    lower, upper = ends.amin(1), ends.amax(1)
    lower[:4], upper[:4] = torch.tensor([-1.5, -0.76, -1.3, -40.0]).double(), 0.0
    a_lo, b_lo, a_hi, b_hi = _relax(name, lower, upper)
    s = torch.linspace(0, 1, 2001, dtype=torch.float64)
    x = lower[:, None] + s * (upper - lower)[:, None]
    f = F.relu(x) if name == "relu" else _SMOOTH_FUNCTIONS[name](x)
    assert bool((a_lo[:, None] * x + b_lo[:, None] <= f + 1e-12).all())
    assert bool((f <= a_hi[:, None] * x + b_hi[:, None] + 1e-12).all())


def test_batched_bounds_equal_bounds_one_sub_interval_at_a_time() -> None:
    net, shape = random_network(1, "gelu")
    a, b = torch.randn(5, *shape), torch.randn(5, *shape)
    targets = torch.tensor([0, 1, 2, 0, 1])
    t0 = torch.rand(5, dtype=torch.float64) * 0.5
    t1 = t0 + 0.1
    together = margin_bounds(net, a, b, targets, t0, t1)
    alone = [
        margin_bounds(
            net, a[i : i + 1], b[i : i + 1], targets[i : i + 1], t0[i : i + 1], t1[i : i + 1]
        )
        for i in range(5)
    ]
    assert together.tolist() == pytest.approx(torch.cat(alone).tolist(), rel=1e-9, abs=1e-12)


class Overwritten(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        g = h + 1
        g.mul_(2)
        return torch.cat([g, h + g], dim=1)


def test_an_in_place_write_read_later_is_refused() -> None:
    with pytest.raises(NotBoundedError, match="in place"):
        bound_program(Overwritten())


def test_a_sliver_between_sampled_points_is_found() -> None:
    """The margin ``|x| - 5e-4`` is off target only for |x| < 5e-4: no point of a 64-point
    sampling of x in [-1, 0.9] lands there, branch and bound does."""
    a, b = torch.tensor([[-1.0]]).double(), torch.tensor([[0.9]]).double()
    samples = margins(Sliver().double(), a, b, 0, torch.linspace(0, 1, 64).double(), torch.float64)
    assert bool((samples > 0).all())
    proof = prove_segments(Sliver().double(), a, b, torch.tensor([0]))
    assert proof.status == ["counterexample"]
    assert abs(-1.0 + 1.9 * float(proof.counterexample_t[0])) < 5e-4


class Sliver(nn.Module):
    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([z.abs() - 5e-4, torch.zeros_like(z)], dim=1)


class BatchMean(nn.Module):
    """Logits ``2 z - mean over the batch``: a point's class depends on the batch it is in."""

    def forward(self, z: Tensor) -> Tensor:
        return 2 * z - z.mean(0, keepdim=True)


def test_a_tail_that_mixes_the_points_of_a_batch_is_refused_before_any_bound() -> None:
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.5]])
    with pytest.raises(NotBoundedError, match="depend on the other points of its batch"):
        prove_segments(BatchMean(), a, b, torch.tensor([0]))
    # The same tail without the mean (2 z) is bounded and proved as usual.
    plain = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        plain[0].weight.copy_(2 * torch.eye(2))
        plain[0].bias.zero_()
    assert prove_segments(plain.eval(), a, b, torch.tensor([0])).status == ["proved"]
