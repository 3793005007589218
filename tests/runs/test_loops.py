"""Loops of a surfaces run: drawn per class, distinct, reproducible, and refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from connectivity.data import DigitsDataModule
from connectivity.runs.loops import LoopSampling, loop_sides, select_loops
from connectivity.runs.sampling import PairError


class _Oracle(nn.Module):
    """Predicts each digit's own label (looked up by its pixels), so every item is usable."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.keys = images.flatten(1)
        self.labels = labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = torch.cdist(x.flatten(1), self.keys).argmin(dim=1)
        return nn.functional.one_hot(self.labels[index], 10).float()


@pytest.fixture(scope="module")
def digits():
    data = DigitsDataModule()
    dataset = data.dataset("test")
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return data, dataset, _Oracle(images, labels), labels


def test_loops_are_per_class_distinct_and_reproducible(digits) -> None:
    data, dataset, network, labels = digits
    sampling = LoopSampling(count=2, size=4, seed=3, classes=[1, 7])
    loops = select_loops(network, dataset, sampling, data.class_names)
    assert [loop.label for loop in loops] == [1, 1, 7, 7]
    assert [loop.id for loop in loops] == [0, 1, 2, 3]
    items = [i for loop in loops for i in loop.indices]
    assert len(set(items)) == len(items) == 16
    assert all(int(labels[i]) == loop.label for loop in loops for i in loop.indices)
    assert select_loops(network, dataset, sampling, data.class_names) == loops
    other = select_loops(
        network, dataset, LoopSampling(2, 4, seed=4, classes=[1, 7]), data.class_names
    )
    assert other != loops


def test_closest_calls_are_per_class_with_ids_in_order(digits) -> None:
    data, dataset, network, labels = digits
    sampling = LoopSampling(count=2, size=3, classes=[1, 7], closest_of=5)
    loops = select_loops(network, dataset, sampling, data.class_names)
    assert [loop.id for loop in loops] == [0, 1, 2, 3]
    assert [loop.label for loop in loops] == [1, 1, 7, 7]
    assert all(int(labels[i]) == loop.label for loop in loops for i in loop.indices)
    assert all(len(set(loop.indices)) == 3 for loop in loops)


def test_sides_close_each_loop(digits) -> None:
    data, dataset, network, _ = digits
    loops = select_loops(
        network, dataset, LoopSampling(count=1, size=3, classes=[2]), data.class_names
    )
    sides = loop_sides(loops)
    (loop,) = loops
    assert [(s.start_index, s.end_index) for s in sides] == [
        (loop.indices[0], loop.indices[1]),
        (loop.indices[1], loop.indices[2]),
        (loop.indices[2], loop.indices[0]),
    ]
    assert [s.id for s in sides] == [0, 1, 2]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"size": 5}, "loops.size must be 3 or 4"),
        ({"size": 2}, "loops.size must be 3 or 4"),
        ({"count": 0}, "loops.count"),
        ({"split": "dev"}, "loops.split"),
        ({"classes": []}, "loops.classes"),
        ({"classes": [1, 1]}, "loops.classes"),
    ],
)
def test_bad_loop_options_fail_in_one_line(values, named) -> None:
    with pytest.raises(PairError, match=named):
        LoopSampling(**values)


def test_too_many_loops_for_a_class_is_named(digits) -> None:
    data, dataset, network, labels = digits
    have = int((labels == 3).sum())
    with pytest.raises(PairError, match=r"class '3' \(3\) has only"):
        select_loops(
            network, dataset, LoopSampling(count=have, size=3, classes=[3]), data.class_names
        )
    with pytest.raises(PairError, match="not a class"):
        select_loops(network, dataset, LoopSampling(classes=[10]), data.class_names)
