"""Splitting classifiers at named layers: tail(head(x)) == model(x)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from connectivity.split import FrozenTail, LayerError, layer_names, layer_shape, split

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
