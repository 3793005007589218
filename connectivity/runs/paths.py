"""Path experiments: pick same-class pairs, decide them in every space, save each at once.

A run is driven by a Lightning Trainer: each rank takes its own share of the pairs (no
gradients are shared between ranks, see :mod:`connectivity.lightning.strategy`), decides them
in every space with all of its pairs batched together, and writes each pair's record the moment
it is decided (:func:`connectivity.runs.trainer.fit_pairs`). Rank zero then builds the table
and the figures from the saved records (:mod:`connectivity.reporting.report`). The pairs come
from :mod:`connectivity.runs.pairs`; a resumed band's state from
:mod:`connectivity.runs.takeover`.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from connectivity.api import encode_pairs
from connectivity.attacks import AdversarialOptions
from connectivity.checkpoints import CheckpointError, file_digest, nearest_checkpoint
from connectivity.data import ImageDataModule, stack_images
from connectivity.engine.options import PathOptions
from connectivity.engine.split import INPUT, Frozen, floating_dtype, split
from connectivity.errors import ConnectivityError
from connectivity.lightning.path_module import PathModule
from connectivity.reporting.drawing import check_figures, load_decoders
from connectivity.reporting.report import write_report
from connectivity.reporting.wandb_log import WandbOptions, paths_logger
from connectivity.runs.adversarial import (
    AdversarialEnds,
    adversarial_count,
    make_adversarial_ends,
    rank_zero_examples,
)
from connectivity.runs.baselines import (
    BaselineFields,
    baseline_manifest,
    untrained_baselines,
    with_folder_baseline,
)
from connectivity.runs.networks import load_network, probe_spaces
from connectivity.runs.pairs import PairSampling, select_pairs
from connectivity.runs.takeover import SavedState, take_over
from connectivity.runs.trainer import (
    check_checkpoint_every,
    check_trainer_arguments,
    fit_pairs,
    trainer_settings,
)
from connectivity.store.records import Pair, RunStore, untrained_key


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
        self.point_space = space  # ``space`` is the records' key
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
        if self.dataset is not None:  # and the adversarial ends the pairs index, if any
            self.dataset = rank_zero_examples(self.dataset, strategy.broadcast)
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
        if self.point_space == INPUT:
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


@dataclass
class Experiment(BaselineFields):
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
        baseline, baseline_seeds: See
            :class:`~connectivity.runs.baselines.BaselineFields`.
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
        check_checkpoint_every(self.checkpoint_every)
        check_figures(self.figures)
        self.check_baseline_fields()


# Parts of run.json a rerun may add or leave out without making the run another experiment.
MANIFEST_ADDITIONS = ("baseline",)


def data_manifest(data: ImageDataModule) -> dict[str, Any]:
    """The ``data`` and ``class_names`` entries of a run's manifest: the datamodule's class
    and its own settings (root, size, resize...), so records of two input spaces never mix."""
    return {
        "data": {
            "class": f"{type(data).__module__}.{type(data).__qualname__}",
            "init_args": data.data_config(),
        },
        "class_names": data.class_names,
    }


def manifest(
    experiment: Experiment,
    data: ImageDataModule,
    pairs: list[Pair],
    adversarial: AdversarialEnds | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What makes two runs the same experiment (resume only continues the same one).

    A run without adversarial pairs has no key of them (``pairs.adversarial``, a pair's
    ``adversarial``, ``adversarial_sources``), so folders written before them still resume;
    with them, the split indices the examples were made from (``adversarial_sources``). With
    ``baseline`` (:func:`~connectivity.runs.baselines.baseline_manifest`), its entry too (a part
    a rerun may add or leave out: :data:`MANIFEST_ADDITIONS`).
    """
    classifier = Path(experiment.classifier)
    sampling = asdict(experiment.pairs)
    if sampling["adversarial"] is None:
        del sampling["adversarial"]
    values = {
        "classifier": experiment.classifier,
        # The same path may later hold other weights; their results must not mix.
        "classifier_sha256": file_digest(classifier) if classifier.is_file() else None,
        **data_manifest(data),
        "spaces": experiment.spaces,
        "pairs": [p.manifest() for p in pairs],
        "sampling": sampling,
        "path": path_manifest(experiment.path),
    }
    if adversarial is not None:
        values["adversarial_sources"] = adversarial.sources.tolist()
    if baseline:
        values["baseline"] = baseline
    return values


# Path options that came after run folders were first written: left out of the manifest while
# they hold their defaults, so a folder written before them still counts as the same experiment
# (its remaining pairs are decided with today's blow-up test and nudge; climb_after and
# nudge_seed were fixed at their defaults before they were options).
_LATER_PATH_OPTIONS = (
    *("max_step", "max_energy_rise", "backoffs", "certify", "max_pivots", "nudge"),
    "max_splits",
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


def adversarial_ends(
    store: RunStore,
    experiment: Experiment,
    data: ImageDataModule,
    split: Dataset,
    pairs: list[Pair],
    network: nn.Module,
    device: str,
) -> tuple[AdversarialEnds, bool]:
    """The run's adversarial ends and whether they were made now: those ``adversarial.pt``
    holds when its folder's ``run.json`` is this experiment with them (a resumed run never
    remakes them), else made afresh (:func:`make_adversarial_ends`; saved by the caller).

    Args:
        store: The run folder (it may not exist yet).
        experiment: The experiment; ``experiment.pairs.adversarial`` is set.
        data: Its datamodule.
        split: The split the pairs come from (``data.dataset(experiment.pairs.split)``).
        pairs: The natural pairs drawn.
        network: The eval-mode classifier on ``device``.
        device: Where it runs.

    Raises:
        PairError, AttackError: see :func:`make_adversarial_ends`.
    """
    sampling = experiment.pairs
    options = sampling.adversarial
    assert isinstance(options, AdversarialOptions)
    saved = store.adversarial()
    try:
        ends = AdversarialEnds.from_state(saved) if saved is not None else None
    except KeyError:  # a file of another layout: made again
        ends = None
    if ends is not None:
        everything = pairs + ends.pairs(len(pairs), len(split))  # type: ignore[arg-type]
        if store.holds(manifest(experiment, data, everything, ends), MANIFEST_ADDITIONS):
            # A file edited or damaged since is never used unchecked.
            ends.check(network, split, options.budget, device)
            return ends, False
    # Another attack in a folder of results is refused before its attacks, not after them.
    store.refuse_other("sampling/adversarial", asdict(options), "pairs.adversarial")
    taken = {i for p in pairs for i in (p.start_index, p.end_index)}
    count = adversarial_count(sampling)
    return make_adversarial_ends(network, split, sampling, options, count, device, taken), True


def check_decoders(decoders: dict[str, str], spaces: list[str]) -> None:
    """Refuse a decoder of a space the run does not study, or a checkpoint that is missing.

    Raises:
        ConnectivityError: a decoder given for a space not in ``spaces``.
        CheckpointError: no file at a decoder's path (naming the nearest checkpoint, if any).
    """
    for space, decoder in decoders.items():
        if space not in spaces:
            raise ConnectivityError(
                f"a decoder is given for {space!r}, which is not among the spaces {spaces}"
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


def _baselines(
    experiment: Experiment,
    given: nn.Module | None,
    dataset: Dataset,
    class_names: list[str],
    device: str,
) -> dict[int, tuple[nn.Module, list[Pair]]]:
    """``{seed: (untrained network, its pairs)}`` of ``experiment.baseline`` (none without
    one), from the caller's module where it gave one, else from the classifier checkpoint."""
    if experiment.baseline is None:
        return {}
    assert experiment.baseline_seeds is not None
    return untrained_baselines(
        given if given is not None else experiment.classifier,
        experiment.baseline_seeds,
        experiment.spaces,
        dataset,
        experiment.path,
        device,
        lambda network: select_pairs(
            network, dataset, experiment.pairs, class_names, device, predicted=True
        ),
    )


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
        PairError: pairs that cannot be drawn, or too few successful attacks for the
            adversarial pairs (:func:`~connectivity.runs.adversarial.make_adversarial_ends`);
            before the run folder is made.
    """
    check_trainer_arguments(trainer)
    experiment = with_folder_baseline(experiment, Path(experiment.output_dir) / experiment.name)
    # The run works on its own eval-mode copy: the caller's module is never changed or moved.
    own_classifier = experiment.classifier if network is None else None
    given = network
    network = load_network(network if network is not None else experiment.classifier)
    for space in experiment.spaces:
        split(network, space)  # a wrong layer name fails here, before any work
    check_decoders(experiment.decoders, experiment.spaces)
    # Loaded once here, so that a decoder of another layer or classifier fails before any work.
    load_decoders(experiment.decoders, own_classifier)
    dataset = data.dataset(experiment.pairs.split)
    # Before the run folder, on two images; certify="exact" ("bounds") on a space whose tail is
    # not piecewise linear (holds an operation bounds do not cover) fails here too.
    probe_spaces(network, experiment.spaces, dataset, experiment.path)
    settings, probe = trainer_settings(trainer)
    device = str(probe.strategy.root_device)
    pairs = select_pairs(network.to(device), dataset, experiment.pairs, data.class_names, device)
    baselines = _baselines(experiment, given, dataset, data.class_names, device)
    store = RunStore(Path(experiment.output_dir) / experiment.name)
    ends = None
    if experiment.pairs.adversarial is not None:
        ends, made = adversarial_ends(store, experiment, data, dataset, pairs, network, device)
        pairs = pairs + ends.pairs(len(pairs), len(dataset))  # type: ignore[arg-type]
        dataset = ends.dataset(dataset)
    if probe.is_global_zero:
        baseline = None
        if baselines:
            drawn = {seed: [p.manifest() for p in b] for seed, (_, b) in baselines.items()}
            baseline = baseline_manifest(list(baselines), drawn, from_checkpoint=given is None)
        store.start(manifest(experiment, data, pairs, ends, baseline), MANIFEST_ADDITIONS)
        if ends is not None and made:
            store.save_adversarial(ends.state())
        if experiment.decoders:  # a rerun without decoders keeps those the run was made with
            store.save_decoders(experiment.decoders)
    if settings["logger"] in (None, True):  # no logger of the user's: the run's W&B run
        # Rank zero alone logs (Lightning's loggers do); other ranks get no W&B logger at all.
        ours = paths_logger(store, wandb or WandbOptions()) if probe.is_global_zero else None
        settings["logger"] = ours or False
    fit = None
    for space in experiment.spaces:
        checkpoints = store.folder / "bands" / space
        module = SpacePathModule(
            network, space, pairs, dataset, experiment.path, store, checkpoints
        )
        fit = fit_pairs(module, settings, store, checkpoints, experiment.checkpoint_every)
    for seed, (untrained, drawn) in baselines.items():
        for space in experiment.spaces:
            key = untrained_key(seed, space)
            checkpoints = store.folder / "bands" / key
            module = SpacePathModule(
                untrained, space, drawn, dataset, experiment.path, store, checkpoints, key=key
            )
            fit = fit_pairs(module, settings, store, checkpoints, experiment.checkpoint_every)
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
