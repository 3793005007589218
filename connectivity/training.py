"""Training through LightningCLI: each run in its own folder, its resolved config saved there.

Shared by the ``connectivity`` command (:mod:`connectivity.cli`) and the quickstart
(:mod:`connectivity.quickstart`), so that neither imports the other.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

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


class TrainingCLI(LightningCLI):
    """LightningCLI in subclass mode for any LightningModule and LightningDataModule.

    Only ``fit``, ``validate``, ``test`` and ``predict``: the quickstart trains through it without
    importing the ``connectivity`` command (:mod:`connectivity.cli`, which adds the path commands).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunFolderConfigCallback,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def after_fit(self) -> None:
        # Later commands (decoders, paths) take this file: say where it is.
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if best and self.trainer.is_global_zero:
            print(f"Best checkpoint: {best}")
