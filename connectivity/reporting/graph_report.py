"""The report of a graph run (``connectivity graph``), rebuilt from its saved records alone.

Written into the run folder:

* ``components.md``: per model, space and class, the number of components and their sizes,
  the edges found (linear / nonlinear) and the pairs not connected by the paths tried, against
  the ``N (N - 1) / 2`` pairs deciding everything would cost; with several classifiers, their
  structures side by side; with misclassified inputs, what each joins;
* ``components.csv`` (the same, one row per model, space and class), ``edges.csv`` (one row
  per decided pair: indices, verdict, and every scalar field of its record),
  ``misclassified.csv`` and ``comparison.csv`` (two or more classifiers);
* with an untrained baseline (``baseline`` in ``run.json``), its networks as more models
  (:func:`graph_models` names every model), the classes each has no graph of, and per space
  the trained models beside each seed and the seeds' mean ± sd (``components.md``,
  ``baselines.csv``);
* ``figures/model<k>/<space>/class_<c>.png`` (:func:`connectivity.reporting.figures.graph_figure`;
  ``figures/untrained_seed<s>/...`` for the untrained networks);
* the same tables and figures in the folder's W&B run
  (:func:`connectivity.reporting.wandb_log.log_graph_report`).

Every file is written by the store (:class:`~connectivity.store.graph.GraphStore`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from connectivity.engine.graph import ClassComponents, Pair, components_of
from connectivity.reporting.baselines import (
    UNTRAINED_MEAN,
    UNTRAINED_SD,
    group_rows,
    mean_and_sd,
    side_by_side,
    untrained_group,
)
from connectivity.reporting.figures import figure_png, graph_figure
from connectivity.reporting.tables import csv_text, markdown_table
from connectivity.reporting.wandb_log import (
    WandbOptions,
    log_graph_report,
    relocate_offline_runs,
    report_run_id,
    run_folder_environment,
)
from connectivity.store.graph import (
    MISCLASSIFIED,
    GraphLayout,
    GraphStore,
    Model,
    scope_of,
    untrained_scope,
)

NOT_CONNECTED = "not connected by the paths tried"


def _scalars(record: dict[str, Any]) -> dict[str, Any]:
    """A saved record's scalar fields (whatever fields PairRecord has), without its tensors."""
    return {
        k: v
        for k, v in record.items()
        if k not in ("space", "pair") and not isinstance(v, (torch.Tensor, dict, list))
    }


@dataclass(frozen=True)
class ReportedModel:
    """One model of a graph run as its report names it.

    Args:
        number: Its number ``k`` in the tables: the classifiers first, then the untrained
            baseline networks in seed order.
        key: Where its files lie (:data:`~connectivity.store.graph.Model`).
        name: The classifier checkpoint, or ``untrained seed <s>``.
        short: ``model <k>``, or ``untrained seed <s>``.
        selections: ``[{"label", "indices"}]`` of each class it has a graph of.
        seed: The untrained network's seed (None: a trained classifier).
    """

    number: int
    key: Model
    name: str
    short: str
    selections: list[dict[str, Any]]
    seed: int | None = None


def graph_models(manifest: dict[str, Any]) -> list[ReportedModel]:
    """Every model of a graph run, named (the one place the report names them): each
    classifier of ``run.json``, then each untrained baseline network of its ``baseline``
    entry."""
    models = [
        ReportedModel(k, k, classifier, f"model {k}", manifest["inputs"])
        for k, classifier in enumerate(manifest["classifiers"])
    ]
    baseline = manifest.get("baseline") or {}
    for seed in baseline.get("seeds", []):
        name = untrained_group(seed)
        selections = baseline["inputs"][str(seed)]
        key = untrained_scope(seed)
        models.append(ReportedModel(len(models), key, name, name, selections, seed))
    return models


@dataclass
class ClassResult:
    """One class of one model in one space: its components and the records behind them."""

    model: int
    space: str
    label: int
    indices: list[int]  # dataset index of each input
    found: ClassComponents[dict[str, Any]]
    settled: bool
    key: Model  # where the model's files lie


def load_results(store: GraphStore) -> list[ClassResult]:
    """Every (model, space, class) of the run, from its records.

    Raises:
        RunFolderError: no ``run.json``, or a record that cannot be read.
    """
    manifest = store.manifest()
    results = []
    for model in graph_models(manifest):
        selections = model.selections
        layout = GraphLayout(tuple(len(s["indices"]) for s in selections))
        scoped = store.model(model.key)
        for space in manifest["spaces"]:
            by_class: list[dict[Pair, dict[str, Any]]] = [{} for _ in selections]
            for record in scoped.load(space):
                c, pair = layout.locate(record["pair"]["id"])
                by_class[c][pair] = _scalars(record)
            settled = store.settled(model.key, space)
            for c, selection in enumerate(selections):
                found = components_of(len(selection["indices"]), by_class[c])
                results.append(
                    ClassResult(
                        model.number,
                        space,
                        selection["label"],
                        selection["indices"],
                        found,
                        settled,
                        model.key,
                    )
                )
    return results


def _misclassified(store: GraphStore, k: int, space: str) -> list[dict[str, Any]]:
    """Rows of the misclassified inputs of model ``k`` in ``space``, with their verdicts."""
    rows = store.misclassified(k, space)
    records = {
        r["pair"]["id"]: r["verdict"] for r in store.model(k).load(f"{MISCLASSIFIED}-{space}")
    }
    for row in rows:
        for attempt in row["tries"]:
            attempt["verdict"] = records.get(attempt["pair"], "undecided")
    return rows


def _sizes(found: ClassComponents) -> str:
    return " ".join(str(len(c)) for c in found.components)


def _count(found: ClassComponents, verdict: str) -> int:
    return sum(r["verdict"] == verdict for r in found.edges.values())


COMPONENT_COLUMNS = [
    "model",
    "classifier",
    "space",
    "class",
    "inputs",
    "components",
    "sizes",
    "linear_edges",
    "nonlinear_edges",
    "not_connected",
    "pairs_decided",
    "all_pairs",
    "settled",
]


def component_rows(results: list[ClassResult], manifest: dict[str, Any]) -> list[list[Any]]:
    names = manifest["class_names"]
    models = graph_models(manifest)
    return [
        [
            r.model,
            models[r.model].name,
            r.space,
            names[r.label],
            r.found.size,
            len(r.found.components),
            _sizes(r.found),
            _count(r.found, "linear"),
            _count(r.found, "nonlinear"),
            len(r.found.failed),
            r.found.pairs_decided,
            r.found.all_pairs,
            r.settled,
        ]
        for r in results
    ]


def edge_rows(results: list[ClassResult], names: list[str]) -> tuple[list[str], list[list[Any]]]:
    """One row per decided pair; the metric columns are every scalar field the records have."""
    metrics: list[str] = []
    for r in results:
        for record in [*r.found.edges.values(), *r.found.failed.values()]:
            metrics += [k for k in record if k not in metrics and k not in ("verdict", "target")]
    header = [
        "model",
        "space",
        "class",
        "i",
        "j",
        "start_index",
        "end_index",
        "connected",
        "verdict",
        *metrics,
    ]
    rows = []
    for r in results:
        decided = {
            **{p: (True, v) for p, v in r.found.edges.items()},
            **{p: (False, v) for p, v in r.found.failed.items()},
        }
        for (i, j), (connected, record) in sorted(decided.items()):
            rows.append(
                [
                    r.model,
                    r.space,
                    names[r.label],
                    i,
                    j,
                    r.indices[i],
                    r.indices[j],
                    connected,
                    record["verdict"],
                    *(record.get(m, "") for m in metrics),
                ]
            )
    return header, rows


def compare(results: list[ClassResult]) -> list[list[Any]]:
    """Each other trained model against model 0, per space and class: same partition into
    components? Which connected pairs one found and the other did not, and pairs both decided
    with opposite outcomes. Untrained baseline networks join inputs of their own, so they are
    not compared pair by pair."""
    base = {(r.space, r.label): r for r in results if r.model == 0}
    rows = []
    for r in results:
        if r.model == 0 or not isinstance(r.key, int):
            continue
        b = base[(r.space, r.label)]
        mine, theirs = set(r.found.edges), set(b.found.edges)
        decided_both = (mine | set(r.found.failed)) & (theirs | set(b.found.failed))
        opposite = sorted(p for p in decided_both if (p in mine) != (p in theirs))
        rows.append(
            [
                r.space,
                r.label,
                0,
                r.model,
                r.found.components == b.found.components,
                len(b.found.components),
                len(r.found.components),
                " ".join(f"{i}-{j}" for i, j in sorted(theirs - mine)),
                " ".join(f"{i}-{j}" for i, j in sorted(mine - theirs)),
                " ".join(f"{i}-{j}" for i, j in opposite),
            ]
        )
    return rows


COMPARISON_COLUMNS = [
    "space",
    "class",
    "model_a",
    "model_b",
    "same_components",
    "components_a",
    "components_b",
    "edges_only_a",
    "edges_only_b",
    "opposite_verdicts",
]
MISCLASSIFIED_COLUMNS = [
    "model",
    "space",
    "index",
    "class",
    "predicted",
    "joins_components_of_predicted",
    "tried",
    "nearest_own_distance",
    "nearest_own_index",
    "nearest_predicted_distance",
]


def misclassified_rows(store: GraphStore, manifest: dict[str, Any]) -> list[list[Any]]:
    names = manifest["class_names"]
    rows = []
    for k in range(len(manifest["classifiers"])):
        for space in manifest["spaces"]:
            for row in _misclassified(store, k, space):
                joined = [
                    t["component"] for t in row["tries"] if t["verdict"] in ("linear", "nonlinear")
                ]
                rows.append(
                    [
                        k,
                        space,
                        row["index"],
                        names[row["label"]],
                        names[row["predicted"]],
                        (" ".join(map(str, joined)) if joined else "none")
                        if row["tries"]
                        else "(predicted class not studied)",
                        len(row["tries"]),
                        row["nearest_own_distance"],
                        row["nearest_own_index"],
                        row.get("nearest_predicted_distance", ""),
                    ]
                )
    return rows


def graph_markdown(
    results: list[ClassResult],
    manifest: dict[str, Any],
    comparison: list[list[Any]],
    misclassified: list[list[Any]],
) -> str:
    header = [
        "model",
        "space",
        "class",
        "inputs",
        "components",
        "sizes",
        "linear",
        "nonlinear",
        NOT_CONNECTED,
        "pairs decided / all",
    ]
    rows = [
        [
            row[0],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            row[7],
            row[8],
            row[9],
            f"{row[10]} / {row[11]}" + ("" if row[12] else " (not settled: rerun to finish)"),
        ]
        for row in component_rows(results, manifest)
    ]
    lines = [
        "Components of each class: inputs joined by a chain of pairs found connected (linear "
        "or nonlinear path inside the class). Inputs in different components are not "
        "connected by the paths tried, which does not prove that no path exists.",
        "",
        *(_model_line(m, manifest) for m in graph_models(manifest)),
        "",
        *markdown_table(header, rows),
    ]
    if comparison:
        lines += [
            "",
            "Models side by side (each against model 0; edges as `i-j` input numbers):",
            "",
            *markdown_table(COMPARISON_COLUMNS, comparison),
        ]
    if misclassified:
        lines += [
            "",
            "Misclassified inputs: they lie outside their own class's region, so no path of "
            "that class can reach them; each is tried against the nearest input of every "
            "component of the class it is predicted as (distances in the space's units):",
            "",
            *markdown_table(MISCLASSIFIED_COLUMNS, misclassified),
        ]
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


# What a model's graphs of one space are summed up by, in table order: (name, computed from
# its class results). Per-class means: an untrained network often has graphs of few classes.
BASELINE_QUANTITIES: list[tuple[str, Callable[[list[ClassResult]], float]]] = [
    ("classes with a graph", len),
    ("inputs per class", lambda rs: _mean([r.found.size for r in rs])),
    ("components per class", lambda rs: _mean([len(r.found.components) for r in rs])),
    (
        "one component (% of classes)",
        lambda rs: _mean([100.0 * (len(r.found.components) == 1) for r in rs]),
    ),
    (
        "largest component (% of its class's inputs)",
        lambda rs: _mean([100.0 * max(map(len, r.found.components)) / r.found.size for r in rs]),
    ),
    ("linear edges per class", lambda rs: _mean([_count(r.found, "linear") for r in rs])),
    ("nonlinear edges per class", lambda rs: _mean([_count(r.found, "nonlinear") for r in rs])),
    ("pairs not connected per class", lambda rs: _mean([len(r.found.failed) for r in rs])),
    ("pairs decided per class", lambda rs: _mean([r.found.pairs_decided for r in rs])),
]
BASELINE_COLUMNS = ["space", "group", *(name for name, _ in BASELINE_QUANTITIES)]


def baseline_table(
    results: list[ClassResult], manifest: dict[str, Any]
) -> dict[str, dict[str, list[float]]]:
    """``{space: {group: [value per BASELINE_QUANTITIES entry]}}``: the trained models
    (``trained``, or ``trained model <k>`` with several), each untrained seed, and with
    several seeds their mean and sample standard deviation; empty for a run without a
    baseline."""
    models = graph_models(manifest)
    trained = [m for m in models if m.seed is None]
    untrained = [m for m in models if m.seed is not None]
    if not untrained:
        return {}
    table: dict[str, dict[str, list[float]]] = {}
    for space in manifest["spaces"]:
        values = {}
        for m in models:
            group = m.name if m.seed is not None else "trained"
            if m.seed is None and len(trained) > 1:
                group = f"trained model {m.number}"
            mine = [r for r in results if r.model == m.number and r.space == space]
            values[group] = [float(compute(mine)) for _, compute in BASELINE_QUANTITIES]
        if len(untrained) > 1:
            seeds = [values[m.name] for m in untrained]
            values[UNTRAINED_MEAN], values[UNTRAINED_SD] = mean_and_sd(seeds)
        table[space] = values
    return table


def skipped_line(group: str, counts: dict[str, int], where: str) -> str:
    """Which classes an untrained network has no graph of, and how many inputs (fewer than 2)
    of ``where`` (the split, or the given inputs) it puts in each of them."""
    labels = ", ".join(map(repr, counts))
    numbers = [str(n) for n in counts.values()]
    if len(numbers) == 1:
        return (
            f"{group} has no graph of class {labels}: it puts {numbers[0]} of the {where} in "
            "it, a graph needs 2"
        )
    return (
        f"{group} has no graph of classes {labels}: it puts {', '.join(numbers[:-1])} and "
        f"{numbers[-1]} of the {where} in them, a graph needs 2"
    )


def baseline_markdown(table: dict[str, dict[str, list[float]]], manifest: dict[str, Any]) -> str:
    """The trained models beside the untrained ones, one table per space (a column per
    group, ``mean ± sd`` over untrained seeds after the trained ones), and the classes an
    untrained network has no graph of."""
    parts = [
        "",
        "## Baselines: the trained models beside untrained ones",
        "",
        "Each untrained network is the first classifier's architecture freshly initialised "
        "with its seed; its inputs are drawn from the same split in the same seeded order, "
        "each in the class it puts it in, so its graphs join other inputs than the trained "
        "models'. Values are means over a model's classes.",
    ]
    names = manifest["class_names"]
    where = "given inputs" if (manifest.get("sampling") or {}).get("indices") else "split"
    for seed, skipped in manifest["baseline"].get("skipped", {}).items():
        if skipped:
            counts = {names[s["label"]]: len(s["indices"]) for s in skipped}
            parts.append(f"* {skipped_line(untrained_group(int(seed)), counts, where)}")
    parts += side_by_side(table, [name for name, _ in BASELINE_QUANTITIES])
    return "\n".join(parts) + "\n"


def _model_line(model: ReportedModel, manifest: dict[str, Any]) -> str:
    if model.seed is None:
        return f"* model {model.number}: `{model.name}`"
    return (
        f"* model {model.number}: {model.name}, the architecture of "
        f"`{manifest['baseline']['architecture']}` freshly initialised with seed {model.seed}; "
        "its inputs are the ones it puts in each class"
    )


def _figure_name(r: ClassResult) -> str:
    return f"figures/{scope_of(r.key)}/{r.space}/class_{r.label}.png"


def _wandb_key(r: ClassResult, names: list[str]) -> str:
    return f"graph/{scope_of(r.key)}/{r.space}/{names[r.label]}"


def _draw(
    store: GraphStore, results: list[ClassResult], manifest: dict[str, Any]
) -> dict[str, Path]:
    """Draw each class's components; ``{W&B key: figure file}``."""
    names = manifest["class_names"]
    models = graph_models(manifest)
    files = {}
    for r in results:
        if not store.embedding_path(r.key, r.space, r.label).is_file():
            continue  # the run stopped before this model reached this space: nothing to place
        embedding = store.load_embedding(r.key, r.space, r.label)
        thumbnails = store.load_inputs(r.label, r.key)["images"]
        title = (
            f"{models[r.model].short}, {r.space}, class {names[r.label]!r}: "
            f"{len(r.found.components)} component(s) of {r.found.size} inputs "
            f"({r.found.pairs_decided} of {r.found.all_pairs} pairs decided)"
        )
        figure = graph_figure(
            embedding["coords"],
            r.found.components,
            {p: rec["verdict"] for p, rec in r.found.edges.items()},
            list(r.found.failed),
            title,
            thumbnails,
        )
        store.save_bytes(_figure_name(r), figure_png(figure))
        files[_wandb_key(r, names)] = store.path(_figure_name(r))
    return files


def write_graph_report(
    store: GraphStore, wandb: WandbOptions | None = None, figures: bool = True
) -> str:
    """Write the tables and figures of a graph run from its records; log them to W&B if asked.

    Returns:
        The Markdown report (also printed).

    Raises:
        RunFolderError: no ``run.json``, or a record that cannot be read.
    """
    manifest = store.manifest()
    names = manifest["class_names"]
    results = load_results(store)
    comparison = compare(results)
    misclassified = misclassified_rows(store, manifest)
    markdown = graph_markdown(results, manifest, comparison, misclassified)
    table = baseline_table(results, manifest)
    baselines = group_rows(table)
    if baselines:
        markdown += baseline_markdown(table, manifest)
    components = component_rows(results, manifest)
    edge_header, edges = edge_rows(results, names)
    store.save_text("components.md", markdown)
    store.save_text("components.csv", csv_text(COMPONENT_COLUMNS, components))
    store.save_text("edges.csv", csv_text(edge_header, edges))
    if comparison:
        store.save_text("comparison.csv", csv_text(COMPARISON_COLUMNS, comparison))
    if misclassified:
        store.save_text("misclassified.csv", csv_text(MISCLASSIFIED_COLUMNS, misclassified))
    if baselines:
        store.save_text("baselines.csv", csv_text(BASELINE_COLUMNS, baselines))
    print(f"\n{markdown}\nRun folder: {store.folder}")
    files = _draw(store, results, manifest) if figures else {}
    run_id = report_run_id(store, wandb) if wandb is not None and wandb.enabled else None
    if run_id is not None:
        assert wandb is not None
        shown = [
            [*row, files.get(_wandb_key(r, names))]
            for r, row in zip(results, components, strict=True)
        ]
        tables = {
            "components": ([*COMPONENT_COLUMNS, "figure"], shown),
            "edges": (edge_header, [[str(v) for v in row] for row in edges]),
        }
        if comparison:
            tables["comparison"] = (COMPARISON_COLUMNS, comparison)
        if misclassified:
            tables["misclassified"] = (MISCLASSIFIED_COLUMNS, misclassified)
        if baselines:
            tables["baselines"] = (BASELINE_COLUMNS, baselines)
        summary = {
            f"{scope_of(r.key)}/{r.space}/{names[r.label]}/components": len(r.found.components)
            for r in results
        }
        with run_folder_environment(store.folder):
            log_graph_report(store, run_id, tables, files, summary, wandb)
    relocate_offline_runs(store.folder, finished=run_id)
    return markdown
