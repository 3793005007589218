"""A graph run's report from its records alone: components per model, space and class, the
edges, the models side by side, the misclassified inputs, and a figure per class."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from connectivity.reporting.graph_report import load_results, write_graph_report
from tests.store.graph_folder import graph_folder


def _rows(file: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(file.read_text())))


def test_components_edges_comparison_and_misclassified_of_two_models(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = graph_folder(tmp_path / "graph")
    markdown = write_graph_report(store, figures=False)
    assert (store.folder / "components.md").read_text() == markdown
    assert markdown in capsys.readouterr().out
    assert "* model 1: `b.ckpt`" in markdown
    components = _rows(store.folder / "components.csv")
    sizes = {(r["model"], r["class"]): r["sizes"] for r in components}
    assert sizes == {
        ("0", "zero"): "3",
        ("0", "one"): "2 1",
        ("1", "zero"): "2 1",
        ("1", "one"): "3",
    }
    assert all(r["settled"] == "True" and r["all_pairs"] == "3" for r in components)
    edges = _rows(store.folder / "edges.csv")
    assert len(edges) == 8 and {"steps", "verdict", "connected"} <= set(edges[0])
    (zero, one) = _rows(store.folder / "comparison.csv")
    assert (zero["same_components"], zero["edges_only_a"], zero["opposite_verdicts"]) == (
        "False",
        "1-2",
        "",
    )
    assert one["opposite_verdicts"] == "0-1"
    (row,) = _rows(store.folder / "misclassified.csv")
    assert (row["class"], row["predicted"], row["joins_components_of_predicted"]) == (
        "zero",
        "one",
        "0",
    )
    assert not (store.folder / "figures").exists()


def test_a_figure_per_model_space_and_class(tmp_path: Path) -> None:
    store = graph_folder(tmp_path / "graph")
    write_graph_report(store)
    files = sorted(p.relative_to(store.folder) for p in store.folder.rglob("*.png"))
    assert [str(f) for f in files] == [
        f"figures/model{k}/input/class_{c}.png" for k in (0, 1) for c in (0, 1)
    ]
    assert all((store.folder / f).read_bytes().startswith(b"\x89PNG") for f in files)


def test_results_are_read_per_model_space_and_class(tmp_path: Path) -> None:
    results = load_results(graph_folder(tmp_path / "graph"))
    assert [(r.model, r.label, r.indices) for r in results] == [
        (0, 0, [0, 1, 2]),
        (0, 1, [10, 11, 12]),
        (1, 0, [0, 1, 2]),
        (1, 1, [10, 11, 12]),
    ]
    assert results[1].found.components == [[0, 2], [1]] and results[1].found.pairs_decided == 2
