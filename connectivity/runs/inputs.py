"""Which inputs of each class a graph run joins: drawn with a seed (the correctly classified
ones, by default), or given; and the misclassified ones met while drawing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from connectivity.runs.networks import predicted_classes
from connectivity.runs.sampling import InputDraw, PairError, is_whole


@dataclass
class ClassInputs(InputDraw):
    """Which inputs of each class go into its graph.

    Args:
        per_class: Inputs per class (fewer when the split holds fewer; the report says so).
        classes: Class indices to study (None: every class).
        seed: Seed of the draw; the same seed gives the same inputs.
        split: Dataset split the inputs come from (``train``, ``val`` or ``test``).
        correctly_classified: Take only inputs that every classifier assigns their true class.
        include_misclassified: Also study the inputs of the class that a classifier assigns to
            another class, met while drawing: each is tried against the components of the
            class it is predicted as, and its distance to the nearest input of its own class
            is reported.
        indices: Explicit dataset indices (grouped by their label; ``per_class`` and
            ``correctly_classified`` are then not applied).

    Raises:
        PairError: At construction: ``per_class`` not a whole number >= 2, an unknown
            ``split``, ``classes`` or ``indices`` that are not lists of integers.
    """

    per_class: int = 50
    classes: list[int] | None = None
    seed: int = 0
    split: str = "test"
    correctly_classified: bool = True
    include_misclassified: bool = False
    indices: list[int] | None = None

    OPTION: ClassVar[str] = "inputs"

    def __post_init__(self) -> None:
        self.check_whole("per_class", 2, then="; set how many inputs of each class to join")
        self.check_split()
        for name in ("classes", "indices"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or not value or not all(map(is_whole, value)):
                raise PairError(
                    f"inputs.{name} must be a non-empty list of integers, got {value!r}; leave "
                    "it out to take every class" + (" (draw inputs)" if name == "indices" else "")
                )
            setattr(self, name, [int(v) for v in value])


@dataclass
class ClassSelection:
    """The inputs of one class: the graph's (dataset indices, in input order) and, per
    classifier, the misclassified ones met while drawing with their predicted classes."""

    label: int
    indices: list[int]
    misclassified: list[list[tuple[int, int]]]  # per model: [(dataset index, predicted)]


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every item, read without decoding images where the dataset allows."""
    if isinstance(dataset, TensorDataset):
        return [int(v) for v in dataset.tensors[1].tolist()]
    if isinstance(dataset, Subset):
        inner = dataset.dataset
        if isinstance(inner, TensorDataset) or hasattr(inner, "targets"):
            labels = dataset_labels(inner)
            return [labels[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(t) for t in targets]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def select_inputs(
    networks: list[nn.Module],
    dataset: Dataset,
    inputs: ClassInputs,
    class_names: list[str],
    device: str = "cpu",
    predicted: bool = False,
) -> list[ClassSelection]:
    """Each studied class's inputs, identical for every classifier (see :class:`ClassInputs`).

    Args:
        networks: The classifiers (logits of images in [0, 1]); only read.
        dataset: The split the inputs are drawn from.
        inputs: How to draw them.
        class_names: Names of the classes, for messages.
        device: Where predictions are computed.
        predicted: Classes are the one network's predictions, not the dataset's labels (an
            untrained network's inputs): class ``c`` gets the first ``per_class`` items of the
            same seeded order (or of ``indices``, in their order) that the network puts in
            ``c``, for the same classes as without it. A class it puts fewer than 2 items in
            is returned with those (0 or 1), not refused: the caller leaves it out. Nothing
            is misclassified (one empty list per selection).

    Raises:
        PairError: a class or index out of range, or (without ``predicted``) a class with
            fewer than 2 inputs.
        ValueError: ``predicted`` with other than one network.
    """
    if predicted and len(networks) != 1:
        raise ValueError(f"predicted classes come from one network, got {len(networks)}")
    labels = dataset_labels(dataset)
    size, count = len(labels), len(class_names)
    classes = inputs.classes if inputs.classes is not None else list(range(count))
    if inputs.indices is not None and inputs.classes is None:
        # explicit inputs: the classes they belong to
        classes = sorted({labels[i] for i in inputs.indices if 0 <= i < size})
    for c in classes:
        if not 0 <= c < count:
            raise PairError(f"inputs.classes holds {c}, not a class of the data (0..{count - 1})")
    if inputs.indices is not None:
        for i in inputs.indices:
            if not 0 <= i < size:
                raise PairError(f"inputs.indices holds {i}: the {inputs.split} split has {size}")
        order = list(inputs.indices)
    else:
        generator = torch.Generator().manual_seed(inputs.seed)
        order = torch.randperm(size, generator=generator).tolist()
    if predicted:
        limit = len(order) if inputs.indices is not None else inputs.per_class
        return _by_prediction(networks[0], dataset, order, classes, limit, device)
    candidates = {c: [i for i in order if labels[i] == c] for c in classes}
    chosen = []
    for c in classes:
        taken: list[int] = []
        wrong: list[list[tuple[int, int]]] = [[] for _ in networks]
        pool = candidates[c]
        filter_ = inputs.indices is None and inputs.correctly_classified
        judge = filter_ or inputs.include_misclassified
        limit = len(pool) if inputs.indices is not None else inputs.per_class
        for first in range(0, len(pool), 256):
            if len(taken) >= limit:
                break
            chunk = pool[first : first + 256]
            guesses = predicted_classes(networks, dataset, chunk, device) if judge else []
            for k, index in enumerate(chunk):
                if len(taken) >= limit:
                    break
                per_model = [g[k] for g in guesses]
                for m, guess in enumerate(per_model):
                    if inputs.include_misclassified and guess != c:
                        wrong[m].append((index, guess))
                if filter_ and any(guess != c for guess in per_model):
                    continue
                taken.append(index)
        if len(taken) < 2:
            raise PairError(
                f"class {class_names[c]!r} ({c}) has {len(taken)} usable inputs in the "
                f"{inputs.split} split; a graph needs 2 (drop it from inputs.classes)"
            )
        chosen.append(ClassSelection(c, taken, wrong))
    return chosen


def _by_prediction(
    network: nn.Module,
    dataset: Dataset,
    order: list[int],
    classes: list[int],
    limit: int,
    device: str,
) -> list[ClassSelection]:
    """The first ``limit`` items of ``order`` that ``network`` puts in each of ``classes``
    (fewer where it puts fewer there), predicted 256 at a time until every class is full."""
    taken: dict[int, list[int]] = {c: [] for c in classes}
    for first in range(0, len(order), 256):
        if all(len(chosen) >= limit for chosen in taken.values()):
            break
        chunk = order[first : first + 256]
        (guesses,) = predicted_classes([network], dataset, chunk, device)
        for index, guess in zip(chunk, guesses, strict=True):
            if guess in taken and len(taken[guess]) < limit:
                taken[guess].append(index)
    return [ClassSelection(c, taken[c], [[]]) for c in classes]
