"""Folders of runs: a fresh ``version_N`` for a training run without a logger, any other
folder made on demand."""

from __future__ import annotations

import re
from pathlib import Path


def ensure_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) unless it exists; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
