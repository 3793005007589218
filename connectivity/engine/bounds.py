"""Bound propagation along a path segment, with branch and bound on ``t`` (issue 21).

Pure PyTorch (torch.fx), no Lightning. On a segment ``z(t) = a + t (b - a)`` and a sub-interval
``t`` in ``[t0, t1]``, every traced value ``v`` of the tail is bounded elementwise by two lines
in ``t``: ``lw * t + lb <= v(t) <= uw * t + ub`` (forward linear bounds with one parameter, as in
CROWN: Zhang et al., "Efficient Neural Network Robustness Certification with General Activation
Functions", NeurIPS 2018; auto_LiRPA's forward mode, Xu et al., NeurIPS 2020). The target margin
``logit[y] - max_{k != y} logit[k]`` is then bounded below on the sub-interval
(:func:`margin_bounds`), and :func:`prove_segments` splits the sub-intervals it cannot prove at
their midpoints, evaluating the real margin there (a margin ``<= 0`` is a counterexample).

How each traced operation is bounded (what an operation computes decides, through
:mod:`connectivity.engine.exact`'s tracing and classification, never a class name alone):

* Affine operations are exact. Those whose linear part has entries of one sign per operand
  (reshapes, views, permutes, flatten, indexing, concatenation, sums and differences, average
  pooling, padding, ``mean``, negation, dropout in eval) are applied to the lower or the upper
  line of each operand, the sign read off the operation itself (one probe). Signed maps (linear,
  convolution, transposed convolution, batch norm in eval, products with one constant operand,
  division by a constant) are applied through their positive and negative parts ``A+``, ``A-``
  (parameters replaced by their positive / negative parts): ``lower = A+ L + A- U + c``,
  computed as ``A C - |A| R + c`` from the lines' centre and radius (:func:`_centre_radius`:
  two calls of the operation per line part, ``|W|`` kept per program; a layer whose output is
  a few pixels runs as its dense matrix, :func:`_dense`).
* Elementwise piecewise-linear operations (ReLU, LeakyReLU, ReLU6, Hardtanh, Hardsigmoid,
  clamp, abs: exact.py's kink operations) are written as ``f(k1) + s0 (x - k1) + sum_i d_i
  relu(x - k_i)``, slopes read off the operation at its kinks, each ReLU relaxed by CROWN's
  triangle over the input's range on ``[t0, t1]`` and composed with the input's lines (a line
  of a line is a line; a negative coefficient swaps lower and upper). Where no input crosses a
  kink the bounds are exact, so a piecewise-linear tail is proved exactly on a sub-interval
  where it is affine.
* Elementwise GELU (erf and tanh forms), SiLU, sigmoid, tanh, softplus (beta 1, threshold 20),
  hard-swish and exp go through :func:`_relax`: the chord and tangent lines of
  :func:`connectivity.engine.relaxations.relax` (CROWN's, with sound intercepts), or constant
  lines of the function's range where an input interval is not finite.
* Max pooling and pointwise ``max`` / ``min`` of two values: the max of lines is convex in ``t``,
  so its chord over ``[t0, t1]`` bounds it above (exact when one operand wins on the whole
  sub-interval); below, pools take the constant max of the window's lowest values, pairwise
  max the line of the operand that is larger at the midpoint (min: mirrored).
* Functions on part of the line and powers: ``reciprocal``, ``rsqrt``, ``sqrt``, ``log``,
  ``square`` (``h * h`` with one node twice, ``pow(h, 2)``, ``h ** 2``, ``square``) and
  ``pow`` with exponent 0.5, -1, -0.5, in function and method forms, through :func:`_relax`
  like the activations. A range leaving the domain (the reciprocal's touching 0; rsqrt and log
  at or below 0; sqrt below 0) gets the lines ``-inf``, ``+inf`` (:func:`_relax_on_domain`):
  the sub-interval's bound is ``-inf`` and branch and bound splits it, so a divisor that is
  truly 0 somewhere leaves its segment unproved (``"budget"`` or a counterexample), never
  proved; no error is raised, since a wide sub-interval's loose range may touch 0 where a
  narrower one does not.
* Products of two point-dependent values (``mul``, ``*``, ``matmul``, ``@``, ``mm``, ``bmm``,
  ``einsum``; broadcasting included): McCormick's planes over the operands' ranges on
  ``[t0, t1]`` (CROWN's bilinear bounds, Shi et al., "Robustness Verification for
  Transformers", ICLR 2020), one plane for all the terms of an output element, so that each
  bound is a few calls of the operation itself on lines and ranges (:func:`_mccormick`) and
  never the tensor of all products: attention's ``q @ k^T`` costs about 36 matmuls of the
  size of ``q @ k^T``, no ``L x L x d`` tensor. Of the two planes below (above) the one better
  at the sub-interval's midpoint is kept per output element. Divisions by a point-dependent
  value are products with its reciprocal (a constant numerator scales it).
* Softmax and log-softmax over a dimension (``F.softmax``, ``torch.softmax``,
  ``Tensor.softmax``, ``nn.Softmax``; the same for log-softmax): ``softmax_i = 1 / S_i``,
  ``log_softmax_i = -log S_i`` with ``S_i = sum_j exp(x_j - x_i)`` (shift invariant, the form
  of Shi et al. 2020 and DeepT, Bonaert et al., PLDI 2021): the differences' lines (the
  diagonal exactly 0), exp relaxed on their ranges, the sum, and the reciprocal (log) relaxed
  on ``S_i``'s range cut to the interval ``[sum_j exp(l_ij), sum_j exp(u_ij)]`` (so
  ``S_i >= 1``). Memory: ``n`` times the input's (``(N, ..., n, n)`` differences).
* LayerNorm and GroupNorm (``nn.LayerNorm``, ``F.layer_norm``, ``nn.GroupNorm``,
  ``F.group_norm``, with or without affine parts; ConvNeXt's LayerNorm2d is traced into as
  its permutes and ``F.layer_norm``): the centring ``x - mean x`` exactly (each output's
  coefficients have known signs), the biased variance as the mean of relaxed squares (its range
  cut to the interval range, at least 0), ``rsqrt(var + eps)`` relaxed on that range, the
  product by McCormick's planes, then the affine part by the weight's sign (Shi et al.'s
  decomposition). A zero ``eps`` whose variance range reaches 0 gives no bound (above).
* Intervals beside the lines: where an elementwise function's range is known (the activations',
  kink operations' and the functions above', over the input's range) it is kept with the
  lines, carried through copies and sums (:func:`_monotone`), and ranges are cut to it, so a
  square, ``exp`` or ``softplus(h) + c`` keeps its sign for the functions that need one.
* Tuples: ``chunk``, ``split`` and ``unbind`` give tuples of lines, ``getitem`` picks from
  them. torchvision's ``stochastic_depth`` with ``training=False`` (a torch.fx leaf) is a copy.

Sub-intervals and rows: each value holds the ``N`` sub-intervals in blocks of its first
dimension (``N`` rows, or ``N * k`` after ``flatten(0, 1)`` of ``(N, heads, ...)``, row ``r``
belonging to sub-interval ``r // k``). :func:`_check_rows` runs the float64 program on two
points together and alone once per program and refuses a tail with a value laid out otherwise
(or mixing the points of a batch), naming the node. A sub-interval whose lines meet a NaN on the
way (``0 * inf`` after an overflow of exp, a reciprocal's infinite lines) gets the bound
``-inf`` (:func:`_poisoned`): a NaN could otherwise turn into finite, wrong lines later (a ReLU
relaxes a NaN range as an inactive one).

Floating point: bounds are computed in float64 on a float64 copy of the tail, and after every
operation each bound is widened by :data:`RELATIVE_WIDENING` (1e-9) times the size of the
value's lines (``|lw| + |lb| + |uw| + |ub|``, for ``t`` in [0, 1]): float64 rounding of one
operation is some 1e-16 of the terms it sums, so this covers sums of up to ~10^6 terms whose
cancellation is below ~10^1 relative. Where an operation of this module may cancel more (the
centring of a normalisation, the differences of a softmax, a relaxation's line composed with
its input's lines, each call of a McCormick plane), the widening is 1e-9 times the absolute sum
of the terms instead (:func:`_widen_by`: for a product, ``op(|x|, |y|)`` of the operands'
line sizes and ranges, which bounds every term of every call). Interval floors and ceilings
computed from sums of exponentials or squares are moved out by the same relative 1e-9, as are
the kept intervals at every step; the range fed to ``rsqrt`` is ``(var + eps)`` scaled by
``1 -+ 1e-9``. Signed maps are widened besides by a bound of their rounding in any order of
summation, ``2 (n + 4) u`` times ``|A|`` of their operand's line sizes (:func:`_rounding`).
A sub-interval is proved only when its margin lower bound
exceeds :func:`connectivity.engine.exact.margin_tolerance` of the logits seen on its segment
(1,000 machine epsilons of the network's dtype times the largest absolute logit), the rule by
which the exact check leaves the network's own rounding (float32) undecided. A margin that
touches zero therefore ends ``"counterexample"`` or ``"budget"``, never ``"proved"``.
Counterexamples are the tail's own margins (the tail as given, in its dtype) at split points.

Attention: :func:`bound_program` given an example point first rewrites
``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, torchvision's Swin windows and
stochastic depth into the operations above (:func:`connectivity.engine.decompose.decompose`);
both drivers and ``certify`` checks pass one (:class:`connectivity.engine.checks.Certifier`).
Paths: :mod:`connectivity.engine.bound_paths` gathers the segments of polylines into the
drivers' checks and records (``certificate="bounds"``).
Triangles: :func:`margin_bounds` with ``radius`` bounds a box around the segment whose
half-width is affine in ``t`` (the input's lower and upper lines then differ, which every rule
above already handles); :mod:`connectivity.engine.bound_triangles` encloses each sub-triangle
in such a box (issue 22).

Not covered (these raise :class:`NotBoundedError` naming the operation): attention the rewrite
refuses (masks of ``nn.MultiheadAttention``, grouped-query attention), rolls and window
partitions with point-dependent indices, products with a third tensor operand (an ``einsum`` of
three), powers other than 2, 0.5, -1, -0.5, ELU, sin and other elementwise functions, bicubic
interpolation. Not done: tighter dedicated bounds of softmax and LayerNorm (the decompositions
here are sound but lose the correlation between numerator and denominator); bounds whose
intermediate ranges stay tight through many crossing ReLUs (a zonotope's noise symbols: on a
trained ResNet one kink crossed early makes every later range loose, see docs/certificates.md,
which is why ``certify="auto"`` proves piecewise-linear tails with ExactLine).
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from connectivity.engine.decompose import DecompositionError, decompose
from connectivity.engine.exact import (
    _CAST_METHODS,
    _DIVISION_FUNCTIONS,
    _DIVISION_METHODS,
    _EVAL_AFFINE_MODULES,
    _FACTORIES,
    _PRODUCT_FUNCTIONS,
    _PRODUCT_METHODS,
    _WEIGHTED_FUNCTIONS,
    AFFINE,
    FIXED,
    INPUT,
    KINK,
    NO_OP,
    OUTPUT,
    PAIR,
    POOL,
    SIZE,
    TOLERANCE_EPSILONS,
    NotPiecewiseLinearError,
    _argument,
    _assertion_nodes,
    _classify,
    _computes_as_library,
    _network,
    _nodes_in,
    _operation_name,
    _plain_division,
    _trace,
)
from connectivity.engine.relaxations import relax
from connectivity.engine.split import LayerError, floating_dtype

__all__ = [
    "RELATIVE_WIDENING",
    "BoundProgram",
    "NotBoundedError",
    "SegmentProof",
    "bound_program",
    "margin_bounds",
    "prove_segments",
]

RELATIVE_WIDENING = 1e-9
# Sub-intervals narrower than this get constant bounds in place of chords.
_NARROWEST_CHORD = 1e-6
SMOOTH = "smooth"
# Operations of two point-dependent values, and normalisations (this module's own kinds).
BILINEAR, QUOTIENT, SOFTMAX, NORM = "bilinear", "quotient", "softmax", "norm"
_SIGNED_MODULE, _SIGNED_FUNCTION, _PRODUCT, _DIVISION, _MONOTONE = (
    "signed module",
    "signed function",
    "product",
    "division",
    "monotone",
)
# Minimum of the unimodal activations (value at most the true minimum) and where it lies.
_MINIMA: dict[str, tuple[float, float]] = {
    "gelu": (-0.7517916, -0.1700),
    "gelu_tanh": (-0.7522, -0.1701),
    "silu": (-1.2784645, -0.2785),
    "hardswish": (-1.5, -0.375),
    "square": (0.0, 0.0),
}
_SMOOTH_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "exp": torch.exp,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "hardswish": F.hardswish,
    "square": torch.square,
}
# Defined on part of the line only: reciprocal off 0 (a negative range through 1/x = -1/(-x)),
# rsqrt and log above 0, sqrt from 0 (see _relax_on_domain).
_DOMAIN_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "reciprocal": torch.reciprocal,
    "rsqrt": torch.rsqrt,
    "sqrt": torch.sqrt,
    "log": torch.log,
}
_FUNCTIONS = {**_SMOOTH_FUNCTIONS, **_DOMAIN_FUNCTIONS}


class NotBoundedError(LayerError):
    """A tail holding an operation that bound propagation does not cover (yet), or that cannot
    be traced; the message names the operation."""


# ---------------------------------------------------------------------------------------------
# Relaxations of one elementwise function over an interval


def _relax(name: str, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lines ``a_lo x + b_lo <= f(x) <= a_hi x + b_hi`` for ``x`` in ``[lower, upper]``.

    ReLU: CROWN's triangle (Zhang et al. 2018, Section 3.2), lower slope 1 where ``upper >
    -lower`` else 0, in closed form (the hot path). Smooth names: the sound lines of
    :func:`connectivity.engine.relaxations.relax`; where a bound is not finite (an overflowed
    interval), constant lines of the function's range there.

    Args:
        name: ``"relu"`` or a key of :data:`_SMOOTH_FUNCTIONS`.
        lower, upper: Same-shaped tensors, ``lower <= upper`` up to rounding (crossed bounds are
            widened to their union, which is sound).

    Returns:
        ``(a_lo, b_lo, a_hi, b_hi)``, each shaped like ``lower``.

    Raises:
        NotBoundedError: an unknown name.
    """
    zero = torch.zeros_like(lower)
    if name in _DOMAIN_FUNCTIONS:
        return _relax_on_domain(name, lower, upper)
    if name == "relu":
        crossing = (lower < 0) & (upper > 0)
        width = torch.where(crossing, upper - lower, torch.ones_like(lower))
        slope = torch.where(crossing, upper / width, (lower >= 0).to(lower.dtype))
        a_lo = torch.where(crossing, (upper > -lower).to(lower.dtype), slope)
        return a_lo, zero, slope, torch.where(crossing, -lower * slope, zero)
    if name not in _SMOOTH_FUNCTIONS:
        raise NotBoundedError(f"no relaxation of {name!r}")
    lower, upper = torch.minimum(lower, upper), torch.maximum(lower, upper)
    finite = torch.isfinite(lower) & torch.isfinite(upper)
    if bool(finite.all()):
        return relax(name, lower, upper, search=False)
    lines = relax(
        name, torch.where(finite, lower, zero), torch.where(finite, upper, zero), search=False
    )
    ranges = _range_lines(name, lower, upper)
    return tuple(torch.where(finite, a, b) for a, b in zip(lines, ranges, strict=True))  # type: ignore[return-value]


def _relax_on_domain(
    name: str, lower: Tensor, upper: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_relax` of a function of :data:`_DOMAIN_FUNCTIONS` (reciprocal, rsqrt, sqrt, log).

    Where ``[lower, upper]`` leaves the function's domain (reciprocal: touches 0; rsqrt, log:
    reaches 0 or below; sqrt: goes below 0; or NaN) the lines are ``-inf`` and ``+inf``, which
    is sound: the sub-interval gets no margin bound and branch and bound splits it (a value
    truly at 0 keeps it unproved). A negative range of the reciprocal is relaxed as ``-1/s``
    on ``s = -x`` in ``[-upper, -lower]``: the lines of ``1/s`` swapped and negated.
    """
    lower, upper = torch.minimum(lower, upper), torch.maximum(lower, upper)
    negative = (upper < 0) if name == "reciprocal" else torch.zeros_like(lower, dtype=torch.bool)
    low, high = torch.where(negative, -upper, lower), torch.where(negative, -lower, upper)
    valid = (low >= 0) if name == "sqrt" else (low > 0)
    one = torch.ones_like(low)
    low, high = torch.where(valid, low, one), torch.where(valid, high, one)
    finite = torch.isfinite(low) & torch.isfinite(high)
    lines = relax(name, torch.where(finite, low, one), torch.where(finite, high, one))
    ranges = _range_lines(name, low, high)
    a_lo, b_lo, a_hi, b_hi = (torch.where(finite, a, b) for a, b in zip(lines, ranges, strict=True))
    a_lo, b_lo, a_hi, b_hi = (
        torch.where(negative, a_hi, a_lo),
        torch.where(negative, -b_hi, b_lo),
        torch.where(negative, a_lo, a_hi),
        torch.where(negative, -b_lo, b_hi),
    )
    zero, infinite = torch.zeros_like(low), torch.full_like(low, math.inf)
    return (
        torch.where(valid, a_lo, zero),
        torch.where(valid, b_lo, -infinite),
        torch.where(valid, a_hi, zero),
        torch.where(valid, b_hi, infinite),
    )


def _range_lines(name: str, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Constant lines: the range of a smooth function over ``[lower, upper]`` (monotone ones at
    the ends; those with one minimum, see :data:`_MINIMA`, also there)."""
    zero = torch.zeros_like(lower)
    function = _FUNCTIONS[name]
    at_lower, at_upper = function(lower), function(upper)
    low, high = torch.minimum(at_lower, at_upper), torch.maximum(at_lower, at_upper)
    if name in _MINIMA:  # decreasing then increasing: the maximum is at an end
        where, value = _MINIMA[name]
        holds = (lower <= where + 0.01) & (upper >= where - 0.01)
        low = torch.where(holds, torch.clamp(low, max=value), low)
    return zero, low, zero, high


# ---------------------------------------------------------------------------------------------
# Lines in t


@dataclass
class _Lines:
    """``lw * t + lb <= v(t) <= uw * t + ub``; each ``(N, *shape)``, ``N`` sub-intervals.
    ``low <= v(t) <= high`` on the sub-interval too where given (elementwise functions set
    their range there, copies and sums keep it): a square or an exponential is known to be
    positive even where its lower line dips below 0, which the domains of sqrt, rsqrt, log and
    the reciprocal need."""

    lw: Tensor
    lb: Tensor
    uw: Tensor
    ub: Tensor
    low: Tensor | None = None
    high: Tensor | None = None


def _column(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (``(N,)``, one per sub-interval) shaped to broadcast against ``like``, whose first
    dimension holds the sub-intervals in ``N`` blocks of ``k`` rows (``k > 1`` after, say,
    ``flatten(0, 1)`` of ``(N, heads, ...)``; :func:`_check_rows` saw that layout)."""
    rows = like.shape[0] if like.dim() else 1
    if rows != t.shape[0] and t.shape[0] and rows % t.shape[0] == 0:
        t = t.repeat_interleave(rows // t.shape[0])
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _range(lines: _Lines, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
    """Lowest lower and highest upper value on ``[t0, t1]`` (an affine function's extremes lie
    at the ends)."""
    a, b = _column(t0, lines.lb), _column(t1, lines.lb)
    low = torch.minimum(lines.lw * a + lines.lb, lines.lw * b + lines.lb)
    high = torch.maximum(lines.uw * a + lines.ub, lines.uw * b + lines.ub)
    if lines.low is not None and lines.high is not None:
        low, high = torch.maximum(low, lines.low), torch.minimum(high, lines.high)
    return low, high


def _widen(lines: _Lines) -> _Lines:
    # RELATIVE_WIDENING * (|lw| + |lb| + |uw| + |ub|), summed in that order; in place where
    # the parts have one shape (fewer temporaries), broadcast otherwise
    parts = (lines.lw, lines.lb, lines.uw, lines.ub)
    if all(p.shape == lines.lw.shape for p in parts):
        margin = lines.lw.abs().add_(lines.lb.abs()).add_(lines.uw.abs()).add_(lines.ub.abs())
        margin.mul_(RELATIVE_WIDENING)
    else:
        margin = RELATIVE_WIDENING * (
            parts[0].abs() + parts[1].abs() + parts[2].abs() + parts[3].abs()
        )
    low, high = lines.low, lines.high
    if low is not None and high is not None:  # float64 values of f or sums of a few of them
        low, high = low - RELATIVE_WIDENING * low.abs(), high + RELATIVE_WIDENING * high.abs()
    return _Lines(lines.lw, lines.lb - margin, lines.uw, lines.ub + margin, low, high)


def _function_range(name: str, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """The range of the elementwise function ``name`` over ``[low, high]`` (``-inf``,
    ``inf`` where the interval leaves its domain)."""
    _, least, _, most = _range_lines(name, low, high)
    if name in _DOMAIN_FUNCTIONS:
        if name == "reciprocal":
            valid = (low > 0) | (high < 0)
        else:
            valid = low >= 0 if name == "sqrt" else low > 0
        least = torch.where(valid, least, -math.inf)
        most = torch.where(valid, most, math.inf)
    return least.nan_to_num(nan=-math.inf), most.nan_to_num(nan=math.inf)


def _constant(value: Tensor) -> _Lines:
    zero = torch.zeros_like(value)
    return _Lines(zero, value, zero, value)


def _scaled(lines: _Lines, a_lo: Tensor, b_lo: Tensor, a_hi: Tensor, b_hi: Tensor) -> _Lines:
    """``a_lo x + b_lo`` (below) and ``a_hi x + b_hi`` (above) of ``x`` bounded by ``lines``:
    a negative slope takes the other line."""
    lo_pos, lo_neg = a_lo.clamp(min=0), a_lo.clamp(max=0)
    hi_pos, hi_neg = a_hi.clamp(min=0), a_hi.clamp(max=0)
    return _Lines(
        lo_pos * lines.lw + lo_neg * lines.uw,
        lo_pos * lines.lb + lo_neg * lines.ub + b_lo,
        hi_pos * lines.uw + hi_neg * lines.lw,
        hi_pos * lines.ub + hi_neg * lines.lb + b_hi,
    )


def _sum(first: _Lines, second: _Lines) -> _Lines:
    return _Lines(
        first.lw + second.lw, first.lb + second.lb, first.uw + second.uw, first.ub + second.ub
    )


# ---------------------------------------------------------------------------------------------
# The program


@dataclass
class _Step:
    node: fx.Node
    kind: str
    kinks: tuple[float, ...] = ()
    rule: str = ""  # the affine rule, the smooth function's name, or the pair's "max" / "min"
    # What propagation keeps between calls (a layer's |weight| and offset; see _signed).
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class BoundProgram:
    """A tail traced for bound propagation (see :func:`bound_program`): a float64 copy of it
    (``module``), what each node does (``steps``), and the tail as given (``tail``, for the
    real margins at split points)."""

    module: fx.GraphModule
    steps: list[_Step]
    tail: nn.Module
    # Whether every point-dependent value was seen to keep the points of a batch apart, in
    # blocks of its first dimension (_check_rows); checked once, at the first bound.
    rows_checked: bool = False
    # Whether the program was seen to give the tail's own logits, each point alone
    # (_check_points_apart); checked once, on the first segment proved.
    points_checked: bool = False
    # Per step, the nodes whose value no later step reads (freed after it: a propagation of
    # many sub-intervals holds four lines per value, so the whole tail's would not fit).
    frees: list[list[fx.Node]] = field(default_factory=list)


def bound_program(tail: nn.Module, example: Tensor | None = None) -> BoundProgram:
    """Trace ``tail`` (a copy, in float64) for :func:`margin_bounds` and :func:`prove_segments`.

    Args:
        tail: Maps points ``(B, *point_shape)`` to logits ``(B, classes)``; a ``FrozenTail`` is
            unwrapped for tracing. Must be in eval mode.
        example: Points ``(B, *point_shape)`` of the tail's space. With them, attention
            (``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, torchvision's Swin
            windows) is first rewritten into primitive operations specialised to their shapes
            (:func:`connectivity.engine.decompose.decompose`); without them a tail holding
            attention is refused.

    Raises:
        NotBoundedError: the tail cannot be traced, is in training mode, or holds an operation
            bound propagation does not cover (see the module docstring), or its attention cannot
            be rewritten; the message names it.
    """
    network = _network(tail)
    if any(isinstance(m, _EVAL_AFFINE_MODULES) and m.training for m in network.modules()):
        raise NotBoundedError(
            "the tail is in training mode: batch norm and dropout are bounded in eval mode only"
        )
    if example is not None:
        dtype = floating_dtype(network) or example.dtype
        device = next(iter(network.parameters()), example).device
        try:
            with torch.no_grad():
                network = decompose(network, example.detach().to(device, dtype))
        except DecompositionError as error:
            raise NotBoundedError(str(error)) from error
    try:
        module = _trace(network)
    except NotPiecewiseLinearError as error:
        raise NotBoundedError(str(error).replace("the exact check", "bounds")) from error
    module = module.double()
    steps = _steps(module)
    return BoundProgram(module, steps, tail, frees=_last_uses(steps))


def _last_uses(steps: list[_Step]) -> list[list[fx.Node]]:
    """For each step, the nodes it is the last reader of."""
    last: dict[fx.Node, int] = {}
    for i, step in enumerate(steps):
        for node in step.node.all_input_nodes:
            last[node] = i
    frees: list[list[fx.Node]] = [[] for _ in steps]
    for node, i in last.items():
        frees[i].append(node)
    return frees


def _steps(module: fx.GraphModule) -> list[_Step]:
    """What each node does to the lines (exact.py's classification, plus smooth activations)."""
    nodes = list(module.graph.nodes)
    no_ops = _assertion_nodes(nodes)
    depends: dict[fx.Node, bool] = {}
    sizes: set[fx.Node] = set()
    steps: list[_Step] = []
    position = {node: i for i, node in enumerate(nodes)}
    for node in nodes:
        inputs = node.all_input_nodes
        depends[node] = node.op == "placeholder" or any(depends[n] for n in inputs)
        written = node.args[0] if _in_place(node) and node.args else None
        if isinstance(written, fx.Node) and any(
            position[user] > position[node] for user in written.users
        ):
            raise NotBoundedError(
                f"{_operation_name(node, module)} (node {node.name}) writes in place into a "
                "value read later, which bound propagation does not follow"
            )
        if node.op == "placeholder":
            if steps:
                raise NotBoundedError("the tail takes more than one input")
            steps.append(_Step(node, INPUT))
        elif node.op == "output":
            steps.append(_Step(node, OUTPUT))
        elif node in no_ops:
            steps.append(_Step(node, NO_OP))
        elif not depends[node]:
            steps.append(_Step(node, FIXED))
        else:
            steps.append(_dependent_step(node, module, depends, sizes))
    return steps


def _dependent_step(
    node: fx.Node, module: fx.GraphModule, depends: dict[fx.Node, bool], sizes: set[fx.Node]
) -> _Step:
    inputs = node.all_input_nodes
    on_sizes = all(n in sizes for n in inputs if depends[n])
    made = node.op == "call_function" and node.target in _FACTORIES
    cast = node.op == "call_method" and str(node.target) in _CAST_METHODS
    if (made or cast) and on_sizes:
        depends[node] = False
        return _Step(node, FIXED)
    python = getattr(node.target, "__module__", None) in ("_operator", "operator", "builtins")
    if node.op == "call_function" and on_sizes and python:
        sizes.add(node)
        return _Step(node, SIZE)
    smooth = _smooth_name(node, module)
    dependent = [n for n in inputs if depends[n] and n not in sizes]
    if smooth is not None and len(dependent) == 1 and node.args and node.args[0] is dependent[0]:
        return _Step(node, SMOOTH, rule=smooth)
    own = _nonlinear_step(node, module, depends, sizes)
    if own is not None:
        return own
    try:
        step = _classify(node, module, depends, sizes)
    except NotPiecewiseLinearError as error:
        raise NotBoundedError(
            f"bound propagation does not cover {_operation_name(node, module)} (node "
            f"{node.name}) in this slice"
        ) from error
    if step.kind == SIZE:
        sizes.add(node)
    rule = step.pair if step.kind == PAIR else ""
    if step.kind == AFFINE:
        rule = _affine_rule(node, module)
    return _Step(node, step.kind, step.kinks, rule)


def _smooth_name(node: fx.Node, root: nn.Module) -> str | None:
    """The :func:`_relax` name of a smooth elementwise activation node, else None."""
    if node.op == "call_module":
        m = root.get_submodule(str(node.target))
        if not _computes_as_library(m):
            return None
        if isinstance(m, nn.GELU):
            return "gelu_tanh" if m.approximate == "tanh" else "gelu"
        if isinstance(m, nn.Softplus):
            return "softplus" if (m.beta, m.threshold) == (1.0, 20.0) else None
        kinds = {nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardswish: "hardswish"}
        return next((name for cls, name in kinds.items() if isinstance(m, cls)), None)
    if node.op == "call_method":
        name = str(node.target)
        if name in ("pow", "__pow__"):
            return _power_name(node)
        if name in ("mul", "__mul__") and _same_operands(node):
            return "square"
        return _METHOD_FUNCTIONS.get(name)
    if node.op != "call_function":
        return None
    if node.target in (torch.pow, operator.pow):
        return _power_name(node)
    if node.target in (operator.mul, torch.mul) and _same_operands(node):
        return "square"
    if node.target is F.gelu:
        tanh = _argument(node, 1, "approximate", "none") == "tanh"
        return "gelu_tanh" if tanh else "gelu"
    if node.target is F.softplus:
        plain = (_argument(node, 1, "beta", 1.0), _argument(node, 2, "threshold", 20.0))
        return "softplus" if plain == (1.0, 20.0) else None
    functions: dict[Any, str] = {
        F.silu: "silu",
        torch.sigmoid: "sigmoid",
        F.sigmoid: "sigmoid",
        torch.tanh: "tanh",
        F.tanh: "tanh",
        F.hardswish: "hardswish",
        torch.exp: "exp",
        torch.square: "square",
        torch.reciprocal: "reciprocal",
        torch.rsqrt: "rsqrt",
        torch.sqrt: "sqrt",
        torch.log: "log",
    }
    return functions.get(node.target)


_METHOD_FUNCTIONS = {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "exp": "exp",
    "square": "square",
    "reciprocal": "reciprocal",
    "rsqrt": "rsqrt",
    "sqrt": "sqrt",
    "log": "log",
}
# Exponents (numbers) whose power is one of the relaxed functions.
_POWERS = {2: "square", 0.5: "sqrt", -1: "reciprocal", -0.5: "rsqrt"}


def _power_name(node: fx.Node) -> str | None:
    """``x ** p`` with a number ``p`` of :data:`_POWERS` (elementwise), else None."""
    exponent = _argument(node, 1, "exponent", None)
    if isinstance(exponent, bool) or not isinstance(exponent, int | float):
        return None
    return _POWERS.get(exponent)


def _same_operands(node: fx.Node) -> bool:
    """``h * h``: both operands the same node (a square, tighter than a product's bound)."""
    operands = [*node.args, *node.kwargs.values()]
    return len(operands) == 2 and isinstance(operands[0], fx.Node) and operands[0] is operands[1]


_SOFTMAX_FUNCTIONS: dict[Any, str] = {
    F.softmax: SOFTMAX,
    torch.softmax: SOFTMAX,
    F.log_softmax: "log_softmax",
    torch.log_softmax: "log_softmax",
}
_SOFTMAX_METHODS = {"softmax": SOFTMAX, "log_softmax": "log_softmax"}
_BILINEAR_METHODS = {"mul", "__mul__", "__rmul__", "matmul", "__matmul__", "mm", "bmm"}
_QUOTIENT_METHODS = {"div", "__truediv__"}


def _eval_stochastic_depth(node: fx.Node) -> bool:
    """torchvision's ``stochastic_depth`` (a leaf of torch.fx, ``torch.fx.wrap``-ed) called with
    ``training=False``: it returns its input (torchvision.ops.stochastic_depth's first line), so
    it is a copy. The function is recognised by identity, not by name."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    function = getattr(module, "stochastic_depth", None)
    if function is None or node.op != "call_function" or node.target is not function:
        return False
    return _argument(node, 3, "training", True) is False


def _nonlinear_step(
    node: fx.Node, root: nn.Module, depends: dict[fx.Node, bool], sizes: set[fx.Node]
) -> _Step | None:
    """This module's own kinds (beyond exact.py's classification): softmax / log-softmax,
    LayerNorm / GroupNorm, products of two point-dependent values (``mul``, ``matmul``,
    ``bmm``, ``einsum``...), divisions by a point-dependent value, ``unbind``; None for any
    other node. As in exact.py, what decides is the operation and how many of its operands
    depend on the point, counted by position."""
    nodes = _nodes_in([node.args, node.kwargs])
    values = [n for n in nodes if depends[n] and n not in sizes]
    if any(depends[n] and n in sizes for n in nodes):
        return None  # arithmetic with the batch's size: not these operations
    target = node.target
    method = str(target) if node.op == "call_method" else None
    if node.op == "call_module":
        m = root.get_submodule(str(target))
        if len(values) != 1 or not _computes_as_library(m):
            return None
        kinds = {nn.Softmax: SOFTMAX, nn.LogSoftmax: "log_softmax"}
        kinds |= {nn.LayerNorm: "layer", nn.GroupNorm: "group"}
        kind = next((k for cls, k in kinds.items() if isinstance(m, cls)), None)
        if kind in (SOFTMAX, "log_softmax") and getattr(m, "dim", None) is not None:
            return _Step(node, SOFTMAX, rule=kind)
        return _Step(node, NORM, rule=kind) if kind in ("layer", "group") else None
    if node.op not in ("call_function", "call_method"):
        return None
    first = node.args[0] if node.args else None
    if target in _SOFTMAX_FUNCTIONS or method in _SOFTMAX_METHODS:
        kind = _SOFTMAX_FUNCTIONS.get(target) or _SOFTMAX_METHODS[str(method)]
        fine = (
            len(values) == 1 and first is values[0] and _argument(node, 1, "dim", None) is not None
        )
        return _Step(node, SOFTMAX, rule=kind) if fine else None
    if target in (F.layer_norm, F.group_norm):
        fine = len(values) == 1 and first is values[0]
        return (
            _Step(node, NORM, rule="layer" if target is F.layer_norm else "group") if fine else None
        )
    if _eval_stochastic_depth(node):
        return (
            _Step(node, AFFINE, rule=_MONOTONE) if len(values) == 1 and first is values[0] else None
        )
    if target is torch.unbind or method == "unbind":
        return (
            _Step(node, AFFINE, rule=_MONOTONE) if len(values) == 1 and first is values[0] else None
        )
    bilinear = target in _PRODUCT_FUNCTIONS or method in _BILINEAR_METHODS
    if bilinear and target is not operator.imul and len(values) == 2 and len(nodes) == 2:
        return _Step(node, BILINEAR)
    division = target in (operator.truediv, torch.div) or method in _QUOTIENT_METHODS
    divisor = _argument(node, 1, "other", None)
    if division and _plain_division(node) and isinstance(divisor, fx.Node) and divisor in values:
        numerator = node.args[0] if node.args else node.kwargs.get("input")
        if numerator is not divisor and len(nodes) <= 2:
            return _Step(node, QUOTIENT)
    return None


_SIGNED_FUNCTIONS: set[Any] = {*_WEIGHTED_FUNCTIONS, F.batch_norm}
_MODULE_PARAMETERS = {"weight", "bias"}
_MODULE_BUFFERS = {"running_mean", "running_var", "num_batches_tracked"}


def _affine_rule(node: fx.Node, root: nn.Module) -> str:
    """How an affine node (exact.py's AFFINE) is applied to lines; refuses bicubic resizing
    (an average with negative weights) and layers with parameters other than weight / bias."""
    name = _operation_name(node, root)
    if node.op == "call_module":
        m = root.get_submodule(str(node.target))
        if getattr(m, "mode", None) == "bicubic":
            raise NotBoundedError(f"bound propagation does not cover bicubic {name}")
        parameters = {n for n, _ in m.named_parameters()}
        buffers = {n for n, _ in m.named_buffers()}
        if not parameters and not buffers:
            return _MONOTONE
        if parameters <= _MODULE_PARAMETERS and buffers <= _MODULE_BUFFERS:
            return _SIGNED_MODULE
        raise NotBoundedError(f"bound propagation does not cover {name} (its parameters)")
    target = node.target if node.op == "call_function" else str(node.target)
    if target is F.interpolate and _argument(node, 3, "mode", "nearest") == "bicubic":
        raise NotBoundedError(f"bound propagation does not cover bicubic {name}")
    if node.op == "call_function" and target in _SIGNED_FUNCTIONS:
        return _SIGNED_FUNCTION
    if target in _PRODUCT_FUNCTIONS or (node.op == "call_method" and target in _PRODUCT_METHODS):
        return _PRODUCT
    if target in _DIVISION_FUNCTIONS or (node.op == "call_method" and target in _DIVISION_METHODS):
        return _DIVISION
    return _MONOTONE


# ---------------------------------------------------------------------------------------------
# Running the program on lines


_IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _in_place(node: fx.Node) -> bool:
    """An in-place arithmetic operation (``h += g``, ``h.mul_(2)``): it writes its first
    operand."""
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    return node.op == "call_function" and node.target in _IN_PLACE


def _call(node: fx.Node, root: nn.Module, pick: Callable[[fx.Node], Any]) -> Any:
    """Run one node with each argument node replaced by ``pick(node)``."""
    args = fx.node.map_arg(node.args, pick)
    kwargs = fx.node.map_arg(node.kwargs, pick)
    if _in_place(node) and args and isinstance(args[0], Tensor):
        args = (args[0].clone(), *args[1:])  # never write into the values being bounded
    if node.op == "call_module":
        return root.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _picker(values: dict[fx.Node, Any], choose: Callable[[fx.Node, _Lines], Any]) -> Any:
    def pick(n: fx.Node) -> Any:
        value = values[n]
        return choose(n, value) if isinstance(value, _Lines) else value

    return pick


def _fixed(node: fx.Node, root: nn.Module, values: dict[fx.Node, Any]) -> Any:
    if node.op == "get_attr":
        return fx.graph_module._get_attr(root, str(node.target))  # type: ignore[attr-defined]
    return _call(node, root, lambda n: values[n])


def _operands(node: fx.Node, values: dict[fx.Node, Any]) -> list[fx.Node]:
    """The argument nodes holding lines, in order, once each (``view_as(y)`` reads only the
    shape of ``y``, so only its first operand counts)."""
    found: list[fx.Node] = []
    for n in node.all_input_nodes:
        if isinstance(values[n], _Lines) and n not in found:
            found.append(n)
    if node.op == "call_method" and str(node.target).endswith("_as"):
        found = found[:1]
    return found


def _monotone(node: fx.Node, root: nn.Module, values: dict[fx.Node, Any]) -> Any:
    """An affine operation whose linear part has entries of one sign per operand (copies,
    averages, sums, differences, negation): each operand's sign is read off the operation
    (one operand set to ones, the others to zeros), and each bound takes the matching line.
    Operations giving several tensors (``chunk``, ``split``, ``unbind``) give a tuple of
    lines."""
    operands = _operands(node, values)
    if not operands:  # point-dependent through sizes only: a constant of the batch's shape
        return _each(_call(node, root, _picker(values, lambda n, v: v.lb)), _constant)

    def run(choose: Callable[[fx.Node, _Lines], Tensor]) -> list[Tensor]:
        pick = _picker(values, lambda n, v: choose(n, v) if n in operands else v.lb)
        out = _call(node, root, pick)
        return list(out) if isinstance(out, tuple | list) else [out]

    zero = run(lambda n, v: torch.zeros_like(v.lb))
    rising: dict[fx.Node, bool] = {}
    for operand in operands:
        probes = run(
            lambda n, v, o=operand: torch.ones_like(v.lb) if n is o else torch.zeros_like(v.lb)
        )
        if all(bool((p - z >= 0).all()) for p, z in zip(probes, zero, strict=True)):
            rising[operand] = True
        elif all(bool((p - z <= 0).all()) for p, z in zip(probes, zero, strict=True)):
            rising[operand] = False
        else:
            raise NotBoundedError(
                f"{_operation_name(node, root)} (node {node.name}) mixes signs in one operand"
            )
    lb = run(lambda n, v: v.lb if rising[n] else v.ub)
    ub = run(lambda n, v: v.ub if rising[n] else v.lb)
    lw = run(lambda n, v: v.lw if rising[n] else v.uw)
    uw = run(lambda n, v: v.uw if rising[n] else v.lw)
    parts = [_Lines(lw[i] - zero[i], lb[i], uw[i] - zero[i], ub[i]) for i in range(len(zero))]
    if all(values[o].low is not None and values[o].high is not None for o in operands):
        _keep_intervals(parts, run, rising, zero)
    sample = _call(node, root, _picker(values, lambda n, v: v.lb))
    return tuple(parts) if isinstance(sample, tuple | list) else parts[0]


def _keep_intervals(
    parts: list[_Lines],
    run: Callable[[Callable[[fx.Node, _Lines], Tensor]], list[Tensor]],
    rising: dict[fx.Node, bool],
    zero: list[Tensor],
) -> None:
    """The intervals of a monotone affine operation's outputs from its operands' intervals
    (each operand's low or high by its sign), moved out by :data:`RELATIVE_WIDENING` times
    the absolute sum of the terms (``run`` on the operands' magnitudes, signed, less the
    offset ``zero``): float64 rounding of a sum of ``n`` terms is at most ``n * 1.1e-16`` of
    that."""
    least = run(lambda n, v: v.low if rising[n] else v.high)
    most = run(lambda n, v: v.high if rising[n] else v.low)
    terms = run(
        lambda n, v: torch.maximum(v.low.abs(), v.high.abs()) * (1.0 if rising[n] else -1.0)
    )
    for part, low, high, size, offset in zip(parts, least, most, terms, zero, strict=True):
        slack = RELATIVE_WIDENING * ((size - offset).abs() + offset.abs())
        part.low, part.high = low - slack, high + slack


def _each(value: Any, function: Callable[[Any], Any]) -> Any:
    """``function`` of a value or of each item of a tuple / list of values."""
    if isinstance(value, tuple | list):
        return tuple(function(v) for v in value)
    return function(value)


def _picks_from_tuple(node: fx.Node, values: dict[fx.Node, Any]) -> bool:
    """``getitem`` of a tuple of lines (the output of ``chunk``, ``split``, ``unbind``)."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return False
    source = node.args[0]
    return (
        isinstance(source, fx.Node)
        and isinstance(values.get(source), tuple)
        and isinstance(node.args[1], int)
    )


_Operator = Callable[[Tensor], Tensor]


def _absolute(step: _Step, weight: Tensor) -> Tensor:
    """``|weight|``, kept in ``step.cache`` while ``weight`` is the same tensor, unmodified (a
    program's parameters are fixed, so each layer takes it once; a weight computed anew at
    every propagation is taken anew)."""
    kept = step.cache.get("absolute")
    if kept is not None and kept[0] is weight and kept[1] == weight._version:
        return kept[2]
    absolute = weight.abs()
    step.cache["absolute"] = (weight, weight._version, absolute)
    return absolute


def _signed_parts(
    node: fx.Node, step: _Step, root: nn.Module, values: dict[fx.Node, Any]
) -> tuple[_Operator, _Operator, bool]:
    """The linear part ``A`` of a signed affine node and its entrywise absolute value ``|A|``
    (``A+ - A-``), as functions of its point-dependent operand (no offset), and whether they
    may take the rows of several line parts stacked along the first dimension (true of layers
    and weighted functions, whose other operands are parameters)."""
    (operand,) = _operands(node, values)

    def with_input(x: Tensor, overrides: dict[tuple[int, str], Any]) -> Tensor:
        args = list(fx.node.map_arg(node.args, lambda n: x if n is operand else values[n]))
        kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: x if n is operand else values[n]))
        for (index, name), value in overrides.items():
            if len(args) > index:
                args[index] = value
            else:
                kwargs[name] = value
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return node.target(*args, **kwargs)  # type: ignore[operator]

    if step.rule == _SIGNED_MODULE:
        return (*_module_parts(root.get_submodule(str(node.target)), step), True)
    stack = node.args[:1] == (operand,)
    if step.rule == _SIGNED_FUNCTION and node.target is F.batch_norm:
        mean = values[node.args[1]] if isinstance(node.args[1], fx.Node) else node.args[1]
        weight = _argument(node, 3, "weight", None)
        weight = values[weight] if isinstance(weight, fx.Node) else weight
        fixed = {(1, "running_mean"): torch.zeros_like(mean), (4, "bias"): None}
        if weight is None:  # a positive scale, 1 / sqrt(var + eps): A = |A|
            return (lambda x: with_input(x, fixed)), (lambda x: with_input(x, fixed)), stack
        absolute = _absolute(step, weight)
        return (
            lambda x: with_input(x, {**fixed, (3, "weight"): weight}),
            lambda x: with_input(x, {**fixed, (3, "weight"): absolute}),
            stack,
        )
    if step.rule == _SIGNED_FUNCTION:
        weight = _argument(node, 1, "weight", None)
        weight = values[weight] if isinstance(weight, fx.Node) else weight
        absolute = _absolute(step, weight)
        return (
            lambda x: with_input(x, {(1, "weight"): weight, (2, "bias"): None}),
            lambda x: with_input(x, {(1, "weight"): absolute, (2, "bias"): None}),
            stack,
        )
    return (*_product_parts(node, operand, root, values), False)


# A layer whose matrix (one row of its input to one row of its output) has at most this many
# entries, this share of them nonzero or more, is applied as that matrix (see _dense).
_DENSE_ENTRIES = 2**21
_DENSE_SHARE = 0.5


def _dense(
    step: _Step,
    run: Callable[[Tensor, Tensor], Tensor],
    weight: Tensor,
    shape: tuple[int, ...],
) -> tuple[Tensor, Tensor, tuple[int, ...]] | None:
    """The matrix ``M`` (``(n_in, n_out)``) of a layer on rows of ``shape``, ``|M|`` and the
    output row's shape, or None where a matrix product would not pay: a convolution whose
    output is a few pixels (ResNet's last stages) runs as many small products of mostly
    padding, where one product with its (dense) matrix costs 10 to 100 times less. ``M`` is
    read off the layer itself, run on the ``n_in`` unit rows (each entry a single term ``w *
    1``, exact), once per input shape, and kept in ``step.cache`` with the weight it was read
    from. Only layers of at most :data:`_DENSE_ENTRIES` entries with at least
    :data:`_DENSE_SHARE` of them nonzero (counted first as the layer with a weight of ones on
    a row of ones) are taken: the product sums the zeros too. ``|M|`` is the matrix's own
    absolute value (a single term per entry: ``|W|``'s entries)."""
    key = ("dense", shape, weight.device)
    kept = step.cache.get(key)
    if kept is not None and kept[0] is weight and kept[1] == weight._version:
        return kept[2]
    n_in = math.prod(shape)
    ones = weight.new_ones(1, *shape)
    counts = run(ones, torch.ones_like(weight))
    entries = n_in * counts.numel()
    dense = None
    if entries <= _DENSE_ENTRIES and float(counts.sum()) >= _DENSE_SHARE * entries:
        basis = torch.eye(n_in, dtype=weight.dtype, device=weight.device).view(n_in, *shape)
        matrix = run(basis, weight).reshape(n_in, -1)
        dense = (matrix, matrix.abs(), tuple(counts.shape[1:]))
    step.cache[key] = (weight, weight._version, dense)
    return dense


def _module_parts(module: nn.Module, step: _Step) -> tuple[_Operator, _Operator]:
    """A layer with a signed weight (linear, convolution, batch norm): ``A`` (the weight, no
    bias, zero running mean) and ``|A|`` (the weight's absolute value, cached in ``step``);
    batch norm's scale ``weight / sqrt(var + eps)`` has the weight's sign, so ``|A|`` is the
    layer with ``|weight|`` there too. Small layers run as their matrix (:func:`_dense`)."""
    state = dict(module.named_parameters())
    state.update(dict(module.named_buffers()))
    base: dict[str, Any] = {}
    if "bias" in state:
        base["bias"] = torch.zeros_like(state["bias"])
    if "running_mean" in state:
        base["running_mean"] = torch.zeros_like(state["running_mean"])
    weight = state.get("weight")

    def run(x: Tensor, w: Tensor | None) -> Tensor:
        swapped = {**base, "weight": w} if w is not None else base
        return torch.func.functional_call(module, swapped, (x,))

    if weight is None:  # batch norm without affine weight: a positive scale, A = |A|
        return (lambda x: run(x, None)), (lambda x: run(x, None))
    absolute = _absolute(step, weight)

    def part(x: Tensor, which: int) -> Tensor:
        dense = _dense(step, run, weight, tuple(x.shape[1:]))
        if dense is None:
            return run(x, absolute if which else weight)
        rows = x.reshape(x.shape[0], dense[which].shape[0])
        return (rows @ dense[which]).view(x.shape[0], *dense[2])

    return (lambda x: part(x, 0)), (lambda x: part(x, 1))


def _product_parts(
    node: fx.Node,
    operand: fx.Node,
    root: nn.Module,
    values: dict[fx.Node, Any],
) -> tuple[_Operator, _Operator]:
    """A product with constants (one constant tensor at most, numbers) or a division by a
    constant: ``A`` (the operation itself) and ``|A|`` (the constant tensor replaced by its
    absolute value, negated for a negative product of the numbers); a division is a product
    with the reciprocal.

    Raises:
        NotBoundedError: two constant tensors, or numbers in an operation other than ``mul``.
    """
    name = f"{_operation_name(node, root)} (node {node.name})"
    if node.target in _DIVISION_FUNCTIONS or str(node.target) in _DIVISION_METHODS:
        divisor = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        divisor = values[divisor] if isinstance(divisor, fx.Node) else divisor
        reciprocal = 1.0 / torch.as_tensor(divisor, dtype=torch.float64)
        return (
            lambda x: x * reciprocal.to(x.device),
            lambda x: x * reciprocal.abs().to(x.device),
        )
    leaves = fx.node.map_aggregate([node.args, node.kwargs], lambda v: v)
    flat: list[Any] = []
    fx.node.map_aggregate(leaves, lambda v: flat.append(v))
    numbers = [v for v in flat if isinstance(v, int | float) and not isinstance(v, bool)]
    constants = [
        v
        for v in flat
        if isinstance(v, fx.Node) and v is not operand and isinstance(values[v], Tensor)
    ]
    if len(constants) > 1 or (
        numbers
        and str(node.target) not in ("mul", "mul_", "__mul__", "__rmul__")
        and node.target not in (operator.mul, operator.imul, torch.mul)
    ):
        raise NotBoundedError(f"bound propagation does not cover {name} (its constants)")
    sign = 1.0 if (math.prod(numbers) if numbers else 1.0) >= 0 else -1.0

    def part(x: Tensor, replacement: Tensor | None) -> Tensor:
        return _call(
            node,
            root,
            lambda n: x if n is operand else (replacement if n is constant else values[n]),
        )

    constant = constants[0] if constants else None
    tensor = values[constant] if constant is not None else None
    absolute = tensor.abs() if tensor is not None else None
    return (lambda x: part(x, tensor)), (lambda x: sign * part(x, absolute))


def _centre_radius(
    x: _Lines,
    apply: _Operator,
    absolute: _Operator,
    stack: bool,
    widening: float,
    offset: Tensor | None = None,
) -> _Lines:
    """``A x + c`` for ``x`` between its lines ``L``, ``U``, through the centre ``C = (L + U) /
    2`` and radius ``R = (U - L) / 2`` of the lines (slopes and intercepts each): ``A C -+ |A|
    R``, which equals ``A+ L + A- U`` and ``A+ U + A- L`` (``A = A+ + A-``, ``|A| = A+ - A-``;
    the midpoint-radius form of interval arithmetic), so two calls of the operation per line
    part (``A`` on the centre, ``|A|`` on the radius) in place of four. With ``stack`` the
    slopes' and intercepts' rows go through each call together (``(2 N, ...)``). ``offset``
    (``c``, broadcast against the output) is added to the intercepts' centre.

    Both intercepts move out by ``widening * |A| M``, ``M = |C_w| + |R_w| + |C_b| + |R_b|``
    (for ``t`` in [0, 1] this covers the slopes' errors too), folded into the radius' call as
    ``|A| (R_b + widening M)``; :func:`_rounding` gives a ``widening`` that covers the
    rounding of this form.
    """
    if not stack:
        cw, cb = (x.lw + x.uw) / 2, (x.lb + x.ub) / 2
        rw, rb = (x.uw - x.lw) / 2, (x.ub - x.lb) / 2
        if widening:
            rb = rb + widening * (cw.abs() + rw.abs() + cb.abs() + rb.abs())
        aw, ab, pw, pb = apply(cw), apply(cb), absolute(rw), absolute(rb)
        if offset is not None:
            ab = ab + offset
        return _Lines(aw - pw, ab - pb, aw + pw, ab + pb)
    rows = x.lw.shape[0]
    lower, upper = torch.cat([x.lw, x.lb]), torch.cat([x.uw, x.ub])
    centre = torch.add(lower, upper).mul_(0.5)  # halving is exact: no rounding of its own
    radius = torch.sub(upper, lower).mul_(0.5)
    if widening:
        size = centre.abs().add_(radius.abs())
        radius[rows:].add_(size[:rows] + size[rows:], alpha=widening)
    middle, spread = apply(centre), absolute(radius)  # new tensors: written in place below
    if offset is not None:
        middle[rows:] += offset
    low, high = middle - spread, middle.add_(spread)
    return _Lines(low[:rows], low[rows:], high[:rows], high[rows:])


def _rounding(n: int) -> float:
    """The relative widening, of ``|A| M`` (:func:`_centre_radius`), that covers the float64
    rounding of the centre-radius form on rows of ``n`` elements: a linear map of such a row
    sums at most ``n`` nonzero products per output, computed to within ``gamma_n |A| |v|`` in
    any order of summation (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed.,
    3.1, ``gamma_n = n u / (1 - n u)``, ``u = 2^-53``); the centre and radius are within ``u``
    of theirs (the halving is exact), the fold and the final sum add ``u`` of ``|A| M`` each, so
    ``(n + 4) u`` (plus second-order terms) bounds the error of each bound; twice that is used.
    The output's own rounding (the offset's sum) is :func:`_widen`'s, after every operation."""
    return 2.0 * (n + 4) * 2.0**-53


def _signed(node: fx.Node, step: _Step, root: nn.Module, values: dict[fx.Node, Any]) -> _Lines:
    """``lower = A+ L + A- U + c``, ``upper = A+ U + A- L + c`` with ``c`` the value at zero,
    computed in :func:`_centre_radius`'s form, widened by :func:`_rounding`. A layer's ``c``
    (its bias, less batch norm's scaled running mean) is the same for every row: it is taken
    once per input shape, on one row, and kept in ``step.cache``."""
    (operand,) = _operands(node, values)
    x: _Lines = values[operand]
    apply, absolute, stack = _signed_parts(node, step, root, values)
    widening = _rounding(math.prod(x.lb.shape[1:]))
    if step.rule == _SIGNED_MODULE:
        key = ("offset", tuple(x.lb.shape[1:]), x.lb.device)
        offset = step.cache.get(key)
        if offset is None:
            zero = x.lb.new_zeros(1, *x.lb.shape[1:])
            offset = step.cache[key] = root.get_submodule(str(node.target))(zero)
    else:
        zeros = lambda n, v: torch.zeros_like(v.lb) if n is operand else v.lb  # noqa: E731
        offset = _call(node, root, _picker(values, zeros))
    return _centre_radius(x, apply, absolute, stack, widening, offset)


def _kink(
    node: fx.Node, step: _Step, root: nn.Module, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor
) -> _Lines:
    """An elementwise piecewise-linear operation with kinks ``k_1 < ... < k_m``, as
    ``f(k_1) + s_0 (x - k_1) + sum_i (s_i - s_{i-1}) relu(x - k_i)`` with the values and slopes
    read off the operation itself; each ReLU relaxed by :func:`_relax`."""
    (operand,) = _operands(node, values)
    x: _Lines = values[operand]
    kinks = sorted(set(step.kinks))

    def at(v: float) -> Tensor:
        return _call(node, root, _picker(values, lambda n, w: torch.full_like(w.lb, v)))

    ends = [at(k) for k in kinks]
    slopes = [ends[0] - at(kinks[0] - 1.0)]
    slopes += [(ends[i + 1] - ends[i]) / (kinks[i + 1] - kinks[i]) for i in range(len(kinks) - 1)]
    slopes.append(at(kinks[-1] + 1.0) - ends[-1])
    zero = torch.zeros_like(ends[0])
    result = _scaled(
        x, slopes[0], ends[0] - slopes[0] * kinks[0], slopes[0], ends[0] - slopes[0] * kinks[0]
    )
    for i, k in enumerate(kinks):
        shifted = _Lines(x.lw, x.lb - k, x.uw, x.ub - k)
        low, high = _range(shifted, t0, t1)
        relu = _widen(_scaled(shifted, *_relax("relu", low, high)))
        change = slopes[i + 1] - slopes[i]
        result = _sum(result, _scaled(relu, change, zero, change, zero))
    low, high = _range(x, t0, t1)
    candidates = [low, high] + [torch.full_like(low, k).clamp(low, high) for k in kinks]
    outputs = torch.stack(
        [_call(node, root, _picker(values, lambda n, w, c=c: c)) for c in candidates]
    )
    result.low, result.high = outputs.amin(0), outputs.amax(0)  # pieces are linear: ends, kinks
    return result


def _smooth(
    node: fx.Node, step: _Step, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor
) -> _Lines:
    (operand,) = [n for n in node.all_input_nodes if isinstance(values[n], _Lines)]
    x: _Lines = values[operand]
    low, high = _range(x, t0, t1)
    out = _scaled(x, *_relax(step.rule, low, high))
    out.low, out.high = _function_range(step.rule, low, high)
    return out


def _pair(node: fx.Node, step: _Step, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor) -> _Lines:
    """Pointwise max (min) of two values: the chord of the convex ``max`` of the upper lines
    above (of the concave ``min`` of the lower lines below), and the other bound the line of
    the operand that is larger (smaller) at the midpoint."""
    operands = [values[n] if isinstance(n, fx.Node) else n for n in node.args[:2]]
    if len(node.args) < 2:
        operands = [
            values[n] if isinstance(n, fx.Node) else n for n in [*node.args, *node.kwargs.values()]
        ]
    first, second = (
        v if isinstance(v, _Lines) else _constant(torch.as_tensor(v)) for v in operands
    )
    flip = step.rule == "min"
    if flip:  # min(x, y) = -max(-x, -y)
        first, second = _negated(first), _negated(second)
    shape = torch.broadcast_shapes(first.lb.shape, second.lb.shape)
    first = _Lines(*(v.expand(shape) for v in (first.lw, first.lb, first.uw, first.ub)))
    second = _Lines(*(v.expand(shape) for v in (second.lw, second.lb, second.uw, second.ub)))
    a, b = _column(t0, first.lb), _column(t1, first.lb)
    top0 = torch.maximum(first.uw * a + first.ub, second.uw * a + second.ub)
    top1 = torch.maximum(first.uw * b + first.ub, second.uw * b + second.ub)
    uw, ub = _chord(top0, top1, a, b)
    middle = (a + b) / 2
    larger = first.lw * middle + first.lb >= second.lw * middle + second.lb
    result = _Lines(
        torch.where(larger, first.lw, second.lw), torch.where(larger, first.lb, second.lb), uw, ub
    )
    return _negated(result) if flip else result


def _chord(at0: Tensor, at1: Tensor, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
    """An upper line of a convex function of ``t`` with values ``at0``, ``at1`` at ``t0``,
    ``t1``: the chord, as (slope, intercept); on sub-intervals narrower than
    :data:`_NARROWEST_CHORD` the constant ``max(at0, at1)`` (a chord's intercept there would
    be a difference of huge, rounded numbers)."""
    width = t1 - t0
    wide = width >= _NARROWEST_CHORD
    slope = torch.where(wide, (at1 - at0) / torch.where(wide, width, 1.0), 0.0)
    return slope, torch.where(wide, at0 - slope * t0, torch.maximum(at0, at1))


def _negated(lines: _Lines) -> _Lines:
    return _Lines(-lines.uw, -lines.ub, -lines.lw, -lines.lb)


def _pool(
    node: fx.Node, root: nn.Module, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor
) -> _Lines:
    """A max pool: above, the chord of the pooled upper lines (the max of lines is convex in
    ``t``); below, the pool of the window's lowest values on ``[t0, t1]`` (a constant)."""
    (operand,) = _operands(node, values)
    x: _Lines = values[operand]

    def pooled(v: Tensor) -> Tensor:
        return _call(node, root, _picker(values, lambda n, w: v))

    a, b = _column(t0, x.lb), _column(t1, x.lb)
    low, _ = _range(x, t0, t1)
    top0, top1 = pooled(x.uw * a + x.ub), pooled(x.uw * b + x.ub)
    a, b = _column(t0, top0), _column(t1, top0)
    uw, ub = _chord(top0, top1, a, b)
    lb = pooled(low)
    return _Lines(torch.zeros_like(lb), lb, uw, ub)


def _input_lines(a: Tensor, b: Tensor, radius: tuple[Tensor, Tensor] | None) -> _Lines:
    """The input's lines: the segment ``a + t (b - a)`` itself, or (``radius``, for the
    triangles of :mod:`connectivity.engine.bound_triangles`) the box around it whose half-width
    goes linearly from ``radius[0]`` at ``t = 0`` to ``radius[1]`` at ``t = 1``. The box's lines
    are widened like every operation's (:func:`_widen`), which covers the float64 rounding of
    forming them and of the caller's centre and radius (a few machine epsilons of the same
    terms)."""
    if radius is None:
        return _Lines(b - a, a, b - a, a)
    start, end = radius
    shrink = start - end  # the half-width is start - shrink * t
    return _widen(_Lines(b - a + shrink, a - start, b - a - shrink, a + start))


def _propagate(
    program: BoundProgram,
    a: Tensor,
    b: Tensor,
    t0: Tensor,
    t1: Tensor,
    radius: tuple[Tensor, Tensor] | None = None,
) -> tuple[_Lines, Tensor]:
    """Lines of the logits ``(N, classes)`` on each sub-interval, and ``(N,)`` which
    sub-intervals met a NaN on the way (their lines mean nothing: ``0 * inf`` after an
    overflow, or a reciprocal's infinite lines; see :func:`_poisoned`); ``a``, ``b``: ``(N,
    *point_shape)`` float64 ends of the sub-intervals' segments; ``t0``, ``t1``: ``(N,)``;
    ``radius``: the input box's half-widths at ``t = 0`` and ``1`` (:func:`_input_lines`)."""
    root = program.module
    values: dict[fx.Node, Any] = {}
    poisoned = torch.zeros(t0.shape[0], dtype=torch.bool, device=t0.device)
    for i, step in enumerate(program.steps):
        node = step.node
        if i and program.frees:
            for dead in program.frees[i - 1]:
                values.pop(dead, None)
        if step.kind == INPUT:
            values[node] = _input_lines(a, b, radius)
            continue
        if step.kind == OUTPUT:
            out = values[node.args[0]]  # type: ignore[index]
            if not isinstance(out, _Lines):
                raise NotBoundedError("the tail's output is not one point-dependent tensor")
            return out, poisoned
        if step.kind == NO_OP:
            values[node] = None
        elif step.kind == FIXED:
            value = _fixed(node, root, values)
            floating = isinstance(value, Tensor) and value.is_floating_point()
            values[node] = value.double() if floating else value
        elif step.kind == SIZE:
            values[node] = _call(node, root, _picker(values, lambda n, v: v.lb))
        else:
            values[node] = _each(_lines_of(step, root, values, t0, t1), _widen)
            poisoned |= _poisoned(values[node], t0.shape[0])
    raise NotBoundedError("the traced tail has no output")


def _poisoned(value: Any, rows: int) -> Tensor:
    """``(rows,)``: which sub-intervals' lines hold a NaN. A NaN can turn into finite, wrong
    lines further on (a ReLU of a NaN range is relaxed as an inactive one), so a sub-interval
    that meets one gets no bound at all. A value whose first dimension is not the
    sub-intervals' marks all of them."""
    bad = torch.zeros(rows, dtype=torch.bool)
    for lines in value if isinstance(value, tuple) else (value,):
        for v in _parts(lines):
            nan = torch.isnan(v)
            if v.dim() and v.shape[0] == rows:
                bad = bad.to(v.device) | nan.reshape(rows, math.prod(v.shape[1:])).any(1)
            elif bool(nan.any()):
                bad = torch.ones(rows, dtype=torch.bool, device=v.device)
    return bad


def _lines_of(
    step: _Step, root: nn.Module, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor
) -> _Lines:
    node = step.node
    if step.kind == KINK:
        return _kink(node, step, root, values, t0, t1)
    if step.kind == BILINEAR:
        return _bilinear(node, root, values, t0, t1)
    if step.kind == QUOTIENT:
        return _quotient(node, root, values, t0, t1)
    if step.kind == SOFTMAX:
        return _softmax_step(node, step, root, values, t0, t1)
    if step.kind == NORM:
        return _norm(node, step, root, values, t0, t1)
    if step.kind == AFFINE and _picks_from_tuple(node, values):
        return values[node.args[0]][node.args[1]]  # type: ignore[index]
    if step.kind == SMOOTH:
        return _smooth(node, step, values, t0, t1)
    if step.kind == PAIR:
        return _pair(node, step, values, t0, t1)
    if step.kind == POOL:
        return _pool(node, root, values, t0, t1)
    if step.kind == AFFINE and step.rule == _MONOTONE:
        return _monotone(node, root, values)
    if step.kind == AFFINE:
        return _signed(node, step, root, values)
    raise NotBoundedError(f"bound propagation does not cover {_operation_name(node, root)}")


# ---------------------------------------------------------------------------------------------
# Products of two point-dependent values, quotients, softmax, normalisations


def _size(lines: _Lines) -> Tensor:
    """``|lw| + |lb| + |uw| + |ub|``: bounds ``|line|`` for ``t`` in [0, 1]."""
    return lines.lw.abs() + lines.lb.abs() + lines.uw.abs() + lines.ub.abs()


def _widen_by(lines: _Lines, magnitude: Tensor) -> _Lines:
    """Both bounds moved out by :data:`RELATIVE_WIDENING` times ``magnitude``: the sum of the
    absolute terms a value was computed from, where they may cancel (float64 rounding of a sum
    of ``n`` terms is at most ``n`` * 1.1e-16 of their absolute sum)."""
    margin = RELATIVE_WIDENING * magnitude
    return _Lines(lines.lw, lines.lb - margin, lines.uw, lines.ub + margin)


def _composed(x: _Lines, a_lo: Tensor, b_lo: Tensor, a_hi: Tensor, b_hi: Tensor) -> _Lines:
    """:func:`_scaled` (a relaxation's lines of ``x`` composed with ``x``'s lines), widened by the
    size of the products it sums."""
    size = _size(x)
    magnitude = (a_lo.abs() + a_hi.abs()) * size + b_lo.abs() + b_hi.abs()
    return _widen_by(
        _scaled(x, a_lo, b_lo, a_hi, b_hi), magnitude.nan_to_num(nan=math.inf, posinf=math.inf)
    )


def _mccormick(
    op: Callable[[Tensor, Tensor], Tensor], x: _Lines, y: _Lines, t0: Tensor, t1: Tensor
) -> _Lines:
    """Lines of ``op(x, y)`` for a bilinear ``op`` whose terms are products ``x_i y_j`` summed
    with coefficient 1 (elementwise products with broadcasting, ``matmul``, ``bmm``,
    ``einsum``): McCormick's planes of each product over the operands' ranges on ``[t0, t1]``
    (CROWN's bilinear bounds: Shi et al., "Robustness Verification for Transformers", ICLR
    2020, Section 3.2), ``xy >= y_l x + x_l y - x_l y_l`` and ``xy >= y_u x + x_u y - x_u y_u``
    below, ``xy <= y_u x + x_l y - x_l y_u`` and ``xy <= y_l x + x_u y - x_u y_l`` above. Every
    term takes the same plane, so each plane's sum is ``op(x, c) + op(d, y) - op(d, c)`` with
    constants ``c`` (shaped like ``y``) and ``d`` (like ``x``): a few calls of ``op`` itself, on
    lines in place of values (``op(x, c)`` is bounded below by ``op(L_x, c+) + op(U_x, c-)``),
    never the tensor of all products (for attention's ``q @ k^T`` that would be ``L x L x d``
    per sub-interval and head). Per output element the better plane at the sub-interval's
    midpoint is kept. Widened by :data:`RELATIVE_WIDENING` times ``op(|x|, |y|)`` of the
    operands' sizes (every term of every call is at most that)."""
    lx, ux = _range(x, t0, t1)
    ly, uy = _range(y, t0, t1)

    def left(c: Tensor, lower: bool) -> tuple[Tensor, Tensor]:  # bounds of op(x, c)
        pos, neg = c.clamp(min=0), c.clamp(max=0)
        (aw, ab), (bw, bb) = ((x.lw, x.lb), (x.uw, x.ub)) if lower else ((x.uw, x.ub), (x.lw, x.lb))
        return op(aw, pos) + op(bw, neg), op(ab, pos) + op(bb, neg)

    def right(d: Tensor, lower: bool) -> tuple[Tensor, Tensor]:  # bounds of op(d, y)
        pos, neg = d.clamp(min=0), d.clamp(max=0)
        (aw, ab), (bw, bb) = ((y.lw, y.lb), (y.uw, y.ub)) if lower else ((y.uw, y.ub), (y.lw, y.lb))
        return op(pos, aw) + op(neg, bw), op(pos, ab) + op(neg, bb)

    def plane(c: Tensor, d: Tensor, lower: bool) -> tuple[Tensor, Tensor]:
        (w1, b1), (w2, b2) = left(c, lower), right(d, lower)
        return w1 + w2, b1 + b2 - op(d, c)

    below = [plane(ly, lx, True), plane(uy, ux, True)]
    above = [plane(uy, lx, False), plane(ly, ux, False)]
    middle = _column((t0 + t1) / 2, below[0][0])
    first_below = below[0][0] * middle + below[0][1] >= below[1][0] * middle + below[1][1]
    first_above = above[0][0] * middle + above[0][1] <= above[1][0] * middle + above[1][1]
    lines = _Lines(
        torch.where(first_below, below[0][0], below[1][0]),
        torch.where(first_below, below[0][1], below[1][1]),
        torch.where(first_above, above[0][0], above[1][0]),
        torch.where(first_above, above[0][1], above[1][1]),
    )
    magnitude = op(_size(x) + lx.abs() + ux.abs(), _size(y) + ly.abs() + uy.abs())
    return _widen_by(lines, magnitude.nan_to_num(nan=math.inf, posinf=math.inf))


def _positional(node: fx.Node, root: nn.Module, values: dict[fx.Node, Any], operands: list) -> Any:
    """Run ``node`` with its point-dependent arguments, by position (``matmul(h, h)`` has two),
    replaced by ``operands`` in order, and its other arguments by their values."""
    queue = list(operands)

    def pick(n: fx.Node) -> Any:
        return queue.pop(0) if isinstance(values[n], _Lines) else values[n]

    args = fx.node.map_arg(node.args, pick)
    kwargs = fx.node.map_arg(node.kwargs, pick)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _bilinear(
    node: fx.Node, root: nn.Module, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor
) -> _Lines:
    """A product of two point-dependent values (:func:`_mccormick` with the node's own op)."""
    x, y = [values[n] for n in _nodes_in([node.args, node.kwargs])]
    return _mccormick(lambda p, q: _positional(node, root, values, [p, q]), x, y, t0, t1)


def _quotient(
    node: fx.Node, root: nn.Module, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor
) -> _Lines:
    """``n / d`` with a point-dependent ``d``: ``n * (1 / d)``, the reciprocal relaxed over
    ``d``'s range (:func:`_relax_on_domain`: no bound where the range touches 0), then a
    product with ``n`` (:func:`_mccormick` when ``n`` depends on the point, else ``n``'s
    sign)."""
    numerator = node.args[0] if node.args else node.kwargs.get("input")
    divisor: _Lines = values[_argument(node, 1, "other", None)]
    low, high = _range(divisor, t0, t1)
    inverse = _composed(divisor, *_relax("reciprocal", low, high))
    top = values[numerator] if isinstance(numerator, fx.Node) else numerator
    if isinstance(top, _Lines):
        return _mccormick(torch.mul, top, inverse, t0, t1)
    scale = torch.as_tensor(top, dtype=torch.float64, device=low.device)
    zero = torch.zeros_like(scale)
    return _scaled(inverse, scale, zero, scale, zero)


def _moved(lines: _Lines, source: int, destination: int) -> _Lines:
    return _Lines(*(v.movedim(source, destination) for v in _parts(lines)))


def _parts(lines: _Lines) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return lines.lw, lines.lb, lines.uw, lines.ub


def _softmax(x: _Lines, dim: int, log: bool, t0: Tensor, t1: Tensor) -> _Lines:
    """``softmax(x)_i = 1 / S_i`` (``log_softmax(x)_i = -log S_i``) over ``dim``, with
    ``S_i = sum_j exp(x_j - x_i)`` (the form of Shi et al. 2020 and of DeepT, Bonaert et al.,
    PLDI 2021, that keeps the softmax's shift invariance): the differences' lines (``x_i - x_i``
    exactly 0), :func:`_relax` of ``exp`` on their ranges, the sum, and the reciprocal (log)
    relaxed on ``S_i``'s range, which is also cut to ``[sum_j exp(l_ij), sum_j exp(u_ij)]``
    (``l``, ``u``: the differences' ranges; so ``S_i >= 1``). Memory: ``n`` times the input's
    (``(N, ..., n, n)`` differences)."""
    m = _moved(x, dim, -1)
    n = m.lb.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=m.lb.device)

    def difference(own: Tensor, other: Tensor) -> Tensor:  # [..., i, j] = own_j - other_i
        return (own.unsqueeze(-2) - other.unsqueeze(-1)).masked_fill(eye, 0.0)

    d = _Lines(
        difference(m.lw, m.uw),
        difference(m.lb, m.ub),
        difference(m.uw, m.lw),
        difference(m.ub, m.lb),
    )
    size = _size(m)
    d = _widen_by(d, (size.unsqueeze(-2) + size.unsqueeze(-1)).masked_fill(eye, 0.0))
    low, high = _range(d, t0, t1)
    e = _composed(d, *_relax("exp", low, high))
    total = _widen_by(_Lines(*(v.sum(-1) for v in _parts(e))), _size(e).sum(-1))
    floor = torch.exp(low).sum(-1) * (1 - RELATIVE_WIDENING)  # float64 sums: see _widen_by
    ceiling = torch.exp(high).sum(-1) * (1 + RELATIVE_WIDENING)
    s_low, s_high = _range(total, t0, t1)
    s_low, s_high = torch.maximum(s_low, floor), torch.minimum(s_high, ceiling)
    out = _composed(total, *_relax("log" if log else "reciprocal", s_low, s_high))
    if log:
        return _moved(_negated(out), -1, dim)
    moved = _moved(out, -1, dim)
    least, most = _function_range("reciprocal", s_low, s_high)  # within (0, 1]
    moved.low, moved.high = least.movedim(-1, dim), most.movedim(-1, dim)
    return moved


def _normalized(x: _Lines, eps: float, t0: Tensor, t1: Tensor) -> _Lines:
    """``(x - mean x) / sqrt(var x + eps)`` over the last dimension (LayerNorm without its
    affine part; the biased variance, as PyTorch): the centring is exact (``c_i = x_i - mean
    x`` bounded through its coefficients' signs), the variance ``mean c^2`` from
    :func:`_relax` of ``square`` (its range also cut to the interval range of ``mean c^2``,
    at least 0), ``rsqrt(var + eps)`` relaxed on that range, and the product by
    :func:`_mccormick` (Shi et al. 2020's decomposition of LayerNorm). ``eps = 0`` with a
    variance range that reaches 0 gives no bound (:func:`_relax_on_domain`)."""
    n = x.lb.shape[-1]

    def centred(own: Tensor, other: Tensor) -> Tensor:  # own_i - mean(other) + (other_i - own_i)/n
        return own - other.mean(-1, keepdim=True) + (other - own) / n

    c = _Lines(centred(x.lw, x.uw), centred(x.lb, x.ub), centred(x.uw, x.lw), centred(x.ub, x.lb))
    size = _size(x)
    c = _widen_by(c, 3 * (size + size.mean(-1, keepdim=True)))
    low, high = _range(c, t0, t1)
    squares = _composed(c, *_relax("square", low, high))
    variance = _Lines(*(v.mean(-1, keepdim=True) for v in _parts(squares)))
    variance = _widen_by(variance, _size(squares).mean(-1, keepdim=True))
    crossing = (low <= 0) & (high >= 0)
    least = torch.where(crossing, 0.0, torch.minimum(low * low, high * high))
    floor = least.mean(-1, keepdim=True) * (1 - RELATIVE_WIDENING)
    ceiling = torch.maximum(low * low, high * high).mean(-1, keepdim=True) * (1 + RELATIVE_WIDENING)
    v_low, v_high = _range(variance, t0, t1)
    v_low = (torch.maximum(v_low, floor) + eps) * (1 - RELATIVE_WIDENING)
    v_high = (torch.minimum(v_high, ceiling) + eps) * (1 + RELATIVE_WIDENING)
    shifted = _Lines(variance.lw, variance.lb + eps, variance.uw, variance.ub + eps)
    scale = _composed(shifted, *_relax("rsqrt", v_low, v_high))
    return _mccormick(torch.mul, c, scale, t0, t1)


def _norm(
    node: fx.Node,
    step: _Step,
    root: nn.Module,
    values: dict[fx.Node, Any],
    t0: Tensor,
    t1: Tensor,
) -> _Lines:
    """LayerNorm (``normalized_shape``: the trailing dimensions) or GroupNorm (``(N, C, *)``
    in ``num_groups`` groups of channels) as :func:`_normalized` over the flattened group,
    then the elementwise affine part (``weight * y + bias``, by the weight's sign)."""
    x: _Lines = values[_operands(node, values)[0]]
    if node.op == "call_module":
        m = root.get_submodule(str(node.target))
        weight, bias, eps = m.weight, m.bias, float(m.eps)
        groups = m.num_groups if step.rule == "group" else None
        shape = tuple(m.normalized_shape) if step.rule == "layer" else None
    else:
        fixed = lambda v: values[v] if isinstance(v, fx.Node) else v  # noqa: E731
        layer = step.rule == "layer"
        weight = fixed(_argument(node, 2, "weight", None))
        bias = fixed(_argument(node, 3, "bias", None))
        eps = float(fixed(_argument(node, 4, "eps", 1e-5)))
        groups = None if layer else int(fixed(_argument(node, 1, "num_groups", None)))
        shape = fixed(_argument(node, 1, "normalized_shape", None)) if layer else None
        shape = (shape,) if isinstance(shape, int) else (None if shape is None else tuple(shape))
    full = x.lb.shape
    if shape is not None:  # explicit sizes: a batch of no sub-intervals has no -1 to infer
        flat = (*full[: len(full) - len(shape)], math.prod(shape))
        broadcast = tuple(shape)
    else:
        flat = (full[0], int(groups), math.prod(full[1:]) // int(groups))
        broadcast = (full[1], *[1] * (len(full) - 2))
    y = _normalized(_Lines(*(v.reshape(flat) for v in _parts(x))), eps, t0, t1)
    y = _Lines(*(v.reshape(full) for v in _parts(y)))
    if weight is None and bias is None:
        return y
    w = torch.ones(broadcast, dtype=y.lb.dtype, device=y.lb.device)
    w = w if weight is None else weight.detach().to(y.lb).reshape(broadcast)
    b = torch.zeros_like(w) if bias is None else bias.detach().to(y.lb).reshape(broadcast)
    return _widen_by(_scaled(y, w, b, w, b), w.abs() * _size(y) + b.abs())


def _softmax_step(
    node: fx.Node, step: _Step, root: nn.Module, values: dict[fx.Node, Any], t0: Tensor, t1: Tensor
) -> _Lines:
    """Softmax / log-softmax of a module, function or method (the dimension from it)."""
    x: _Lines = values[_operands(node, values)[0]]
    if node.op == "call_module":
        dim = root.get_submodule(str(node.target)).dim
    else:
        dim = _argument(node, 1, "dim", None)
    return _softmax(x, int(dim), step.rule == "log_softmax", t0, t1)


# ---------------------------------------------------------------------------------------------
# Margins and branch and bound


def margin_bounds(
    program: BoundProgram | nn.Module,
    a: Tensor,
    b: Tensor,
    targets: Tensor,
    t0: Tensor,
    t1: Tensor,
    radius: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """A lower bound of ``logit[y] - max_{k != y} logit[k]`` over each sub-interval.

    The margin is ``min_k (x_y - x_k) >= min_k (L_y(t) - U_k(t))``, an affine function of
    ``t`` per ``k``, lowest at an end of ``[t0, t1]``. With ``radius`` the bound holds over a
    box around the segment instead (the hook of
    :mod:`connectivity.engine.bound_triangles`, which encloses a triangle in one).

    Args:
        program: A :func:`bound_program` (or a tail, traced here).
        a, b: ``(N, *point_shape)`` ends (``t = 0``, ``t = 1``) of the segment of each
            sub-interval.
        targets: ``(N,)`` long target class.
        t0, t1: ``(N,)`` the sub-intervals, ``0 <= t0 <= t1 <= 1``.
        radius: ``None`` (the segment), or two ``(N, *point_shape)`` tensors ``>= 0``: the
            bound then holds at every point ``x`` with ``|x - (a + t (b - a))| <= (1 - t)
            radius[0] + t radius[1]`` elementwise, for ``t`` in ``[t0, t1]``.

    Returns:
        ``(N,)`` float64 lower bounds (``-inf`` where a bound is not finite).

    Raises:
        NotBoundedError: see :func:`bound_program`.
    """
    program = program if isinstance(program, BoundProgram) else bound_program(program, a[:1])
    if not program.rows_checked and a.shape[0]:
        _check_rows(program, a[0], b[0])
    device = next(iter(program.module.parameters()), a).device
    a, b = a.to(device, torch.float64), b.to(device, torch.float64)
    t0, t1 = t0.to(device, torch.float64), t1.to(device, torch.float64)
    if radius is not None:
        radius = (radius[0].to(device, torch.float64), radius[1].to(device, torch.float64))
    with torch.no_grad():
        logits, poisoned = _propagate(program, a, b, t0, t1, radius)
    lw, lb, uw, ub = (v.flatten(1) for v in (logits.lw, logits.lb, logits.uw, logits.ub))
    y = targets.to(device).long().unsqueeze(1)
    slope = lw.gather(1, y) - uw
    intercept = lb.gather(1, y) - ub
    at0 = slope * t0.unsqueeze(1) + intercept
    at1 = slope * t1.unsqueeze(1) + intercept
    size = slope.abs() + intercept.abs()
    low = torch.minimum(at0, at1) - RELATIVE_WIDENING * size
    low = low.scatter(1, y, math.inf).amin(1)
    low = torch.where(poisoned, -math.inf, low)
    # (nan_to_num's defaults would also turn -inf into the lowest finite number)
    return torch.where(torch.isfinite(low) | (low == math.inf), low, -math.inf).nan_to_num(
        nan=-math.inf, posinf=math.inf, neginf=-math.inf
    )


@dataclass
class SegmentProof:
    """The branch and bound of each segment (``S`` segments).

    Attributes:
        status: ``"proved"`` (the margin is positive at every ``t``), ``"counterexample"`` (the
            margin is ``<= 0`` at ``counterexample_t``) or ``"budget"`` (the split budget ran
            out first).
        min_margin_lower_bound: ``(S,)`` float64: a proved lower bound of the margin over the
            whole segment (the lowest bound of its final sub-intervals).
        min_margin: ``(S,)`` float64: the lowest real margin at the evaluated points.
        sub_intervals: ``(S,)`` long: final sub-intervals.
        bound_evaluations: ``(S,)`` long: sub-intervals bounded.
        counterexample_t: ``(S,)`` float64, NaN where none was found.
        counterexample_margin: ``(S,)`` float64: the tail's margin at ``counterexample_t``
            (NaN where none was found).
        tolerance: ``(S,)`` float64: a margin within this of zero is left to rounding
            (:func:`connectivity.engine.exact.margin_tolerance`'s rule over the logits seen on
            the segment).
    """

    status: list[str]
    min_margin_lower_bound: Tensor
    min_margin: Tensor
    sub_intervals: Tensor
    bound_evaluations: Tensor
    counterexample_t: Tensor
    counterexample_margin: Tensor
    tolerance: Tensor


def _check_points_apart(program: BoundProgram, start: Tensor, end: Tensor) -> None:
    """Refuse a tail whose logits of a point depend on the other points of its batch.

    Bound propagation keeps one sub-interval per row of every value, as each batch row is one
    point; a tail that mixes rows (a batch mean, batch norm in training mode, a transpose of the
    batch dimension) would be bounded as some other function. The traced program and the tail
    itself each run on three points of the segment, as batches of 2 and 3 in another order:
    each point's logits must agree across batches (to 1e-9 of the largest logit) and between
    program and tail (to exact.py's tolerance of the tail's dtype).

    Raises:
        NotBoundedError: they disagree.
    """
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64, device=start.device)
    shape = (-1, *[1] * start.dim())
    points = torch.lerp(start.double().unsqueeze(0), end.double().unsqueeze(0), t.view(shape))
    with torch.no_grad():
        two = program.module(points[:2]).flatten(1)
        three = program.module(points[[2, 0, 1]]).flatten(1)[[1, 2, 0]]
        own = _tail_logits(program.tail, points)
    scale = 1e-9 * max(1.0, float(three.abs().amax()))
    if not torch.allclose(two, three[:2], rtol=0.0, atol=scale):
        raise NotBoundedError(
            "the tail's logits of a point depend on the other points of its batch (a batch "
            "mean, batch norm in training mode...): bounds need each point classified alone"
        )
    dtype = floating_dtype(program.tail) or start.dtype
    # The tail computes in its own dtype: agreement to exact.py's tolerance of that dtype.
    slack = TOLERANCE_EPSILONS * torch.finfo(dtype).eps * max(1.0, float(own.abs().amax()))
    if not torch.allclose(own, three, rtol=0.0, atol=slack):
        raise NotBoundedError(
            "the traced tail computes other logits than the tail itself; bounds cannot follow "
            "this tail"
        )


class _Recorder(fx.Interpreter):
    """Runs a traced program and keeps the floating-point tensors each node gives (items of
    tuples as ``name.i``)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.seen: dict[str, Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        items = enumerate(out) if isinstance(out, tuple | list) else [("", out)]
        for i, item in items:
            if isinstance(item, Tensor) and item.is_floating_point():
                self.seen[f"{n.name}.{i}" if i != "" else n.name] = item
        return out


def _check_rows(program: BoundProgram, start: Tensor, end: Tensor) -> None:
    """Refuse a tail with a point-dependent value whose first dimension does not hold the
    points of a batch in blocks, one after the other (row ``r`` of a value of a batch of
    ``B`` points belongs to point ``r // (rows / B)``): bound propagation reads each row's
    sub-interval off that layout (:func:`_column`). Seen by running the float64 program on two
    points together and on each alone: every dependent value of the pair must be the two
    values alone, stacked (to 1e-9 of its largest entry).

    Raises:
        NotBoundedError: a value that mixes points or lays them out otherwise, named.
    """
    if torch.equal(start, end):  # two distinct points, or a transposed layout could pass
        end = start + 1e-3 * (1 + start.abs())
    points = (
        torch.stack([start, end]).double().to(next(iter(program.module.parameters()), start).device)
    )
    with torch.no_grad():
        runs = []
        for batch in (points, points[:1], points[1:]):
            recorder = _Recorder(program.module)
            recorder.run(batch)
            runs.append(recorder.seen)
    dependent = {
        s.node.name for s in program.steps if s.kind not in (FIXED, SIZE, NO_OP, INPUT, OUTPUT)
    }
    for name, both in runs[0].items():
        if name.split(".")[0] not in dependent or name not in runs[1] or name not in runs[2]:
            continue
        alone = torch.cat([runs[1][name].reshape(-1), runs[2][name].reshape(-1)])
        scale = 1e-9 * max(1.0, float(both.abs().nan_to_num(posinf=0.0, neginf=0.0).amax()))
        rows = both.shape[0] if both.dim() else 0
        apart = rows % 2 == 0 and both.numel() == alone.numel()
        if not apart or not torch.allclose(
            both.reshape(-1), alone, rtol=0.0, atol=scale, equal_nan=True
        ):
            raise NotBoundedError(
                f"the value of node {name} does not keep the points of a batch apart in blocks "
                "of its first dimension, which bound propagation needs"
            )
    program.rows_checked = True


def _tail_logits(tail: nn.Module, points: Tensor) -> Tensor:
    """The tail's own logits of ``points``, in float64 (computed in the tail's dtype)."""
    dtype = floating_dtype(tail) or points.dtype
    return tail(points.to(dtype)).flatten(1).double()


def _real_margins(tail: nn.Module, points: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(margins (K,) float64, largest absolute logit (K,) float64)`` of the tail itself."""
    with torch.no_grad():
        logits = _tail_logits(tail, points)
    target = logits.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, targets.long().unsqueeze(1), -math.inf).amax(1)
    margin = (target - others).nan_to_num(nan=-math.inf)
    return margin, logits.abs().nan_to_num(nan=0.0, posinf=0.0).amax(1)


@dataclass
class _Leaves:
    """The current sub-intervals of all segments; ``bound`` NaN until computed, ``inherited``
    the parent's bound (valid on the child) meanwhile."""

    segment: Tensor
    t0: Tensor
    t1: Tensor
    bound: Tensor
    inherited: Tensor

    def lowest(self, count: int) -> Tensor:
        """``(count,)`` the lowest bound of each segment's sub-intervals."""
        known = torch.where(torch.isnan(self.bound), self.inherited, self.bound)
        out = torch.full((count,), math.inf, dtype=torch.float64, device=known.device)
        return out.scatter_reduce(0, self.segment, known, "amin")


def _bound_leaves(
    program: BoundProgram,
    leaves: _Leaves,
    todo: Tensor,
    segments: tuple[Tensor, Tensor, Tensor],
    batch_size: int,
) -> None:
    starts, ends, targets = segments
    rows = todo.nonzero().squeeze(1)
    for chunk in rows.split(batch_size):
        s = leaves.segment[chunk]
        leaves.bound[chunk] = margin_bounds(
            program, starts[s], ends[s], targets[s], leaves.t0[chunk], leaves.t1[chunk]
        ).to(leaves.bound.device)


def _split_choice(
    leaves: _Leaves, status: list[str], tolerance: Tensor, splits: Tensor, max_splits: int
) -> Tensor:
    """Rows to split (the lowest bounds first, within each segment's budget); marks segments
    proved or out of budget."""
    chosen: list[Tensor] = []
    for s, state in enumerate(status):
        if state:
            continue
        mine = (leaves.segment == s).nonzero().squeeze(1)
        open_ = mine[leaves.bound[mine] <= tolerance[s]]
        if not len(open_):
            status[s] = "proved"
            continue
        left = max_splits - int(splits[s])
        if left <= 0:
            status[s] = "budget"
            continue
        order = leaves.bound[open_].argsort()
        chosen.append(open_[order[:left]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long, device=leaves.segment.device)
    return torch.cat(chosen)


def prove_segments(
    tail: BoundProgram | nn.Module,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    *,
    max_splits: int = 1024,
    batch_size: int = 1024,
) -> SegmentProof:
    """Branch and bound on ``t``: prove the target margin positive on each whole segment, or
    find a point where it is not.

    Each round bounds the new sub-intervals (:func:`margin_bounds`); a sub-interval whose
    bound is not above the tolerance (:func:`connectivity.engine.exact.margin_tolerance`'s rule:
    1,000 epsilons of the tail's dtype times the largest absolute logit seen on the segment) is
    split at its midpoint, where the tail's real margin is evaluated: a margin ``<= 0`` there
    (or at ``t = 0`` or ``1``) is a counterexample and ends the segment's search. A segment
    ends ``"proved"`` when no sub-interval is left open, ``"budget"`` when it has been split
    ``max_splits`` times. For a piecewise-linear tail a sub-interval where no kink is crossed is
    bounded exactly, so the search ends once the splits resolve the kinks near the boundary.

    Args:
        tail: The tail (points ``(B, *point_shape)`` to logits) or its :func:`bound_program`.
        starts, ends: ``(S, *point_shape)`` segment ends.
        targets: ``(S,)`` long target classes.
        max_splits: Most midpoint splits per segment.
        batch_size: Most sub-intervals bounded in one propagation (bounds memory).

    Returns:
        :class:`SegmentProof`.

    Raises:
        NotBoundedError: see :func:`bound_program`.
    """
    program = tail if isinstance(tail, BoundProgram) else bound_program(tail, starts[:1])
    if starts.shape[0] and not program.points_checked:
        _check_points_apart(program, starts[0], ends[0])
        program.points_checked = True
    count, device = starts.shape[0], starts.device
    targets = targets.to(device).long()
    status, counterexample, found, min_margin, scale = _at_ends(program, starts, ends, targets)
    dtype = floating_dtype(program.tail) or starts.dtype
    epsilon = TOLERANCE_EPSILONS * torch.finfo(dtype).eps
    nan = torch.full((count,), math.nan, dtype=torch.float64, device=device)
    zeros = torch.zeros(count, dtype=torch.float64, device=device)
    leaves = _Leaves(torch.arange(count, device=device), zeros, zeros + 1, nan, zeros - math.inf)
    splits = torch.zeros(count, dtype=torch.long, device=device)
    evaluations = torch.zeros(count, dtype=torch.long, device=device)
    segments = (starts, ends, targets)
    first_round = True
    while True:
        live = torch.tensor(
            [not status[int(s)] for s in leaves.segment], dtype=torch.bool, device=device
        )
        todo = torch.isnan(leaves.bound) & (live | first_round)
        evaluations += torch.bincount(leaves.segment[todo], minlength=count)
        _bound_leaves(program, leaves, todo, segments, batch_size)
        if first_round:
            _check_program(leaves.bound, min_margin, epsilon * scale)
            first_round = False
        chosen = _split_choice(leaves, status, epsilon * scale, splits, max_splits)
        if not len(chosen):
            break
        middle = (leaves.t0[chosen] + leaves.t1[chosen]) / 2
        segment = leaves.segment[chosen]
        points = starts[segment] + middle.to(starts.dtype).view(-1, *[1] * (starts.dim() - 1)) * (
            ends[segment] - starts[segment]
        )
        margin, largest = _real_margins(program.tail, points, targets[segment])
        min_margin = min_margin.scatter_reduce(0, segment, margin, "amin")
        scale = scale.scatter_reduce(0, segment, largest, "amax")
        splits += torch.bincount(segment, minlength=count)
        for i in (margin <= 0).nonzero().squeeze(1).tolist():
            s = int(segment[i])
            if not status[s] or float(middle[i]) < float(counterexample[s]):
                status[s] = "counterexample"
                counterexample[s] = float(middle[i])
                found[s] = float(margin[i])
        leaves = _split(leaves, chosen, middle)
    return SegmentProof(
        status,
        leaves.lowest(count),
        min_margin,
        torch.bincount(leaves.segment, minlength=count),
        evaluations,
        counterexample,
        found,
        epsilon * scale,
    )


def _at_ends(
    program: BoundProgram, starts: Tensor, ends: Tensor, targets: Tensor
) -> tuple[list[str], Tensor, Tensor, Tensor, Tensor]:
    """The tail's margins at the segments' ends: ``(status, counterexample t, margin there,
    lowest margin, largest absolute logit (at least 1))``; a margin ``<= 0`` at an end is a
    counterexample."""
    count = starts.shape[0]
    margin0, scale0 = _real_margins(program.tail, starts, targets)
    margin1, scale1 = _real_margins(program.tail, ends, targets)
    scale = torch.maximum(torch.maximum(scale0, scale1), torch.ones_like(scale0))
    status = [""] * count
    counterexample = torch.full((count,), math.nan, dtype=torch.float64, device=starts.device)
    for s in range(count):
        if float(margin0[s]) <= 0 or float(margin1[s]) <= 0:
            status[s] = "counterexample"
            counterexample[s] = 0.0 if float(margin0[s]) <= 0 else 1.0
    found = torch.where(counterexample == 0.0, margin0, margin1)
    found = torch.where(torch.isnan(counterexample), math.nan, found)
    return status, counterexample, found, torch.minimum(margin0, margin1), scale


def _check_program(bound: Tensor, margin: Tensor, tolerance: Tensor) -> None:
    """A bound of a whole segment above the tail's own margin at one of its ends (beyond the
    tolerance) means the traced program does not compute what the tail computes.

    Raises:
        NotBoundedError: so.
    """
    wrong = bound > margin + tolerance
    if bool(wrong.any()):
        s = int(wrong.nonzero()[0, 0])
        raise NotBoundedError(
            f"the traced tail does not compute what the tail computes: on segment {s} the "
            f"margin bound {float(bound[s]):.6g} exceeds the margin {float(margin[s]):.6g} "
            "at an end"
        )


def _split(leaves: _Leaves, chosen: Tensor, middle: Tensor) -> _Leaves:
    keep = torch.ones_like(leaves.segment, dtype=torch.bool)
    keep[chosen] = False
    parent = torch.where(
        torch.isnan(leaves.bound[chosen]), leaves.inherited[chosen], leaves.bound[chosen]
    )
    nan = torch.full_like(middle, math.nan)
    return _Leaves(
        torch.cat([leaves.segment[keep], leaves.segment[chosen], leaves.segment[chosen]]),
        torch.cat([leaves.t0[keep], leaves.t0[chosen], middle]),
        torch.cat([leaves.t1[keep], middle, leaves.t1[chosen]]),
        torch.cat([leaves.bound[keep], nan, nan]),
        torch.cat([leaves.inherited[keep], parent, parent]),
    )
