"""Linear relaxations of elementwise functions (connectivity.engine.relaxations, issue 21).

Soundness is checked on dense grids over many random intervals (narrow, wide, degenerate,
across zero, kinks, inflection points and saturation), in float64 and float32, against the
reference ``evaluate`` and against PyTorch's own functions; tightness against known answers
(exact lines on linear pieces, the chord and the midpoint tangent on convex/concave pieces).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from connectivity.engine.relaxations import RELAXED, evaluate, relax

NAMES = sorted(RELAXED | {"leaky_relu:0.2", "leaky_relu:-0.5", "leaky_relu:3", "elu:0.5"})
NAMES += ["elu:2", "elu:-1", "hardtanh:-2:3", "hardtanh:0:6"]
POSITIVE = {"reciprocal", "rsqrt", "log", "sqrt"}
# Points where the shape changes: kinks, inflections, the ends of saturation.
TURNS = [-6.0, -3.0, -2.3994, -1.4185, -math.sqrt(2), -1.0, 0.0, 1.0, 1.4185, math.sqrt(2)]
TURNS += [2.3994, 3.0, 6.0, 20.0]


def torch_version(name: str) -> Callable[[Tensor], Tensor]:
    """PyTorch's own function for ``name`` (what a network computes)."""
    base, *parameters = name.split(":")
    values = [float(p) for p in parameters]
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "relu": F.relu,
        "leaky_relu": lambda x: F.leaky_relu(x, *values),
        "hardtanh": lambda x: F.hardtanh(x, *values),
        "relu6": F.relu6,
        "hardsigmoid": F.hardsigmoid,
        "elu": lambda x: F.elu(x, *values),
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "silu": F.silu,
        "hardswish": F.hardswish,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": F.softplus,
        "exp": torch.exp,
        "square": lambda x: x * x,
        "reciprocal": torch.reciprocal,
        "rsqrt": torch.rsqrt,
        "sqrt": torch.sqrt,
        "log": torch.log,
    }
    return table[base]


def intervals(name: str, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` random intervals plus fixed hard ones, as float32 ``(lower, upper)``: ``(N,)``.

    Random centres over [-50, 50], over [-8, 8] and next to the turns; widths log-uniform
    from 1e-7 to 100; a tenth degenerate. Positive-only functions get [1e-3, 1e3] instead.
    """
    gen = torch.Generator().manual_seed(seed)
    third = count // 3
    turns = torch.tensor(TURNS, dtype=torch.float64)
    centres = torch.cat(
        [
            torch.rand(third, generator=gen, dtype=torch.float64) * 100 - 50,
            torch.rand(third, generator=gen, dtype=torch.float64) * 16 - 8,
            turns[torch.randint(len(TURNS), (count - 2 * third,), generator=gen)]
            + torch.randn(count - 2 * third, generator=gen, dtype=torch.float64) * 0.1,
        ]
    )
    widths = 10 ** (torch.rand(count, generator=gen, dtype=torch.float64) * 9 - 7)
    widths[: count // 10] = 0.0
    offset = torch.rand(count, generator=gen, dtype=torch.float64)
    lower = (centres - offset * widths).clamp(-50, 50)
    upper = (lower + widths).clamp(-50, 50)
    fixed = [(-50.0, 50.0), (-50.0, -49.0), (49.0, 50.0), (0.0, 0.0), (-1e-7, 1e-7), (-3, 3)]
    fixed += [(t, t) for t in TURNS] + [(t - 1, t) for t in TURNS] + [(t, t + 1) for t in TURNS]
    if name in POSITIVE:
        lower = 10 ** (torch.rand(count, generator=gen, dtype=torch.float64) * 6 - 3)
        upper = lower * (1 + widths)
        fixed = [(1e-3, 1e3), (1.0, 1.0), (1e-3, 1e-3 * (1 + 1e-6)), (0.5, 2.0), (100.0, 101.0)]
        if name == "sqrt":  # defined at 0, with an infinite slope there
            fixed += [(0.0, 0.0), (0.0, 1e-6), (0.0, 1.0), (0.0, 1e3)]
    lower = torch.cat([lower, torch.tensor([f[0] for f in fixed], dtype=torch.float64)])
    upper = torch.cat([upper, torch.tensor([f[1] for f in fixed], dtype=torch.float64)])
    lower, upper = lower.float(), upper.float()
    return torch.minimum(lower, upper), torch.maximum(lower, upper)


def grid(lower: Tensor, upper: Tensor, points: int) -> Tensor:
    """``(N, points)`` evenly spaced points of each interval, both ends in, in lower's dtype and
    never outside ``[lower, upper]`` in that dtype."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    l64, u64 = lower.double()[:, None], upper.double()[:, None]
    x = (l64 + (u64 - l64) * t).to(lower.dtype)
    return torch.minimum(torch.maximum(x, lower[:, None]), upper[:, None])


def violations(
    name: str, lower: Tensor, upper: Tensor, points: int, search: bool = True
) -> dict[str, float]:
    """Largest violation (0 when sound) of ``lower line <= f <= upper line`` on a grid of each
    interval, by check: float64 lines and f; float32 lines evaluated exactly (float64) against
    the exact f; float32 lines evaluated in float32 against ``evaluate`` and against PyTorch's
    own function in float32 (and in float64); each line's closest approach to f, zoomed in."""
    found: dict[str, float] = {}
    ours = torch_version(name)
    l64, u64 = lower.double(), upper.double()
    for key, lo, up in (("float64", l64, u64), ("float32", lower, upper)):
        a_lo, b_lo, a_hi, b_hi = relax(name, lo, up, search=search)
        assert a_lo.dtype == lo.dtype and b_hi.shape == lo.shape
        x = grid(lo, up, points)
        exact = evaluate(name, x.double())
        line_lo = a_lo.double()[:, None] * x.double() + b_lo.double()[:, None]
        line_hi = a_hi.double()[:, None] * x.double() + b_hi.double()[:, None]
        found[f"{key} exact"] = gap(line_lo, exact, line_hi)
        in_dtype_lo = a_lo[:, None] * x + b_lo[:, None]
        in_dtype_hi = a_hi[:, None] * x + b_hi[:, None]
        found[f"{key} evaluate"] = gap(in_dtype_lo, evaluate(name, x), in_dtype_hi)
        found[f"{key} torch"] = gap(in_dtype_lo, ours(x), in_dtype_hi)
        for side, a, b in (("below", a_lo, b_lo), ("above", a_hi, b_hi)):
            closest = closest_approach(name, a.double(), b.double(), l64, u64, 33, side)
            found[f"{key} zoomed {side}"] = max(-float(closest.min()), 0.0)
    return found


def closest_approach(
    name: str, a: Tensor, b: Tensor, lower: Tensor, upper: Tensor, points: int, side: str
) -> Tensor:
    """``(N,)``: the least of ``line - f`` (``side="above"``) or ``f - line`` found on a grid of
    each interval, zooming in 4 times around the worst grid point (float64; negative: broken).
    """
    sign = 1.0 if side == "above" else -1.0
    lo, up = lower[:, None], upper[:, None]
    least = torch.full_like(lower, math.inf)
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    for _ in range(5):
        x = torch.minimum(torch.maximum(lo + (up - lo) * t, lo), up)
        slack = sign * (a[:, None] * x + b[:, None] - evaluate(name, x))
        least = torch.minimum(least, slack.amin(1))
        worst = slack.argmin(1, keepdim=True)
        lo = x.gather(1, (worst - 1).clamp(min=0))
        up = x.gather(1, (worst + 1).clamp(max=points - 1))
    return least


def gap(below: Tensor, value: Tensor, above: Tensor) -> float:
    """The largest amount by which ``below <= value <= above`` fails (0.0 when it holds);
    NaN anywhere counts as infinite (``max`` propagates it)."""
    worst = max(float((below - value).max()), float((value - above).max()), 0.0)
    return math.inf if math.isnan(worst) else worst


# The functions whose relaxation searches slopes (intervals across an inflection point).
S_SHAPES = [n for n in NAMES if n.split(":")[0] in {"gelu", "gelu_tanh", "silu", "sigmoid"}]
S_SHAPES += [n for n in NAMES if n.split(":")[0] in {"tanh", "hardswish", "elu", "softplus"}]


@pytest.mark.parametrize(
    ("name", "search"), [(n, True) for n in NAMES] + [(n, False) for n in S_SHAPES]
)
def test_lines_hold_on_dense_grids(name: str, search: bool) -> None:
    """Zero violations over 100 random and ~45 fixed intervals, 129 points each, with the
    slope search and with the candidate slopes only (what bound propagation uses)."""
    lower, upper = intervals(name, 100, seed=zlib.crc32(name.encode()))
    found = violations(name, lower, upper, 129, search)
    assert all(v == 0.0 for v in found.values()), found
    if not search:  # the search's lines are at least as close to f at the midpoint
        lower, upper = lower.double(), upper.double()
        mid = 0.5 * (lower + upper)
        fast, tight = relax(name, lower, upper, search=False), relax(name, lower, upper)
        slack = 1e-9 * (1 + evaluate(name, mid).abs())
        assert bool((tight[0] * mid + tight[1] >= fast[0] * mid + fast[1] - slack).all())
        assert bool((tight[2] * mid + tight[3] <= fast[2] * mid + fast[3] + slack).all())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_lines_hold_on_a_big_sweep(name: str) -> None:
    """Zero violations over 4,000 random intervals, 10^4 points each (chunks of 250)."""
    lower, upper = intervals(name, 4000, seed=1234)
    for start in range(0, len(lower), 250):
        chunk = slice(start, start + 250)
        found = violations(name, lower[chunk], upper[chunk], 10_000)
        assert all(v == 0.0 for v in found.values()), (start, found)


def lines(name: str, low: float, high: float) -> tuple[float, float, float, float]:
    """``relax`` on the one float64 interval ``[low, high]``, as four floats."""
    out = relax(name, torch.tensor([low], dtype=torch.float64), torch.tensor([high]).double())
    return tuple(float(t) for t in out)  # type: ignore[return-value]


def test_linear_pieces_are_exact() -> None:
    """On a piece where the function is linear both lines are that piece (to 1e-13)."""
    cases = {
        ("relu", 1.0, 2.0): (1.0, 0.0),
        ("relu", -2.0, -1.0): (0.0, 0.0),
        ("relu6", 7.0, 9.0): (0.0, 6.0),
        ("hardtanh", -0.5, 0.5): (1.0, 0.0),
        ("hardsigmoid", -2.0, 1.0): (1 / 6, 0.5),
        ("hardswish", 4.0, 40.0): (1.0, 0.0),
        ("leaky_relu:0.2", -5.0, -1.0): (0.2, 0.0),
        ("elu", 0.0, 3.0): (1.0, 0.0),
        ("hardtanh:-2:3", -1.0, 2.5): (1.0, 0.0),
        ("hardtanh:-2:3", 3.0, 8.0): (0.0, 3.0),
    }
    for (name, low, high), (slope, intercept) in cases.items():
        a_lo, b_lo, a_hi, b_hi = lines(name, low, high)
        assert a_lo == pytest.approx(slope, abs=1e-13) and a_hi == pytest.approx(slope, abs=1e-13)
        assert b_lo == pytest.approx(intercept, abs=1e-13), name
        assert b_hi == pytest.approx(intercept, abs=1e-13), name


def test_convex_and_concave_pieces_get_chord_and_midpoint_tangent() -> None:
    """Convex: the chord above, the tangent at the midpoint below; concave: the reverse
    (CROWN's choices), to 1e-12 relative."""
    chord_above = {"exp": (-1.0, 2.0), "square": (-1.0, 3.0), "reciprocal": (1.0, 2.0)}
    chord_above |= {"softplus": (-4.0, 1.0), "sigmoid": (-5.0, -1.0), "rsqrt": (0.5, 4.0)}
    derivative = {
        "exp": math.exp,
        "square": lambda x: 2 * x,
        "reciprocal": lambda x: -1 / x**2,
        "softplus": lambda x: 1 / (1 + math.exp(-x)),
        "sigmoid": lambda x: math.exp(-x) / (1 + math.exp(-x)) ** 2,
        "rsqrt": lambda x: -0.5 * x**-1.5,
        "tanh": lambda x: 1 - math.tanh(x) ** 2,
    }
    for name, (low, high) in chord_above.items():
        f = lambda x, n=name: float(evaluate(n, torch.tensor(x, dtype=torch.float64)))  # noqa: E731
        a_lo, b_lo, a_hi, b_hi = lines(name, low, high)
        chord = (f(high) - f(low)) / (high - low)
        assert a_hi == pytest.approx(chord, rel=1e-12), name
        assert b_hi == pytest.approx(f(low) - chord * low, rel=1e-12, abs=1e-13), name
        mid = 0.5 * (low + high)
        assert a_lo == pytest.approx(derivative[name](mid), rel=1e-12), name
        assert a_lo * mid + b_lo == pytest.approx(f(mid), rel=1e-12), name
    concave = {"tanh": (0.5, 2.5, math.tanh), "sqrt": (0.0, 4.0, math.sqrt)}
    concave |= {"log": (0.5, 3.0, math.log)}
    derivative |= {"sqrt": lambda x: 0.5 / math.sqrt(x), "log": lambda x: 1 / x}
    for name, (low, high, f) in concave.items():  # concave: chord below, tangent above
        a_lo, b_lo, a_hi, b_hi = lines(name, low, high)
        mid = 0.5 * (low + high)
        assert a_lo == pytest.approx((f(high) - f(low)) / (high - low), rel=1e-12), name
        assert a_hi == pytest.approx(derivative[name](mid), rel=1e-12), name
        assert a_hi * mid + b_hi == pytest.approx(f(mid), rel=1e-12), name


def test_relu_across_zero_is_crowns_relaxation() -> None:
    """ReLU on [l, u] with l < 0 < u: the chord above; below slope 1 when u > -l, else 0."""
    assert lines("relu", -1.0, 3.0) == pytest.approx((1.0, 0.0, 0.75, 0.75), abs=1e-13)
    assert lines("relu", -3.0, 1.0) == pytest.approx((0.0, 0.0, 0.25, 0.75), abs=1e-13)


def test_degenerate_intervals_are_exact() -> None:
    """At ``l == u`` both lines pass through ``f(l)``, to a few ulps of the magnitudes."""
    for name in NAMES:
        points = [0.7, 2.0, 100.0] if name in POSITIVE else [-7.0, -1.0, 0.0, 0.3, 2.5, 9.0]
        x = torch.tensor(points, dtype=torch.float64)
        a_lo, b_lo, a_hi, b_hi = relax(name, x, x)
        value = evaluate(name, x)
        scale = 1e-13 * (1 + value.abs() + a_lo.abs() * x.abs() + x.abs())
        assert torch.all((a_lo * x + b_lo - value).abs() <= scale), name
        assert torch.all((a_hi * x + b_hi - value).abs() <= scale), name


def area(name: str, lower: Tensor, upper: Tensor) -> Tensor:
    """Area between the two lines over each interval: ``(u - l) * (gap at the midpoint)``."""
    a_lo, b_lo, a_hi, b_hi = relax(name, lower, upper)
    mid = 0.5 * (lower + upper)
    return (upper - lower) * ((a_hi - a_lo) * mid + b_hi - b_lo)


def test_area_between_lines_shrinks_with_the_interval() -> None:
    """Halving the width around a centre (inflections and kinks included) always shrinks the
    area between the lines; at width 1e-3 the gap of smooth functions is below 1e-6."""
    widths = torch.tensor(
        [20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.01, 1e-3], dtype=torch.float64
    )
    for name in sorted(RELAXED):
        centres = [1.5, 3.0, 10.0] if name in POSITIVE else [-3.0, -1.0, 0.0, 0.5, 2.4, 6.0]
        centre = torch.tensor(centres, dtype=torch.float64)[:, None]  # (centres, widths)
        half = widths / 2 if name not in POSITIVE else centre * widths / 20.01
        areas = area(name, centre - half, centre + half)
        assert torch.all(areas[:, 1:] < areas[:, :-1]), (name, areas)
    for name in ["gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "softplus", "exp", "square"]:
        low = torch.tensor(TURNS, dtype=torch.float64)
        a_lo, b_lo, a_hi, b_hi = relax(name, low, low + 1e-3)
        gaps = torch.maximum(
            (a_hi - a_lo) * low + b_hi - b_lo, (a_hi - a_lo) * (low + 1e-3) + b_hi - b_lo
        )
        assert float(gaps.max()) < 1e-6 * max(1.0, math.exp(20.0) * (name == "exp")), name


def test_bad_calls_raise_value_error() -> None:
    """Unknown names and parameters, mismatched, reversed, non-finite or non-positive bounds."""
    one, two = torch.tensor([1.0]), torch.tensor([2.0])
    bad = [
        ("cosine", one, two),
        ("relu:2", one, two),
        ("leaky_relu:abc", one, two),
        ("leaky_relu:inf", one, two),
        ("leaky_relu:1:2", one, two),
        ("hardtanh:1", one, two),
        ("hardtanh:2:1", one, two),
        ("elu:nan", one, two),
        ("relu", two, one),
        ("relu", one, torch.tensor([2.0, 3.0])),
        ("relu", torch.tensor([math.nan]), two),
        ("relu", one, torch.tensor([math.inf])),
        ("relu", torch.tensor([1]), torch.tensor([2])),
        ("relu", one, two.double()),
        ("reciprocal", torch.tensor([0.0]), two),
        ("rsqrt", torch.tensor([-1.0]), two),
        ("log", torch.tensor([0.0]), two),
        ("sqrt", torch.tensor([-1e-9]), two),
    ]
    for name, lower, upper in bad:
        with pytest.raises(ValueError):
            relax(name, lower, upper)
    with pytest.raises(ValueError):
        evaluate("cosine", one)


def test_shapes_and_dtypes_are_kept() -> None:
    """Any shape; float32 and float64 in, the same out; RELAXED names all evaluate."""
    lower = -torch.rand(2, 3, 4)
    for name in sorted(RELAXED - POSITIVE):
        for dtype in (torch.float32, torch.float64):
            out = relax(name, lower.to(dtype), (lower + 1).to(dtype))
            assert all(t.shape == (2, 3, 4) and t.dtype == dtype for t in out)
            assert evaluate(name, lower.to(dtype)).shape == (2, 3, 4)


def test_scalars_empty_tensors_and_gradients() -> None:
    """0-d and empty bounds work; bounds that require grad give lines without a graph."""
    low = torch.tensor(-1.0, requires_grad=True)
    out = relax("gelu", low, torch.tensor(2.0))
    assert all(t.shape == () and not t.requires_grad for t in out)
    assert all(t.shape == (0, 3) for t in relax("silu", torch.zeros(0, 3), torch.zeros(0, 3)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_lines_hold_exactly(dtype: torch.dtype) -> None:
    """Half-precision lines, evaluated exactly (float64), hold on intervals within [-8, 8]
    (``[1e-3, 1e3]`` for the positive-only functions) at 129 points each."""
    for name in sorted(RELAXED):
        lower, upper = intervals(name, 20, seed=7)
        if name not in POSITIVE:
            lower, upper = lower.clamp(-8, 8), upper.clamp(-8, 8)
        lower, upper = lower.to(dtype), upper.to(dtype)
        a_lo, b_lo, a_hi, b_hi = (t.double()[:, None] for t in relax(name, lower, upper))
        x = grid(lower, upper, 129).double()
        assert gap(a_lo * x + b_lo, evaluate(name, x), a_hi * x + b_hi) == 0.0, name


def crown_upper_at_mid(
    f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], low: Tensor, high: Tensor
) -> Tensor:
    """CROWN's upper line for an S-shaped ``f`` (convex left of 0, concave right) on intervals
    with ``low < 0 < high``, at the midpoint: the tangent at ``d`` in ``[0, high]`` that passes
    through ``(low, f(low))`` (found by bisection: ``f(d) + f'(d)(low - d) - f(low)`` increases
    with ``d``), or the chord when that ``d`` is beyond ``high``."""
    mid = 0.5 * (low + high)
    d_lo, d_hi = torch.zeros_like(low), high.clone()
    for _ in range(100):
        d = 0.5 * (d_lo + d_hi)
        above = f(d) + df(d) * (low - d) - f(low) > 0
        d_hi, d_lo = torch.where(above, d, d_hi), torch.where(above, d_lo, d)
    tangent = f(d_hi) + df(d_hi) * (mid - d_hi)
    chord = f(low) + (f(high) - f(low)) / (high - low) * (mid - low)
    tangent_reaches = f(high) + df(high) * (low - high) - f(low) >= 0
    return torch.where(tangent_reaches, tangent, chord)


def test_s_shapes_at_least_as_tight_as_crowns_tangent_through_the_end() -> None:
    """On intervals across the inflection of sigmoid and tanh, the upper line at the midpoint
    is no higher than CROWN's (Zhang et al. 2018) tangent-through-the-end line (to 1e-9); the
    lower line, by symmetry (``f(-x) = c - f(x)``), no lower than its mirror."""
    gen = torch.Generator().manual_seed(3)
    low = -(10 ** (torch.rand(300, generator=gen, dtype=torch.float64) * 3 - 2))
    high = 10 ** (torch.rand(300, generator=gen, dtype=torch.float64) * 3 - 2)
    derivatives = {
        "sigmoid": lambda x: torch.sigmoid(x) * torch.sigmoid(-x),
        "tanh": lambda x: 1 - torch.tanh(x) ** 2,
    }
    for name, df in derivatives.items():
        f = functools.partial(evaluate, name)
        a_lo, b_lo, a_hi, b_hi = relax(name, low, high)
        mid = 0.5 * (low + high)
        crown = crown_upper_at_mid(f, df, low, high)
        assert torch.all(a_hi * mid + b_hi <= crown + 1e-9), name
        shift = 2 * f(torch.zeros(1, dtype=torch.float64))  # f(x) + f(-x) = shift
        crown_lower = shift - crown_upper_at_mid(f, df, -high, -low)
        assert torch.all(a_lo * mid + b_lo >= crown_lower - 1e-9), name


@pytest.mark.parametrize(
    "dtype", [torch.float32, pytest.param(torch.float64, marks=pytest.mark.slow)]
)
def test_extreme_magnitudes(dtype: torch.dtype) -> None:
    """Very wide (1e4), far out (500 to 1e4), tiny and subnormal intervals: finite lines whose
    closest approach to ``f`` (2,001 points, zoomed in) is never negative (``exp`` excepted:
    it overflows there)."""
    for name in sorted(RELAXED - {"exp"}):
        if name in POSITIVE:
            low, high = [1e-6, 1e-6, 1.0, 1e3], [1e6, 1.0000001e-6, 1e6, 1e3 + 1e-3]
        else:
            low, high = (
                [-1e4, -1e3, -1e3, 500.0, -1e-30, -3e-45],
                [1e4, 1e3, -999.0, 1e4, 1e-30, 3e-45],
            )
        lower, upper = torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype)
        a_lo, b_lo, a_hi, b_hi = relax(name, lower, upper)
        assert all(bool(torch.isfinite(t).all()) for t in (a_lo, b_lo, a_hi, b_hi)), name
        for side, a, b in (("below", a_lo, b_lo), ("above", a_hi, b_hi)):
            closest = closest_approach(
                name, a.double(), b.double(), lower.double(), upper.double(), 2001, side
            )
            assert bool((closest >= 0).all()), (name, side, closest)
