"""W&B's offline runs on disk: their transaction logs read and written as W&B lays them out,
and staged files renamed relative to the run folder, so a copied folder syncs as it is."""

from __future__ import annotations

import os
import struct
import time
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from connectivity.reporting.wandb_log.runs import DATA_SUBDIR, WANDB_SUBDIR, offline_runs
from connectivity.store.files import atomic_write_bytes

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record


# W&B's transaction log (``run-<id>.wandb``): LevelDB's log format with W&B's own header.
# A file is 32 KiB blocks of records ``crc32(type + data) (4, LE) | length (2, LE) | type (1)
# | data``; a record too long for its block continues in the next (first/middle/last parts);
# a block tail shorter than a record header is zeros. Each whole record is a protobuf
# ``wandb_internal.Record``.
_LOG_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_transaction_log(path: str | Path) -> list[bytes]:
    """The raw records of a W&B transaction log, in order.

    Raises:
        ValueError: The file is no W&B transaction log, or a record's checksum is wrong.
    """
    data = Path(path).read_bytes()
    if not data.startswith(_LOG_HEADER[:4]):
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    records, parts, position = [], [], len(_LOG_HEADER)
    while position + 7 <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < 7:
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding to the end of the block
            position += left
            continue
        if position + 7 + length > len(data):
            break  # a record cut short: the run is still writing, or was killed mid-record
        chunk = data[position + 7 : position + 7 + length]
        if zlib.crc32(bytes([kind]) + chunk) != checksum:
            raise ValueError(f"{path}: damaged record at byte {position}")
        position += 7 + length
        parts.append(chunk)
        if kind in (_FULL, _LAST):
            records.append(b"".join(parts))
            parts = []
    return records


def write_transaction_log(path: str | Path, records: list[bytes]) -> None:
    """Write ``records`` as a W&B transaction log (atomically), as W&B itself lays them out."""
    out = bytearray(_LOG_HEADER)
    for record in records:
        rest, first = record, True
        while True:
            left = _BLOCK - len(out) % _BLOCK
            if left < 7:
                out += bytes(left)
                continue
            chunk, rest = rest[: left - 7], rest[left - 7 :]
            last = not rest
            kind = (_FULL if last else _FIRST) if first else (_LAST if last else _MIDDLE)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind)
            out += chunk
            first = False
            if last:
                break
    atomic_write_bytes(Path(path), bytes(out))


def offline_run_records(run_dir: str | Path) -> list[Record]:
    """The records of an offline run folder (``.../wandb/offline-run-*``), parsed."""
    from wandb.proto.wandb_internal_pb2 import Record

    records = []
    for file in sorted(Path(run_dir).glob("run-*.wandb")):
        for raw in read_transaction_log(file):
            record = Record()
            record.ParseFromString(raw)
            records.append(record)
    return records


def _relative(path: str, folder: Path) -> str:
    """``path`` of a file staged under some location of the run folder (``.../wandb/data/...``),
    relative to the folder (``wandb/data/...``) when that file lies in ``folder``; unchanged
    when it is not a staged file, is relative already, or is not in ``folder``."""
    marker = f"{os.sep}{WANDB_SUBDIR}{os.sep}{DATA_SUBDIR}{os.sep}"
    before, found, tail = path.rpartition(marker)
    if not found or not before:
        return path
    relative = os.path.join(WANDB_SUBDIR, DATA_SUBDIR, tail)
    return relative if (folder / relative).exists() else path


def _finished_log(run_dir: Path, wait: float) -> bool:
    """Whether the transaction log of ``run_dir`` ends with the run's exit record, waiting up
    to ``wait`` seconds for it: ``run.finish()`` can return before W&B's service has written
    the last records, and a log rewritten before then would lose them."""
    from wandb.proto.wandb_internal_pb2 import Record

    deadline = time.monotonic() + wait
    while True:
        for file in run_dir.glob("run-*.wandb"):
            try:
                raws = read_transaction_log(file)
            except ValueError:
                continue  # being written
            if raws:
                record = Record()
                record.ParseFromString(raws[-1])
                if record.WhichOneof("record_type") == "exit":
                    return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def relocate_offline_runs(
    folder: str | Path, finished: str | None = None, wait: float = 30.0
) -> list[Path]:
    """Make a folder's offline runs name their staged files relative to the folder.

    W&B records each staged table, image and artifact file by absolute path (under
    ``<folder>/wandb/data``); a copy of the folder would name files of the original. Records
    that name such files, under the folder where it lies now or under an earlier location of
    it, are rewritten to the same file relative to the folder (``wandb/data/...``), so a
    copied or moved folder syncs as it is, from inside the folder:
    ``cd <folder> && wandb sync wandb/offline-run-*`` (W&B opens a relative path from the
    directory it runs in). Nothing else changes.

    Args:
        folder: The run folder.
        finished: Id of a run this process has just finished: its newest offline run is
            rewritten only once W&B has written its exit record (waiting up to ``wait``
            seconds; else it is left as it is, with a warning).
        wait: Most seconds to wait for that run's log.

    Returns:
        The offline run folders to give ``wandb sync`` (oldest first).
    """
    from wandb.proto.wandb_internal_pb2 import Record

    folder = Path(folder).resolve()
    runs = offline_runs(folder)
    own = [r for r in runs if finished is not None and r.name.endswith(f"-{finished}")]
    for run_dir in runs:
        if own and run_dir == own[-1] and not _finished_log(run_dir, wait):
            warnings.warn(
                f"{run_dir} is still being written by W&B; its staged files keep their absolute "
                "paths: run `connectivity report` on the folder again before copying it",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        for file in run_dir.glob("run-*.wandb"):
            try:
                raws = read_transaction_log(file)
            except ValueError as error:
                warnings.warn(f"left as it is: {error}", RuntimeWarning, stacklevel=2)
                continue
            changed = False
            for i, raw in enumerate(raws):
                record = Record()
                record.ParseFromString(raw)
                kind = record.WhichOneof("record_type")
                if kind == "artifact":
                    manifest = record.artifact.manifest
                elif kind == "request" and record.request.HasField("log_artifact"):
                    manifest = record.request.log_artifact.artifact.manifest
                else:
                    continue
                touched = False
                for entry in manifest.contents:
                    if entry.local_path:
                        moved = _relative(entry.local_path, folder)
                        touched |= moved != entry.local_path
                        entry.local_path = moved
                if manifest.manifest_file_path:
                    moved = _relative(manifest.manifest_file_path, folder)
                    touched |= moved != manifest.manifest_file_path
                    manifest.manifest_file_path = moved
                if touched:
                    raws[i] = record.SerializeToString()
                    changed = True
            if changed:
                write_transaction_log(file, raws)
    return runs
