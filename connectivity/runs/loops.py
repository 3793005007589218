"""Which loops of same-class inputs a surfaces run fills, and the sides that join them.

A loop of ``size`` inputs ``x_0, ..., x_{size-1}`` of one class is closed by its sides, the
pairs ``(x_i, x_{i+1})`` and ``(x_{size-1}, x_0)``; the run decides the sides as path pairs
first (their paths are the loop) and then fills the loop (:mod:`connectivity.runs.surfaces`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from connectivity.runs.networks import working_copy
from connectivity.runs.pairs import _usable
from connectivity.runs.sampling import InputDraw, PairError
from connectivity.store.records import Pair

LOOP_SIZES = (3, 4)


@dataclass(frozen=True)
class Loop:
    """``size`` dataset items of one class (``label``), joined in this order and back."""

    id: int
    indices: tuple[int, ...]
    label: int


@dataclass
class LoopSampling(InputDraw):
    """Which loops to fill: ``count`` loops of ``size`` inputs per class, all items distinct.

    Args:
        count: Loops per class.
        size: Inputs per loop, 3 (a triangle) or 4.
        seed: Seed of the draw; the same seed gives the same loops.
        split: Dataset split the inputs come from (``train``, ``val`` or ``test``).
        correctly_classified: Draw only inputs the classifier assigns their true class.
        classes: The classes loops are drawn in (default: every class of the dataset).

    Raises:
        PairError: At construction, for a ``count`` that is not a whole number >= 1, a
            ``size`` other than 3 or 4, a ``split`` other than train/val/test, or ``classes``
            that are not a non-empty list of distinct class indices.
    """

    count: int = 2
    size: int = 3
    seed: int = 0
    split: str = "test"
    correctly_classified: bool = True
    classes: list[int] | None = None

    OPTION: ClassVar[str] = "loops"

    def __post_init__(self) -> None:
        self.check_whole("count", 1, then="; set how many loops to draw per class")
        if self.size not in LOOP_SIZES or isinstance(self.size, bool):
            raise PairError(f"loops.size must be 3 or 4 (inputs per loop), got {self.size!r}")
        self.check_whole("seed", 0)
        self.check_split()
        if self.classes is None:
            return
        if (
            not isinstance(self.classes, (list, tuple))
            or not self.classes
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in self.classes)
            or len(set(self.classes)) != len(self.classes)
        ):
            raise PairError(
                f"loops.classes must be a non-empty list of distinct class indices, got "
                f"{self.classes!r}; leave it out for every class"
            )
        self.classes = list(self.classes)


def select_loops(
    network: nn.Module,
    dataset: Dataset,
    sampling: LoopSampling,
    class_names: list[str],
    device: str = "cpu",
) -> list[Loop]:
    """``sampling.count`` loops per class, in class order, each of ``sampling.size`` distinct
    items drawn with ``sampling.seed`` (identical on every rank); ``network`` is only read.

    Raises:
        PairError: a class in ``sampling.classes`` the dataset does not have, or a class with
            fewer usable items than ``count * size``.
    """
    classes = sampling.classes if sampling.classes is not None else list(range(len(class_names)))
    for c in classes:
        if not 0 <= c < len(class_names):
            raise PairError(
                f"loops.classes holds {c}, which is not a class of the dataset (0.."
                f"{len(class_names) - 1})"
            )
    if sampling.correctly_classified:
        network = working_copy(network).to(device)
    size = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(sampling.seed)).tolist()
    need = sampling.count * sampling.size
    by_label: dict[int, list[int]] = {c: [] for c in classes}
    for index, label in _usable(network, dataset, order, sampling, device):  # type: ignore[arg-type]
        if label in by_label and len(by_label[label]) < need:
            by_label[label].append(index)
        if all(len(items) == need for items in by_label.values()):
            break
    loops = []
    for c in classes:
        items = by_label[c]
        if len(items) < need:
            which = " correctly classified" if sampling.correctly_classified else ""
            raise PairError(
                f"class {class_names[c]!r} ({c}) has only {len(items)}{which} inputs in the "
                f"{sampling.split} split, fewer than loops.count x loops.size = {need}; ask "
                "for fewer loops or leave the class out (loops.classes)"
            )
        for k in range(sampling.count):
            part = tuple(items[k * sampling.size : (k + 1) * sampling.size])
            loops.append(Loop(len(loops), part, c))
    return loops


def loop_sides(loops: list[Loop]) -> list[Pair]:
    """The sides of every loop as path pairs: side ``i`` of loop ``l`` (from its input ``i``
    to input ``i + 1``, the last back to the first) has id ``l.id * size + i``."""
    sides = []
    for loop in loops:
        k = len(loop.indices)
        for i in range(k):
            start, end = loop.indices[i], loop.indices[(i + 1) % k]
            sides.append(Pair(loop.id * k + i, start, end, loop.label))
    return sides
