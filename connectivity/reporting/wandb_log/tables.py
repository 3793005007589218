"""What a report logs to W&B: the tables of a path run and of a graph run, their charts and
figures, the classifier checkpoint; tables longer than W&B keeps are logged whole, in parts.

The W&B run of a path run folder holds:

* per step, from the Trainer's logger (:func:`~connectivity.reporting.wandb_log.runs.paths_logger`):
  ``<space>/max_energy``, ``<space>/max_force``, ``<space>/on_target`` and
  ``<space>/active_pairs``;
* ``points``: one row per point of every line and path, with the softmax as numeric
  ``p_<class>`` columns, the predicted and target class, the target probability, the energy
  ``-log p(target)``, the position along the path (0..1), the point's image (input space, or
  decoded) and its softmax bar chart;
* ``energy_profiles`` (pair, space, along, position, energy) and one line plot per space,
  ``energy/<space>``;
* ``table1`` (the verdict counts per space) and its bar chart ``table1_chart``;
* ``pairs`` (one row per pair and space, with its figure) and ``verdicts`` (Table 1 wide);
* where some pair is adversarial (issue 23), ``detect`` (the AUROC of each path score per space,
  :func:`~connectivity.reporting.detect.detect_rows`) and one ROC plot per space,
  ``detect_roc/<space>``;
* the classifier checkpoint as a ``model`` artifact (a ``file://`` reference, not a copy).

A graph run's holds ``components`` (with each class's figure), ``edges``, ``comparison`` and
``misclassified`` and the figures as ``graph/model<k>/<space>/<class>``.

W&B keeps at most ``wandb.Table.MAX_ROWS`` (10,000) rows of a table in the run's own copy and
``wandb.Table.MAX_ARTIFACT_ROWS`` (200,000) in its ``run_table`` artifact, and drops the rest
(the first silently). A table with more rows is logged whole, in parts of at most that many
rows, each walk of a pair (its line or its path) in one part: ``points``, ``points_part2``,
...; the report prints one line naming the parts (:func:`table_parts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from connectivity.reporting.detect import (
    DETECT_COLUMNS,
    detect_curves,
    detect_rows,
    has_adversarial,
)
from connectivity.reporting.figures import bar_image, image_array
from connectivity.reporting.tables import PAIR_COLUMNS, ROW_NAMES, VERDICTS, pair_rows
from connectivity.reporting.wandb_log.runs import (
    WandbOptions,
    init_arguments,
    mark_reported,
    run_config,
    wandb_run_line,
)
from connectivity.store.records import RunStore


def _position(count: int) -> list[float]:
    """Positions ``0..1`` of ``count`` evenly indexed points (the figures' x axis)."""
    return [k / (count - 1) if count > 1 else 0.0 for k in range(count)]


def _walks(
    record: dict[str, Any], images: tuple[Tensor | None, Tensor | None]
) -> list[tuple[str, Tensor | None, Tensor, Tensor]]:
    """``(along, images, probabilities, energy)`` of the line and, unless the line is the
    path, of the optimised path."""
    walks = [("line", images[0], record["line_probabilities"], record["line_energy"])]
    if record["verdict"] != "linear":
        walks.append(("path", images[1], record["path_probabilities"], record["path_energy"]))
    return walks


def wandb_table_rows() -> int:
    """The most rows W&B keeps of one logged table: the smaller of ``wandb.Table.MAX_ROWS`` (the
    run's copy) and ``wandb.Table.MAX_ARTIFACT_ROWS`` (its ``run_table`` artifact), read when
    called."""
    import wandb

    return max(1, min(int(wandb.Table.MAX_ROWS), int(wandb.Table.MAX_ARTIFACT_ROWS)))


def split_rows(
    rows: list[list[Any]], limit: int, groups: list[Any] | None = None
) -> list[list[list[Any]]]:
    """Cut ``rows`` into consecutive parts of at most ``limit`` rows, in order.

    Args:
        rows: The table's rows.
        limit: Most rows per part, ``>= 1``.
        groups: Optional key of each row: a run of consecutive rows with one key starts a new
            part when it would not fit in the current one (a run longer than ``limit`` is cut).

    Returns:
        The parts (one, possibly empty, when every row fits); their concatenation is ``rows``.
    """
    if len(rows) <= limit:
        return [rows]
    keys = groups if groups is not None else list(range(len(rows)))
    runs: list[list[list[Any]]] = []
    for k, row in enumerate(rows):
        if k and keys[k] == keys[k - 1]:
            runs[-1].append(row)
        else:
            runs.append([row])
    parts: list[list[list[Any]]] = [[]]
    for run in runs:
        if len(parts[-1]) + len(run) > limit and parts[-1]:
            parts.append([])
        while len(run) > limit:
            parts[-1].extend(run[:limit])
            run = run[limit:]
            parts.append([])
        parts[-1].extend(run)
    return parts


def table_parts(
    key: str, columns: list[str], rows: list[list[Any]], groups: list[Any] | None = None
) -> dict[str, Any]:
    """``{key: wandb.Table}`` holding every row: one table when W&B keeps all of them
    (:func:`wandb_table_rows`), else parts ``key``, ``key_part2``, ... of at most that many rows
    (see :func:`split_rows`), announced in one printed line."""
    import wandb

    limit = wandb_table_rows()
    parts = split_rows(rows, limit, groups)
    keys = [key] + [f"{key}_part{n}" for n in range(2, len(parts) + 1)]
    if len(parts) > 1:
        print(
            f"W&B keeps at most {limit:,} rows per table: {key} ({len(rows):,} rows) is logged "
            f"whole in {len(parts)} tables, {keys[0]} to {keys[-1]}"
        )
    return {k: wandb.Table(columns=columns, data=part) for k, part in zip(keys, parts, strict=True)}


def _open_run(store: RunStore, run_id: str, options: WandbOptions, job_type: str) -> Any:
    """The W&B run ``run_id`` of ``store``: the active one when it is that run (the Trainer's
    logger of a path run), else started (resumed when it exists)."""
    import wandb

    run = wandb.run
    if run is not None and run.id == run_id:
        # The Trainer's run may have started before run.json was written.
        run.config.update(run_config(store), allow_val_change=True)
        return run
    # A run of another folder or of the caller is left alone: "create_new" runs beside it.
    arguments = init_arguments(store, options, run_id, job_type)
    return wandb.init(**arguments, reinit="create_new")


def _finish_run(run: Any, store: RunStore, run_id: str) -> None:
    """Finish ``run``, say where it is, and mark the folder as reported."""
    line = wandb_run_line(run, run_folder=store.folder)
    run.finish()
    print(line, flush=True)
    mark_reported(store, run_id)


def _image(file: Path | None) -> Any:
    import wandb

    return wandb.Image(str(file)) if file else None


def _verdict_tables(table: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """``verdicts`` (Table 1 wide, every check), ``table1`` (one row per space and verdict)
    and its bar chart ``table1_chart``."""
    import wandb

    counts = wandb.Table(columns=["space", "check", *VERDICTS])
    table1 = wandb.Table(columns=["space", "verdict", "row", "label", "dense", "pivots"])
    for space, checks in table.items():
        for check, values in checks.items():
            counts.add_data(space, check, *(values[v] for v in VERDICTS))
        for verdict in VERDICTS:
            name = ROW_NAMES[verdict]
            dense, pivots = checks["dense"][verdict], checks["pivots"][verdict]
            table1.add_data(space, verdict, name, f"{space}: {name}", dense, pivots)
    chart = wandb.plot.bar(table1, "label", "dense", title="Table 1: pairs per verdict and space")
    return {"verdicts": counts, "table1": table1, "table1_chart": chart}


POINT_COLUMNS = [
    "space",
    "pair",
    "verdict",
    "along",
    "index",
    "position",
    "image",
    "softmax",
    "predicted",
    "target",
    "target_probability",
    "energy",
]
PROFILE_COLUMNS = ["pair", "space", "along", "curve", "position", "energy"]


def _point_rows(
    by_space: dict[str, list[dict]],
    shown: dict[tuple[str, int], tuple[Tensor | None, Tensor | None]],
    class_names: list[str],
) -> tuple[list[list[Any]], list[list[Any]], list[tuple[str, int, str]]]:
    """Rows of ``points`` (:data:`POINT_COLUMNS`, then ``p_<class>``) and of
    ``energy_profiles`` (:data:`PROFILE_COLUMNS`), one per point of every walk, and the walk
    ``(space, pair id, along)`` of each row."""
    import wandb

    points: list[list[Any]] = []
    profiles: list[list[Any]] = []
    walks: list[tuple[str, int, str]] = []
    for space, records in by_space.items():
        for record in records:
            pair_id, target = record["pair"]["id"], int(record["target"])
            for along, images, probs, energy in _walks(record, shown[(space, pair_id)]):
                positions = _position(len(probs))
                for k, (p, position) in enumerate(zip(probs.float(), positions, strict=True)):
                    values = [float(v) for v in p.tolist()]
                    image = wandb.Image(image_array(images[k])) if images is not None else None
                    points.append(
                        [
                            *(space, pair_id, record["verdict"], along, k, position, image),
                            wandb.Image(bar_image(p, target)),
                            class_names[int(p.argmax())],
                            class_names[target],
                            values[target],
                            float(energy[k]),
                            *values,
                        ]
                    )
                    curve = f"pair {pair_id} {along}"
                    profiles.append([pair_id, space, along, curve, position, float(energy[k])])
                    walks.append((space, pair_id, along))
    return points, profiles, walks


def _energy_plots(profiles: list[list[Any]], spaces: list[str]) -> dict[str, Any]:
    """One line plot ``energy/<space>`` per space of the profile rows (in parts, as tables)."""
    import wandb

    plots: dict[str, Any] = {}
    for space in spaces:
        rows = [row for row in profiles if row[1] == space]
        parts = table_parts(f"energy/{space}", PROFILE_COLUMNS, rows, [row[3] for row in rows])
        for key, part in parts.items():
            plots[key] = wandb.plot.line(
                part,
                "position",
                "energy",
                stroke="curve",
                title=f"{space}: energy -log p(target) along the line and the path"
                + (f" ({key.rpartition('_')[2]})" if key != f"energy/{space}" else ""),
            )
    return plots


def log_paths_report(
    store: RunStore,
    run_id: str,
    table: dict[str, dict[str, dict]],
    by_space: dict[str, list[dict]],
    figure_files: dict[tuple[str, int], Path],
    shown: dict[tuple[str, int], tuple[Tensor | None, Tensor | None]],
    options: WandbOptions,
    summaries: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
) -> None:
    """Log a path run's report into run ``run_id`` and finish it; mark the folder as reported.

    Call inside :func:`~connectivity.reporting.wandb_log.runs.run_folder_environment`, so the
    staged files land in the folder.

    Args:
        store: The run folder.
        run_id: The W&B run (:func:`~connectivity.reporting.wandb_log.runs.report_run_id`).
        table: The verdict counts (:func:`~connectivity.reporting.tables.verdict_table`).
        by_space: The records, by space.
        figure_files: The figure file of each ``(space, pair id)`` drawn.
        shown: ``(line, path)`` images of each ``(space, pair id)`` (None: not images).
        options: W&B settings.
        summaries: Further tables of the report, ``{name: (header, rows)}`` (``baselines``:
            the trained network beside untrained ones), each logged as a table of that name.
    """
    import wandb

    manifest = store.manifest()
    class_names = manifest["class_names"]
    run = _open_run(store, run_id, options, "paths")
    pairs = [
        [*row[:-1], _image(figure_files.get((row[0], row[1])))]
        for row in pair_rows(by_space, class_names)
    ]
    points, profiles, walks = _point_rows(by_space, shown, class_names)
    point_columns = [*POINT_COLUMNS, *(f"p_{name}" for name in class_names)]
    run.log(
        {
            **_verdict_tables(table),
            **table_parts("pairs", PAIR_COLUMNS, pairs),
            **table_parts("points", point_columns, points, walks),
            **table_parts("energy_profiles", PROFILE_COLUMNS, profiles, walks),
            **_energy_plots(profiles, list(by_space)),
            **{
                name: wandb.Table(columns=header, data=rows)
                for name, (header, rows) in (summaries or {}).items()
            },
            **(detect_plots(by_space) if has_adversarial(by_space) else {}),
        }
    )
    run.summary.update(
        {
            f"{space}/{check}/{v}": values[v]
            for space, checks in table.items()
            for check, values in checks.items()
            for v in VERDICTS
        }
    )
    _log_classifier(run, manifest)
    _finish_run(run, store, run_id)


def log_graph_report(
    store: RunStore,
    run_id: str,
    tables: dict[str, tuple[list[str], list[list[Any]]]],
    figures: dict[str, Path],
    summary: dict[str, Any],
    options: WandbOptions,
    job_type: str = "graph",
) -> None:
    """Log a graph (or surfaces) run's report into run ``run_id`` and finish it; mark the
    folder as reported.

    Call inside :func:`~connectivity.reporting.wandb_log.runs.run_folder_environment`.

    Args:
        store: The run folder.
        run_id: The W&B run.
        tables: ``{key: (columns, rows)}``; a cell that is a :class:`~pathlib.Path` is logged
            as that image file.
        figures: ``{key: figure file}``, each logged as an image.
        summary: The run's summary values.
        options: W&B settings.
        job_type: The W&B run's job type (``graph``, ``surfaces``).
    """
    run = _open_run(store, run_id, options, job_type)
    logged: dict[str, Any] = {}
    for key, (columns, rows) in tables.items():
        cells = [[_image(v) if isinstance(v, Path) else v for v in row] for row in rows]
        logged.update(table_parts(key, columns, cells))
    logged.update({key: _image(file) for key, file in figures.items()})
    run.log(logged)
    run.summary.update(summary)
    _finish_run(run, store, run_id)


def _log_classifier(run: Any, manifest: dict[str, Any]) -> None:
    """The classifier checkpoint as a ``model`` artifact, logged by the run (W&B refuses
    ``use_artifact`` offline, so the run is its producer rather than its consumer).

    A ``file://`` reference, not a copy: checkpoints can be large and already lie on disk. The
    checkpoint stays outside the run folder: ``wandb sync`` uploads its path, digest and
    metadata only, never the file, so a copied folder syncs without it. Its digest is the
    file's MD5 (W&B's own check of a reference), so other weights at the same path make a new
    artifact version; the run manifest's SHA-256 is in the metadata. A run whose classifier
    was a module in memory (no checkpoint file) logs none.
    """
    import wandb

    path = Path(manifest.get("classifier") or "")
    if not path.is_file():
        return
    sha = manifest.get("classifier_sha256")
    artifact = wandb.Artifact(
        "classifier",
        type="model",
        description="Classifier checkpoint the paths were searched with (file reference).",
        metadata={"path": str(path.resolve()), "sha256": sha},
    )
    artifact.add_reference(path.resolve().as_uri(), name=path.name)
    run.log_artifact(artifact, aliases=["latest", f"sha256-{sha[:12]}"] if sha else None)


def detect_plots(by_space: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What W&B logs of the detector: ``detect`` (a ``wandb.Table`` of :func:`detect_rows`,
    columns :data:`DETECT_COLUMNS`, ``auroc`` None where there is none) and per space with an
    AUROC a line plot ``detect_roc/<space>`` of its ROC curves (true against false positive
    rate, one stroke per score, from a table of columns ``score``, ``fpr``, ``tpr``)."""
    import wandb

    rows = detect_rows(by_space)
    logged: dict[str, Any] = {
        "detect": wandb.Table(
            columns=DETECT_COLUMNS, data=[[row[k] for k in DETECT_COLUMNS] for row in rows]
        )
    }
    for space, curves in detect_curves(by_space).items():
        if not curves:
            continue
        points = [
            [name, float(x), float(y)]
            for name, (fpr, tpr) in curves.items()
            for x, y in zip(fpr.tolist(), tpr.tolist(), strict=True)
        ]
        table = wandb.Table(columns=["score", "fpr", "tpr"], data=points)
        logged[f"detect_roc/{space}"] = wandb.plot.line(
            table, "fpr", "tpr", stroke="score", title=f"{space}: ROC of each score (adversarial)"
        )
    return logged
