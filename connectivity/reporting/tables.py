"""The tables of a path run's report: verdict counts per space (the paper's Table 1, as
Markdown and CSV) and one row per pair and space (``pairs.csv``, W&B's ``pairs``).

Plain text from saved records; the files are written by the store
(:class:`~connectivity.store.records.RunStore`), the W&B tables by
:mod:`connectivity.reporting.wandb_log`.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from typing import Any

from torch import Tensor

from connectivity.engine.checks import distances_from_line
from connectivity.engine.decisions import Verdict
from connectivity.reporting.figures import lowest_margin
from connectivity.store.records import figure_name

VERDICTS = [v.value for v in Verdict]
ROW_NAMES = {
    "linear": "Linear path exists",
    "nonlinear": "Nonlinear path exists",
    "none": "No path found",
    "diverged": "Diverged",
}


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """``rows`` under ``header`` as CSV text."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown pipe table; floats with 4 significant digits, empty cells
    as ``-``."""

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(v) or "-" for v in row) + " |" for row in rows),
    ]


def count_verdicts(records: list[dict[str, Any]], key: str = "verdict") -> dict[str, int]:
    """How many records have each verdict (all verdicts present, zeros included)."""
    counts = Counter(r[key] for r in records)
    return {v: counts.get(v, 0) for v in VERDICTS}


CERTIFICATES = ("exact", "bounds", "sampled")


def verdict_table(by_space: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict]]:
    """``{space: {"dense": counts, "pivots": counts, "exact": counts, "sampled": counts}}``:
    the verdicts, the pivots-only verdicts, and the verdicts that rest on each certificate
    (``exact + bounds + sampled = dense``; records from before certificates count as
    sampled)."""
    table = {}
    for space, rs in by_space.items():
        table[space] = {"dense": count_verdicts(rs), "pivots": count_verdicts(rs, "pivot_verdict")}
        for certificate in CERTIFICATES:
            kept = [r for r in rs if r.get("certificate", "sampled") == certificate]
            table[space][certificate] = count_verdicts(kept)
    return table


def _cell(checks: dict[str, dict], verdict: str) -> str:
    """``count (pivots-only count)`` and the certificate the count rests on."""
    count = checks["dense"][verdict]
    cell = f"{count} ({checks['pivots'][verdict]})"
    by_certificate = {c: checks.get(c, {}).get(verdict, 0) for c in CERTIFICATES}
    if count == 0:
        return cell
    if "exact" not in checks:  # a table of records from before certificates: all sampled
        return f"{cell} sampled"
    parts = [c for c in CERTIFICATES if by_certificate[c]]
    if len(parts) == 1:
        return f"{cell} {parts[0]}"
    return f"{cell}: " + ", ".join(f"{by_certificate[c]} {c}" for c in parts)


def table_markdown(table: dict[str, dict[str, dict]], pairs: int) -> str:
    """The paper's Table 1 layout, with the pivot-only count in brackets beside each count and
    the check each count rests on: ``exact`` or ``bounds`` (every point of the line or path
    proven in the class, or a point proven off it: ExactLine, or bound propagation) or
    ``sampled`` (evenly spaced points only)."""
    spaces = list(table)
    lines = [
        f"Pairs: {pairs}. Each cell: pairs with that verdict (pivots-only verdict as in the "
        "paper, in brackets), and the check the verdicts rest on: exact or bounds (every "
        "point of the path, by ExactLine or by bound propagation) or sampled (evenly spaced "
        "points).",
        "",
        "| | " + " | ".join(spaces) + " |",
        "|---|" + "---|" * len(spaces),
    ]
    for verdict in VERDICTS:
        cells = [_cell(table[s], verdict) for s in spaces]
        lines.append(f"| {ROW_NAMES[verdict]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(table: dict[str, dict[str, dict]]) -> str:
    """``table.csv``: one row per space and check (dense, pivots, exact, bounds, sampled), one count
    column per verdict."""
    rows = [
        [space, check, *(counts[v] for v in VERDICTS)]
        for space, checks in table.items()
        for check, counts in checks.items()
    ]
    return csv_text(["space", "check", *VERDICTS], rows)


def ends_text(pair: dict[str, Any], arrow: str = "->") -> str:
    """``items 3 -> 17`` of a saved record's pair, saying when its end is an adversarial
    example (its index then counts past the split: the examples follow it)."""
    text = f"items {pair['start_index']} {arrow} {pair['end_index']}"
    return text + " (adversarial end)" if pair.get("adversarial") else text


def verdict_sentence(record: dict[str, Any]) -> str:
    """``"verdict nonlinear (sampled check, min margin 2.04; pivots only: linear)"``."""
    margin = lowest_margin(record)
    return (
        f"verdict {record['verdict']} ({record.get('certificate', 'sampled')} check, min margin "
        f"{margin:.3g}; pivots only: {record['pivot_verdict']})"
    )


PAIR_COLUMNS = [
    "space",
    "pair",
    "start_index",
    "end_index",
    "class",
    "ends",
    "verdict",
    "pivot_verdict",
    "certificate",
    "status",
    "steps",
    "max_energy",
    "min_target_probability",
    "barrier",
    "line_barrier",
    "certificate_note",
    "min_margin",
    "line_min_margin",
    "pieces",
    "line_pieces",
    "min_margin_lower_bound",
    "line_min_margin_lower_bound",
    "sub_intervals",
    "line_sub_intervals",
    "off_target",
    "line_off_target",
    "length_ratio",
    "max_distance_l2",
    "max_distance_linf",
    "figure",
]


def _stretches_text(stretches: Tensor | None) -> str:
    """Off-target stretches ``(K, 2)`` as ``"0.5012-0.5031 0.71-0.72"`` (positions along the
    path in [0, 1]); empty where none were found or the exact check did not decide."""
    if stretches is None:
        return ""
    return " ".join(f"{low:.6g}-{high:.6g}" for low, high in stretches.tolist())


def pair_rows(
    by_space: dict[str, list[dict[str, Any]]],
    class_names: list[str],
    drawn: set[tuple[str, int]] | None = None,
) -> list[list[Any]]:
    """One row of :data:`PAIR_COLUMNS` per pair and space (``pairs.csv`` and W&B's ``pairs``):
    its indices, class, ends (``adversarial`` where one end is an adversarial example,
    ``natural`` otherwise and for records saved before there were such pairs), verdicts, the
    check they rest on (``certificate``: exact, bounds or sampled, and why sampled where
    ``auto`` or a proof's tolerance or budget chose it), how its
    search ended (``status``: linear, converged, certified, out_of_steps or diverged; empty for
    records saved before there was one), the energy barriers of the path and the line
    (:func:`pair_barrier`), the lowest margins, the linear pieces the exact check
    went through, the proved lower bounds of the margins (the exact minimum, or the bounds'
    bound) and the bounds' sub-intervals, and the stretches found off the target (points
    ``p-p`` for bounds), how far its path moved from the straight
    line (largest L2 and L-infinity distance of a point, in the space's units: pixels in [0, 1]
    in the input space), and the file of its figure (empty where ``drawn``, the ``(space, pair
    id)`` of the figures there are, holds none; None: every pair has one)."""
    rows = []
    for space, records in by_space.items():
        for record in records:
            pair = record["pair"]
            l2, linf = record.get("distance_l2"), record.get("distance_linf")
            if l2 is None or linf is None:  # a record saved before it kept its distances
                l2, linf = distances_from_line(record["path"], record["line"])
            rows.append(
                [
                    space,
                    pair["id"],
                    pair["start_index"],
                    pair["end_index"],
                    class_names[record["target"]],
                    "adversarial" if pair.get("adversarial", False) else "natural",
                    record["verdict"],
                    record["pivot_verdict"],
                    record.get("certificate", "sampled"),
                    record.get("status", ""),
                    record["steps"],
                    record["max_energy"],
                    record["min_target_probability"],
                    pair_barrier(record, "path"),
                    pair_barrier(record, "line"),
                    record.get("certificate_note", ""),
                    lowest_margin(record, "path"),
                    lowest_margin(record, "line"),
                    record.get("pieces", 0),
                    record.get("line_pieces", 0),
                    record.get("min_margin_lower_bound", math.nan),
                    record.get("line_min_margin_lower_bound", math.nan),
                    record.get("sub_intervals", 0),
                    record.get("line_sub_intervals", 0),
                    _stretches_text(record.get("off_target_intervals")),
                    _stretches_text(record.get("line_off_target_intervals")),
                    record["length_ratio"],
                    float(l2.max()),
                    float(linf.max()),
                    figure_name(space, pair["id"])
                    if drawn is None or (space, pair["id"]) in drawn
                    else "",
                ]
            )
    return rows


def pair_barrier(record: dict[str, Any], which: str) -> float:
    """A saved record's energy barrier of its ``"path"`` or ``"line"``
    (:func:`connectivity.engine.decisions.energy_barrier`): as kept, or for a record saved before
    it was kept, read off its highest energy and its ends' energies (the same numbers: the ends
    are among the densely checked points)."""
    key = "barrier" if which == "path" else "line_barrier"
    kept = record.get(key, math.nan)
    if not math.isnan(kept):
        return float(kept)
    top = record["max_energy"] if which == "path" else record["line_max_energy"]
    ends = record[f"{which}_energy"][[0, -1]]
    return float(top - ends.max())


def pairs_csv(
    by_space: dict[str, list[dict[str, Any]]],
    class_names: list[str],
    drawn: set[tuple[str, int]] | None = None,
) -> str:
    """``pairs.csv``: :func:`pair_rows` under a header of :data:`PAIR_COLUMNS`."""
    return csv_text(PAIR_COLUMNS, pair_rows(by_space, class_names, drawn))
