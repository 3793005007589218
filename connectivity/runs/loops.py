"""Which loops of same-class inputs a surfaces run fills, and the sides that join them.

A loop of ``size`` inputs ``x_0, ..., x_{size-1}`` of one class is closed by its sides, the
pairs ``(x_i, x_{i+1})`` and ``(x_{size-1}, x_0)``; the run decides the sides as path pairs
first (their paths are the loop) and then fills the loop (:mod:`connectivity.runs.surfaces`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import Dataset

from connectivity.data import stack_images
from connectivity.engine.membrane import fan_triangles
from connectivity.engine.triangles import sampled_triangles
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
        closest_of: Draw this many random loops per class (an item may be in several loops)
            and keep the ``count`` closest calls: those whose flat fill (the fan of the
            inputs' triangles) has the lowest target margin at a barycentric grid of
            ``screen_points`` per edge in the input space. A sample that shows membranes at
            work, not an estimate of how often flat fills leave the class: the run prints how
            many of the drawn fills left it at those points. None: ``count`` random loops of
            distinct items.
        screen_points: Grid divisions per edge of each fan triangle screened by
            ``closest_of``.

    Raises:
        PairError: At construction, for a ``count`` that is not a whole number >= 1, a
            ``size`` other than 3 or 4, a ``split`` other than train/val/test, ``classes``
            that are not a non-empty list of distinct class indices, a ``closest_of`` below
            ``count`` or ``screen_points`` below 1.
    """

    count: int = 2
    size: int = 3
    seed: int = 0
    split: str = "test"
    correctly_classified: bool = True
    classes: list[int] | None = None
    closest_of: int | None = None
    screen_points: int = 6

    OPTION: ClassVar[str] = "loops"

    def __post_init__(self) -> None:
        self.check_whole("count", 1, then="; set how many loops to draw per class")
        if self.size not in LOOP_SIZES or isinstance(self.size, bool):
            raise PairError(f"loops.size must be 3 or 4 (inputs per loop), got {self.size!r}")
        self.check_whole("seed", 0)
        self.check_split()
        if self.closest_of is not None:
            self.check_whole(
                "closest_of",
                self.count,
                least=f"loops.count ({self.count})",
                then="; it is how many random loops per class the closest calls are chosen from "
                "(leave it out for random loops)",
            )
        self.check_whole("screen_points", 1)
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
    predicted: bool = False,
) -> list[Loop]:
    """``sampling.count`` loops per class, in class order, each of ``sampling.size`` distinct
    items drawn with ``sampling.seed`` (identical on every rank); ``network`` is only read.

    Args:
        network: The classifier (logits of images in [0, 1]).
        dataset: The split loops are drawn from.
        sampling: How to draw them.
        class_names: Names of the classes, for messages.
        device: Where predictions are computed.
        predicted: Classes are ``network``'s predictions, not the dataset's labels (an
            untrained network's loops): every item is usable, in the class it is put in, and a
            class with too few items for its loops is left out (printed) rather than refused:
            an untrained network often puts nearly every input in one or two classes.

    Raises:
        PairError: a class in ``sampling.classes`` the dataset does not have, or a class with
            fewer usable items than ``count * size`` (with ``predicted``: every class).
    """
    classes = sampling.classes if sampling.classes is not None else list(range(len(class_names)))
    for c in classes:
        if not 0 <= c < len(class_names):
            raise PairError(
                f"loops.classes holds {c}, which is not a class of the dataset (0.."
                f"{len(class_names) - 1})"
            )
    if predicted:  # every item is in the class it is put in
        sampling = dataclasses.replace(sampling, correctly_classified=False)
    if predicted or sampling.correctly_classified or sampling.closest_of is not None:
        network = working_copy(network).to(device)
    size = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(sampling.seed)).tolist()
    if sampling.closest_of is not None:
        return _closest_calls(
            network, dataset, sampling, classes, class_names, order, device, predicted
        )
    need = sampling.count * sampling.size
    by_label: dict[int, list[int]] = {c: [] for c in classes}
    usable = _usable(network, dataset, order, sampling, device, predicted)  # type: ignore[arg-type]
    for index, label in usable:
        if label in by_label and len(by_label[label]) < need:
            by_label[label].append(index)
        if all(len(items) == need for items in by_label.values()):
            break
    loops = []
    for c in _drawn_classes(by_label, need, sampling, class_names, predicted):
        items = by_label[c]
        for k in range(sampling.count):
            part = tuple(items[k * sampling.size : (k + 1) * sampling.size])
            loops.append(Loop(len(loops), part, c))
    return loops


def _drawn_classes(
    by_label: dict[int, list[int]],
    need: int,
    sampling: LoopSampling,
    class_names: list[str],
    predicted: bool,
) -> list[int]:
    """The classes of ``by_label`` (``{class: usable items}``) with at least ``need`` items, in
    its order.

    Raises:
        PairError: a class with fewer (with ``predicted``: every class; the others are left
            out, and how many is printed).
    """
    short = {c: len(items) for c, items in by_label.items() if len(items) < need}
    kept = [c for c in by_label if c not in short]
    # closest_of draws its loops with repeats: one loop's items are enough.
    asked = "loops.size" if sampling.closest_of is not None else "loops.count x loops.size"
    if not predicted and short:
        c = next(iter(short))
        which = " correctly classified" if sampling.correctly_classified else ""
        raise PairError(
            f"class {class_names[c]!r} ({c}) has only {short[c]}{which} inputs in the "
            f"{sampling.split} split, fewer than {asked} = {need}; ask "
            "for fewer loops or leave the class out (loops.classes)"
        )
    if not kept:
        put = {c: n for c, n in short.items() if n}
        raise PairError(
            f"the network puts fewer than {asked} = {need} inputs of the "
            f"{sampling.split} split in each class asked for (it puts {put or 'none'} there); "
            "ask for fewer or smaller loops, or other loops.classes"
        )
    if short and rank_zero_only.rank == 0:
        print(
            f"loops: {len(short)} of the {len(by_label)} classes are left out: the network puts "
            f"fewer than {need} inputs of the {sampling.split} split in them",
            flush=True,
        )
    return kept


def _closest_calls(
    network: nn.Module,
    dataset: Dataset,
    sampling: LoopSampling,
    classes: list[int],
    class_names: list[str],
    order: list[int],
    device: str,
    predicted: bool,
) -> list[Loop]:
    """Per class, the ``count`` of ``closest_of`` random loops whose flat fills come closest
    to leaving the class (see :class:`LoopSampling`), in the order drawn; classes as
    :func:`select_loops` keeps them."""
    assert sampling.closest_of is not None
    by_label: dict[int, list[int]] = {c: [] for c in classes}
    usable = _usable(network, dataset, order, sampling, device, predicted)  # type: ignore[arg-type]
    for index, label in usable:
        if label in by_label:
            by_label[label].append(index)
    generator = torch.Generator().manual_seed(sampling.seed)
    loops, left, drawn = [], 0, 0
    for c in _drawn_classes(by_label, sampling.size, sampling, class_names, predicted):
        items = by_label[c]
        candidates = [
            tuple(
                items[i] for i in torch.randperm(len(items), generator=generator)[: sampling.size]
            )
            for _ in range(sampling.closest_of)
        ]
        margins = torch.stack(
            [_fill_margin(network, dataset, loop, c, sampling, device) for loop in candidates]
        )
        left += int((margins <= 0).sum())
        drawn += len(candidates)
        keep = sorted(
            sorted(range(len(candidates)), key=lambda k: (float(margins[k]), k))[: sampling.count]
        )
        first = len(loops)  # ids run on across classes
        loops.extend(Loop(first + n, candidates[k], c) for n, k in enumerate(keep))
    if rank_zero_only.rank == 0:
        print(
            f"loops: the {sampling.count} closest calls per class of {sampling.closest_of} random "
            f"loops ({left} of {drawn} flat fills leave the class at {sampling.screen_points} "
            "points per edge)",
            flush=True,
        )
    return loops


@torch.no_grad()
def _fill_margin(
    network: nn.Module,
    dataset: Dataset,
    loop: tuple[int, ...],
    label: int,
    sampling: LoopSampling,
    device: str,
) -> Tensor:
    """The lowest target margin of the loop's flat fill at the screening grid."""
    images, _ = stack_images(dataset, list(loop))
    a, b, c = fan_triangles(images.to(device))
    targets = torch.full((a.shape[0],), label, dtype=torch.long, device=device)
    check = sampled_triangles(network, a, b, c, targets, per_edge=sampling.screen_points)
    return check.min_margin.min()


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
