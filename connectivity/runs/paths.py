"""Path experiments: pick same-class pairs, decide them in every space, save each at once.

A run is driven by a Lightning Trainer in predict mode: each rank takes its own share of the
pairs (no gradients are shared between ranks), decides them in every space with all of its
pairs batched together, and writes each pair's record the moment it is decided. Rank zero then
builds the table and the figures from the saved records (:mod:`connectivity.reporting.report`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.strategies import DDPStrategy, ParallelStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import Dataset

from connectivity.api import encode_pairs
from connectivity.checkpoints import CheckpointError, file_digest, nearest_checkpoint
from connectivity.classifier import ClassifierModule
from connectivity.data import SPLITS, ImageDataModule, stack_images
from connectivity.engine.band import straight_line
from connectivity.engine.checks import Certifier, path_log_probabilities, target_margin
from connectivity.engine.options import PathOptions
from connectivity.engine.split import INPUT, Frozen, floating_dtype, probe_split, split
from connectivity.errors import ConnectivityError, OptionsError
from connectivity.lightning.output import on_terminal
from connectivity.lightning.path_module import BandCheckpoint, PathModule
from connectivity.reporting.drawing import check_figures, load_decoders
from connectivity.reporting.report import write_report
from connectivity.reporting.wandb_log import WandbOptions, paths_logger
from connectivity.store.records import Pair, RunStore


class PairError(ConnectivityError, ValueError):
    """Pairs that cannot be used (different labels, out of range, too few candidates)."""


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `count: true` is a mistake, not one pair.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class PairSampling:
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

    Raises:
        PairError: At construction, for a ``count`` that is not a whole number >= 1, a
            ``split`` other than train/val/test, ``indices`` that are not a non-empty list
            of integer ``[i, j]`` pairs, a ``closest_of`` below ``count`` or given with
            ``indices``, or ``screen_points`` below 3.
    """

    count: int = 25
    seed: int = 0
    split: str = "test"
    correctly_classified: bool = True
    indices: list[tuple[int, int]] | None = None
    closest_of: int | None = None
    screen_points: int = 16

    def __post_init__(self) -> None:
        # Checked here, at construction, so a bad value fails before any work or run folder.
        if not _is_int(self.count) or self.count < 1:
            raise PairError(
                f"pairs.count must be a whole number >= 1, got {self.count!r}; set how many "
                "pairs to draw"
            )
        if self.split not in SPLITS:
            raise PairError(f"pairs.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.closest_of is not None and (
            not _is_int(self.closest_of) or self.closest_of < self.count
        ):
            raise PairError(
                f"pairs.closest_of must be a whole number >= pairs.count ({self.count}), got "
                f"{self.closest_of!r}; it is how many random pairs the {self.count} closest "
                "calls are chosen from (leave it out for random pairs)"
            )
        if not _is_int(self.screen_points) or self.screen_points < 3:
            raise PairError(
                f"pairs.screen_points must be a whole number >= 3 (the two ends and at least "
                f"one point between them), got {self.screen_points!r}"
            )
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
                or not all(_is_int(i) for i in pair)
            ):
                raise PairError(
                    f"pairs.indices[{k}] must be an [i, j] pair of integer dataset indices, got "
                    f"{pair!r}"
                )
            pairs.append((int(pair[0]), int(pair[1])))
        self.indices = pairs


def working_copy(network: nn.Module) -> nn.Module:
    """The tool's own eval-mode copy of a caller's network.

    The caller's module keeps its mode (a ``train()`` network must not be switched to eval,
    nor its batch-norm statistics updated by our forward passes), device and parameters.
    """
    return copy.deepcopy(network).eval()


def load_network(classifier: str | nn.Module) -> nn.Module:
    """The classifier network (logits of images in [0, 1]) from a checkpoint path or a module.

    A module is copied (:func:`working_copy`), never changed.
    """
    if isinstance(classifier, nn.Module):
        return working_copy(classifier)
    return ClassifierModule.from_checkpoint(classifier).network.eval()


def probe_spaces(network: nn.Module, spaces: list[str], dataset: Dataset) -> None:
    """Check every space's split on two images of ``dataset`` before any work: one tensor at
    the layer, ``(B, classes)`` logits, and logits of a point that do not depend on its batch.

    Raises:
        LayerError: see :func:`connectivity.engine.split.probe_split`.
        BatchDependenceError: the class of an image would depend on the batch it is in.
    """
    device = next(network.parameters(), torch.empty(0)).device
    images, _ = stack_images(dataset, list(range(min(2, len(dataset)))))  # type: ignore[arg-type]
    for space in spaces:
        head, tail = split(network, space)
        dtype = floating_dtype(head) or images.dtype
        probe_split(head.to(device), tail.to(device), images.to(device=device, dtype=dtype))


@torch.no_grad()
def _predict(network: nn.Module, dataset: Dataset, indices: list[int], device: str) -> Tensor:
    images, _ = stack_images(dataset, indices)
    return network(images.to(device)).argmax(dim=1).cpu()


def select_pairs(
    network: nn.Module,
    dataset: Dataset,
    sampling: PairSampling,
    class_names: list[str],
    device: str = "cpu",
) -> list[Pair]:
    """Same-class pairs, drawn with a seed or given explicitly; identical on every rank.

    ``network`` is only read: predictions come from an eval-mode copy of it.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if sampling.indices is not None:
        pairs = []
        for k, (i, j) in enumerate(sampling.indices):
            if not (0 <= i < size and 0 <= j < size):
                raise PairError(f"pair {k} ({i}, {j}) is out of range: the split has {size} items")
            a, b = int(dataset[i][1]), int(dataset[j][1])
            if a != b:
                raise PairError(
                    f"pair {k} ({i}, {j}) joins different labels: {class_names[a]!r} ({a}) and "
                    f"{class_names[b]!r} ({b}); both ends must share a class"
                )
            pairs.append(Pair(k, int(i), int(j), a))
        return pairs
    if sampling.correctly_classified or sampling.closest_of is not None:
        network = working_copy(network).to(device)
    if sampling.closest_of is not None:
        return _closest_calls(network, dataset, sampling, device)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(sampling.seed)).tolist()
    waiting: dict[int, int] = {}
    pairs = []
    for index, label in _usable(network, dataset, order, sampling, device):
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


def _usable(
    network: nn.Module, dataset: Dataset, order: list[int], sampling: PairSampling, device: str
) -> Iterator[tuple[int, int]]:
    """``(dataset index, label)`` of the items in ``order`` that pairs may be drawn from (the
    correctly classified ones, when ``sampling`` asks for them), predicted 256 at a time as
    they are asked for: a draw that stops early predicts no more."""
    for first in range(0, len(order), 256):
        indices = order[first : first + 256]
        labels = [int(dataset[i][1]) for i in indices]
        keep = [True] * len(indices)
        if sampling.correctly_classified:
            keep = (_predict(network, dataset, indices, device) == torch.tensor(labels)).tolist()
        yield from ((i, label) for i, label, ok in zip(indices, labels, keep, strict=True) if ok)


def _usable_items(
    network: nn.Module, dataset: Dataset, sampling: PairSampling, device: str
) -> dict[int, list[int]]:
    """``{label: [dataset index, ...]}`` of the items pairs may be drawn from."""
    by_label: dict[int, list[int]] = {}
    everything = list(range(len(dataset)))  # type: ignore[arg-type]
    for index, label in _usable(network, dataset, everything, sampling, device):
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
    network: nn.Module, dataset: Dataset, sampling: PairSampling, device: str
) -> list[Pair]:
    """``sampling.count`` of ``sampling.closest_of`` random same-class pairs: those whose lines
    come closest to leaving their class (see :class:`PairSampling`), in the order drawn."""
    assert sampling.closest_of is not None
    by_label = _usable_items(network, dataset, sampling, device)
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


def options_in_space(options: PathOptions, space: str) -> PathOptions:
    """The path options a space is searched with: ``bounds`` is a box of pixel values.

    In the input space the box is ``options.bounds``, or ``(0, 1)`` when not given, so every
    point stays an image; a layer's activations live on other scales, so layer spaces are never
    boxed, whatever ``bounds`` says.
    """
    if space == INPUT:
        bounds = options.bounds if options.bounds is not None else (0.0, 1.0)
    else:
        bounds = None
    return dataclasses.replace(options, bounds=bounds)


class PairsDDPStrategy(DDPStrategy):
    """DDP's launcher, process group and collectives, without wrapping the module.

    Each rank optimises its own pairs: plain DDP would broadcast rank zero's parameters (the
    pivots) to every rank when it wraps the module, silently replacing every other rank's
    pairs, and would average the pivots' gradients across ranks. Registered as ``ddp_pairs``
    (processes started as scripts, as ``ddp``) and ``ddp_pairs_spawn`` (as ``ddp_spawn``).
    """

    def configure_ddp(self) -> None:
        pass  # the module stays as it is: no broadcast, no gradient averaging


for _name, _start in (("ddp_pairs", "popen"), ("ddp_pairs_spawn", "spawn")):
    if _name not in StrategyRegistry:
        StrategyRegistry.register(
            _name,
            PairsDDPStrategy,
            description=f"DDP without wrapping: each rank its own pairs ({_start})",
            start_method=_start,
        )


class SpacePathModule(PathModule):
    """The pairs of one space that one rank decides, as a :class:`PathModule`.

    The rank's share (every ``world_size``-th pair from its rank on, minus pairs already
    decided) is built in ``setup``, which every launcher runs in every process (spawned ones
    too), from rank zero's draw of the pairs. Records are the truth: a pair with a record is
    never decided again. Every rank reads every band checkpoint of the space, whichever rank
    wrote it (:func:`take_over`): the band state of each of its pairs is continued from the
    newest file that holds it, so a run resumed on another number of ranks decides each pair
    once and loses no band step; the files of ranks that no longer run are removed once what
    they held is saved again or decided.

    Args:
        network: The classifier (logits of images in [0, 1]); split at ``space`` here. None
            when ``tail`` is given.
        space: ``input`` or a layer name.
        pairs: All pairs of the experiment.
        dataset: The dataset the pairs index (None when a subclass gives the ends itself,
            :meth:`encode_rows`).
        options: Path options (:func:`options_in_space` is applied).
        store: The run folder: records already there are not decided again.
        checkpoints: The folder of this space's band checkpoints (one file per rank).
        tail: The classifier's tail at ``space``, for ends that are points of the space
            already (the head is then the identity); instead of ``network``.
        key: Where the records go and the prefix of the metrics (default: ``space``).

    Raises:
        ValueError: neither or both of ``network`` and ``tail``.
    """

    def __init__(
        self,
        network: nn.Module | None,
        space: str,
        pairs: list[Pair],
        dataset: Dataset | None,
        options: PathOptions,
        store: RunStore,
        checkpoints: Path,
        *,
        tail: nn.Module | None = None,
        key: str | None = None,
    ) -> None:
        if (network is None) == (tail is None):
            raise ValueError("give the network or its tail at the space, not both")
        head: nn.Module = nn.Identity()
        if network is not None:
            head, tail = split(network, space)
        assert tail is not None
        options = options_in_space(options, space)
        super().__init__(tail, options=options, space=space if key is None else key)
        self.head = Frozen(head)
        self.all_pairs = pairs
        self.dataset = dataset
        self.store = store
        self.checkpoints = checkpoints
        self.rows: list[Pair] = []  # the pair of each row of the band
        self.reused: list[Pair] = []  # this rank's pairs decided in an earlier run
        self.resumed_at = 0
        self.taken_over = 0  # this rank's pairs continued from another rank's band checkpoint
        self._carried: dict[int, SavedState] = {}
        self._orphans: list[Path] = []

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        rank, world = self.trainer.global_rank, self.trainer.world_size
        # Records are the truth. Every rank reads them, and every band checkpoint, before the
        # barrier: no rank writes a record or a checkpoint of this fit before it, so all ranks
        # see the same undecided pairs and saved states.
        done = self.store.done(self.space)
        found, files = self._read_checkpoints()
        strategy.barrier("band checkpoints read")
        # Each process drew the pairs itself; a borderline prediction could differ between
        # devices, so every rank takes rank zero's draw (the one run.json records).
        pairs = strategy.broadcast(self.all_pairs, src=0)
        share = pairs[rank::world]
        self.rows = [p for p in share if p.id not in done]
        self.reused = [p for p in share if p.id in done]
        undecided = {p.id for p in pairs} - done
        plan = take_over(found, rank, world, [p.id for p in self.rows], undecided)
        self._carried = plan.carried
        self._orphans = [files[k] for k in files if k >= world and k % world == rank]
        self.taken_over = plan.taken_over
        targets = torch.tensor([p.label for p in self.rows], dtype=torch.long)
        if not self.rows:  # this rank has nothing left here, but takes part in the fit
            nothing = torch.zeros(0, 1)
            self.set_pairs(nothing, nothing, targets)
            return
        device = strategy.root_device
        z_start, z_end = self.encode_rows(targets.to(device), device)
        self.set_pairs(z_start, z_end, targets.to(device))
        if plan.checkpoint is not None:
            self.resume_from(plan.checkpoint)
            self.resumed_at = int(plan.checkpoint.get("steps", 0))

    def encode_rows(self, targets: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """The ends of this rank's pairs (``self.rows``) in the space: the dataset images
        through the head (:func:`encode_each_pair`). ``targets``: ``(rows,)`` on ``device``."""
        images, _ = stack_images(self.dataset, [p.start_index for p in self.rows])
        others, _ = stack_images(self.dataset, [p.end_index for p in self.rows])
        self.head.to(device)
        self.tail.to(device)
        return encode_each_pair(self.head, self.tail, images.to(device), others.to(device), targets)

    def end_images(self, pair: Pair) -> Tensor | None:
        """``(2, C, H, W)``: the pair's two inputs, kept with its record in a latent space,
        whose points are not images, for its figure; None in the input space."""
        if self.space == INPUT:
            return None
        return stack_images(self.dataset, [pair.start_index, pair.end_index])[0]

    def checkpoint_extra(self) -> dict[str, Any]:
        # The band states this rank took from files it replaces or removes, for pairs other
        # ranks decide now, until those pairs are decided (their new owner's file may not be
        # written yet when this one is).
        carried = {
            i: state
            for i, state in self._carried.items()
            if not self.store.record_path(self.space, i).exists()
        }
        return {"pair_ids": [p.id for p in self.rows], "carried": carried}

    def superseded_checkpoints(self) -> list[Path]:
        return self._orphans

    def _read_checkpoints(self) -> tuple[dict[int, dict[str, Any]], dict[int, Path]]:
        """``({rank: checkpoint}, {rank: file})``: every band checkpoint of the space that can
        be read and says which pairs it holds, and every file, read or not."""
        files = {}
        for path in self.checkpoints.glob("rank*.pt"):
            match = re.fullmatch(r"rank(\d+)\.pt", path.name)
            if match:
                files[int(match.group(1))] = path
        found = {}
        for k, path in sorted(files.items()):
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                continue
            except Exception as error:  # a damaged file: its pairs start again from the line
                warnings.warn(
                    f"ignoring the damaged band checkpoint {path} ({error})", stacklevel=2
                )
                continue
            if "pair_ids" not in checkpoint:
                warnings.warn(
                    f"ignoring the band checkpoint {path}: it does not say which pairs it holds",
                    stacklevel=2,
                )
                continue
            found[k] = checkpoint
        return found, files


@torch.no_grad()
def encode_each_pair(
    head: nn.Module, tail: nn.Module, starts: Tensor, ends: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Each pair's ends in the head's space, its two inputs through the head as one batch of
    two: a pair's ends never depend on which other pairs share its batch (float32 rounding of
    a network differs between batch compositions), so a run on any number of ranks, or resumed
    with other pairs left, gives the same ends.

    Args:
        head, tail: As :func:`connectivity.engine.split.split` returns them, on the inputs' device.
        starts: ``(pairs, *input_shape)`` floating inputs, ``pairs >= 1``.
        ends: Same shape.
        targets: ``(pairs,)`` target classes.

    Returns:
        ``(pairs, *point_shape)`` twice, as :func:`connectivity.api.encode_pairs` gives them.

    Raises:
        As :func:`connectivity.api.encode_pairs`.
    """
    both = torch.stack([starts, ends], dim=1)  # (pairs, 2, *input_shape)
    # The first pair also checks the split and the targets and sets the dtype.
    first, _ = encode_pairs(head, tail, both[0], both[0, :1], targets)
    dtype = floating_dtype(head) or starts.dtype
    points = [first] + [head(pair.to(dtype)).to(first.dtype) for pair in both[1:]]
    z = torch.stack(points)  # (pairs, 2, *point_shape)
    return z[:, 0], z[:, 1]


# A pair's saved band state: its path, steps, the marks of inserted pivots (None: none
# marked) and the length of the symmetry nudges its bands got.
SavedState = tuple[Tensor, int, Tensor | None, float]


@dataclass
class TakeOver:
    """What one rank continues from the band checkpoints of a space (:func:`take_over`).

    Attributes:
        checkpoint: For :meth:`PathModule.resume_from` (rows index the rank's pairs): the rows
            of one file's band, with their optimiser state, and the other pairs with a saved
            path, queued; None when no pair of the rank has a saved band state.
        carried: ``{pair id: (path, steps, inserted, nudge)}``: the newest band states, found
            in files this rank replaces or removes, of pairs that other ranks decide now
            (``inserted``: ``(points,)`` bool marks of inserted pivots or None; ``nudge``: the
            symmetry nudges of the pair's bands so far).
        taken_over: The rank's pairs whose band state comes from another rank's file.
    """

    checkpoint: dict[str, Any] | None
    carried: dict[int, SavedState]
    taken_over: int


def _band_rows(state: dict[str, Any], rows: list[int], count: int) -> dict[str, Any]:
    """The per-pair tensors of a band's (or its optimiser's) state, for ``rows`` only: every
    tensor whose first dimension is the band's ``count`` pairs (all of a band's state, and all
    of its optimisers' per-pair state) is cut; the rest (Adam's step count) is kept."""
    index = torch.tensor(rows, dtype=torch.long)
    return {
        key: value[index]
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == count
        else value
        for key, value in state.items()
    }


def _row_path(band: dict[str, Any], row: int) -> tuple[Tensor, int]:
    """``(path, steps)`` of one row of a saved band: its ends and pivots, its steps."""
    path = torch.cat(
        [band["starts"][row : row + 1], band["pivots"][row], band["ends"][row : row + 1]]
    )
    return path, int(band["steps"][row])


def take_over(
    found: dict[int, dict[str, Any]],
    rank: int,
    world: int,
    mine: list[int],
    undecided: set[int],
) -> TakeOver:
    """Which saved band state each of a rank's pairs continues from, whatever rank saved it.

    Every state of an undecided pair in any file counts: a live one (a row of the file's band
    still active, or a queued path) or a carried copy. The newest wins: the most steps, then
    the most points (a grown path comes after the band it grew from), then a live one, then
    the lowest file. The rank continues one file's band exactly (band and optimiser rows): its
    own file's, else the one holding most of its pairs; its other pairs with a saved state are
    queued from their paths (:meth:`Decisions.requeue`), and its pairs with none start from
    their line.

    Args:
        found: ``{rank: checkpoint}`` of the files read (with ``pair_ids``).
        rank: This rank; ``world``: the number of ranks now.
        mine: Ids of the rank's undecided pairs, in the order of its rows.
        undecided: Ids of every undecided pair of the fit (those with no record).
    """
    best: dict[int, tuple[tuple[int, int, int, int], int, int | None, tuple[Tensor, int] | None]]
    best = {}

    def offer(pair: int, steps: int, points: int, live: int, k: int, row, path) -> None:
        if pair not in undecided:
            return  # decided: its record is the truth
        key = (steps, points, live, -k)
        if pair not in best or key > best[pair][0]:
            best[pair] = (key, k, row, path)

    for k, checkpoint in sorted(found.items()):
        ids = [int(i) for i in checkpoint["pair_ids"]]
        band = checkpoint.get("band")
        if band is not None and band["pivots"].shape[0]:
            rows = checkpoint.get("band_rows", range(len(ids)))
            points = band["pivots"].shape[1] + 2
            for j, row in enumerate(rows):
                if bool(band["active"][j]):  # a finished row was decided or queued
                    offer(ids[int(row)], int(band["steps"][j]), points, 1, k, j, None)
        nudges = checkpoint.get("nudges", {})
        for row, (path, steps, *marks) in checkpoint.get("queued", {}).items():
            nudge = float(nudges.get(int(row), 0.0))
            entry = (path, int(steps), marks[0] if marks else None, nudge)
            offer(ids[int(row)], int(steps), path.shape[0], 1, k, None, entry)
        for pair, (path, steps, *extra) in checkpoint.get("carried", {}).items():
            entry = (path, int(steps), extra[0] if extra else None, extra[1] if extra[1:] else 0.0)
            offer(int(pair), int(steps), path.shape[0], 0, k, None, entry)

    def prior_nudge(pair: int) -> float:
        """The nudges of the pair's earlier bands, from the file of its newest state."""
        _, k, row, entry = best[pair]
        if row is None:
            return entry[3]
        ids = [int(i) for i in found[k]["pair_ids"]]
        return float(found[k].get("nudges", {}).get(ids.index(pair), 0.0))

    def saved_path(pair: int) -> SavedState:
        _, k, row, entry = best[pair]
        if row is not None:  # a row of a band: its nudge so far counts too
            band = found[k]["band"]
            path, steps = _row_path(band, row)
            anchored = band.get("anchored")
            # The band's marks are of its pivots; a path's include its two ends.
            inserted = None if anchored is None else F.pad(anchored[row], (1, 1))
            nudged = float(band["nudged"][row]) if "nudged" in band else 0.0
            return (path, steps, inserted, prior_nudge(pair) + nudged)
        return entry

    index = {pair: i for i, pair in enumerate(mine)}
    in_bands: dict[int, list[int]] = {}
    for pair in mine:
        if pair in best and best[pair][2] is not None:
            in_bands.setdefault(best[pair][1], []).append(pair)
    primary = None
    if in_bands:
        primary = rank if rank in in_bands else max(in_bands, key=lambda k: (len(in_bands[k]), -k))
    continued = {pair for pair in mine if pair in best and best[pair][2] is not None}
    continued = {pair for pair in continued if best[pair][1] == primary}
    queued_states = {
        index[pair]: saved_path(pair) for pair in mine if pair in best and pair not in continued
    }
    queued = {row: state[:3] for row, state in queued_states.items()}
    # Nudges of earlier bands: a continued band row's own nudge is in its band state.
    nudges = {row: state[3] for row, state in queued_states.items()}
    nudges.update({index[pair]: prior_nudge(pair) for pair in continued})
    adopted = {k for k in found if k == rank or (k >= world and k % world == rank)}
    carried = {
        pair: saved_path(pair)
        for pair in sorted(best)
        if pair not in index and best[pair][1] in adopted
    }
    taken_over = sum(1 for pair in mine if pair in best and best[pair][1] != rank)
    if primary is None and not queued:
        return TakeOver(None, carried, taken_over)
    checkpoint: dict[str, Any] = {
        "queued": queued,
        "nudges": {row: nudge for row, nudge in nudges.items() if nudge},
        "band_rows": [],
        "steps": 0,
    }
    if primary is not None:
        source = found[primary]
        rows = sorted(best[pair][2] for pair in in_bands[primary])
        count = source["band"]["pivots"].shape[0]
        ids = [int(i) for i in source["pair_ids"]]
        file_rows = source.get("band_rows", range(len(ids)))
        band = _band_rows(source["band"], rows, count)
        optimizer = dict(source["optimizer"])
        optimizer["state"] = {
            key: _band_rows(value, rows, count) for key, value in optimizer["state"].items()
        }
        checkpoint.update(
            band=band,
            optimizer=optimizer,
            band_rows=[index[ids[int(file_rows[j])]] for j in rows],
            steps=int(band["steps"].max()),
        )
    return TakeOver(checkpoint, carried, taken_over)


def line_check_words(module: PathModule) -> str:
    """The line a person reads when a space's band starts, e.g. ``"input: line check: 2 of 5
    pairs linear; 1 decided by the band before it stopped (kept)"``.

    Only pairs whose straight line passed the check count as linear; pairs whose band decided
    them before a resume (from its checkpoint) and pairs decided in an earlier run are named
    apart. Call after ``on_fit_start`` (the line check has run).
    """
    decisions = module.decisions
    # The line check decides every pair whose line passes, before any checkpoint's records
    # are restored: those are exactly the linear ones.
    linear = int(decisions.check.ok.sum()) if decisions is not None else 0
    rows = int(decisions.check.ok.numel()) if decisions is not None else 0
    words = f"{module.space}: line check: {linear} of {rows} pairs linear"
    if module.restored:
        words += f"; {module.restored} decided by the band before it stopped (kept)"
    reused = len(getattr(module, "reused", ()))
    if reused:
        words += f"; {reused} decided in an earlier run (kept)"
    resumed_at = getattr(module, "resumed_at", 0)
    if resumed_at:
        words += f"; band continued from its checkpoint at step {resumed_at}"
    taken_over = getattr(module, "taken_over", 0)
    if taken_over:
        words += f"; {taken_over} pairs go on from band checkpoints of other ranks"
    return words


class BandProgressBar(TQDMProgressBar):
    """Progress of one space's band, as a person follows it.

    Before the band: one line for the straight-line check (pairs decided by it, pairs reused
    from an earlier run, a band continued from its checkpoint). During the band: steps out of
    ``path.steps`` and pairs decided so far, with no ETA (pairs leave the band as they are
    decided, so most runs stop long before the last step); the bar is cleared when the band is
    done, and one line says what it did. No bar when the line check left no pair to a band.
    """

    BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]"

    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and on_terminal()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, SpacePathModule)
        decisions = pl_module.decisions
        self._linear = len(decisions.records) if decisions is not None else 0
        if trainer.is_global_zero:
            print(line_check_words(pl_module), flush=True)
        self._module = pl_module
        # The band set up when the fit started (after the line check): empty when every pair
        # of this rank was decided without one.
        self._band_runs = pl_module.band is not None and not pl_module.band.done
        self._steps, self._started = 0, time.monotonic()
        super().on_train_start(trainer, pl_module)

    def init_train_tqdm(self) -> Tqdm:
        # Made with its own description, total and start, so no generic "Training" or
        # "Epoch 0" bar shows first.
        module = self._module
        return Tqdm(
            desc=f"{module.space} band",
            total=module.options.steps,
            initial=module.resumed_at,
            position=2 * self.process_position,
            disable=self.is_disabled or not self._band_runs,
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # one epoch, one bar: the one made at the start of training

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        assert isinstance(pl_module, SpacePathModule)
        band, bar = pl_module.band, self.train_progress_bar
        if band is None or not band.pairs:
            return
        self._steps = int(band.steps.max())
        if bar is None or bar.disable:
            return
        bar.n = self._steps
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, SpacePathModule)
        super().on_train_end(trainer, pl_module)  # closes (clears) the bar
        # The band's one line also where no bar is shown (not a terminal), once, on rank zero.
        if not trainer.is_global_zero or not self._band_runs:
            return
        steps, elapsed = self._steps, Tqdm.format_interval(time.monotonic() - self._started)
        decisions = pl_module.decisions
        pairs = (len(decisions.records) if decisions is not None else 0) - self._linear
        print(
            f"{pl_module.space} band: {pairs} pair{'' if pairs == 1 else 's'} decided in {steps} "
            f"step{'' if steps == 1 else 's'} ({elapsed})",
            flush=True,
        )

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        assert isinstance(pl_module, SpacePathModule)
        decided = len(pl_module.decisions.records) if pl_module.decisions is not None else 0
        return {"decided": f"{decided}/{len(pl_module.rows)}"}


class RecordWriter(L.Callback):
    """Saves each pair's record the moment the module decides it (atomically, one file each)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def _flush(self, module: SpacePathModule) -> None:
        for row, record in module.decided:
            pair = module.rows[row]
            self.store.save(module.space, pair, record, module.end_images(pair))
        module.decided.clear()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, SpacePathModule)
        self._flush(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        assert isinstance(pl_module, SpacePathModule)
        self._flush(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, SpacePathModule)
        self._flush(pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning ends the process after an interrupt: say what is kept, and how to go on.
        assert isinstance(pl_module, SpacePathModule)
        self._flush(pl_module)
        if isinstance(exception, KeyboardInterrupt):
            done = len(self.store.done(pl_module.space))
            print(
                f"\n{pl_module.space}: interrupted. {done} decided pairs of this space are saved "
                f"in {self.store.records_dir / pl_module.space}, and the band was checkpointed; "
                "rerun the same command to continue where it stopped.",
                flush=True,
            )


@dataclass
class Experiment:
    """What a path experiment asks (everything except the data object itself).

    Args:
        classifier: Checkpoint of a ClassifierModule (``connectivity fit``).
        name: Run name; results go to ``<output_dir>/<name>``, and rerunning the same config
            with the same name resumes it.
        spaces: ``input`` and layer names (see ``connectivity.layer_names``); the same pairs
            are decided in every space.
        pairs: Which pairs to connect.
        path: Options of the path search. ``path.bounds`` is a box of pixel values and holds
            in the input space only (``(0, 1)`` when not given); layer spaces are unbounded.
        decoders: ``{layer: decoder checkpoint}`` to show latent points as images.
        output_dir: Folder of all path runs.
        checkpoint_every: Steps between band checkpoints (``<run>/bands/<space>/rank<k>.pt``):
            a run killed in the middle of a band continues from the last one.
        figures: Which pair figures the report draws: ``auto`` (every nonlinear, none and
            diverged pair, and the 3 linear pairs closest to a boundary, per space), ``all`` or
            ``none``; only missing or stale ones are drawn. Not part of the experiment: a rerun
            with another value only draws.
    """

    classifier: str
    name: str
    spaces: list[str] = field(default_factory=lambda: [INPUT])
    pairs: PairSampling = field(default_factory=PairSampling)
    path: PathOptions = field(default_factory=PathOptions)
    decoders: dict[str, str] = field(default_factory=dict)
    output_dir: str = "lightning_logs/paths"
    checkpoint_every: int = 20
    figures: str = "auto"

    def __post_init__(self) -> None:
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 1:
            raise ConnectivityError(
                f"checkpoint_every must be a whole number of steps >= 1, got "
                f"{self.checkpoint_every!r}"
            )
        check_figures(self.figures)


def manifest(experiment: Experiment, data: ImageDataModule, pairs: list[Pair]) -> dict[str, Any]:
    """What makes two runs the same experiment (resume only continues the same one)."""
    classifier = Path(experiment.classifier)
    return {
        "classifier": experiment.classifier,
        # The same path may later hold other weights; their results must not mix.
        "classifier_sha256": file_digest(classifier) if classifier.is_file() else None,
        # The data's own settings too (root, size, resize...): records of two input spaces
        # must never mix.
        "data": {
            "class": f"{type(data).__module__}.{type(data).__qualname__}",
            "init_args": data.data_config(),
        },
        "class_names": data.class_names,
        "spaces": experiment.spaces,
        "pairs": [asdict(p) for p in pairs],
        "sampling": asdict(experiment.pairs),
        "path": path_manifest(experiment.path),
    }


# Path options that came after run folders were first written (issues 11, 13, 18 and 20): left
# out of the manifest while they hold their defaults, so a folder written before them still
# counts as the same experiment (its remaining pairs are decided with today's blow-up test and
# nudge; climb_after and nudge_seed were fixed at their defaults before they were options).
_LATER_PATH_OPTIONS = (
    *("max_step", "max_energy_rise", "backoffs", "certify", "max_pivots", "nudge"),
    *("climb_after", "nudge_seed"),
)


def path_manifest(options: PathOptions) -> dict[str, Any]:
    """The path options as a run folder's manifest records them (``run.json``)."""
    values = asdict(options)
    defaults = asdict(PathOptions())
    for name in _LATER_PATH_OPTIONS:
        if values[name] == defaults[name]:
            del values[name]
    return values


# The experiment's own: one epoch of steps per space, records instead of Lightning checkpoints,
# each rank its own pairs.
_OWN_SETTINGS = {
    "max_epochs": 1,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "use_distributed_sampler": False,
}


_STEPS = "set --path.steps (most band steps per pair; a fit runs until every pair is decided)"
_NO_VALIDATION = "leave it out (a path experiment has no validation loop)"
# Trainer arguments whose role the experiment plays itself, and what to set instead: a value
# the Trainer would take and then not honour is refused rather than ignored.
_OWNED_TRAINER_ARGUMENTS = {
    "max_steps": _STEPS,
    "min_steps": _STEPS,
    "max_epochs": _STEPS,
    "min_epochs": _STEPS,
    "limit_train_batches": _STEPS,
    "overfit_batches": _STEPS,
    "fast_dev_run": _STEPS + " and fewer pairs",
    "accumulate_grad_batches": "set --path.steps and --path.lr (each step is one band update)",
    "gradient_clip_val": "set --path.max_step (the longest move of a pivot in one step)",
    "gradient_clip_algorithm": "set --path.max_step (the longest move of a pivot in one step)",
    "enable_checkpointing": "set --checkpoint_every (band checkpoints and records are the run's)",
    "val_check_interval": _NO_VALIDATION,
    "check_val_every_n_epoch": _NO_VALIDATION,
    "limit_val_batches": _NO_VALIDATION,
    "num_sanity_val_steps": _NO_VALIDATION,
    "limit_test_batches": _NO_VALIDATION,
    "limit_predict_batches": _NO_VALIDATION,
    "reload_dataloaders_every_n_epochs": "leave it out (the band is the only data)",
    "use_distributed_sampler": "leave it out (each rank decides its own share of the pairs)",
    "enable_model_summary": "leave it out (the experiment fits no model of its own)",
}


# What the Trainer does when these are None (its signature's default): all batches.
_EFFECTIVE_DEFAULTS = {f"limit_{loop}_batches": 1.0 for loop in ("train", "val", "test", "predict")}


def check_trainer_arguments(given: dict[str, Any] | None) -> None:
    """Refuse Trainer arguments that a path or graph experiment would not honour.

    ``--trainer.max_steps 3`` would be silently ignored (every band runs ``path.steps``): an
    argument the experiment owns is refused unless it keeps the Trainer's default, or the
    experiment's own value (``max_epochs: 1``).

    Raises:
        OptionsError: the first such argument, with the option to set instead.
    """
    defaults = {
        name: p.default for name, p in inspect.signature(L.Trainer.__init__).parameters.items()
    }
    for name, value in (given or {}).items():
        what = _OWNED_TRAINER_ARGUMENTS.get(name)
        kept = [defaults.get(name), _EFFECTIVE_DEFAULTS.get(name, ...)]
        kept.append(_OWN_SETTINGS.get(name, ...))
        if what is None or any(value == default for default in kept):
            continue
        raise OptionsError(
            f"--trainer.{name} {value} is not honoured: the experiment runs the Trainer's "
            f"loop itself; {what}"
        )


def _trainer_settings(given: dict[str, Any] | None) -> tuple[dict[str, Any], L.Trainer]:
    """The Trainer settings of every fit of an experiment, and a Trainer built with them.

    Raises:
        ConnectivityError: a parallel strategy other than ``ddp_pairs``: plain DDP (and its
            spawn, fork and sharded relatives) would replace every rank's pivots with rank
            zero's. ``auto`` on several devices becomes ``ddp_pairs``.
    """
    settings = {
        "accelerator": "auto",
        "devices": "auto",
        "strategy": "auto",
        "num_nodes": 1,
        "logger": None,
        "log_every_n_steps": 1,  # a band step is cheap to log and the metrics are per step
        **(given or {}),
        **_OWN_SETTINGS,
    }
    settings["callbacks"] = list(settings.get("callbacks") or [])
    probe = L.Trainer(**{**settings, "callbacks": None, "logger": False})
    unsafe = isinstance(probe.strategy, ParallelStrategy) and not isinstance(
        probe.strategy, PairsDDPStrategy
    )
    if unsafe and settings["strategy"] == "auto":
        settings["strategy"] = "ddp_pairs"
        probe = L.Trainer(**{**settings, "callbacks": None, "logger": False})
    elif unsafe:
        raise ConnectivityError(
            f"strategy {settings['strategy']!r} would overwrite every rank's pivots with rank "
            "zero's (DDP broadcasts parameters and averages gradients); use "
            "--trainer.strategy ddp_pairs (or ddp_pairs_spawn): each rank then decides its own "
            "pairs"
        )
    return settings, probe


def run_paths(
    experiment: Experiment,
    data: ImageDataModule,
    trainer: dict[str, Any] | None = None,
    wandb: WandbOptions | None = None,
    network: nn.Module | None = None,
) -> RunStore | None:
    """Run (or resume) a path experiment and write its report.

    Args:
        experiment: Classifier checkpoint, spaces, pairs, path options, decoders, run name.
        data: The datamodule the pairs are drawn from.
        trainer: Keyword arguments of the Lightning ``Trainer`` (accelerator, devices, strategy,
            num_nodes, precision, callbacks, logger...). ``max_epochs``, checkpointing, the
            model summary and the distributed sampler are the experiment's own; without a
            logger of the user's, the per-step metrics go to the run's W&B run.
        wandb: W&B settings of the run (per-step metrics and the report).
        network: A classifier module to use instead of loading ``experiment.classifier``;
            the run works on a copy of it in eval mode and leaves it as it is.

    Returns:
        The run's store on rank zero (None on other ranks).

    Raises:
        OptionsError: a Trainer argument the experiment owns (:func:`check_trainer_arguments`).
    """
    check_trainer_arguments(trainer)
    # The run works on its own eval-mode copy: the caller's module is never changed or moved.
    own_classifier = experiment.classifier if network is None else None
    network = load_network(network if network is not None else experiment.classifier)
    for space in experiment.spaces:
        _, tail = split(network, space)  # a wrong layer name fails here, before any work
        # certify="exact" on a space whose tail is not piecewise linear fails here too.
        Certifier.for_tail(tail, experiment.path)
    for space, decoder in experiment.decoders.items():
        if space not in experiment.spaces:
            raise ConnectivityError(
                f"a decoder is given for {space!r}, which is not among the spaces "
                f"{experiment.spaces}"
            )
        if not Path(decoder).is_file():
            near = nearest_checkpoint(Path(decoder))
            raise CheckpointError(
                f"No decoder checkpoint at {Path(decoder).resolve()} (for {space!r}). "
                + (
                    f"Did you mean {near}?"
                    if near is not None
                    else "Train one with `connectivity fit -c configs/decoder/...`, or leave it "
                    "out of `decoders`."
                )
            )
    # Loaded once here, so that a decoder of another layer or classifier fails before any work.
    load_decoders(experiment.decoders, own_classifier)
    dataset = data.dataset(experiment.pairs.split)
    probe_spaces(network, experiment.spaces, dataset)  # before the run folder, on two images
    settings, probe = _trainer_settings(trainer)
    device = str(probe.strategy.root_device)
    pairs = select_pairs(network.to(device), dataset, experiment.pairs, data.class_names, device)
    store = RunStore(Path(experiment.output_dir) / experiment.name)
    if probe.is_global_zero:
        store.start(manifest(experiment, data, pairs))
        if experiment.decoders:  # a rerun without decoders keeps those the run was made with
            store.save_decoders(experiment.decoders)
    if settings["logger"] in (None, True):  # no logger of the user's: the run's W&B run
        # Rank zero alone logs (Lightning's loggers do); other ranks get no W&B logger at all.
        ours = paths_logger(store, wandb or WandbOptions()) if probe.is_global_zero else None
        settings["logger"] = ours or False
    fit: L.Trainer | None = None
    for space in experiment.spaces:
        checkpoints = store.folder / "bands" / space
        module = SpacePathModule(
            network, space, pairs, dataset, experiment.path, store, checkpoints
        )
        callbacks = [
            *settings["callbacks"],
            RecordWriter(store),
            BandCheckpoint(checkpoints, experiment.checkpoint_every),
        ]
        if settings.get("enable_progress_bar", True) and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(BandProgressBar())
        fit = L.Trainer(**{**settings, "callbacks": callbacks})
        with warnings.catch_warnings():
            # Our frozen head and tail stay in eval mode on purpose.
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
            fit.fit(module)
    assert fit is not None
    fit.strategy.barrier()
    if not fit.is_global_zero:
        return None
    # A rerun without decoders draws with those the run was made with.
    decoders = experiment.decoders or store.decoders()
    write_report(
        store, decoders=decoders, wandb=wandb or WandbOptions(), figures=experiment.figures
    )
    return store
