"""The ``connectivity`` command: one LightningCLI parser for training and the path experiments.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's own; ``paths``, ``graph``,
``surfaces``, ``report`` and ``quickstart`` are subcommands of the same parser (so
``connectivity --help`` lists all nine), dispatched without building a model or a trainer for them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from jsonargparse import ArgumentError as JsonArgparseError
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from connectivity import __version__
from connectivity.cli.commands import (
    GRAPH_HELP,
    PATHS_HELP,
    REPORT_HELP,
    SURFACES_HELP,
    GraphCommand,
    PathsCommand,
    SurfacesCommand,
    graph_parser,
    paths_parser,
    report,
    report_parser,
    surfaces_parser,
)
from connectivity.cli.quickstart import quickstart
from connectivity.cli.training import RunFolderConfigCallback, TrainingCLI
from connectivity.errors import ConnectivityError
from connectivity.reporting.wandb_log import finish_active_run

__all__ = ["ConnectivityCLI", "RunFolderConfigCallback", "main"]

DESCRIPTION = (
    "Original and latent space connectivity of image classifiers: train with LightningCLI, "
    "then decide same-class pairs of inputs in the input space and in layers."
)
# One line each for `connectivity --help` (Lightning's docstrings run on for several lines).
TRAINING_HELP = {
    "fit": "Train a model (LightningCLI; e.g. -c configs/classifier/quick.yaml).",
    "validate": "Evaluate a model on the validation set.",
    "test": "Evaluate a model on the test set.",
    "predict": "Run a model's predict_step over the data.",
}
QUICKSTART_HELP = (
    "Train the digits classifier and its decoders, then decide 50 pairs (the closest calls of "
    "600) in three spaces (finished stages are reused)."
)


def _quickstart_parser(**kwargs: Any) -> ArgumentParser:
    kwargs.setdefault("description", QUICKSTART_HELP)
    parser = ArgumentParser(**kwargs)
    parser.add_function_arguments(quickstart, fail_untyped=True)
    return parser


def _run_paths(parser: ArgumentParser, config: Namespace) -> None:
    PathsCommand.from_config(parser, config).run()


def _run_graph(parser: ArgumentParser, config: Namespace) -> None:
    GraphCommand.from_config(parser, config).run()


def _run_surfaces(parser: ArgumentParser, config: Namespace) -> None:
    SurfacesCommand.from_config(parser, config).run()


def _run_report(parser: ArgumentParser, config: Namespace) -> None:
    objects = parser.instantiate(config)
    report(objects.folder, decoders=objects.decoders, wandb=objects.wandb, figures=objects.figures)


def _run_quickstart(parser: ArgumentParser, config: Namespace) -> None:
    quickstart(config.output)


# name: (parser builder, one-line help, runner given the subcommand's parser and config)
EXPERIMENT_COMMANDS: dict[
    str, tuple[Callable[..., ArgumentParser], str, Callable[[ArgumentParser, Namespace], None]]
] = {
    "paths": (paths_parser, PATHS_HELP, _run_paths),
    "graph": (graph_parser, GRAPH_HELP, _run_graph),
    "surfaces": (surfaces_parser, SURFACES_HELP, _run_surfaces),
    "report": (report_parser, REPORT_HELP, _run_report),
    "quickstart": (_quickstart_parser, QUICKSTART_HELP, _run_quickstart),
}


class ConnectivityCLI(TrainingCLI):
    """LightningCLI's training commands plus ``paths``, ``graph``, ``surfaces``, ``report`` and
    ``quickstart``.

    The experiment commands take no model, data or trainer of LightningCLI's: for them no seed
    is set, nothing is instantiated up front, and their own runner is called instead.
    """

    def __init__(self, **kwargs: Any) -> None:
        parser_kwargs = {"prog": "connectivity", "description": DESCRIPTION}
        kwargs["parser_kwargs"] = {**parser_kwargs, **kwargs.get("parser_kwargs", {})}
        super().__init__(**kwargs)

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument(
            "--version", action="version", version=f"connectivity {__version__}"
        )

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # LightningCLI's own loop, with one-line help, then ours: one parser parses, checks and
        # documents all nine commands.
        self._subcommand_parsers: dict[str, ArgumentParser] = {}
        subcommands = parser.add_subcommands()
        for name in self.subcommands():
            subparser_kwargs = {"description": TRAINING_HELP[name], **kwargs.get(name, {})}
            subparser = self._prepare_subcommand_parser(
                self.trainer_class, name, **subparser_kwargs
            )
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=TRAINING_HELP[name])
        for name, (build, help_line, _) in EXPERIMENT_COMMANDS.items():
            subparser = build(**kwargs.get(name, {}))
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=help_line)

    def _experiment_command(self) -> bool:
        return self.subcommand in EXPERIMENT_COMMANDS

    def _set_seed(self) -> None:
        if not self._experiment_command():  # paths seeds its own draw (pairs.seed)
            super()._set_seed()

    def _add_instantiators(self) -> None:
        if not self._experiment_command():
            super()._add_instantiators()

    def instantiate_classes(self) -> None:
        if not self._experiment_command():  # the runner builds what its command needs
            super().instantiate_classes()

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand not in EXPERIMENT_COMMANDS:
            super()._run_subcommand(subcommand)
            finish_active_run()  # the command's W&B run ends with it, under its settings
            return
        run = EXPERIMENT_COMMANDS[subcommand][2]
        run(self._subcommand_parsers[subcommand], self.config[subcommand])


def _one_line(message: str) -> str:
    """jsonargparse's multi-line type error as one line.

    ``Parser key "path.lr": Expected a <class 'float'>. Got value: abc`` becomes
    ``--path.lr: Expected a float. Got value: abc``; a Union's report of every subtype becomes
    ``--path.bounds: expected tuple[float, float] or None, got [0, 'nan'] (... nan)``.
    """
    message = re.sub(r'Parser key "([^"]+)":', r"--\1:", message)
    message = re.sub(r"<class '([\w.]+)'>", r"\1", message).replace("NoneType", "None")
    message = message.replace("Expected a int", "Expected an int")
    union = re.search(
        r"^(.*?)\s*Does not validate against any of the Union subtypes\s*Subtypes: \[(.*)\]"
        r"\s*Errors:(.*?)Given value type:.*?Given value: (.*)$",
        message,
        re.DOTALL,
    )
    if union:
        key, types, errors, given = union.groups()
        reason = next((e.strip(" -") for e in errors.splitlines() if "Got value" in e), "")
        # Split "tuple[float, float], None" at the commas outside brackets.
        alternatives = " or ".join(re.split(r", (?![^\[]*\])", types))
        message = f"{key} expected {alternatives}, got {given}"
        message += f" ({reason})" if reason else ""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``connectivity`` console script."""
    try:
        ConnectivityCLI(args=args, parser_kwargs={"exit_on_error": False})
    except JsonArgparseError as error:
        # A wrong option or value: one line, not a usage block (`--help` shows the options).
        message = _one_line(str(error))
        if "--verbose" in message:  # given after the command, where only `test` has one
            message += " (for the libraries' own output: connectivity --verbose <command> ...)"
        print(f"connectivity: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as error:
        # jsonargparse wraps errors raised while it builds the model or data; find ours.
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ConnectivityError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        print(f"connectivity: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
