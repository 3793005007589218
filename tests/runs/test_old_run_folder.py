"""A run folder written by older code (``tests/data/run_2026-12-06``, see ``tests/old_run.py``)
resumes and reports with today's code, and its last pair is decided as the older code did."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from connectivity.data import DigitsDataModule
from connectivity.reporting.report import write_report
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.paths import run_paths
from connectivity.store.records import RunStore, figure_name
from tests import old_run


def test_a_run_folder_of_older_code_resumes_and_reports(tmp_path: Path) -> None:
    folder = tmp_path / old_run.FOLDER.name
    shutil.copytree(old_run.FOLDER, folder)
    store = RunStore(folder)
    assert store.done("input") == {0, 1, 2} and store.done("2") == {0, 1}
    kept = {p: p.read_bytes() for p in (folder / "records").rglob("*.pt")}

    run_paths(
        old_run.experiment(tmp_path),
        DigitsDataModule(size=8),
        wandb=WandbOptions(enabled=False),
        network=old_run.classifier(),
    )
    assert store.done("2") == {0, 1, 2}
    assert all(path.read_bytes() == data for path, data in kept.items())  # never rewritten
    table = (folder / "table.md").read_text()
    assert "| No path found | 3 (3) sampled | 3 (3) sampled |" in table
    assert "Not yet decided" not in table
    # The pair left undecided gets the verdict, steps and path the older code gave it.
    older = torch.load(old_run.FOLDER.parent / "run_2026-12-06_space_2_pair_0002.pt")
    now = store.load("2")[2]
    assert (now["verdict"], now["steps"], now["status"]) == (
        older["verdict"],
        older["steps"],
        older["status"],
    )
    assert torch.allclose(now["path"], older["path"], atol=1e-5)

    write_report(store, figures="all")
    for space in ("input", "2"):
        for pair in range(3):
            assert (folder / figure_name(space, pair)).stat().st_size > 1000
