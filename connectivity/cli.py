"""The ``connectivity`` command: LightningCLI for training, plus the path experiments."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from connectivity.errors import ConnectivityError


class RunFolderConfigCallback(SaveConfigCallback):
    """Save the resolved config into the run's own folder (and W&B), never over another run.

    Lightning's default writes ``config.yaml`` into the logger's save dir, which W&B shares
    between runs, so a second run would refuse to start.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or stage != "fit":
            return
        logger = trainer.logger
        if isinstance(logger, WandbLogger):
            folder = Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
            logger.log_hyperparams({"cli_config": self.config.as_dict()})
        else:
            folder = Path(trainer.log_dir or trainer.default_root_dir)
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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``connectivity`` console script."""
    try:
        ConnectivityCLI(args=args)
    except ConnectivityError as error:
        print(f"connectivity: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
