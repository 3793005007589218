"""The tables of a surfaces run: verdict counts per space with the certificate each count
rests on (``surfaces.md``, ``surfaces.csv``), one row per loop and space (``loops.csv``) and,
with an untrained baseline, the trained network's loops beside each untrained seed's and their
mean and spread (``surfaces.md``'s second part, ``baselines.csv``).

Plain text from saved loop records (:class:`~connectivity.store.surfaces.SurfaceStore`); the
baseline's layout is the path runs' (:mod:`connectivity.reporting.baselines`), with the
quantities of loops.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from connectivity.reporting.baselines import (
    TRAINED,
    UNTRAINED_MEAN,
    UNTRAINED_SD,
    baseline_keys,
    finite_median,
    group_rows,
    mean_and_sd,
    side_by_side,
)
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


FILLED = ("planar", "curved")
PROVED = ("exact", "bounds")


def _share(records: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool]) -> float:
    """Percent of ``records`` that ``keep`` accepts (NaN for none)."""
    return 100.0 * sum(keep(r) for r in records) / len(records) if records else math.nan


def _median_of(name: str) -> Callable[[list[dict[str, Any]]], float]:
    """The median of a record field over the loops with a surface (an open loop has none: its
    margins and distances are NaN, its steps and vertices 0)."""
    return lambda rs: finite_median([float(r[name]) for r in rs if r["verdict"] != "no-loop"])


# The quantities of each group of loops, in table order: (name, what it is computed from).
SURFACE_QUANTITIES: list[tuple[str, Callable[[list[dict[str, Any]]], float]]] = [
    ("loops", len),
    # An untrained network often puts most inputs in one or two classes.
    ("classes", lambda rs: float(len({r["target"] for r in rs}))),
    *(
        (SURFACE_ROWS[v], lambda rs, v=v: float(sum(r["verdict"] == v for r in rs)))
        for v in SURFACE_VERDICTS
    ),
    ("filled (%)", lambda rs: _share(rs, lambda r: r["verdict"] in FILLED)),
    (
        "filled and proved (%)",
        lambda rs: _share(rs, lambda r: r["verdict"] in FILLED and r.get("certificate") in PROVED),
    ),
    ("median lowest margin, flat fill", _median_of("planar_min_margin")),
    ("median lowest margin, surface", _median_of("min_margin")),
    ("median steps", _median_of("steps")),
    ("median vertices", _median_of("vertices")),
    ("median moved ratio", _median_of("moved_ratio")),
]


def surface_comparison(
    manifest: dict[str, Any],
    by_space: dict[str, list[dict[str, Any]]],
    baselines: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, list[float]]]:
    """``{space: {column: [value per quantity of SURFACE_QUANTITIES]}}``: the trained
    network's loops (``by_space``), each untrained seed's (``baselines``, by records key) and,
    with several seeds, their mean and sample standard deviation (``untrained mean``,
    ``untrained sd``; NaN values left out)."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {TRAINED: by_space}
    for key, (group, space, _) in baseline_keys(manifest, "loops").items():
        groups.setdefault(group, {})[space] = baselines.get(key, [])
    table: dict[str, dict[str, list[float]]] = {}
    for space in by_space:
        values = {
            name: [float(compute(loops.get(space, []))) for _, compute in SURFACE_QUANTITIES]
            for name, loops in groups.items()
        }
        seeds = [name for name in values if name != TRAINED]
        if len(seeds) > 1:
            values[UNTRAINED_MEAN], values[UNTRAINED_SD] = mean_and_sd([values[s] for s in seeds])
        table[space] = values
    return table


def surface_comparison_markdown(table: dict[str, dict[str, list[float]]]) -> str:
    """One table per space: a column per group (and ``mean ± sd`` over untrained seeds), a row
    per quantity."""
    parts = [
        "## Baselines: the trained network beside untrained ones",
        "",
        "Each untrained network is the architecture freshly initialised with its seed; its "
        "loops are drawn from the same split with the same loop options by its own predictions "
        "(a class it puts too few inputs in is left out). Margins: target logit minus the best "
        "other, the lowest over the flat fill and over the final surface; moved ratio: how far "
        "the surface moved from the flat fill over the loop's diameter.",
    ]
    parts += side_by_side(table, [name for name, _ in SURFACE_QUANTITIES])
    return "\n".join(parts) + "\n"


def surface_comparison_rows(
    table: dict[str, dict[str, list[float]]],
) -> tuple[list[str], list[list[Any]]]:
    """The header and rows (:func:`~connectivity.reporting.baselines.group_rows`) of a surfaces
    run's ``baselines.csv`` (and W&B's ``baselines``), one column per quantity."""
    return ["space", "group", *(name for name, _ in SURFACE_QUANTITIES)], group_rows(table)
