"""The ``connectivity`` command: LightningCLI for training, plus the path experiments."""

from __future__ import annotations

import dataclasses
import sys

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from connectivity.data import ImageDataModule
from connectivity.errors import ConnectivityError
from connectivity.experiment import Experiment, run_paths
from connectivity.records import RunStore
from connectivity.report import WandbOptions, write_report
from connectivity.runs import new_version_folder, run_folder


class RunFolderConfigCallback(SaveConfigCallback):
    """Give each run its own folder and save the resolved config there (and to W&B).

    Lightning's default writes ``config.yaml`` into the logger's save dir, which W&B shares
    between runs, so a second run would refuse to start. Without any logger every run would
    share ``default_root_dir`` (one ``config.yaml`` overwritten, both runs' checkpoints in one
    ``checkpoints/``); such a run gets a fresh ``<default_root_dir>/lightning_logs/version_N``
    instead, the layout Lightning's own loggers use.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or stage != "fit":
            return
        if not trainer.loggers:
            # Rank zero takes the folder; every rank uses that one. Callbacks are set up before
            # ModelCheckpoint (Lightning orders it last), so checkpoints follow the new root.
            folder = (
                new_version_folder(trainer.default_root_dir) if trainer.is_global_zero else None
            )
            # No public setter: default_root_dir reads this attribute.
            trainer._default_root_dir = str(trainer.strategy.broadcast(folder))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams({"cli_config": self.config.as_dict()})
        folder = run_folder(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(
                self.config,
                folder / self.config_filename,
                overwrite=True,
                multifile=False,
            )
        self.already_saved = True
        trainer.strategy.barrier()


class ConnectivityCLI(LightningCLI):
    """LightningCLI in subclass mode for any LightningModule and LightningDataModule."""

    def __init__(self, **kwargs) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunFolderConfigCallback,
            auto_configure_optimizers=False,
            **kwargs,
        )


@dataclasses.dataclass
class Launch:
    """Where the experiment runs (Lightning Trainer settings).

    Args:
        accelerator: ``auto``, ``cpu``, ``gpu``...
        devices: Number of devices (or ``auto``); pairs are shared out across them.
        strategy: ``auto``, or ``ddp`` for several processes.
        num_nodes: Machines (the run folder must be on a file system they share).
    """

    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1


def paths_parser() -> ArgumentParser:
    """``connectivity paths``: the options of a path experiment (YAML config or flags)."""
    parser = ArgumentParser(
        prog="connectivity paths",
        description="Decide same-class pairs in the input space and in layers of a classifier.",
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file")
    parser.add_class_arguments(Experiment, None, fail_untyped=True)
    parser.add_subclass_arguments(ImageDataModule, "data", required=True)
    parser.add_class_arguments(Launch, "trainer")  # replaced by full Trainer arguments (issue 9)
    parser.add_class_arguments(WandbOptions, "wandb")
    return parser


def run_paths_command(args: list[str]) -> None:
    parser = paths_parser()
    config = parser.parse_args(args)
    objects = parser.instantiate(config)
    fields = {f.name for f in dataclasses.fields(Experiment)}
    experiment = Experiment(**{k: objects[k] for k in fields})
    run_paths(experiment, objects.data, dataclasses.asdict(objects.trainer), objects.wandb)


def report_command(args: list[str]) -> None:
    parser = ArgumentParser(
        prog="connectivity report",
        description="Rebuild the table and figures of a path experiment from its saved records.",
    )
    parser.add_argument("folder", type=str, help="the run folder (lightning_logs/paths/<name>)")
    parser.add_argument(
        "--decoders",
        type=dict[str, str],
        default={},
        help="{space: decoder checkpoint} to show latent points as images",
    )
    parser.add_class_arguments(WandbOptions, "wandb")
    config = parser.parse_args(args)
    objects = parser.instantiate(config)
    store = RunStore(config.folder)
    decoders = config.decoders or store.decoders()
    write_report(store, decoders=decoders, wandb=objects.wandb)


def quickstart_command(args: list[str]) -> None:
    parser = ArgumentParser(
        prog="connectivity quickstart",
        description="Train the digits classifier and its decoders, then decide 25 pairs in three "
        "spaces; finished stages are reused.",
    )
    parser.add_argument("--output", type=str, default="lightning_logs/quickstart")
    config = parser.parse_args(args)
    from connectivity.quickstart import quickstart

    quickstart(config.output)


COMMANDS = {"paths": run_paths_command, "report": report_command, "quickstart": quickstart_command}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``connectivity`` console script."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
            return
        ConnectivityCLI(args=args)
    except Exception as error:
        # jsonargparse wraps errors raised while it builds the model or data; find ours.
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ConnectivityError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        print(f"connectivity: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
