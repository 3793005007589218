"""Folders of runs: each training run without a logger takes the next free ``version_N``."""

from __future__ import annotations

from pathlib import Path

from connectivity.store.folders import ensure_folder, new_version_folder


def test_each_new_folder_is_one_past_the_highest_taken(tmp_path: Path) -> None:
    first = new_version_folder(tmp_path)
    assert first == tmp_path / "lightning_logs" / "version_0" and first.is_dir()
    (tmp_path / "lightning_logs" / "version_7").mkdir()
    (tmp_path / "lightning_logs" / "notes").mkdir()  # not a version: ignored
    assert new_version_folder(tmp_path).name == "version_8"
    assert new_version_folder(tmp_path, name="runs").name == "version_0"


def test_ensure_folder_makes_parents_and_keeps_what_is_there(tmp_path: Path) -> None:
    folder = ensure_folder(tmp_path / "a" / "b")
    (folder / "kept").write_text("x")
    assert ensure_folder(folder) == folder and (folder / "kept").read_text() == "x"
