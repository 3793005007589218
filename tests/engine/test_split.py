"""Splitting classifiers at named layers: tail(head(x)) == model(x)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from connectivity.engine.split import (
    FrozenTail,
    LayerError,
    layer_names,
    layer_shape,
    probe_split,
    split,
)

# input, an early block, a middle block, the last feature layer; some are functions, not modules
LAYERS = {
    "resnet18": ["input", "layer1", "layer3", "flatten"],
    "resnet50": ["input", "layer1", "layer2.3", "avgpool"],
    "vgg11_bn": ["input", "features.3", "features.14", "flatten"],
    "densenet121": ["input", "features.denseblock1", "features.transition2", "adaptive_avg_pool2d"],
    "mobilenet_v3_small": ["input", "features.1", "features.6", "flatten"],
}


@pytest.fixture(scope="module", params=list(LAYERS))
def model_and_input(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(request.param, num_classes=10).eval()
    return request.param, model, torch.rand(2, 3, 32, 32)


def test_split_reproduces_the_model(model_and_input) -> None:
    name, model, x = model_and_input
    with torch.no_grad():
        expected = model(x)
        for layer in LAYERS[name]:
            head, tail = split(model, layer)
            assert torch.allclose(tail(head(x)), expected, atol=1e-5, rtol=1e-4), layer


def test_input_layer_has_identity_head() -> None:
    model = torchvision.models.resnet18(num_classes=3).eval()
    head, _ = split(model, "input")
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(head(x), x)


def test_layer_shapes_match_the_paper_for_resnet50_at_224() -> None:
    model = torchvision.models.resnet50(num_classes=10)
    assert layer_shape(split(model, "layer1")[0], (3, 224, 224)) == (256, 56, 56)
    assert layer_shape(split(model, "flatten")[0], (3, 224, 224)) == (2048,)


def test_tail_is_frozen_and_stays_in_eval_mode_but_passes_gradients() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    head, tail = split(model, "layer2")
    assert isinstance(tail, FrozenTail)
    parent = torch.nn.ModuleDict({"head": head, "tail": tail}).train()
    assert head.training
    assert not any(m.training for m in tail.network.modules())
    assert not any(p.requires_grad for p in tail.parameters())
    # the caller's model is a different object: splitting froze nothing of it
    assert all(p.requires_grad for p in model.parameters())
    z = torch.rand(2, *layer_shape(head, (3, 32, 32)), requires_grad=True)
    tail(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    parent.eval()


def test_unknown_layer_lists_valid_names() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(LayerError, match=r"'layer9' is not a layer of ResNet.*layer1.*avgpool"):
        split(model, "layer9")


def test_layer_inside_a_skip_connection_is_refused() -> None:
    with pytest.raises(LayerError, match="skip connection"):
        split(torchvision.models.resnet18(), "layer1.0.conv1")


def test_layer_names_are_torchvision_node_names_that_cut() -> None:
    names = layer_names(torchvision.models.resnet18())
    assert names[0] == "input"
    for expected in ["conv1", "layer1", "layer4", "avgpool", "flatten", "fc"]:
        assert expected in names
    assert "layer1.0.conv1" not in names


# --- Fault classes: what a split must do on any model a researcher brings ---


def test_tail_never_changes_its_input_even_with_an_inplace_relu_first() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    head, tail = split(model, "bn1")  # the tail starts with ReLU(inplace=True)
    z = head(torch.rand(2, 3, 32, 32)).detach().requires_grad_(True)
    before = z.detach().clone()
    tail(z).sum().backward()  # raised "a view of a leaf Variable ... in-place" before
    assert torch.equal(z.detach(), before)
    assert z.grad is not None and z.grad.abs().sum() > 0


class _AllConv(torch.nn.Module):
    """Ends in global pooling without flatten: logits (B, C, 1, 1)."""

    def __init__(self, flatten: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.conv(x))
        return out.flatten(1) if self.flatten else out


def test_logits_of_shape_b_c_1_1_are_read_as_b_c() -> None:
    torch.manual_seed(0)
    model = _AllConv(flatten=False).eval()
    head, tail = split(model, "conv")
    x = torch.rand(3, 3, 8, 8)
    probe = probe_split(head, tail, x)
    assert probe.num_classes == 4 and probe.point_shape == (4, 8, 8)
    assert torch.equal(tail(head(x)), model(x).flatten(1))


class _TupleOut(torch.nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.body = torch.nn.Linear(5, 6)
        self.fc = torch.nn.Linear(6, 3)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        features = torch.relu(self.body(x))
        logits = self.fc(features)
        return {"logits": logits, "features": features} if self.as_dict else (logits, features)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_model_returning_several_values_is_refused_or_picked_with_output(as_dict: bool) -> None:
    model = _TupleOut(as_dict).eval()
    kind = "dict" if as_dict else "tuple"
    with pytest.raises(LayerError, match=rf"returns a {kind}, not one logits tensor.*output="):
        split(model, "body")
    with pytest.raises(LayerError, match=rf"returns a {kind}"):
        layer_names(model)
    key = "logits" if as_dict else 0
    head, tail = split(model, "body", output=key)
    x = torch.rand(2, 5)
    assert torch.equal(tail(head(x)), model(x)[key])
    assert "relu" in layer_names(model, output=key)
    with pytest.raises(LayerError, match="picks nothing"):
        split(model, "body", output="nope" if as_dict else 5)


def test_cuts_whose_value_is_a_tuple_are_not_listed_and_are_refused() -> None:
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    names = layer_names(model)
    assert not [n for n in names if n.endswith("chunk")]
    assert "stage2" in names
    with pytest.raises(LayerError, match="several tensors"):
        split(model, "stage2.1.chunk")  # x.chunk(2, dim=1) inside an InvertedResidual


class _ReadsBatchSize(torch.nn.Module):
    """Reads x.size(0) at the top and uses it at the end (no skip connection anywhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3)
        self.b = torch.nn.Conv2d(4, 4, 3)
        self.fc = torch.nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        return self.fc(self.b(self.a(x)).reshape(n, -1))


def test_a_refused_cut_names_the_real_reason() -> None:
    model = _ReadsBatchSize().eval()
    with pytest.raises(LayerError, match=r"reads sizes or shapes.*\(size\b") as caught:
        split(model, "a")
    assert "skip connection" not in str(caught.value)
    with pytest.raises(LayerError, match=r"\(maxpool\) are used after it \(a skip connection"):
        split(torchvision.models.resnet18(), "layer1.0.conv1")


def test_probe_names_shapes_the_model_cannot_take() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    head, tail = split(model, "layer1")
    with pytest.raises(LayerError, match=r"cannot take inputs of shape \(1, 32, 32\)"):
        probe_split(head, tail, torch.rand(2, 1, 32, 32))


class _UnassignedInPlace(torch.nn.Module):
    """In-place calls whose result is not assigned: they still change what follows."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor):
        x = self.c(x)
        x.relu_()
        torch.nn.functional.relu(x, inplace=True)
        x = x * 2
        x.add_(1)
        return {"logits": self.fc(x.mean(dim=(2, 3)))}


def test_in_place_calls_whose_result_is_unused_are_kept() -> None:
    torch.manual_seed(0)
    model = _UnassignedInPlace().eval()
    x = torch.rand(2, 3, 8, 8) - 0.5
    expected = model(x)["logits"]
    for layer in layer_names(model, output="logits"):
        head, tail = split(model, layer, output="logits")
        assert torch.allclose(tail(head(x)), expected, atol=1e-6), layer


class _MaskedClassifier(torch.nn.Module):
    """A classifier whose forward takes extra arguments with defaults, as timm's
    VisionTransformer does (``forward(x, attn_mask=None, is_causal=False)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 6)
        self.b = torch.nn.Linear(6, 3)

    def forward(self, x, mask=None, scale: float = 2.0, *args, causal: bool = False, **kwargs):
        h = self.a(x).relu()
        if mask is not None:
            h = h * mask
        if causal:
            h = h.flip(-1)
        return self.b(h) * scale


def test_arguments_with_defaults_are_bound_at_them() -> None:
    torch.manual_seed(0)
    model = _MaskedClassifier().eval()
    x = torch.randn(5, 4)
    names = layer_names(model)
    assert names == ["input", "a", "relu", "b", "mul"]
    for layer in names:
        head, tail = split(model, layer)
        # scale=2 and no mask, no flip: the defaults, so the parts reproduce model(x)
        assert torch.equal(tail(head(x)), model(x)), layer
        assert torch.equal(tail(head(x)), 2 * model.b(model.a(x).relu())), layer


def test_a_second_argument_without_default_is_refused_by_name() -> None:
    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 3)

        def forward(self, x, y, *, z):
            return self.a(x + y + z)

    with pytest.raises(LayerError, match=r"TwoInputs.forward takes 3 inputs .*: y, z\)"):
        layer_names(TwoInputs())


def test_an_argument_read_through_kwargs_is_refused() -> None:
    class ReadsKwargs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 3)

        def forward(self, x, **kwargs):
            return self.a(x) * kwargs["scale"]

    with pytest.raises(LayerError, match=r"ReadsKwargs.forward uses its argument 'kwargs'"):
        layer_names(ReadsKwargs())
