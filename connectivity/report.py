"""The report of a path experiment, rebuilt from its saved records alone.

``connectivity report <run folder>`` calls :func:`write_report`: the verdict table (Markdown and
CSV), one figure per pair and space, and the W&B run with the table, the figures and a
per-point table. No optimisation is rerun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from connectivity.figures import bar_image, image_array, pair_figure, save_figure
from connectivity.records import (
    VERDICTS,
    RunStore,
    atomic_write_text,
    table_csv,
    table_markdown,
    verdict_table,
)
from connectivity.split import INPUT


@dataclass
class WandbOptions:
    """Weights & Biases logging of the table, figures and per-point table.

    Args:
        enabled: Log to W&B at all.
        project: W&B project.
        offline: Write an offline run under the run folder (``wandb sync`` uploads it later).
    """

    enabled: bool = True
    project: str = "connectivity"
    offline: bool = True


def _decoders(paths: dict[str, str]) -> dict[str, Any]:
    if not paths:
        return {}
    from connectivity.decoder import DecoderModule

    return {space: DecoderModule.from_checkpoint(path) for space, path in paths.items()}


def _images(space: str, points: Tensor, decoders: dict[str, Any]) -> Tensor | None:
    """How a person sees the points of a space: the images themselves, decoded, or not at all."""
    if space == INPUT:
        return points
    if space in decoders:
        return decoders[space].decode(points).cpu()
    return None


def write_report(
    store: RunStore,
    decoders: dict[str, str] | None = None,
    wandb: WandbOptions | None = None,
    figures: bool = True,
) -> str:
    """Write the table and figures of a run from its records; log them to W&B if asked.

    Args:
        store: The run folder.
        decoders: ``{space: decoder checkpoint}`` used to show latent points as images.
        wandb: W&B settings (None: no W&B).
        figures: Also draw one figure per pair and space.

    Returns:
        The table as Markdown (also printed).
    """
    manifest = store.manifest()
    class_names = manifest["class_names"]
    by_space = store.load_all()
    missing = {s: len(manifest["pairs"]) - len(rs) for s, rs in by_space.items()}
    table = verdict_table(by_space)
    markdown = table_markdown(table, len(manifest["pairs"]))
    if any(missing.values()):
        markdown += (
            "\nNot yet decided (rerun the same config to finish): "
            + ", ".join(f"{s}: {n}" for s, n in missing.items() if n)
            + "\n"
        )
    atomic_write_text(store.folder / "table.md", markdown)
    atomic_write_text(store.folder / "table.csv", table_csv(table))
    print(f"\n{markdown}\nRun folder: {store.folder}")

    log_to_wandb = wandb is not None and wandb.enabled
    if not (figures or log_to_wandb):
        return markdown
    decoder_modules = _decoders(decoders or {})
    figure_files: dict[tuple[str, int], Path] = {}
    shown: dict[tuple[str, int], tuple[Tensor | None, Tensor | None]] = {}
    for space, records in by_space.items():
        for record in records:
            pair = record["pair"]
            line_images = _images(space, record["line"], decoder_modules)
            path_images = _images(space, record["path"], decoder_modules)
            shown[(space, pair["id"])] = (line_images, path_images)
            if not figures:
                continue
            title = (
                f"{space}: pair {pair['id']} (items {pair['start_index']} -> {pair['end_index']}), "
                f"class {class_names[record['target']]!r}, verdict {record['verdict']} "
                f"(pivots only: {record['pivot_verdict']})"
            )
            file = store.folder / "figures" / space / f"pair_{pair['id']:04d}.png"
            save_figure(pair_figure(record, title, line_images, path_images), file)
            figure_files[(space, pair["id"])] = file
    if log_to_wandb:
        _log_wandb(store, manifest, table, by_space, figure_files, shown, wandb)
    return markdown


def _log_wandb(
    store: RunStore,
    manifest: dict[str, Any],
    table: dict[str, dict[str, dict]],
    by_space: dict[str, list[dict]],
    figure_files: dict[tuple[str, int], Path],
    shown: dict[tuple[str, int], tuple[Tensor | None, Tensor | None]],
    options: WandbOptions,
) -> None:
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("offline" if options.offline else "online")
    run = wandb.init(
        project=options.project,
        name=store.folder.name,
        dir=str(store.folder),
        mode=mode,
        config={k: v for k, v in manifest.items() if k != "pairs"},
        job_type="paths",
        reinit="finish_previous",
    )
    class_names = manifest["class_names"]
    counts = wandb.Table(columns=["space", "check", *VERDICTS])
    for space, checks in table.items():
        for check, values in checks.items():
            counts.add_data(space, check, *(values[v] for v in VERDICTS))
    pairs = wandb.Table(
        columns=[
            "space",
            "pair",
            "class",
            "verdict",
            "pivot_verdict",
            "steps",
            "min_target_probability",
            "length_ratio",
            "figure",
        ]
    )
    points = wandb.Table(
        columns=[
            "space",
            "pair",
            "verdict",
            "along",
            "position",
            "image",
            "predicted",
            "target",
            "target_probability",
            "softmax",
        ]
    )
    for space, records in by_space.items():
        for record in records:
            pair_id, target = record["pair"]["id"], record["target"]
            file = figure_files.get((space, pair_id))
            pairs.add_data(
                space,
                pair_id,
                class_names[target],
                record["verdict"],
                record["pivot_verdict"],
                record["steps"],
                record["min_target_probability"],
                record["length_ratio"],
                wandb.Image(str(file)) if file else None,
            )
            line_images, path_images = shown[(space, pair_id)]
            walks = [("line", line_images, record["line_probabilities"])]
            if record["verdict"] != "linear":
                walks.append(("path", path_images, record["path_probabilities"]))
            for along, images, probs in walks:
                for k, p in enumerate(probs):
                    predicted = int(p.argmax())
                    points.add_data(
                        space,
                        pair_id,
                        record["verdict"],
                        along,
                        k,
                        wandb.Image(image_array(images[k])) if images is not None else None,
                        class_names[predicted],
                        class_names[target],
                        float(p[target]),
                        wandb.Image(bar_image(p, target)),
                    )
    run.log({"verdicts": counts, "pairs": pairs, "points": points})
    run.summary.update(
        {
            f"{space}/{check}/{v}": values[v]
            for space, checks in table.items()
            for check, values in checks.items()
            for v in VERDICTS
        }
    )
    run.finish()


def load_records(folder: str | Path) -> dict[str, list[dict]]:
    """All saved records of a run folder, by space (for notebooks)."""
    return RunStore(folder).load_all()
