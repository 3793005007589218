"""``connect``: the plain-Python entry point on any classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

import connectivity
from connectivity.classifier import ClassifierModule
from connectivity.data import DigitsDataModule
from connectivity.engine.split import LayerError
from connectivity.errors import InputError, OptionsError
from tests.toy import Annulus, RingNet, ring_images


@pytest.fixture(scope="module")
def same_class_images(digits_classifier: Path):
    network = ClassifierModule.from_checkpoint(digits_classifier).network
    dataset = DigitsDataModule().dataset("test")
    images = torch.stack([dataset[i][0] for i in range(60)])
    labels = torch.tensor([int(dataset[i][1]) for i in range(60)])
    label = int(labels[0])
    ones = (labels == label).nonzero().squeeze(1)[:4]
    return network, images[ones[:2]], images[ones[2:4]], label


@pytest.mark.parametrize("layer", ["input", "layer2", "flatten"])
def test_connect_in_each_space(same_class_images, layer: str) -> None:
    network, starts, ends, label = same_class_images
    records = connectivity.connect(network, layer, starts, ends, label, steps=30, num_pivots=5)
    assert len(records) == 2
    for record in records:
        # the digits classifier keeps these lines inside the class in every space
        assert record.verdict == "linear"
        assert record.target == label
        assert record.path.shape[0] == 7
        assert record.path_probabilities.shape == (7, 10)
        assert torch.allclose(record.path_probabilities.sum(dim=1), torch.ones(7), atol=1e-5)
    if layer == "input":
        assert torch.allclose(records[0].path[0], starts[0])
        assert records[0].path.min() >= 0 and records[0].path.max() <= 1


def test_connect_takes_single_images_and_leaves_the_model_alone(same_class_images) -> None:
    network, starts, ends, label = same_class_images
    before = {k: v.clone() for k, v in network.state_dict().items()}
    (record,) = connectivity.connect(network, "layer1", starts[0], ends[0], label, steps=5)
    assert record.path.shape[1:] == (64, 8, 8)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_connect_errors(same_class_images) -> None:
    network, starts, ends, label = same_class_images
    with pytest.raises(LayerError, match="Valid layers"):
        connectivity.connect(network, "layer7", starts, ends, label)
    with pytest.raises(ValueError, match="differ"):
        connectivity.connect(network, "input", starts, ends[:1], label)
    with pytest.raises(ValueError, match="method"):
        connectivity.connect(network, "input", starts, ends, label, method="spline")


# --- Issue 8: inputs validated or converted, never misread; the band's own precision ---


@pytest.fixture
def ring() -> RingNet:
    return RingNet().eval()


def test_uint8_images_are_read_as_pixels_in_0_1(ring: RingNet) -> None:
    start, end = ring_images()
    as_bytes = [(x * 255).round().to(torch.uint8) for x in (start, end)]
    (record,) = connectivity.connect(ring, "input", *as_bytes, 0, steps=300)
    assert record.verdict == "nonlinear"
    assert torch.equal(record.line[0], as_bytes[0].float() / 255)


@pytest.mark.parametrize("layer", ["input", "scale"])
def test_float_images_in_0_255_are_refused_in_every_space(ring: RingNet, layer: str) -> None:
    start, end = ring_images()
    words = r"values in \[31\.875, 223\.125\], outside pixel_range \(0\.0, 1\.0\)"
    with pytest.raises(InputError, match=words):
        connectivity.connect(ring, layer, start * 255, end * 255, 0)
    # inputs on another scale on purpose (already normalised): say so, and they are taken
    (record,) = connectivity.connect(
        ring, layer, start - 0.5, end - 0.5, 0, pixel_range=None, steps=1
    )
    if layer == "input":  # taken as given: no box, no clamping
        assert torch.equal(record.line[0], start - 0.5) and record.path.min() < 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_floating_input_dtype_gives_the_float32_verdict(ring: RingNet, dtype) -> None:
    # float16 with Adam was `diverged` at step 0 (eps underflows), float64 raised a dtype error
    (expected,) = connectivity.connect(ring, "input", *ring_images(), 0, steps=300)
    (record,) = connectivity.connect(ring, "input", *ring_images(dtype), 0, steps=300)
    assert expected.verdict == record.verdict == "nonlinear"
    assert record.path.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert record.steps == expected.steps


def test_a_bfloat16_model_is_driven_by_a_float32_band(ring: RingNet) -> None:
    (record,) = connectivity.connect(ring.to(torch.bfloat16), "input", *ring_images(), 0, steps=300)
    assert record.verdict == "nonlinear" and record.path.dtype == torch.float32
    assert ring.scale.weight.dtype == torch.bfloat16  # the caller's model is left as it was


def test_inputs_that_are_not_images_get_the_same_question() -> None:
    # A tabular classifier on (pairs, features): no pixel box, a bent path around the hole.
    starts = torch.tensor([[1.5, 0.2], [1.2, -0.3]])
    ends = torch.tensor([[-1.5, 0.1], [1.4, 0.3]])
    records = connectivity.connect(Annulus(), "input", starts, ends, 0, lr=0.05, steps=200)
    assert [r.verdict for r in records] == ["nonlinear", "linear"]
    (single,) = connectivity.connect(Annulus(), "input", starts[1], ends[1], 0)
    assert single.verdict == "linear" and single.path.shape == (10, 2)


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (5.7, "integer class indices, got 5.7"),
        (True, "integer class indices, got True"),
        (torch.tensor(1.0), "integer class indices, got dtype torch.float32"),
        (2, "target 2 is not a class of the classifier, which has 2 classes"),
        (-1, "target -1 is not a class"),
        (-100, "target -100 is not a class"),
        ([0, 0, 0], r"target has shape \(3,\)"),
    ],
)
def test_targets_that_are_not_classes_are_refused(ring: RingNet, target, words: str) -> None:
    with pytest.raises(InputError, match=words):
        connectivity.connect(ring, "input", *ring_images(), target)


def test_numpy_and_tensor_integer_targets_are_taken(ring: RingNet) -> None:
    import numpy as np

    for target in (np.int64(0), torch.tensor(0), torch.tensor([0], dtype=torch.int32)):
        (record,) = connectivity.connect(ring, "input", *ring_images(), target, steps=300)
        assert record.target == 0 and record.verdict == "nonlinear"


def test_integer_images_other_than_uint8_and_nan_are_refused(ring: RingNet) -> None:
    start, end = ring_images()
    with pytest.raises(InputError, match=r"dtype torch\.int64"):
        connectivity.connect(ring, "input", start.long(), end.long(), 0)
    with pytest.raises(InputError, match="NaN"):
        connectivity.connect(ring, "input", start * float("nan"), end, 0)


def test_the_callers_model_keeps_its_mode_and_statistics() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(inplace=True),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    ).train()
    model[1].eval()  # a user's mixture of modes
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    start, end = ring_images()
    connectivity.connect(model, "1", start, end, 0, steps=3, tol=0.0)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_a_wrong_shape_is_one_clear_error_in_every_space() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    one_channel = torch.rand(2, 1, 32, 32)
    for layer in ("input", "layer1"):
        with pytest.raises(LayerError, match=r"cannot take inputs of shape \(1, 32, 32\)"):
            connectivity.connect(model, layer, one_channel, one_channel, 0)
    with pytest.raises(InputError, match="empty batch"):
        connectivity.connect(model, "input", one_channel[:0], one_channel[:0], 0)
    with pytest.raises(LayerError, match="layer must be a name"):
        connectivity.connect(model, 3, one_channel, one_channel, 0)  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match="unknown path option 'foo'"):
        connectivity.connect(model, "input", one_channel, one_channel, 0, foo=1)


def test_input_space_ends_are_exactly_the_inputs_whatever_the_model_dtype(ring) -> None:
    start, end = ring_images(torch.float64)
    (record,) = connectivity.connect(ring.to(torch.bfloat16), "input", start, end, 0, steps=1)
    assert record.line.dtype == torch.float64 and torch.equal(record.line[0], start)


def test_numpy_target_arrays_are_taken(ring) -> None:
    import numpy as np

    start, end = ring_images()
    records = connectivity.connect(
        ring, "input", torch.stack([start, start]), torch.stack([end, start]), np.array([0, 0])
    )
    assert [r.target for r in records] == [0, 0]
    assert records[1].verdict == "linear"


def test_connect_warns_when_an_end_is_not_in_the_target_class() -> None:
    # The README's first call with random images: 'none none' and no hint why.
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    x = torch.rand(2, 3, 2, 2)
    predicted = network(x).argmax(dim=1).tolist()
    target = next(c for c in range(4) if c not in predicted)
    with pytest.warns(
        UserWarning,
        match=rf"pair 0: x_start is classified as class "
        rf"{predicted[0]}, not {target}; pair 0: x_end .* end 'none'",
    ):
        (record,) = connectivity.connect(network, "input", x[0], x[1], target, steps=1)
    assert record.verdict == "none"
    # Ends in the class: no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        connectivity.connect(network, "input", x[0], x[0] * 0.99, predicted[0], steps=1)
