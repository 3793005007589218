"""Sound linear relaxations of elementwise functions over intervals (issue 21, first slice).

``relax(name, lower, upper)`` returns two lines per element, ``a_lo*x + b_lo <= f(x) <=
a_hi*x + b_hi`` for every ``x`` in ``[lower, upper]``: the building block of bound propagation
along a path segment (CROWN: Zhang et al., *Efficient Neural Network Robustness Certification
with General Activation Functions*, NeurIPS 2018; auto_LiRPA: Xu et al., NeurIPS 2020).

How the lines are made (all in float64, whatever the input dtype):

* **Slopes** are chosen for tightness only: the upper line is the sound line lowest at the
  midpoint of ``[l, u]``, the lower line the one highest there (the area between a line and
  ``f`` over ``[l, u]`` is the line's midpoint value times the width, up to a constant).
  Within one convex or concave piece that is CROWN's choice, taken directly: the chord above
  and the tangent at the midpoint below (concave: the reverse). A piecewise-linear function
  takes the best of the slopes between its kinks and the ends (its envelopes join those
  points): for ReLU crossing zero, the chord above and slope 0 or 1 below, whichever is
  higher at the midpoint (CROWN's adaptive choice). Across an inflection point or kink of a
  curved function, the best of the chord slope and ``f'`` at nine evenly spaced points is
  refined by 34 bisection steps on the slope (the midpoint value is convex in the slope, its
  derivative ``m - x*`` known from where the intercept's extremum lies): this approaches the
  optimal line at the midpoint, at least as tight there as CROWN's tangent through an
  endpoint (tested for sigmoid and tanh). Measured 2026-12-06 on 200 random intervals with
  ``-8 < l < 0 < u < 8``: the area between the lines was never more than that of the best
  pair among 1,501 slopes (brute force, 4,001 points) for sigmoid, tanh, both GELUs, SiLU,
  hard-swish, ELU, softplus and ReLU.
* **Intercepts** are what makes the lines sound, whatever the slope: ``b_hi = max (f(x) - a x)``
  and ``b_lo = min (f(x) - a x)`` over ``[l, u]``, found from the function's known shape, not by
  sampling. Each function is described by its breakpoints (kinks and inflection points) and
  the curvature of each piece between them (convex, concave or linear); ``g = f - a x`` has the
  same curvature. The maximum of ``g`` is at ``l``, ``u``, a breakpoint, or the root of
  ``g' = f' - a`` on a concave piece (in closed form where there is one; else bisection on
  the monotone ``g'``, ended by Newton steps inside the bracket); the minimum likewise with
  convex pieces. What is taken there is a bound, not an estimate: the extreme, over the
  piece (closed form) or the final bracket, of the tangent of the concave (convex) ``g`` at
  the root found, which lies above (below) ``g``. An inexact root costs tightness only,
  never soundness.
* **Float safety.** Slopes are rounded to the output dtype *before* the intercepts are computed,
  so rounding a slope never breaks a line. Then both intercepts are widened (``b_lo`` down,
  ``b_hi`` up) by ``4 * eps * max(S_lo, S_hi) + 4 * tiny`` with ``eps``, ``tiny`` those of the
  output dtype and ``S = |a| * max(|l|, |u|) + |b|`` for each line (``S`` bounds ``|a x + b|``
  on ``[l, u]``, hence ``|f|``), and then rounded outward to the output dtype. That covers the
  float64 evaluation of ``f`` here, evaluating ``a*x + b`` in the output dtype (at most about
  ``eps * S``) and evaluating ``f`` in that dtype (a couple of ulps of ``|f| <= S``; ``tiny``
  covers underflow).
  Two of PyTorch's own functions are less exact than that in float32, and the lines also cover
  them: ``F.gelu`` computes ``1 + erf`` (``approximate="tanh"``: ``1 + tanh``) with
  cancellation for negative ``x``; measured on CPU over 2e7 points of [-50, 50], its absolute
  error reaches ``3.1 * eps * |x|`` (tanh form ``0.94 * eps * |x|``), so the widening also has
  ``8 * eps * max(|l|, |u|)`` for ``gelu`` and ``4 * eps * max(|l|, |u|)`` for ``gelu_tanh``.
  ``F.softplus``'s default ``threshold=20`` returns ``x`` for ``x > 20`` (short by
  ``log1p(exp(-x)) < 2.1e-9``), so ``softplus``'s lower intercept also drops by ``2.1e-9`` where
  ``u > 20``. (The other functions' float32 errors measured there stay within 1.5 ulps of
  ``|f|``.)
* **Degenerate intervals** (``l == u``) give the tangent there: exact up to that widening.

Functions (``RELAXED``; :func:`evaluate` is the reference the lines bound): ``relu``,
``leaky_relu`` (``leaky_relu:<negative_slope>``, default 0.01), ``hardtanh``
(``hardtanh:<min_val>:<max_val>``, default -1 and 1), ``relu6``, ``hardsigmoid``
(``relu6(x+3)/6``), ``elu`` (``elu:<alpha>``, default 1), ``gelu`` (erf form), ``gelu_tanh``
(tanh approximation), ``silu``, ``hardswish``, ``sigmoid``, ``tanh``, ``softplus``
(``beta=1``), ``exp``, ``square``, ``reciprocal``, ``rsqrt`` and ``log`` (these three only on
intervals with ``lower > 0``), ``sqrt`` (``lower >= 0``; its infinite slope at 0 is never
taken: a line's slope there becomes 0). Parameters follow the name after colons, as PyTorch's
layers take them.

Covered by this slice: the elementwise relaxations above, on any shape, float16/bfloat16/
float32/float64 outputs, on CPU (tested) and any device with float64 (written for it, not run
on a GPU yet). Cost, 1e5 elements of widths up to 0.5 on one thread of this project's busy
2-core CPU: 0.07-0.15 s (piecewise-linear, exp, sigmoid, tanh, hard-swish), 0.5-0.8 s (GELU,
SiLU, tanh-GELU, whose roots need bisection and Newton steps). Products of two bounded values
(McCormick planes), softmax and LayerNorm / GroupNorm are bounded in
:mod:`connectivity.engine.bounds` from these pieces. Not covered yet (later sessions of issue
21): softplus with other ``beta``/``threshold``, general ``pow``, ``sin``, gradients through the
lines and optimisable slopes (alpha-CROWN), a GPU run. Results can overflow to ``inf`` where
``f`` itself does in the output dtype (``exp`` above about 88 in float32).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

_BISECTION_STEPS = 40
_NEWTON_AFTER = 12  # bisection steps before Newton's, where f'' is known
_NEWTON_STEPS = 4
_SLOPE_BISECTION = 34  # bisection steps on the slope after the first candidates
_SLOPE_POINTS = 9  # points of [l, u] whose derivative is a candidate slope (odd: midpoint in)
_WIDEN_RELATIVE = 4.0  # times eps of the output dtype, times the lines' magnitudes
_WIDEN_TINY = 4.0  # times the smallest normal number of the output dtype
_SOFTPLUS_THRESHOLD_GAP = 2.1e-9  # log1p(exp(-20)) = 2.061e-9: torch's threshold=20 shortfall
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@dataclass(frozen=True)
class _Shape:
    """What the intercepts need to know of ``f``: value, derivative, and curvature by piece.

    ``breaks`` are sorted kinks and inflection points; ``curvature`` has one entry more, for
    the pieces ``(-inf, breaks[0]), ..., (breaks[-1], inf)``: 1 convex, -1 concave, 0 linear.
    ``positive`` functions are defined only for ``x > 0``, ``nonnegative`` ones (``sqrt``) for
    ``x >= 0``. ``torch_abs`` (times eps of the
    output dtype and ``max(|l|, |u|)``) is the absolute error of PyTorch's own version.
    ``root(a, curvature)``, where given, solves ``f'(x) = a`` on the convex (``curvature``
    1) or concave (-1) piece in closed form (``+-inf`` where ``f' - a`` keeps one sign there);
    its accuracy matters for tightness only. ``d2f`` (``f''``), where given, replaces the end
    of the bisection by Newton steps inside the bracket (again only tightness depends on it).
    """

    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor], Tensor]
    breaks: tuple[float, ...]
    curvature: tuple[int, ...]
    positive: bool = False
    nonnegative: bool = False
    torch_abs: float = 0.0
    root: Callable[[Tensor, int], Tensor] | None = None
    d2f: Callable[[Tensor], Tensor] | None = None


def _piecewise_linear(
    points: tuple[float, ...], slopes: tuple[float, ...], f: Callable[[Tensor], Tensor]
) -> _Shape:
    """A piecewise-linear function with kinks at ``points`` and ``slopes`` on the pieces."""

    def df(x: Tensor) -> Tensor:
        """The slope of the piece ``x`` is in (the right one at a kink)."""
        out = torch.full_like(x, slopes[0])
        for point, slope in zip(points, slopes[1:], strict=True):
            out = torch.where(x > point, torch.full_like(x, slope), out)
        return out

    return _Shape(f, df, points, (0,) * (len(points) + 1))


def _gelu(x: Tensor) -> Tensor:
    """GELU, erf form, computed without cancellation: ``x * Phi(x) = x * erfc(-x/sqrt2) / 2``."""
    return 0.5 * x * torch.special.erfc(-x / math.sqrt(2.0))


def _dgelu(x: Tensor) -> Tensor:
    """GELU's derivative ``Phi(x) + x phi(x)``."""
    return 0.5 * torch.special.erfc(-x / math.sqrt(2.0)) + x * torch.exp(-0.5 * x * x) / math.sqrt(
        2.0 * math.pi
    )


def _d2gelu(x: Tensor) -> Tensor:
    """GELU's second derivative ``phi(x) (2 - x^2)``."""
    return torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi) * (2.0 - x * x)


def _gelu_tanh_z(x: Tensor) -> Tensor:
    """``2 k (x + c x^3)``: ``(1 + tanh(z/2)) / 2 = sigmoid(z)``, no cancellation."""
    return 2.0 * _GELU_K * (x + _GELU_C * x * x * x)


def _gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation ``x (1 + tanh(k (x + c x^3))) / 2``, as ``x sigmoid(z)``."""
    return x * torch.sigmoid(_gelu_tanh_z(x))


def _dgelu_tanh(x: Tensor) -> Tensor:
    """The tanh-GELU's derivative ``sigmoid(z) + x sigmoid(z) sigmoid(-z) z'``."""
    z = _gelu_tanh_z(x)
    dz = 2.0 * _GELU_K * (1.0 + 3.0 * _GELU_C * x * x)
    return torch.sigmoid(z) + x * torch.sigmoid(z) * torch.sigmoid(-z) * dz


def _d2gelu_tanh(x: Tensor) -> Tensor:
    """The tanh-GELU's second derivative ``s(1-s) (2 z' + x ((1 - 2s) z'^2 + z''))``,
    ``s = sigmoid(z)``."""
    z = _gelu_tanh_z(x)
    dz = 2.0 * _GELU_K * (1.0 + 3.0 * _GELU_C * x * x)
    d2z = 12.0 * _GELU_K * _GELU_C * x
    s, r = torch.sigmoid(z), torch.sigmoid(-z)
    return s * r * (2.0 * dz + x * ((r - s) * dz * dz + d2z))


def _d2silu(x: Tensor) -> Tensor:
    """SiLU's second derivative ``sigmoid(x) sigmoid(-x) (2 + x (sigmoid(-x) - sigmoid(x)))``."""
    s, r = torch.sigmoid(x), torch.sigmoid(-x)
    return s * r * (2.0 + x * (r - s))


def _silu(x: Tensor) -> Tensor:
    """SiLU ``x sigmoid(x)``."""
    return x * torch.sigmoid(x)


def _dsilu(x: Tensor) -> Tensor:
    """SiLU's derivative ``sigmoid(x) (1 + x sigmoid(-x))``."""
    return torch.sigmoid(x) * (1.0 + x * torch.sigmoid(-x))


def _inflection(df: Callable[[Tensor], Tensor], low: float, high: float) -> float:
    """The point in ``[low, high]`` where ``f''`` (autograd of ``df``, float64) turns from
    positive to negative, by bisection to float64 resolution (a turn misplaced by ``d`` would
    cost about ``|f'''| d^3``)."""

    def second(x: float) -> float:
        """``f''(x)``."""
        with torch.enable_grad():
            point = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            return float(torch.autograd.grad(df(point), point)[0])

    lo, hi = low, high
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if second(mid) > 0 else (lo, mid)
    return lo


def _softplus(x: Tensor) -> Tensor:
    """Softplus ``log(1 + e^x)`` without overflow or threshold."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def _dtanh(x: Tensor) -> Tensor:
    """tanh's derivative ``1 - tanh^2 = 4 sigmoid(2x) sigmoid(-2x)``, without cancellation."""
    return 4.0 * torch.sigmoid(2.0 * x) * torch.sigmoid(-2.0 * x)


def _sigmoid_root(a: Tensor, curvature: int) -> Tensor:
    """``sigmoid'(x) = a``: ``sigmoid(x) = 2a / (1 + sqrt(1 - 4a))`` on ``x < 0`` (convex),
    its mirror on ``x > 0``."""
    s = 2 * a / (1 + torch.sqrt((1 - 4 * a).clamp(min=0)))
    x = torch.logit(s.clamp(0, 0.5))
    return x if curvature > 0 else -x


def _tanh_root(a: Tensor, curvature: int) -> Tensor:
    """``tanh'(x) = a``: ``x = log((1 + sqrt(1 - a)) / sqrt(a))`` on ``x > 0`` (concave), its
    mirror on ``x < 0``."""
    t = torch.sqrt((1 - a).clamp(min=0))
    x = torch.log((1 + t) / torch.sqrt(a.clamp(min=0))).clamp(min=0)
    return x if curvature < 0 else -x


@functools.cache
def _shapes() -> dict[str, _Shape]:
    """The functions by name (built once: the SiLU and tanh-GELU inflections are solved)."""
    silu_turn = _inflection(_dsilu, 1.0, 4.0)
    gelu_tanh_turn = _inflection(_dgelu_tanh, 0.5, 3.0)
    root2 = math.sqrt(2.0)
    return {
        "relu": _piecewise_linear((0.0,), (0.0, 1.0), lambda x: x.clamp(min=0)),
        "relu6": _piecewise_linear((0.0, 6.0), (0.0, 1.0, 0.0), lambda x: x.clamp(0, 6)),
        "hardsigmoid": _piecewise_linear(
            (-3.0, 3.0), (0.0, 1.0 / 6.0, 0.0), lambda x: (x + 3).clamp(0, 6) / 6
        ),
        "gelu": _Shape(_gelu, _dgelu, (-root2, root2), (-1, 1, -1), torch_abs=8.0, d2f=_d2gelu),
        "gelu_tanh": _Shape(
            _gelu_tanh,
            _dgelu_tanh,
            (-gelu_tanh_turn, gelu_tanh_turn),
            (-1, 1, -1),
            torch_abs=4.0,
            d2f=_d2gelu_tanh,
        ),
        "silu": _Shape(_silu, _dsilu, (-silu_turn, silu_turn), (-1, 1, -1), d2f=_d2silu),
        "hardswish": _Shape(
            lambda x: x * (x + 3).clamp(0, 6) / 6,
            lambda x: torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, (2 * x + 3) / 6)),
            (-3.0, 3.0),
            (0, 1, 0),
            root=lambda a, _: (6 * a - 3) / 2,
        ),
        "sigmoid": _Shape(
            torch.sigmoid,
            lambda x: torch.sigmoid(x) * torch.sigmoid(-x),
            (0.0,),
            (1, -1),
            root=_sigmoid_root,
        ),
        "tanh": _Shape(torch.tanh, _dtanh, (0.0,), (1, -1), root=_tanh_root),
        "softplus": _Shape(
            _softplus, torch.sigmoid, (), (1,), root=lambda a, _: torch.logit(a.clamp(0, 1))
        ),
        "exp": _Shape(torch.exp, torch.exp, (), (1,), root=lambda a, _: torch.log(a.clamp(min=0))),
        "square": _Shape(lambda x: x * x, lambda x: 2 * x, (), (1,), root=lambda a, _: a / 2),
        "reciprocal": _Shape(
            torch.reciprocal,
            lambda x: -1 / (x * x),
            (),
            (1,),
            positive=True,
            root=lambda a, _: torch.rsqrt((-a).clamp(min=0)),
        ),
        "rsqrt": _Shape(
            torch.rsqrt,
            lambda x: -0.5 * torch.rsqrt(x) / x,
            (),
            (1,),
            positive=True,
            root=lambda a, _: (-2 * a).clamp(min=0).pow(-2.0 / 3.0),
        ),
        # concave; f'(0) is infinite: a slope there becomes 0 (_sound_slopes), an intercept
        # found there NaN, which no comparison keeps (the interval's ends stay the candidates)
        "sqrt": _Shape(
            torch.sqrt,
            lambda x: 0.5 * torch.rsqrt(x),
            (),
            (-1,),
            nonnegative=True,
            root=lambda a, _: torch.where(a > 0, 0.25 / (a * a), math.inf),
        ),
        "log": _Shape(
            torch.log,
            torch.reciprocal,
            (),
            (-1,),
            positive=True,
            root=lambda a, _: torch.where(a > 0, 1 / a, math.inf),
        ),
    }


RELAXED: frozenset[str] = frozenset(
    {
        "relu",
        "leaky_relu",
        "hardtanh",
        "relu6",
        "hardsigmoid",
        "elu",
        "gelu",
        "gelu_tanh",
        "silu",
        "hardswish",
        "sigmoid",
        "tanh",
        "softplus",
        "exp",
        "square",
        "reciprocal",
        "rsqrt",
        "sqrt",
        "log",
    }
)
"""The names :func:`relax` and :func:`evaluate` take; three also take parameters after colons:
``leaky_relu:<negative_slope>``, ``elu:<alpha>``, ``hardtanh:<min_val>:<max_val>`` (PyTorch's
defaults without them: 0.01, 1, -1 and 1)."""


_DEFAULTS = {"leaky_relu": ["0.01"], "elu": ["1"], "hardtanh": ["-1", "1"]}  # PyTorch's


def _numbers(name: str, parameters: list[str], count: int) -> list[float]:
    """``count`` finite numbers parsed from ``parameters`` (ValueError otherwise)."""
    if len(parameters) != count:
        raise ValueError(f"{name!r}: expected {count} parameter(s) after the name")
    try:
        values = [float(p) for p in parameters]
    except ValueError:
        raise ValueError(f"{name!r}: parameters must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name!r}: parameters must be finite")
    return values


def _with_parameters(name: str, base: str, parameters: list[str]) -> _Shape:
    """``leaky_relu:<slope>``, ``elu:<alpha>`` and ``hardtanh:<min>:<max>``."""
    if base == "leaky_relu":
        (slope,) = _numbers(name, parameters, 1)
        return _piecewise_linear((0.0,), (slope, 1.0), lambda x: torch.where(x >= 0, x, slope * x))
    if base == "elu":
        (alpha,) = _numbers(name, parameters, 1)
        return _Shape(
            lambda x: torch.where(x > 0, x, alpha * torch.expm1(x.clamp(max=0))),
            lambda x: torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x.clamp(max=0))),
            (0.0,),
            (int(math.copysign(1, alpha)) if alpha else 0, 0),
            root=lambda a, _: torch.log((a / alpha).clamp(min=0)),
        )
    if base == "hardtanh":
        low, high = _numbers(name, parameters, 2)
        if not low < high:
            raise ValueError(f"{name!r}: needs min < max")
        return _piecewise_linear((low, high), (0.0, 1.0, 0.0), lambda x: x.clamp(low, high))
    raise ValueError(f"no relaxation for {name!r}; known: {sorted(RELAXED)}")


def _shape(name: str) -> _Shape:
    """The description of ``name``; ValueError for a name not in ``RELAXED`` (or with
    parameters it does not take, or that are not finite numbers)."""
    base, *parameters = name.split(":")
    if base in _DEFAULTS:
        return _with_parameters(name, base, parameters or _DEFAULTS[base])
    if parameters or base not in _shapes():
        raise ValueError(f"no relaxation for {name!r}; known: {sorted(RELAXED)}")
    return _shapes()[base]


def evaluate(name: str, x: Tensor) -> Tensor:
    """``f(x)`` elementwise, in ``x``'s dtype: the function the lines of :func:`relax` bound.

    GELU (both forms) and softplus are computed without cancellation (``x * erfc(-x/sqrt2)/2``,
    ``x * sigmoid(2k(x + c x^3))``, ``max(x,0) + log1p(exp(-|x|))``); see the module docstring
    for how PyTorch's own versions differ. Raises ValueError for an unknown name.
    """
    return _shape(name).f(x)


def _tangent_bound(
    shape: _Shape, a: Tensor, x: Tensor, lo: Tensor, hi: Tensor, convex: bool
) -> Tensor:
    """The tangent of ``g = f - a x`` at ``x`` (in ``[lo, hi]``), at its extreme over
    ``[lo, hi]``: its maximum when ``g`` is concave there (it lies above ``g``, so it bounds
    ``max g`` from above), its minimum when convex. Exact when ``x`` is the extremum of ``g``."""
    slope = shape.df(x) - a
    reach = torch.stack([slope * (lo - x), slope * (hi - x)])
    return shape.f(x) - a * x + (reach.amin(0) if convex else reach.amax(0))


def _piece_extremum(
    shape: _Shape, a: Tensor, lo: Tensor, hi: Tensor, convex: bool
) -> tuple[Tensor, Tensor]:
    """A bound on the extremum of ``g = f - a x`` over ``[lo, hi]`` (a convex or concave piece
    of ``f``): the minimum from below when ``convex``, the maximum from above otherwise.

    With a closed-form root of ``f' = a`` (``shape.root``) the tangent there, clamped to the
    piece, gives it (:func:`_tangent_bound`). Otherwise bisection on the sign of the monotone
    ``g'`` keeps a bracket around the extremum (the root, or the end it runs to), then (given
    ``f''``) Newton steps kept inside the bracket polish the root, and the tightest tangent
    bound over the bracket at its ends and that root is taken (exact where the extremum is an
    end of the piece). Either way a bound, whatever the root's accuracy. Returns the bound and
    where the extremum was found (``x``). Shapes: all alike, float64.
    """
    if shape.root is not None:
        x = shape.root(a, 1 if convex else -1)
        x = torch.where(torch.isnan(x), lo, x).clamp(lo, hi)
        return _tangent_bound(shape, a, x, lo, hi, convex), x
    steps = _BISECTION_STEPS if shape.d2f is None else _NEWTON_AFTER
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        rising = shape.df(mid) - a > 0
        go_left = rising if convex else ~rising
        hi = torch.where(go_left, mid, hi)
        lo = torch.where(go_left, lo, mid)
    if shape.d2f is None:
        bounds = torch.stack([_tangent_bound(shape, a, x, lo, hi, convex) for x in (lo, hi)])
        return (bounds.amax(0) if convex else bounds.amin(0)), 0.5 * (lo + hi)
    x = 0.5 * (lo + hi)
    for _ in range(_NEWTON_STEPS):
        step = (shape.df(x) - a) / shape.d2f(x)
        x = torch.where(torch.isfinite(step), x - step, x).clamp(lo, hi)
    bounds = torch.stack([_tangent_bound(shape, a, x, lo, hi, convex) for x in (lo, x, hi)])
    return (bounds.amax(0) if convex else bounds.amin(0)), x


def _intercept(
    shape: _Shape, a: Tensor, lower: Tensor, upper: Tensor, above: bool
) -> tuple[Tensor, Tensor]:
    """``max`` (``above``; from above) or ``min`` (from below) of ``f(x) - a x`` over
    ``[lower, upper]``, up to float64 rounding of ``f``, and the ``x`` where it was found.
    ``a``: ``(C, *S)``; bounds: ``S``; float64. Candidates: both ends, the breakpoints inside,
    and the extremum of each concave (``above``) or convex piece (:func:`_piece_extremum`)."""
    points = [lower, upper] + [torch.full_like(lower, p).clamp(lower, upper) for p in shape.breaks]
    values = torch.stack([shape.f(p) - a * p for p in points])  # (P, C, *S)
    index = (values.argmax(0) if above else values.argmin(0)).unsqueeze(0)
    best = values.gather(0, index).squeeze(0)
    where = torch.stack([p.expand_as(a) for p in points]).gather(0, index).squeeze(0)
    edges = [-math.inf, *shape.breaks, math.inf]
    for (start, end), curvature in zip(itertools.pairwise(edges), shape.curvature, strict=True):
        if curvature != (-1 if above else 1):
            continue
        lo = torch.full_like(lower, start).clamp(lower, upper).expand_as(a)
        hi = torch.full_like(lower, end).clamp(lower, upper).expand_as(a)
        if not bool((lo < hi).any()):
            continue  # the piece meets no interval but in an end, a candidate already
        bound, x = _piece_extremum(shape, a, lo, hi, convex=not above)
        better = bound > best if above else bound < best
        best, where = torch.where(better, bound, best), torch.where(better, x, where)
    return best, where


def _sound_slopes(slopes: Tensor, dtype: torch.dtype) -> Tensor:
    """``slopes`` rounded to ``dtype`` (back in float64); NaN or overflow becomes 0 (sound,
    only looser): a line's intercept is made for the slope it will have in ``dtype``."""
    return torch.nan_to_num(slopes.to(dtype), nan=0.0, posinf=0.0, neginf=0.0).double()


def _best_line(
    shape: _Shape,
    slopes: Tensor,
    lower: Tensor,
    upper: Tensor,
    dtype: torch.dtype,
    above: bool,
    refine: bool,
) -> tuple[Tensor, Tensor]:
    """The sound line above (``above``) or below ``f`` on ``[lower, upper]`` closest to ``f`` at
    the midpoint ``m``, among ``slopes`` (``(C, *S)``, float64), then (``refine``) by
    ``_SLOPE_BISECTION`` bisection steps on the slope between the best one's nearest distinct
    neighbours. The midpoint value ``phi(a) = a m + max_x (f(x) - a x)`` of the best line of
    slope ``a`` is convex in ``a`` with derivative ``m - x*(a)`` (``x*``: where the max is), so
    the sign of ``m - x*`` says on which side the optimum lies (below: concave, ``min``).
    Returns ``(a, b)``: ``S``, float64."""
    mid = 0.5 * (lower + upper)
    slopes = _sound_slopes(slopes, dtype)
    b, _ = _intercept(shape, slopes, lower, upper, above)
    at_mid = slopes * mid + b
    index = (at_mid.argmin(0) if above else at_mid.argmax(0)).unsqueeze(0)
    best_a, best_b = slopes.gather(0, index).squeeze(0), b.gather(0, index).squeeze(0)
    if not refine:
        return best_a, best_b
    left = torch.where(slopes < best_a, slopes, -math.inf).amax(0)
    right = torch.where(slopes > best_a, slopes, math.inf).amin(0)
    left = torch.where(torch.isfinite(left), left, best_a)
    right = torch.where(torch.isfinite(right), right, best_a)
    for _ in range(_SLOPE_BISECTION):
        a = _sound_slopes(0.5 * (left + right), dtype)
        b, where = _intercept(shape, a.unsqueeze(0), lower, upper, above)
        b, where = b.squeeze(0), where.squeeze(0)
        better = (
            a * mid + b < best_a * mid + best_b if above else a * mid + b > best_a * mid + best_b
        )
        best_a, best_b = torch.where(better, a, best_a), torch.where(better, b, best_b)
        larger = where > mid if above else where < mid  # the optimum is at larger slopes
        left, right = torch.where(larger, a, left), torch.where(larger, right, a)
    return best_a, best_b


def _candidate_slopes(shape: _Shape, lower: Tensor, upper: Tensor) -> Tensor:
    """``(C, *S)``: the chord slope, then ``f'`` at ``_SLOPE_POINTS`` evenly spaced points of
    ``[lower, upper]``."""
    steps = torch.linspace(0, 1, _SLOPE_POINTS, dtype=lower.dtype, device=lower.device)
    steps = steps.reshape(-1, *([1] * lower.dim()))
    tangents = shape.df(lower + steps * (upper - lower))
    return torch.cat([_chord(shape, lower, upper).unsqueeze(0), tangents])


def _chord(shape: _Shape, lower: Tensor, upper: Tensor) -> Tensor:
    """The chord slope over ``[lower, upper]``; ``f'(lower)`` where ``lower == upper``."""
    width = upper - lower
    safe = torch.where(width > 0, width, torch.ones_like(width))
    return torch.where(width > 0, (shape.f(upper) - shape.f(lower)) / safe, shape.df(lower))


def _kink_slopes(shape: _Shape, lower: Tensor, upper: Tensor) -> Tensor:
    """``(C, *S)``: the slopes between every two of ``lower``, ``upper`` and the kinks inside
    (clamped in): for a piecewise-linear ``f`` the best lines are among them (the concave and
    convex envelopes of ``f`` on ``[lower, upper]`` join such points)."""
    points = [lower, upper] + [torch.full_like(lower, p).clamp(lower, upper) for p in shape.breaks]
    return torch.stack([_chord(shape, p, q) for p, q in itertools.combinations(points, 2)])


def _lines(
    shape: _Shape, lower: Tensor, upper: Tensor, dtype: torch.dtype, kind: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(a_lo, b_lo, a_hi, b_hi)`` (float64, like ``lower``) before widening, for ``kind``:
    ``"piece"`` (each interval within one convex, concave or linear piece: the chord and the
    midpoint tangent are the best lines, CROWN's), ``"linear"`` (a piecewise-linear ``f``:
    :func:`_kink_slopes`), ``"candidates"`` (the best of the candidate slopes) or ``"search"``
    (candidates, then bisection on the slope)."""
    refine = kind == "search"
    if kind == "piece":
        slopes = torch.stack([_chord(shape, lower, upper), shape.df(0.5 * (lower + upper))])
    elif kind == "linear":
        slopes = _kink_slopes(shape, lower, upper)
    else:
        slopes = _candidate_slopes(shape, lower, upper)
    a_lo, b_lo = _best_line(shape, slopes, lower, upper, dtype, False, refine)
    a_hi, b_hi = _best_line(shape, slopes, lower, upper, dtype, True, refine)
    return a_lo, b_lo, a_hi, b_hi


def _all_lines(
    shape: _Shape, lower: Tensor, upper: Tensor, dtype: torch.dtype, search: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_lines` for every interval: piecewise-linear functions at once; otherwise the
    intervals within one piece apart from those across a breakpoint (the search)."""
    if not any(shape.curvature):
        return _lines(shape, lower, upper, dtype, "linear")
    low, high = lower.reshape(-1), upper.reshape(-1)
    crossing = torch.zeros_like(low, dtype=torch.bool)
    for point in shape.breaks:
        crossing |= (low < point) & (point < high)
    result = [torch.empty_like(low) for _ in range(4)]
    for mask, kind in ((~crossing, "piece"), (crossing, "search" if search else "candidates")):
        index = mask.nonzero().squeeze(1)
        if index.numel():
            lines = _lines(shape, low[index], high[index], dtype, kind)
            for whole, part in zip(result, lines, strict=True):
                whole[index] = part
    return tuple(r.reshape(lower.shape) for r in result)  # type: ignore[return-value]


def _check_bounds(name: str, shape: _Shape, lower: Tensor, upper: Tensor) -> None:
    """ValueError for bounds that are not same-shaped, same-dtype finite floats with
    ``lower <= upper`` (and ``lower > 0`` for ``reciprocal``, ``rsqrt`` and ``log``, ``lower >=
    0`` for ``sqrt``)."""
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ")
    if not lower.is_floating_point() or lower.dtype != upper.dtype:
        raise ValueError(f"bounds must share one floating dtype, not {lower.dtype}, {upper.dtype}")
    if not bool(torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise ValueError("bounds must be finite")
    if bool((lower > upper).any()):
        raise ValueError("lower > upper somewhere")
    if shape.positive and bool((lower <= 0).any()):
        raise ValueError(f"{name} is relaxed only on intervals with lower > 0")
    if shape.nonnegative and bool((lower < 0).any()):
        raise ValueError(f"{name} is relaxed only on intervals with lower >= 0")


@torch.no_grad()
def relax(
    name: str, lower: Tensor, upper: Tensor, *, search: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lines (a_lo, b_lo, a_hi, b_hi), each shaped like lower/upper, with
    a_lo*x + b_lo <= f(x) <= a_hi*x + b_hi for every x in [lower, upper]
    (elementwise, lower <= upper). Raises ValueError for an unknown name.

    ``search``: for intervals across an inflection point, bisect on the slope for the line
    closest to ``f`` at the midpoint (tightest; some 40 times the cost); False: the best of the
    candidate slopes (as sound, a little looser; what bound propagation uses per sub-interval).

    Outputs have ``lower``'s dtype and device and carry no gradient (``torch.no_grad``); the
    work is done in float64 (the module docstring says how slopes are chosen, how intercepts
    are made sound, and how they are widened against float rounding). Also raises
    ValueError for bounds of different shapes or dtypes, non-float or non-finite bounds,
    ``lower > upper`` anywhere, ``lower <= 0`` for ``reciprocal`` / ``rsqrt`` / ``log`` and
    ``lower < 0`` for ``sqrt``.
    """
    shape = _shape(name)
    _check_bounds(name, shape, lower, upper)
    out = lower.dtype
    lo64, up64 = lower.to(torch.float64), upper.to(torch.float64)
    a_lo, b_lo, a_hi, b_hi = _all_lines(shape, lo64, up64, out, search)
    reach = torch.maximum(lo64.abs(), up64.abs())
    finfo = torch.finfo(out)
    size = torch.maximum(a_lo.abs() * reach + b_lo.abs(), a_hi.abs() * reach + b_hi.abs())
    widen = _WIDEN_RELATIVE * finfo.eps * size + _WIDEN_TINY * finfo.tiny
    widen = widen + shape.torch_abs * finfo.eps * reach
    b_lo = b_lo - widen
    if name == "softplus":
        b_lo = b_lo - torch.where(up64 > 20, _SOFTPLUS_THRESHOLD_GAP, 0.0)
    b_hi = b_hi + widen
    return a_lo.to(out), _round(b_lo, out, down=True), a_hi.to(out), _round(b_hi, out, down=False)


def _round(b: Tensor, dtype: torch.dtype, down: bool) -> Tensor:
    """``b`` (float64) in ``dtype``, rounded down (or up): never above (below) ``b``."""
    rounded = b.to(dtype)
    back = rounded.to(torch.float64)
    toward = torch.full_like(rounded, -math.inf if down else math.inf)
    wrong = back > b if down else back < b
    return torch.where(wrong, torch.nextafter(rounded, toward), rounded)
