"""Training through LightningCLI: each run in its own folder, its resolved config saved there.

Shared by the ``connectivity`` command (:mod:`connectivity.cli`) and the quickstart
(:mod:`connectivity.cli.quickstart`), so that neither imports the other.
"""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from connectivity.lightning.output import StageProgressBar, quiet_library_output
from connectivity.reporting.wandb_log import log_config, prepare_loggers, run_folder, run_lines
from connectivity.store.folders import new_version_folder

VERBOSE_HELP = (
    "Show the libraries' own output too: Lightning's info lines (devices, seed, model "
    "summary) and W&B's messages (put it before the command: connectivity --verbose fit ...)."
)


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
        log_config(trainer.loggers, {"cli_config": self.config.as_dict()})
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


class TrainingCLI(LightningCLI):
    """LightningCLI in subclass mode for any LightningModule and LightningDataModule.

    Only ``fit``, ``validate``, ``test`` and ``predict``: the quickstart trains through it without
    importing the ``connectivity`` command (:mod:`connectivity.cli`, which adds the path commands).

    Its output: the progress bars (cleared when done, the epoch bar as ``epoch k/N``), the best
    checkpoint and where the W&B run is. Lightning's info lines and W&B's messages show with
    ``--verbose`` (before the command); warnings and errors always show.
    """

    def __init__(self, **kwargs: Any) -> None:
        # The libraries' output is settled once the command line is parsed, for the whole run.
        self._output = contextlib.ExitStack()
        with self._output:
            super().__init__(
                L.LightningModule,
                L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=RunFolderConfigCallback,
                auto_configure_optimizers=False,
                **kwargs,
            )

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # On the main parser: `test` and `validate` have a --verbose of their own (Trainer's).
        self.parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        verbose = bool(self.config.get("verbose", False))
        self._output.enter_context(quiet_library_output(verbose))

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        prepare_loggers(self.trainer.loggers)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        # Lightning's default bar leaves a line per epoch and validation in a log file; ours,
        # unless the user chose a bar (or none).
        config = self._get(self.config_init, "trainer", default={})
        callbacks = kwargs.get("callbacks", config.get("callbacks")) or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        enabled = kwargs.get("enable_progress_bar", config.get("enable_progress_bar"))
        if enabled is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StageProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        # Later commands (decoders, paths) take this file: say where it is.
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if best:
            print(f"Best checkpoint: {best}")
        for line in run_lines(self.trainer.loggers):
            print(line)
