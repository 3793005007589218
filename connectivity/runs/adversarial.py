"""Adversarial-natural pairs of a path run (``pairs.adversarial``).

Each such pair joins a natural input the classifier puts in its class ``c`` to an adversarial
example a targeted attack made from a correctly classified input of another class, so that the
classifier puts it in ``c`` too (:func:`connectivity.attacks.targeted_examples`). The examples
are items past the split's own: a run indexes ``ConcatDataset([split, examples])``
(:meth:`AdversarialEnds.dataset`), so its modules, resume, ranks and figures read them as any
other input. They are saved in the run folder (``adversarial.pt``) and a resumed run reuses
them, never remakes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from connectivity.attacks import (
    AdversarialOptions,
    AttackError,
    check_within_budget,
    targeted_examples,
)
from connectivity.data import stack_images
from connectivity.runs.pairs import PairSampling, _usable
from connectivity.runs.sampling import PairError
from connectivity.store.records import Pair

# Sources attacked per adversarial end wanted before the run gives up: enough for an attack
# that succeeds half the time, few enough that a hopeless budget fails in minutes, not hours.
TRIES_PER_END = 5


# What to do when a run folder's saved examples fail their check.
REMAKE = (
    "delete it (and the records of the adversarial pairs) to make them again, or use another name"
)


class AdversarialExamples(TensorDataset):
    """A run's adversarial examples, each labelled with its target class, as they follow the
    split in the dataset its pairs index (:meth:`AdversarialEnds.dataset`)."""


def rank_zero_examples(dataset: Dataset, broadcast: Callable[[Any, int], Any]) -> Dataset:
    """``dataset`` with the adversarial examples rank zero made (and saves): every rank makes
    its own with the same seeds, which float rounding on an accelerator may tell apart, so
    every rank decides its pairs with rank zero's. Other datasets are returned as they are.

    Args:
        dataset: A run's dataset (:meth:`AdversarialEnds.dataset`, or a split).
        broadcast: The strategy's ``broadcast(obj, src)``.
    """
    if not isinstance(dataset, ConcatDataset) or not isinstance(
        dataset.datasets[-1], AdversarialExamples
    ):
        return dataset
    images, targets = broadcast(dataset.datasets[-1].tensors, 0)
    return ConcatDataset([*dataset.datasets[:-1], AdversarialExamples(images, targets)])


@dataclass
class AdversarialEnds:
    """The adversarial ends of a run, one per adversarial-natural pair, in pair order.

    Args:
        images: ``(K, C, H, W)`` float32 examples in [0, 1].
        naturals: ``(K,)`` split index of each pair's natural end.
        sources: ``(K,)`` split index of the input each example was made from.
        targets: ``(K,)`` class of each pair (the natural end's; the example's target).
        linf: ``(K,)`` float32 L-infinity distance of each example from its source (pixels).
    """

    images: Tensor
    naturals: Tensor
    sources: Tensor
    targets: Tensor
    linf: Tensor

    def pairs(self, first_id: int, split_size: int) -> list[Pair]:
        """The pairs ``first_id, first_id + 1, ...``: natural end first, then the example, at
        index ``split_size + k`` of :meth:`dataset`."""
        return [
            Pair(first_id + k, int(n), split_size + k, int(c), adversarial=True)
            for k, (n, c) in enumerate(zip(self.naturals, self.targets, strict=True))
        ]

    def dataset(self, split: Dataset) -> Dataset:
        """``split`` followed by the examples (each labelled with its target class)."""
        return ConcatDataset([split, AdversarialExamples(self.images, self.targets)])

    def state(self) -> dict[str, Tensor]:
        """What ``adversarial.pt`` holds (CPU tensors)."""
        return {f.name: getattr(self, f.name).cpu() for f in dataclasses.fields(self)}

    @torch.no_grad()
    def check(self, network: nn.Module, split: Dataset, budget: float, device: str) -> None:
        """Check saved ends as new ones are checked: each within ``budget`` of its source (the
        split's item) and in [0, 1], and put by ``network`` in its target class.

        Raises:
            AttackError: an end that fails, named, with what to do.
        """
        sources, _ = stack_images(split, self.sources.tolist())
        try:
            check_within_budget(self.images, sources.to(self.images.dtype), budget)
        except AttackError as error:
            raise AttackError(
                f"the saved adversarial.pt fails its check ({error}); {REMAKE}"
            ) from error
        predicted = network(self.images.to(device)).argmax(dim=1).cpu()
        wrong = (predicted != self.targets).nonzero().flatten().tolist()
        if wrong:
            k = wrong[0]
            raise AttackError(
                f"the saved adversarial.pt holds {len(wrong)} examples the classifier does not "
                f"put in their target (example {k}: class {int(predicted[k])}, target "
                f"{int(self.targets[k])}); {REMAKE}"
            )

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AdversarialEnds:
        """The ends :meth:`state` saved.

        Raises:
            KeyError: a file that lacks one of the fields.
        """
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


def make_adversarial_ends(
    network: nn.Module,
    dataset: Dataset,
    sampling: PairSampling,
    options: AdversarialOptions,
    count: int,
    device: str = "cpu",
    taken: set[int] | frozenset[int] = frozenset(),
) -> AdversarialEnds:
    """``count`` adversarial ends of ``dataset`` (the split), drawn with ``sampling.seed``.

    Correctly classified items not in ``taken`` are taken in a seeded order (the second
    permutation of ``torch.Generator().manual_seed(sampling.seed)``; the first draws the
    natural pairs). Each pair's natural end is the next one; its source the next one of another
    class, attacked towards the natural end's class. A failed attack discards its source and
    the pair takes the next ones: each round attacks about ``count`` sources, several at once
    for each pair still without an end (the first success counts), for at most
    ``TRIES_PER_END * count`` attacks in all.

    Args:
        network: An eval-mode classifier on ``device`` (logits of images in [0, 1]); only read.
        dataset: The split, items ``(image (C, H, W) in [0, 1], label)``.
        sampling: The pairs' options (its seed and split; correctly classified items only,
            whatever ``sampling.correctly_classified`` says).
        options: The attack.
        count: Ends wanted, >= 1.
        device: Where the network runs.
        taken: Split indices neither end may be (the natural pairs' ends): the two kinds of
            pairs share no input, so a comparison of them compares independent draws.

    Raises:
        PairError: fewer than ``count`` successful attacks (the split ran out of correctly
            classified inputs, or the attacks failed too often); the message suggests a larger
            budget or more steps.
        AttackError: an example out of budget (:func:`connectivity.attacks.check_within_budget`).
    """
    generator = torch.Generator().manual_seed(sampling.seed)
    torch.randperm(len(dataset), generator=generator)  # type: ignore[arg-type]
    order = torch.randperm(len(dataset), generator=generator).tolist()  # type: ignore[arg-type]
    order = [i for i in order if i not in taken]
    correct = dataclasses.replace(sampling, correctly_classified=True, adversarial=None)
    draw = _Draw(_usable(network, dataset, order, correct, device))
    naturals: list[tuple[int, int]] = []
    found: dict[int, tuple[int, Tensor, float]] = {}  # pair -> (source, example, distance)
    tries = 0
    while len(found) < count and tries < TRIES_PER_END * count:
        while len(naturals) < count and (item := draw.take()) is not None:
            naturals.append(item)
        batch = []
        missing = [k for k in range(len(naturals)) if k not in found]
        # A round attacks about ``count`` sources: a pair whose class is hard to reach gets
        # several sources at once instead of one round each.
        for k in missing * max(1, count // max(1, len(missing))):
            source = draw.take(avoid=naturals[k][1])
            if source is None or tries + len(batch) >= TRIES_PER_END * count:
                break
            batch.append((k, source[0]))
        if not batch:
            break
        images, _ = stack_images(dataset, [s for _, s in batch])
        targets = torch.tensor([naturals[k][1] for k, _ in batch])
        # Each round its own seed: a pair's next source does not get the same random start.
        attack = dataclasses.replace(options, seed=options.seed + tries)
        examples, success = targeted_examples(network, images, targets, attack)
        distances = check_within_budget(examples, images, options.budget)
        for j, (k, source) in enumerate(batch):
            if bool(success[j]) and k not in found:  # the first success of a round counts
                found[k] = (source, examples[j], float(distances[j]))
        tries += len(batch)
        if rank_zero_only.rank == 0:
            print(
                f"pairs: {len(found)} of {count} adversarial ends made ({tries} attacks)",
                flush=True,
            )
    if len(found) < count:
        ran_out = tries < TRIES_PER_END * count  # no input left to attack, not too many failures
        raise PairError(_too_few(len(found), count, tries, options, sampling.split, ran_out))
    keep = sorted(found)
    if rank_zero_only.rank == 0:
        print(
            f"pairs: {count} adversarial ends made by targeted {options.attack} "
            f"(L-infinity budget {options.budget:.4g}); {count} of {tries} attacks succeeded",
            flush=True,
        )
    return AdversarialEnds(
        images=torch.stack([found[k][1] for k in keep]).float().cpu(),
        naturals=torch.tensor([naturals[k][0] for k in keep]),
        sources=torch.tensor([found[k][0] for k in keep]),
        targets=torch.tensor([naturals[k][1] for k in keep]),
        linf=torch.tensor([found[k][2] for k in keep], dtype=torch.float32),
    )


def _too_few(
    made: int, count: int, tries: int, options: AdversarialOptions, split: str, ran_out: bool
) -> str:
    """The one-line message of a draw that made ``made < count`` ends: the split ran out of
    inputs (``ran_out``), or the attacks failed too often."""
    if ran_out:
        return (
            f"only {made} of {count} adversarial ends could be made: the {split} split has no "
            f"more correctly classified inputs to use as natural ends or sources of another "
            f"class ({made} of {tries} targeted {options.attack} attacks succeeded); ask for "
            "fewer (pairs.adversarial.count, pairs.count) or draw from a larger split"
        )
    return (
        f"only {made} of {count} adversarial ends could be made: {made} of {tries} targeted "
        f"{options.attack} attacks on correctly classified {split} inputs succeeded within the "
        f"L-infinity budget {options.budget:.4g}; raise pairs.adversarial.budget or "
        "pairs.adversarial.steps, or ask for fewer (pairs.adversarial.count)"
    )


class _Draw:
    """Items ``(index, label)`` taken in order from a stream; one skipped for its class waits
    for a later take that accepts it, so every item is used at most once and none is lost."""

    def __init__(self, stream: Any) -> None:
        self.stream = iter(stream)
        self.spare: list[tuple[int, int]] = []

    def take(self, avoid: int | None = None) -> tuple[int, int] | None:
        """The first item not of class ``avoid``; None when the stream has no more."""
        for k, (_, label) in enumerate(self.spare):
            if label != avoid:
                return self.spare.pop(k)
        for index, label in self.stream:
            if label != avoid:
                return index, label
            self.spare.append((index, label))
        return None


def adversarial_count(sampling: PairSampling) -> int:
    """How many adversarial-natural pairs ``sampling`` asks for: ``adversarial.count``, or as
    many as natural pairs (``count``, or the explicit ``indices``)."""
    options = sampling.adversarial
    assert isinstance(options, AdversarialOptions)
    if options.count is not None:
        return options.count
    return len(sampling.indices) if sampling.indices is not None else sampling.count
