"""The report of a path experiment, rebuilt from its saved records alone.

``connectivity report <run folder>`` calls :func:`write_report`: the verdict table (Markdown and
CSV, :mod:`connectivity.reporting.tables`), the pair figures ``figures`` asks for that are
missing or stale (:mod:`connectivity.reporting.drawing`), the web pages
(:mod:`connectivity.reporting.gallery`) and the W&B run of the folder
(:mod:`connectivity.reporting.wandb_log`). No optimisation is rerun; every file is written by the
store (:class:`~connectivity.store.records.RunStore`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from connectivity.reporting.baselines import (
    TRAINED,
    baseline_keys,
    baseline_records,
    comparison,
    comparison_markdown,
    comparison_rows,
    record_groups,
    write_comparison,
)
from connectivity.reporting.detect import has_adversarial, write_detect
from connectivity.reporting.drawing import (
    check_figures,
    draw_figures,
    load_decoders,
    points_as_images,
)
from connectivity.reporting.gallery import gallery_pages
from connectivity.reporting.tables import (
    pairs_csv,
    table_csv,
    table_markdown,
    verdict_table,
)
from connectivity.reporting.wandb_log import (
    WandbOptions,
    log_paths_report,
    relocate_offline_runs,
    report_run_id,
    run_folder_environment,
)
from connectivity.store.records import RunStore, figure_name


def _shown(
    by_space: dict[str, list[dict[str, Any]]], decoders: dict[str, Any]
) -> dict[tuple[str, int], tuple[Tensor | None, Tensor | None]]:
    """The line's and the path's points of each ``(space, pair id)`` as a person sees them:
    the images themselves, decoded, or None (a latent space without a decoder)."""
    return {
        (space, record["pair"]["id"]): (
            points_as_images(space, record["line"], decoders),
            points_as_images(space, record["path"], decoders),
        )
        for space, records in by_space.items()
        for record in records
    }


def write_report(
    store: RunStore,
    decoders: dict[str, str] | None = None,
    wandb: WandbOptions | None = None,
    figures: str = "auto",
) -> str:
    """Write the table, figures and web pages of a run from its records; log them to W&B if
    asked. The pages (:func:`~connectivity.reporting.gallery.gallery_pages`) are written also
    without ``figures``: they link the figures found in the folder.

    W&B gets the report once per run folder (see :class:`WandbOptions`): into the run of
    :func:`~connectivity.reporting.wandb_log.paths_logger` when it is still active, else into the
    folder's run id (resumed); a folder whose report is logged already is skipped unless
    ``wandb.relog``. Offline runs found in the folder then name their staged files relative to
    the folder (:func:`~connectivity.reporting.wandb_log.relocate_offline_runs`), so a copy of the
    folder syncs as it is.

    Args:
        store: The run folder.
        decoders: ``{space: decoder checkpoint}`` used to show latent points as images.
        wandb: W&B settings (None: no W&B).
        figures: Which pair figures to draw (``auto``, ``all``, ``none``, see
            :func:`~connectivity.reporting.drawing.draw_figures`); figures already drawn from
            the same record, decoder and code are kept.

    Returns:
        The table as Markdown (also printed).

    Raises:
        OptionsError: ``figures`` is not one of them (before any work).
        RunFolderError: The folder has no ``run.json``, or a record cannot be read.
    """
    check_figures(figures)
    manifest = store.manifest()
    class_names = manifest["class_names"]
    by_space = store.load_all()
    missing = {s: len(manifest["pairs"]) - len(rs) for s, rs in by_space.items()}
    baselines = baseline_records(store)
    groups = record_groups(manifest, by_space, baselines)
    # Table 1 counts natural pairs, as the paper's; adversarial ends are set beside them below.
    table = verdict_table(groups[TRAINED])
    adversarial = sum(bool(p.get("adversarial")) for p in manifest["pairs"])
    markdown = table_markdown(table, len(manifest["pairs"]) - adversarial)
    if adversarial:
        markdown += (
            f"\nNatural pairs only: the {adversarial} pairs with an adversarial end are set "
            "beside them below.\n"
        )
    for key, (_, _, asked) in baseline_keys(manifest).items():
        missing[key] = asked - len(baselines[key])
    if any(missing.values()):
        markdown += (
            "\nNot yet decided (rerun the same config to finish): "
            + ", ".join(f"{s}: {n}" for s, n in missing.items() if n)
            + "\n"
        )
    summaries = {}
    if len(groups) > 1:
        compared = comparison(groups)
        markdown += "\n" + comparison_markdown(compared)
        summaries["baselines"] = comparison_rows(compared)
        write_comparison(store, compared)
    store.save_text("table.md", markdown)
    store.save_text("table.csv", table_csv(table))
    print(f"\n{markdown}\nRun folder: {store.folder}", flush=True)

    drawn = draw_figures(store, by_space, decoders or {}, figures)
    store.save_text("pairs.csv", pairs_csv({**by_space, **baselines}, class_names, drawn))
    if has_adversarial(by_space):  # issue 23: only runs with adversarial pairs have these files
        print(f"\n{write_detect(store, by_space)}", flush=True)
    run_id = report_run_id(store, wandb) if wandb is not None and wandb.enabled else None
    if run_id is not None:
        assert wandb is not None
        # Every point as a person sees it, for the W&B tables: only when they are logged.
        shown = _shown(by_space, load_decoders(decoders or {}, manifest.get("classifier")))
        figure_files: dict[tuple[str, int], Path] = {
            key: store.path(figure_name(*key)) for key in drawn
        }
        with run_folder_environment(store.folder):
            log_paths_report(store, run_id, table, by_space, figure_files, shown, wandb, summaries)
    # Always: the pages link only the figures whose files exist, whichever were drawn.
    for page, text in gallery_pages(by_space, manifest, store.folder, markdown).items():
        store.save_text(page, text)
    relocate_offline_runs(store.folder, finished=run_id)
    return markdown


def load_records(folder: str | Path) -> dict[str, list[dict]]:
    """All saved records of a run folder, by space (for notebooks)."""
    return RunStore(folder).load_all()
