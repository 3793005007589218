"""Exact class checks of segments through a piecewise-linear network (ExactLine).

Pure PyTorch (torch.fx), no Lightning. For a network made of piecewise-linear operations
(convolution, linear, batch norm in eval mode, ReLU / LeakyReLU / ReLU6 / Hardtanh /
Hardsigmoid / clamp / abs, pointwise max / min of two tensors, max and average pooling,
adaptive pooling, add, concatenation, flatten / view / reshape, padding of any mode, dropout in
eval, identity, products with one point-independent operand; ``torch._assert`` is not
evaluated), the
logits restricted to a segment ``z(t) = a + t (b - a)``, ``t`` in [0, 1], are piecewise affine
in ``t``. This module finds every ``t`` where the network's activation pattern changes (a ReLU
input crosses one of its kinks, a max-pool window's winner changes): between two neighbouring
such points the logits are affine, so the target's margin ``logit[y] - max_{k != y} logit[k]``
(a minimum of affine functions) is concave there and its minimum over the piece is at one of
the piece's ends. The minimum over the ends of all pieces is therefore the exact minimum margin
over the whole segment, and the set of points off the target is read off each piece exactly.

What an operation computes decides, not its name: operands are counted by position (``h * h``
has two point-dependent operands and is refused), and a PyTorch layer is one known operation
only when it runs PyTorch's own ``forward`` with no hooks (:func:`_computes_as_library`);
anything else is traced into or refused, the operation named.

Method: Sotoudeh & Thakur, "Computing Linear Restrictions of Neural Networks", NeurIPS 2019
(ExactLine, their Section 3 and Algorithm 1), batched: the traced network is run on a growing,
sorted set of points of many segments at once. Invariant: every value computed so far is affine
in ``t`` between neighbouring points of the set. An affine operation keeps it. At a kink
operation the points where its input crosses a kink are added (``t* = t_l + (t_r - t_l)
x_l / (x_l - x_r)``, exact for an input that is affine on ``[t_l, t_r]``) and every value still
needed later is linearly interpolated there (exact by the invariant), so the operation's output
is affine between neighbours again. A max pool is repeated until the winner of every window is
the same at both ends of every interval (then, and only then, the max of affine functions is
affine there).

Floating point: points are computed in the network's dtype and ``t`` in float64. A piece end
whose margin lies within :func:`margin_tolerance` of zero cannot be called on or off the target
reliably; :class:`PathCheck` reports such paths as undecided (``decided`` False) and callers fall
back to the sampled check for them (see :mod:`connectivity.engine.checks`).
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from connectivity.engine.split import FrozenTail, LayerError, floating_dtype
from connectivity.errors import ConnectivityError

__all__ = [
    "MAX_VALUES",
    "MAX_VALUES_CPU",
    "SUSPENDED_BATCHES",
    "NotPiecewiseLinearError",
    "PathCheck",
    "SegmentCheck",
    "UnreliableExactCheckError",
    "check_paths",
    "check_segments",
    "margin_tolerance",
    "piecewise_linear_program",
    "undecided_checks",
    "why_not_piecewise_linear",
]

# Most values the live activations of the batch being checked may hold at once (points x values per
# point), and so its memory: 2**27 float32 values are 512 MB. A batch of points that would grow past
# it is cut into shorter stretches of its segments, each checked on its own, going on from the
# operation where the batch overflowed (the stretches waiting hold at most SUSPENDED_BATCHES times
# the bound more). ResNet50 at 224x224, whose widest activation has 802,816 values per point, gets
# at most 160 points at a time on a GPU. On a CPU the bound is 2**24 (64 MB in float32): blocks that
# large come from the system afresh at every allocation, and the page faults of 512 MB blocks took
# as long as the arithmetic (benchmarks/exact_check.py, ResNet18 input space: 11.6 s at 2**27, 6.3 s
# at 2**24, 7.6 s at 2**22 for two segments; peak memory 3.9, 2.0 and 1.2 GB; measured when cut
# stretches started again from the input).
MAX_VALUES = 2**27
MAX_VALUES_CPU = 2**24
# A batch that would grow past the bound is cut, at the step where it overflowed, into shorter
# stretches that go on from there, one at a time; the stretches waiting hold at most this many
# times the bound (beyond it, the batch's stretches start again from the network's input).
SUSPENDED_BATCHES = 2

# Piece ends whose margin is within this many machine epsilons of the largest logit of the path
# are undecided (float32: 1.2e-4 relative; float64: 2.2e-13): the rounding of a deep network's
# logits reaches hundreds of epsilons.
TOLERANCE_EPSILONS = 1000.0
# Max-pool winners closer than this many epsilons (relative) count as tied.
_POOL_EPSILONS = 16.0


class NotPiecewiseLinearError(LayerError):
    """A tail that holds an operation that is not piecewise linear (or cannot be traced), so its
    exact check is impossible; the message names the operation."""


class UnreliableExactCheckError(ConnectivityError):
    """The exact check of these paths cannot be trusted in floating point (the traced tail's
    logits at the segments' ends differ from the tail's own beyond the tolerance, or a max
    pool's winners stay tied within rounding); callers decide these paths at sampled points
    (:class:`connectivity.engine.checks.Certifier` does, with the reason in the record's
    ``certificate_note``)."""


# ---------------------------------------------------------------------------------------------
# Which operations are affine, which have kinks, which are pools


_AFFINE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    # reflection, replication and circular padding copy entries: affine
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    nn.CircularPad1d,
    nn.CircularPad2d,
    nn.CircularPad3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
)
# Affine in eval mode only (the tail is frozen in eval mode; a training-mode one is refused).
_EVAL_AFFINE_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


# Methods a subclass of a PyTorch layer may define without changing what the layer computes;
# any other one (``forward``, ``_conv_forward``, ``__call__``...) makes it a layer of its own.
_HARMLESS_OVERRIDES = frozenset(
    {
        "__init__",
        "__repr__",
        "extra_repr",
        "reset_parameters",
        "reset_running_stats",
        "_check_input_dim",
        "_load_from_state_dict",
        "__setstate__",
        "__getstate__",
        "_get_name",
    }
)


def _computes_as_library(module: nn.Module) -> bool:
    """Whether ``module`` computes what its PyTorch layer computes: no ``forward`` (or other
    method of the computation) of its own, in its class or on the instance, and no forward
    hooks. Only then may its type say what it computes (timm's ``BatchNormAct2d`` is a
    ``BatchNorm2d`` that applies an activation in its own ``forward``)."""
    # A function set on the instance (``forward``, or ``_conv_forward`` that a convolution's
    # forward calls) replaces what the class computes.
    if any(callable(value) and not isinstance(value, nn.Module) for value in vars(module).values()):
        return False
    if module._forward_hooks or module._forward_pre_hooks:
        return False
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return False
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn.") or cls is nn.Module:
            return True  # the classes from here on are PyTorch's own
        for name, member in vars(cls).items():
            if callable(member) and name not in _HARMLESS_OVERRIDES:
                return False
    return True


def _module_kinks(module: nn.Module) -> tuple[float, ...] | None:
    """The kinks of an elementwise piecewise-linear module, None for any other module (and for
    one that computes something of its own, see :func:`_computes_as_library`)."""
    if not _computes_as_library(module):
        return None
    if isinstance(module, nn.ReLU6):  # a Hardtanh subclass: check first
        return (0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        return (0.0,)
    if isinstance(module, nn.Hardsigmoid):
        return (-3.0, 3.0)
    return None


def _known_module(module: nn.Module) -> str | None:
    """AFFINE, POOL or KINK for a PyTorch layer this module understands, else None."""
    if not _computes_as_library(module):
        return None
    if _module_kinks(module) is not None:
        return KINK
    if isinstance(module, _POOL_MODULES):
        return None if getattr(module, "return_indices", False) else POOL
    if isinstance(module, _AFFINE_MODULES):
        return AFFINE
    if isinstance(module, _EVAL_AFFINE_MODULES):
        # A batch norm without running statistics normalises by its batch even in eval mode.
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training or module.running_mean is None
        ):
            return None
        return AFFINE
    return None


# Weighted sums of their input (linear layers and convolutions): affine, with weights of
# either sign (bounds.py applies them to lower and upper lines by sign).
_WEIGHTED_FUNCTIONS: set[Any] = {
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
}
_AFFINE_FUNCTIONS: set[Any] = {
    operator.neg,
    operator.pos,
    operator.getitem,
    torch.neg,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.narrow,
    torch.split,
    torch.chunk,
    torch.mean,
    torch.sum,
    torch.flip,
    torch.roll,
    *_WEIGHTED_FUNCTIONS,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.interpolate,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    F.pad,
    # constant values (shaped like a point-dependent one): affine with slope zero
    torch.zeros_like,
    torch.ones_like,
    torch.full_like,
}
# Affine only with training=False (checked on the call's arguments).
_EVAL_FUNCTIONS: set[Any] = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.batch_norm}
# Bilinear in their two operands: affine when at most one of them depends on the segment.
_PRODUCT_FUNCTIONS: set[Any] = {
    operator.mul,
    operator.imul,
    operator.matmul,
    torch.mul,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.einsum,
}
# The divisor must not depend on the segment.
_DIVISION_FUNCTIONS: set[Any] = {operator.truediv, operator.itruediv, torch.div}
_POOL_FUNCTIONS: set[Any] = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_AFFINE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "repeat",
    "mean",
    "sum",
    "neg",
    "clone",
    "chunk",
    "split",
    "narrow",
    "flip",
    "roll",
    "to",
    "float",
    "double",
    "half",
    "type_as",
    "view_as",
    "reshape_as",
    "__getitem__",
    "new_zeros",
    "new_ones",
    "new_full",
}
_PRODUCT_METHODS = {"mul", "mul_", "matmul", "__mul__", "__rmul__", "__matmul__", "mm", "bmm"}
_DIVISION_METHODS = {"div", "div_", "__truediv__"}
# Methods that give a fixed tensor the batch's shape: the point-dependent arguments they may
# take are sizes (``expand(x.shape[0], -1, -1)``) or, for ``expand_as``, a tensor whose shape
# only is read.
_BATCH_SHAPED_METHODS = {"expand", "expand_as", "repeat"}
# Casts of a constant to a point's dtype or device: a constant again.
_CAST_METHODS = {"to", "type", "type_as", "float", "double", "half", "bfloat16"}
# Functions that make a constant from sizes, dtypes and devices alone.
_FACTORIES: set[Any] = {
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.eye,
    torch.linspace,
    torch.tensor,
    torch.as_tensor,
}
# Affine in several point-dependent operands at once (sums and concatenations); every other
# affine operation is affine in its first operand only, with its other operands fixed.
_SUM_FUNCTIONS: set[Any] = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    torch.add,
    torch.sub,
    torch.cat,
    torch.concat,
    torch.stack,
}
_SUM_METHODS = {"add", "add_", "sub", "sub_", "__add__", "__radd__", "__sub__", "__rsub__"}
# Pointwise max / min of two tensors: a kink where their difference crosses zero.
_PAIR_KINK_FUNCTIONS: dict[Any, str] = {
    torch.maximum: "max",
    torch.minimum: "min",
    torch.fmax: "max",
    torch.fmin: "min",
    torch.max: "max",
    torch.min: "min",
}
_PAIR_KINK_METHODS = {"maximum": "max", "minimum": "min", "max": "max", "min": "min"}
# Checks that produce no value (timm's ``_assert``): nothing to evaluate at a point.
_NO_OPS: set[Any] = {torch._assert, torch._assert_async}
if hasattr(torch, "_check"):
    _NO_OPS.add(torch._check)
# Attributes of a tensor that are affine views of it.
_AFFINE_ATTRIBUTES = {"T", "mT", "H", "mH", "data", "real"}
# Methods whose value is a size, not a tensor: recomputed whenever points are added.
_SIZE_METHODS = {"size", "dim", "numel", "nelement", "__len__"}
_SIZE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}


def _argument(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _function_kinks(node: fx.Node) -> tuple[float, ...] | None:
    """The kinks of an elementwise piecewise-linear function or method call, else None."""
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if node.op == "call_method":
        if name in ("relu", "relu_", "abs", "abs_"):
            return (0.0,)
        if name in ("clamp", "clamp_", "clip", "clip_"):
            low, high = _argument(node, 1, "min", None), _argument(node, 2, "max", None)
            return _constant_kinks(low, high)
        return None
    if target in (F.relu, torch.relu, F.relu_, torch.relu_, F.leaky_relu, torch.abs, operator.abs):
        return (0.0,)
    if target is F.relu6:
        return (0.0, 6.0)
    if target is F.hardtanh:
        low, high = _argument(node, 1, "min_val", -1.0), _argument(node, 2, "max_val", 1.0)
        return _constant_kinks(low, high)
    if target is F.hardsigmoid:
        return (-3.0, 3.0)
    if target in (torch.clamp, torch.clip):
        low, high = _argument(node, 1, "min", None), _argument(node, 2, "max", None)
        return _constant_kinks(low, high)
    return None


def _constant_kinks(low: Any, high: Any) -> tuple[float, ...] | None:
    if any(v is not None and not isinstance(v, int | float) for v in (low, high)):
        return None  # tensor bounds: not supported here
    return tuple(float(v) for v in (low, high) if v is not None)


# ---------------------------------------------------------------------------------------------
# The program: the tail traced down to the operations above


AFFINE, KINK, PAIR, POOL, SIZE, FIXED, INPUT, OUTPUT, NO_OP = (
    "affine",
    "kink",
    "pair kink",
    "pool",
    "size",
    "fixed",
    "input",
    "output",
    "no-op",
)


class _Tracer(fx.Tracer):
    """Keeps the modules this module understands as leaves and traces through all others
    (containers, torchvision's ``Conv2dNormActivation``, user blocks), so that every operation
    the network runs is one node that can be classified."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # A layer is one node only when it computes what its PyTorch class computes: a
        # subclass with a forward of its own (or hooks) is traced into like a user block.
        if not _computes_as_library(m):
            return False
        if isinstance(m, _AFFINE_MODULES + _EVAL_AFFINE_MODULES + _POOL_MODULES):
            return True
        # PyTorch's own layers without children (GELU, LayerNorm...) stay one node, so a
        # refusal names the layer rather than the function inside it.
        builtin = type(m).__module__.startswith("torch.nn.")
        return _module_kinks(m) is not None or (builtin and not any(m.children()))

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # The modules being traced into, innermost last: a failure names where it happened.
        self.inside: list[str] = getattr(self, "inside", [])
        name = self.path_of_module(m)
        self.inside.append(f"{type(m).__name__} (module {name})")
        result = super().call_module(m, forward, args, kwargs)
        self.inside.pop()
        return result


@dataclass
class _Step:
    node: fx.Node
    kind: str
    kinks: tuple[float, ...] = ()
    last_use: int = -1
    pair: str = ""  # "max" or "min" for a PAIR step


@dataclass
class Program:
    """A tail traced for the exact check (see :func:`piecewise_linear_program`)."""

    module: fx.GraphModule
    steps: list[_Step]
    dtype: torch.dtype | None
    # (point shape, dtype, device) of the points the program was probed with (_probe).
    probed: set[tuple[Any, ...]] = field(default_factory=set)


def _network(tail: nn.Module) -> nn.Module:
    # Drivers may wrap a split's FrozenTail again (PathModule keeps its own frozen copy); the
    # wrappers' dtype casts and shape checks are control flow that torch.fx cannot trace.
    while isinstance(tail, FrozenTail):
        tail = tail.network
    return tail


def _operation_name(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        return f"{type(module).__name__} (module {node.target})"
    if node.op == "call_method":
        return f"the method .{node.target}()"
    target = node.target
    name = getattr(target, "__name__", str(target))
    return f"{name}"


def piecewise_linear_program(tail: nn.Module) -> Program:
    """Trace ``tail`` for :func:`check_segments`, or say which operation forbids it.

    Args:
        tail: A module mapping points ``(B, *point_shape)`` to logits; a
            :class:`~connectivity.engine.split.FrozenTail` is unwrapped. It is traced with torch.fx
            (a copy; the caller's module is not changed) down to the operations listed in this
            module's docstring.

    Returns:
        The traced program.

    Raises:
        NotPiecewiseLinearError: the tail cannot be traced, is in training mode, or holds an
            operation on the path's points that is not piecewise linear (GELU, SiLU, sigmoid,
            softmax, LayerNorm, a product of two point-dependent values...); the message names
            the first such operation.
    """
    network = _network(tail)
    if network.training and any(
        isinstance(m, _EVAL_AFFINE_MODULES) and m.training for m in network.modules()
    ):
        raise NotPiecewiseLinearError(
            "the tail is in training mode: batch norm and dropout are piecewise linear in eval "
            "mode only"
        )
    if not _computes_as_library(network) and (
        network._forward_hooks or network._forward_pre_hooks or "forward" in vars(network)
    ):
        # torch.fx traces the class's forward of the root: hooks or a forward set on the
        # instance would be left out of the traced program.
        raise NotPiecewiseLinearError(
            f"the tail {type(network).__name__} has forward hooks or a forward set on the "
            "instance, which the exact check cannot trace; remove them or wrap the tail in a "
            "module"
        )
    module = _trace(network)
    return Program(module, _steps(module), floating_dtype(network))


def _trace(network: nn.Module) -> fx.GraphModule:
    """A torch.fx program of a copy of ``network`` (nothing it does, an ``out=`` into a
    buffer say, reaches the caller's network).

    Raises:
        NotPiecewiseLinearError: torch.fx cannot trace it.
    """
    tracer = _Tracer()
    network = copy.deepcopy(network)
    try:
        graph = tracer.trace(network)
    except Exception as error:  # torch.fx raises many kinds; all mean "not traceable"
        inside = getattr(tracer, "inside", [])
        where = f" inside {inside[-1]}" if inside else ""
        raise NotPiecewiseLinearError(
            f"the tail cannot be traced with torch.fx for the exact check{where} "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    return fx.GraphModule(network, graph)


def _steps(module: fx.GraphModule) -> list[_Step]:
    """What each node of a traced tail does to the points (:func:`_classify`), and when its
    value is last used.

    Raises:
        NotPiecewiseLinearError: an operation on the points that is not piecewise linear, or
            more than one input.
    """
    nodes = list(module.graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    no_ops = _assertion_nodes(nodes)
    depends: dict[fx.Node, bool] = {}
    sizes: set[fx.Node] = set()  # point-dependent values that are sizes, not tensors

    steps: list[_Step] = []
    for node in nodes:
        inputs = node.all_input_nodes
        dependent = node.op == "placeholder" or any(depends[n] for n in inputs)
        depends[node] = dependent
        if node.op == "placeholder":
            if steps:
                raise NotPiecewiseLinearError("the tail takes more than one input")
            steps.append(_Step(node, INPUT))
            continue
        if node.op == "output":
            steps.append(_Step(node, OUTPUT))
            continue
        if node in no_ops:
            steps.append(_Step(node, NO_OP))
            continue
        if not dependent:
            steps.append(_Step(node, FIXED))  # parameters, constants: any operation is fine
            continue
        # Point-dependent only through sizes, dtypes and devices read off the points.
        on_sizes = all(n in sizes for n in inputs if depends[n])
        made = node.op == "call_function" and node.target in _FACTORIES
        cast = node.op == "call_method" and str(node.target) in _CAST_METHODS
        if (made or cast) and on_sizes:
            # A constant made with a size, dtype or device read off a point (``torch.zeros(8,
            # device=h.device)``): the same value at every point. _probe checks that it does
            # not change with the number of points.
            depends[node] = False
            steps.append(_Step(node, FIXED))
            continue
        # Arithmetic on sizes (``x.size(1) // groups``, ``x.shape[0]``): a size again.
        python = getattr(node.target, "__module__", None) in ("_operator", "operator", "builtins")
        if node.op == "call_function" and on_sizes and python:
            steps.append(_Step(node, SIZE))
            sizes.add(node)
            continue
        step = _classify(node, module, depends, sizes)
        if step.kind == SIZE:
            sizes.add(node)
        steps.append(step)
    # A value is kept until its last use; a size read off a point-dependent tensor is read
    # again whenever points are added, so the tensor it reads lives as long as the size.
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        users = [position[u] for u in step.node.users]
        step.last_use = max(
            [i, *users, *(steps[u].last_use for u in users if steps[u].kind == SIZE)]
        )
    return steps


def _assertion_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    """The checks that produce no value (``torch._assert``...) and the nodes computed only for
    them: none of them is evaluated at the path's points (their conditions, on sizes or on
    values, say nothing of the logits)."""
    found: set[fx.Node] = set()
    for node in reversed(nodes):
        check = node.op == "call_function" and node.target in _NO_OPS
        only_for_checks = node.op not in ("placeholder", "output") and bool(node.users)
        if check or (only_for_checks and all(user in found for user in node.users)):
            found.add(node)
    return found


def _nodes_in(value: Any) -> list[fx.Node]:
    """Every node inside an argument (lists, tuples, slices and dicts included), one entry per
    position: ``mul(h, h)`` gives ``h`` twice."""
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, tuple | list):
        return [n for v in value for n in _nodes_in(v)]
    if isinstance(value, slice):
        return _nodes_in([value.start, value.stop, value.step])
    if isinstance(value, dict):
        return _nodes_in(list(value.values()))
    return []


def _classify(
    node: fx.Node, root: nn.Module, depends: dict[fx.Node, bool], sizes: set[fx.Node]
) -> _Step:
    """The kind of a node whose value depends on the segment; refuses other operations.

    What decides is what the operation computes with the operands it gets, counted by
    position: a product is affine only when one operand depends on the point (``h * h`` and
    ``einsum('i,i->', h, h)`` do not), an index only when it does not depend on the point.
    """
    first_name = "self" if node.op == "call_method" else "input"
    first = node.args[:1] if node.args else [v for k, v in node.kwargs.items() if k == first_name]
    rest = [*node.args[1:], *(v for k, v in node.kwargs.items() if k != first_name or node.args)]

    def values(arguments: Any) -> int:  # point-dependent tensors among the arguments
        return sum(1 for n in _nodes_in(arguments) if depends[n] and n not in sizes)

    def sized(arguments: Any) -> int:  # point-dependent sizes among the arguments
        return sum(1 for n in _nodes_in(arguments) if depends[n] and n in sizes)

    everything = [*first, *rest]
    target = node.target
    # Affine in its first operand, the others fixed (sizes allowed: shapes, dimensions).
    # ``view_as(y)`` and the like read ``y``'s shape or dtype only.
    shape_only = node.op == "call_method" and str(target).endswith("_as")
    single = values(first) == 1 and (shape_only or values(rest) == 0)
    # Several point-dependent operands summed or joined; no sizes in the arithmetic.
    summed = sized(everything) == 0
    # A product: one point-dependent operand at most, no size (the batch would scale it).
    product = values(everything) + sized(everything) <= 1
    # A division: nothing point-dependent in the divisor.
    division = values(first) == 1 and values(rest) + sized(rest) == 0
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        kind = _known_module(module) if single else None
        if kind == KINK:
            return _Step(node, KINK, _module_kinks(module) or ())
        if kind is not None:
            return _Step(node, kind)
    elif node.op == "call_method":
        name = str(target)
        kinks = _function_kinks(node)
        if kinks is not None and single:
            return _Step(node, KINK, kinks)
        if name in _PAIR_KINK_METHODS and len(everything) == 2 and _pair(node, depends):
            return _Step(node, PAIR, pair=_PAIR_KINK_METHODS[name])
        if name in _SIZE_METHODS:
            return _Step(node, SIZE)
        if name in _BATCH_SHAPED_METHODS and values(first) == 0 and values(rest) <= 1:
            # A fixed tensor given the batch's shape (the ViT's class token expanded to the
            # batch): the same value at every point, so affine with slope zero.
            return _Step(node, AFFINE)
        if name in _SUM_METHODS and summed:
            return _Step(node, AFFINE)
        if name in _AFFINE_METHODS and single and _keeps_floating(node):
            return _Step(node, AFFINE)
        if name in _PRODUCT_METHODS and product:
            return _Step(node, AFFINE)
        if name in _DIVISION_METHODS and division and _plain_division(node):
            return _Step(node, AFFINE)
    elif node.op == "call_function":
        kinks = _function_kinks(node)
        if kinks is not None and single:
            return _Step(node, KINK, kinks)
        if target in _PAIR_KINK_FUNCTIONS and len(everything) == 2 and _pair(node, depends):
            return _Step(node, PAIR, pair=_PAIR_KINK_FUNCTIONS[target])
        if target is getattr:
            if node.args[1] in _SIZE_ATTRIBUTES:
                return _Step(node, SIZE)
            if node.args[1] in _AFFINE_ATTRIBUTES:
                return _Step(node, AFFINE)
        if target in _SUM_FUNCTIONS and summed:
            return _Step(node, AFFINE)
        if target in _AFFINE_FUNCTIONS and single and _fill_fixed(node, depends):
            return _Step(node, AFFINE)
        if (
            target in _EVAL_FUNCTIONS
            and single
            and _argument(node, 5 if target is F.batch_norm else 2, "training", False) is False
        ):
            return _Step(node, AFFINE)
        if target in _POOL_FUNCTIONS and single and not _returns_indices(node):
            return _Step(node, POOL)
        if target in _PRODUCT_FUNCTIONS and product:
            return _Step(node, AFFINE)
        if target in _DIVISION_FUNCTIONS and division and _plain_division(node):
            return _Step(node, AFFINE)
    raise NotPiecewiseLinearError(
        f"the exact check needs a piecewise-linear tail, and {_operation_name(node, root)} "
        f"(node {node.name}) is not piecewise linear in the path's points"
    )


def _pair(node: fx.Node, depends: dict[fx.Node, bool]) -> bool:
    """A pointwise max / min of two tensors (``torch.max(h, 1)`` reduces a dimension)."""
    operands = [*node.args, *node.kwargs.values()]
    return len(operands) == 2 and all(isinstance(v, fx.Node | Tensor) for v in operands)


def _keeps_floating(node: fx.Node) -> bool:
    """A cast or view that keeps floating-point values (``.to(torch.long)`` and
    ``.view(torch.int32)`` do not)."""
    for value in [*node.args[1:], *node.kwargs.values()]:
        if isinstance(value, torch.dtype) and not value.is_floating_point:
            return False
        if isinstance(value, torch.dtype) and str(node.target) == "view":
            return False  # a reinterpretation of the bits
    return True


def _plain_division(node: fx.Node) -> bool:
    return node.kwargs.get("rounding_mode") is None and (len(node.args) < 3 or node.args[2] is None)


def _fill_fixed(node: fx.Node, depends: dict[fx.Node, bool]) -> bool:
    """``full_like``'s fill value must not depend on the point."""
    if node.target is not torch.full_like:
        return True
    fill = _argument(node, 1, "fill_value", None)
    return not any(depends[n] for n in _nodes_in(fill))


def _returns_indices(node: fx.Node) -> bool:
    adaptive = "adaptive" in getattr(node.target, "__name__", "")
    return bool(_argument(node, 2 if adaptive else 6, "return_indices", False))


def why_not_piecewise_linear(tail: nn.Module) -> str | None:
    """None when :func:`check_segments` can check ``tail`` exactly, else why not (one line
    naming the operation)."""
    try:
        piecewise_linear_program(tail)
    except NotPiecewiseLinearError as error:
        return str(error)
    return None


# ---------------------------------------------------------------------------------------------
# Running the program on a growing set of points


class _OverflowError(Exception):
    """Raised when a batch of points would grow past the memory bound; carries the points."""

    def __init__(self, unit: Tensor, t: Tensor) -> None:
        super().__init__()
        self.unit, self.t = unit, t
        self.step = -1  # the program step that overflowed (set by _run)


class _Points:
    """Points of several stretches ("units") of segments, sorted by unit, then by ``t``.

    ``unit``: ``(P,)`` long, the unit of each point; ``t``: ``(P,)`` float64, its parameter on
    its segment. ``values`` are the live values of the program, indexed by node.
    """

    def __init__(self, unit: Tensor, t: Tensor, max_values: int) -> None:
        self.unit, self.t = unit, t
        self.values: dict[fx.Node, Any] = {}
        self.dependent: set[fx.Node] = set()
        self.max_values = max_values

    @property
    def count(self) -> int:
        return int(self.t.shape[0])

    def intervals(self) -> Tensor:
        """``(P - 1,)`` bool: row ``i`` and ``i + 1`` bound an interval of the same unit."""
        return self.unit[1:] == self.unit[:-1]

    def _live_values_per_point(self) -> int:
        seen: set[int] = set()
        total = 0
        for node in self.dependent:
            for tensor in _tensors(self.values[node]):
                if id(tensor) not in seen and tensor.dim() and tensor.shape[0] == self.count:
                    seen.add(id(tensor))
                    total += tensor.numel() // max(self.count, 1)
        return max(total, 1)

    def insert(self, left: Tensor, t_new: Tensor) -> Tensor:
        """Add points ``t_new`` inside the intervals starting at rows ``left``.

        Every live point-dependent value is linearly interpolated at the new points (exact:
        each is affine between neighbouring points). Duplicates and points not strictly
        inside their interval are dropped.

        Args:
            left: ``(k,)`` long row of each new point's interval.
            t_new: ``(k,)`` float64.

        Returns:
            ``(k,)`` long: the new row of each given point (-1 for dropped ones).

        Raises:
            _OverflowError: the points would hold more than ``max_values`` values per activation.
        """
        t_left, t_right = self.t[left], self.t[left + 1]
        keep = (t_new > t_left) & (t_new < t_right)
        result = torch.full_like(left, -1)
        if not bool(keep.any()):
            return result
        kept = keep.nonzero().squeeze(1)
        # Sort by (left, t): t first, then a stable sort by the interval.
        order = torch.argsort(t_new[kept], stable=True)
        order = order[torch.argsort(left[kept][order], stable=True)]
        rows, ts = left[kept][order], t_new[kept][order]
        fresh = torch.ones_like(rows, dtype=torch.bool)
        fresh[1:] = (rows[1:] != rows[:-1]) | (ts[1:] != ts[:-1])
        group = fresh.cumsum(0) - 1  # index of each sorted point among the unique ones
        rows, ts = rows[fresh], ts[fresh]
        k = rows.shape[0]
        total = self.count + k
        if total * self._live_values_per_point() > self.max_values and total > 2:
            merged_t = torch.cat([self.t, ts])
            merged_unit = torch.cat([self.unit, self.unit[rows]])
            raise _OverflowError(merged_unit, merged_t)
        new_rows = rows + 1 + torch.arange(k, device=rows.device)
        old_rows = torch.arange(self.count, device=rows.device)
        old_rows = old_rows + torch.searchsorted(rows, old_rows, side="left")
        weight = (ts - self.t[rows]) / (self.t[rows + 1] - self.t[rows])

        done: dict[int, Tensor] = {}

        def grow(value: Any) -> Any:
            if isinstance(value, Tensor):
                if value.dim() == 0 or value.shape[0] != self.count:
                    return value
                if id(value) in done:  # an alias (in-place operation): keep it one tensor
                    return done[id(value)]
                w = weight.to(value.dtype).view(-1, *([1] * (value.dim() - 1)))
                out = value.new_empty((total, *value.shape[1:]))
                out.index_copy_(0, old_rows, value)
                left_values = value.index_select(0, rows)
                right_values = value.index_select(0, rows + 1)
                out.index_copy_(0, new_rows, left_values.lerp_(right_values, w))
                done[id(value)] = out
                return out
            if isinstance(value, tuple | list) and not isinstance(value, torch.Size):
                return type(value)(grow(v) for v in value)
            return value

        for node in self.dependent:
            self.values[node] = grow(self.values[node])
        unit = self.unit.new_empty(total)
        unit.index_copy_(0, old_rows, self.unit)
        unit.index_copy_(0, new_rows, self.unit[rows])
        t = self.t.new_empty(total)
        t.index_copy_(0, old_rows, self.t)
        t.index_copy_(0, new_rows, ts)
        self.unit, self.t = unit, t
        where = torch.full_like(left, -1)
        where_kept = new_rows[group]
        unsorted = torch.empty_like(where_kept)
        unsorted[order] = where_kept
        where[kept] = unsorted
        result = where
        return result


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    return []


def _add_kink_crossings(points: _Points, node: fx.Node, kinks: tuple[float, ...]) -> None:
    """Add the points where the elementwise input of ``node`` crosses one of its kinks."""
    (source,) = node.all_input_nodes[:1]
    if points.count < 2:
        return
    found = _crossings(points, points.values[source].reshape(points.count, -1), kinks)
    if found is None:
        return
    left, t_new, units, levels = found
    where = points.insert(left, t_new)
    # The input is exactly at the kink where it crosses it (interpolation leaves a rounding
    # error whose sign could hide a crossing a hair away from the new point).
    placed = where >= 0
    if bool(placed.any()):
        flat = points.values[source].reshape(points.count, -1)
        flat[where[placed], units[placed]] = levels[placed].to(flat.dtype)


def _add_pair_crossings(points: _Points, node: fx.Node) -> None:
    """Add the points where the two operands of a pointwise max / min cross: between them the
    same operand wins, so the result is affine there."""
    if points.count < 2:
        return
    a, b = (_execute_argument(v, points.values) for v in [*node.args, *node.kwargs.values()])
    difference = torch.as_tensor(a) - torch.as_tensor(b)
    if difference.dim() == 0 or difference.shape[0] != points.count:
        return  # neither operand depends on the point row by row: no crossing
    found = _crossings(points, difference.reshape(points.count, -1), (0.0,))
    if found is not None:
        points.insert(found[0], found[1])


def _execute_argument(value: Any, values: dict[fx.Node, Any]) -> Any:
    return values[value] if isinstance(value, fx.Node) else value


def _crossings(
    points: _Points, flat: Tensor, kinks: tuple[float, ...]
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Where ``flat`` ``(P, n)`` crosses each kink strictly inside an interval: the rows of the
    intervals, the crossing ``t``, the column and the kink of each, or None."""
    same = points.intervals()
    lefts, ts, units, levels = [], [], [], []
    for kink in kinks:
        shifted = flat if kink == 0.0 else flat - kink
        # A sign change between the ends, read off the sign bits (one pass of one byte per
        # value, where comparisons and their combinations took five): every pair of ends on
        # both sides of zero is found. The other pairs it finds (-0.0 against a positive
        # value, NaN) give t* at an end or NaN, which insert() drops as not strictly inside;
        # and so do the pairs it leaves out (a negative value against -0.0, NaN).
        sign = torch.signbit(shifted)
        index = (sign[:-1] != sign[1:]).nonzero()
        if index.numel() == 0:
            continue
        # Pairs of rows of two different units are no intervals (rare: one per unit).
        index = index[same[index[:, 0]]]
        row, column = index[:, 0], index[:, 1]
        x_left = shifted[row, column].double()
        x_right = shifted[row + 1, column].double()
        t_left, t_right = points.t[row], points.t[row + 1]
        lefts.append(row)
        ts.append(t_left + (t_right - t_left) * (x_left / (x_left - x_right)))
        units.append(column)
        levels.append(torch.full_like(x_left, kink))
    if not lefts:
        return None
    return torch.cat(lefts), torch.cat(ts), torch.cat(units), torch.cat(levels)


def _pool_with_indices(node: fx.Node, module: nn.Module, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_module":
        pool = copy.copy(module.get_submodule(str(node.target)))
        pool.return_indices = True
        return pool(*args, **kwargs)
    return node.target(*args, **{**kwargs, "return_indices": True})  # type: ignore[operator]


def _pool_dimensions(node: fx.Node, module: nn.Module) -> int:
    """How many spatial dimensions a max pool works on (1, 2 or 3)."""
    if node.op == "call_module":
        name = type(module.get_submodule(str(node.target))).__name__
    else:
        name = getattr(node.target, "__name__", "")
    return next(k for k in (1, 2, 3) if f"{k}d" in name.lower())


def _settle_pool(points: _Points, node: fx.Node, module: nn.Module, rounds: int = 200) -> Any:
    """Add points until every window's winner is the same at both ends of every interval.

    A max of affine functions is affine on an interval if one function is a maximum at both
    ends (it is then a maximum all along); otherwise the point where the left end's winner and
    the right end's winner are equal is added, and the windows are checked again.
    """
    source = node.all_input_nodes[0]
    for _ in range(rounds):
        args = fx.node.map_arg(node.args, lambda n: points.values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: points.values[n])
        out, index = _pool_with_indices(node, module, args, kwargs)
        if points.count < 2:
            return out
        x = points.values[source]
        if x.dim() == _pool_dimensions(node, module) + 1:
            # PyTorch reads (P, L) as one unbatched input whose channels are the points; the
            # winners below are read per (point, channel) window, which that layout is not.
            raise NotPiecewiseLinearError(
                f"{_operation_name(node, module)} (node {node.name}) pools an input without a "
                "channel dimension; the exact check needs (points, channels, ...)"
            )
        flat_x = x.flatten(2)  # (P, C, L_in)
        flat_out, flat_index = out.flatten(2), index.flatten(2)  # (P, C, L_out)
        same = points.intervals()
        # Value at the left end of the right end's winner, and at the right end of the left's.
        right_winner_at_left = flat_x[:-1].gather(2, flat_index[1:])
        left_winner_at_right = flat_x[1:].gather(2, flat_index[:-1])
        # A winner that trails the other end's winner by a rounding error only is a tie: the
        # two are equal at that end (typically at a point added in the previous round).
        slack = _POOL_EPSILONS * torch.finfo(x.dtype).eps
        scale = flat_out[:-1].abs() + flat_out[1:].abs()
        changes = (right_winner_at_left < flat_out[:-1] - slack * scale) & (
            left_winner_at_right < flat_out[1:] - slack * scale
        )
        changes &= same.view(-1, 1, 1)
        where = changes.nonzero()
        if where.numel() == 0:
            return out
        row = where[:, 0]
        d_left = (flat_out[:-1] - right_winner_at_left)[changes].double()  # > 0
        d_right = (left_winner_at_right - flat_out[1:])[changes].double()  # < 0
        t_left, t_right = points.t[row], points.t[row + 1]
        t_new = t_left + (t_right - t_left) * (d_left / (d_left - d_right))
        where_new = points.insert(row, t_new)
        placed = where_new >= 0
        if not bool(placed.any()):
            return out  # only rounding-level changes are left: no point fits inside
        # The two winners are equal where they cross (as a kink's input is set to the kink):
        # interpolation leaves rounding noise there, which would otherwise be chased for ever
        # by ever closer points of two winners that both lie within rounding of the maximum.
        x = points.values[source]
        if x.is_contiguous():
            flat_x = x.view(*x.shape[:2], -1)
            new_row, channel, column = where_new[placed], where[placed, 1], where[placed, 2]
            a_index = flat_index[row[placed], channel, column]
            b_index = flat_index[row[placed] + 1, channel, column]
            tied = torch.maximum(
                flat_x[new_row, channel, a_index], flat_x[new_row, channel, b_index]
            )
            flat_x[new_row, channel, a_index] = tied
            flat_x[new_row, channel, b_index] = tied
    raise UnreliableExactCheckError(
        f"the winners of max pool {node.name} did not settle in {rounds} rounds of added points "
        "(ties within rounding)"
    )


def _run(
    program: Program,
    points: _Points,
    starts: Tensor,
    ends: Tensor,
    segment: Tensor,
    first: int = 0,
) -> Tensor:
    """Run the program on ``points`` from step ``first`` on (the values of the steps before it
    already in ``points``); returns the logits ``(P, classes)`` at the final points.

    Raises:
        _OverflowError: with the step that overflowed, the values of the steps before it left
            in ``points`` (see :func:`_suspend`).
    """
    steps = program.steps
    expiring = _expiring(steps)
    output = None
    for i, step in enumerate(steps):
        if i < first:
            continue
        try:
            output = _run_step(program, points, i, starts, ends, segment)
        except _OverflowError as overflow:
            overflow.step = i
            raise
        if step.kind == OUTPUT:
            break
        for gone in expiring.get(i, []):
            points.values.pop(gone, None)
            points.dependent.discard(gone)
    return _as_logits(output)


def _expiring(steps: list[_Step]) -> dict[int, list[fx.Node]]:
    """``{step index: the nodes whose value no later step reads}``: values die after their
    last use (a size read off a tensor lives as long as the size)."""
    expiring: dict[int, list[fx.Node]] = {}
    for step in steps:
        expiring.setdefault(step.last_use, []).append(step.node)
    return expiring


def _as_logits(output: Any) -> Tensor:
    """The program's output as ``(P, classes)`` logits (``(P, classes, 1, 1)`` flattened).

    Raises:
        NotPiecewiseLinearError: the tail does not return one tensor.
    """
    if not isinstance(output, Tensor):
        raise NotPiecewiseLinearError("the tail does not return one logits tensor")
    if output.dim() > 2 and all(size == 1 for size in output.shape[2:]):
        output = output.flatten(1)
    return output


def _keep(points: Any, program: Program, i: int, result: Any) -> None:
    """Keep step ``i``'s ``result`` at the points (``points``: the segments' :class:`_Points`
    or the plane check's regions, each with ``values`` and ``dependent``): its value, whether
    it depends on the points, and, after a step that added points (a kink, pair or pool),
    the sizes read off values again.

    Raises:
        NotPiecewiseLinearError: a point-dependent step whose values are not floating point.
    """
    module, steps = program.module, program.steps
    step = steps[i]
    node = step.node
    if step.kind not in (FIXED, SIZE) and not _floating(result):
        raise NotPiecewiseLinearError(
            f"the exact check needs a piecewise-linear tail, and "
            f"{_operation_name(node, module)} (node {node.name}) gives values that are "
            "not floating point"
        )
    points.values[node] = result
    if step.kind != FIXED:
        points.dependent.add(node)
    if step.kind in (KINK, PAIR, POOL):
        _refresh_sizes(points, steps, i, module)


def _run_step(
    program: Program, points: _Points, i: int, starts: Tensor, ends: Tensor, segment: Tensor
) -> Any:
    """Step ``i`` of the program on ``points``; returns the output at the OUTPUT step."""
    module, steps = program.module, program.steps
    step = steps[i]

    def value(n: fx.Node) -> Any:
        return points.values[n]

    output = None
    node = step.node
    if step.kind == INPUT:
        rows = segment[points.unit]
        weight = points.t.to(starts.dtype).view(-1, *([1] * (starts.dim() - 1)))
        x = torch.lerp(starts[rows], ends[rows], weight)
        points.values[node] = x.to(program.dtype) if program.dtype is not None else x
        points.dependent.add(node)
    elif step.kind == OUTPUT:
        output = fx.node.map_arg(node.args[0], value)
    elif step.kind == NO_OP:
        points.values[node] = None  # an assertion: nothing to compute at the points
    else:
        if step.kind == KINK:
            _add_kink_crossings(points, node, step.kinks)
        if step.kind == PAIR:
            _add_pair_crossings(points, node)
        if step.kind == POOL:
            result = _settle_pool(points, node, module)
        else:
            result = _execute(node, module, points.values)
        _keep(points, program, i, result)
    return output


def _floating(value: Any) -> bool:
    return all(t.is_floating_point() for t in _tensors(value))


def _execute(node: fx.Node, module: fx.GraphModule, values: dict[fx.Node, Any]) -> Any:
    args = fx.node.map_arg(node.args, lambda n: values[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
    if node.op == "get_attr":
        target: Any = module
        for part in str(node.target).split("."):
            target = getattr(target, part)
        return target
    if node.op == "call_module":
        return module.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_method":
        self_value, *rest = args
        return getattr(self_value, str(node.target))(*rest, **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _refresh_sizes(points: _Points, steps: list[_Step], upto: int, module: fx.GraphModule) -> None:
    """Recompute the live sizes read off point-dependent tensors (the batch grew)."""
    for step in steps[:upto]:
        live = step.node in points.values
        if (
            step.kind == SIZE
            and live
            and all(n in points.values for n in step.node.all_input_nodes)
        ):
            points.values[step.node] = _execute(step.node, module, points.values)


# ---------------------------------------------------------------------------------------------
# What the traced tail does, seen by running it


# Methods whose value is the same at every point, in a shape of their own (not the batch's).
_CONSTANT_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty"}


def _probe(program: Program, start: Tensor, end: Tensor) -> None:
    """Run the whole traced tail on points of one segment and refuse what the exact check's
    invariants do not hold for, judged by what the operations do, not by their names.

    The check keeps the points on the first dimension of every value and interpolates each
    value on its own; so it needs (1) every point-dependent value to hold the points on its
    first dimension and nowhere else (not the case after ``transpose(0, 1)`` or
    ``unsqueeze(0)``; checked on batches of 2 and 3 points), (2) no operation to change,
    in place, a value other than its own input that is used later (an in-place ReLU on a
    view of a value used later changes that value behind the check's back), nor the tail's
    parameters or buffers (``out=`` into a buffer), nor anything at all in an assertion (which
    the check does not evaluate); and (3) each point's logits not to depend on the other
    points (the two batches agree). Once per point shape, dtype and device.

    Raises:
        NotPiecewiseLinearError: one of these fails; the message names the operation.
    """
    key = (tuple(start.shape), start.dtype, start.device.type)
    if key in program.probed:
        return
    t = torch.tensor([0.25, 0.5, 0.75], dtype=start.dtype, device=start.device)
    points = torch.lerp(start.unsqueeze(0), end.unsqueeze(0), t.view(-1, *([1] * start.dim())))
    with torch.no_grad():
        two, shapes_two, made_two = _probe_run(program, points[:2], watch=True)
        three, shapes_three, made_three = _probe_run(program, points[[2, 0, 1]], watch=False)
    constants = {node: (made_two[node], made_three[node]) for node in made_two}
    for node, (value, again) in constants.items():
        if value.shape != again.shape or not torch.equal(value, again):
            raise NotPiecewiseLinearError(
                f"{_operation_name(node, program.module)} (node {node.name}) makes a constant "
                "that changes with the number of points (made from the batch size); the exact "
                "check needs the same constant at every point"
            )
    for node, shapes in shapes_two.items():
        other = shapes_three[node]
        first_dimension = all(
            a[:1] == (2,) and b[:1] == (3,) and a[1:] == b[1:]
            for a, b in zip(shapes, other, strict=True)
        )
        constant = node.op == "call_method" and str(node.target) in _CONSTANT_METHODS
        if not first_dimension and not (constant and shapes == other):
            raise NotPiecewiseLinearError(
                f"{_operation_name(node, program.module)} (node {node.name}) gives a value "
                f"whose first dimension is not the path's points (shapes {shapes} for 2 points, "
                f"{other} for 3); the exact check needs the points on the first dimension of "
                "every value"
            )
    scale = float(two.detach().abs().nan_to_num(nan=0.0, posinf=0.0).amax().clamp_min(1.0))
    tolerance = TOLERANCE_EPSILONS * torch.finfo(two.dtype).eps * scale
    if not torch.allclose(two, three[1:], rtol=0.0, atol=tolerance, equal_nan=True):
        raise NotPiecewiseLinearError(
            "the tail's logits of a point depend on the other points of its batch; the exact "
            "check (like every check of single points) needs a function of single points"
        )
    program.probed.add(key)


def _probe_run(
    program: Program, points: Tensor, watch: bool
) -> tuple[Tensor, dict[fx.Node, list[tuple[int, ...]]], dict[fx.Node, Tensor]]:
    """Run every node of the traced tail on ``points``; returns the logits, the shapes of
    each point-dependent tensor value (sizes and assertions left out), and the constants made
    from sizes read off the points (see :data:`_FACTORIES`). With ``watch``, refuse
    in-place changes the check cannot follow (see :func:`_probe`), by the tensors' version
    counters (shared by a tensor and its views)."""
    module = program.module
    kind = {step.node: step.kind for step in program.steps}
    nodes = [step.node for step in program.steps]
    position = {node: i for i, node in enumerate(nodes)}
    last = {node: max([position[node], *(position[u] for u in node.users)]) for node in nodes}
    state = [*module.named_parameters(), *module.named_buffers()]
    state_versions = [tensor._version for _, tensor in state]
    values: dict[fx.Node, Any] = {}
    dependent: set[fx.Node] = set()
    shapes: dict[fx.Node, list[tuple[int, ...]]] = {}
    made: dict[fx.Node, Tensor] = {}
    output: Any = None
    for i, node in enumerate(nodes):
        if kind[node] == INPUT:
            values[node] = points.to(program.dtype) if program.dtype is not None else points
            dependent.add(node)
            shapes[node] = [tuple(values[node].shape)]
            continue
        if kind[node] == OUTPUT:
            output = fx.node.map_arg(node.args[0], lambda n: values[n])
            break
        later = [n for n in dependent if n in values and last[n] > i]
        before = {n: [t._version for t in _tensors(values[n])] for n in later} if watch else {}
        result = _execute(node, module, values)
        values[node] = result
        if kind[node] != FIXED:
            dependent.add(node)
        elif any(n in dependent for n in node.all_input_nodes) and isinstance(result, Tensor):
            made[node] = result  # a constant made with sizes read off the points
        if watch:
            _refuse_hidden_writes(node, kind[node], result, values, before, program)
            changed = [
                name
                for (name, tensor), version in zip(state, state_versions, strict=True)
                if tensor._version != version
            ]
            if changed:
                raise NotPiecewiseLinearError(
                    f"{_operation_name(node, module)} (node {node.name}) writes into the tail's "
                    f"own {changed[0]}, which the exact check takes as fixed"
                )
        if node in dependent and kind[node] not in (SIZE, NO_OP):
            found = [tuple(t.shape) for t in _tensors(result)]
            if found:
                shapes[node] = found
    if not isinstance(output, Tensor):
        raise NotPiecewiseLinearError("the tail does not return one logits tensor")
    if output.dim() > 2 and all(size == 1 for size in output.shape[2:]):
        output = output.flatten(1)
    return output, shapes, made


def _refuse_hidden_writes(
    node: fx.Node,
    kind: str,
    result: Any,
    values: dict[fx.Node, Any],
    before: dict[fx.Node, list[int]],
    program: Program,
) -> None:
    """Refuse ``node`` if it changed in place a value used later that is not its own result
    (a view's base, another view), or anything at all when it is an assertion."""
    own = {id(t) for t in _tensors(result)}
    for other, versions in before.items():
        tensors = _tensors(values[other])
        if [t._version for t in tensors] == versions:
            continue
        if kind != NO_OP and all(id(t) in own for t in tensors):
            continue  # an in-place operation on its input: one tensor, which the check follows
        raise NotPiecewiseLinearError(
            f"{_operation_name(node, program.module)} (node {node.name}) changes in place "
            f"the value of node {other.name}, which is used later"
            + (
                " (in an assertion, which the exact check does not evaluate)"
                if kind == NO_OP
                else ""
            )
            + "; the exact check follows in-place operations only on a value's own tensor"
        )


# ---------------------------------------------------------------------------------------------
# Segments


@dataclass
class SegmentCheck:
    """The pieces of each segment and the logits at their ends.

    Attributes:
        offsets: ``(S + 1,)`` long: the points of segment ``s`` are rows
            ``offsets[s]:offsets[s + 1]``.
        t: ``(K,)`` float64 parameter of each point on its segment, increasing from 0 to 1
            within each segment (both ends included): the ends of its linear pieces.
        logits: ``(K, classes)`` at those points, in the network's dtype.
        margin: ``(K,)`` float64 target margin ``logit[y] - max_{k != y} logit[k]`` there
            (NaN logits give -inf).
    """

    offsets: Tensor
    t: Tensor
    logits: Tensor
    margin: Tensor

    def pieces(self) -> Tensor:
        """``(S,)`` long: the number of linear pieces of each segment."""
        return self.offsets[1:] - self.offsets[:-1] - 1


def check_segments(
    tail: nn.Module | Program,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    *,
    max_values: int | None = None,
    verify_ends: bool = True,
) -> SegmentCheck:
    """Every point where the tail's logits stop being affine on each segment, and the logits.

    Args:
        tail: A piecewise-linear tail (or its :func:`piecewise_linear_program`).
        starts: ``(S, *point_shape)`` first end of each segment (``t = 0``).
        ends: ``(S, *point_shape)`` second end (``t = 1``).
        targets: ``(S,)`` long target class of each segment (for the margins).
        max_values: Most values the live activations of a batch hold at once (bounds memory;
            the stretches of cut batches that wait hold at most :data:`SUSPENDED_BATCHES` times
            more); longer batches are cut into shorter stretches of segments. None:
            :data:`MAX_VALUES`, or :data:`MAX_VALUES_CPU` for points on a CPU.
        verify_ends: Compare the logits at the segments' ends with a plain forward of the
            tail (one batch of ``2 S`` points): a traced program that does not compute what the
            network computes is an error, not a wrong verdict.

    Returns:
        The pieces and the logits at their ends (see :class:`SegmentCheck`).

    Raises:
        NotPiecewiseLinearError: see :func:`piecewise_linear_program`.
        UnreliableExactCheckError: the traced program's logits at the segments' ends differ
            from the network's beyond the floating-point tolerance, or a max pool's winners
            stay tied within rounding: decide these segments at sampled points instead.
    """
    program = tail if isinstance(tail, Program) else piecewise_linear_program(tail)
    count = starts.shape[0]
    if count:
        _probe(program, starts[0], ends[0])
    device = starts.device
    if max_values is None:
        max_values = MAX_VALUES_CPU if device.type == "cpu" else MAX_VALUES
    # Work units: stretches [t0, t1] of segments, each run from the network's input, as
    # (segment, the sorted t's of the unit's points known so far): a unit starts from its two
    # ends only; the inner points found before tell how many points it will need. And batches
    # suspended at the step where they overflowed, cut into shorter stretches (_Suspended).
    units_segment: list[Tensor] = []
    units_t: list[Tensor] = []
    units_logits: list[Tensor] = []
    whole = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device)
    pending: list[Any] = [(s, whole) for s in range(count)]
    budget: int | None = None  # points per batch, learnt from the first overflow
    held = 0  # values held by the suspended batches in ``pending``
    with torch.no_grad():
        while pending:
            if isinstance(pending[0], _Suspended):
                suspended = pending.pop(0)
                held -= suspended.held
                points, segment, first = suspended.points, suspended.segment, suspended.step
                batch = [(s, None) for s in segment.tolist()]
            else:
                batch, points, segment = _next_batch(pending, budget, max_values, device)
                first = 0
            try:
                logits = _run(program, points, starts, ends, segment, first)
            except _OverflowError as overflow:
                chunks = _suspend(points, overflow.step, segment, program, max_values)
                if chunks and held + sum(c.held for c in chunks) <= SUSPENDED_BATCHES * max_values:
                    held += sum(c.held for c in chunks)
                    pending = chunks + pending
                    budget = max(4, chunks[0].fit // 2)
                    continue
                budget, pieces = _split_units(overflow, batch, max_values, points)
                pending = pieces + pending
                continue
            except (NotPiecewiseLinearError, UnreliableExactCheckError):
                raise
            except Exception as error:
                # A valid tail this check has no rule for (its forward ran in the probe): the
                # paths are decided at sampled points with the reason, never a crash.
                raise UnreliableExactCheckError(
                    f"the exact check could not follow this tail ({type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''})"
                ) from error
            units_segment.append(segment[points.unit])
            units_t.append(points.t)
            units_logits.append(logits)
    return _assemble(
        units_segment, units_t, units_logits, starts, ends, targets, count, program, verify_ends
    )


def _next_batch(
    pending: list[Any], budget: int | None, max_values: int, device: torch.device
) -> tuple[list[tuple[int, Tensor]], _Points, Tensor]:
    """Take the next units from the front of ``pending`` (up to ``budget`` known points, and
    never a suspended batch): the units, their points (each unit's two ends) and segments."""
    batch: list[tuple[int, Tensor]] = []
    size = 0
    while (
        pending
        and not isinstance(pending[0], _Suspended)
        and (budget is None or not batch or size + len(pending[0][1]) <= budget)
    ):
        unit = pending.pop(0)
        batch.append(unit)
        size += len(unit[1])
    segment = torch.tensor([s for s, _ in batch], device=device)
    t0 = torch.stack([known[0] for _, known in batch])
    t1 = torch.stack([known[-1] for _, known in batch])
    unit_index = torch.arange(len(batch), device=device).repeat_interleave(2)
    t = torch.stack([t0, t1], dim=1).reshape(-1)
    return batch, _Points(unit_index, t, max_values), segment


@dataclass
class _Suspended:
    """A stretch of the rows of a batch that overflowed at program step ``step``, with the
    values of the steps before it: it goes on from there (nothing is computed twice)."""

    points: _Points
    segment: Tensor  # (units,) the segment of each unit index of the batch
    step: int
    held: int  # values its live tensors hold
    fit: int  # points that fit in the memory bound at that step


def _suspend(
    points: _Points, step: int, segment: Tensor, program: Program, max_values: int
) -> list[_Suspended]:
    """Cut the rows of a batch that overflowed at ``step`` into stretches of at most a quarter
    of the points that fit (neighbouring stretches share their boundary row; the results'
    duplicates are dropped in :func:`_assemble`), each with a copy of its rows of every live
    value (the batch's own tensors are freed). Empty when the batch is already that short:
    then its units start again from the network's input (:func:`_split_units`)."""
    per_point = max(1, points._live_values_per_point())
    fit = max(4, points.max_values // per_point)
    most = max(2, fit // 4)
    count = points.count
    if count <= most or step <= 0:
        return []
    cuts = [*range(0, count - 1, most - 1), count - 1]
    chunks = []
    for a, b in itertools.pairwise(cuts):
        done: dict[int, Tensor] = {}

        def cut(value: Any, a: int = a, b: int = b, done: dict[int, Tensor] = done) -> Any:
            if isinstance(value, Tensor):
                if value.dim() == 0 or value.shape[0] != count:
                    return value
                if id(value) not in done:  # aliases (in-place operations) stay one tensor
                    done[id(value)] = value[a : b + 1].clone()
                return done[id(value)]
            if isinstance(value, tuple | list) and not isinstance(value, torch.Size):
                return type(value)(cut(v) for v in value)
            return value

        rows = _Points(points.unit[a : b + 1].clone(), points.t[a : b + 1].clone(), max_values)
        rows.dependent = set(points.dependent)
        rows.values = {
            node: cut(value) if node in points.dependent else value
            for node, value in points.values.items()
        }
        _refresh_sizes(rows, program.steps, step, program.module)
        chunks.append(_Suspended(rows, segment, step, rows.count * per_point, fit))
    return chunks


def _split_units(
    overflow: _OverflowError, batch: list[tuple[int, Tensor]], max_values: int, points: _Points
) -> tuple[int, list[tuple[int, Tensor]]]:
    """Cut the units of an overflowing batch at the points found so far into stretches of at
    most a quarter of the points that fit, and the batch size (in points) to use from now on."""
    per_point = max(1, points._live_values_per_point())
    fit = max(4, max_values // per_point)
    most = max(2, fit // 4)
    order = torch.argsort(overflow.t, stable=True)
    order = order[torch.argsort(overflow.unit[order], stable=True)]
    unit, t = overflow.unit[order], overflow.t[order]
    pieces: list[tuple[int, Tensor]] = []
    for u, (segment, _) in enumerate(batch):
        known = torch.unique(t[unit == u])
        if known.numel() < 2:
            continue  # a suspended stretch's row of a unit that its neighbour holds
        if known.numel() <= most:
            pieces.append((segment, known))
            continue
        cuts = [*range(0, known.numel() - 1, most - 1), known.numel() - 1]
        for a, b in itertools.pairwise(cuts):
            pieces.append((segment, known[a : b + 1]))
    return max(4, fit // 2), pieces


def _margins(logits: Tensor, targets: Tensor) -> Tensor:
    logits = logits.double()
    target = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, targets.view(-1, 1), -math.inf).amax(dim=1)
    return (target - others).nan_to_num(nan=-math.inf)


def _assemble(
    units_segment: list[Tensor],
    units_t: list[Tensor],
    units_logits: list[Tensor],
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    count: int,
    program: Program,
    verify_ends: bool,
) -> SegmentCheck:
    device = starts.device
    segment = torch.cat(units_segment) if units_segment else torch.zeros(0, dtype=torch.long)
    t = torch.cat(units_t) if units_t else torch.zeros(0, dtype=torch.float64)
    logits = torch.cat(units_logits) if units_logits else starts.new_zeros(0, 2)
    order = torch.argsort(t, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]
    segment, t, logits = segment[order], t[order], logits[order]
    # Neighbouring stretches share their ends: keep one of each.
    keep = torch.ones_like(segment, dtype=torch.bool)
    keep[1:] = (segment[1:] != segment[:-1]) | (t[1:] != t[:-1])
    segment, t, logits = segment[keep], t[keep], logits[keep]
    offsets = torch.zeros(count + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.bincount(segment, minlength=count).cumsum(0)
    margin = _margins(logits, targets[segment])
    if verify_ends and count:
        with torch.no_grad():
            direct = _forward(program, torch.cat([starts, ends]))
        first, last = logits[offsets[:-1]], logits[offsets[1:] - 1]
        found = torch.cat([first, last]).to(direct.dtype)
        # A non-finite logit (an end the network sends to inf or NaN) must not make the
        # tolerance NaN: such points compare as equal NaN/inf, the others within the tolerance.
        scale = direct.abs().nan_to_num(nan=0.0, posinf=0.0).amax().clamp_min(1.0)
        eps = torch.finfo(direct.dtype).eps
        atol = float(TOLERANCE_EPSILONS * eps * scale)
        if not torch.allclose(found, direct, rtol=0, atol=atol, equal_nan=True):
            # The traced program runs the same operations in other batches; a difference
            # beyond the tolerance is rounding amplified by the network (large, nearly
            # cancelling weights), and margins within it of zero cannot be told apart.
            worst = float((found - direct).abs().nan_to_num(nan=math.inf).max())
            raise UnreliableExactCheckError(
                "the exact check's logits at the segments' ends differ from the tail's own by "
                f"{worst:.3g}, more than its floating-point tolerance {atol:.3g} (rounding of "
                "large intermediate values)"
            )
    return SegmentCheck(offsets, t, logits, margin)


def _forward(program: Program, points: Tensor) -> Tensor:
    x = points.to(program.dtype) if program.dtype is not None else points
    out = program.module(x)
    if out.dim() > 2 and all(size == 1 for size in out.shape[2:]):
        out = out.flatten(1)
    return out


def margin_tolerance(logits: Tensor) -> Tensor:
    """``(K,)`` float64: the margin at each of these points of one path within this distance
    of zero is undecided: :data:`TOLERANCE_EPSILONS` machine epsilons of ``logits``' dtype
    times the largest absolute logit on the path (at least 1).

    The path's largest logit, not the point's own: the values at an inserted point are
    interpolated from its neighbours, with rounding errors of the neighbours' size (a point of
    margin 0.8 between logits of 10^4 carries an error of 1.4e-4 in float32, more than 1,000
    epsilons of 0.8).

    Args:
        logits: ``(K, classes)`` at the piece ends of one path.
    """
    scale = logits.detach().double().abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    scale = scale.amax().clamp_min(1.0) if logits.numel() else scale.new_ones(())
    tolerance = TOLERANCE_EPSILONS * torch.finfo(logits.dtype).eps * scale
    return tolerance.expand(logits.shape[0])


def off_target_parts(left: Tensor, right: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where on each piece the target is not strictly above every other class.

    On a piece the logits are ``l(s) = left + s (right - left)``, ``s`` in [0, 1]; the target is
    above class ``k`` where ``g_k(s) = l_y(s) - l_k(s) > 0``, a half-line of ``s``, so the
    on-target set is one open interval ``(low, high)`` and its complement in [0, 1] is at most
    two closed stretches, one at each end.

    Args:
        left: ``(I, classes)`` logits at the pieces' first ends.
        right: ``(I, classes)`` at their second ends.
        targets: ``(I,)`` long.

    Returns:
        ``low``, ``high`` ``(I,)`` float64 and ``empty`` ``(I,)`` bool: the piece is off target
        on ``[0, low]`` where its first end's margin is <= 0, on ``[high, 1]`` where its second
        end's is, and all along where ``empty``.
    """
    left, right = left.double(), right.double()
    g_left = left.gather(1, targets.view(-1, 1)) - left
    g_right = right.gather(1, targets.view(-1, 1)) - right
    own = F.one_hot(targets, left.shape[1]).bool()
    g_left = g_left.masked_fill(own, math.inf)
    g_right = g_right.masked_fill(own, math.inf)
    crossing = g_left / (g_left - g_right)  # where g_k = 0 (used only where signs differ)
    rising = (g_left <= 0) & (g_right > 0)
    falling = (g_left > 0) & (g_right <= 0)
    never = (g_left <= 0) & (g_right <= 0)
    low = torch.where(rising, crossing, torch.zeros_like(crossing)).amax(dim=1)
    high = torch.where(falling, crossing, torch.ones_like(crossing)).amin(dim=1)
    not_finite = ~(torch.isfinite(left).all(dim=1) & torch.isfinite(right).all(dim=1))
    empty = never.any(dim=1) | (low >= high) | not_finite
    return low, high, empty


# ---------------------------------------------------------------------------------------------
# Paths


@dataclass
class PathCheck:
    """The exact check of each pair's polyline path.

    Positions along a path of ``N`` points: point ``k`` sits at ``k / (N - 1)``, and a point at
    ``t`` on segment ``j`` at ``(j + t) / (N - 1)``.

    Attributes:
        min_margin: ``(pairs,)`` float64 exact lowest target margin over the whole path.
        tolerance: ``(pairs,)`` float64: the tolerance (:func:`margin_tolerance`) of the
            path; a margin within it of zero is undecided.
        passed: ``(pairs,)`` bool: every piece end's margin is above its tolerance, so every
            point of the path is classified as the target.
        decided: ``(pairs,)`` bool: passed, or some piece end's margin is below minus its
            tolerance (the path certainly leaves the class). Undecided paths are neither.
        pieces: ``(pairs,)`` long: linear pieces checked on the path.
        off_target: Per pair a ``(K, 2)`` float64 tensor of the closed stretches of positions
            where the path is off the target (margin <= 0), merged, in order.
        positions: Per pair ``(M,)`` float64 positions of the piece ends.
        margins: Per pair ``(M,)`` float64 margins there.
        note: Why the check decided nothing (see :func:`undecided_checks`), else empty.
    """

    min_margin: Tensor
    tolerance: Tensor
    passed: Tensor
    decided: Tensor
    pieces: Tensor
    off_target: list[Tensor]
    positions: list[Tensor]
    margins: list[Tensor]
    note: str = ""


def undecided_checks(paths: Tensor, note: str) -> PathCheck:
    """A :class:`PathCheck` that decides none of ``paths`` ``(pairs, N, *point_shape)``, with
    the reason in ``note``: for paths whose exact check failed, so that they are decided at
    sampled points."""
    pairs, count = paths.shape[0], paths.shape[1]
    return PathCheck(
        min_margin=torch.full((pairs,), math.nan, dtype=torch.float64),
        tolerance=torch.zeros(pairs, dtype=torch.float64),
        passed=torch.zeros(pairs, dtype=torch.bool),
        decided=torch.zeros(pairs, dtype=torch.bool),
        pieces=torch.zeros(pairs, dtype=torch.long),
        off_target=[torch.zeros(0, 2, dtype=torch.float64)] * pairs,
        positions=[torch.linspace(0.0, 1.0, count, dtype=torch.float64)] * pairs,
        margins=[torch.full((count,), math.nan, dtype=torch.float64)] * pairs,
        note=note,
    )


def check_paths(
    tail: nn.Module | Program,
    paths: Tensor,
    targets: Tensor,
    *,
    max_values: int | None = None,
    verify_ends: bool = True,
) -> PathCheck:
    """Check exactly whether every point of each polyline path is classified as its target.

    All segments of all paths are checked together (:func:`check_segments`).

    Args:
        tail: A piecewise-linear tail (or its program).
        paths: ``(pairs, N, *point_shape)`` polylines, ``N >= 2``.
        targets: ``(pairs,)`` long.
        max_values: See :func:`check_segments`.
        verify_ends: See :func:`check_segments`.

    Returns:
        See :class:`PathCheck`.

    Raises:
        NotPiecewiseLinearError: see :func:`piecewise_linear_program`.
        UnreliableExactCheckError: see :func:`check_segments`.
    """
    finite = torch.isfinite(paths.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        return _with_points_that_are_not_points(
            tail, paths, targets, finite, max_values=max_values, verify_ends=verify_ends
        )
    pairs, count = paths.shape[0], paths.shape[1]
    segments = count - 1
    starts = paths[:, :-1].reshape(pairs * segments, *paths.shape[2:])
    ends = paths[:, 1:].reshape(pairs * segments, *paths.shape[2:])
    segment_targets = targets.repeat_interleave(segments)
    check = check_segments(
        tail, starts, ends, segment_targets, max_values=max_values, verify_ends=verify_ends
    )
    offsets, t, logits, margin = check.offsets, check.t, check.logits, check.margin
    segment_of = torch.repeat_interleave(
        torch.arange(pairs * segments, device=t.device), check.offsets.diff()
    )
    position = ((segment_of % segments).double() + t) / segments
    # Pieces: neighbouring rows of one segment.
    same = segment_of[1:] == segment_of[:-1]
    first = same.nonzero().squeeze(1)
    piece_targets = segment_targets[segment_of[first]]
    low, high, empty = off_target_parts(logits[first], logits[first + 1], piece_targets)
    span = position[first + 1] - position[first]
    starts_at, ends_at = position[first], position[first + 1]
    left_off = margin[first] <= 0
    right_off = margin[first + 1] <= 0
    whole = empty
    stretch_a = torch.stack([starts_at, starts_at + low * span], dim=1)
    stretch_b = torch.stack([starts_at + high * span, ends_at], dim=1)
    stretch_w = torch.stack([starts_at, ends_at], dim=1)
    pair_of_piece = segment_of[first] // segments
    bounds = pair_boundaries(offsets, segments)
    results = _per_pair(
        pairs,
        bounds,
        position,
        margin,
        logits,
        pair_of_piece,
        [(whole, stretch_w), (~whole & left_off, stretch_a), (~whole & right_off, stretch_b)],
    )
    return results


def _with_points_that_are_not_points(
    tail: nn.Module | Program, paths: Tensor, targets: Tensor, finite: Tensor, **options: Any
) -> PathCheck:
    """:func:`check_paths` where some paths hold a NaN or infinite coordinate: the classifier
    gives such a point no class, so those paths leave the class (decided, the whole path off
    target, as a NaN logit counts in the sampled check); the others are checked as usual."""
    rows = finite.nonzero().squeeze(1)
    fine = check_paths(tail, paths[rows], targets[rows], **options) if rows.numel() else None
    check = PathCheck(**off_target_everywhere(paths.shape[0], paths.shape[1]))
    if fine is not None:
        index = rows.cpu()
        for name in ("min_margin", "tolerance", "passed", "decided", "pieces"):
            getattr(check, name)[index] = getattr(fine, name).cpu()
        for name in ("off_target", "positions", "margins"):
            column = getattr(check, name)
            for k, i in enumerate(index.tolist()):
                column[i] = getattr(fine, name)[k]
    return check


def off_target_everywhere(pairs: int, count: int) -> dict[str, Any]:
    """The :class:`PathCheck` fields of ``pairs`` paths of ``count`` points each that are off
    the target on their whole length, decided (paths with a point that is not a point), as
    fresh tensors, to be filled in for the others."""
    return {
        "min_margin": torch.full((pairs,), -math.inf, dtype=torch.float64),
        "tolerance": torch.zeros(pairs, dtype=torch.float64),
        "passed": torch.zeros(pairs, dtype=torch.bool),
        "decided": torch.ones(pairs, dtype=torch.bool),
        "pieces": torch.zeros(pairs, dtype=torch.long),
        "off_target": [torch.tensor([[0.0, 1.0]], dtype=torch.float64)] * pairs,
        "positions": [torch.linspace(0.0, 1.0, count, dtype=torch.float64)] * pairs,
        "margins": [torch.full((count,), -math.inf, dtype=torch.float64)] * pairs,
    }


def pair_boundaries(offsets: Tensor, segments: int) -> Tensor:
    """``(pairs + 1,)`` rows where each pair's points begin in a :class:`SegmentCheck`."""
    return offsets[::segments]


def _per_pair(
    pairs: int,
    bounds: Tensor,
    position: Tensor,
    margin: Tensor,
    logits: Tensor,
    pair_of_piece: Tensor,
    parts: Sequence[tuple[Tensor, Tensor]],
) -> PathCheck:
    off_all = torch.cat([stretch[mask] for mask, stretch in parts])
    owner = torch.cat([pair_of_piece[mask] for mask, _ in parts])
    min_margin = torch.empty(pairs, dtype=torch.float64)
    tolerance = torch.empty(pairs, dtype=torch.float64)
    pieces = torch.empty(pairs, dtype=torch.long)
    passed = torch.empty(pairs, dtype=torch.bool)
    failed = torch.empty(pairs, dtype=torch.bool)
    off_target, positions, margins = [], [], []
    bounds_list = bounds.tolist()
    for p in range(pairs):
        a, b = bounds_list[p], bounds_list[p + 1]
        pair_margin = margin[a:b]
        tol = margin_tolerance(logits[a:b])
        lowest = int(pair_margin.argmin()) if b > a else 0
        min_margin[p] = pair_margin[lowest] if b > a else math.inf
        tolerance[p] = tol[lowest] if b > a else 0.0
        passed[p] = bool((pair_margin > tol).all())
        failed[p] = bool((pair_margin < -tol).any())
        # Rows of one pair: its segments' ends repeat, one piece fewer per segment joint.
        pair_positions = position[a:b]
        pieces[p] = int((pair_positions[1:] != pair_positions[:-1]).sum()) if b > a else 0
        positions.append(pair_positions.cpu())
        margins.append(pair_margin.cpu())
        off_target.append(_merge(off_all[owner == p]).cpu())
    decided = passed | failed
    return PathCheck(min_margin, tolerance, passed, decided, pieces, off_target, positions, margins)


def _merge(stretches: Tensor) -> Tensor:
    """Merge closed stretches ``(K, 2)`` that overlap or touch into ``(K', 2)``, in order."""
    if stretches.shape[0] == 0:
        return stretches.reshape(0, 2)
    stretches = stretches[torch.argsort(stretches[:, 0], stable=True)]
    reach = torch.cummax(stretches[:, 1], dim=0).values
    new = torch.ones(stretches.shape[0], dtype=torch.bool, device=stretches.device)
    new[1:] = stretches[1:, 0] > reach[:-1]
    group = new.cumsum(0) - 1
    count = int(group[-1]) + 1
    low = torch.full((count,), math.inf, dtype=stretches.dtype, device=stretches.device)
    high = torch.full((count,), -math.inf, dtype=stretches.dtype, device=stretches.device)
    low = low.scatter_reduce(0, group, stretches[:, 0], "amin")
    high = high.scatter_reduce(0, group, stretches[:, 1], "amax")
    return torch.stack([low, high], dim=1)
