"""Split a classifier at a named layer into a head (input -> layer) and a tail (layer -> logits).

Pure PyTorch (torch.fx); no Lightning. Layers are named as
``torchvision.models.feature_extraction.get_graph_node_names`` names the nodes of the traced
network (``layer1.0.relu_2``, ``avgpool``, ``flatten``...), a module prefix such as ``layer1``
meaning the last node inside that module, plus ``input`` for the input space itself.

A cut is a node whose value is one tensor and the only value that later nodes need from earlier
ones. Which nodes give one tensor is read off the graph (``_value_kinds``); :func:`probe_split`
then checks the head's and the tail's outputs once on a real input.
"""

from __future__ import annotations

import builtins
import copy
import inspect
import math
import operator
from collections.abc import Hashable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import NodePathTracer

from connectivity.errors import ConnectivityError

INPUT = "input"

# What a node's value is: one tensor, several (a tuple from chunk or attention), or something
# else (a size, an int, None).
TENSOR, TENSORS, OTHER = "tensor", "tensors", "other"
_SPLITTING_METHODS = {"chunk", "split", "unbind", "tensor_split", "split_with_sizes"}
_SPLITTING_FUNCTIONS = {torch.chunk, torch.split, torch.unbind, torch.tensor_split}
_NON_TENSOR_METHODS = {"size", "dim", "numel", "nelement", "tolist", "item", "stride", "__len__"}
_NON_TENSOR_FUNCTIONS = {builtins.len, torch.numel, torch._assert, torch.Tensor.size}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}
_MULTI_OUTPUT_MODULES = (nn.MultiheadAttention, nn.RNNBase)


class LayerError(ConnectivityError, ValueError):
    """A layer name that does not name a place where the network can be split, or a network
    whose outputs are not logits."""


def floating_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's first floating parameter (or buffer); None if it has none."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    for tensor in module.buffers():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


class Frozen(nn.Module):
    """A module with frozen parameters that stays in eval mode (a head under a decoder).

    Gradients still flow to its *input*.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.network.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True) -> Frozen:
        # A parent's .train() must not switch batch norm or dropout on in the frozen part.
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)


class FrozenTail(Frozen):
    """The part of a network after a split: parameters frozen, always in eval mode.

    Gradients still flow to its *input*, which is what path optimisation needs; the input itself
    is never changed (the network runs on a copy). Points of any floating dtype go in: they are
    cast to the network's own dtype to evaluate it, and the logits come back in the points'
    dtype (so a float32 band can drive a bfloat16 network).
    Logits shaped ``(B, classes, 1, ..., 1)`` (all-convolutional networks ending in global
    pooling) are flattened to ``(B, classes)``.
    """

    def forward(self, z: Tensor) -> Tensor:
        dtype = floating_dtype(self.network)
        # Always a copy: an in-place operation at the top of the tail (a ReLU right after the
        # cut) must neither overwrite the caller's points nor a leaf that needs gradients.
        x = z.clone() if dtype is None or z.dtype == dtype else z.to(dtype)
        logits = self.network(x)
        if not isinstance(logits, Tensor):
            raise LayerError(_not_a_tensor_message(logits))
        if logits.dim() > 2 and all(size == 1 for size in logits.shape[2:]):
            logits = logits.flatten(1)
        return logits if logits.dtype == z.dtype else logits.to(z.dtype)


def _not_a_tensor_message(value: object) -> str:
    # fx stores returned structures as immutable_dict / immutable_list
    kind = next((k.__name__ for k in (dict, tuple, list) if isinstance(value, k)), None)
    kind = kind or type(value).__name__
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))  # type: ignore[arg-type]
    return (
        f"the classifier returns a {kind}, not one logits tensor (B, classes); pass "
        f"output=<key> to pick the logits (here one of {keys}), or wrap the model so that "
        "its forward returns the logits"
    )


@dataclass(frozen=True)
class _Trace:
    root: nn.Module
    graph: fx.Graph
    nodes: list[fx.Node]
    names: dict[fx.Node, str]
    cuts: set[int]
    kinds: dict[fx.Node, str]


def _pick_output(graph: fx.Graph, model: nn.Module, output: Hashable | None) -> None:
    """Make the graph return only the logits: ``output`` picks them from a tuple or dict."""
    model_name = type(model).__name__
    out = next(n for n in graph.nodes if n.op == "output")
    value = out.args[0]
    if output is None:
        if isinstance(value, (tuple, list, dict)):
            raise LayerError(f"{model_name}: {_not_a_tensor_message(value)}")
        return
    if isinstance(value, fx.Node):
        raise LayerError(f"{model_name} returns one tensor; leave output out (got {output!r})")
    kind = next((k.__name__ for k in (dict, tuple, list) if isinstance(value, k)), "value")
    try:
        picked = value[output]  # type: ignore[index]
    except (TypeError, KeyError, IndexError) as error:
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        raise LayerError(
            f"output={output!r} picks nothing from the {kind} {model_name} returns; give one "
            f"of {keys}"
        ) from error
    if not isinstance(picked, fx.Node):
        raise LayerError(f"output={output!r} of {model_name} is not a tensor")

    # No dead-code elimination: torch.fx would drop in-place calls whose result is unused
    # (``x.relu_()``), changing what the network computes. Unused values stay, and do no harm.
    out.args = (picked,)


def _bound_arguments(model: nn.Module) -> dict[str, object]:
    """The arguments of ``model.forward`` after the input, bound at their defaults for tracing.

    timm's VisionTransformer takes ``forward(x, attn_mask=None, is_causal=False)``: a classifier
    of single points is called with its input alone, so every later argument takes its default.
    ``*args`` and ``**kwargs`` stay empty.

    Raises:
        LayerError: forward takes no input, or a second argument that has no default.
    """
    model_name = type(model).__name__
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin forward: torch.fx reports what it can
        return {}
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not parameters or parameters[0].kind in variadic:
        raise LayerError(
            f"{model_name}.forward takes no single input; only classifiers called as "
            "model(x) can be split (wrap it in a module whose forward(self, x) calls it)"
        )
    required = [p.name for p in parameters[1:] if p.kind not in variadic and p.default is p.empty]
    if required:
        raise LayerError(
            f"{model_name}.forward takes {1 + len(required)} inputs (required besides "
            f"{parameters[0].name!r}: {', '.join(required)}); only classifiers called as "
            "model(x) can be split: give the others defaults, or wrap the model in a module "
            "whose forward(self, x) calls it with them"
        )
    return {p.name: p.default for p in parameters[1:] if p.kind not in variadic}


# What torch.fx inserts to check that an argument bound with concrete_args keeps its value.
_GUARDS = {torch._assert, operator.eq, getattr(fx._symbolic_trace, "_assert_is_none", None)}


def _drop_bound_inputs(graph: fx.Graph, model_name: str) -> None:
    """Remove the placeholders of bound and variadic arguments (and torch.fx's guards on
    them): the split parts take the input alone. An argument whose value the network uses
    (``*args`` read in forward) is refused."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    order = {node: i for i, node in enumerate(graph.nodes)}
    for placeholder in placeholders[1:]:
        found, stack = {placeholder}, [placeholder]
        while stack:
            for user in stack.pop().users:
                if user not in found:
                    found.add(user)
                    stack.append(user)
        used = [n for n in found if n is not placeholder and n.target not in _GUARDS]
        if used:
            name = str(placeholder.target).lstrip("*")
            raise LayerError(
                f"{model_name}.forward uses its argument {name!r} besides the input; only "
                "classifiers called as model(x) can be split (wrap it in a module whose "
                "forward(self, x) calls it)"
            )
        for node in sorted(found, key=order.__getitem__, reverse=True):
            graph.erase_node(node)


def _trace(model: nn.Module, output: Hashable | None = None) -> _Trace:
    leaf_ops = [
        m
        for m in vars(torchvision.ops).values()
        if isinstance(m, type) and issubclass(m, nn.Module)
    ]
    tracer = NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=leaf_ops)
    model_name = type(model).__name__
    bound = _bound_arguments(model)
    try:
        graph = tracer.trace(model, concrete_args=bound or None)
    except Exception as error:  # torch.fx raises many kinds; all mean "not traceable"
        raise LayerError(
            f"{model_name} cannot be traced with torch.fx, so it cannot be split at a "
            f"named layer ({type(error).__name__}: {error})"
        ) from error
    _drop_bound_inputs(graph, model_name)
    _pick_output(graph, model, output)
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise LayerError(
            f"{model_name}.forward takes {len(placeholders)} inputs; "
            "only single-input classifiers can be split"
        )
    kinds = _value_kinds(nodes, model)
    return _Trace(model, graph, nodes, dict(tracer.node_to_qualname), _cut_indices(nodes), kinds)


def _value_kinds(nodes: list[fx.Node], root: nn.Module) -> dict[fx.Node, str]:
    """What each node's value is (TENSOR, TENSORS or OTHER), read off the graph alone.

    Sizes and shapes (``x.size(0)``, ``x.shape``, arithmetic on them) are OTHER, results of
    ``chunk``/``split`` and of attention or recurrent modules are TENSORS, an int index into
    TENSORS gives a TENSOR again; everything else computed from tensors is a TENSOR.
    """
    kinds: dict[fx.Node, str] = {}
    for node in nodes:
        inputs = [kinds.get(n, TENSOR) for n in node.all_input_nodes]
        first = inputs[0] if inputs else OTHER
        kind = TENSOR
        if node.op == "call_module":
            module = root.get_submodule(str(node.target))
            kind = TENSORS if isinstance(module, _MULTI_OUTPUT_MODULES) else TENSOR
        elif node.op == "call_method":
            if first == OTHER:
                kind = OTHER
            elif node.target in _SPLITTING_METHODS:
                kind = TENSORS
            elif node.target in _NON_TENSOR_METHODS:
                kind = OTHER
        elif node.op == "call_function":
            target = node.target
            if target is operator.getitem:
                index = node.args[1]
                kind = TENSOR if first == TENSORS and isinstance(index, int) else first
            elif target is builtins.getattr:
                kind = OTHER if node.args[1] in _SHAPE_ATTRIBUTES else first
            elif target in _SPLITTING_FUNCTIONS:
                kind = TENSORS
            elif target in _NON_TENSOR_FUNCTIONS:
                kind = OTHER
            elif getattr(target, "__module__", None) in ("_operator", "operator", "builtins"):
                kind = TENSOR if TENSOR in inputs else OTHER
        kinds[node] = kind
    return kinds


def _cut_indices(nodes: list[fx.Node]) -> set[int]:
    """Indices of nodes whose output is the only value that later nodes need from earlier ones."""
    position = {node: i for i, node in enumerate(nodes)}
    cuts: set[int] = set()
    reach = -1  # the furthest position that any non-constant node before i is used at
    for i, node in enumerate(nodes):
        if node.op not in ("output", "get_attr") and reach <= i:
            cuts.add(i)
        if node.op != "get_attr":
            reach = max([reach, *(position[user] for user in node.users)])
    return cuts


def _crossing(trace: _Trace, index: int) -> list[fx.Node]:
    """Nodes before ``index`` whose values are used after it (why it is no cut)."""
    position = {node: i for i, node in enumerate(trace.nodes)}
    return [
        node
        for node in trace.nodes[:index]
        if node.op != "get_attr" and any(position[user] > index for user in node.users)
    ]


def _resolve(trace: _Trace, layer: str) -> int | None:
    """Position of the node a layer name refers to, or None if it names no node."""
    if layer == INPUT:
        return next(i for i, n in enumerate(trace.nodes) if n.op == "placeholder")
    found = None
    for i, node in enumerate(trace.nodes):
        name = trace.names.get(node)
        if name is not None and (name == layer or name.startswith(layer + ".")):
            found = i
    return found


def _can_cut(trace: _Trace, index: int | None) -> bool:
    return index is not None and index in trace.cuts and trace.kinds[trace.nodes[index]] == TENSOR


def _named_places(trace: _Trace) -> list[str]:
    """Every name a layer can be given: ``input``, node names and their module prefixes."""
    candidates: dict[str, None] = {INPUT: None}
    for node in trace.nodes:
        name = trace.names.get(node)
        if name is None or node.op == "placeholder":
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            candidates[".".join(parts[:depth])] = None
    return list(candidates)


def _valid_names(trace: _Trace) -> list[str]:
    return [name for name in _named_places(trace) if _can_cut(trace, _resolve(trace, name))]


def _refusal(trace: _Trace, layer: str, index: int | None) -> str:
    """Why ``layer`` is no cut, in the user's terms."""
    model_name = type(trace.root).__name__
    if index is None:
        return f"{layer!r} is not a layer of {model_name}"
    kind = trace.kinds[trace.nodes[index]]
    if kind != TENSOR:
        what = (
            "several tensors (a tuple, e.g. from chunk or split)"
            if kind == TENSORS
            else ("not a tensor (a size, a number or None)")
        )
        return f"{model_name} cannot be cut at {layer!r}: its value is {what}, not one point"
    crossing = _crossing(trace, index)
    names = {n: trace.names.get(n, n.name) for n in crossing}
    tensors = [names[n] for n in crossing if trace.kinds[n] != OTHER]
    if tensors:
        return (
            f"{model_name} cannot be cut at {layer!r}: values computed before it "
            f"({', '.join(tensors)}) are used after it (a skip connection runs across it)"
        )
    sizes = ", ".join(names.values())
    return (
        f"{model_name} cannot be cut at {layer!r}: it reads sizes or shapes before that point "
        f"({sizes}, e.g. x.size(0) at the top of forward) and uses them after it, so the tail "
        "would depend on the head's batch; compute them where they are used to make it a cut"
    )


def layer_names(model: nn.Module, *, output: Hashable | None = None) -> list[str]:
    """All layer names at which ``model`` can be split, in execution order of first use.

    The model is traced as ``model(x)`` calls it: arguments of ``forward`` after the input that
    have defaults are bound at them (timm's VisionTransformer: ``attn_mask=None``,
    ``is_causal=False``); ``*args`` and ``**kwargs`` stay empty.

    Args:
        model: As in :func:`split` (not changed).
        output: As in :func:`split`.
    """
    model = copy.deepcopy(model).eval()
    return _valid_names(_trace(model, output))


def _insert_clone_after_input(graph: fx.Graph) -> None:
    """Let the head work on a copy of its input, so an in-place operation at the top of a
    network never overwrites the caller's tensor (the tail copies in FrozenTail.forward)."""
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    users = list(placeholder.users)
    with graph.inserting_after(placeholder):
        clone = graph.call_method("clone", (placeholder,))
    for user in users:
        user.replace_input_with(placeholder, clone)


def split(
    model: nn.Module, layer: str, *, output: Hashable | None = None
) -> tuple[nn.Module, FrozenTail]:
    """Split ``model`` at ``layer`` so that ``tail(head(x)) == model(x)`` in eval mode.

    The model is copied first, so freezing the tail never touches the caller's model. Neither
    part changes its input tensor (each starts from a copy of it). Check a split on a real
    input with :func:`probe_split` before relying on it.

    Args:
        model: A torch.fx-traceable classifier called as ``model(x)``: later arguments of its
            ``forward`` are bound at their defaults (see :func:`layer_names`).
        layer: A node name as ``get_graph_node_names`` prints it, a module prefix (its last
            node), or ``"input"`` for the input space (the head is then the identity).
        output: For a model that returns a tuple or dict: the index or key of its logits.

    Returns:
        ``(head, tail)``: the head in eval mode with trainable parameters; the tail frozen.

    Raises:
        LayerError: the model cannot be traced, its ``forward`` needs a second argument (one
            without a default, or ``*args``/``**kwargs`` it reads), returns several values and
            ``output`` does not pick one, or ``layer`` names no place where the network can be
            cut; the message says why (unknown name, skip connection, sizes carried across, a
            tuple value) and lists the valid names.
    """
    if not isinstance(layer, str):
        raise LayerError(f"layer must be a name (str), got {layer!r}; see layer_names(model)")
    model = copy.deepcopy(model).eval()
    trace = _trace(model, output)
    index = _resolve(trace, layer)
    if not _can_cut(trace, index):
        valid = _valid_names(trace)
        raise LayerError(f"{_refusal(trace, layer, index)}. Valid layers: {', '.join(valid)}")
    assert index is not None
    if layer == INPUT:
        head: nn.Module = nn.Identity()
    else:
        head = _subgraph_module(model, trace.nodes[: index + 1], output=trace.nodes[index])
    tail_graph = fx.Graph()
    z = tail_graph.placeholder("z")
    values: dict[fx.Node, fx.Node] = {trace.nodes[index]: z}
    for node in trace.nodes[index + 1 :]:
        for used in node.all_input_nodes:
            if used not in values and used.op == "get_attr":
                values[used] = tail_graph.node_copy(used, values.__getitem__)
        values[node] = tail_graph.node_copy(node, values.__getitem__)
    tail = fx.GraphModule(model, tail_graph, f"{type(model).__name__}Tail")
    return head.eval(), FrozenTail(tail)


def _subgraph_module(model: nn.Module, nodes: list[fx.Node], output: fx.Node) -> fx.GraphModule:
    graph = fx.Graph()
    values: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        values[node] = graph.node_copy(node, values.__getitem__)
    graph.output(values[output])
    _insert_clone_after_input(graph)
    # No dead-code elimination (see _pick_output): in-place calls whose result is unused count.
    return fx.GraphModule(model, graph, f"{type(model).__name__}Head")


@dataclass(frozen=True)
class SplitProbe:
    """What one forward of a split on a real input showed.

    Attributes:
        point_shape: Shape of one point of the layer's space (no batch dimension).
        num_classes: Number of logits the tail gives.
    """

    point_shape: tuple[int, ...]
    num_classes: int


@torch.no_grad()
def probe_split(head: nn.Module, tail: nn.Module, example: Tensor) -> SplitProbe:
    """Run ``tail(head(example))`` once and check that it gives one point and logits that do
    not depend on the batch.

    Args:
        head: As :func:`split` returns it.
        tail: Likewise.
        example: ``(B, *input_shape)`` inputs of the head's dtype and device.

    Raises:
        LayerError: the head rejects inputs of this shape, gives no single tensor, or the tail
            gives no ``(B, classes)`` logits with at least two classes.
        BatchDependenceError: a point's values or logits depend on the rest of its batch
            (:func:`check_batch_independent`, two more forwards of 3 and 4 inputs).
    """
    shape = tuple(example.shape[1:])
    try:
        point = head(example)
        if not isinstance(point, Tensor):
            raise LayerError(f"the layer's value is a {type(point).__name__}, not one tensor")
        logits = tail(point)
    except LayerError:
        raise
    except Exception as error:  # the user's network: any error means "wrong input"
        first_line = str(error).splitlines()[0] if str(error) else ""
        if example.shape[0] == 1 and _takes_two(head, tail, example):
            raise BatchDependenceError(
                f"the classifier fails on one input alone ({type(error).__name__}: "
                f"{first_line}) but runs on two: it uses batch statistics (e.g. BatchNorm with "
                "track_running_stats=False), so a point's class depends on its batch; it is "
                "not a classifier of single points"
            ) from error
        raise LayerError(
            f"the classifier cannot take inputs of shape {shape} (batch of "
            f"{example.shape[0]}): {type(error).__name__}: {first_line}"
        ) from error
    if logits.dim() != 2 or logits.shape[0] != example.shape[0]:
        raise LayerError(
            f"the classifier's output has shape {tuple(logits.shape)} for a batch of "
            f"{example.shape[0]}; logits must be (B, classes) (or (B, classes, 1, 1))"
        )
    if logits.shape[1] < 2:
        raise LayerError(
            "the classifier gives 1 logit; the path energy is a cross-entropy over classes, so "
            "give a binary classifier two logits (e.g. torch.cat([-z, z], dim=1))"
        )
    check_batch_independent(head, tail, example)
    return SplitProbe(tuple(point.shape[1:]), int(logits.shape[1]))


class BatchDependenceError(LayerError):
    """A network whose output for one point depends on the other points of its batch (batch
    statistics in eval mode): the class of a single point is not defined."""


def _takes_two(head: nn.Module, tail: nn.Module, example: Tensor) -> bool:
    """Whether the network runs on a batch of two copies of ``example`` (one input)."""
    try:
        with torch.no_grad():
            tail(head(torch.cat([example, example])))
    except Exception:  # the user's network: any error means it does not
        return False
    return True


def _batch_tolerance(values: Tensor, module: nn.Module) -> float:
    """How far one point's values may move between two batches from rounding alone.

    Another batch size may take another kernel (blocking; TF32 convolutions on a GPU round
    products to 11 bits, and their errors add up over the layers), so the bound is relative to
    the values' scale: the square root of the coarsest epsilon involved (float16: 0.031,
    bfloat16: 0.088), and at least 1%. Batch statistics with the probe's companions, shifted
    two spreads up in one batch and down in the other, move values by about half their scale
    and more (40 to 90 times this bound for one BatchNorm with batch statistics in
    tests/test_batch.py), so a generous bound still tells them apart.
    """
    dtypes = [values.dtype, floating_dtype(module) or values.dtype]
    eps = max(torch.finfo(d).eps for d in dtypes)
    scale = float(values.abs().max()) if values.numel() else 0.0
    return max(math.sqrt(eps), 1e-2) * scale


def _companions(example: Tensor, count: int, shift: float, seed: int) -> Tensor:
    """``count`` inputs shaped like ``example[0]``: seeded noise of the example's spread around
    its mean moved by ``shift`` spreads, so that the statistics of a batch with them differ
    from those of a batch with companions of the opposite shift."""
    generator = torch.Generator().manual_seed(seed)
    values = example.detach().float()
    spread = (float(values.std()) if values.numel() > 1 else 0.0) or 1.0
    noise = torch.randn((count, *example.shape[1:]), generator=generator)
    out = float(values.mean()) + spread * (noise + shift)
    return out.to(device=example.device, dtype=example.dtype)


@torch.no_grad()
def check_batch_independent(head: nn.Module, tail: nn.Module, example: Tensor) -> None:
    """Refuse a network whose output for a point depends on the rest of its batch.

    A path's points are evaluated in batches of any composition (``chunk_size``, pairs of a
    round, ranks), so a point's class must be a function of the point alone. Two forwards show
    it: the example inputs with one companion, and the same inputs after two others (another
    batch size, order and company: seeded noise shifted up, then down); the head's values and
    the tail's logits of the example must agree within rounding (:func:`_batch_tolerance`).
    What the model does is checked, not its module types: BatchNorm with
    ``track_running_stats=False`` (batch statistics even in eval mode) is refused, BatchNorm
    with running statistics in eval mode is not.

    Args:
        head: As :func:`split` returns it (``nn.Identity()`` to check a tail alone).
        tail: Likewise; maps the head's values ``(B, *point_shape)`` to logits.
        example: ``(B, *input_shape)`` inputs the head takes (its first two are used).

    Raises:
        BatchDependenceError: the head's values or the tail's logits of the same inputs differ
            between the two batches; the message gives the difference and the tolerance.
        LayerError: the network fails on these batches (a batch size written into forward).
    """
    x = example[:2]
    n = x.shape[0]
    if n == 0:
        return
    first = torch.cat([x, _companions(x, 1, shift=2.0, seed=0)])
    second = torch.cat([_companions(x, 2, shift=-2.0, seed=1), x])
    try:
        points_a, points_b = head(first), head(second)
        logits_a, logits_b = tail(points_a), tail(points_b)
    except Exception as error:  # the user's network: e.g. a batch size written into forward
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise LayerError(
            f"the classifier cannot take a batch of {n + 1} or {n + 2} inputs, and path points "
            f"are evaluated in batches: {type(error).__name__}: {first_line}"
        ) from error
    _same_in_both(points_a[:n], points_b[-n:], head, "the layer's values (the head's output)")
    _same_in_both(logits_a[:n], logits_b[-n:], tail, "the logits")


def _same_in_both(a: Tensor, b: Tensor, module: nn.Module, what: str) -> None:
    tolerance = _batch_tolerance(a, module)
    difference = float((a.float() - b.float()).abs().max())
    if difference > tolerance:
        n = a.shape[0]
        raise BatchDependenceError(
            f"the classifier is not a function of single points: {what} of the same inputs "
            f"differ by {difference:.3g} (tolerance {tolerance:.2g}) between a batch of {n + 1} "
            f"and one of {n + 2}, so a point's class would depend on its batch (batch "
            "statistics, e.g. BatchNorm with track_running_stats=False); use running "
            "statistics (track_running_stats=True, eval mode) or a per-sample norm (GroupNorm, "
            "LayerNorm)"
        )


@torch.no_grad()
def layer_shape(head: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one point of the head's output space for inputs of ``input_shape`` (no batch)."""
    was_training = head.training
    head.eval()
    device = next(head.parameters(), torch.empty(0)).device
    try:
        return tuple(head(torch.zeros(1, *input_shape, device=device)).shape[1:])
    finally:
        head.train(was_training)
