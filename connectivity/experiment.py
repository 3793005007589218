"""Path experiments: pick same-class pairs, decide them in every space, save each at once.

A run is driven by a Lightning Trainer in predict mode: each rank takes its own share of the
pairs (no gradients are shared between ranks), decides them in every space with all of its
pairs batched together, and writes each pair's record the moment it is decided. Rank zero then
builds the table and the figures from the saved records (:mod:`connectivity.report`).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from connectivity.api import connect_in_layer
from connectivity.checkpoints import CheckpointError, file_digest
from connectivity.classifier import ClassifierModule
from connectivity.data import SPLITS, ImageDataModule, stack_images
from connectivity.errors import ConnectivityError
from connectivity.records import Pair, RunStore
from connectivity.report import WandbOptions, write_report
from connectivity.split import INPUT, split
from connectivity.verdicts import PathOptions


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

    Raises:
        PairError: At construction, for a ``count`` that is not a whole number >= 1, a
            ``split`` other than train/val/test, or ``indices`` that are not a non-empty list
            of integer ``[i, j]`` pairs.
    """

    count: int = 25
    seed: int = 0
    split: str = "test"
    correctly_classified: bool = True
    indices: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        # Checked here, at construction, so a bad value fails before any work or run folder.
        if not _is_int(self.count) or self.count < 1:
            raise PairError(
                f"pairs.count must be a whole number >= 1, got {self.count!r}; set how many "
                "pairs to draw"
            )
        if self.split not in SPLITS:
            raise PairError(f"pairs.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.indices is None:
            return
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
    if sampling.correctly_classified:
        network = working_copy(network).to(device)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(sampling.seed)).tolist()
    waiting: dict[int, int] = {}
    pairs = []
    chunk = 256
    for first in range(0, size, chunk):
        indices = order[first : first + chunk]
        labels = [int(dataset[i][1]) for i in indices]
        keep = [True] * len(indices)
        if sampling.correctly_classified:
            keep = (_predict(network, dataset, indices, device) == torch.tensor(labels)).tolist()
        for index, label, ok in zip(indices, labels, keep, strict=True):
            if not ok:
                continue
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


class PathExperiment(L.LightningModule):
    """Predict-mode module: each rank decides its share of the pairs in every space.

    Args:
        network: The classifier (logits of images in [0, 1]).
        pairs: All pairs of the experiment (rank zero's draw is shared with every rank).
        dataset: The dataset the pairs index.
        spaces: ``input`` and/or layer names.
        options: Path options; each space gets :func:`options_in_space`.
        store: Where each decided pair is saved.
    """

    def __init__(
        self,
        network: nn.Module,
        pairs: list[Pair],
        dataset: Dataset,
        spaces: list[str],
        options: PathOptions,
        store: RunStore,
    ) -> None:
        super().__init__()
        self.network = network
        self.pairs = pairs
        self.dataset = dataset
        self.images: dict[int, Tensor] = {}
        self.spaces = spaces
        self.options = options
        self.store = store

    def setup(self, stage: str) -> None:
        # Each process drew the pairs itself; a borderline prediction could differ between
        # devices, so every rank takes rank zero's draw (the one run.json records).
        self.pairs = self.trainer.strategy.broadcast(self.pairs, src=0)
        used = sorted({p.start_index for p in self.pairs} | {p.end_index for p in self.pairs})
        self.images = dict(zip(used, stack_images(self.dataset, used)[0], strict=True))

    def predict_dataloader(self) -> DataLoader:
        # One batch per rank: all of that rank's pairs are optimised together.
        rank, world = self.trainer.global_rank, self.trainer.world_size
        share = [pair.id for pair in self.pairs[rank::world]]
        return DataLoader([share], batch_size=None)

    def predict_step(self, batch: list[int], batch_idx: int) -> None:
        by_id = {pair.id: pair for pair in self.pairs}
        for space in self.spaces:
            done = self.store.done(space)
            pending = [by_id[k] for k in batch if k not in done]
            if pending:
                self._decide(space, pending)

    def _decide(self, space: str, pending: list[Pair]) -> None:
        starts = torch.stack([self.images[p.start_index] for p in pending]).to(self.device)
        ends = torch.stack([self.images[p.end_index] for p in pending]).to(self.device)
        targets = torch.tensor([p.label for p in pending], device=self.device)
        options = options_in_space(self.options, space)
        bar = tqdm(
            total=options.steps,
            desc=f"{space} (rank {self.trainer.global_rank})",
            disable=not self.trainer.is_global_zero,
            leave=True,
            dynamic_ncols=True,
        )

        def progress(step: int, decided: int) -> None:
            bar.n = step
            bar.set_postfix_str(f"decided {decided}/{len(pending)}")

        with torch.inference_mode(False), torch.enable_grad():
            connect_in_layer(
                self.network,
                space,
                starts,
                ends,
                targets,
                options,
                on_record=lambda i, record: self.store.save(space, pending[i], record),
                on_progress=progress,
            )
        bar.close()


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
    """

    classifier: str
    name: str
    spaces: list[str] = field(default_factory=lambda: [INPUT])
    pairs: PairSampling = field(default_factory=PairSampling)
    path: PathOptions = field(default_factory=PathOptions)
    decoders: dict[str, str] = field(default_factory=dict)
    output_dir: str = "lightning_logs/paths"


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
        "path": asdict(experiment.path),
    }


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
            num_nodes, precision...); logging and progress settings are the experiment's own.
        wandb: W&B settings for the report.
        network: A classifier module to use instead of loading ``experiment.classifier``;
            the run works on a copy of it in eval mode and leaves it as it is.

    Returns:
        The run's store on rank zero (None on other ranks).
    """
    # The run works on its own eval-mode copy: the caller's module is never changed or moved.
    network = load_network(network if network is not None else experiment.classifier)
    for space in experiment.spaces:
        split(network, space)  # a wrong layer name fails here, before any work
    for space, decoder in experiment.decoders.items():
        if space not in experiment.spaces:
            raise ConnectivityError(
                f"a decoder is given for {space!r}, which is not among the spaces "
                f"{experiment.spaces}"
            )
        if not Path(decoder).is_file():
            raise CheckpointError(
                f"No decoder checkpoint at {Path(decoder).resolve()} (for {space!r}). Train one "
                f"with `connectivity fit -c configs/decoder/...`, or leave it out of `decoders`."
            )
    dataset = data.dataset(experiment.pairs.split)
    trainer = L.Trainer(
        **{
            "accelerator": "auto",
            "devices": "auto",
            "strategy": "auto",
            "num_nodes": 1,
            **(trainer or {}),
        },
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        use_distributed_sampler=False,
    )
    device = str(trainer.strategy.root_device)
    network = network.to(device)
    pairs = select_pairs(network, dataset, experiment.pairs, data.class_names, device)
    store = RunStore(Path(experiment.output_dir) / experiment.name)
    if trainer.is_global_zero:
        store.start(manifest(experiment, data, pairs))
        store.save_decoders(experiment.decoders)
    # No barrier needed here: ranks first meet when predict sets up the process group.
    module = PathExperiment(network, pairs, dataset, experiment.spaces, experiment.path, store)
    with warnings.catch_warnings():
        # predict_step saves records instead of returning them, on purpose.
        warnings.filterwarnings("ignore", message="predict returned None")
        trainer.predict(module, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    write_report(store, decoders=experiment.decoders, wandb=wandb or WandbOptions())
    return store
