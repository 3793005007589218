"""The report of a surfaces run, rebuilt from its saved records alone: the surfaces table per
space (``surfaces.md``, ``surfaces.csv``), one row per loop (``loops.csv``), a figure per loop
and space (its parameter domain coloured by predicted class before and after relaxation,
``figures/<space>/loop_<id>.png``) and the W&B run of the folder. With an untrained baseline
(``baseline`` in ``run.json``), ``surfaces.md`` sets the trained network beside it
(``baselines.csv`` too) and ``loops.csv`` holds its loops under their records key
(``untrained_seed<s>/<space>``); figures are drawn for the trained network's loops only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from connectivity.maps import PlaneMap
from connectivity.reporting.baselines import baseline_keys
from connectivity.reporting.drawing import check_figures, load_decoders, points_as_images
from connectivity.reporting.surface_figures import (
    plane_map_figure,
    surface_domain_figure,
    surface_images_figure,
)
from connectivity.reporting.surface_tables import (
    loops_csv,
    surface_comparison,
    surface_comparison_markdown,
    surface_comparison_rows,
    surfaces_csv,
    surfaces_markdown,
)
from connectivity.reporting.tables import csv_text
from connectivity.reporting.wandb_log import (
    WandbOptions,
    log_graph_report,
    relocate_offline_runs,
    report_run_id,
    run_folder_environment,
)
from connectivity.store.surfaces import SurfaceStore, loop_figure_name


def _draw(
    store: SurfaceStore,
    space: str,
    record: dict[str, Any],
    names: list[str],
    decoders: dict[str, Any],
) -> Path | None:
    """The loop's figures: its domain before and after relaxation, the plane through its first
    three inputs, and images along the surface where its points are images or ``decoders``
    decode them; the first figure's file (None where the record holds no domain maps: an open
    loop)."""
    before, after = record.get("domain_before"), record.get("domain_after")
    if before is None or after is None:
        return None
    loop = record["loop"]
    corners = record["uv"][record["corners"]] if "corners" in record else record["uv"][:0]
    title = (
        f"{space}, loop {loop['id']} ({names[loop['label']] if names else loop['label']}): "
        f"{record['verdict']} ({record['certificate']})"
    )
    figure = surface_domain_figure(before, after, corners, names, title)
    name = loop_figure_name(space, int(loop["id"]))
    _save(store, name, figure)
    if record.get("plane_classes") is not None:
        _save(store, name.replace(".png", "_plane.png"), _plane_figure(space, record, names))
    strip = record.get("strip")
    if strip is not None:
        flat = points_as_images(space, record["flat"][strip], decoders)
        surface = points_as_images(space, record["points"][strip], decoders)
        if flat is not None and surface is not None and flat.dim() == 4:
            figure = surface_images_figure(
                flat,
                surface,
                record["strip_flat"],
                record["strip_surface"],
                names,
                f"{space}, loop {loop['id']}: images from input 0 across the surface",
            )
            _save(store, name.replace(".png", "_images.png"), figure)
    return store.path(name)


def _save(store: SurfaceStore, name: str, figure: Any) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    store.save_bytes(name, buffer.getvalue())


def _plane_figure(space: str, record: dict[str, Any], names: list[str]) -> Any:
    """The plane through the loop's first three inputs, coloured by predicted class."""
    classes = record["plane_classes"].long().unsqueeze(0)
    u, v = record["plane_u"], record["plane_v"]
    plane = PlaneMap(
        u=u,
        v=v,
        classes=classes,
        margins=torch.zeros(classes.shape, dtype=torch.float64),
        corners=record["plane_corners"],
        input_classes=torch.full((1, 3), int(record["target"])),
        agreement=torch.ones(classes.shape[1:], dtype=torch.float64),
        pairwise=torch.ones(1, 1, dtype=torch.float64),
        layer=space,
        target=None,
    )
    loop = record["loop"]
    return plane_map_figure(plane, names, titles=[f"{space}, loop {loop['id']}: inputs 0, 1, 2"])


def write_surface_report(
    store: SurfaceStore,
    wandb: WandbOptions | None = None,
    figures: str = "auto",
    decoders: dict[str, str] | None = None,
) -> str:
    """Write the tables and figures of a surfaces run from its records; log them to W&B if
    asked (once per folder, as path runs do). ``decoders`` (``{space: checkpoint}``, default
    the run's own) show latent surfaces as images. With an untrained baseline, the comparison
    of the trained network's loops with each seed's (and their mean and sd) follows the table
    and goes to ``baselines.csv`` and W&B's ``baselines`` table; figures are drawn for the
    trained network's loops only.

    Returns:
        The surfaces table as Markdown (also printed), with the baselines' comparison.

    Raises:
        OptionsError: ``figures`` is not ``auto``, ``all`` or ``none``.
        RunFolderError: no ``run.json``, or a record cannot be read.
    """
    check_figures(figures)
    manifest = store.manifest()
    names = manifest.get("class_names") or []
    by_space = {space: store.load_loops(space) for space in manifest["spaces"]}
    loops, size = len(manifest["loops"]), manifest["sampling"]["size"]
    markdown = surfaces_markdown(by_space, loops, size)
    missing = {s: loops - len(rs) for s, rs in by_space.items()}
    asked = baseline_keys(manifest, "loops")
    baselines = {key: store.load_loops(key) for key in asked}
    missing.update({key: n - len(baselines[key]) for key, (_, _, n) in asked.items()})
    if any(missing.values()):
        markdown += (
            "\nNot yet decided (rerun the same config to finish): "
            + ", ".join(f"{s}: {n}" for s, n in missing.items() if n)
            + "\n"
        )
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    if baselines:
        compared = surface_comparison(manifest, by_space, baselines)
        markdown += "\n" + surface_comparison_markdown(compared)
        tables["baselines"] = surface_comparison_rows(compared)
        store.save_text("baselines.csv", csv_text(*tables["baselines"]))
    store.save_text("surfaces.md", markdown)
    store.save_text("surfaces.csv", surfaces_csv(by_space))
    store.save_text("loops.csv", loops_csv({**by_space, **baselines}))
    print(f"\n{markdown}\nRun folder: {store.folder}", flush=True)
    drawn: dict[str, Path] = {}
    shown = load_decoders(decoders or store.decoders(), manifest.get("classifier"))
    if figures != "none":
        for space, records in by_space.items():
            for record in records:
                file = _draw(store, space, record, names, shown)
                if file is not None:
                    drawn[f"{space}/loop_{int(record['loop']['id']):04d}"] = file
    run_id = report_run_id(store, wandb) if wandb is not None and wandb.enabled else None
    if run_id is not None:
        assert wandb is not None
        rows = [
            [space, r["loop"]["id"], r["verdict"], r["certificate"], float(r["min_margin"])]
            for space, records in by_space.items()
            for r in records
        ]
        tables["loops"] = (["space", "loop", "verdict", "certificate", "min_margin"], rows)
        summary = {
            f"{space}/{verdict}": sum(r["verdict"] == verdict for r in records)
            for space, records in by_space.items()
            for verdict in ("planar", "curved", "none", "diverged", "no-loop")
        }
        with run_folder_environment(store.folder):
            log_graph_report(store, run_id, tables, drawn, summary, wandb, job_type="surfaces")
    relocate_offline_runs(store.folder, finished=run_id)
    return markdown
