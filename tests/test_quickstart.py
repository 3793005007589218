"""`connectivity quickstart` end to end, as a new user runs it.

No wall-clock assertions (machines are shared and noisy): the README reports measured times.
"""

from __future__ import annotations

import json
from pathlib import Path

from connectivity.cli import main
from connectivity.records import RunStore


def test_quickstart_runs_every_stage_then_reuses_them(in_tmp: Path) -> None:
    main(["quickstart"])
    folder = in_tmp / "lightning_logs" / "quickstart"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary) == {"classifier", "decoder layer1", "decoder flatten", "paths"}
    # issue 2: the quick classifier reaches at least 95% test accuracy
    assert summary["classifier"]["test"]["test/acc"] >= 0.95
    for layer in ("layer1", "flatten"):
        assert (folder / f"decoder_{layer}.ckpt").is_file()
    store = RunStore(folder / "paths")
    for space in ("input", "layer1", "flatten"):
        assert store.done(space) == set(range(25))
        assert len(list((store.folder / "figures" / space).glob("pair_*.png"))) == 25
    table = (store.folder / "table.md").read_text()
    assert table.count("|") > 20 and "Not yet decided" not in table
    assert len(list((in_tmp / "lightning_logs" / "wandb").glob("offline-run-*"))) == 3
    assert len(list((store.folder / "wandb").glob("offline-run-*"))) == 1

    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    main(["quickstart"])  # every stage is reused: no file is written again
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps
