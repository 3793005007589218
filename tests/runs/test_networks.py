"""The classifier a run works on: its own copy, predictions, and spaces checked before work."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from connectivity.engine.split import LayerError
from connectivity.runs.networks import (
    load_network,
    predicted_classes,
    probe_spaces,
    working_copy,
)


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def test_the_callers_network_keeps_its_mode_and_parameters() -> None:
    network = _network().train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    copy = working_copy(network)
    assert network.training and not copy.training
    copy(torch.rand(4, 3, 2, 2))  # eval mode: the copy's batch statistics do not move
    copy[1].weight.data.add_(1.0)
    assert all(torch.equal(network.state_dict()[k], v) for k, v in before.items())
    assert load_network(network) is not network and network.training


def test_predicted_classes_are_each_networks_argmax() -> None:
    images = torch.zeros(3, 1, 1, 3)
    images[0, 0, 0, 2] = 1.0
    images[1, 0, 0, 0] = 1.0
    images[2, 0, 0, 1] = 1.0
    dataset = TensorDataset(images, torch.zeros(3, dtype=torch.long))
    identity = nn.Flatten()  # logits are the pixels: the class is the brightest pixel
    reverse = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        reverse[1].weight.copy_(torch.eye(3).flip(0))
    assert predicted_classes([identity, reverse], dataset, [0, 1, 2], "cpu") == [
        [2, 0, 1],
        [0, 2, 1],
    ]


def test_a_space_that_is_not_a_layer_fails_before_any_work() -> None:
    dataset = TensorDataset(torch.rand(2, 3, 2, 2), torch.zeros(2, dtype=torch.long))
    probe_spaces(_network().eval(), ["input", "1"], dataset)
    with pytest.raises(LayerError, match="layer9"):
        probe_spaces(_network().eval(), ["layer9"], dataset)
