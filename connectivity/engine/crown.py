"""Backward (CROWN) bounds of the target margin along a path segment (issue 21).

Pure PyTorch. :mod:`connectivity.engine.bounds` bounds every traced value of a tail by two
lines in ``t`` on a sub-interval ``[t0, t1]`` of the segment ``z(t) = a + t (b - a)`` (forward
mode), and the margin ``logit[y] - max_{k != y} logit[k]`` by ``min_k (L_y(t) - U_k(t))``:
the lower line of one logit against the upper line of another, which loses what the logits
share and compounds the looseness of every layer. Here the specification ``c_k = e_y - e_k``
(one row per class ``k != y``) is carried backwards through the network instead (CROWN: Zhang
et al., "Efficient Neural Network Robustness Certification with General Activation Functions",
NeurIPS 2018; auto_LiRPA's backward mode, Xu et al., NeurIPS 2020), with the forward pass's
ranges for the relaxations:

* At an affine node ``x_out = A x_in + c`` (bounds.py's AFFINE steps, any number of
  point-dependent operands, tuples of ``chunk`` / ``split`` / ``unbind`` included) the
  coefficients become ``lambda_in = A^T lambda_out``, computed by the node's own
  vector-Jacobian product (:func:`torch.func.vjp` of the node's call with its point-independent
  operands fixed, vmapped over the specification rows), and ``lambda_out . c`` is added to the
  bias (``c`` = the node at zero operands).
* At an elementwise node with lines ``a_lo x + b_lo <= f(x) <= a_hi x + b_hi`` over its input's
  range ``[l, u]`` on the sub-interval (from the forward lines), a lower bound takes
  ``lambda+ (a_lo, b_lo) + lambda- (a_hi, b_hi)`` (Zhang et al. 2018, Theorem 3.2). Smooth
  functions use bounds.py's ``_relax`` (the sound lines of
  :func:`connectivity.engine.relaxations.relax`). Piecewise-linear ones (ReLU, LeakyReLU,
  ReLU6, Hardtanh, Hardsigmoid, clamp, abs: bounds.py's KINK steps) use
  :func:`_kink_lines`: for each candidate slope (the chord's and those of the pieces inside
  ``[l, u]``) the intercept is the least (greatest) ``f(p) - s p`` over ``p`` in ``l``, ``u``
  and the kinks inside, which is sound because ``f - line`` is piecewise linear with those
  vertices; of the candidates the line highest (lowest) at the midpoint is kept, which for
  ReLU is CROWN's adaptive lower slope (1 where ``u > -l``, else 0) and the chord above.
* Every other node (products of two point-dependent values, quotients, softmax,
  LayerNorm / GroupNorm, max pooling, pairwise max / min, point-dependent constants) stops the
  back-substitution: its forward lines are used, ``lambda+ (lw t + lb) + lambda- (uw t + ub)``
  (always sound; handling more of them backwards only tightens). The input is such a node with
  exact lines ``z(t)``.
* Fan-out: coefficients of a node used several times are summed, nodes are visited in reverse
  topological order (the traced program's order, reversed).

The result is, per specification row, a line in ``t`` below ``c_k . logits(t)`` on
``[t0, t1]``; its least value is at an end, and the margin bound is the least over ``k``.

Floating point: all in float64. The identity ``lambda_out . x_out = lambda_in . x_in +
lambda_out . c`` is exact in real arithmetic; the float64 products and sums that realise it
(the VJP, the relaxation's products) round by some 1e-16 of the terms they sum. So, as in
bounds.py (:data:`connectivity.engine.bounds.RELATIVE_WIDENING`), the bound is lowered by 1e-9
times the absolute size of the terms at each node: ``sum |lambda_out| * max(|low|, |high|)``
over the node's forward range, plus ``|lambda| |b|`` of a relaxation's intercepts and the size
of the lines a node is concretised with. A sub-interval whose terms are not finite (an
unbounded range, a NaN) gets ``-inf``.

Use: :func:`crown_program` (a :func:`connectivity.engine.bounds.bound_program` carrying
:func:`backward_margin_bounds`); its ``margin_bounds`` and ``prove_segments`` keep the better of
the forward and the backward bound on each sub-interval.

Not covered yet (concretised with forward lines, sound): backward steps through products,
softmax and normalisations (Shi et al., ICLR 2020; DeepT, Bonaert et al., PLDI 2021); the
relaxations' ranges are the forward pass's (full CROWN would also bound each intermediate
pre-activation backwards, which on a deep ResNet is what keeps the ranges from growing with
depth); optimised slopes (alpha-CROWN).

Memory: ``K = classes - 1`` specification rows per sub-interval, held as ``(K, rows, *shape)``
float64 coefficients per live node; :func:`backward_margin_bounds` runs the rows in chunks
of at most :data:`SPECIFICATION_ELEMENTS` coefficient entries of the largest value.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx

from connectivity.engine.bounds import (
    AFFINE,
    KINK,
    OUTPUT,
    RELATIVE_WIDENING,
    SMOOTH,
    BoundProgram,
    _call,
    _Lines,
    _operands,
    _picker,
    _picks_from_tuple,
    _range,
    _relax,
    bound_program,
)

__all__ = ["SPECIFICATION_ELEMENTS", "backward_margin_bounds", "crown_program"]

# Most entries of one node's coefficients (specification rows x sub-interval rows x value
# size) in one backward pass: 2^25 float64 entries, 256 MiB.
SPECIFICATION_ELEMENTS = 1 << 25


def crown_program(tail: torch.nn.Module, example: Tensor | None = None) -> BoundProgram:
    """:func:`connectivity.engine.bounds.bound_program` of ``tail`` whose margin bounds
    (:func:`~connectivity.engine.bounds.margin_bounds`, and so
    :func:`~connectivity.engine.bounds.prove_segments`) are the better of the forward bound and
    :func:`backward_margin_bounds` (both sound). bounds.py does not import this module (no
    import cycle): the program carries the function.

    Raises:
        NotBoundedError: see :func:`~connectivity.engine.bounds.bound_program`.
    """
    program = bound_program(tail, example)
    program.backward = backward_margin_bounds
    return program


def backward_margin_bounds(
    program: BoundProgram,
    a: Tensor,
    b: Tensor,
    targets: Tensor,
    t0: Tensor,
    t1: Tensor,
    forward_values: dict[fx.Node, Any],
) -> Tensor:
    """A lower bound of ``logit[y] - max_{k != y} logit[k]`` on each sub-interval, by
    back-substitution of ``e_y - e_k`` (see the module docstring).

    Args:
        program: The :func:`connectivity.engine.bounds.bound_program` the forward values came
            from.
        a, b: ``(N, *point_shape)`` float64 ends of each sub-interval's segment.
        targets: ``(N,)`` target classes.
        t0, t1: ``(N,)`` float64 sub-intervals.
        forward_values: every node's forward value on these sub-intervals (``_Lines``, tuples
            of them, or fixed values), as ``bounds._propagate(..., keep=...)`` fills it.

    Returns:
        ``(N,)`` float64 lower bounds, ``-inf`` where none is finite (never NaN).

    Raises:
        KeyError: ``forward_values`` lacks a node of ``program``.
    """
    output = next(s.node for s in program.steps if s.kind == OUTPUT)
    logits: _Lines = forward_values[output.args[0]]  # type: ignore[index]
    rows = a.shape[0]
    classes = logits.lb.numel() // rows if rows and logits.lb.dim() else 1
    if classes < 2 or rows == 0:
        return torch.full((rows,), -math.inf, dtype=torch.float64, device=a.device)
    largest = max(_size_of(v) for v in forward_values.values())
    chunk = max(1, SPECIFICATION_ELEMENTS // max(1, largest))
    y = targets.to(a.device).long()
    lows = []
    for first in range(0, classes - 1, chunk):
        spec = _specification(y, classes, first, min(classes - 1, first + chunk))
        spec = spec.reshape(spec.shape[0], *logits.lb.shape)
        slope, bias, slack = _substitute(program, spec, forward_values, t0, t1)
        at0 = slope * t0 + bias
        at1 = slope * t1 + bias
        size = slope.abs() + bias.abs()
        low = torch.minimum(at0, at1) - RELATIVE_WIDENING * size - slack
        # (not nan_to_num: it would also make -inf finite)
        lows.append(torch.where(torch.isnan(low), -math.inf, low).amin(0))
    low = torch.stack(lows).amin(0)
    return torch.where(torch.isnan(low), -math.inf, low)


def _size_of(value: Any) -> int:
    if isinstance(value, _Lines):
        return value.lb.numel()
    if isinstance(value, tuple):
        return sum(_size_of(v) for v in value)
    return 0


def _specification(y: Tensor, classes: int, first: int, last: int) -> Tensor:
    """``(last - first, N, classes)``: row ``j`` of sub-interval ``n`` is ``e_y - e_k`` with
    ``k`` the ``j``-th class other than ``y_n``."""
    j = torch.arange(first, last, device=y.device).unsqueeze(1)
    k = j + (j >= y.unsqueeze(0)).long()
    spec = torch.zeros(last - first, y.shape[0], classes, dtype=torch.float64, device=y.device)
    spec.scatter_(2, y.view(1, -1, 1).expand(last - first, -1, 1), 1.0)
    spec.scatter_(2, k.unsqueeze(2), -1.0)
    return spec


class _Accumulator:
    """A line in ``t`` per specification row and sub-interval (``(K, N)`` slope and bias),
    and the float64 slack of the terms summed into it."""

    def __init__(self, k: int, n: int, like: Tensor) -> None:
        self.slope = torch.zeros(k, n, dtype=torch.float64, device=like.device)
        self.bias = torch.zeros_like(self.slope)
        self.slack = torch.zeros_like(self.slope)
        self.n = n

    def dot(self, coefficients: Tensor, values: Tensor) -> Tensor:
        """``(K, N)``: ``sum coefficients * values`` over each sub-interval's entries, with
        ``0 * inf = 0`` (a zero coefficient ignores its value). ``coefficients``: ``(K, rows,
        ...)``; ``values`` broadcast to ``(rows, ...)``; rows come in ``N`` blocks
        (bounds.py's layout, checked by its ``_check_rows``)."""
        k, rows = coefficients.shape[0], coefficients.shape[1]
        c = coefficients.reshape(k, rows, -1)
        v = torch.broadcast_to(values, coefficients.shape[1:]).reshape(rows, -1)
        if bool(torch.isfinite(v).all()):
            summed = torch.einsum("krm,rm->kr", c, v)
        else:
            summed = torch.where(c == 0, 0.0, c * v).sum(2)
        return summed.reshape(k, self.n, -1).sum(2)

    def add_slack(self, coefficients: Tensor, magnitude: Tensor) -> None:
        """Slack ``1e-9 * sum |lambda| * magnitude`` (the size of the terms summed)."""
        self.slack += RELATIVE_WIDENING * self.dot(coefficients.abs(), magnitude)

    def concretise(self, coefficients: Tensor, lines: _Lines, reach: Tensor) -> None:
        """Add ``lambda+ (lw t + lb) + lambda- (uw t + ub)`` (a lower bound of ``lambda . v``);
        slack of the lines' size and ``reach``."""
        pos, neg = coefficients.clamp(min=0), coefficients.clamp(max=0)
        self.slope += self.dot(pos, lines.lw) + self.dot(neg, lines.uw)
        self.bias += self.dot(pos, lines.lb) + self.dot(neg, lines.ub)
        size = lines.lw.abs() + lines.lb.abs() + lines.uw.abs() + lines.ub.abs()
        self.add_slack(coefficients, size + reach)


def _substitute(
    program: BoundProgram,
    spec: Tensor,
    values: dict[fx.Node, Any],
    t0: Tensor,
    t1: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Back-substitute ``spec`` (``(K, *logits shape)``) from the output to the input; returns
    the ``(K, N)`` slope, bias and slack of the lines below ``spec . logits(t)``."""
    output = next(s.node for s in program.steps if s.kind == OUTPUT)
    total = _Accumulator(spec.shape[0], t0.shape[0], spec)
    pending: dict[fx.Node, Any] = {output.args[0]: spec}  # type: ignore[dict-item]
    for step in reversed(program.steps):
        node = step.node
        coefficients = pending.pop(node, None)
        if coefficients is None:
            continue
        value = values[node]
        if isinstance(value, tuple):
            coefficients = _tuple_coefficients(coefficients, value)
        inputs = _backward_step(program, step, coefficients, values, total, t0, t1)
        for operand, c in inputs:
            _accumulate(pending, operand, c)
    return total.slope, total.bias, total.slack


def _reach(lines: _Lines, t0: Tensor, t1: Tensor) -> Tensor:
    """``max |v(t)|`` on the sub-interval from the forward lines: the size of the terms of
    ``lambda . v`` (the identity each node rewrites)."""
    low, high = _range(lines, t0, t1)
    return torch.maximum(low.abs(), high.abs())


def _tuple_coefficients(coefficients: Any, value: tuple) -> tuple[Tensor, ...]:
    """A tuple node's coefficients (``{index: tensor}`` from its ``getitem`` users) as one
    tensor per item, zeros where an item is unused."""
    k = next(iter(coefficients.values())).shape[0]
    return tuple(
        coefficients.get(
            i, torch.zeros(k, *item.lb.shape, dtype=torch.float64, device=item.lb.device)
        )
        for i, item in enumerate(value)
    )


def _accumulate(pending: dict[fx.Node, Any], node: Any, coefficients: Any) -> None:
    """Sum coefficients arriving at ``node`` (fan-out); ``(node, index)`` keys an item of a
    tuple."""
    if isinstance(node, tuple):
        source, index = node
        items = pending.setdefault(source, {})
        items[index] = items[index] + coefficients if index in items else coefficients
        return
    pending[node] = pending[node] + coefficients if node in pending else coefficients


def _backward_step(
    program: BoundProgram,
    step: Any,
    coefficients: Any,
    values: dict[fx.Node, Any],
    total: _Accumulator,
    t0: Tensor,
    t1: Tensor,
) -> list[tuple[Any, Tensor]]:
    """One node: add its bias / concretised part and its slack to ``total``; return the
    coefficients it passes to its operands (``(node, tensor)``, or ``((tuple node, index),
    tensor)``)."""
    node, root, value = step.node, program.module, values[step.node]
    if step.kind == AFFINE and _picks_from_tuple(node, values):
        return [((node.args[0], node.args[1]), coefficients)]  # a copy: nothing to add
    items = value if isinstance(value, tuple) else (value,)
    parts = coefficients if isinstance(value, tuple) else (coefficients,)
    reach = [_reach(v, t0, t1) for v in items]
    if step.kind == AFFINE:
        passed = _affine(node, root, coefficients, values, total, reach)
        if passed is not None:
            return passed
    elif step.kind in (KINK, SMOOTH) and len(_operands(node, values)) == 1:
        (operand,) = _operands(node, values)
        low, high = _range(values[operand], t0, t1)
        if step.kind == KINK:
            f = lambda p: _call(node, root, _picker(values, lambda n, w: p))  # noqa: E731
            lines = _kink_lines(f, sorted(set(step.kinks)), low, high)
        else:
            lines = _relax(step.rule, low, high)
        return [(operand, _relaxed(coefficients, lines, total, reach[0]))]
    for c, v, r in zip(parts, items, reach, strict=True):
        total.concretise(c, v, r)
    return []


def _relaxed(
    coefficients: Tensor,
    lines: tuple[Tensor, Tensor, Tensor, Tensor],
    total: _Accumulator,
    reach: Tensor,
) -> Tensor:
    """``lambda+ (a_lo, b_lo) + lambda- (a_hi, b_hi)``: the intercepts into ``total``, the
    slopes returned as the input's coefficients (``0 * inf = 0``)."""
    a_lo, b_lo, a_hi, b_hi = lines
    up = coefficients >= 0
    pos, neg = coefficients.clamp(min=0), coefficients.clamp(max=0)
    total.bias += total.dot(pos, b_lo) + total.dot(neg, b_hi)
    total.add_slack(coefficients, reach + b_lo.abs() + b_hi.abs())
    passed = coefficients * torch.where(up, a_lo, a_hi)
    if bool(torch.isfinite(a_lo).all() and torch.isfinite(a_hi).all()):
        return passed
    return torch.where(coefficients == 0, 0.0, passed)


def _affine(
    node: fx.Node,
    root: torch.nn.Module,
    coefficients: Any,
    values: dict[fx.Node, Any],
    total: _Accumulator,
    reach: list[Tensor],
) -> list[tuple[Any, Tensor]] | None:
    """``lambda_in = A^T lambda_out`` per operand by the node's VJP (vmapped over the
    specification rows, row by row where vmap does not cover the operation), and ``lambda_out
    . f(0)`` into the bias; None (the caller concretises) for a node with no point-dependent
    operand or whose VJP fails."""
    operands = _operands(node, values)
    if not operands:
        return None

    def run(*inputs: Tensor) -> Any:
        given = dict(zip(operands, inputs, strict=True))
        return _call(node, root, _picker(values, lambda n, v: given.get(n, v.lb)))

    primals = tuple(values[n].lb for n in operands)
    try:
        with torch.enable_grad():
            offset, vjp = torch.func.vjp(run, *tuple(torch.zeros_like(p) for p in primals))
            structured = _structured(coefficients, offset)
            passed = _batched(vjp, structured)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    outputs = offset if isinstance(offset, tuple | list) else (offset,)
    parts = coefficients if isinstance(coefficients, tuple) else (coefficients,)
    for c, o, r in zip(parts, outputs, reach, strict=True):
        total.bias += total.dot(c, o.detach())
        total.add_slack(c, o.detach().abs() + r)
    return [(n, p.detach()) for n, p in zip(operands, passed, strict=True)]


def _structured(coefficients: Any, offset: Any) -> Any:
    """The coefficients in the structure of the node's output (tuple or list of tensors)."""
    if isinstance(offset, list):
        return list(coefficients)
    return coefficients


def _batched(vjp: Callable[[Any], tuple[Tensor, ...]], coefficients: Any) -> tuple[Tensor, ...]:
    """The VJP of each specification row, vmapped (one call per row where vmap fails)."""
    try:
        return torch.func.vmap(vjp)(coefficients)
    except (RuntimeError, NotImplementedError):
        k = (coefficients[0] if isinstance(coefficients, tuple | list) else coefficients).shape[0]
        rows = [
            vjp(_each_row(coefficients, lambda c, i=i: c[i]))  # type: ignore[misc]
            for i in range(k)
        ]
        return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))


def _each_row(coefficients: Any, pick: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(coefficients, tuple | list):
        return type(coefficients)(pick(c) for c in coefficients)
    return pick(coefficients)


def _kink_lines(
    f: Callable[[Tensor], Tensor], kinks: list[float], low: Tensor, high: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lines ``a_lo x + b_lo <= f(x) <= a_hi x + b_hi`` on ``[low, high]`` of an elementwise
    piecewise-linear ``f`` with ``kinks`` (sorted).

    ``f - (s x + c)`` is piecewise linear with vertices at ``low``, ``high`` and the kinks
    inside, so ``c = min_p (f(p) - s p)`` over those points gives a line below ``f`` for any
    slope ``s`` (max: above). Candidate slopes: the chord's and each piece's between
    consecutive points; kept: the line highest (lowest) at the midpoint, i.e. least area
    between line and ``f`` (Zhang et al. 2018's adaptive choice; for ReLU crossing 0: lower
    slope 1 where ``high > -low``, else 0; the chord above). Intercepts are moved out by
    :data:`RELATIVE_WIDENING` of the terms (``f``'s float64 rounding, ``s p``). A range that is
    not finite gets the lines ``-inf``, ``+inf`` (slope 0).

    Shapes: ``low``, ``high`` any shape (``low <= high``); each output shaped like them.
    """
    finite = torch.isfinite(low) & torch.isfinite(high)
    zero = torch.zeros_like(low)
    low, high = torch.where(finite, low, zero), torch.where(finite, high, zero)
    high = torch.maximum(low, high)
    points = [low, *(torch.clamp(torch.full_like(low, k), low, high) for k in kinks), high]
    at = [f(p) for p in points]
    slopes = [_slope(points[i], points[i + 1], at[i], at[i + 1]) for i in range(len(points) - 1)]
    slopes.append(_slope(low, high, at[0], at[-1]))
    middle = (low + high) / 2
    reach = torch.stack([p.abs() for p in points]).amax(0)
    size = torch.stack([v.abs() for v in at]).amax(0)
    best: list[tuple[Tensor, Tensor] | None] = [None, None]
    for s in slopes:
        gaps = torch.stack([v - s * p for p, v in zip(points, at, strict=True)])
        slack = RELATIVE_WIDENING * (size + s.abs() * reach) + 1e-300
        for side, (c, better) in enumerate(
            ((gaps.amin(0) - slack, operator.gt), (gaps.amax(0) + slack, operator.lt))
        ):
            current = best[side]
            if current is None:
                best[side] = (s, c)
                continue
            take = better(s * middle + c, current[0] * middle + current[1])
            best[side] = (torch.where(take, s, current[0]), torch.where(take, c, current[1]))
    (a_lo, b_lo), (a_hi, b_hi) = best  # type: ignore[misc]
    infinite = torch.full_like(low, math.inf)
    return (
        torch.where(finite, a_lo, zero),
        torch.where(finite, b_lo, -infinite),
        torch.where(finite, a_hi, zero),
        torch.where(finite, b_hi, infinite),
    )


def _slope(x0: Tensor, x1: Tensor, f0: Tensor, f1: Tensor) -> Tensor:
    """The slope between two points, 0 where they coincide."""
    width = x1 - x0
    wide = width > 0
    return torch.where(wide, (f1 - f0) / torch.where(wide, width, 1.0), 0.0)
