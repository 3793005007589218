"""``connect``: the plain-Python entry point on any classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import connectivity
from connectivity.classifier import ClassifierModule
from connectivity.data import DigitsDataModule
from connectivity.split import LayerError


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
        assert record.verdict in {v.value for v in connectivity.Verdict}
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
