"""Atomic file writes and tolerant reads: the one place run-folder files reach the disk.

Every write goes to a temporary file beside the target, then is renamed over it, so a reader
(another rank, a report run while the experiment goes on, a crash) sees the old file or the
whole new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import torch

from connectivity.errors import ConnectivityError


class RunFolderError(ConnectivityError):
    """A run folder that holds another experiment, or none."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _atomic_write(path: Path, write: Any) -> None:
    """Create ``path`` through ``write(binary file)`` on a temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a run's pages and tables are for sharing, as
        # any file the user writes (the umask's mode).
        os.fchmod(handle, 0o666 & ~_UMASK)
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""

    def write(file: IO[bytes]) -> None:
        file.write(data)

    _atomic_write(Path(path), write)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`; a file that already holds ``text`` is left as
    it is (a report of a finished run rewrites nothing, and its files keep their times)."""
    data = text.encode()
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass  # not there (or not readable): write it
    atomic_write_bytes(path, data)


def write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    """``value`` as JSON (one trailing newline) at ``path``, atomically; unchanged text is left
    as it is (:func:`atomic_write_text`). Values JSON cannot hold are written as ``str``."""
    atomic_write_text(Path(path), json.dumps(value, indent=indent, default=str) + "\n")


def read_json(path: Path) -> Any:
    """A run folder's JSON file; a damaged one is a :class:`RunFolderError` naming it.

    Raises:
        RunFolderError: The file is missing, unreadable or not JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(
            f"{path} is damaged ({type(error).__name__}: {error}); restore it, or delete the "
            "run folder to start the experiment over"
        ) from error


def read_json_or(path: Path, default: Any) -> Any:
    """A JSON file that may be missing or damaged (a marker, a cache): ``default`` then."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return default


def write_tensor(path: Path, value: Any) -> None:
    """``torch.save`` ``value`` to ``path`` atomically (readers see the old file or the new)."""
    _atomic_write(Path(path), lambda file: torch.save(value, file))


def read_tensor(path: Path) -> Any:
    """What :func:`write_tensor` wrote, on the CPU, loading tensors and plain values only.

    Raises:
        FileNotFoundError: No such file.
        Exception: A damaged file (pickle, zip and unpickler errors).
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` so that ``target`` exists only once it is whole."""
    with open(source, "rb") as file:
        _atomic_write(Path(target), lambda out: _copy(file, out))


def _copy(source: IO[bytes], target: IO[bytes]) -> None:
    while chunk := source.read(1 << 20):
        target.write(chunk)
