"""Run-folder files reach the disk whole, with the user's file mode; damaged ones are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from connectivity.store import files
from connectivity.store.files import (
    RunFolderError,
    atomic_write_text,
    copy_file,
    read_json,
    read_json_or,
    read_tensor,
    write_json,
    write_tensor,
)


def test_written_files_get_the_users_file_mode_not_a_private_one(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "index.html", "<p>shared</p>")
    finally:
        os.umask(mask)
    # The mode is the umask's of when the module was imported; under 022 that is 0644.
    assert (tmp_path / "index.html").stat().st_mode & 0o777 == 0o666 & ~files._UMASK
    assert (tmp_path / "index.html").stat().st_mode & 0o444 == 0o444  # readable by everyone
    # The same text again: the file is left as it is (its time too); other text replaces it.
    before = (tmp_path / "index.html").stat().st_mtime_ns
    os.utime(tmp_path / "index.html", ns=(before - 10**9, before - 10**9))
    atomic_write_text(tmp_path / "index.html", "<p>shared</p>")
    assert (tmp_path / "index.html").stat().st_mtime_ns == before - 10**9
    atomic_write_text(tmp_path / "index.html", "<p>new</p>")
    assert (tmp_path / "index.html").read_text() == "<p>new</p>"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    file = tmp_path / "deep" / "state.pt"
    write_tensor(file, {"x": torch.arange(3)})

    class Unsaveable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("cannot be pickled")

    with pytest.raises(RuntimeError, match="cannot be pickled"):
        write_tensor(file, {"x": Unsaveable()})
    assert torch.equal(read_tensor(file)["x"], torch.arange(3))
    assert [p.name for p in file.parent.iterdir()] == ["state.pt"]


def test_json_round_trips_and_a_damaged_file_is_named_or_defaulted(tmp_path: Path) -> None:
    file = tmp_path / "run.json"
    write_json(file, {"b": 1, "path": tmp_path})
    assert file.read_text().endswith("}\n")
    assert read_json(file) == {"b": 1, "path": str(tmp_path)}
    file.write_text('{"b": ')
    with pytest.raises(RunFolderError, match=r"run\.json is damaged"):
        read_json(file)
    assert read_json_or(file, {}) == {}
    assert read_json_or(tmp_path / "absent.json", None) is None


def test_a_copy_is_whole_and_byte_for_byte(tmp_path: Path) -> None:
    source = tmp_path / "classifier.ckpt"
    source.write_bytes(os.urandom(3 << 20))  # more than one chunk
    copy_file(source, tmp_path / "copies" / "classifier.ckpt")
    assert (tmp_path / "copies" / "classifier.ckpt").read_bytes() == source.read_bytes()
