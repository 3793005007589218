"""Every cut that ``layer_names`` lists runs a band, on torchvision's zoo (issue 8).

Random weights, one pair, one band step per cut: the question is whether the mechanism holds at
every cut (a copy of the layer's point goes into the tail, gradients flow back, one tensor per
cut, logits of the right shape), not whether paths are found. The stored ends must be exactly
the head's outputs. Large models are marked ``slow``; the small ones exercise the same
mechanisms (in-place ReLUs after cuts, concatenations, chunked channels, sizes read in
forward, attention) in the default run.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import fx

from connectivity import connect, layer_names
from connectivity.engine.checks import Certifier
from connectivity.engine.exact import NotPiecewiseLinearError, check_segments

# (model, builder kwargs, input side): inputs as small as each model allows
from connectivity.engine.options import PathOptions
from connectivity.engine.split import _resolve, _trace, split

# (model, builder kwargs, input side): inputs as small as each model allows
# The fast set holds every mechanism the slow set needs: in-place ReLUs right after cuts and
# skip additions (resnet18), concatenations (squeezenet1_1), chunked channels and sizes read
# inside forward (shufflenet_v2_x0_5), attention returning a tuple, shapes read at the top and
# a token picked by indexing (torchvision's VisionTransformer, narrow and 2 layers deep).
FAST = [
    ("resnet18", {}, 32),
    ("shufflenet_v2_x0_5", {}, 32),
    ("squeezenet1_1", {}, 32),
    ("vit_small", {}, 32),
]
SLOW = [
    ("vit_b_16", {"image_size": 32}, 32),
    ("mobilenet_v2", {}, 32),
    ("efficientnet_b0", {}, 32),
    ("regnet_y_400mf", {}, 32),
    ("densenet121", {}, 32),
    ("vgg11_bn", {}, 32),  # two 4096-wide linear layers: slow per cut
    ("alexnet", {}, 63),
    ("convnext_tiny", {}, 32),
    ("swin_t", {}, 32),
]


class _Recorder(fx.Interpreter):
    """Runs the traced model and keeps a copy of every node's value as it was computed (later
    in-place operations cannot change the copy): the reference for what a head gives."""

    def run_node(self, node: fx.Node) -> object:
        value = super().run_node(node)
        self.values[node] = value.clone() if isinstance(value, torch.Tensor) else value
        return value


def _values_at_cuts(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> dict:
    trace = _trace(model)
    recorder = _Recorder(fx.GraphModule(model, trace.graph))
    recorder.values = {}
    with torch.no_grad():
        recorder.run(x)
    return {name: recorder.values[trace.nodes[_resolve(trace, name)]] for name in names}


def _model(name: str, kwargs: dict, side: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "vit_small":
        model = torchvision.models.VisionTransformer(
            image_size=side,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=10,
        ).eval()
    else:
        model = torchvision.models.get_model(name, num_classes=10, **kwargs).eval()
    spread_last_layer(model)
    return model


def spread_last_layer(model: torch.nn.Module) -> None:
    """Some builders start the classifier at zero (ViT) or near it: every class would tie."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)][-1]
    torch.nn.init.normal_(last.weight, std=1.0 / last.weight[0].numel() ** 0.5)


def _check_every_cut(name: str, kwargs: dict, side: int, every: int = 1) -> None:
    model = _model(name, kwargs, side)
    names = layer_names(model)
    assert names[0] == "input" and len(names) > 5
    check_cuts_run_a_band(model, side, [*names[:-1:every], names[-1]])


def check_cuts_run_a_band(model: torch.nn.Module, side: int, names: list[str]) -> None:
    """One band step at each of ``names`` (10-class ``model`` of ``side``-pixel RGB images):
    the record's ends are exactly the layer's values as the model computes them."""
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    # A target neither end has: the line fails at once, so every cut takes a band step.
    target = next(c for c in range(10) if c not in predicted.tolist())
    firsts, seconds = _values_at_cuts(model, names, x[:1]), _values_at_cuts(model, names, x[1:])
    for layer in names:
        with pytest.warns(UserWarning, match="is classified as class"):  # ends off target
            (record,) = connect(
                model, layer, x[0], x[1], target, steps=1, num_pivots=1, line_points=3, tol=0.0
            )
        assert record.steps == 1 and record.verdict == "none", layer
        # the layer's value as the model computed it, untouched by in-place operations
        first, second = firsts[layer][0], seconds[layer][0]
        assert torch.equal(record.line[0], first) and torch.equal(record.path[0], first), layer
        assert torch.equal(record.line[-1], second), layer


# Shufflenet has the most cuts (63): every third runs in the default run, each kind of its
# blocks (chunks, shuffles, concatenations) among them; all of them under -m slow.
BAND_EVERY = {"shufflenet_v2_x0_5": 3}


@pytest.mark.parametrize(("name", "kwargs", "side"), FAST, ids=[m[0] for m in FAST])
def test_every_listed_cut_runs_a_band(name: str, kwargs: dict, side: int) -> None:
    _check_every_cut(name, kwargs, side, BAND_EVERY.get(name, 1))


@pytest.mark.slow
def test_every_listed_cut_of_shufflenet_runs_a_band() -> None:
    _check_every_cut("shufflenet_v2_x0_5", {}, 32)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs", "side"), SLOW, ids=[m[0] for m in SLOW])
def test_every_listed_cut_runs_a_band_on_large_models(name: str, kwargs: dict, side: int) -> None:
    _check_every_cut(name, kwargs, side)


# Piecewise-linear models (every cut checked exactly) and the ViT (LayerNorm, GELU and softmax
# attention: refused, the operation named, except after its encoder, where the tail is affine):
# resnet18 and squeezenet are ReLU networks; shufflenet's channel shuffle and chunk are affine.
EXACT = {"resnet18": True, "squeezenet1_1": True, "shufflenet_v2_x0_5": True, "vit_small": False}


def _check_certify_at_cuts(name: str, kwargs: dict, side: int, every: int) -> None:
    # A short stretch of the segment between two images' points at each cut keeps it cheap; the
    # exact check compares its traced tail with the network at the stretch's ends.
    model = _model(name, kwargs, side)
    x = torch.rand(2, 3, side, side)
    auto, exact = PathOptions(certify="auto"), PathOptions(certify="exact")
    names = layer_names(model)
    for layer in [*names[:-1:every], names[-1]]:
        head, tail = split(model, layer)
        certifier = Certifier.for_tail(tail, auto)  # ExactLine beside bounds where it applies
        if EXACT[name]:
            assert certifier.program is not None, (layer, certifier.note)
        if certifier.program is None:
            words = "not piecewise linear|cannot be traced"
            with pytest.raises(NotPiecewiseLinearError, match=words):
                Certifier.for_tail(tail, exact)
            continue
        with torch.no_grad():
            points = head(x)
        end = torch.lerp(points[:1], points[1:], 0.01)
        check = check_segments(certifier.program, points[:1], end, torch.tensor([0]))
        assert check.pieces().item() >= 1, layer


# The default run checks every 8th (shufflenet: 16th) cut of the ReLU networks and the last,
# every cut of the ViT; the slow run every cut of the three.
EVERY = {"resnet18": 8, "squeezenet1_1": 8, "shufflenet_v2_x0_5": 16, "vit_small": 1}


@pytest.mark.parametrize(("name", "kwargs", "side"), FAST, ids=[m[0] for m in FAST])
def test_listed_cuts_are_certified_exactly_or_refused_clearly(
    name: str, kwargs: dict, side: int
) -> None:
    _check_certify_at_cuts(name, kwargs, side, EVERY[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "shufflenet_v2_x0_5"])
def test_every_listed_cut_is_certified_exactly(name: str) -> None:
    _check_certify_at_cuts(name, {}, 32, 1)
