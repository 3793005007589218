"""The W&B run of a path run folder, read back from its offline files: what it holds, that
it stays inside the folder (and travels with it), and that reruns add no second run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.reporting.report import (
    REPORTED_FILE,
    WANDB_ID_FILE,
    WandbOptions,
    offline_run_records,
    offline_runs,
    paths_logger,
    read_transaction_log,
    relocate_offline_runs,
    split_rows,
    write_report,
    write_transaction_log,
)
from connectivity.store.records import Pair, RunStore
from tests.toy import RingNet, Stripes, ring_images

CLASSES = ["ring", "rest"]
ENVIRONMENT = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR")


def _run_folder(folder: Path) -> RunStore:
    """A finished two-space run: ``input`` (1x2x2 images on RingNet's ring, one pair whose
    line crosses the hole) and ``hidden`` (8-dim points, Stripes, no images)."""
    store = RunStore(folder)
    checkpoint = folder.parent / f"{folder.name}-classifier.ckpt"
    checkpoint.write_bytes(b"weights of the toy classifier")
    pairs = [Pair(0, 0, 1, 0), Pair(1, 2, 3, 0)]
    store.start(
        {
            "classifier": str(checkpoint),
            "classifier_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "class_names": CLASSES,
            "spaces": ["input", "hidden"],
            "pairs": [asdict(p) for p in pairs],
            "path": {"num_pivots": 4, "steps": 150},
        }
    )
    options = PathOptions(num_pivots=4, steps=150, lr=0.05, bounds=(0.0, 1.0))
    start, end = ring_images()
    near = start.clone()
    near[0, 0] = torch.tensor([0.8, 0.7])  # on the ring beside `start`: a straight line joins
    starts, ends = torch.stack([start, start]), torch.stack([end, near])
    targets = torch.zeros(2, dtype=torch.long)
    for k, record in enumerate(connect_points(RingNet(), starts, ends, targets, options)):
        store.save("input", pairs[k], record)
    points = torch.rand(2, 2, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    hidden = connect_points(
        Stripes(), points[:, 0], points[:, 1], targets, PathOptions(num_pivots=4, steps=5)
    )
    for k, record in enumerate(hidden):
        store.save("hidden", pairs[k], record)
    return store


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME with no W&B directories set: anything W&B leaks outside the run folder
    lands here."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    for key in ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    return home


def _summary(records: list) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                keys = list(item.nested_key) or [item.key]
                summary.setdefault(keys[0], {})
                if len(keys) == 1:
                    summary[keys[0]] = json.loads(item.value_json)
                else:
                    summary[keys[0]][keys[1]] = json.loads(item.value_json)
    return summary


def _artifacts(records: list) -> dict[str, Any]:
    """Logged artifacts by name (the last version of each)."""
    return {
        r.artifact.name: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"
    }


def _table(folder: Path, artifact: Any, key: str) -> dict[str, Any]:
    """The table a run_table artifact holds, read from its staged file (named relative to the
    run folder)."""
    entry = next(e for e in artifact.manifest.contents if e.path == f"{key}.table.json")
    return json.loads((folder / entry.local_path).read_text())


def _visualized(records: list) -> dict[str, dict[str, Any]]:
    """The custom charts of a run: ``{key: panel spec}``."""
    charts = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                keys = list(item.nested_key)
                if keys[:2] == ["_wandb", "visualize"]:
                    charts[keys[2]] = json.loads(item.value_json)
    return charts


def _history_keys(records: list) -> set[str]:
    return {
        (list(item.nested_key) or [item.key])[0]
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }


def _leaked(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def test_the_offline_run_holds_points_profiles_table1_and_the_checkpoint(
    tmp_path: Path, home: Path
) -> None:
    store = _run_folder(tmp_path / "run")
    write_report(store, wandb=WandbOptions())
    (run,) = offline_runs(store.folder)
    run_id = (store.folder / WANDB_ID_FILE).read_text().strip()
    assert run.name.endswith(f"-{run_id}")
    assert json.loads((store.folder / REPORTED_FILE).read_text())["id"] == run_id
    records = offline_run_records(run)
    artifacts = _artifacts(records)

    points = _table(store.folder, artifacts[f"run-{run_id}-points"], "points")
    columns = points["columns"]
    assert {"p_ring", "p_rest", "predicted", "target", "energy", "position"} <= set(columns)
    rows = [dict(zip(columns, row, strict=True)) for row in points["data"]]
    # input: pair 0 crosses the hole (line and path), pair 1 is linear; hidden: two lines.
    assert len(rows) == 6 * (3 + 2)
    for row in rows:
        assert isinstance(row["p_ring"], float) and isinstance(row["p_rest"], float)
        assert row["p_ring"] + row["p_rest"] == pytest.approx(1.0, abs=1e-5)
        assert row["target_probability"] == row["p_ring"]
        assert row["energy"] == pytest.approx(-torch.tensor(row["p_ring"]).log().item(), 1e-3)
        assert row["predicted"] == ("ring" if row["p_ring"] > row["p_rest"] else "rest")
        assert 0.0 <= row["position"] <= 1.0
        assert row["softmax"]["_type"] == "image-file"
        assert (row["image"] is None) == (row["space"] == "hidden")
    assert {(r["space"], r["along"]) for r in rows} == {
        ("input", "line"),
        ("input", "path"),
        ("hidden", "line"),
    }

    charts = _visualized(records)
    assert charts["table1_chart"]["panel_config"]["panelDefId"] == "wandb/bar/v0"
    assert {"energy/input", "energy/hidden"} <= set(charts)
    table1 = _table(store.folder, artifacts[f"run-{run_id}-table1"], "table1")
    dense = {(r[0], r[1]): r[4] for r in table1["data"]}
    assert dense[("input", "nonlinear")] == 1 and dense[("hidden", "linear")] == 2
    profiles = _table(store.folder, artifacts[f"run-{run_id}-energy_profiles"], "energy_profiles")
    assert profiles["columns"][:3] == ["pair", "space", "along"] and len(profiles["data"]) == 30

    classifier = artifacts["classifier"]
    (entry,) = classifier.manifest.contents
    manifest = store.manifest()
    assert classifier.type == "model"
    assert entry.ref == Path(manifest["classifier"]).resolve().as_uri() and not entry.local_path
    assert json.loads(classifier.metadata)["sha256"] == manifest["classifier_sha256"]

    assert not _leaked(home)
    assert not any(key in os.environ for key in ENVIRONMENT)  # the caller's environment
    assert os.environ["WANDB_MODE"] == "offline"


def test_step_metrics_of_the_trainer_and_the_report_share_one_run(
    tmp_path: Path, home: Path
) -> None:
    store = _run_folder(tmp_path / "run")
    logger = paths_logger(store, WandbOptions())
    assert logger is not None
    for step in range(3):
        logger.log_metrics(
            {
                "input/max_energy": 2.0 - step,
                "input/max_force": 0.5,
                "input/on_target": step / 2,
                "input/active_pairs": 2 - step,
            },
            step=step,
        )
    assert not any(key in os.environ for key in ENVIRONMENT)
    write_report(store, wandb=WandbOptions())
    (run,) = offline_runs(store.folder)  # the logger's run, reused and finished
    records = offline_run_records(run)
    keys = _history_keys(records)
    assert {f"input/{m}" for m in ("max_energy", "max_force", "on_target", "active_pairs")} <= keys
    assert {"points", "table1", "energy_profiles"} <= keys
    assert {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"} == {
        (store.folder / WANDB_ID_FILE).read_text().strip()
    }
    assert not _leaked(home)


def _staged_entries(records: list) -> list[Any]:
    """The manifest entries of every logged artifact that name a staged file."""
    return [
        e
        for r in records
        if r.WhichOneof("record_type") == "artifact"
        for e in r.artifact.manifest.contents
        if e.local_path
    ]


def test_a_copied_run_folder_syncs_as_it_is(tmp_path: Path, home: Path) -> None:
    original = _run_folder(tmp_path / "run")
    write_report(original, wandb=WandbOptions())
    run_id = (original.folder / WANDB_ID_FILE).read_text().strip()
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(original.folder, copy)
    shutil.rmtree(original.folder)
    # No command runs in the copy: every file its offline run names lies inside it.
    (run,) = offline_runs(copy)
    records = offline_run_records(run)
    staged = 0
    for artifact in _artifacts(records).values():
        assert not Path(artifact.manifest.manifest_file_path).is_absolute()
        entries = {e.path: e for e in artifact.manifest.contents}
        for entry in entries.values():
            if entry.ref:
                # The classifier: a reference to the file outside the folder, by design (sync
                # uploads its path and digest, never the file).
                assert artifact.name == "classifier" and not entry.local_path
                continue
            # Relative to the run folder: `cd <folder> && wandb sync wandb/offline-run-*`.
            assert not Path(entry.local_path).is_absolute()
            file = (copy / entry.local_path).resolve()
            assert file.is_file() and copy.resolve() in file.parents
            staged += 1
            if entry.path.endswith(".table.json"):
                table = json.loads(file.read_text())
                for row in table["data"]:
                    for cell in row:
                        if isinstance(cell, dict) and "path" in cell:
                            assert cell["path"] in entries  # images travel with their table
    assert staged > 20
    files = run / "files"
    listed = [
        f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files
    ]
    assert listed and all((files / path).is_file() for path in listed)
    media = [
        json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
        if list(item.nested_key)[-1:] == ["path"]
    ]
    assert media and all((files / path).is_file() for path in media)
    # The marker names the run, not where the folder lay.
    assert json.loads((copy / REPORTED_FILE).read_text()) == {"id": run_id}
    assert not _leaked(home)

    # A folder logged by an earlier version names its staged files by absolute path, under
    # where it lay then: relocating the copy makes them relative to it again.
    from wandb.proto.wandb_internal_pb2 import Record

    raws = read_transaction_log(next(run.glob("run-*.wandb")))
    absolute = []
    for raw in raws:
        record = Record()
        record.ParseFromString(raw)
        for entry in _staged_entries([record]):
            entry.local_path = str(original.folder.resolve() / entry.local_path)
        absolute.append(record.SerializeToString())
    log = next(run.glob("run-*.wandb"))
    # A log W&B has not finished (no exit record yet) is never rewritten under its writer.
    write_transaction_log(log, absolute[:-1])
    with pytest.warns(RuntimeWarning, match="still being written by W&B"):
        relocate_offline_runs(copy, finished=run_id, wait=0.0)
    assert read_transaction_log(log) == absolute[:-1]
    write_transaction_log(log, absolute)
    assert all(Path(e.local_path).is_absolute() for e in _staged_entries(offline_run_records(run)))
    assert relocate_offline_runs(copy) == [run]
    relocated = _staged_entries(offline_run_records(run))
    assert [e.local_path for e in relocated] == [e.local_path for e in _staged_entries(records)]


def test_reports_of_a_logged_run_add_no_second_run_unless_asked(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture
) -> None:
    store = _run_folder(tmp_path / "run")
    write_report(store, wandb=WandbOptions())
    first = (store.folder / WANDB_ID_FILE).read_text().strip()
    capsys.readouterr()
    write_report(store, wandb=WandbOptions())
    out = capsys.readouterr().out
    assert "W&B already holds this folder's report" in out
    # ...but it is offline: how to upload it is said again, not only on the first report.
    assert f"upload it with `cd {store.folder} && wandb sync wandb/offline-run-*`" in out
    assert paths_logger(store, WandbOptions()) is None
    assert len(offline_runs(store.folder)) == 1

    write_report(store, wandb=WandbOptions(relog=True))
    second = (store.folder / WANDB_ID_FILE).read_text().strip()
    runs = offline_runs(store.folder)
    # Two runs may start in the same second: their folders then sort by id, not by time.
    assert second != first and sorted(r.name[-len(second) :] for r in runs) == sorted(
        [first, second]
    )
    assert json.loads((store.folder / REPORTED_FILE).read_text())["id"] == second


def test_the_transaction_log_is_rewritten_as_wandb_writes_it(tmp_path: Path, home: Path) -> None:
    import wandb

    from connectivity.reporting.report import run_folder_environment

    # A config record of 100 kB spans four 32 KiB blocks of W&B's own writer.
    with run_folder_environment(tmp_path):
        run = wandb.init(dir=tmp_path, mode="offline", config={"long": "x" * 100_000})
        run.finish()
        # finish() can return before W&B's service process has written the file's last block
        # (seen under load); teardown waits for the service to end.
        wandb.teardown()
    (file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    written = file.read_bytes()
    records = read_transaction_log(file)
    assert len(written) > 3 * 32 * 1024 and any(len(r) > 100_000 for r in records)
    write_transaction_log(file, records)
    assert file.read_bytes() == written
    synthetic = [b"a" * 40_000, b"", b"b" * (32 * 1024 - 14), b"c" * 7, b"d"]
    write_transaction_log(tmp_path / "x.wandb", synthetic)
    assert read_transaction_log(tmp_path / "x.wandb") == synthetic


def test_split_rows_keeps_walks_whole_and_order() -> None:
    rows = [[k] for k in range(10)]
    groups = list("aaabbccccc")
    parts = split_rows(rows, 4, groups)
    assert [[r[0] for r in part] for part in parts] == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]
    assert split_rows(rows, 10) == [rows] and split_rows([], 3) == [[]]
    assert [len(p) for p in split_rows(rows, 3)] == [3, 3, 3, 1]


def test_tables_longer_than_wandb_keeps_reach_the_run_whole_in_parts(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Issue 18: W&B keeps the first wandb.Table.MAX_ROWS rows (10,000) of a table in the run's
    # copy and MAX_ARTIFACT_ROWS (200,000) in its artifact. The same limits, made small: the
    # 30 rows of `points` (5 walks of 6 points) no longer fit one table.
    import wandb

    monkeypatch.setattr(wandb.Table, "MAX_ROWS", 13)
    monkeypatch.setattr(wandb.Table, "MAX_ARTIFACT_ROWS", 13)
    store = _run_folder(tmp_path / "run")
    write_report(store, wandb=WandbOptions(), figures="none")
    (run,) = offline_runs(store.folder)
    run_id = (store.folder / WANDB_ID_FILE).read_text().strip()
    artifacts = _artifacts(offline_run_records(run))
    out = capsys.readouterr().out
    for key, parts in (("points", 3), ("energy_profiles", 3)):
        names = [key] + [f"{key}_part{n}" for n in range(2, parts + 1)]
        tables = [_table(store.folder, artifacts[f"run-{run_id}-{name}"], name) for name in names]
        assert f"run-{run_id}-{key}_part{parts + 1}" not in artifacts
        # every row made reached the run: in its artifacts and in the run's own copies
        rows = [tuple(map(str, row)) for table in tables for row in table["data"]]
        assert [len(t["data"]) for t in tables] == [12, 12, 6] and len(set(rows)) == 30
        copies = [
            json.loads(f.read_text())["data"]
            for name in names
            for f in (run / "files" / "media" / "table").glob(f"{name}_[0-9]*.table.json")
        ]
        assert sum(len(c) for c in copies) == 30
        assert f"{key} (30 rows) is logged whole in 3 tables, {key} to {key}_part3" in out
    # each walk (a pair's line or path) lies in one part
    points = _table(store.folder, artifacts[f"run-{run_id}-points"], "points")
    walks = {(row[0], row[1], row[3]) for row in points["data"]}
    assert len(walks) == 2
