"""Toy classifiers on the plane with known class regions, for tests of the path search."""

from __future__ import annotations

import math
import os
import signal

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn


class Annulus(nn.Module):
    """Class 0 inside the ring 1 < r < 2, class 1 elsewhere: connected, but not convex."""

    def forward(self, z: Tensor) -> Tensor:
        r = z.norm(dim=-1)
        inside = 4.0 * (r - 1.0) * (2.0 - r)
        return torch.stack([inside, torch.zeros_like(inside)], dim=-1)


class Hole(nn.Module):
    """Class 0 on the plane minus the unit disc round the origin, class 1 inside it: logits
    ``(|z| - 1, 0)``. The line between ``(-2, 0)`` and ``(2, 0)`` runs through the centre, where
    every force on a band lies along the line (issue 18)."""

    def forward(self, z: Tensor) -> Tensor:
        margin = z.norm(dim=-1) - 1.0
        return torch.stack([margin, torch.zeros_like(margin)], dim=-1)


HOLE_ENDS = (torch.tensor([[-2.0, 0.0]]), torch.tensor([[2.0, 0.0]]))


class TwoDisks(nn.Module):
    """Class 0 in two disjoint unit disks around (-2, 0) and (2, 0), class 1 elsewhere."""

    def forward(self, z: Tensor) -> Tensor:
        left = (z - z.new_tensor([-2.0, 0.0])).norm(dim=-1)
        right = (z - z.new_tensor([2.0, 0.0])).norm(dim=-1)
        inside = 4.0 * (1.0 - torch.minimum(left, right))
        return torch.stack([inside, torch.zeros_like(inside)], dim=-1)


class DisksAndRing(nn.Module):
    """Class 0 in three separate regions: the ring 1 < r < 2 around the origin and the unit
    disks around (-5, 0) and (5, 0); class 1 elsewhere. No path of class 0 joins two regions."""

    def forward(self, z: Tensor) -> Tensor:
        r = z.norm(dim=-1)
        ring = 4.0 * (r - 1.0) * (2.0 - r)
        left = 4.0 * (1.0 - (z - z.new_tensor([-5.0, 0.0])).norm(dim=-1))
        right = 4.0 * (1.0 - (z - z.new_tensor([5.0, 0.0])).norm(dim=-1))
        inside = torch.maximum(ring, torch.maximum(left, right))
        return torch.stack([inside, torch.zeros_like(inside)], dim=-1)


def disks_and_ring_points() -> tuple[Tensor, list[list[int]]]:
    """Inputs of class 0 of :class:`DisksAndRing`: 5 spread round the ring (radius 1.5), 3 in
    each disk, interleaved; and the true components (index lists, largest first)."""
    angles = torch.arange(5) * (2 * torch.pi / 5)
    ring = 1.5 * torch.stack([angles.cos(), angles.sin()], dim=-1)
    offsets = torch.tensor([[0.0, 0.0], [0.4, 0.3], [-0.3, -0.5]])
    left, right = offsets + torch.tensor([-5.0, 0.0]), offsets + torch.tensor([5.0, 0.0])
    points = torch.cat([ring[:2], left[:1], right[:1], ring[2:], left[1:], right[1:]])
    return points, [[0, 1, 4, 5, 6], [2, 7, 8], [3, 9, 10]]


class Stripes(nn.Module):
    """Class 0 where x < 1, class 1 where x > 1; a straight line inside x < 1 is fine."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.stack([4.0 * (1.0 - z[..., 0]), torch.zeros_like(z[..., 0])], dim=-1)


class RingNet(nn.Module):
    """Class 0 on the ring 1 < r < 2 of ``z = scale * (x - 0.5)``, read from the first two
    values of any input ``(B, ...)``; class 1 elsewhere. Has parameters (the scale), so it can
    be cast to other dtypes. With ``scale = 4`` on 2x2 images, the pixels (0.875, 0.55) and
    (0.125, 0.55) lie on the ring and the straight line between them crosses its hole."""

    def __init__(self, scale: float = 4.0) -> None:
        super().__init__()
        self.scale = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.scale.weight.copy_(scale * torch.eye(2))

    def forward(self, x: Tensor) -> Tensor:
        z = self.scale(x.flatten(1)[:, :2] - 0.5)
        r = z.norm(dim=-1)
        inside = 4.0 * (r - 1.0) * (2.0 - r)
        return torch.stack([inside, torch.zeros_like(inside)], dim=-1)


def ring_images(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Two 1x2x2 images on opposite sides of :class:`RingNet`'s ring (class 0)."""
    start = torch.tensor([[[0.875, 0.55], [0.3, 0.7]]], dtype=dtype)
    end = torch.tensor([[[0.125, 0.55], [0.6, 0.2]]], dtype=dtype)
    return start, end


class KillAfterBandStep(L.Callback):
    """SIGKILLs its own process once the band has taken ``step`` steps: a real kill (no
    clean-up runs) at a known point in the middle of a band, for resume tests.

    Args:
        step: Band steps after which the process dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        band = getattr(pl_module, "band", None)
        if band is not None and band.pairs and int(band.steps.max()) >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAfterBandStep(L.Callback):
    """Raises ``RuntimeError`` once a band has taken ``step`` steps: a run stopped in the
    middle of a band, in-process (Lightning's own exception handling runs, as on a crash).

    Args:
        step: Band steps after which it raises.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        band = getattr(pl_module, "band", None)
        if band is not None and band.pairs and int(band.steps.max()) >= self.step:
            raise RuntimeError(f"stopped on purpose after band step {self.step}")


class PretendRank(SingleDeviceStrategy):
    """One process on the CPU that plays rank ``rank`` of ``world`` ranks: the pairs it takes
    and the band checkpoint it writes are that rank's. Its collectives are one process's
    (a broadcast gives its own object back), except that it takes the other ranks to be still
    busy when ``others_busy`` (so a fit runs out its steps, and keeps its band checkpoint, as
    a rank that finishes before another does), for tests of runs resumed on other numbers of
    ranks without starting processes.

    Args:
        rank: The rank it plays.
        world: The number of ranks.
        others_busy: The other ranks are taken never to finish.
    """

    def __init__(self, rank: int, world: int, others_busy: bool = False) -> None:
        super().__init__(device="cpu")
        self.global_rank, self.world_size, self.others_busy = rank, world, others_busy

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return bool(decision) and not self.others_busy


def ring_pairs(count: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """``(2 * count, 1, 2, 2)`` images of :class:`RingNet`'s ring (class 0) and ``count``
    pairs of them on opposite sides of the ring: each pair's line crosses the ring's hole, so
    each pair needs a band, and a path round the ring exists."""
    angles = torch.arange(count) * (torch.pi / count) + 0.3
    images = []
    for angle in angles.tolist():
        for turn in (0.0, torch.pi):
            x = torch.tensor([math.cos(angle + turn), math.sin(angle + turn)]) * 0.375 + 0.5
            images.append(torch.tensor([[x[0], x[1]], [0.3, 0.7]]).unsqueeze(0))
    return torch.stack(images), [(2 * k, 2 * k + 1) for k in range(count)]


class LogRecordWrites(L.Callback):
    """Appends ``<space> <pair id> <rank>`` to the file ``log`` for every record the run's
    :class:`~connectivity.runs.trainer.RecordWriter` writes (one line each, in every process),
    so a test can count the record writes of runs in other processes.

    Args:
        log: The file the lines are appended to.
    """

    def __init__(self, log: str) -> None:
        self.file = log

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            store = getattr(callback, "store", None)
            if store is None or getattr(store, "logged_to", None) == self.file:
                continue
            store.save = self._logged(store.save, trainer.global_rank)
            store.logged_to = self.file

    def _logged(self, save, rank: int):  # type: ignore[no-untyped-def]
        def logged(space, pair, record, *rest, **named) -> None:  # type: ignore[no-untyped-def]
            with open(self.file, "a") as file:
                file.write(f"{space} {pair.id} {rank}\n")
            save(space, pair, record, *rest, **named)

        return logged


def digits_test_predictions(classifier: str | os.PathLike) -> tuple[object, Tensor, Tensor]:
    """The embedded digits' test set, its labels ``(N,)`` and which images the classifier
    checkpoint classifies right ``(N,)`` bool (for picking pairs whose line fails or passes)."""
    from connectivity.data import DigitsDataModule
    from connectivity.runs.networks import load_network

    dataset = DigitsDataModule().dataset("test")
    network = load_network(str(classifier))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    with torch.no_grad():
        right = network(images).argmax(dim=1) == labels
    return dataset, labels, right
