"""Where a training run keeps its files."""

from __future__ import annotations

import re
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


def new_version_folder(root: str | Path, name: str = "lightning_logs") -> Path:
    """Create and return ``<root>/<name>/version_<N>``, N one past the highest there.

    Each folder is taken with one ``mkdir`` that fails if it exists, so two runs started at
    the same moment (even on machines sharing the file system) never get the same one.
    """
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    taken = [
        int(match.group(1))
        for entry in parent.iterdir()
        if (match := re.fullmatch(r"version_(\d+)", entry.name))
    ]
    version = max(taken, default=-1) + 1
    while True:
        folder = parent / f"version_{version}"
        try:
            folder.mkdir()
        except FileExistsError:
            version += 1
            continue
        return folder
