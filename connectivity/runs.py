"""Where a training run keeps its files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def run_folder(trainer: L.Trainer) -> Path:
    """The run's own folder: ``<save_dir>/<project>/<run id>`` with W&B (where Lightning puts
    its checkpoints), else the trainer's ``log_dir``."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
    return Path(trainer.log_dir or trainer.default_root_dir)
