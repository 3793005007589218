"""Fuzz test of the exact check: random small networks assembled from
operations that are piecewise linear and operations that are not (products and powers of
point-dependent values, layers with a forward of their own, fused norm + activation modules,
in-place and functional forms), each in float64.

A network holding an operation that is not piecewise linear must be refused with
:class:`NotPiecewiseLinearError` naming it. Every other network must be accepted, and on each
of a few random segments its exact check is compared with 100,001 evenly spaced points of the
network's own forward: no exact pass where any of those points has a margin <= 0, and the exact
minimum margin at most every sampled margin and within the sampled points' resolution of the
lowest."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.exact import NotPiecewiseLinearError, check_paths, why_not_piecewise_linear

CHANNELS, SIZE, CLASSES = 2, 3, 3
POINTS = 100_001  # per segment
SEGMENTS = 2  # per network


class Lambda(nn.Module):
    """A block computing ``function(self, h)`` (functional and in-place forms)."""

    def __init__(self, function: Callable[[nn.Module, Tensor], Tensor], **modules: nn.Module):
        super().__init__()
        self.function = function
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, h: Tensor) -> Tensor:
        return self.function(self, h)


class TrustedReLU(nn.ReLU):
    """A ReLU subclass without a forward of its own: still a ReLU."""


class SmoothReLU(nn.ReLU):
    """A ReLU subclass with its own forward: SiLU, whatever its type says."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class NormAct(nn.BatchNorm2d):
    """A batch norm that applies an activation in its own forward (as timm's BatchNormAct2d)."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__(channels)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return self.act(x)


def _conv(padding: int = 1) -> nn.Module:
    """An affine map of the feature map: a dense one (a convolution in float64 costs ten times
    as much at 10^5 points), or after a padding of 1 an average pool back to the size."""
    if padding == 0:
        return nn.Sequential(nn.AvgPool2d(3, stride=1), _conv())
    width = CHANNELS * SIZE * SIZE
    return nn.Sequential(
        nn.Flatten(), nn.Linear(width, width), nn.Unflatten(1, (CHANNELS, SIZE, SIZE))
    )


def _squaring_hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
    return out * out


def _hooked_relu() -> nn.Module:
    relu = nn.ReLU()
    relu.register_forward_hook(_squaring_hook)
    return relu


def _timm_norm_act(act: type[nn.Module]) -> nn.Module | None:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return None
    return BatchNormAct2d(CHANNELS, act_layer=act)


# Blocks that keep (B, CHANNELS, SIZE, SIZE) and are piecewise linear.
ALLOWED: list[Callable[[], nn.Module | None]] = [
    lambda: _conv(),
    lambda: nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1),
    lambda: nn.Sequential(_conv(), nn.ReLU()),
    lambda: nn.Sequential(_conv(), nn.ReLU(inplace=True)),
    lambda: Lambda(lambda m, h: F.relu(m.c(h)), c=_conv()),
    lambda: Lambda(lambda m, h: torch.relu_(m.c(h)), c=_conv()),
    lambda: Lambda(lambda m, h: m.c(h).relu(), c=_conv()),
    lambda: Lambda(lambda m, h: m.c(h).clamp(min=-0.2), c=_conv()),
    lambda: Lambda(lambda m, h: torch.clamp(m.c(h), -0.5, 0.5), c=_conv()),
    lambda: Lambda(lambda m, h: m.c(h).abs(), c=_conv()),
    lambda: nn.Sequential(_conv(), nn.LeakyReLU(0.1)),
    lambda: nn.Sequential(_conv(), nn.Hardtanh(-0.7, 0.4)),
    lambda: nn.Sequential(_conv(), nn.ReLU6()),
    lambda: nn.Sequential(_conv(), nn.Hardsigmoid()),
    lambda: nn.Sequential(_conv(), TrustedReLU()),
    lambda: nn.MaxPool2d(3, stride=1, padding=1),
    lambda: Lambda(lambda m, h: F.max_pool2d(h, 3, stride=1, padding=1)),
    lambda: nn.AvgPool2d(3, stride=1, padding=1),
    lambda: Lambda(lambda m, h: h + m.c(F.relu(h)), c=_conv()),  # residual
    lambda: Lambda(
        lambda m, h: m.c(torch.cat([h, F.relu(h)], 1))[:, ::2].contiguous(), c=nn.AvgPool2d(1)
    ),
    lambda: Lambda(lambda m, h: m.c(F.pad(h, (1, 1, 1, 1), mode="reflect")), c=_conv(padding=0)),
    lambda: Lambda(lambda m, h: m.c(F.pad(h, (1, 1, 1, 1), mode="replicate")), c=_conv(padding=0)),
    lambda: Lambda(lambda m, h: m.c(F.pad(h, (1, 1, 1, 1), mode="circular")), c=_conv(padding=0)),
    lambda: nn.Sequential(nn.ReflectionPad2d(1), _conv(padding=0)),
    lambda: nn.Sequential(nn.ZeroPad2d(1), _conv(padding=0)),
    lambda: nn.Sequential(nn.BatchNorm2d(CHANNELS), nn.ReLU()),
    lambda: NormAct(CHANNELS, nn.ReLU()),
    lambda: NormAct(CHANNELS, nn.Identity()),
    lambda: _timm_norm_act(nn.ReLU),
    lambda: Lambda(lambda m, h: torch.maximum(h, m.c(h)), c=_conv()),
    lambda: Lambda(lambda m, h: torch.minimum(m.c(h), 0.3 * h), c=_conv()),
    lambda: Lambda(lambda m, h: h * 0.5 + h - torch.add(h, h) * 0.25),
    lambda: Lambda(lambda m, h: m.c(h).mul_(1.5), c=_conv()),
    lambda: Lambda(lambda m, h: F.relu(h.contiguous().view(h.shape[0], -1)).view_as(h)),
    lambda: Lambda(lambda m, h: F.relu(h.flatten(1)).view(h.size(0), CHANNELS, SIZE, SIZE)),
]

# Blocks that are not piecewise linear, with the name the refusal must give.
DISALLOWED: list[tuple[Callable[[], nn.Module | None], str]] = [
    (lambda: Lambda(lambda m, h: h * h), "mul"),
    (lambda: Lambda(lambda m, h: torch.mul(h, h)), "mul"),
    (lambda: Lambda(lambda m, h: h.clone().mul_(h)), "mul_"),
    (lambda: Lambda(lambda m, h: h * F.relu(h)), "mul"),
    (lambda: Lambda(lambda m, h: h**2), "pow"),
    (lambda: Lambda(lambda m, h: torch.square(h)), "square"),
    (lambda: Lambda(lambda m, h: torch.einsum("bchw,bchw->bchw", h, h)), "einsum"),
    (lambda: Lambda(lambda m, h: h @ h), "matmul"),
    (lambda: Lambda(lambda m, h: h / (h.abs() + 1.0)), "truediv"),
    (lambda: Lambda(lambda m, h: torch.where(h > 0, h, 0.1 * h)), "gt"),
    (lambda: nn.Sequential(_conv(), SmoothReLU()), "sigmoid"),
    (lambda: NormAct(CHANNELS, nn.SiLU()), "SiLU"),
    (lambda: _timm_norm_act(nn.SiLU), "SiLU"),
    (lambda: nn.Sequential(_conv(), _hooked_relu()), "mul"),
    (lambda: nn.Sequential(_conv(), nn.GELU()), "GELU"),
    # Caught when the tail runs (the exact check's probe), by what the operations do:
    (lambda: Lambda(lambda m, h: _relu_through_a_view(m.c(h)), c=_conv()), "changes in place"),
    (lambda: Lambda(lambda m, h: _relu_in_an_assertion(h + 0.0)), "in an assertion"),
    (lambda: Lambda(lambda m, h: F.relu(h.transpose(0, 1)).transpose(0, 1)), "first dimension"),
]
# Refusals that only running the tail finds: the static check may pass these networks.
RUN_TIME = {"changes in place", "in an assertion", "first dimension"}


def _relu_through_a_view(g: Tensor) -> Tensor:
    g.flatten(1).relu_()  # changes g through its view; g is used next
    return g


def _relu_in_an_assertion(g: Tensor) -> Tensor:
    torch._assert(g.relu_().sum() >= 0, "never fails")  # changes g inside an assertion
    return g


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(CHANNELS * SIZE * SIZE, CLASSES)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h.flatten(1))


def random_network(seed: int) -> tuple[nn.Module, str | None]:
    """A random network and the name its refusal must give (None: piecewise linear)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    blocks = []
    for _ in range(rng.randint(2, 5)):
        block = None
        while block is None:  # a timm block without timm: draw again
            block = rng.choice(ALLOWED)()
        blocks.append(block)
    named = None
    if rng.random() < 0.4:
        bad = None
        while bad is None:
            make, named = rng.choice(DISALLOWED)
            bad = make()
        blocks.insert(rng.randint(0, len(blocks)), bad)
    network = nn.Sequential(*blocks, Head()).double().eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return network, named


@dataclass
class Counts:
    networks: int = 0
    accepted: int = 0
    refused: int = 0
    segments: int = 0
    exact_passes: int = 0
    wrong_exact_passes: int = 0
    undecided: int = 0
    failures: list[str] = field(default_factory=list)


def fuzz(seeds: range) -> Counts:
    counts = Counts()
    for seed in seeds:
        network, named = random_network(seed)
        counts.networks += 1
        why = why_not_piecewise_linear(network)
        if named is not None:
            counts.refused += 1
            if (why is None and named not in RUN_TIME) or (why is not None and named not in why):
                counts.failures.append(f"seed {seed}: {named} not refused by name: {why}")
            try:
                check_paths(
                    network, torch.zeros(1, 2, CHANNELS, SIZE, SIZE).double(), torch.zeros(1).long()
                )
                counts.failures.append(f"seed {seed}: check_paths accepted {named}")
            except NotPiecewiseLinearError as error:
                if named not in str(error):
                    counts.failures.append(f"seed {seed}: {named} not named in {error}")
            continue
        if why is not None:
            counts.failures.append(f"seed {seed}: a piecewise-linear network refused: {why}")
            continue
        counts.accepted += 1
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randn(SEGMENTS, CHANNELS, SIZE, SIZE, generator=generator).double()
        ends = torch.randn(SEGMENTS, CHANNELS, SIZE, SIZE, generator=generator).double()
        with torch.no_grad():
            targets = network(starts).argmax(dim=1)  # margins that change sign are common
        check = check_paths(network, torch.stack([starts, ends], dim=1), targets)
        t = torch.linspace(0.0, 1.0, POINTS, dtype=torch.float64).view(-1, 1, 1, 1)
        for i in range(SEGMENTS):
            counts.segments += 1
            with torch.no_grad():
                logits = network(torch.lerp(starts[i], ends[i], t))
            y = int(targets[i])
            others = torch.cat([logits[:, :y], logits[:, y + 1 :]], dim=1).amax(dim=1)
            dense = logits[:, y] - others
            exact = float(check.min_margin[i])
            lowest = float(dense.min())
            # Between neighbouring points a piecewise-linear margin cannot dip below the lower
            # one by more than the largest step between neighbours, unless it has a sliver
            # between them (then the exact minimum is lower still): allow twice that.
            resolution = 2.0 * float(dense.diff().abs().max()) + 1e-9
            if bool(check.passed[i]):
                counts.exact_passes += 1
                if lowest <= 0:
                    counts.wrong_exact_passes += 1
                    counts.failures.append(f"seed {seed}: exact pass, margin {lowest} sampled")
            if not bool(check.decided[i]):
                counts.undecided += 1
            if exact > lowest + 1e-9:
                counts.failures.append(f"seed {seed}: exact min {exact} > sampled {lowest}")
            if exact < lowest - resolution:
                counts.failures.append(f"seed {seed}: exact min {exact} far below {lowest}")
    return counts


def _report(counts: Counts) -> None:
    print(
        f"fuzz: {counts.networks} networks ({counts.accepted} accepted, {counts.refused} with a "
        f"disallowed operation), {counts.segments} segments x {POINTS} points, "
        f"{counts.exact_passes} exact passes, {counts.wrong_exact_passes} wrong exact passes, "
        f"{counts.undecided} undecided"
    )
    assert counts.failures == []
    assert counts.wrong_exact_passes == 0


def test_fuzz_small_sweep() -> None:
    counts = fuzz(range(16))
    _report(counts)
    assert counts.accepted >= 8 and counts.refused >= 4  # the sweep covers both kinds


@pytest.mark.slow  # about a minute (200 networks)
def test_fuzz_large_sweep() -> None:
    counts = fuzz(range(1000, 1200))
    _report(counts)
    assert counts.accepted >= 80 and counts.refused >= 40
