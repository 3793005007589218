"""timm's zoo: every listed cut runs a band, and the exact check accepts a cut exactly when its
tail is piecewise linear (issue 18).

Random weights, small images (32 pixels; the ViT with 8-pixel patches). Whether a tail should be
accepted is decided here on its own, from the operations the tail runs on the point (a short
list of activations, norms and products that are not piecewise linear), never by asking the
exact check; a refusal must name one of those operations. timm's ``torch._assert`` calls (shape
checks, no-ops for values) are no reason to refuse. The default run checks a few cuts of each
model; ``-m slow`` checks every listed cut of all six.
"""

from __future__ import annotations

import functools
import operator
import re

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from connectivity import layer_names
from connectivity.engine.exact import why_not_piecewise_linear
from connectivity.engine.split import split
from tests.test_zoo import check_cuts_run_a_band, spread_last_layer

timm = pytest.importorskip("timm")

SIDE = 32
MODELS = {
    "resnet18d": {},
    "regnetx_002": {},
    "efficientnet_b0": {},
    "convnext_atto": {},
    "mobilenetv3_small_050": {},
    "vit_tiny_patch16_224": {"img_size": SIDE, "patch_size": 8},
}


@functools.cache
def timm_model(name: str) -> nn.Module:
    """``name`` from timm with random weights and 10 classes, in eval mode (never changed:
    split and connect work on copies)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name]).eval()
    spread_last_layer(model)
    return model


@functools.cache
def timm_layers(name: str) -> tuple[str, ...]:
    return tuple(layer_names(timm_model(name)))


# What is not piecewise linear in the point, and the words a refusal may name it by.
_MODULE_WORDS = {
    "silu": r"silu|swish",
    "swish": r"silu|swish",
    "gelu": r"gelu",
    "hardswish": r"hard.?swish",
    "sigmoid": r"sigmoid",
    "layernorm": r"layer.?norm",
    "layernorm2d": r"layer.?norm",
    "groupnorm": r"group.?norm",
    "softmax": r"softmax",
    "tanh": r"tanh",
    "mish": r"mish",
    "multiheadattention": r"attention",
}
_FUNCTION_WORDS = {
    F.silu: r"silu",
    F.gelu: r"gelu",
    F.hardswish: r"hard.?swish",
    torch.sigmoid: r"sigmoid",
    F.sigmoid: r"sigmoid",
    F.layer_norm: r"layer.?norm",
    F.group_norm: r"group.?norm",
    F.softmax: r"softmax",
    torch.softmax: r"softmax",
    torch.tanh: r"tanh",
    F.scaled_dot_product_attention: r"scaled_dot_product|attention",
    torch.exp: r"exp",
    torch.rsqrt: r"rsqrt",
    torch.sqrt: r"sqrt",
    F.normalize: r"normalize",
}
_METHOD_WORDS = {
    "sigmoid": r"sigmoid",
    "softmax": r"softmax",
    "tanh": r"tanh",
    "exp": r"exp",
    "rsqrt": r"rsqrt",
    "sqrt": r"sqrt",
    "pow": r"pow",
    "norm": r"norm",
}
_PRODUCTS = {operator.mul, torch.mul, operator.matmul, torch.matmul, torch.bmm, torch.einsum}
_PRODUCT_METHODS = {"mul", "mul_", "matmul", "bmm", "__mul__", "__rmul__"}
_PRODUCT_WORDS = r"\bmul|matmul|bmm|einsum|product"


def not_piecewise_linear(tail: nn.Module) -> list[tuple[str, str]]:
    """``(operation, words)`` for every operation of a split's tail, in order, that is not
    piecewise linear in the point: a listed activation or norm (a module called by the tail,
    or any module inside it), a listed function or method, or a product of two values that
    both depend on the point (a squeeze-and-excitation gate, attention)."""
    graph_module = tail.network if hasattr(tail, "network") else tail
    depends: dict[fx.Node, bool] = {}
    found = []
    for node in graph_module.graph.nodes:
        dependent = node.op == "placeholder" or any(depends[n] for n in node.all_input_nodes)
        depends[node] = dependent
        if not dependent or node.op in ("placeholder", "output"):
            continue
        if node.op == "call_module":
            for module in graph_module.get_submodule(str(node.target)).modules():
                words = _MODULE_WORDS.get(type(module).__name__.lower())
                if words is not None:
                    found.append((type(module).__name__, words))
        elif node.op == "call_function" and node.target in _FUNCTION_WORDS:
            found.append((node.target.__name__, _FUNCTION_WORDS[node.target]))
        elif node.op == "call_method" and node.target in _METHOD_WORDS:
            found.append((str(node.target), _METHOD_WORDS[str(node.target)]))
        product = node.target in _PRODUCT_METHODS if node.op == "call_method" else False
        product = product or (node.op == "call_function" and node.target in _PRODUCTS)
        if product and sum(depends[n] for n in node.all_input_nodes) >= 2:
            found.append(("product", _PRODUCT_WORDS))
    return found


def check_exact_acceptance(name: str, layer: str, first: str | None = None) -> None:
    """The exact check accepts ``layer``'s tail iff it is piecewise linear; a refusal names an
    operation of the tail that is not (never timm's ``_assert``). ``first``: the first such
    operation as the architecture has it (the oracle's own check), None for any."""
    _, tail = split(timm_model(name), layer)
    offending = not_piecewise_linear(tail)
    ops = [op for op, _ in offending]
    if first is not None:
        assert ops[:1] == ([first] if first else []), (layer, ops)
    why = why_not_piecewise_linear(tail)
    if not offending:
        assert why is None, (layer, why)
        return
    assert why is not None, (layer, "accepted, but the tail runs", ops)
    assert "_assert" not in why, (layer, why)
    assert any(re.search(words, why, re.IGNORECASE) for _, words in offending), (layer, why, ops)


# (model, cut, the tail's first operation that is not piecewise linear: "" for none), read off
# the architectures: ReLU networks are accepted; efficientnet's last BatchNormAct2d applies a
# SiLU, ConvNeXt's and the ViT's heads a LayerNorm, MobileNetV3's squeeze-and-excitation
# multiplies the point by its own gate. The ViT is affine after its last norm.
EXACT_CASES = [
    ("resnet18d", "layer2", ""),
    ("regnetx_002", "input", ""),
    ("efficientnet_b0", "bn2.batch_norm", "SiLU"),
    ("convnext_atto", "stages.3", "layer_norm"),
    ("mobilenetv3_small_050", "blocks.4.0.aa", "product"),
    ("mobilenetv3_small_050", "blocks.5", "Hardswish"),
    ("vit_tiny_patch16_224", "blocks.11", "layer_norm"),
    ("vit_tiny_patch16_224", "fc_norm", ""),
]


@pytest.mark.parametrize(("name", "layer", "first"), EXACT_CASES)
def test_the_exact_check_accepts_exactly_the_piecewise_linear_tails(
    name: str, layer: str, first: str
) -> None:
    check_exact_acceptance(name, layer, first)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_listed_cut_is_accepted_exactly_when_piecewise_linear(name: str) -> None:
    wrong = []
    for layer in timm_layers(name):
        try:
            check_exact_acceptance(name, layer)
        except AssertionError as error:
            wrong.append(str(error)[:200])
    assert not wrong, f"{len(wrong)} of {len(timm_layers(name))} cuts: {wrong[:5]}"


# The default run takes one band step at a sampled cut of four of the models, and at the ViT's
# input (attn_mask=None and is_causal=False bound); -m slow at every listed cut of all six.
BAND_CASES = {
    "efficientnet_b0": ["blocks.4.2"],
    "convnext_atto": ["stages.2.blocks.0.add"],
    "mobilenetv3_small_050": ["blocks.2.1"],
    "vit_tiny_patch16_224": ["input"],
}


@pytest.mark.parametrize("name", list(BAND_CASES))
def test_a_band_step_runs_at_sampled_cuts(name: str) -> None:
    check_cuts_run_a_band(timm_model(name), SIDE, BAND_CASES[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_every_listed_cut_runs_a_band(name: str) -> None:
    names = timm_layers(name)
    assert names[0] == "input" and len(names) > 40
    check_cuts_run_a_band(timm_model(name), SIDE, list(names))
