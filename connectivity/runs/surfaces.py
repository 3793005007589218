"""Surfaces experiments: draw loops per class, decide their sides as path pairs, fill them.

For each space a run makes two Lightning fits: the loops' sides as path pairs (a
:class:`~connectivity.runs.paths.SpacePathModule` whose records go to ``<space>/sides``, with its
band checkpoints and resume), then the loops themselves (a :class:`SpaceSurfaceModule`, the
membranes of its rank's loops). Each loop's record is written the moment it is decided; a rerun
of the same config decides only the loops without a record (records are the truth: the search is
deterministic, so a loop killed mid-way is filled again from its flat fill with the same
result). With ``baseline: untrained``, each seed's untrained network then fills its own loops
(drawn by its own predictions) the same way, its records under ``untrained_seed<s>/<space>``
(:func:`fill_space`). Rank zero then writes the tables and figures
(:mod:`connectivity.reporting.surface_report`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from connectivity.checkpoints import file_digest
from connectivity.data import ImageDataModule, stack_images
from connectivity.engine.decisions import PairRecord
from connectivity.engine.options import SurfaceOptions
from connectivity.engine.planes import class_map, plane_grid, surface_domain_map
from connectivity.engine.split import INPUT, split
from connectivity.engine.surfaces import SurfaceRecord
from connectivity.errors import ConnectivityError, InputError
from connectivity.fill import PATH_VERDICTS, loop_from_sides, open_loop_record
from connectivity.lightning.progress import MembraneProgressBar
from connectivity.lightning.surface_module import SurfaceModule
from connectivity.reporting.drawing import check_figures, load_decoders
from connectivity.reporting.surface_report import write_surface_report
from connectivity.reporting.wandb_log import WandbOptions, paths_logger
from connectivity.runs.baselines import (
    BaselineFields,
    baseline_manifest,
    untrained_baselines,
    with_folder_baseline,
)
from connectivity.runs.loops import Loop, LoopSampling, loop_sides, select_loops
from connectivity.runs.networks import load_network, probe_spaces
from connectivity.runs.paths import (
    MANIFEST_ADDITIONS,
    SpacePathModule,
    check_decoders,
    data_manifest,
    options_in_space,
)
from connectivity.runs.trainer import (
    RecordWriter,
    check_checkpoint_every,
    check_trainer_arguments,
    fit_module,
    fit_pairs,
    trainer_settings,
)
from connectivity.store.records import untrained_key
from connectivity.store.surfaces import SurfaceStore, sides_key

# Grid points per axis of a loop's domain maps (its figure): 48 x 48 points of the surface.
DOMAIN_RESOLUTION = 48
# Places of the strip of images along a surface (vertices nearest to them, repeats dropped).
STRIP_POINTS = 7


@dataclass
class SurfaceExperiment(BaselineFields):
    """What a surfaces experiment asks.

    Args:
        classifier: Checkpoint of a ClassifierModule (``connectivity fit``).
        name: Run name; results go to ``<output_dir>/<name>``; rerunning the same config
            resumes it.
        spaces: ``input`` and layer names; the same loops are filled in every space.
        loops: Which loops to fill (``count`` per class, ``size`` 3 or 4, ``seed``).
        surface: Options of the sides' paths and of the membrane
            (:class:`~connectivity.engine.options.SurfaceOptions`); ``surface.bounds`` boxes
            the sides' bands in the input space only (``(0, 1)`` when not given).
        decoders: ``{layer: decoder checkpoint}`` to show latent surfaces as images.
        output_dir: Folder of all surfaces runs.
        checkpoint_every: Steps between the sides' band checkpoints.
        figures: Which loop figures the report draws: ``auto`` and ``all`` (every loop and
            space; surfaces runs are small) or ``none``; the trained network's loops only.
        baseline, baseline_seeds: See
            :class:`~connectivity.runs.baselines.BaselineFields`.
    """

    classifier: str
    name: str
    spaces: list[str] = field(default_factory=lambda: [INPUT])
    loops: LoopSampling = field(default_factory=LoopSampling)
    surface: SurfaceOptions = field(default_factory=SurfaceOptions)
    decoders: dict[str, str] = field(default_factory=dict)
    output_dir: str = "lightning_logs/surfaces"
    checkpoint_every: int = 20
    figures: str = "auto"

    def __post_init__(self) -> None:
        check_checkpoint_every(self.checkpoint_every)
        check_figures(self.figures)
        self.check_baseline_fields()
        repeated = sorted({s for s in self.spaces if self.spaces.count(s) > 1})
        if repeated:
            raise ConnectivityError(
                f"spaces names {repeated[0]!r} more than once; give each space once"
            )


def manifest(
    experiment: SurfaceExperiment,
    data: ImageDataModule,
    loops: list[Loop],
    baseline: dict[str, Any] | None = None,
) -> dict:
    """What makes two surfaces runs the same experiment (resume only continues the same one);
    with ``baseline`` (:func:`surfaces_baseline_manifest`), its entry too (a part a rerun may
    add or leave out: :data:`~connectivity.runs.paths.MANIFEST_ADDITIONS`)."""
    classifier = Path(experiment.classifier)
    extra = {"baseline": baseline} if baseline else {}
    return {
        **extra,
        "kind": "surfaces",
        "classifier": experiment.classifier,
        "classifier_sha256": file_digest(classifier) if classifier.is_file() else None,
        **data_manifest(data),
        "spaces": experiment.spaces,
        "loops": [asdict(loop) for loop in loops],
        "sampling": asdict(experiment.loops),
        "surface": asdict(experiment.surface),
    }


def surfaces_baseline_manifest(
    baselines: dict[int, tuple[nn.Module, list[Loop]]], from_checkpoint: bool
) -> dict[str, Any]:
    """The ``baseline`` entry of a surfaces run's ``run.json``: the paths runs' entry
    (:func:`~connectivity.runs.baselines.baseline_manifest`) with each seed's loops under
    ``loops``, as the run's own loops are named."""
    drawn = {seed: [asdict(loop) for loop in loops] for seed, (_, loops) in baselines.items()}
    return baseline_manifest(list(baselines), drawn, from_checkpoint, items="loops")


class SpaceSurfaceModule(SurfaceModule):
    """The loops of one space that one rank fills, as a :class:`SurfaceModule`: every
    ``world_size``-th loop from its rank on, minus loops already decided, built in ``setup``
    (which every launcher runs in every process) from rank zero's draw and the sides' records.

    Args:
        network: The classifier (logits of images in [0, 1]); split at ``space`` here.
        space: ``input`` or a layer name.
        loops: All loops of the experiment.
        dataset: The dataset the loops index.
        options: Surface options (:func:`~connectivity.runs.paths.options_in_space` applied).
        store: The run folder: loops with a record are not filled again.
        key: Where the records go (``<key>/loop_<id>.pt``, the sides' under
            ``sides_key(key)``) and the prefix of the metrics (default: ``space``; an
            untrained baseline's: :func:`~connectivity.store.records.untrained_key`).
    """

    def __init__(
        self,
        network: nn.Module,
        space: str,
        loops: list[Loop],
        dataset: Dataset,
        options: SurfaceOptions,
        store: SurfaceStore,
        key: str | None = None,
    ) -> None:
        _, tail = split(network, space)
        super().__init__(
            tail, options=options_in_space(options, space), space=space if key is None else key
        )
        self.point_space = space  # ``space`` is the records' key
        self.all_loops = loops
        self.dataset = dataset
        self.store = store
        self.filled: list[Loop] = []  # the loop of each row of the search
        self.reused: list[Loop] = []  # this rank's loops decided in an earlier run

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        rank, world = self.trainer.global_rank, self.trainer.world_size
        done = self.store.loops_done(self.space)
        strategy.barrier("loop records read")
        loops = strategy.broadcast(self.all_loops, src=0)
        self.reused = [loop for loop in loops[rank::world] if loop.id in done]
        polylines, corners, straight, targets, kept = [], [], [], [], []
        for loop in (loop for loop in loops[rank::world] if loop.id not in done):
            sides = self._sides(loop)
            if any(s.verdict not in PATH_VERDICTS for s in sides):
                # A side without a path: the loop is open, and its record says so at once.
                self.decided.append((loop, open_loop_record(loop.label, sides)))
                continue
            polyline, where, flat = loop_from_sides(sides)
            polylines.append(polyline)
            corners.append(where)
            straight.append(flat)
            targets.append(loop.label)
            kept.append(loop)
        self.filled = kept
        self.set_loops(
            polylines,
            corners,
            torch.tensor(targets, dtype=torch.long),
            torch.tensor(straight, dtype=torch.bool),
        )

    def _sides(self, loop: Loop) -> list[PairRecord]:
        k = len(loop.indices)
        fields = set(PairRecord.__dataclass_fields__)
        sides = []
        for i in range(k):
            saved = self.store.read_record(sides_key(self.space), loop.id * k + i)
            sides.append(PairRecord(**{name: v for name, v in saved.items() if name in fields}))
        return sides

    def _queue(self, row: int, record: SurfaceRecord) -> None:
        self.decided.append((self.filled[row], record))

    @torch.no_grad()
    def domain_maps(self, record: SurfaceRecord) -> dict[str, Tensor]:
        """The surface's parameter domain coloured by predicted class on the flat fill
        (``domain_before``) and on the final surface (``domain_after``), ``(H, W)`` int16
        (``-1`` outside the domain), kept with the record for its figure; none for an open
        loop (no surface)."""
        if record.triangles.shape[0] == 0:
            return {}
        device = self.device
        maps = {}
        for name, points in (("domain_before", record.flat), ("domain_after", record.points)):
            found = surface_domain_map(
                self.tail,
                points.to(device),
                record.triangles,
                record.uv,
                DOMAIN_RESOLUTION,
                chunk_size=self.options.chunk_size,
            )
            maps[name] = found.classes.to(torch.int16)
        return {**maps, **self._plane(record), **self._strip(record)}

    def _strip(self, record: SurfaceRecord) -> dict[str, Tensor]:
        """The vertices along a strip of the surface's domain (from input 0 through the
        centre to the opposite side, :data:`STRIP_POINTS` places) and the classes predicted
        there on the flat fill and on the surface, for the images along the surface."""
        uv = record.uv.double()
        start = uv[record.corners[0]]
        places = torch.linspace(0.0, 2.0, STRIP_POINTS, dtype=torch.float64).unsqueeze(1)
        wanted = start * (1 - places)  # input 0, the centre (0, 0), then beyond it
        vertices = torch.cdist(wanted, uv).argmin(dim=1)
        vertices = vertices[
            torch.cat([torch.ones(1, dtype=torch.bool), vertices[1:] != vertices[:-1]])
        ]
        found = {"strip": vertices}
        for name, points in (("strip_flat", record.flat), ("strip_surface", record.points)):
            classes, _ = class_map(self.tail, points[vertices].to(self.device))
            found[name] = classes.to(torch.int16)
        return found

    def _plane(self, record: SurfaceRecord) -> dict[str, Tensor]:
        """The plane through the loop's first three inputs coloured by predicted class
        (dbViz's picture, :func:`~connectivity.engine.planes.plane_grid`), for the loop's
        plane figure: ``plane_u``, ``plane_v``, ``plane_classes`` ``(H, W)`` int16 and
        ``plane_corners`` ``(3, 2)``; none where the three inputs lie on one line."""
        x0, x1, x2 = record.points[record.corners[:3]].to(self.device)
        try:
            points, u, v, plane = plane_grid(x0, x1, x2, DOMAIN_RESOLUTION, padding=0.25)
        except InputError:
            return {}
        classes, _ = class_map(self.tail, points, chunk_size=self.options.chunk_size)
        return {
            "plane_u": u,
            "plane_v": v,
            "plane_classes": classes.reshape(v.shape[0], u.shape[0]).to(torch.int16),
            "plane_corners": plane.corners,
        }

    def corner_images(self, loop: Loop) -> Tensor | None:
        """``(k, C, H, W)`` the loop's inputs, kept with its record in a latent space."""
        if self.point_space == INPUT:
            return None
        return stack_images(self.dataset, list(loop.indices))[0]


class LoopRecordWriter(RecordWriter):
    """Saves each loop's record the moment the module decides it (atomically, one file each),
    with its domain and plane maps; at the hooks of :class:`RecordWriter`."""

    def _flush(self, module: L.LightningModule) -> None:
        assert isinstance(module, SpaceSurfaceModule) and isinstance(self.store, SurfaceStore)
        for loop, record in module.decided:
            sides = [loop.id * len(loop.indices) + i for i in range(len(loop.indices))]
            payload = {**asdict(loop), "sides": sides}
            images = module.corner_images(loop)
            maps = module.domain_maps(record)
            self.store.save_loop(module.space, payload, record, images, maps)
        module.decided.clear()


def fit_loops(
    module: SpaceSurfaceModule, settings: dict[str, Any], store: SurfaceStore
) -> L.Trainer:
    """Fill a module's loops in one fit, each record saved the moment it is decided."""
    return fit_module(module, settings, [LoopRecordWriter(store)], MembraneProgressBar())


def fill_space(
    network: nn.Module,
    space: str,
    key: str,
    loops: list[Loop],
    dataset: Dataset,
    experiment: SurfaceExperiment,
    settings: dict[str, Any],
    store: SurfaceStore,
) -> L.Trainer:
    """Decide the loops' sides in ``space`` as path pairs, then fill the loops: two fits, the
    records under ``key`` (the sides' under ``sides_key(key)``, their band checkpoints in
    ``bands/<key>``)."""
    checkpoints = store.folder / "bands" / key
    sides = SpacePathModule(
        network,
        space,
        loop_sides(loops),
        dataset,
        experiment.surface,
        store,
        checkpoints,
        key=sides_key(key),
    )
    fit_pairs(sides, settings, store, checkpoints, experiment.checkpoint_every)
    surfaces = SpaceSurfaceModule(
        network, space, loops, dataset, experiment.surface, store, key=key
    )
    return fit_loops(surfaces, settings, store)


def run_surfaces(
    experiment: SurfaceExperiment,
    data: ImageDataModule,
    trainer: dict[str, Any] | None = None,
    wandb: WandbOptions | None = None,
    network: nn.Module | None = None,
) -> SurfaceStore | None:
    """Run (or resume) a surfaces experiment and write its report.

    Args:
        experiment: Classifier checkpoint, spaces, loops, surface options, run name.
        data: The datamodule the loops are drawn from.
        trainer: Keyword arguments of the Lightning ``Trainer`` (as for path runs).
        wandb: W&B settings of the run.
        network: A classifier module to use instead of loading ``experiment.classifier``
            (copied, never changed).

    Returns:
        The run's store on rank zero (None on other ranks).

    Raises:
        OptionsError, PairError, LayerError, NotPiecewiseLinearError, NotBoundedError: before
            any work or run folder (an untrained baseline's too: its network and loops are
            drawn first).
    """
    check_trainer_arguments(trainer)
    experiment = with_folder_baseline(experiment, Path(experiment.output_dir) / experiment.name)
    own_classifier = experiment.classifier if network is None else None
    given = network
    network = load_network(network if network is not None else experiment.classifier)
    for space in experiment.spaces:
        split(network, space)
    check_decoders(experiment.decoders, experiment.spaces)
    # Loaded once here, so that a decoder of another layer or classifier fails before any work.
    load_decoders(experiment.decoders, own_classifier)
    dataset = data.dataset(experiment.loops.split)
    probe_spaces(network, experiment.spaces, dataset, experiment.surface)
    settings, probe = trainer_settings(trainer)
    device = str(probe.strategy.root_device)
    loops = select_loops(network.to(device), dataset, experiment.loops, data.class_names, device)
    baselines = {}
    if experiment.baseline is not None:
        source = given if given is not None else experiment.classifier
        assert experiment.baseline_seeds is not None
        baselines = untrained_baselines(
            source,
            experiment.baseline_seeds,
            experiment.spaces,
            dataset,
            experiment.surface,
            device,
            lambda network: select_loops(
                network, dataset, experiment.loops, data.class_names, device, predicted=True
            ),
        )
    store = SurfaceStore(Path(experiment.output_dir) / experiment.name)
    if probe.is_global_zero:
        baseline = None
        if baselines:
            baseline = surfaces_baseline_manifest(baselines, from_checkpoint=given is None)
        store.start(manifest(experiment, data, loops, baseline), MANIFEST_ADDITIONS)
        if experiment.decoders:
            store.save_decoders(experiment.decoders)
    if settings["logger"] in (None, True):
        ours = paths_logger(store, wandb or WandbOptions()) if probe.is_global_zero else None
        settings["logger"] = ours or False
    fit = None
    for space in experiment.spaces:
        fit = fill_space(network, space, space, loops, dataset, experiment, settings, store)
    # After the trained network's loops, so that its results come first and stay the same.
    for seed, (untrained, drawn) in baselines.items():
        for space in experiment.spaces:
            key = untrained_key(seed, space)
            fit = fill_space(untrained, space, key, drawn, dataset, experiment, settings, store)
    assert fit is not None
    fit.strategy.barrier()
    if not fit.is_global_zero:
        return None
    write_surface_report(
        store,
        wandb=wandb or WandbOptions(),
        figures=experiment.figures,
        decoders=experiment.decoders,
    )
    return store


__all__ = [
    "SpaceSurfaceModule",
    "SurfaceExperiment",
    "fill_space",
    "run_surfaces",
]
