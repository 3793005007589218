"""A run folder's report from its records alone: tables, pages, and what is not decided yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectivity.errors import OptionsError
from connectivity.reporting.report import load_records, write_report
from connectivity.reporting.wandb_log import WandbOptions
from tests.reporting.folders import run_folder

FILES = (
    "table.md",
    "table.csv",
    "pairs.csv",
    "index.html",
    "index_input.html",
    "index_hidden.html",
)


def test_the_report_writes_its_tables_and_pages_and_a_second_one_rewrites_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = run_folder(tmp_path / "run")
    markdown = write_report(store, wandb=WandbOptions(enabled=False), figures="none")
    assert (store.folder / "table.md").read_text() == markdown
    assert f"Run folder: {store.folder}" in capsys.readouterr().out
    assert "| Nonlinear path exists | 1 (1) sampled | 0 (0) |" in markdown
    assert "Not yet decided" not in markdown
    times = {name: (store.folder / name).stat().st_mtime_ns for name in FILES}
    assert not list(store.folder.rglob("*.png")) and not (store.folder / "wandb").exists()
    write_report(store, figures="none")  # no W&B settings: no W&B
    assert {name: (store.folder / name).stat().st_mtime_ns for name in FILES} == times
    assert list(load_records(store.folder)) == ["input", "hidden"]


def test_pairs_not_decided_yet_are_counted_under_the_table(tmp_path: Path) -> None:
    store = run_folder(tmp_path / "run")
    store.record_path("hidden", 1).unlink()
    markdown = write_report(store, figures="none")
    assert "Not yet decided (rerun the same config to finish): hidden: 1" in markdown


def test_a_bad_figures_value_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = run_folder(tmp_path / "run")
    with pytest.raises(OptionsError, match="figures must be one of auto, all, none"):
        write_report(store, figures="some")
    assert not (store.folder / "table.md").exists()
