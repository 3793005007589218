"""``plane_map``: the plane through three inputs coloured by class, against hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from connectivity.engine.split import LayerError
from connectivity.errors import InputError, OptionsError
from connectivity.maps import plane_map

# As in tests/engine/test_planes.py: corners (0, 0), (5, 0), (5, 12); with resolution 8 and
# padding 0.2 the grid is u = -1..6 (step 1) by v = -2.4..14.4 (step 2.4).
X = torch.tensor([[1.0, 1, 1, 1], [4, 5, 1, 1], [4, 5, 1, 13]])
U = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
V = [-2.4, 0.0, 2.4, 4.8, 7.2, 9.6, 12.0, 14.4]
# Class 1 where u + v > 7.5 (rows of v): 0, 0, 1, 4, 6, 8, 8, 8 grid points.
DIAGONAL = [[int(u + v > 7.5) for u in U] for v in V]
# Class 1 where u > 2.5.
ACROSS = [[int(u > 2.5) for u in U] for v in V]


def _linear(weight: list[float], bias: float) -> nn.Linear:
    """Logits ``(0, weight . x + bias)``."""
    layer = nn.Linear(len(weight), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0] * len(weight), weight]))
        layer.bias.copy_(torch.tensor([0.0, bias]))
    return layer


def diagonal_classifier() -> nn.Sequential:
    """Doubles its input (layer "0"), then batch norm at running statistics 0 and 1, dropout
    and logits ``(0, u + v - 7.5)`` on the plane of X: dropout and batch norm would change
    the map, and the batch norm's statistics, if the classifier ran in training mode."""
    double = nn.Linear(4, 4)
    with torch.no_grad():
        double.weight.copy_(2 * torch.eye(4))
        double.bias.zero_()
    # w . x0 = 2.4 for w = (0.6, 0.8, 0, 1), halved for the doubled input.
    model = nn.Sequential(
        double, nn.BatchNorm1d(4), nn.Dropout(0.5), _linear([0.3, 0.4, 0, 0.5], -9.9)
    )
    return model.train()


class Untraceable(nn.Module):
    """torch.fx cannot trace it: splitting it raises LayerError, so an InputError instead shows
    that the inputs were checked before any work on the classifier."""

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return x
        return -x


def test_the_map_has_the_boundary_of_the_hand_computation() -> None:
    model = diagonal_classifier()
    found = plane_map(model, "input", X, resolution=8, padding=0.2, target=1)
    assert found.classes.shape == (1, 8, 8)
    assert found.classes[0].tolist() == DIAGONAL
    assert found.classes.sum() == 35
    assert torch.allclose(found.u, torch.tensor(U, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(found.v, torch.tensor(V, dtype=torch.float64), atol=1e-6)
    expected = torch.tensor([[5.0 * 0, 0], [5, 0], [5, 12]], dtype=torch.float64)
    assert torch.allclose(found.corners, expected, atol=1e-6)
    # The target's margin: u + v - 7.5 (batch norm's eps scales it by 1 - 5e-6).
    margin = torch.tensor([[u + v - 7.5 for u in U] for v in V], dtype=torch.float64)
    assert torch.allclose(found.margins[0], margin, atol=1e-3)
    assert found.input_classes.tolist() == [[0, 0, 1]]  # u + v = 0, 5 and 17
    assert found.agreement.eq(1).all() and found.pairwise.tolist() == [[1.0]]


def test_in_a_hidden_layer_the_plane_is_through_the_layer_values() -> None:
    found = plane_map(diagonal_classifier(), "0", X, resolution=8, padding=0.2)
    # Layer "0" doubles the inputs: the plane through their values is the input plane scaled.
    expected = torch.tensor([[0.0, 0], [10, 0], [10, 24]], dtype=torch.float64)
    assert torch.allclose(found.corners, expected, atol=1e-5)
    assert torch.allclose(found.u, 2 * torch.tensor(U, dtype=torch.float64), atol=1e-5)
    assert found.classes[0].tolist() == DIAGONAL
    # No target: the predicted class's margin, |u + v - 7.5| in input units, doubled here.
    margin = torch.tensor([[abs(u + v - 7.5) for u in U] for v in V], dtype=torch.float64)
    assert torch.allclose(found.margins[0], margin, atol=1e-3)


def test_the_classifier_and_the_inputs_are_not_changed() -> None:
    model = diagonal_classifier()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = X.clone().requires_grad_(False)
    first = plane_map(model, "input", inputs, resolution=8, padding=0.2)
    again = plane_map(model, "0", inputs, resolution=8, padding=0.2)
    assert model.training and all(m.training for m in model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(inputs, X)
    assert torch.equal(first.classes, again.classes)


def test_several_classifiers_agree_with_themselves_and_not_with_others() -> None:
    model = diagonal_classifier()
    same = plane_map([model, model], "input", X, resolution=8, padding=0.2)
    assert same.classes.shape == (2, 8, 8)
    assert same.agreement.eq(1).all() and same.pairwise.eq(1).all()
    across = nn.Sequential(_linear([1.2, 1.6, 0, 0], -7.8))  # 2u - 5
    both = plane_map([model, across], "input", X, resolution=8, padding=0.2)
    assert both.classes[1].tolist() == ACROSS
    agree = [
        [float(a == b) for a, b in zip(r, s, strict=True)]
        for r, s in zip(DIAGONAL, ACROSS, strict=True)
    ]
    assert both.agreement.tolist() == agree
    # Per row of v the maps agree at 4, 4, 5, 8, 6, 4, 4 and 4 of the 8 points.
    fraction = sum(map(sum, agree)) / 64
    assert fraction == 39 / 64
    assert both.pairwise.tolist() == [[1.0, fraction], [fraction, 1.0]]


def test_images_are_mapped_and_uint8_images_read_as_0_to_1() -> None:
    model = nn.Sequential(nn.Flatten(), _linear([1.0, -1.0, 0.0, 0.0], -0.5))
    images = torch.tensor([[0, 0, 0, 0], [255, 0, 0, 0], [255, 255, 0, 0]], dtype=torch.uint8)
    found = plane_map(model, "input", images.view(3, 1, 2, 2), resolution=5, padding=0.0)
    # In [0, 1]: x1 - x0 = e_0 and x2 - x0 = e_0 + e_1, so the corners are (0, 0), (1, 0), (1, 1).
    expected = torch.tensor([[0.0, 0], [1, 0], [1, 1]], dtype=torch.float64)
    assert torch.allclose(found.corners, expected, atol=1e-6)
    assert found.input_classes.tolist() == [[0, 1, 0]]


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        (X[:2], {}, "three inputs"),
        (torch.rand(3, 4, 4), {}, r"\(3, 4, 4\)"),
        ([X[0], X[1], X[2, :3]], {}, "one input shape"),
        (X.clone().index_fill_(1, torch.tensor([0]), float("nan")), {}, "NaN"),
        (torch.full((3, 1, 2, 2), 2.0), {}, "pixel_range"),
        (torch.stack([X[0], X[1], 2 * X[1] - X[0]]), {}, "one line"),
        (X, {"target": 1.5}, "target"),
    ],
)
def test_inputs_are_refused_before_any_work(inputs: object, options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as error:
        plane_map(Untraceable(), "input", inputs, **options)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_options_and_classifiers_that_do_not_fit_are_refused() -> None:
    with pytest.raises(OptionsError, match="resolution"):
        plane_map(Untraceable(), "input", X, resolution=1)
    with pytest.raises(OptionsError, match="padding"):
        plane_map(Untraceable(), "input", X, padding=-1.0)
    with pytest.raises(InputError, match="input space only"):
        plane_map([diagonal_classifier()] * 2, "0", X)
    with pytest.raises(InputError, match="not a class"):
        plane_map(diagonal_classifier(), "input", X, target=2)
    with pytest.raises(InputError, match="same classes"):
        plane_map([diagonal_classifier(), nn.Linear(4, 3)], "input", X)
    with pytest.raises(LayerError):
        plane_map(Untraceable(), "input", X)
