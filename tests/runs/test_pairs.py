"""Which pairs a path run connects: seeded random pairs, explicit ones, the closest calls
(``pairs.closest_of``, against analytic margins), and the sampling options refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn

from connectivity.cli.main import main
from connectivity.data import DigitsDataModule, stack_images
from connectivity.engine.checks import check_lines
from connectivity.engine.options import PathOptions
from connectivity.runs.networks import load_network
from connectivity.runs.pairs import PairSampling, line_margins, select_pairs
from connectivity.runs.sampling import PairError
from tests.conftest import REPO
from tests.runs.helpers import digits_config


class Ring(nn.Module):
    """Two classes in the plane: class 0 outside the circle of radius 0.5, class 1 inside.
    The target margin of class 0 is ``|x|^2 - 0.25`` (class 1's is its negative)."""

    def forward(self, x: Tensor) -> Tensor:
        r2 = x.flatten(1).pow(2).sum(dim=1)
        return torch.stack([r2 - 0.25, torch.zeros_like(r2)], dim=1)


DEGREES = [0, 30, 60, 90, 120, 180]


def _ring_items() -> list[tuple[Tensor, int]]:
    # Class 0 on the circle of radius 0.9 at these angles, class 1 near the centre.
    items = [
        (0.9 * torch.tensor([[[math.cos(math.radians(a)), math.sin(math.radians(a))]]]), 0)
        for a in DEGREES
    ]
    items += [(torch.tensor([[[x, 0.1]]]), 1) for x in (-0.1, 0.0, 0.1)]
    return items


def test_line_margins_are_the_analytic_minimum() -> None:
    # From angle 0 to angle d on the circle of radius 0.9, the line's midpoint has radius
    # 0.9 cos(d / 2): with 3 points (ends and midpoint) the lowest class-0 margin is
    # min(0.81 - 0.25, 0.81 cos^2(d / 2) - 0.25).
    items = _ring_items()
    starts = torch.stack([items[0][0]] * 5)
    ends = torch.stack([items[k][0] for k in range(1, 6)])
    got = line_margins(Ring(), starts, ends, torch.zeros(5, dtype=torch.long), points=3)
    want = [min(0.56, 0.81 * math.cos(math.radians(d) / 2) ** 2 - 0.25) for d in DEGREES[1:]]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_closest_calls_are_the_pairs_of_lowest_line_margin() -> None:
    items = _ring_items()
    # Every one of the 15 + 3 same-class pairs drawn: the two whose lines dip deepest are the
    # widest angles, 0-180 (margin -0.25) and 30-180 (0.81 cos^2(75 deg) - 0.25 = -0.196).
    sampling = PairSampling(count=2, closest_of=18, screen_points=3, seed=5)
    pairs = select_pairs(Ring(), items, sampling, ["outside", "inside"])  # type: ignore[arg-type]
    assert sorted((p.start_index, p.end_index) for p in pairs) == [(0, 5), (1, 5)]
    assert [p.id for p in pairs] == [0, 1] and {p.label for p in pairs} == {0}
    # The same seed draws the same pairs; all 18 were drawn, so any seed keeps the same two.
    again = select_pairs(Ring(), items, sampling, ["outside", "inside"])  # type: ignore[arg-type]
    assert again == pairs
    other = PairSampling(count=2, closest_of=18, screen_points=3, seed=6)
    assert {
        (p.start_index, p.end_index) for p in select_pairs(Ring(), items, other, ["a", "b"])
    } == {  # type: ignore[arg-type]
        (0, 5),
        (1, 5),
    }


def test_closest_of_more_pairs_than_exist_is_refused_by_number() -> None:
    sampling = PairSampling(count=2, closest_of=19, screen_points=3)
    with pytest.raises(
        PairError, match=r"closest_of is 19, but only 18 same-class pairs .*at most 18"
    ):
        select_pairs(Ring(), _ring_items(), sampling, ["a", "b"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            {"count": 5, "closest_of": 4},
            r"closest_of must be a whole number >= pairs\.count \(5\), got 4",
        ),
        ({"closest_of": 30.0}, r"closest_of must be a whole number .* got 30\.0"),
        ({"screen_points": 2}, r"screen_points must be a whole number >= 3 .* got 2"),
        ({"closest_of": 30, "indices": [[1, 2]]}, r"cannot be used with pairs\.indices"),
    ],
)
def test_bad_closest_of_options_are_refused(kwargs: dict, words: str) -> None:
    with pytest.raises(PairError, match=words):
        PairSampling(**kwargs)


class NearestPrototype(nn.Module):
    """A stand-in classifier that costs next to nothing: each class's logit is minus the
    squared distance to its nearest prototype. Its class regions are unions of Voronoi cells,
    not convex, so some straight lines between two images of a class leave it, as the
    quickstart's ResNet's do."""

    def __init__(self, prototypes: Tensor, labels: Tensor, classes: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes.flatten(1))
        self.register_buffer("labels", labels)
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        # |x - p|^2 by one matrix product (cdist is many times slower on a CPU).
        squared = flat.square().sum(1, keepdim=True) - 2 * flat @ self.prototypes.T
        squared = squared + self.prototypes.square().sum(1)
        logits = squared.new_full((x.shape[0], self.classes), float("-inf"))
        index = self.labels.expand_as(squared)
        return logits.scatter_reduce(1, index, -squared, reduce="amax")


def _stand_in_classifier(data: DigitsDataModule, per_class: int = 10) -> nn.Module:
    train = data.dataset("train")
    chosen: dict[int, list[int]] = {}
    for index in range(len(train)):
        chosen.setdefault(int(train[index][1]), []).append(index)
    indices = [i for label in sorted(chosen) for i in chosen[label][:per_class]]
    images, labels = stack_images(train, indices)
    return NearestPrototype(images, labels, len(data.class_names))


def _quickstart_pairs_leave(network: nn.Module, data: DigitsDataModule) -> int:
    """How many of the lines of the quickstart's own pairs (configs/paths/quick.yaml) leave
    their class at the points its run checks."""
    config = yaml.safe_load((REPO / "configs/paths/quick.yaml").read_text())
    sampling = PairSampling(**config["pairs"])
    options = PathOptions(**config.get("path", {}))
    assert sampling.closest_of is not None
    dataset = data.dataset(sampling.split)
    pairs = select_pairs(network, dataset, sampling, data.class_names)
    starts, _ = stack_images(dataset, [p.start_index for p in pairs])
    ends, _ = stack_images(dataset, [p.end_index for p in pairs])
    targets = torch.tensor([p.label for p in pairs])
    return int((~check_lines(network, starts, ends, targets, options).ok).sum())


def test_the_quickstart_pairs_put_bands_to_work_on_a_stand_in() -> None:
    data = DigitsDataModule()
    assert _quickstart_pairs_leave(_stand_in_classifier(data), data) >= 3


@pytest.mark.slow  # ~10 s of forward passes on 2 cores; the stand-in above runs the same code
def test_the_quickstart_pairs_put_bands_to_work(digits_classifier: Path) -> None:
    """On a briefly trained copy of the quickstart's own ResNet18: bands run on any machine."""
    data = DigitsDataModule()
    assert _quickstart_pairs_leave(load_network(str(digits_classifier)), data) >= 3


def test_same_class_pairs_are_drawn_reproducibly(digits_classifier: Path) -> None:
    data = DigitsDataModule()
    network = load_network(str(digits_classifier))
    sampling = PairSampling(count=10, seed=3)
    pairs = select_pairs(network, data.dataset("test"), sampling, data.class_names)
    again = select_pairs(network, data.dataset("test"), sampling, data.class_names)
    assert pairs == again and len(pairs) == 10
    dataset = data.dataset("test")
    images = torch.stack([dataset[p.start_index][0] for p in pairs])
    predicted = network(images).argmax(dim=1).tolist()
    for pair, guess in zip(pairs, predicted, strict=True):
        assert dataset[pair.start_index][1] == dataset[pair.end_index][1] == pair.label == guess
    other = select_pairs(network, dataset, PairSampling(count=10, seed=4), data.class_names)
    assert other != pairs


def test_explicit_pairs_of_different_labels_name_both(digits_classifier: Path) -> None:
    data = DigitsDataModule()
    dataset = data.dataset("test")
    labels = [int(dataset[i][1]) for i in range(20)]
    i = 0
    j = next(k for k in range(20) if labels[k] != labels[0])
    with pytest.raises(PairError, match=rf"'{labels[0]}' \({labels[0]}\) and '{labels[j]}'"):
        select_pairs(
            load_network(str(digits_classifier)),
            dataset,
            PairSampling(indices=[(i, j)]),
            data.class_names,
        )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"count": 0}, r"pairs\.count must be a whole number >= 1, got 0"),
        ({"count": True}, r"pairs\.count must be a whole number >= 1, got True"),
        ({"count": 2.5}, r"pairs\.count must be a whole number >= 1, got 2\.5"),
        ({"split": "tset"}, r"pairs\.split must be one of train, val, test, got 'tset'"),
        ({"indices": []}, r"pairs\.indices must be a non-empty list .* got \[\]"),
        ({"indices": [[1]]}, r"pairs\.indices\[0\] must be an \[i, j\] pair .* got \[1\]"),
        ({"indices": [(1, 2), (3, "4")]}, r"pairs\.indices\[1\] .* got \(3, '4'\)"),
    ],
)
def test_pair_sampling_refuses_unusable_values(kwargs: dict, words: str) -> None:
    with pytest.raises(PairError, match=words):
        PairSampling(**kwargs)


def test_pair_sampling_keeps_indices_as_integer_pairs() -> None:
    assert PairSampling(indices=[[3, 4], (5, 6)]).indices == [(3, 4), (5, 6)]


def test_bad_pair_options_fail_in_one_line_before_any_folder(
    digits_classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = digits_config(
        tmp_path / "z.yaml", digits_classifier, tmp_path / "out", "z", 0, ["input"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["paths", "-c", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "connectivity: error: pairs.count must be a whole number >= 1, got 0; set how "
        "many pairs to draw"
    ]
    assert not (tmp_path / "out").exists()
