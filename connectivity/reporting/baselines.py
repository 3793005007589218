"""What a run's counts mean, side by side: the trained network's natural pairs beside its
adversarial-natural pairs and the pairs of its untrained baselines (one group per seed, and
their mean and spread), per space.

Plain text from saved records (``table.md``'s second part and ``baselines.csv``); the groups
come from :func:`record_groups`, the untrained networks from :mod:`connectivity.runs.baselines`
(Vrabel et al., arXiv 2409.05800, 2024, for why they matter).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from matplotlib.figure import Figure

from connectivity.engine.decisions import Verdict
from connectivity.reporting.detect import has_adversarial, is_adversarial
from connectivity.reporting.figures import SMALL_PT, TEXT_PT, TITLE_PT, figure_png, lowest_margin
from connectivity.reporting.tables import ROW_NAMES, csv_text, markdown_table, pair_barrier
from connectivity.store.records import RunStore, untrained_key

TRAINED = "trained"
ADVERSARIAL = "adversarial ends"
# The columns of the mean and sample standard deviation over several untrained seeds.
UNTRAINED_MEAN, UNTRAINED_SD = "untrained mean", "untrained sd"
VERDICTS = [v.value for v in Verdict]


def untrained_group(seed: int) -> str:
    return f"untrained seed {seed}"


def baseline_keys(
    manifest: dict[str, Any], items: str = "pairs"
) -> dict[str, tuple[str, str, int]]:
    """``{records key: (group, space, items asked)}`` of the run's untrained baselines (none
    without a ``baseline`` entry in ``run.json``), in seed then space order; ``items`` is what
    the entry lists per seed (``pairs``, or a surfaces run's ``loops``)."""
    baseline = manifest.get("baseline") or {}
    return {
        untrained_key(seed, space): (
            untrained_group(seed),
            space,
            len(baseline[items][str(seed)]),
        )
        for seed in baseline.get("seeds", [])
        for space in manifest["spaces"]
    }


def baseline_records(store: RunStore) -> dict[str, list[dict[str, Any]]]:
    """``{records key: records}`` of every untrained baseline network and space
    (:func:`baseline_keys`).

    Raises:
        RunFolderError: a record cannot be read.
    """
    return {key: store.load(key) for key in baseline_keys(store.manifest())}


def record_groups(
    manifest: dict[str, Any],
    by_space: dict[str, list[dict[str, Any]]],
    baselines: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{group: {space: records}}``: ``trained`` (the natural pairs of ``by_space``),
    ``adversarial ends`` (its adversarial-natural pairs, where it has any), then each untrained
    seed (``baselines``, as :func:`baseline_records` gives them)."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {
        TRAINED: {s: [r for r in rs if not is_adversarial(r)] for s, rs in by_space.items()}
    }
    if has_adversarial(by_space):
        groups[ADVERSARIAL] = {
            s: [r for r in rs if is_adversarial(r)] for s, rs in by_space.items()
        }
    for key, (group, space, _) in baseline_keys(manifest).items():
        groups.setdefault(group, {})[space] = baselines.get(key, [])
    return groups


def finite_median(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


# The quantities of each group, in table order: (name, what it is computed from).
QUANTITIES: list[tuple[str, Callable[[list[dict[str, Any]]], float]]] = [
    ("pairs", len),
    # An untrained network often puts most inputs in one or two classes.
    ("classes", lambda rs: float(len({r["target"] for r in rs}))),
    *((ROW_NAMES[v], lambda rs, v=v: float(sum(r["verdict"] == v for r in rs))) for v in VERDICTS),
    (
        "connected (%)",
        lambda rs: (
            100.0 * sum(r["verdict"] in ("linear", "nonlinear") for r in rs) / len(rs)
            if rs
            else math.nan
        ),
    ),
    ("median line barrier", lambda rs: finite_median([pair_barrier(r, "line") for r in rs])),
    ("median path barrier", lambda rs: finite_median([pair_barrier(r, "path") for r in rs])),
    (
        "median lowest line margin",
        lambda rs: finite_median([lowest_margin(r, "line") for r in rs]),
    ),
    (
        "median lowest path margin",
        lambda rs: finite_median([lowest_margin(r, "path") for r in rs]),
    ),
    ("median steps", lambda rs: finite_median([float(r["steps"]) for r in rs])),
    ("median length ratio", lambda rs: finite_median([float(r["length_ratio"]) for r in rs])),
]


def summarise(records: list[dict[str, Any]]) -> list[float]:
    """One value per :data:`QUANTITIES` entry for a group's records of one space.

    Barriers are energies (-log p(target), nats) above the higher end; margins are logit
    differences (target minus the best other class); the length ratio is the path's length
    over the straight line's.
    """
    return [float(compute(records)) for _, compute in QUANTITIES]


def mean_and_sd(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    """Mean and sample standard deviation of each column (0 for one row; NaN values left
    out)."""
    means, sds = [], []
    for column in zip(*rows, strict=True):
        kept = [v for v in column if not math.isnan(v)]
        means.append(statistics.fmean(kept) if kept else math.nan)
        sds.append(statistics.stdev(kept) if len(kept) > 1 else 0.0 if kept else math.nan)
    return means, sds


def shown_number(value: float) -> str:
    if math.isnan(value):
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def comparison(groups: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict]:
    """``{space: {"columns": [...], "values": {column: [value per quantity]}}}``: each group's
    summary, and with several untrained seeds their mean and standard deviation."""
    spaces = list(groups[TRAINED])
    table: dict[str, dict] = {}
    for space in spaces:
        values = {name: summarise(by_space.get(space, [])) for name, by_space in groups.items()}
        seeds = [name for name in values if name.startswith("untrained")]
        if len(seeds) > 1:
            mean, sd = mean_and_sd([values[s] for s in seeds])
            values[UNTRAINED_MEAN] = mean
            values[UNTRAINED_SD] = sd
        table[space] = values
    return table


def side_by_side(table: dict[str, dict[str, list[float]]], quantities: list[str]) -> list[str]:
    """The lines of one Markdown table per space of a comparison ``{space: {column: [value per
    quantity]}}``: a column per group, ``mean ± sd`` over the untrained seeds before the first
    untrained one (where the table has :data:`UNTRAINED_MEAN`), a row per quantity."""
    parts: list[str] = []
    for space, values in table.items():
        columns = [c for c in values if c not in (UNTRAINED_MEAN, UNTRAINED_SD)]
        header = ["", *columns]
        spread = UNTRAINED_MEAN in values
        at = 1 + next((k for k, c in enumerate(columns) if c.startswith("untrained")), 0)
        if spread:
            seeds = sum(c.startswith("untrained seed") for c in columns)
            header.insert(at, f"untrained ({seeds} seeds, mean ± sd)")
        rows = []
        for k, quantity in enumerate(quantities):
            row = [quantity, *(shown_number(values[c][k]) for c in columns)]
            if spread:
                mean, sd = values[UNTRAINED_MEAN][k], values[UNTRAINED_SD][k]
                row.insert(at, f"{shown_number(mean)} ± {shown_number(sd)}")
            rows.append(row)
        parts += ["", f"### {space}", "", *markdown_table(header, rows)]
    return parts


def group_rows(table: dict[str, dict[str, list[float]]]) -> list[list[Any]]:
    """The rows of a ``baselines.csv`` (and W&B's ``baselines``): one per space and group
    (:data:`UNTRAINED_MEAN` and :data:`UNTRAINED_SD` rows with several seeds), the space, the
    group, then the value of each quantity."""
    return [
        [space, group, *summary]
        for space, values in table.items()
        for group, summary in values.items()
    ]


def comparison_markdown(table: dict[str, dict]) -> str:
    """One table per space (:func:`side_by_side`) of :data:`QUANTITIES`."""
    groups = next(iter(table.values()), {})
    parts = [
        "## Beside the trained network's natural pairs",
        "",
        "Barriers: highest -log p(target) above the higher end (nats); margins: target logit "
        "minus the best other.",
    ]
    if ADVERSARIAL in groups:
        parts[-1] += (
            " Adversarial ends: pairs that join a targeted adversarial example (made from an "
            "input of another class) to a natural input of its target class."
        )
    if any(g.startswith("untrained") for g in groups):
        parts[-1] += (
            " Each untrained network is the architecture freshly initialised with its seed; its "
            "pairs are drawn from the same split by its own predictions."
        )
    parts += side_by_side(table, [name for name, _ in QUANTITIES])
    return "\n".join(parts) + "\n"


def comparison_rows(table: dict[str, dict]) -> tuple[list[str], list[list[Any]]]:
    """The header and rows (:func:`group_rows`) of a path run's ``baselines.csv`` (and W&B's
    ``baselines``), one column per quantity of :data:`QUANTITIES`."""
    return ["space", "group", *(name for name, _ in QUANTITIES)], group_rows(table)


BASELINES_FIGURE = "figures/baselines.png"
BASELINES_CSV = "baselines.csv"


def comparison_figure(table: dict[str, dict]) -> Figure:
    """One panel per space: the pairs of each verdict, the trained network's natural pairs
    beside its adversarial-natural ones and the untrained networks' (the mean over seeds, their
    standard deviation as an error bar; one seed: its counts)."""
    spaces = list(table)
    fig = Figure(figsize=(3.6 * len(spaces), 3.0), layout="constrained")
    axes = fig.subplots(1, len(spaces), squeeze=False)[0]
    quantities = [name for name, _ in QUANTITIES]
    rows = [quantities.index(ROW_NAMES[v]) for v in VERDICTS]
    labels = ["linear", "nonlinear", "no path\nfound", "diverged"]
    for ax, space in zip(axes, spaces, strict=True):
        values = table[space]
        seeds = [c for c in values if c.startswith("untrained seed")]
        bars = [(TRAINED, values[TRAINED], None, "tab:blue")]
        if ADVERSARIAL in values:
            bars.append((ADVERSARIAL, values[ADVERSARIAL], None, "tab:red"))
        if seeds:
            untrained = values.get(UNTRAINED_MEAN, values[seeds[0]])
            label = f"untrained ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
            bars.append((label, untrained, values.get(UNTRAINED_SD), "tab:gray"))
        width = 0.8 / len(bars)
        for n, (label, summary, spread, colour) in enumerate(bars):
            ax.bar(
                [p - 0.4 + width * (n + 0.5) for p in range(len(rows))],
                [summary[k] for k in rows],
                width,
                # an error bar stops at zero: a count is never negative
                yerr=[[min(spread[k], summary[k]) for k in rows], [spread[k] for k in rows]]
                if spread
                else None,
                label=label,
                color=colour,
                capsize=3,
            )
        positions = list(range(len(rows)))
        ax.set_xticks(
            positions,
            labels,
            fontsize=SMALL_PT,
        )
        ax.set_title(space, fontsize=TITLE_PT)
        ax.set_ylabel("pairs", fontsize=TEXT_PT)
        ax.legend(fontsize=SMALL_PT)
    return fig


def write_comparison(store: RunStore, table: dict[str, dict]) -> None:
    """Write ``baselines.csv`` and ``figures/baselines.png`` of :func:`comparison`'s table
    through the store (a report of the same records rewrites nothing)."""
    store.save_text(BASELINES_CSV, csv_text(*comparison_rows(table)))
    png = figure_png(comparison_figure(table))
    drawn = store.path(BASELINES_FIGURE)
    if not drawn.is_file() or drawn.read_bytes() != png:
        store.save_bytes(BASELINES_FIGURE, png)
