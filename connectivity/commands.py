"""The path experiment's commands (``paths``, ``report``) and the library output they keep quiet.

Shared by the ``connectivity`` command (:mod:`connectivity.cli`) and the quickstart
(:mod:`connectivity.quickstart`), so that neither imports the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from connectivity.data import ImageDataModule
from connectivity.experiment import Experiment, run_paths
from connectivity.graph_report import write_graph_report
from connectivity.graph_run import GraphExperiment, run_graph
from connectivity.graph_store import GraphStore
from connectivity.records import RunStore
from connectivity.report import WandbOptions, write_report

PATHS_HELP = "Decide same-class pairs in the input space and in layers of a classifier."
REPORT_HELP = "Rebuild the tables and figures of a paths or graph run from its saved records."
GRAPH_HELP = (
    "Find the connected components of whole classes (union-find over pairs, near to far), "
    "for one or more classifiers."
)

# Library output that our own design causes on purpose and that would bury the lines a person
# follows. Errors, real warnings and the progress bars are kept.
_QUIET_WARNINGS = (
    # Frozen heads and tails stay in eval mode on purpose.
    r"Found \d+ module\(s\) in eval mode",
    # Lightning's own pytree helper on recent torch; nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # The quickstart hands its stages their arguments while sys.argv holds `quickstart`.
    r"LightningCLI's args parameter is intended",
    # The embedded digits have short epochs on purpose (quick on a CPU).
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
_QUIET_MESSAGES = (
    # Advertisements for Lightning's cloud packages, once per trainer.
    "💡 Tip:",
    # Our modules choose their own checkpoint callback on purpose.
    "The following callbacks returned in `LightningModule.configure_callbacks`",
)
# Lightning logs its info lines (and the tips) through this logger, model summaries through the
# second; filters on a logger only see records logged to that logger itself.
_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
_SUMMARY_LOGGER = "lightning.pytorch.callbacks.model_summary"


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def quiet_library_output() -> Iterator[None]:
    """Within the block, silence what our commands cause on purpose (see ``_QUIET_*``).

    Also hides the per-stage model summaries and W&B's per-run history (``WANDB_QUIET``, unless
    the user set it). Everything is restored on exit: importing or calling the package elsewhere
    changes no global filter, logger or environment variable.
    """
    rank_zero = logging.getLogger(_RANK_ZERO_LOGGER)
    summary = logging.getLogger(_SUMMARY_LOGGER)
    drop = _DropMessages(_QUIET_MESSAGES)
    summary_level = summary.level
    wandb_quiet = os.environ.get("WANDB_QUIET")
    with warnings.catch_warnings():
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        rank_zero.addFilter(drop)
        summary.setLevel(logging.WARNING)
        os.environ.setdefault("WANDB_QUIET", "true")
        try:
            yield
        finally:
            rank_zero.removeFilter(drop)
            summary.setLevel(summary_level)
            if wandb_quiet is None:
                os.environ.pop("WANDB_QUIET", None)


def add_paths_arguments(parser: LightningArgumentParser) -> None:
    """The options of ``connectivity paths``: the experiment, its data, Trainer and W&B.

    ``--trainer.*`` is the whole ``lightning.Trainer`` signature, as in ``connectivity fit``
    (callbacks and loggers as ``class_path``/``init_args``, instantiated; the Trainer itself is
    built by :func:`~connectivity.experiment.run_paths`).
    """
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file")
    parser.add_class_arguments(Experiment, None, fail_untyped=True)
    parser.add_subclass_arguments(ImageDataModule, "data", required=True)
    # The same call LightningCLI makes for its own commands: Trainer arguments, not instantiated.
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.add_class_arguments(WandbOptions, "wandb")


def paths_parser(**kwargs: Any) -> LightningArgumentParser:
    """A parser of ``connectivity paths`` options (a YAML config or flags)."""
    kwargs.setdefault("description", PATHS_HELP)
    parser = LightningArgumentParser(**kwargs)
    add_paths_arguments(parser)
    return parser


def _instantiate(
    parser: ArgumentParser, config: Namespace, kind: type
) -> tuple[Any, ImageDataModule, dict[str, Any], WandbOptions]:
    """The experiment (a ``kind`` dataclass), data, Trainer arguments and W&B settings of a
    parsed ``paths`` or ``graph`` config."""
    objects = parser.instantiate(config)
    fields = {f.name for f in dataclasses.fields(kind)}
    experiment = kind(**{name: objects[name] for name in fields})
    # Only the arguments given (differing from Trainer's defaults) are passed on: the runner
    # supplies its own defaults and its own logging and progress settings.
    defaults = vars(parser.get_defaults().trainer)
    given = vars(config.trainer)
    trainer = {k: objects.trainer[k] for k, v in given.items() if v != defaults.get(k)}
    return experiment, objects.data, trainer, objects.wandb


@dataclasses.dataclass
class PathsCommand:
    """A path experiment with its objects built, ready to run.

    Args:
        experiment: What the experiment asks.
        data: The datamodule the pairs are drawn from.
        trainer: The Trainer keyword arguments the user chose (instantiated callbacks, logger).
        wandb: W&B settings of the report.
    """

    experiment: Experiment
    data: ImageDataModule
    trainer: dict[str, Any]
    wandb: WandbOptions

    @classmethod
    def from_config(cls, parser: ArgumentParser, config: Namespace) -> PathsCommand:
        """Instantiate a parsed ``paths`` config (from :func:`paths_parser`)."""
        return cls(*_instantiate(parser, config, Experiment))

    @classmethod
    def from_file(cls, path: str | Path) -> PathsCommand:
        """Read a ``paths`` YAML config file (such as ``configs/paths/quick.yaml``)."""
        parser = paths_parser()
        return cls.from_config(parser, parser.parse_path(str(path)))

    def run(self) -> RunStore | None:
        """Run (or resume) the experiment; the store on rank zero, None elsewhere."""
        with quiet_library_output():
            return run_paths(self.experiment, self.data, self.trainer, self.wandb)


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
    parser.add_class_arguments(WandbOptions, "wandb")
    return parser


def report(
    folder: str, decoders: dict[str, str] | None = None, wandb: WandbOptions | None = None
) -> None:
    """Rebuild the table and figures of the run in ``folder`` (by default with its decoders)."""
    store = RunStore(folder)
    if store.manifest().get("kind") == "graph":
        with quiet_library_output():
            write_graph_report(GraphStore(folder), wandb=wandb or WandbOptions())
        return
    with quiet_library_output():
        write_report(store, decoders=decoders or store.decoders(), wandb=wandb or WandbOptions())


def graph_parser(**kwargs: Any) -> LightningArgumentParser:
    """A parser of ``connectivity graph`` options: the experiment, its data, Trainer and W&B."""
    kwargs.setdefault("description", GRAPH_HELP)
    parser = LightningArgumentParser(**kwargs)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file")
    parser.add_class_arguments(GraphExperiment, None, fail_untyped=True)
    parser.add_subclass_arguments(ImageDataModule, "data", required=True)
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.add_class_arguments(WandbOptions, "wandb")
    return parser


@dataclasses.dataclass
class GraphCommand:
    """A graph experiment with its objects built, ready to run (see :class:`PathsCommand`)."""

    experiment: GraphExperiment
    data: ImageDataModule
    trainer: dict[str, Any]
    wandb: WandbOptions

    @classmethod
    def from_config(cls, parser: ArgumentParser, config: Namespace) -> GraphCommand:
        """Instantiate a parsed ``graph`` config (from :func:`graph_parser`)."""
        return cls(*_instantiate(parser, config, GraphExperiment))

    def run(self) -> GraphStore | None:
        """Run (or resume) the experiment; the store on rank zero, None elsewhere."""
        with quiet_library_output():
            return run_graph(self.experiment, self.data, self.trainer, self.wandb)
