"""Which inputs of each class a graph run joins: seeded, per class, correctly classified."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from connectivity.runs.inputs import ClassInputs, dataset_labels, select_inputs
from connectivity.runs.sampling import PairError

# Ten 1x1x2 images: the class is the brighter pixel; labels as given (two are wrong).
LABELS = [0, 1, 0, 1, 0, 1, 0, 1, 1, 0]
IMAGES = torch.tensor([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(10)]).view(
    10, 1, 1, 2
)
DATASET = TensorDataset(IMAGES, torch.tensor(LABELS))  # items 8 and 9 are mislabelled
NETWORK = nn.Flatten()  # logits are the pixels


def test_labels_are_read_through_subsets() -> None:
    assert dataset_labels(DATASET) == LABELS
    assert dataset_labels(Subset(DATASET, [9, 0, 3])) == [0, 0, 1]


def test_each_class_gets_correctly_classified_inputs_the_same_for_one_seed() -> None:
    draw = ClassInputs(per_class=3, seed=1)
    first = select_inputs([NETWORK], DATASET, draw, ["a", "b"])
    assert [s.label for s in first] == [0, 1]
    for s in first:
        assert len(s.indices) == 3 and all(LABELS[i] == s.label for i in s.indices)
        assert not {8, 9} & set(s.indices)  # the network disagrees with their labels
    again = select_inputs([NETWORK], DATASET, draw, ["a", "b"])
    assert [s.indices for s in again] == [s.indices for s in first]


def test_misclassified_inputs_are_met_and_named_with_their_predicted_class() -> None:
    draw = ClassInputs(per_class=5, classes=[0], include_misclassified=True)
    (chosen,) = select_inputs([NETWORK], DATASET, draw, ["a", "b"])
    assert sorted(chosen.indices) == [0, 2, 4, 6]  # only four are classified as 0
    assert chosen.misclassified == [[(9, 1)]]


def test_explicit_indices_are_grouped_by_label_and_checked() -> None:
    chosen = select_inputs([NETWORK], DATASET, ClassInputs(indices=[3, 0, 2, 5]), ["a", "b"])
    assert [(s.label, s.indices) for s in chosen] == [(0, [0, 2]), (1, [3, 5])]
    with pytest.raises(PairError, match=r"inputs\.indices holds 12: the test split has 10"):
        select_inputs([NETWORK], DATASET, ClassInputs(indices=[0, 12]), ["a", "b"])
    with pytest.raises(PairError, match=r"inputs\.classes holds 2, not a class"):
        select_inputs([NETWORK], DATASET, ClassInputs(classes=[2]), ["a", "b"])
