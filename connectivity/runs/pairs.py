"""Which same-class pairs a path run connects: random disjoint pairs, explicit ones, or the
closest calls (pairs whose straight lines come nearest to leaving their class)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import Dataset

from connectivity.attacks import AdversarialOptions
from connectivity.data import stack_images
from connectivity.engine.band import straight_line
from connectivity.engine.checks import path_log_probabilities, target_margin
from connectivity.runs.networks import predicted_classes, working_copy
from connectivity.runs.sampling import InputDraw, PairError, is_whole
from connectivity.store.records import Pair


@dataclass
class PairSampling(InputDraw):
    """Which pairs of inputs to connect.

    Args:
        count: Number of pairs drawn (ignored when ``indices`` are given).
        seed: Seed of the draw; the same seed gives the same pairs.
        split: Dataset split the inputs come from (``train``, ``val`` or ``test``).
        correctly_classified: Draw only inputs the classifier assigns their true class.
        indices: Explicit ``[[i, j], ...]`` dataset indices of same-label pairs.
        closest_of: Draw this many random same-class pairs (an item may be in several) and
            keep the ``count`` closest calls: those whose straight input-space lines have the
            lowest target margin (logit of the target minus the best other) at
            ``screen_points`` evenly spaced points. A sample that shows bands at work, not an
            estimate of how often lines leave the class: the run prints how many of the drawn
            lines left it at those points. None: ``count`` random disjoint pairs.
        screen_points: Points of each drawn line checked by ``closest_of``, ends included.
        adversarial: Adversarial-natural pairs appended after the natural ones, their ids
            after theirs (:mod:`connectivity.runs.adversarial`): ``true`` for the default
            attack (:class:`~connectivity.attacks.AdversarialOptions`), a mapping of its
            options, or ``false`` / null for none. Their natural ends and the inputs the
            examples are made from are correctly classified, whatever
            ``correctly_classified`` says, and are none of the natural pairs' inputs.

    Raises:
        PairError: At construction, for a ``count`` that is not a whole number >= 1, a
            ``split`` other than train/val/test, ``indices`` that are not a non-empty list
            of integer ``[i, j]`` pairs, a ``closest_of`` below ``count`` or given with
            ``indices``, or ``screen_points`` below 3; ``adversarial`` options it cannot use
            (see :class:`~connectivity.attacks.AdversarialOptions`).
    """

    count: int = 25
    seed: int = 0
    split: str = "test"
    correctly_classified: bool = True
    indices: list[tuple[int, int]] | None = None
    closest_of: int | None = None
    screen_points: int = 16
    adversarial: AdversarialOptions | bool | None = None

    OPTION: ClassVar[str] = "pairs"

    def __post_init__(self) -> None:
        self.check_whole("count", 1, then="; set how many pairs to draw")
        self.check_split()
        if self.closest_of is not None:
            self.check_whole(
                "closest_of",
                self.count,
                least=f"pairs.count ({self.count})",
                then=f"; it is how many random pairs the {self.count} closest calls are chosen "
                "from (leave it out for random pairs)",
            )
        self.check_whole(
            "screen_points", 3, least="3 (the two ends and at least one point between them)"
        )
        self.adversarial = _adversarial_options(self.adversarial)
        if self.indices is None:
            return
        if self.closest_of is not None:
            raise PairError(
                "pairs.closest_of chooses among random pairs and cannot be used with "
                "pairs.indices; leave one of them out (on the command line: --pairs.closest_of "
                "null)"
            )
        if not isinstance(self.indices, (list, tuple)) or len(self.indices) == 0:
            raise PairError(
                f"pairs.indices must be a non-empty list of [i, j] dataset indices, got "
                f"{self.indices!r}; leave it out to draw pairs.count pairs instead"
            )
        pairs = []
        for k, pair in enumerate(self.indices):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(is_whole(i) for i in pair)
            ):
                raise PairError(
                    f"pairs.indices[{k}] must be an [i, j] pair of integer dataset indices, got "
                    f"{pair!r}"
                )
            pairs.append((int(pair[0]), int(pair[1])))
        self.indices = pairs


def _adversarial_options(value: object) -> AdversarialOptions | None:
    """``pairs.adversarial`` as options: ``true`` the defaults, ``false`` / None none."""
    if value is None or value is False:
        return None
    if value is True:
        return AdversarialOptions()
    if isinstance(value, AdversarialOptions):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(AdversarialOptions)}
        unknown = sorted(set(map(str, value)) - known)
        if unknown:
            raise PairError(
                f"pairs.adversarial has no option {unknown[0]!r}; its options are "
                f"{', '.join(sorted(known))}"
            )
        return AdversarialOptions(**value)
    raise PairError(
        f"pairs.adversarial must be true, false or a mapping of attack options, got {value!r}"
    )


def select_pairs(
    network: nn.Module,
    dataset: Dataset,
    sampling: PairSampling,
    class_names: list[str],
    device: str = "cpu",
    predicted: bool = False,
) -> list[Pair]:
    """Same-class pairs, drawn with a seed or given explicitly; identical on every rank.

    ``network`` is only read: predictions come from an eval-mode copy of it.

    Args:
        network: The classifier (logits of images in [0, 1]).
        dataset: The split pairs are drawn from.
        sampling: How to draw them.
        class_names: Names of the classes, for messages.
        device: Where predictions are computed.
        predicted: Classes are ``network``'s predictions, not the dataset's labels (an
            untrained network's pairs): every item is usable, and pairs of ``indices`` whose
            ends it puts in different classes are left out (the count is printed).

    Raises:
        PairError: pairs out of range or of different classes, or too few pairs.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if predicted:  # every item is in the class it is put in
        sampling = dataclasses.replace(sampling, correctly_classified=False)
    if predicted or (
        sampling.indices is None
        and (sampling.correctly_classified or sampling.closest_of is not None)
    ):
        network = working_copy(network).to(device)
    if sampling.indices is not None:
        return _given_pairs(network, dataset, sampling, class_names, device, predicted)
    if sampling.closest_of is not None:
        return _closest_calls(network, dataset, sampling, device, predicted)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(sampling.seed)).tolist()
    waiting: dict[int, int] = {}
    pairs = []
    for index, label in _usable(network, dataset, order, sampling, device, predicted):
        if label in waiting:
            pairs.append(Pair(len(pairs), waiting.pop(label), index, label))
            if len(pairs) == sampling.count:
                return pairs
        else:
            waiting[label] = index
    which = " of correctly classified inputs" if sampling.correctly_classified else ""
    raise PairError(
        f"only {len(pairs)} same-class pairs{which} exist in the {sampling.split} split; "
        "ask for fewer (pairs.count)"
    )


def _given_pairs(
    network: nn.Module,
    dataset: Dataset,
    sampling: PairSampling,
    class_names: list[str],
    device: str,
    predicted: bool,
) -> list[Pair]:
    """The pairs of ``sampling.indices``, checked (see :func:`select_pairs`)."""
    assert sampling.indices is not None
    size = len(dataset)  # type: ignore[arg-type]
    for k, (i, j) in enumerate(sampling.indices):
        if not (0 <= i < size and 0 <= j < size):
            raise PairError(f"pair {k} ({i}, {j}) is out of range: the split has {size} items")
    if not predicted:
        pairs = []
        for k, (i, j) in enumerate(sampling.indices):
            a, b = int(dataset[i][1]), int(dataset[j][1])
            if a != b:
                raise PairError(
                    f"pair {k} ({i}, {j}) joins different labels: {class_names[a]!r} ({a}) and "
                    f"{class_names[b]!r} ({b}); both ends must share a class"
                )
            pairs.append(Pair(k, int(i), int(j), a))
        return pairs
    starts = predicted_classes([network], dataset, [i for i, _ in sampling.indices], device)[0]
    ends = predicted_classes([network], dataset, [j for _, j in sampling.indices], device)[0]
    kept = [
        (i, j, a) for (i, j), a, b in zip(sampling.indices, starts, ends, strict=True) if a == b
    ]
    if not kept:
        raise PairError(
            f"the network puts the two ends of each of the {len(sampling.indices)} pairs of "
            "pairs.indices in different classes; draw pairs instead (leave pairs.indices out)"
        )
    if len(kept) < len(sampling.indices) and rank_zero_only.rank == 0:
        print(
            f"pairs: {len(sampling.indices) - len(kept)} of the {len(sampling.indices)} pairs of "
            "pairs.indices are left out: the network puts their ends in different classes",
            flush=True,
        )
    return [Pair(k, i, j, label) for k, (i, j, label) in enumerate(kept)]


def _usable(
    network: nn.Module,
    dataset: Dataset,
    order: list[int],
    sampling: PairSampling,
    device: str,
    predicted: bool = False,
) -> Iterator[tuple[int, int]]:
    """``(dataset index, class)`` of the items in ``order`` that pairs may be drawn from (the
    correctly classified ones, when ``sampling`` asks for them), predicted 256 at a time as
    they are asked for: a draw that stops early predicts no more. With ``predicted``, every
    item, in the class ``network`` puts it in."""
    for first in range(0, len(order), 256):
        indices = order[first : first + 256]
        if predicted:
            (guesses,) = predicted_classes([network], dataset, indices, device)
            yield from zip(indices, guesses, strict=True)
            continue
        labels = [int(dataset[i][1]) for i in indices]
        keep = [True] * len(indices)
        if sampling.correctly_classified:
            (guesses,) = predicted_classes([network], dataset, indices, device)
            keep = [guess == label for guess, label in zip(guesses, labels, strict=True)]
        yield from ((i, label) for i, label, ok in zip(indices, labels, keep, strict=True) if ok)


def _usable_items(
    network: nn.Module, dataset: Dataset, sampling: PairSampling, device: str, predicted: bool
) -> dict[int, list[int]]:
    """``{label: [dataset index, ...]}`` of the items pairs may be drawn from."""
    by_label: dict[int, list[int]] = {}
    everything = list(range(len(dataset)))  # type: ignore[arg-type]
    for index, label in _usable(network, dataset, everything, sampling, device, predicted):
        by_label.setdefault(label, []).append(index)
    return by_label


@torch.no_grad()
def line_margins(
    network: nn.Module, starts: Tensor, ends: Tensor, targets: Tensor, points: int
) -> Tensor:
    """``(pairs,)``: the lowest target margin (target logit minus the best other) over
    ``points`` evenly spaced points of each straight line from ``starts`` to ``ends``, ends
    included; below zero, the line leaves its class at one of them.

    Args:
        network: Logits of a batch of inputs.
        starts, ends: ``(pairs, *input_shape)``.
        targets: ``(pairs,)`` class indices.
        points: Points per line, >= 2.
    """
    line = straight_line(starts, ends, points - 2)
    log_p = path_log_probabilities(network, line, per_segment=0, chunk_size=512)
    return target_margin(log_p, targets).amin(dim=1)


def _closest_calls(
    network: nn.Module, dataset: Dataset, sampling: PairSampling, device: str, predicted: bool
) -> list[Pair]:
    """``sampling.count`` of ``sampling.closest_of`` random same-class pairs: those whose lines
    come closest to leaving their class (see :class:`PairSampling`), in the order drawn."""
    assert sampling.closest_of is not None
    by_label = _usable_items(network, dataset, sampling, device, predicted)
    weights = {label: len(v) * (len(v) - 1) // 2 for label, v in by_label.items()}
    available = sum(weights.values())
    if available < sampling.closest_of:
        which = " of correctly classified inputs" if sampling.correctly_classified else ""
        raise PairError(
            f"pairs.closest_of is {sampling.closest_of}, but only {available} same-class "
            f"pairs{which} exist in the {sampling.split} split; ask for at most {available}"
        )
    labels = sorted(label for label, w in weights.items() if w)
    chance = torch.tensor([float(weights[label]) for label in labels], dtype=torch.float64)
    generator = torch.Generator().manual_seed(sampling.seed)
    drawn: dict[tuple[int, int], int] = {}
    # Rejection of repeats keeps each unordered pair equally likely, whatever its class.
    while len(drawn) < sampling.closest_of:
        label = labels[int(torch.multinomial(chance, 1, generator=generator))]
        items = by_label[label]
        i, j = torch.randperm(len(items), generator=generator)[:2].tolist()
        key = (min(items[i], items[j]), max(items[i], items[j]))
        drawn.setdefault(key, label)
    candidates = list(drawn.items())
    margins = []
    for first in range(0, len(candidates), 64):
        chunk = candidates[first : first + 64]
        starts, _ = stack_images(dataset, [i for (i, _), _ in chunk])
        ends, _ = stack_images(dataset, [j for (_, j), _ in chunk])
        targets = torch.tensor([label for _, label in chunk])
        margins.append(
            line_margins(
                network,
                starts.to(device),
                ends.to(device),
                targets.to(device),
                sampling.screen_points,
            ).cpu()
        )
    margin = torch.cat(margins)
    # Ties (equal margins) go to the pair drawn first: the choice is the same on every rank.
    keep = sorted(
        sorted(range(len(candidates)), key=lambda k: (float(margin[k]), k))[: sampling.count]
    )
    if rank_zero_only.rank == 0:
        left = int((margin < 0).sum())
        print(
            f"pairs: the {sampling.count} closest calls of {len(candidates)} random same-class "
            f"pairs ({left} of their lines {'leaves' if left == 1 else 'leave'} the class at "
            f"{sampling.screen_points} points; "
            f"the highest kept line margin is {float(margin[keep].max()):.3g})",
            flush=True,
        )
    return [
        Pair(n, candidates[k][0][0], candidates[k][0][1], candidates[k][1])
        for n, k in enumerate(keep)
    ]
