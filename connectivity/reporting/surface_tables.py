"""The tables of a surfaces run: verdict counts per space with the certificate each count
rests on (``surfaces.md``, ``surfaces.csv``) and one row per loop and space (``loops.csv``).

Plain text from saved loop records (:class:`~connectivity.store.surfaces.SurfaceStore`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from connectivity.reporting.tables import CERTIFICATES, csv_text, markdown_table

SURFACE_VERDICTS = ("planar", "curved", "none", "diverged", "no-loop")
SURFACE_ROWS = {
    "planar": "Planar fill (the flat fan of the loop)",
    "curved": "Curved surface (relaxed membrane)",
    "none": "No surface found",
    "diverged": "Diverged",
    "no-loop": "No loop (a side has no path)",
}


def surface_counts(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{verdict: {"all": n, certificate: n, ...}}`` over every verdict and certificate
    (zeros included)."""
    counts = Counter((r["verdict"], r.get("certificate", "sampled")) for r in records)
    table = {}
    for verdict in SURFACE_VERDICTS:
        row = {c: counts.get((verdict, c), 0) for c in CERTIFICATES}
        table[verdict] = {"all": sum(row.values()), **row}
    return table


def _cell(counts: dict[str, int]) -> str:
    """``count`` and the certificates it rests on (``3 exact``, ``4: 3 exact, 1 sampled``)."""
    if counts["all"] == 0:
        return "0"
    parts = [c for c in CERTIFICATES if counts[c]]
    if len(parts) == 1:
        return f"{counts['all']} {parts[0]}"
    return f"{counts['all']}: " + ", ".join(f"{counts[c]} {c}" for c in parts)


def surfaces_markdown(by_space: dict[str, list[dict[str, Any]]], loops: int, size: int) -> str:
    """The surfaces table: one column per space, one row per verdict, each count with the
    check it rests on (``exact`` or ``bounds``: every point of every triangle proved;
    ``sampled``: a barycentric grid of points per triangle)."""
    spaces = list(by_space)
    counts = {s: surface_counts(rs) for s, rs in by_space.items()}
    header = ["", *spaces]
    rows = [[SURFACE_ROWS[v], *(_cell(counts[s][v]) for s in spaces)] for v in SURFACE_VERDICTS]
    intro = (
        f"Loops: {loops} of {size} inputs. Each cell: loops with that verdict and the check it "
        "rests on: exact or bounds (every point of every triangle of the surface, by the plane "
        "partition or by bound propagation) or sampled (a grid of points per triangle). "
        "'No surface found' is not a proof that none exists."
    )
    return intro + "\n\n" + "\n".join(markdown_table(header, rows)) + "\n"


def surfaces_csv(by_space: dict[str, list[dict[str, Any]]]) -> str:
    """``surfaces.csv``: one row per space and verdict: count, then the count per
    certificate."""
    rows = []
    for space, records in by_space.items():
        for verdict, counts in surface_counts(records).items():
            rows.append([space, verdict, counts["all"], *(counts[c] for c in CERTIFICATES)])
    return csv_text(["space", "verdict", "loops", *CERTIFICATES], rows)


LOOP_COLUMNS = (
    "verdict",
    "certificate",
    "status",
    "target",
    "min_margin",
    "min_margin_lower_bound",
    "planar_min_margin",
    "steps",
    "refinements",
    "vertices",
    "moved_max",
    "moved_ratio",
)


def loops_csv(by_space: dict[str, list[dict[str, Any]]]) -> str:
    """``loops.csv``: one row per loop and space: the loop, its dataset indices and the scalar
    parts of its record (:data:`LOOP_COLUMNS`, empty where a record has none)."""
    rows = []
    for space, records in by_space.items():
        for r in records:
            loop = r["loop"]
            indices = " ".join(str(i) for i in loop["indices"])
            rows.append([space, loop["id"], indices, *(r.get(c, "") for c in LOOP_COLUMNS)])
    return csv_text(["space", "loop", "indices", *LOOP_COLUMNS], rows)
