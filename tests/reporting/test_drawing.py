"""Which pair figures a report draws (``figures: auto | all | none``), and that a report of a
finished run draws only what is missing or stale."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from connectivity.cli.commands import report, report_parser
from connectivity.errors import OptionsError
from connectivity.reporting.drawing import STAMPS_FILE, figures_to_draw
from connectivity.reporting.report import write_report
from connectivity.runs.paths import Experiment
from connectivity.store.records import RunStore, figure_name
from tests.reporting.folders import run_folder as _run_folder


def _record(pair_id: int, verdict: str, margin: float) -> dict[str, Any]:
    """The fields the choice reads: the lowest margin along the line (linear) or the path."""
    return {"pair": {"id": pair_id}, "verdict": verdict, "line_min_margin": margin, "min_margin": 1}


def test_auto_draws_every_pair_off_the_line_and_the_closest_linear_calls() -> None:
    margins = {0: 2.0, 2: 0.5, 4: 0.1, 6: 0.5, 7: 3.0, 9: 0.5}  # linear pairs' line margins
    others = {1: "nonlinear", 3: "none", 5: "diverged", 8: "nonlinear"}
    records = [_record(i, "linear", m) for i, m in margins.items()]
    records += [_record(i, v, -1.0) for i, v in others.items()]
    by_space = {"input": records, "layer1": [_record(0, "linear", 5.0), _record(1, "linear", 1)]}
    auto = figures_to_draw(by_space, "auto")
    # input: 1, 3, 5, 8 are off the line; 4 (0.1) then 2 and 6 (0.5, ties: the lower ids).
    assert auto == {("input", i) for i in (1, 3, 5, 8, 4, 2, 6)} | {("layer1", 0), ("layer1", 1)}
    assert figures_to_draw(by_space, "auto", closest=1) == {
        ("input", i) for i in (1, 3, 5, 8, 4)
    } | {("layer1", 1)}
    everything = {(s, r["pair"]["id"]) for s, rs in by_space.items() for r in rs}
    assert figures_to_draw(by_space, "all") == everything
    assert figures_to_draw(by_space, "none") == set()


def test_a_bad_figures_value_is_one_line_before_any_work(tmp_path: Path) -> None:
    nowhere = tmp_path / "no such run"  # read first, it would fail on the folder instead
    message = "^figures must be one of auto, all, none, got 'every'; [^\\n]*$"
    with pytest.raises(OptionsError, match=message):
        write_report(RunStore(nowhere), figures="every")
    parsed = report_parser().parse_args([str(nowhere), "--figures", "every"])
    with pytest.raises(OptionsError, match=message):
        report(parsed.folder, figures=parsed.figures)  # as `connectivity report` calls it
    with pytest.raises(OptionsError, match="got 'some'"):
        Experiment(classifier="c.ckpt", name="n", figures="some")  # paths: config and CLI
    assert not nowhere.exists()


def _times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.png")}


def _figure_column(folder: Path) -> dict[tuple[str, int], str]:
    rows = csv.DictReader((folder / "pairs.csv").read_text().splitlines())
    return {(r["space"], int(r["pair"])): r["figure"] for r in rows}


def test_a_finished_runs_report_draws_only_missing_or_stale_figures(tmp_path: Path) -> None:
    store = _run_folder(tmp_path / "run")
    folder = store.folder
    names = [figure_name(s, i) for s in ("input", "hidden") for i in (0, 1)]
    write_report(store, figures="all")
    first = _times(folder)
    assert sorted(first) == sorted(names)
    assert set(json.loads((folder / STAMPS_FILE).read_text())["figures"]) == set(names)

    # Figures there and newer than their records: the report draws nothing.
    stamps = (folder / STAMPS_FILE).read_text()
    write_report(store, figures="all")
    assert _times(folder) == first and (folder / STAMPS_FILE).read_text() == stamps

    # A folder from before the stamps: a missing figure and one older than its record are
    # drawn again, and only they.
    (folder / STAMPS_FILE).unlink()
    (folder / names[0]).unlink()
    record = store.record_path("hidden", 1).stat().st_mtime_ns
    os.utime(folder / names[3], ns=(record - 10**9, record - 10**9))
    write_report(store, figures="all")
    again = _times(folder)
    changed = {name for name in names if again[name] != first[name]}
    assert changed == {names[0], names[3]}

    # A figure drawn with another decoder (its stamp says so) is drawn again, though newer.
    held = json.loads((folder / STAMPS_FILE).read_text())
    held["figures"][names[1]]["decoder"] = "another decoder"
    (folder / STAMPS_FILE).write_text(json.dumps(held))
    write_report(store, figures="all")
    third = _times(folder)
    assert {name for name in names if third[name] != again[name]} == {names[1]}

    # `none` draws nothing; a stale figure it does not ask for is removed, not left wrong.
    held = json.loads((folder / STAMPS_FILE).read_text())
    held["figures"][names[2]]["code"] = "older drawing code"
    (folder / STAMPS_FILE).write_text(json.dumps(held))
    write_report(store, figures="none")
    assert _times(folder) == {n: t for n, t in third.items() if n != names[2]}
    column = _figure_column(folder)
    assert column[("hidden", 0)] == "" and column[("input", 0)] == names[0]


def test_auto_closest_linear_calls_are_judged_between_the_ends_and_spread_over_inputs() -> None:
    def line(pair_id: int, ends: tuple[int, int], margins: list[float]) -> dict[str, Any]:
        position = torch.linspace(0, 1, len(margins))
        return {
            "pair": {"id": pair_id, "start_index": ends[0], "end_index": ends[1]},
            "verdict": "linear",
            "line_min_margin": min(margins),
            "line_check_position": position,
            "line_check_margin": torch.tensor(margins),
            "line_check_predicted": torch.zeros(len(margins), dtype=torch.long),
        }

    records = [
        line(0, (7, 1), [0.1, 2.0, 2.0, 3.0]),  # weak at its end (input 7), not between
        line(1, (7, 2), [0.1, 1.0, 1.5, 3.0]),  # input 7 again, 1.0 between the ends
        line(2, (3, 4), [3.0, 0.9, 1.2, 3.0]),  # dips to 0.9 between its ends
        line(3, (5, 6), [3.0, 1.1, 2.0, 3.0]),
        line(4, (8, 7), [3.0, 0.95, 2.0, 0.1]),  # input 7 at its end, 0.95 between
    ]
    # Between the ends: 2 (0.9), 4 (0.95), 1 (1.0), 3 (1.1), 0 (2.0).
    assert figures_to_draw({"s": records}, "auto", closest=2) == {("s", 2), ("s", 4)}
    # Three: 1 shares input 7 with 4, so 3 comes first.
    assert figures_to_draw({"s": records}, "auto", closest=3) == {("s", i) for i in (2, 4, 3)}
    # Four: no pair left without input 7, so the closest of them, 1.
    assert figures_to_draw({"s": records}, "auto", closest=4) == {("s", i) for i in (2, 4, 3, 1)}
