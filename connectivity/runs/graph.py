"""``connectivity graph``: the connected components of whole classes, for one or more models.

For each classifier, space and class, the class's inputs are joined by the union-find search of
:mod:`connectivity.engine.graph` (:func:`~connectivity.engine.graph.search_components`, asked
for one round at a time: :func:`next_round`). Each round of every class of a space is decided
in one Lightning fit (:func:`~connectivity.runs.trainer.fit_pairs`) of :class:`RoundModule`, a
:class:`~connectivity.runs.paths.SpacePathModule` (so ``ddp_pairs`` shares the round's pairs
out across ranks, as ``paths`` shares its pairs), and every decided pair is written at once.

Run folder (``<output_dir>/<name>``):

* ``run.json``: what was asked (classifiers and their SHA-256, data, spaces, inputs, options);
* ``inputs/class_<c>.pt``: the dataset indices and images (uint8) of each class's inputs;
* ``records/model<k>/<space>/pair_<id>.pt``: one record per decided pair (ids in
  :meth:`GraphLayout.pair_id`); ``records/model<k>/misclassified-<space>/`` likewise for the
  pairs of misclassified inputs;
* ``rounds/model<k>/<space>/round_<r>.json``: the pairs of each round, written before the
  round is decided, so that a resumed run decides exactly the pairs the stopped one would have;
  ``misclassified.json`` (what each misclassified input was tried against, its distances);
  ``settled`` once no candidate is left;
* ``embeddings/model<k>/<space>/class_<c>.pt``: each class's points in the space reduced to
  2-D by PCA (for the figures);
* the report (:mod:`connectivity.reporting.graph_report`).

With ``baseline: untrained``, each seed's untrained network is one more model after the
classifiers (:class:`GraphModel`), its files under ``untrained_seed<s>`` in place of
``model<k>`` (``inputs/untrained_seed<s>/class_<c>.pt`` too: it joins inputs of its own
predictions), and ``run.json`` gets a ``baseline`` entry (:func:`baseline_entry`).

Resume: rerunning the same config replays the saved rounds, decides what is missing and goes
on; a folder holding another experiment is refused (:class:`~connectivity.store.records.RunStore`).
A rerun may add the baseline, or leave it out (nothing more of it is decided; the report keeps
what its records hold), without deciding the classifiers' pairs again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from connectivity.api import encode_pairs, pairwise_distances
from connectivity.checkpoints import CheckpointError, file_digest
from connectivity.data import ImageDataModule, stack_images
from connectivity.engine.graph import (
    ClassComponents,
    check_graph_options,
    components_of,
    is_connected,
    search_components,
)
from connectivity.engine.graph import Pair as ClassPair
from connectivity.engine.options import PathOptions
from connectivity.engine.split import split
from connectivity.errors import ConnectivityError
from connectivity.reporting.graph_report import write_graph_report
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.baselines import (
    BaselineFields,
    baseline_manifest,
    untrained_baselines,
    with_folder_baseline,
)
from connectivity.runs.inputs import ClassInputs, ClassSelection, select_inputs
from connectivity.runs.networks import load_network, probe_spaces
from connectivity.runs.paths import (
    MANIFEST_ADDITIONS,
    SpacePathModule,
    data_manifest,
    path_manifest,
)
from connectivity.runs.trainer import (
    check_checkpoint_every,
    check_trainer_arguments,
    fit_pairs,
    trainer_settings,
)
from connectivity.store.graph import (
    MISCLASSIFIED,
    GraphLayout,
    GraphStore,
    Model,
    untrained_scope,
)
from connectivity.store.records import Pair as DatasetPair
from connectivity.store.records import RunStore


@dataclass
class GraphExperiment(BaselineFields):
    """What a graph experiment asks (everything except the data object).

    Args:
        classifiers: Checkpoints of ClassifierModules (``connectivity fit``); with several, the
            same inputs go through each and the report sets their components side by side.
        name: Run name; results go to ``<output_dir>/<name>``, and rerunning resumes.
        spaces: ``input`` and layer names.
        inputs: Which inputs of which classes.
        path: Path options (``bounds`` boxes the input space only, as in ``paths``).
        round_size: Most pairs per class in one round (None: no limit; bounds band memory).
        max_tries: Most failed pairs between two components before they are left apart
            (None: every candidate may be tried: the components are those of all pairs).
        output_dir: Folder of all graph runs.
        checkpoint_every: Steps between band checkpoints (a killed round continues mid-band).
        baseline, baseline_seeds: See
            :class:`~connectivity.runs.baselines.BaselineFields`.
    """

    classifiers: list[str]
    name: str
    spaces: list[str] = field(default_factory=lambda: ["input"])
    inputs: ClassInputs = field(default_factory=ClassInputs)
    path: PathOptions = field(default_factory=PathOptions)
    round_size: int | None = None
    max_tries: int | None = None
    output_dir: str = "lightning_logs/graph"
    checkpoint_every: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.classifiers, str):
            self.classifiers = [self.classifiers]
        if not self.classifiers:
            raise ConnectivityError("classifiers is empty; give at least one checkpoint")
        if not self.spaces:
            raise ConnectivityError("spaces is empty; give input and/or layer names")
        check_graph_options(self.round_size, self.max_tries)
        check_checkpoint_every(self.checkpoint_every)
        self.check_baseline_fields()


def manifest(
    experiment: GraphExperiment,
    data: ImageDataModule,
    selections: list[ClassSelection],
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What makes two graph runs the same experiment (resume only continues the same one);
    with ``baseline`` (:func:`baseline_entry`), its entry too (a part a rerun may add or leave
    out: :data:`~connectivity.runs.paths.MANIFEST_ADDITIONS`)."""
    extra = {"baseline": baseline} if baseline else {}
    return {
        **extra,
        "kind": "graph",
        "classifiers": experiment.classifiers,
        "classifier_sha256": [
            file_digest(Path(c)) if Path(c).is_file() else None for c in experiment.classifiers
        ],
        **data_manifest(data),
        "spaces": experiment.spaces,
        "inputs": [asdict(s) for s in selections],
        "sampling": asdict(experiment.inputs),
        "path": path_manifest(experiment.path),
        "round_size": experiment.round_size,
        "max_tries": experiment.max_tries,
    }


def _as_entries(selections: list[ClassSelection]) -> list[dict[str, Any]]:
    return [{"label": s.label, "indices": s.indices} for s in selections]


def baseline_entry(
    experiment: GraphExperiment,
    drawn: dict[int, list[ClassSelection]],
    from_checkpoint: bool,
) -> dict[str, Any]:
    """The ``baseline`` entry of a graph run's ``run.json``: a paths run's
    (:func:`~connectivity.runs.baselines.baseline_manifest`) with, per seed, the ``inputs``
    (label and dataset indices) of each class its network has a graph of in place of pairs,
    the classes it puts fewer than 2 inputs in (``skipped``, with those inputs), and the
    classifier whose ``architecture`` the networks have.

    Args:
        experiment: The experiment (its first classifier names the architecture).
        drawn: ``{seed: every studied class's selection}`` (:func:`select_inputs` with
            ``predicted``), short ones included.
        from_checkpoint: The networks were built from a checkpoint (not a module's reset).
    """
    usable = {seed: [s for s in chosen if len(s.indices) >= 2] for seed, chosen in drawn.items()}
    kept = {seed: _as_entries(chosen) for seed, chosen in usable.items()}
    entry = baseline_manifest(list(drawn), kept, from_checkpoint, items="inputs")
    entry["skipped"] = {
        str(seed): _as_entries([s for s in chosen if len(s.indices) < 2])
        for seed, chosen in drawn.items()
    }
    entry["architecture"] = experiment.classifiers[0]
    return entry


@dataclass
class GraphModel:
    """One model of a graph run, as its rounds are decided.

    Args:
        key: Where its files go (:data:`~connectivity.store.graph.Model`): ``k`` for the
            trained classifier ``k``, :func:`~connectivity.store.graph.untrained_scope` for
            an untrained baseline network.
        name: How messages name it (``model <k>``, ``untrained seed <s>``).
        network: The network (eval mode, on the run's device).
        selections: The inputs of each class it has a graph of (those of every trained model
            are the same; an untrained network's are its own).
        slot: Its place in each selection's ``misclassified`` lists (None: it tries none).
    """

    key: Model
    name: str
    network: nn.Module
    selections: list[ClassSelection]
    slot: int | None


@torch.no_grad()
def _encode(head: nn.Module, tail: nn.Module, images: Tensor, label: int) -> Tensor:
    targets = torch.full((images.shape[0],), label, dtype=torch.long, device=images.device)
    z, _ = encode_pairs(head, tail, images, images[:1], targets)
    return z


def _embedding(points: Tensor) -> Tensor:
    """``(N, 2)``: the points' coordinates on their first two principal components."""
    flat = points.detach().flatten(1).double().cpu()
    centred = flat - flat.mean(dim=0, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    coords = u[:, :2] * s[:2]
    if coords.shape[1] < 2:
        coords = torch.cat([coords, coords.new_zeros(len(coords), 2 - coords.shape[1])], dim=1)
    return coords.float()


class RoundModule(SpacePathModule):
    """The pairs of one round, decided as :class:`SpacePathModule` decides a space's pairs
    (each rank its share, records and band checkpoints the same), with their ends taken from
    points already in the space instead of encoding the images again.

    Args:
        tail: The classifier's tail at ``space`` (a frozen copy is kept).
        space: The space (its path options: :func:`options_in_space`).
        key: Where the records go (``<space>`` or ``misclassified-<space>``).
        pairs: The round's pairs.
        ends: ``{pair id: (start point, end point)}`` in the space.
        options: Path options.
        store: The model's records.
        checkpoints: The folder of this round's band checkpoints.
    """

    def __init__(
        self,
        tail: nn.Module,
        space: str,
        key: str,
        pairs: list[DatasetPair],
        ends: dict[int, tuple[Tensor, Tensor]],
        options: PathOptions,
        store: RunStore,
        checkpoints: Path,
    ) -> None:
        super().__init__(None, space, pairs, None, options, store, checkpoints, tail=tail, key=key)
        self.ends = ends

    def end_images(self, pair: DatasetPair) -> None:
        return None  # graph figures place the inputs themselves; a record needs no copy

    def encode_rows(self, targets: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        starts = torch.stack([self.ends[p.id][0] for p in self.rows])
        ends = torch.stack([self.ends[p.id][1] for p in self.rows])
        return starts.to(device), ends.to(device)


class _NextRound(Exception):  # noqa: N818 (a signal to the caller, not an error)
    """Stops a class's search at its next round, so that the rounds of every class are
    decided together, in one fit."""

    def __init__(self, pairs: list[ClassPair]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _stop_at_round(pairs: list[ClassPair]) -> list[bool]:
    raise _NextRound(pairs)


def next_round(
    distances: Sequence[Sequence[float]],
    outcomes: dict[ClassPair, bool],
    round_size: int | None,
    max_tries: int | None,
) -> list[ClassPair] | ClassComponents[bool]:
    """One class's next round: :func:`~connectivity.engine.graph.search_components` from the
    pairs decided so far, stopped where it asks for its next round; its components once it is
    settled. The next round depends only on which pairs were decided and how, so a search
    resumed from them asks what the uninterrupted one would have.

    Args:
        distances: ``(N, N)`` distances between the class's inputs in the space.
        outcomes: ``{(i, j): connected}`` of the pairs decided so far (``i < j``).
        round_size, max_tries: As in :class:`GraphExperiment`.

    Returns:
        The pairs ``(i, j)`` of the next round, nearest first, or the components.
    """
    try:
        return search_components(
            distances,
            _stop_at_round,
            connected=bool,
            known=outcomes,
            round_size=round_size,
            max_tries=max_tries,
        )
    except _NextRound as asked:
        return asked.pairs


@contextlib.contextmanager
def _lightning_info_hidden() -> Iterator[None]:
    # One fit per round: Lightning's per-fit info lines (devices found, max_epochs reached)
    # would bury the one line per round the driver prints.
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lightning_info.level
    lightning_info.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lightning_info.setLevel(level)


class _Driver:
    """One model's rounds in one space, shared by every rank (each computes the same rounds
    from the same saved records; rank zero writes the round files)."""

    def __init__(
        self,
        experiment: GraphExperiment,
        model: GraphModel,
        space: str,
        dataset: Dataset,
        store: GraphStore,
        settings: dict[str, Any],
        is_zero: bool,
        device: str,
    ) -> None:
        self.experiment, self.model, self.space = experiment, model, space
        self.network, self.k, self.selections = model.network, model.key, model.selections
        self.dataset, self.store = dataset, store
        self.settings, self.is_zero, self.device = settings, is_zero, device
        self.scoped = store.model(model.key)
        self.layout = GraphLayout(tuple(len(s.indices) for s in model.selections))

    def _fit(
        self, pairs: list[DatasetPair], key: str, ends: dict[int, tuple[Tensor, Tensor]]
    ) -> None:
        checkpoints = self.store.bands_dir(self.k, key)
        path = self.experiment.path
        module = RoundModule(
            self.tail, self.space, key, pairs, ends, path, self.scoped, checkpoints
        )
        with _lightning_info_hidden():
            fit = fit_pairs(
                module, self.settings, self.scoped, checkpoints, self.experiment.checkpoint_every
            )
        fit.strategy.barrier()

    def _outcomes(self, space_key: str, ids: set[int]) -> dict[int, bool]:
        """Whether each decided pair of ``ids`` is connected; pairs without a readable record
        are left out (a damaged record is moved aside and decided again by the next fit)."""
        out = {}
        for pair_id in ids:
            try:
                record = self.scoped.read_record(space_key, pair_id)
            except Exception:  # absent, or damaged (pickle, zip...): the next fit decides it
                continue
            out[pair_id] = is_connected(record)
        return out

    def _decide_round(
        self,
        number: int,
        planned: list[tuple[int, int, int]],
        points: list[Tensor],
        outcomes: list[dict[ClassPair, bool]],
    ) -> None:
        """Decide the ``(class, i, j)`` pairs of one round that have no record yet, in one
        fit, and add every outcome of the round to ``outcomes`` (one dict per class)."""
        ids = {self.layout.pair_id(k, (i, j)): (k, i, j) for k, i, j in planned}
        decided = self._outcomes(self.space, set(ids))
        if set(ids) - set(decided):
            pairs = [
                DatasetPair(
                    pair_id,
                    self.selections[k].indices[i],
                    self.selections[k].indices[j],
                    self.selections[k].label,
                )
                for pair_id, (k, i, j) in sorted(ids.items())
            ]
            ends = {pair_id: (points[k][i], points[k][j]) for pair_id, (k, i, j) in ids.items()}
            self._fit(pairs, self.space, ends)
            decided = self._outcomes(self.space, set(ids))
        missing = set(ids) - set(decided)
        if missing:
            raise ConnectivityError(
                f"round {number} of {self.model.name} in {self.space!r} ended with "
                f"{len(missing)} pairs undecided; rerun the same config to decide them"
            )
        for pair_id, (k, i, j) in ids.items():
            outcomes[k].setdefault((i, j), decided[pair_id])
        if self.is_zero:
            joined = sum(decided.values())
            sizes = " | ".join(
                str(len(components_of(len(s.indices), o, bool).components))
                for s, o in zip(self.selections, outcomes, strict=True)
            )
            print(
                f"{self.model.name}, {self.space}: round {number}: {len(ids)} pairs, {joined} "
                f"connected; components per class: {sizes}",
                flush=True,
            )

    def run(self) -> None:
        head, tail = split(self.network, self.space)
        head, tail = head.to(self.device), tail.to(self.device)
        self.tail = tail
        points = []
        for s in self.selections:
            images, _ = stack_images(self.dataset, s.indices)
            points.append(_encode(head, tail, images.to(self.device), s.label).cpu())
        if self.is_zero:
            for s, z in zip(self.selections, points, strict=True):
                file = self.store.embedding_path(self.k, self.space, s.label)
                if not file.is_file():
                    value = {"coords": _embedding(z), "indices": s.indices}
                    self.store.save_embedding(self.k, self.space, s.label, value)
        components = self._search(points)
        if self.experiment.inputs.include_misclassified and self.model.slot is not None:
            self._misclassified(head, tail, points, components)
        if self.is_zero:
            self.store.mark_settled(self.k, self.space)

    def _search(self, points: list[Tensor]) -> list[list[list[int]]]:
        """Decide rounds until every class's search is settled, the rounds an earlier run
        saved first, as they were planned; the components of each class."""
        outcomes: list[dict[ClassPair, bool]] = [{} for _ in self.selections]
        distances = [pairwise_distances(z) for z in points]
        number = 0
        while True:
            planned = self.store.round_plan(self.k, self.space, number)
            if planned is None:
                asked = [
                    next_round(d, o, self.experiment.round_size, self.experiment.max_tries)
                    for d, o in zip(distances, outcomes, strict=True)
                ]
                settled = [a for a in asked if isinstance(a, ClassComponents)]
                if len(settled) == len(asked):
                    return [a.components for a in settled]
                planned = [
                    (k, i, j) for k, a in enumerate(asked) if isinstance(a, list) for i, j in a
                ]
                if self.is_zero:
                    self.store.save_round_plan(self.k, self.space, number, planned)
            self._decide_round(number, planned, points, outcomes)
            number += 1

    def _misclassified(
        self,
        head: nn.Module,
        tail: nn.Module,
        points: list[Tensor],
        components: list[list[list[int]]],
    ) -> None:
        """Try each misclassified input against the nearest member of every component of the
        class it is predicted as; keep its distances to the nearest input of both classes."""
        by_label = {s.label: k for k, s in enumerate(self.selections)}
        rows: list[dict[str, Any]] = []
        pairs: list[DatasetPair] = []
        ends: dict[int, tuple[Tensor, Tensor]] = {}
        slot = self.model.slot
        assert slot is not None  # only models with misclassified inputs get here
        for k, selection in enumerate(self.selections):
            for index, predicted in selection.misclassified[slot]:
                image, _ = stack_images(self.dataset, [index])
                z = _encode(head, tail, image.to(self.device), predicted).cpu()
                own = torch.cdist(z.flatten(1).double(), points[k].flatten(1).double())[0]
                row: dict[str, Any] = {
                    "index": index,
                    "label": selection.label,
                    "predicted": predicted,
                    "nearest_own_distance": float(own.min()),
                    "nearest_own_index": selection.indices[int(own.argmin())],
                    "tries": [],
                }
                other = by_label.get(predicted)
                if other is not None:
                    distance = torch.cdist(
                        z.flatten(1).double(), points[other].flatten(1).double()
                    )[0]
                    row["nearest_predicted_distance"] = float(distance.min())
                    for c, members in enumerate(components[other]):
                        nearest = min(members, key=lambda i: float(distance[i]))
                        pair_id = len(pairs)
                        end = self.selections[other].indices[nearest]
                        pairs.append(DatasetPair(pair_id, index, end, predicted))
                        ends[pair_id] = (z[0], points[other][nearest])
                        row["tries"].append({"component": c, "member": nearest, "pair": pair_id})
                rows.append(row)
        key = f"{MISCLASSIFIED}-{self.space}"
        if set(ends) - set(self._outcomes(key, set(ends))):
            self._fit(pairs, key, ends)
        if self.is_zero:
            self.store.save_misclassified(self.k, self.space, rows)


def load_networks(experiment: GraphExperiment, networks: list[nn.Module] | None) -> list[nn.Module]:
    """The run's own eval-mode copy of each classifier (``networks``, or those of
    ``experiment.classifiers``), every space checked to be a layer of each.

    Raises:
        CheckpointError: a classifier checkpoint that does not exist.
        ConnectivityError: not one network per classifier.
        LayerError: a space that is not a layer of a classifier.
    """
    if networks is None:
        for path in experiment.classifiers:
            if not Path(path).is_file():
                raise CheckpointError(
                    f"No classifier checkpoint at {Path(path).resolve()}. Train one with "
                    "`connectivity fit -c configs/classifier/quick.yaml` and copy its best "
                    "checkpoint there, or fix `classifiers`."
                )
    given = networks if networks is not None else experiment.classifiers
    if len(given) != len(experiment.classifiers):
        raise ConnectivityError(
            f"{len(given)} networks for {len(experiment.classifiers)} classifiers; give one each"
        )
    loaded = [load_network(n) for n in given]
    for network in loaded:
        for space in experiment.spaces:
            split(network, space)  # a wrong layer name fails here, before any work
    return loaded


def save_inputs(
    store: GraphStore, selections: list[ClassSelection], dataset: Dataset, k: Model = 0
) -> None:
    """Write each class's inputs (dataset indices, uint8 images) of model ``k`` (every trained
    model: the same) for the report, once."""
    for s in selections:
        if not store.inputs_path(s.label, k).is_file():
            images, _ = stack_images(dataset, s.indices)
            thumbnails = (images.clamp(0, 1) * 255).round().to(torch.uint8)
            store.save_inputs(s.label, {"indices": s.indices, "images": thumbnails}, k)


def untrained_models(
    experiment: GraphExperiment,
    networks: list[nn.Module] | None,
    dataset: Dataset,
    class_names: list[str],
    device: str,
) -> tuple[list[GraphModel], dict[str, Any] | None]:
    """The untrained baseline networks the experiment asks for (none without ``baseline``),
    each of the first classifier's architecture (a module of ``networks`` is reset, a
    checkpoint rebuilt) with its spaces checked and its inputs drawn by its own predictions
    (:func:`~connectivity.runs.baselines.untrained_baselines`); and their ``run.json`` entry
    (:func:`baseline_entry`).

    Raises:
        As :func:`~connectivity.runs.baselines.untrained_baselines` and :func:`select_inputs`.
    """
    if experiment.baseline is None:
        return [], None
    source = networks[0] if networks is not None else experiment.classifiers[0]
    assert experiment.baseline_seeds is not None
    baselines = untrained_baselines(
        source,
        experiment.baseline_seeds,
        experiment.spaces,
        dataset,
        experiment.path,
        device,
        lambda network: select_inputs(
            [network], dataset, experiment.inputs, class_names, device, predicted=True
        ),
    )
    models = [
        GraphModel(
            untrained_scope(seed),
            f"untrained seed {seed}",
            network,
            [s for s in drawn if len(s.indices) >= 2],
            None,
        )
        for seed, (network, drawn) in baselines.items()
    ]
    drawn = {seed: chosen for seed, (_, chosen) in baselines.items()}
    return models, baseline_entry(experiment, drawn, from_checkpoint=networks is None)


def other_architectures(classifiers: list[str], networks: list[nn.Module]) -> list[str]:
    """The classifiers whose networks are not of the first one's architecture (other parameter
    and buffer names or shapes): the untrained baseline, of the first's, says nothing of them.
    """

    def shapes(network: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, tuple(v.shape)) for name, v in network.state_dict().items()]

    first = shapes(networks[0])
    return [c for c, n in zip(classifiers, networks, strict=True) if shapes(n) != first]


def run_graph(
    experiment: GraphExperiment,
    data: ImageDataModule,
    trainer: dict[str, Any] | None = None,
    wandb: WandbOptions | None = None,
    networks: list[nn.Module] | None = None,
) -> GraphStore | None:
    """Run (or resume) a graph experiment and write its report.

    Args:
        experiment: Classifiers, spaces, inputs, path and search options, run name.
        data: The datamodule the inputs are drawn from.
        trainer: Keyword arguments of the Lightning ``Trainer`` (accelerator, devices,
            ``strategy: ddp_pairs``...); each round is one fit. No logger unless given one
            (per-step band metrics of many short fits are not worth a W&B history).
        wandb: W&B settings of the report.
        networks: Classifier modules to use instead of loading ``experiment.classifiers``
            (copied, never changed).

    Returns:
        The run's store on rank zero (None on other ranks).

    Raises:
        CheckpointError: a classifier checkpoint that does not exist.
        LayerError: a space that is not a layer of a classifier.
        PairError: see :func:`select_inputs` and :class:`ClassInputs`.
        RunFolderError: the run folder holds another experiment (other baseline seeds, too).
        OptionsError: a Trainer argument the experiment owns (``--trainer.max_steps``...).
        ConnectivityError: a baseline of a module with parameters no ``reset_parameters``
            draws again (:func:`~connectivity.runs.baselines.untrained_network`).
    """
    check_trainer_arguments(trainer)
    experiment = with_folder_baseline(experiment, Path(experiment.output_dir) / experiment.name)
    loaded = load_networks(experiment, networks)
    settings, probe = trainer_settings(trainer)
    if settings["logger"] in (None, True):
        settings["logger"] = False
    settings.setdefault("enable_progress_bar", False)
    device = str(probe.strategy.root_device)
    loaded = [n.to(device) for n in loaded]
    dataset = data.dataset(experiment.inputs.split)
    for network in loaded:  # before the run folder, on two images
        probe_spaces(network, experiment.spaces, dataset, experiment.path)
    selections = select_inputs(loaded, dataset, experiment.inputs, data.class_names, device)
    models = [GraphModel(k, f"model {k}", n, selections, k) for k, n in enumerate(loaded)]
    others = other_architectures(experiment.classifiers, loaded) if experiment.baseline else []
    if others and probe.is_global_zero:
        print(
            f"baseline: the untrained networks have the architecture of "
            f"{experiment.classifiers[0]}, not that of {', '.join(others)}; give those a graph "
            "run of their own for their baseline",
            flush=True,
        )
    untrained, baseline = untrained_models(experiment, networks, dataset, data.class_names, device)
    store = GraphStore(Path(experiment.output_dir) / experiment.name)
    if probe.is_global_zero:
        store.start(manifest(experiment, data, selections, baseline), MANIFEST_ADDITIONS)
        save_inputs(store, selections, dataset)
        for model in untrained:
            save_inputs(store, model.selections, dataset, model.key)
    for model in [*models, *untrained]:
        for space in experiment.spaces:
            _Driver(
                experiment, model, space, dataset, store, settings, probe.is_global_zero, device
            ).run()
    if not probe.is_global_zero:
        return None
    write_graph_report(store, wandb=wandb or WandbOptions())
    return store
