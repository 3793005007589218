"""The path experiment's commands (``paths``, ``graph``, ``surfaces``, ``report``).

Shared by the ``connectivity`` command (:mod:`connectivity.cli`) and the quickstart
(:mod:`connectivity.cli.quickstart`), so that neither imports the other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from connectivity.data import ImageDataModule
from connectivity.lightning.output import quiet_library_output
from connectivity.reporting.drawing import FIGURES_HELP, check_figures
from connectivity.reporting.graph_report import write_graph_report
from connectivity.reporting.report import write_report
from connectivity.reporting.surface_report import write_surface_report
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.graph import GraphExperiment, run_graph
from connectivity.runs.paths import Experiment, run_paths
from connectivity.runs.surfaces import SurfaceExperiment, run_surfaces
from connectivity.store.graph import GraphStore
from connectivity.store.records import RunStore
from connectivity.store.surfaces import SurfaceStore

PATHS_HELP = "Decide same-class pairs in the input space and in layers of a classifier."
REPORT_HELP = (
    "Rebuild the tables and figures of a paths, graph or surfaces run from its saved records."
)
SURFACES_HELP = (
    "Fill loops of same-class inputs with surfaces that keep the class (planar, curved or "
    "none), in the input space and in layers."
)
GRAPH_HELP = (
    "Find the connected components of whole classes (union-find over pairs, near to far), "
    "for one or more classifiers."
)


def _add_experiment_arguments(parser: LightningArgumentParser, kind: type) -> None:
    """The options of an experiment command: a YAML config, the experiment (a ``kind``
    dataclass), its data, Trainer and W&B.

    ``--trainer.*`` is the whole ``lightning.Trainer`` signature, as in ``connectivity fit``
    (callbacks and loggers as ``class_path``/``init_args``, instantiated; the Trainer itself is
    built by the experiment's runner).
    """
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file")
    parser.add_class_arguments(kind, None, fail_untyped=True)
    parser.add_subclass_arguments(ImageDataModule, "data", required=True)
    # The same call LightningCLI makes for its own commands: Trainer arguments, not instantiated.
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.add_class_arguments(WandbOptions, "wandb")


def add_paths_arguments(parser: LightningArgumentParser) -> None:
    """The options of ``connectivity paths``: the experiment, its data, Trainer and W&B."""
    _add_experiment_arguments(parser, Experiment)


def paths_parser(**kwargs: Any) -> LightningArgumentParser:
    """A parser of ``connectivity paths`` options (a YAML config or flags)."""
    kwargs.setdefault("description", PATHS_HELP)
    parser = LightningArgumentParser(**kwargs)
    add_paths_arguments(parser)
    return parser


def graph_parser(**kwargs: Any) -> LightningArgumentParser:
    """A parser of ``connectivity graph`` options: the experiment, its data, Trainer and W&B."""
    kwargs.setdefault("description", GRAPH_HELP)
    parser = LightningArgumentParser(**kwargs)
    _add_experiment_arguments(parser, GraphExperiment)
    return parser


def surfaces_parser(**kwargs: Any) -> LightningArgumentParser:
    """A parser of ``connectivity surfaces`` options: the experiment, its data, Trainer, W&B."""
    kwargs.setdefault("description", SURFACES_HELP)
    parser = LightningArgumentParser(**kwargs)
    _add_experiment_arguments(parser, SurfaceExperiment)
    return parser


@dataclasses.dataclass
class ExperimentCommand:
    """An experiment (``paths`` or ``graph``) with its objects built, ready to run.

    Args:
        experiment: What the experiment asks (the command's :attr:`kind`).
        data: The datamodule the inputs are drawn from.
        trainer: The Trainer keyword arguments the user chose (instantiated callbacks, logger).
        wandb: W&B settings of the run and its report.
    """

    experiment: Any
    data: ImageDataModule
    trainer: dict[str, Any]
    wandb: WandbOptions

    kind: ClassVar[type]  # the experiment's dataclass, set by each command

    @classmethod
    def from_config(cls, parser: ArgumentParser, config: Namespace) -> Any:
        """Instantiate a parsed config (from :func:`paths_parser` or :func:`graph_parser`)."""
        objects = parser.instantiate(config)
        fields = {f.name for f in dataclasses.fields(cls.kind)}
        experiment = cls.kind(**{name: objects[name] for name in fields})
        # Only the arguments given (differing from Trainer's defaults) are passed on: the
        # runner supplies its own defaults and its own logging and progress settings.
        defaults = vars(parser.get_defaults().trainer)
        given = vars(config.trainer)
        trainer = {k: objects.trainer[k] for k, v in given.items() if v != defaults.get(k)}
        return cls(experiment, objects.data, trainer, objects.wandb)

    def run(self) -> RunStore | None:
        """Run (or resume) the experiment; the store on rank zero, None elsewhere."""
        with quiet_library_output():
            return self._start()

    def _start(self) -> RunStore | None:
        raise NotImplementedError  # each command runs its own experiment


@dataclasses.dataclass
class PathsCommand(ExperimentCommand):
    """A path experiment with its objects built, ready to run (``connectivity paths``)."""

    experiment: Experiment
    kind: ClassVar[type] = Experiment

    def _start(self) -> RunStore | None:
        return run_paths(self.experiment, self.data, self.trainer, self.wandb)

    @classmethod
    def from_file(cls, path: str | Path) -> PathsCommand:
        """Read a ``paths`` YAML config file (such as ``configs/paths/quick.yaml``)."""
        parser = paths_parser()
        return cls.from_config(parser, parser.parse_path(str(path)))


@dataclasses.dataclass
class GraphCommand(ExperimentCommand):
    """A graph experiment with its objects built, ready to run (``connectivity graph``)."""

    experiment: GraphExperiment
    kind: ClassVar[type] = GraphExperiment

    def _start(self) -> GraphStore | None:
        return run_graph(self.experiment, self.data, self.trainer, self.wandb)


@dataclasses.dataclass
class SurfacesCommand(ExperimentCommand):
    """A surfaces experiment with its objects built, ready to run (``connectivity surfaces``)."""

    experiment: SurfaceExperiment
    kind: ClassVar[type] = SurfaceExperiment

    def _start(self) -> SurfaceStore | None:
        return run_surfaces(self.experiment, self.data, self.trainer, self.wandb)

    @classmethod
    def from_file(cls, path: str | Path) -> SurfacesCommand:
        """Read a ``surfaces`` YAML config file (such as ``configs/surfaces/quick.yaml``)."""
        parser = surfaces_parser()
        return cls.from_config(parser, parser.parse_path(str(path)))


def report_parser(**kwargs: Any) -> ArgumentParser:
    """A parser of ``connectivity report`` options."""
    kwargs.setdefault("description", REPORT_HELP)
    parser = ArgumentParser(**kwargs)
    parser.add_argument(
        "folder",
        type=str,
        help="the run folder, <output_dir>/<name> of the run's config: "
        "lightning_logs/quickstart/paths for `connectivity quickstart`, "
        "lightning_logs/paths/<name> with the default output_dir",
    )
    parser.add_argument(
        "--decoders",
        type=dict[str, str] | None,
        default=None,
        help="{space: decoder checkpoint} to show latent points as images; null (not given): "
        "the decoders the run was made with (its decoders.json)",
    )
    parser.add_argument("--figures", type=str, default="auto", help=f"{FIGURES_HELP} (paths runs)")
    parser.add_class_arguments(WandbOptions, "wandb")
    return parser


def report(
    folder: str,
    decoders: dict[str, str] | None = None,
    wandb: WandbOptions | None = None,
    figures: str = "auto",
) -> None:
    """Rebuild the table and figures of the run in ``folder`` (by default with its decoders).

    ``figures``: which pair figures of a paths run to draw (``auto``, ``all``, ``none``; see
    :func:`~connectivity.reporting.drawing.draw_figures`); only missing or stale ones are drawn.

    Raises:
        OptionsError: ``figures`` is not one of them (before anything is read).
    """
    check_figures(figures)
    store = RunStore(folder)
    kind = store.manifest().get("kind")
    if kind == "graph":
        with quiet_library_output():
            write_graph_report(GraphStore(folder), wandb=wandb or WandbOptions())
        return
    if kind == "surfaces":
        with quiet_library_output():
            write_surface_report(
                SurfaceStore(folder),
                wandb=wandb or WandbOptions(),
                figures=figures,
                decoders=decoders,
            )
        return
    with quiet_library_output():
        write_report(
            store,
            decoders=decoders or store.decoders(),
            wandb=wandb or WandbOptions(),
            figures=figures,
        )
