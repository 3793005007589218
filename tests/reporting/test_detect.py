"""Path scores as a detector of adversarial pairs (issue 23): AUROCs per space against hand
counts of ranked pairs, NaN scores left out and counted, spaces without a kind of pair, the
figure, and the report's and W&B's detect files only for runs with adversarial pairs."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from connectivity.reporting.detect import (
    DETECT_FIGURE,
    detect_csv,
    detect_figure,
    detect_markdown,
    detect_rows,
    write_detect,
)
from connectivity.reporting.report import write_report
from connectivity.reporting.wandb_log import WandbOptions, offline_run_records, offline_runs
from connectivity.store.files import read_tensor, write_tensor
from connectivity.store.records import RunStore
from tests.reporting.folders import run_folder

DETECT_FILES = ("detect.md", "detect.csv", DETECT_FIGURE)
NAN = math.nan


def _record(pair_id: int, adversarial: bool | None, **scores: float) -> dict[str, Any]:
    """A hand-made saved record holding only what the scores are read from. ``adversarial``
    None: a record saved before pairs had the flag (natural)."""
    pair = {"id": pair_id, "start_index": 2 * pair_id, "end_index": 2 * pair_id + 1, "label": 0}
    if adversarial is not None:
        pair["adversarial"] = adversarial
    return {"pair": pair, "verdict": "nonlinear", "target": 0, **scores}


def _diverged(pair_id: int, adversarial: bool, line_barrier: float) -> dict[str, Any]:
    """A record whose path diverged: NaN energies and margins on the path (none kept, as an old
    record: the report reads them off the energies and the checked points), a finite line."""
    return _record(
        pair_id,
        adversarial,
        barrier=NAN,
        min_margin=NAN,
        max_energy=NAN,
        path_energy=torch.tensor([0.1, NAN, 0.2]),
        check_position=torch.tensor([0.0, 0.5, 1.0]),
        check_margin=torch.full((3,), NAN),
        check_predicted=torch.zeros(3, dtype=torch.long),
        line_barrier=line_barrier,
        line_min_margin=1.0,
    )


def _by_space() -> dict[str, list[dict[str, Any]]]:
    """``input``: natural, natural, adversarial, adversarial. ``hidden``: three natural pairs
    (one without the flag) and one adversarial. ``latent``: natural pairs only."""
    return {
        "input": [
            _record(0, False, barrier=0.1, line_barrier=0.5, min_margin=2.0, line_min_margin=1.0),
            _record(1, False, barrier=0.4, line_barrier=0.2, min_margin=0.5, line_min_margin=3.0),
            _record(2, True, barrier=0.35, line_barrier=0.3, min_margin=1.0, line_min_margin=1.0),
            _record(3, True, barrier=0.8, line_barrier=0.1, min_margin=-0.3, line_min_margin=2.0),
        ],
        "hidden": [
            _record(0, None, barrier=0.2, line_barrier=1.0, min_margin=1.0, line_min_margin=1.0),
            _record(1, False, barrier=0.9, line_barrier=1.0, min_margin=1.0, line_min_margin=1.0),
            _record(2, False, barrier=0.5, line_barrier=1.0, min_margin=1.0, line_min_margin=1.0),
            _record(3, True, barrier=0.6, line_barrier=1.0, min_margin=1.0, line_min_margin=1.0),
        ],
        "latent": [
            _record(0, False, barrier=0.1, line_barrier=0.1, min_margin=1.0, line_min_margin=1.0),
            _record(1, False, barrier=0.2, line_barrier=0.2, min_margin=1.0, line_min_margin=1.0),
        ],
    }


def _areas(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float | None]:
    return {(r["space"], r["score"]): r["auroc"] for r in rows}


def test_auroc_per_space_and_score_is_the_share_of_adversarial_natural_pairs_ranked_right() -> None:
    rows = detect_rows(_by_space())
    areas = _areas(rows)
    # input, adversarial above natural out of the 4 (adversarial, natural) pairs, ties 1/2:
    # barrier 0.35 > 0.1, 0.35 < 0.4, 0.8 > both: 3/4.
    assert areas[("input", "barrier")] == pytest.approx(0.75)
    # line_barrier 0.3 > 0.2 only, 0.1 above neither: 1/4 (this score ranks them wrongly).
    assert areas[("input", "line_barrier")] == pytest.approx(0.25)
    # margin = -min_margin: -1.0 > -2.0, -1.0 < -0.5, 0.3 > both: 3/4 (min_margin itself: 1/4).
    assert areas[("input", "margin")] == pytest.approx(0.75)
    # line_margin -1 vs (-1, -3): 1/2 + 1; -2 vs (-1, -3): 0 + 1: 2.5/4.
    assert areas[("input", "line_margin")] == pytest.approx(0.625)
    # hidden: 0.6 above 0.2 and 0.5, below 0.9 (the flagless record counts as natural): 2/3;
    # every score tied: chance.
    assert areas[("hidden", "barrier")] == pytest.approx(2 / 3)
    assert areas[("hidden", "line_barrier")] == pytest.approx(0.5)
    counts = {(r["space"], r["n_adversarial"], r["n_natural"], r["left_out"]) for r in rows}
    assert counts == {("input", 2, 2, 0), ("hidden", 1, 3, 0), ("latent", 0, 2, 0)}


def test_a_space_without_adversarial_pairs_says_why_it_has_no_auroc() -> None:
    rows = detect_rows(_by_space())
    latent = [r for r in rows if r["space"] == "latent"]
    assert [r["score"] for r in latent] == ["barrier", "line_barrier", "margin", "line_margin"]
    assert all(r["auroc"] is None and r["note"] == "no adversarial pair: no AUROC" for r in latent)
    markdown = detect_markdown(rows)
    assert "| latent | barrier | - | 0 | 2 | 0 | no adversarial pair: no AUROC |" in markdown
    assert "| input | line_margin | 0.625 | 2 | 2 | 0 | - |" in markdown
    assert "0.5 = chance, 1 = every adversarial pair above every natural one" in markdown
    table = list(csv.DictReader(io.StringIO(detect_csv(rows))))
    assert len(table) == 12
    assert {r["auroc"] for r in table if r["space"] == "latent"} == {""}
    assert float(next(r["auroc"] for r in table if r["space"] == "hidden")) == pytest.approx(2 / 3)


def test_pairs_with_a_nan_score_are_left_out_of_that_score_and_counted() -> None:
    records = [
        _record(0, False, barrier=0.1, line_barrier=0.2, min_margin=2.0, line_min_margin=1.0),
        _diverged(1, False, line_barrier=0.9),
        _record(2, True, barrier=0.35, line_barrier=0.3, min_margin=1.0, line_min_margin=1.0),
        _record(3, True, barrier=0.8, line_barrier=0.1, min_margin=-0.3, line_min_margin=1.0),
    ]
    rows = {r["score"]: r for r in detect_rows({"input": records})}
    for score in ("barrier", "margin"):  # the diverged natural pair is out: both adversarial win
        assert rows[score]["auroc"] == pytest.approx(1.0)
        assert (rows[score]["n_adversarial"], rows[score]["n_natural"]) == (2, 1)
        assert rows[score]["left_out"] == 1
        assert rows[score]["note"] == "1 left out: score not finite"
    # Its line is finite: it counts there (0.3 > 0.2 only): 1/4.
    assert rows["line_barrier"]["auroc"] == pytest.approx(0.25)
    assert (rows["line_barrier"]["n_natural"], rows["line_barrier"]["left_out"]) == (2, 0)

    natural = _record(1, False, barrier=0.1, line_barrier=0.1, min_margin=1.0, line_min_margin=1.0)
    all_out = [_diverged(0, True, 0.5), natural]
    (row,) = [r for r in detect_rows({"input": all_out}) if r["score"] == "barrier"]
    assert row["auroc"] is None and row["left_out"] == 1
    assert row["note"] == (
        "no adversarial pair with a finite score: no AUROC; 1 left out: score not finite"
    )
    # The figure names the scores without an AUROC rather than dropping them.
    (panel,) = detect_figure({"input": all_out}).axes
    assert [t.get_text() for t in panel.get_legend().get_texts()] == [
        "chance (0.5)",
        "barrier (no AUROC)",
        "line_barrier (1.000)",
        "margin (no AUROC)",
        "line_margin (0.500)",
    ]


def _png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a PNG from its IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_figure_has_one_roc_panel_per_space_and_a_second_write_rewrites_nothing(
    tmp_path: Path,
) -> None:
    by_space = _by_space()
    figure = detect_figure(by_space)
    assert len(figure.axes) == 3
    # input: the chance diagonal and four curves; latent: the diagonal only, and why.
    assert [len(ax.get_lines()) for ax in figure.axes] == [5, 5, 1]
    assert "no adversarial pair" in figure.axes[2].texts[0].get_text()
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == [
        "chance (0.5)",
        "barrier (0.750)",
        "line_barrier (0.250)",
        "margin (0.750)",
        "line_margin (0.625)",
    ]
    # The barrier's curve: thresholds 0.8, 0.4, 0.35, 0.1 flag adv, nat, adv, nat.
    fpr, tpr = figure.axes[0].get_lines()[1].get_data()
    assert list(zip(fpr, tpr, strict=True))[-4:] == [(0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1)]

    store = RunStore(tmp_path / "run")
    markdown = write_detect(store, by_space)
    assert (store.folder / "detect.md").read_text() == markdown
    width, height = _png_size((store.folder / DETECT_FIGURE).read_bytes())
    assert width > 2.5 * height  # three square panels side by side
    times = [(store.folder / name).stat().st_mtime_ns for name in DETECT_FILES]
    write_detect(store, by_space)
    assert [(store.folder / name).stat().st_mtime_ns for name in DETECT_FILES] == times


def _mark_adversarial(store: RunStore, space: str, pair_id: int) -> None:
    """Flag a saved record's pair as adversarial, as a run with adversarial starts saves it."""
    file = store.record_path(space, pair_id)
    record = read_tensor(file)
    record["pair"]["adversarial"] = True
    write_tensor(file, record)


def _logged_table(folder: Path, records: list, key: str) -> dict[str, Any]:
    """The table ``key`` the offline run logged, read from its staged ``run_table`` artifact
    (a chart's table is ``<chart key>_table``)."""
    entries = [e for r in records for e in r.artifact.manifest.contents]
    entry = next(e for e in entries if e.path == f"{key}.table.json")
    return json.loads((folder / entry.local_path).read_text())


def test_the_report_writes_detect_files_only_for_runs_with_adversarial_pairs(
    tmp_path: Path,
) -> None:
    store = run_folder(tmp_path / "run")
    write_report(store, wandb=WandbOptions(enabled=False), figures="none")
    assert not any((store.folder / name).exists() for name in DETECT_FILES)

    # Input pair 0's line crosses the ring's hole (nonlinear: its line's margin goes below 0),
    # pair 1's stays on the ring (linear: above 0): flagged, pair 0 is ranked first.
    _mark_adversarial(store, "input", 0)
    write_report(store, wandb=WandbOptions(), figures="none")
    table = {
        (r["space"], r["score"]): r
        for r in csv.DictReader(io.StringIO((store.folder / "detect.csv").read_text()))
    }
    assert float(table[("input", "line_margin")]["auroc"]) == 1.0
    assert table[("hidden", "barrier")]["auroc"] == ""
    assert table[("hidden", "barrier")]["note"] == "no adversarial pair: no AUROC"
    assert (store.folder / DETECT_FIGURE).is_file()

    (run,) = offline_runs(store.folder)
    everything = offline_run_records(run)
    charts = {
        list(item.nested_key)[2]: json.loads(item.value_json)
        for r in everything
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
        if list(item.nested_key)[:2] == ["_wandb", "visualize"]
    }
    assert charts["detect_roc/input"]["panel_config"]["panelDefId"] == "wandb/line/v0"
    assert "detect_roc/hidden" not in charts  # no adversarial pair there: no curve
    records = [r for r in everything if r.WhichOneof("record_type") == "artifact"]
    logged = _logged_table(store.folder, records, "detect")
    rows = [dict(zip(logged["columns"], row, strict=True)) for row in logged["data"]]
    assert len(rows) == 8
    line_margin = next(r for r in rows if (r["space"], r["score"]) == ("input", "line_margin"))
    assert line_margin["auroc"] == 1.0 and line_margin["n_adversarial"] == 1
    roc = _logged_table(store.folder, records, "detect_roc/input_table")
    assert roc["columns"] == ["score", "fpr", "tpr"]
    # One adversarial and one natural pair, ranked right by every score: (0,0), (0,1), (1,1).
    curves = {score: [] for score in ("barrier", "line_barrier", "margin", "line_margin")}
    for score, fpr, tpr in roc["data"]:
        curves[score].append((fpr, tpr))
    assert all(points[-3:] == [(0, 0), (0, 1), (1, 1)] for points in curves.values())
    staged = {e.path for r in records for e in r.artifact.manifest.contents}
    assert "detect_roc/hidden_table.table.json" not in staged  # no adversarial pair: no curve
