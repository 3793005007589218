"""The report's tables: verdict counts per space and check, and one row per pair and space."""

from __future__ import annotations

import csv
import io

import torch

from connectivity.reporting.tables import (
    PAIR_COLUMNS,
    csv_text,
    markdown_table,
    pairs_csv,
    table_csv,
    table_markdown,
    verdict_sentence,
    verdict_table,
)
from tests.reporting.folders import NAMES, line_records


def test_counts_per_space_split_by_the_check_they_rest_on() -> None:
    linear, crossing = line_records()
    exact = {**crossing, "certificate": "exact", "pair": {**crossing["pair"], "id": 2}}
    bounds = {**crossing, "certificate": "bounds", "pair": {**crossing["pair"], "id": 3}}
    table = verdict_table({"input": [linear, crossing, exact, bounds], "layer": [linear]})
    assert table["input"]["dense"] == {"linear": 1, "nonlinear": 0, "none": 3, "diverged": 0}
    assert table["input"]["exact"]["none"] == 1 and table["input"]["sampled"]["none"] == 1
    assert table["input"]["bounds"]["none"] == 1
    assert table["layer"]["pivots"]["linear"] == 1
    markdown = table_markdown(table, 4)
    assert "| No path found | 3 (3): 1 exact, 1 bounds, 1 sampled | 0 (0) |" in markdown
    assert "| Linear path exists | 1 (1) sampled | 1 (1) sampled |" in markdown
    assert markdown.startswith("Pairs: 4.")
    rows = list(csv.reader(io.StringIO(table_csv(table))))
    assert rows[0] == ["space", "check", "linear", "nonlinear", "none", "diverged"]
    assert ["input", "exact", "0", "0", "1", "0"] in rows and len(rows) == 1 + 2 * 5
    assert ["input", "bounds", "0", "0", "1", "0"] in rows


def test_records_from_before_certificates_count_as_sampled() -> None:
    old = [{k: v for k, v in r.items() if k != "certificate"} for r in line_records()]
    table = verdict_table({"input": old})
    assert table["input"]["sampled"] == table["input"]["dense"]
    assert "| Linear path exists | 1 (1) sampled |" in table_markdown(table, 2)


def test_pair_rows_name_their_figure_only_where_one_is_drawn() -> None:
    linear, crossing = line_records()
    text = pairs_csv({"input": [linear, crossing]}, NAMES, drawn={("input", 1)})
    rows = [dict(zip(PAIR_COLUMNS, row, strict=True)) for row in csv.reader(io.StringIO(text))]
    assert list(rows[0]) == list(rows[0].values())  # the header
    first, second = rows[1:]
    assert (first["verdict"], first["class"], first["figure"]) == ("linear", "zero", "")
    assert second["figure"] == "figures/input/pair_0001.png"
    assert float(second["min_margin"]) == -2.0 and second["start_index"] == "11"
    # A record saved before it kept its distances from the line: measured from its points.
    assert float(second["max_distance_l2"]) == 0.0
    stretched = {**crossing, "off_target_intervals": torch.tensor([[0.5, 1.0]])}
    text = pairs_csv({"input": [stretched]}, NAMES)
    assert "0.5-1" in text and "figures/input/pair_0001.png" in text


def test_a_verdict_sentence_names_the_check_margin_and_pivot_verdict() -> None:
    _, crossing = line_records()
    assert verdict_sentence(crossing) == (
        "verdict none (sampled check, min margin -2; pivots only: none)"
    )


def test_csv_and_markdown_tables_of_plain_rows() -> None:
    assert csv_text(["a", "b"], [[1, "x,y"]]) == 'a,b\r\n1,"x,y"\r\n'
    assert markdown_table(["a", "b"], [[0.123456, ""]]) == [
        "| a | b |",
        "|---|---|",
        "| 0.1235 | - |",
    ]
