"""A straightforward, independent ExactLine for comparison with ``connectivity.engine.exact``.

Walks each segment ``z(t) = a + t (b - a)`` piece by piece (Sotoudeh & Thakur, NeurIPS 2019,
the walk their Section 3 describes): at ``t``, one pass of the point and the direction
``b - a`` through the tail linearised at the point (one batch ``[point; direction]``, biases
added to the first half only, each ReLU's mask read off the first half) gives every ReLU's
pre-activation ``p`` and its derivative ``dp`` along the segment under the activation pattern
at ``t``; the pre-activations are affine in ``t`` until the first one reaches zero, at
``t + min(-p / dp)`` over the pre-activations heading for zero; the walk steps there and counts
one piece. A pre-activation within ``MIN_STEP`` (in ``t``) of its kink is taken as on it, and
the side it heads to decides its state (so the walk never takes steps shorter than
``MIN_STEP``: pieces that short merge with a neighbour, which only the counts show). The
segments are walked in one batch, in lockstep, each with its own ``t``.

Only what the CIFAR ResNets of ``benchmarks/exact_check.py`` hold is handled (ReLU, 2-d
convolutions, batch norm in eval, linear layers, average pooling, sums, flatten); anything else
raises ``TypeError``: it is a yardstick for the benchmark, not part of the project.

Usage: ``walk(tail, starts, ends, targets)`` (see :func:`walk`); ``benchmarks/exact_check.py``
times it beside the project's check.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

# Shortest step of the walk, in t: a kink closer than this counts as reached. Float32 rounding
# of the point at a kink leaves its pre-activation a little off zero; at 1e-6 that made
# spurious steps (40% more pieces than the project's check on trained ResNet-20 segments), at
# 1e-5 the counts agree within a few per cent, at 1e-4 pieces merge.
MIN_STEP = 1e-5


def _network(tail: nn.Module) -> fx.GraphModule:
    while hasattr(tail, "network"):  # connectivity's FrozenTail
        tail = tail.network
    return fx.symbolic_trace(tail) if not isinstance(tail, fx.GraphModule) else tail


def _relu(z: Tensor, seen: list[tuple[Tensor, Tensor]]) -> Tensor:
    """ReLU of ``z`` = ``[values; derivatives]`` ``(2B, ...)`` under the pattern at the
    points; keeps the pre-activations and their derivatives."""
    p, dp = z.chunk(2)
    near = p.abs() <= MIN_STEP * dp.abs()
    on = torch.where(near, dp > 0, p > 0)
    seen.append((p.masked_fill(near, 0.0), dp))
    return z * on.to(z.dtype).repeat(2, *([1] * (z.dim() - 1)))


def _affine_module(module: nn.Module, z: Tensor) -> Tensor:
    """An affine layer on ``[values; derivatives]``: the bias on the values only."""
    half = z.shape[0] // 2
    if isinstance(module, nn.Conv2d | nn.Linear):
        out = (
            module._conv_forward(z, module.weight, None)
            if isinstance(module, nn.Conv2d)
            else (F.linear(z, module.weight))
        )
        if module.bias is not None:
            shape = (-1,) + (1,) * (out.dim() - 2) if out.dim() > 2 else (-1,)
            out = torch.cat([out[:half] + module.bias.view(shape), out[half:]])
        return out
    if isinstance(module, nn.BatchNorm2d):
        assert not module.training
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        shift = module.bias - module.running_mean * scale
        out = z * scale.view(-1, 1, 1)
        return torch.cat([out[:half] + shift.view(-1, 1, 1), out[half:]])
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AvgPool2d | nn.Identity | nn.Flatten):
        return module(z)
    if isinstance(module, nn.Sequential):
        for layer in module:
            z = _affine_module(layer, z)
        return z
    if isinstance(module, nn.ReLU):
        raise TypeError("a ReLU module in a Sequential: not handled here")
    raise TypeError(f"not handled by the reference: {type(module).__name__}")


def _run(network: fx.GraphModule, z: Tensor, seen: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The tail on ``[values; derivatives]``; returns the same for the logits."""
    values: dict[fx.Node, object] = {}
    for node in network.graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: values[n])
        if node.op == "placeholder":
            values[node] = z
        elif node.op == "output":
            return args[0]
        elif node.op == "call_module":
            module = network.get_submodule(str(node.target))
            relu = isinstance(module, nn.ReLU)
            values[node] = _relu(args[0], seen) if relu else _affine_module(module, args[0])
        elif node.target in (F.relu, torch.relu) or node.target == "relu":
            values[node] = _relu(args[0], seen)
        elif node.target in (operator.add, torch.add, torch.flatten):
            values[node] = node.target(*args, **node.kwargs)
        else:
            raise TypeError(f"not handled by the reference: {node.format_node()}")
    raise AssertionError("no output")


@dataclass
class Walk:
    """Pieces per segment ``(S,)`` long and the lowest margin at the piece ends ``(S,)``."""

    pieces: Tensor
    min_margin: Tensor


def walk(tail: nn.Module, starts: Tensor, ends: Tensor, targets: Tensor) -> Walk:
    """Walk the segments ``starts[s] -> ends[s]`` ``(S, *point_shape)`` through ``tail``.

    Returns the pieces of each segment and the lowest target margin at their ends."""
    network = _network(tail)
    seen: list[tuple[Tensor, Tensor]] = []
    count = starts.shape[0]
    t = torch.zeros(count, dtype=torch.float64, device=starts.device)
    pieces = torch.zeros(count, dtype=torch.long, device=starts.device)
    lowest = torch.full((count,), math.inf, dtype=torch.float64, device=starts.device)
    direction = ends - starts
    live = torch.arange(count, device=starts.device)
    shape = (-1, *([1] * (starts.dim() - 1)))
    with torch.no_grad():
        while live.numel():
            x = starts[live] + t[live].to(starts.dtype).view(shape) * direction[live]
            seen.clear()
            logits = _run(network, torch.cat([x, direction[live]]), seen)
            logits = logits[: live.numel()].flatten(1).double()
            y = targets[live].view(-1, 1)
            margin = logits.gather(1, y).squeeze(1) - logits.scatter(1, y, -math.inf).amax(1)
            lowest[live] = torch.minimum(lowest[live], margin)
            step = torch.full_like(t[live], math.inf)
            for p, dp in seen:
                p, dp = p.flatten(1), dp.flatten(1)
                ahead = (p * dp < 0) & (p != 0)
                s = torch.where(ahead, -p / dp, math.inf).amin(1).double()
                step = torch.minimum(step, s.clamp_min(MIN_STEP))
            t[live] = torch.clamp(t[live] + step, max=1.0)
            pieces[live] += 1
            live = live[t[live] < 1.0]
    # The margin at t = 1 of each segment.
    with torch.no_grad():
        logits = _run(network, torch.cat([ends, direction]), seen)[:count].flatten(1).double()
    y = targets.view(-1, 1)
    last = logits.gather(1, y).squeeze(1) - logits.scatter(1, y, -math.inf).amax(1)
    return Walk(pieces, torch.minimum(lowest, last))
