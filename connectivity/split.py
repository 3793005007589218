"""Split a classifier at a named layer into a head (input -> layer) and a tail (layer -> logits).

Pure PyTorch (torch.fx); no Lightning. Layers are named as
``torchvision.models.feature_extraction.get_graph_node_names`` names the nodes of the traced
network (``layer1.0.relu_2``, ``avgpool``, ``flatten``...), a module prefix such as ``layer1``
meaning the last node inside that module, plus ``input`` for the input space itself.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import NodePathTracer

from connectivity.errors import ConnectivityError

INPUT = "input"


class LayerError(ConnectivityError, ValueError):
    """A layer name that does not name a place where the network can be split."""


class FrozenTail(nn.Module):
    """The part of a network after a split: parameters frozen, always in eval mode.

    Gradients still flow to its *input*, which is what path optimisation needs.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.network.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True) -> FrozenTail:
        # A parent's .train() must not switch batch norm or dropout on in the tail.
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, z: Tensor) -> Tensor:
        return self.network(z)


@dataclass(frozen=True)
class _Trace:
    graph: fx.Graph
    nodes: list[fx.Node]
    names: dict[fx.Node, str]
    cuts: set[int]


def _trace(model: nn.Module) -> _Trace:
    leaf_ops = [
        m
        for m in vars(torchvision.ops).values()
        if isinstance(m, type) and issubclass(m, nn.Module)
    ]
    tracer = NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=leaf_ops)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # torch.fx raises many kinds; all mean "not traceable"
        raise LayerError(
            f"{type(model).__name__} cannot be traced with torch.fx, so it cannot be split at a "
            f"named layer ({type(error).__name__}: {error})"
        ) from error
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise LayerError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs; "
            "only single-input classifiers can be split"
        )
    return _Trace(graph, nodes, dict(tracer.node_to_qualname), _cut_indices(nodes))


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


def _valid_names(trace: _Trace) -> list[str]:
    candidates: dict[str, None] = {INPUT: None}
    for node in trace.nodes:
        name = trace.names.get(node)
        if name is None or node.op == "placeholder":
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            candidates[".".join(parts[:depth])] = None
    return [name for name in candidates if _resolve(trace, name) in trace.cuts]


def layer_names(model: nn.Module) -> list[str]:
    """All layer names at which ``model`` can be split, in execution order of first use."""
    model = copy.deepcopy(model).eval()
    return _valid_names(_trace(model))


def split(model: nn.Module, layer: str) -> tuple[nn.Module, FrozenTail]:
    """Split ``model`` at ``layer`` so that ``tail(head(x)) == model(x)`` in eval mode.

    The model is copied first, so freezing the tail never touches the caller's model.

    Args:
        model: A torch.fx-traceable classifier with a single input.
        layer: A node name as ``get_graph_node_names`` prints it, a module prefix (its last
            node), or ``"input"`` for the input space (the head is then the identity).

    Returns:
        ``(head, tail)``: the head in eval mode with trainable parameters; the tail frozen.

    Raises:
        LayerError: the model cannot be traced, or ``layer`` names no place where the network
            can be cut; the message lists the valid names.
    """
    model = copy.deepcopy(model).eval()
    trace = _trace(model)
    index = _resolve(trace, layer)
    if index is None or index not in trace.cuts:
        valid = _valid_names(trace)
        model_name = type(model).__name__
        reason = (
            f"{layer!r} is not a layer of {model_name}"
            if index is None
            else f"{model_name} cannot be cut at {layer!r}: values computed before it are used "
            "after it (a skip connection runs across it)"
        )
        raise LayerError(f"{reason}. Valid layers: {', '.join(valid)}")
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
    head = fx.GraphModule(model, graph, f"{type(model).__name__}Head")
    head.graph.eliminate_dead_code()
    head.recompile()
    return head


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
