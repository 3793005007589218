"""The report of a path experiment, rebuilt from its saved records alone.

``connectivity report <run folder>`` calls :func:`write_report`: the verdict table (Markdown and
CSV), the pair figures ``figures`` asks for that are missing or stale (:func:`draw_figures`), and
the W&B run of the folder. No optimisation is rerun.

The W&B run (one per run folder, see :class:`WandbOptions`) holds:

* per step, from the Trainer's logger (:func:`paths_logger`): ``<space>/max_energy``,
  ``<space>/max_force``, ``<space>/on_target`` and ``<space>/active_pairs``;
* ``points``: one row per point of every line and path, with the softmax as numeric
  ``p_<class>`` columns, the predicted and target class, the target probability, the energy
  ``-log p(target)``, the position along the path (0..1), the point's image (input space, or
  decoded) and its softmax bar chart;
* ``energy_profiles`` (pair, space, along, position, energy) and one line plot per space,
  ``energy/<space>``;
* ``table1`` (the verdict counts per space) and its bar chart ``table1_chart``;
* ``pairs`` (one row per pair and space, with its figure) and ``verdicts`` (Table 1 wide);
* the classifier checkpoint as a ``model`` artifact (a ``file://`` reference, not a copy).

W&B keeps at most ``wandb.Table.MAX_ROWS`` (10,000) rows of a table in the run's own copy and
``wandb.Table.MAX_ARTIFACT_ROWS`` (200,000) in its ``run_table`` artifact, and drops the rest
(the first silently). A table with more rows is logged whole, in parts of at most that many
rows, each walk of a pair (its line or its path) in one part: ``points``, ``points_part2``,
...; the report prints one line naming the parts (:func:`table_parts`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import io
import json
import os
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from connectivity.engine.checks import distances_from_line
from connectivity.engine.split import INPUT
from connectivity.errors import ConnectivityError, OptionsError
from connectivity.lightning.output import prepare_wandb_logger, wandb_run_line
from connectivity.reporting import figures as figures_module
from connectivity.reporting.figures import (
    bar_image,
    checked_points,
    image_array,
    lowest_margin,
    pair_figure,
    save_figure,
)
from connectivity.store.records import (
    ROW_NAMES,
    VERDICTS,
    RunStore,
    atomic_write_bytes,
    atomic_write_text,
    count_verdicts,
    table_csv,
    table_markdown,
    verdict_table,
)

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record


@dataclass
class WandbOptions:
    """Weights & Biases logging of a path run (per-step metrics, tables, figures, checkpoint).

    Each run folder has one W&B run: its id is kept in ``<run folder>/wandb_id``, and
    everything W&B writes for it (the offline run, staged media and tables, caches, its
    service's logs) stays under ``<run folder>/wandb``. Offline runs name their staged files
    relative to the run folder, so a copied folder is uploaded as it is, from inside it:
    ``cd <run folder> && wandb sync wandb/offline-run-*`` (several folders of one id are one
    run, synced in order of start time). The classifier checkpoint is a reference to its path,
    outside the folder, and is never uploaded.

    Args:
        enabled: Log to W&B at all.
        project: W&B project.
        offline: Write an offline run under the run folder (``wandb sync`` uploads it later).
            ``WANDB_MODE`` in the environment wins over this.
        relog: Log the report again, as a second W&B run with a fresh id, even though this
            folder's report was logged already (by default a rerun of ``paths`` or ``report``
            on a logged run adds nothing to W&B).
    """

    enabled: bool = True
    project: str = "connectivity"
    offline: bool = True
    relog: bool = False


def load_decoders(paths: dict[str, str], classifier: str | None = None) -> dict[str, Any]:
    """``{space: DecoderModule}`` of a run's ``{space: decoder checkpoint}``.

    Args:
        paths: The decoder checkpoints by space.
        classifier: The run's classifier checkpoint. A decoder reads its head from the
            classifier it was trained on; the path saved in it may be relative to another
            folder, so the run's own classifier is used when that file exists (the decoder's
            digest still refuses other weights).

    Raises:
        CheckpointError: a decoder cannot be loaded, or was trained on another classifier.
        ConnectivityError: a decoder maps another layer than the space it is given for.
    """
    if not paths:
        return {}
    from connectivity.decoder import DecoderModule

    if classifier is not None and not Path(classifier).is_file():
        classifier = None
    decoders = {}
    for space, path in paths.items():
        decoder = DecoderModule.from_checkpoint(path, classifier=classifier)
        if decoder.hparams.layer != space:
            raise ConnectivityError(
                f"the decoder {path} maps layer {decoder.hparams.layer!r} to images, but it is "
                f"given for {space!r}; give it as decoders.{decoder.hparams.layer}"
            )
        decoders[space] = decoder
    return decoders


def _images(space: str, points: Tensor, decoders: dict[str, Any]) -> Tensor | None:
    """How a person sees the points of a space: the images themselves, decoded, or not at all."""
    if space == INPUT:
        return points
    if space in decoders:
        return decoders[space].decode(points).cpu()
    return None


def _decided(record: dict[str, Any]) -> str:
    """``"verdict nonlinear (sampled check, min margin 2.04; pivots only: linear)"``."""
    margin = lowest_margin(record)
    return (
        f"verdict {record['verdict']} ({record.get('certificate', 'sampled')} check, min margin "
        f"{margin:.3g}; pivots only: {record['pivot_verdict']})"
    )


# The gallery shows what needs a look first: no path, diverged, bent paths, then straight ones.
GALLERY_ORDER = ("none", "diverged", "nonlinear", "linear")
DRAW_ALL = "connectivity report &lt;run folder&gt; --figures all"
_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1400px} figure{display:inline-block;"
    "margin:6px;width:440px;vertical-align:top} img{width:100%} figcaption{font-size:12px}"
    " table{border-collapse:collapse} td,th{border:1px solid #bbb;padding:3px 8px}"
    " ul.nofig{font-size:13px} nav{margin:8px 0}</style>"
)


def space_page(space: str) -> str:
    """The file name of a space's gallery page in the run folder."""
    return f"index_{space}.html"


def _markdown_html(text: str) -> str:
    """``table.md`` as HTML: its pipe table as a table (first row the header), other lines as
    paragraphs."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if not rows:
            return
        head, *body = rows
        out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        for row in body:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        out.append("</table>")
        rows.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(c and set(c) <= set("-: ") for c in cells):  # not the separator row
                rows.append(cells)
            continue
        flush()
        if stripped:
            out.append(f"<p>{html.escape(stripped)}</p>")
    flush()
    return "\n".join(out)


def _caption(record: dict[str, Any], class_names: list[str]) -> str:
    pair = record["pair"]
    return (
        f"pair {pair['id']} (items {pair['start_index']} &rarr; {pair['end_index']}), class "
        f"{html.escape(str(class_names[record['target']]))}: {html.escape(_decided(record))}"
    )


def _drawn(folder: Path, space: str, records: list[dict[str, Any]]) -> set[int]:
    """Ids of the pairs of ``space`` whose figure file exists in ``folder``."""
    ids = (r["pair"]["id"] for r in records)
    return {i for i in ids if (folder / figure_name(space, i)).is_file()}


def _link(file: str, text: str) -> str:
    return f"<a href='{html.escape(quote(file))}'>{html.escape(text)}</a>"


def gallery_pages(
    by_space: dict[str, list[dict[str, Any]]],
    manifest: dict[str, Any],
    folder: Path,
    table: str,
) -> dict[str, str]:
    """The web pages of a run folder, ``{file name: HTML}``.

    ``index.html``: the verdict table (``table``, the text of ``table.md``), links to
    ``table.md``, ``table.csv`` and ``pairs.csv``, and per space its verdict counts, how many
    of its figures are drawn and a link to its page. ``index_<space>.html`` (see
    :func:`space_page`): links to the summary and the other spaces' pages, then the space's
    pairs by verdict (no path found and diverged first, then nonlinear, then linear), closest
    calls (lowest target margin) first. A pair is shown by its figure where its file
    (:func:`figure_name` under ``folder``) exists, else by its caption alone, with the command
    that draws it: which figures were drawn is read from the folder, nothing else.

    Args:
        by_space: The records, by space (:meth:`RunStore.load_all`).
        manifest: The run's ``run.json``.
        folder: The run folder (where the figures are looked for).
        table: The verdict table as Markdown.
    """
    class_names = manifest["class_names"]
    name = html.escape(str(manifest.get("name", "paths")))
    head = f"<!doctype html><meta charset='utf-8'><title>{name}</title>{_STYLE}"
    drawn = {space: _drawn(folder, space, records) for space, records in by_space.items()}
    index = [
        head,
        f"<h1>{name}: {len(manifest['pairs'])} pairs in {len(by_space)} spaces</h1>",
        "<p>Files: "
        + ", ".join(_link(f, f) for f in ("table.md", "table.csv", "pairs.csv"))
        + " (one row per pair and space, with its figure's file).</p>",
        _markdown_html(table),
        "<p>Verdicts rest on the check named in each caption: <em>sampled</em> checks a fixed "
        "number of points along the path; between them the class can change. <em>No path "
        "found</em> is not <em>no path exists</em>.</p>",
        "<h2>Spaces</h2><ul>",
    ]
    for space, records in by_space.items():
        counts = count_verdicts(records)
        said = ", ".join(f"{counts[v]} {v}" for v in GALLERY_ORDER)
        index.append(
            f"<li>{_link(space_page(space), space)}: {said}; {len(drawn[space])} of "
            f"{len(records)} figures drawn</li>"
        )
    index.append("</ul>")
    if any(len(drawn[s]) < len(rs) for s, rs in by_space.items()):
        index.append(f"<p>To draw every figure: <code>{DRAW_ALL}</code>.</p>")
    pages = {"index.html": "\n".join(index) + "\n"}

    for space, records in by_space.items():
        nav = [_link("index.html", "summary")] + [
            f"<b>{html.escape(s)}</b>" if s == space else _link(space_page(s), s) for s in by_space
        ]
        parts = [
            head,
            "<nav>" + " | ".join(nav) + "</nav>",
            f"<h1>{html.escape(space)}: {len(records)} pairs, {len(drawn[space])} figures</h1>",
        ]
        for verdict in GALLERY_ORDER:
            chosen = sorted((r for r in records if r["verdict"] == verdict), key=lowest_margin)
            if not chosen:
                continue
            parts.append(f"<h2>{html.escape(ROW_NAMES[verdict])}: {len(chosen)}</h2>")
            without = []
            for record in chosen:
                caption = _caption(record, class_names)
                if record["pair"]["id"] not in drawn[space]:
                    without.append(f"<li>{caption}</li>")
                    continue
                file = html.escape(quote(figure_name(space, record["pair"]["id"])))
                parts.append(
                    f"<figure><a href='{file}'><img src='{file}' loading='lazy'></a>"
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            if without:
                parts.append(
                    f"<p>{len(without)} without a figure (draw them with <code>{DRAW_ALL}"
                    "</code>):</p><ul class='nofig'>" + "".join(without) + "</ul>"
                )
        pages[space_page(space)] = "\n".join(parts) + "\n"
    return pages


def _images_note(space: str, decoders: dict[str, Any]) -> str | None:
    """How the images of a latent space's figures were made (None: the points are images)."""
    if space == INPUT or space not in decoders:
        return None
    from connectivity.decoder import validation_note

    return f"decoded by the {space} decoder ({validation_note(decoders[space].validation)})"


# Where W&B writes, inside the run folder: the offline runs (``dir``), the staged copies of
# logged tables, images and artifacts (WANDB_DATA_DIR; by default in the user's home, which
# `wandb sync` on another machine would miss), caches and the service's own logs.
WANDB_SUBDIR = "wandb"
DATA_SUBDIR = "data"
WANDB_ID_FILE = "wandb_id"
REPORTED_FILE = "wandb_reported.json"
PER_STEP_METRICS = ("max_energy", "max_force", "on_target", "active_pairs")


def wandb_environment(folder: Path) -> dict[str, str]:
    """The environment that keeps every file W&B writes for ``folder`` inside it."""
    root = Path(folder).resolve() / WANDB_SUBDIR
    return {
        "WANDB_DIR": str(root.parent),
        "WANDB_DATA_DIR": str(root / DATA_SUBDIR),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
    }


@contextlib.contextmanager
def run_folder_environment(folder: Path) -> Iterator[None]:
    """Point W&B's directories inside ``folder`` while the block runs; the caller's values
    (set or unset) come back afterwards, also when the block raises. ``WANDB_MODE`` is
    restored too, since Lightning's logger sets it for offline runs."""
    values = wandb_environment(folder)
    saved = {k: os.environ.get(k) for k in (*values, "WANDB_MODE")}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _mode(options: WandbOptions) -> str:
    return os.environ.get("WANDB_MODE") or ("offline" if options.offline else "online")


def mark_reported(folder: Path, run_id: str) -> None:
    """Write the marker that W&B holds the folder's report, in run ``run_id``.

    It names the run only, not where the folder lay: a copied or moved folder's marker stays
    true (a marker of an earlier version also names the folder; that key is not read).
    """
    atomic_write_text(Path(folder) / REPORTED_FILE, json.dumps({"id": run_id}, indent=2) + "\n")


def _reported(store: RunStore) -> dict[str, Any] | None:
    """What the marker of a logged report says (``{"id": run id}``), or None."""
    path = store.folder / REPORTED_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a damaged marker: the report is logged again rather than lost


def wandb_run_id(store: RunStore, fresh: bool = False) -> str:
    """The W&B run id of a run folder, created (and kept in ``wandb_id``) on first use.

    Args:
        store: The run folder.
        fresh: Replace the kept id by a new one (a second W&B run, asked for by ``relog``).
    """
    path = store.folder / WANDB_ID_FILE
    if not fresh and path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    # Imported here: a report that logs nothing need not pay for importing W&B.
    from wandb.sdk.lib.runid import generate_id

    run_id = generate_id()
    atomic_write_text(path, run_id + "\n")
    return run_id


def _run_id_to_log(store: RunStore, options: WandbOptions) -> str | None:
    """The id the report goes to, or None when it was logged under the current id already
    and no ``relog`` is asked."""
    run_id = wandb_run_id(store)
    marker = _reported(store)
    if marker is None or marker.get("id") != run_id:
        return run_id
    if not options.relog:
        return None
    return wandb_run_id(store, fresh=True)


def report_run_id(store: RunStore, options: WandbOptions) -> str | None:
    """The W&B run id a folder's report goes to; None (and says so) when W&B holds it already."""
    run_id = _run_id_to_log(store, options)
    if run_id is None:
        where = (
            f"; it is offline: upload it with `cd {store.folder} && wandb sync wandb/offline-run-*`"
            if offline_runs(store.folder)
            else ""
        )
        print(
            f"W&B already holds this folder's report (run {wandb_run_id(store)}){where}; pass "
            "--wandb.relog true to log it again as a new run."
        )
    return run_id


def _config(store: RunStore) -> dict[str, Any]:
    """The run's config: ``run.json`` without the pair list (empty before the run starts)."""
    if not (store.folder / "run.json").is_file():
        return {}
    return {k: v for k, v in store.manifest().items() if k != "pairs"}


def _init_arguments(store: RunStore, options: WandbOptions, run_id: str) -> dict[str, Any]:
    return {
        "project": options.project,
        "name": store.folder.name,
        "id": run_id,
        "resume": "allow",
        "dir": str(store.folder.resolve()),
        "mode": _mode(options),
        "job_type": "paths",
        "config": _config(store),
    }


class RunFolderWandbLogger(WandbLogger):
    """A WandbLogger whose run starts with W&B's directories inside the run folder.

    Args:
        folder: The run folder.
        **kwargs: Arguments of :class:`~lightning.pytorch.loggers.WandbLogger`.
    """

    def __init__(self, folder: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)
        prepare_wandb_logger(self)

    @property
    def experiment(self) -> Any:
        # The run (and W&B's service, on its first start) read the directories at start.
        with run_folder_environment(self.folder):
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]


def paths_logger(store: RunStore, options: WandbOptions | None) -> RunFolderWandbLogger | None:
    """The Lightning logger of a path run: its W&B run is the one the report logs into.

    Give it to the ``Trainer`` of the experiment; the path module logs its per-step metrics
    ``<space>/max_energy``, ``<space>/max_force``, ``<space>/on_target`` and
    ``<space>/active_pairs`` through it. The run starts lazily (on first use, on rank zero
    only), with the folder's persistent id and ``resume="allow"``, so a resumed experiment
    continues the same W&B run; :func:`write_report` then logs the report into that run
    (while it is still active) and finishes it.

    Args:
        store: The run folder (its ``run.json`` becomes the run's config; when it is not
            written yet, the report adds it to the config later).
        options: W&B settings; None or ``enabled=False`` means no logger.

    Call it on every rank before the Trainer is built: only rank zero (by Lightning's
    ``rank_zero_only.rank``, read from the launcher's environment) reads or writes the
    folder's id; the other ranks get a logger that never starts a run.

    Returns:
        The logger, or None when W&B is off, or (on rank zero) when this folder's report was
        logged already and ``options.relog`` is false (a rerun of a finished run adds no run).
    """
    if options is None or not options.enabled:
        return None
    if rank_zero_only.rank != 0:
        # Other ranks never start the run (Lightning's logger is rank-zero only); they must
        # not race rank zero for the id file either.
        return RunFolderWandbLogger(store.folder, project=options.project, offline=False)
    run_id = _run_id_to_log(store, options)
    if run_id is None:
        return None
    arguments = _init_arguments(store, options, run_id)
    return RunFolderWandbLogger(
        store.folder,
        name=arguments.pop("name"),
        save_dir=arguments.pop("dir"),
        id=arguments.pop("id"),
        project=arguments.pop("project"),
        # `offline=True` would set WANDB_MODE for the whole process; `mode` does not.
        offline=False,
        **arguments,
    )


PAIR_COLUMNS = [
    "space",
    "pair",
    "start_index",
    "end_index",
    "class",
    "verdict",
    "pivot_verdict",
    "certificate",
    "status",
    "steps",
    "max_energy",
    "min_target_probability",
    "certificate_note",
    "min_margin",
    "line_min_margin",
    "pieces",
    "line_pieces",
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
    its indices, class, verdicts, the check they rest on (``certificate``: exact or sampled, and
    why sampled where ``auto`` or the exact check's tolerance chose it), how its search ended
    (``status``: linear, converged, certified, out_of_steps or diverged; empty for records
    saved before there was one), the lowest margins, the linear pieces the exact check went
    through and the stretches it found off the target, how far its path moved from the straight
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
                    record["verdict"],
                    record["pivot_verdict"],
                    record.get("certificate", "sampled"),
                    record.get("status", ""),
                    record["steps"],
                    record["max_energy"],
                    record["min_target_probability"],
                    record.get("certificate_note", ""),
                    lowest_margin(record, "path"),
                    lowest_margin(record, "line"),
                    record.get("pieces", 0),
                    record.get("line_pieces", 0),
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


def figure_name(space: str, pair_id: int) -> str:
    """Where a pair's figure lies in its run folder."""
    return f"figures/{space}/pair_{pair_id:04d}.png"


def pairs_csv(
    by_space: dict[str, list[dict[str, Any]]],
    class_names: list[str],
    drawn: set[tuple[str, int]] | None = None,
) -> str:
    """``pairs.csv``: :func:`pair_rows` under a header of :data:`PAIR_COLUMNS`."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(PAIR_COLUMNS)
    writer.writerows(pair_rows(by_space, class_names, drawn))
    return out.getvalue()


# Which figures a report draws (``figures``: the paths config, ``--figures`` of ``paths`` and
# ``report``). A digits figure takes about 0.3 s on a CPU core (2026-12-06: 129 in 40.6 s), and
# more with larger images and more pivots; ``auto`` draws the ones a person looks at.
FIGURES = ("auto", "all", "none")
# ``auto``'s closest linear calls per space: one row of the gallery.
CLOSEST_LINEAR = 3
FIGURES_HELP = (
    "which pair figures to draw: auto (every nonlinear, none and diverged pair, and the "
    f"{CLOSEST_LINEAR} linear pairs closest to a boundary per space), all, or none; a figure "
    "is drawn again only when its record, its decoder or the drawing code changed"
)
# What each figure was drawn from (see :func:`_stamp`), so a rerun redraws only what changed.
STAMPS_FILE = "figures/drawn.json"


def check_figures(value: Any) -> str:
    """``value`` when it is one of :data:`FIGURES`.

    Raises:
        OptionsError: Any other value (checked before any work).
    """
    if not isinstance(value, str) or value not in FIGURES:
        raise OptionsError(
            f"figures must be one of {', '.join(FIGURES)}, got {value!r}; auto draws the "
            "pairs worth a look, all draws every pair"
        )
    return value


def figures_to_draw(
    by_space: dict[str, list[dict[str, Any]]], figures: str, closest: int = CLOSEST_LINEAR
) -> set[tuple[str, int]]:
    """``(space, pair id)`` of every figure ``figures`` asks for.

    ``auto``: per space, every pair whose verdict is not ``linear`` (nonlinear, none, diverged)
    and the ``closest`` linear pairs with the lowest target margin along the line between its
    ends (ties: the lower pair id), no two sharing an input while others are left (a weakly
    classified input would otherwise make every pair it is in a "closest call" at its end);
    ``all``: every pair; ``none``: no pair.

    Raises:
        OptionsError: ``figures`` is not one of :data:`FIGURES`.
    """
    check_figures(figures)
    if figures == "none":
        return set()
    chosen: set[tuple[str, int]] = set()
    for space, records in by_space.items():
        if figures == "all":
            chosen |= {(space, r["pair"]["id"]) for r in records}
            continue
        linear = [r for r in records if r["verdict"] == "linear"]
        chosen |= {(space, r["pair"]["id"]) for r in records if r["verdict"] != "linear"}
        linear.sort(key=lambda r: (_margin_between_ends(r), r["pair"]["id"]))
        picked: list[dict[str, Any]] = []
        used: set[int] = set()
        for record in linear:
            ends = {record["pair"].get("start_index"), record["pair"].get("end_index")} - {None}
            if len(picked) < closest and not ends & used:
                picked.append(record)
                used |= ends
        ids = {id(r) for r in picked}
        picked += [r for r in linear if id(r) not in ids][: closest - len(picked)]
        chosen |= {(space, r["pair"]["id"]) for r in picked}
    return chosen


def _margin_between_ends(record: dict[str, Any]) -> float:
    """The lowest target margin of a line's checked points strictly between its ends (records
    without checked points: the lowest along the whole line)."""
    if record.get("line_check_position") is None:
        return lowest_margin(record, "line")
    position, margin, _ = checked_points(record, "line")
    inside = margin[(position > 0) & (position < 1) & np.isfinite(margin)]
    return float(inside.min()) if inside.size else lowest_margin(record, "line")


def _short_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# Bump when :func:`_draw_pair` or :func:`_decided` (a figure's title) changes what is drawn.
DRAWING_VERSION = 1
# The code that draws a figure, as imported (read now: the file may be edited while a run
# goes on): a change of it makes every figure stale.
_DRAWING_CODE = hashlib.sha256(
    Path(figures_module.__file__).read_bytes() + f"report {DRAWING_VERSION}".encode()
).hexdigest()[:16]


# The digest of a decoder checkpoint that is not there (a run folder copied without it).
UNKNOWN_DECODER = "missing"


def _decoder_digests(*decoders: dict[str, str]) -> list[dict[str, str]]:
    """``{space: digest of its decoder checkpoint}`` of each ``{space: checkpoint}`` given;
    :data:`UNKNOWN_DECODER` where the file is missing. A checkpoint named in several (the
    run's own decoders, given again) is read once."""
    found: dict[Path, str] = {}

    def digest(path: str) -> str:
        file = Path(path).resolve()
        if file not in found:
            found[file] = _short_digest(file.read_bytes()) if file.is_file() else UNKNOWN_DECODER
        return found[file]

    return [{space: digest(path) for space, path in paths.items()} for paths in decoders]


def _read_stamps(store: RunStore) -> dict[str, Any]:
    path = store.folder / STAMPS_FILE
    try:
        stamps = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # none yet, or damaged: figures are judged by their times alone
    return stamps if isinstance(stamps, dict) else {}


def _stamp(store: RunStore, space: str, pair_id: int, decoder: str | None, code: str) -> dict:
    """What a figure is drawn from: its record (digest of the file), decoder and code."""
    record = store.record_path(space, pair_id).read_bytes()
    return {"record": _short_digest(record), "decoder": decoder, "code": code}


def _up_to_date(
    store: RunStore,
    space: str,
    pair_id: int,
    stamp: dict[str, Any] | None,
    wanted: dict[str, Any],
    own_decoder: str | None,
) -> bool:
    """Whether a pair's figure on disk shows its record as the decoders and code now would.

    With a stamp, the stamp decides. A figure without one (drawn before stamps were kept) is
    taken when it is newer than its record and the space's decoder is the run's own, which
    is what drew it. Where the decoder checkpoint is missing (the folder was copied without
    it) the figure cannot be drawn again, and the one there is kept."""
    file = store.folder / figure_name(space, pair_id)
    if not file.is_file():
        return False
    if stamp is not None:
        if wanted["decoder"] == UNKNOWN_DECODER:
            wanted = {**wanted, "decoder": stamp.get("decoder")}
        return stamp == wanted
    record = store.record_path(space, pair_id)
    return file.stat().st_mtime_ns >= record.stat().st_mtime_ns and wanted["decoder"] == own_decoder


def _draw_pair(
    store: RunStore,
    space: str,
    record: dict[str, Any],
    class_names: list[str],
    decoders: dict[str, Any],
) -> Path:
    """Draw one pair's figure in one space and save it; its file."""
    pair = record["pair"]
    title = (
        f"{space}: pair {pair['id']} (items {pair['start_index']} -> "
        f"{pair['end_index']}), class {class_names[record['target']]!r}: "
        f"{_decided(record)}"
    )
    figure = pair_figure(
        record,
        title,
        _images(space, record["line"], decoders),
        _images(space, record["path"], decoders),
        class_names=class_names,
        images_note=_images_note(space, decoders),
        difference=space == INPUT,
        end_images=None if space == INPUT else record.get("end_images"),
    )
    file = store.folder / figure_name(space, pair["id"])
    save_figure(figure, file)
    return file


def draw_figures(
    store: RunStore,
    by_space: dict[str, list[dict[str, Any]]],
    decoders: dict[str, str],
    figures: str = "auto",
) -> set[tuple[str, int]]:
    """Draw the figures ``figures`` asks for (see :func:`figures_to_draw`) that are missing or
    stale, with a progress bar on a terminal; remove stale figures it does not ask for.

    A figure is stale when its record, the space's decoder checkpoint or the drawing code
    changed since it was drawn (``figures/drawn.json`` keeps what each was drawn from).

    Args:
        store: The run folder.
        by_space: Its records (:meth:`RunStore.load_all`).
        decoders: ``{space: decoder checkpoint}`` to show latent points as images.
        figures: ``auto``, ``all`` or ``none``.

    Returns:
        ``(space, pair id)`` of every figure the folder now holds for these records.

    Raises:
        OptionsError: ``figures`` is not one of :data:`FIGURES`.
    """
    chosen = figures_to_draw(by_space, figures)
    manifest = store.manifest()
    code = _DRAWING_CODE
    digests, own = _decoder_digests(decoders, store.decoders())
    before = _read_stamps(store).get("figures")
    held: dict[str, Any] = dict(before) if isinstance(before, dict) else {}
    kept: set[tuple[str, int]] = set()
    todo: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (space, record, its stamp)
    for space, records in by_space.items():
        for record in records:
            pair_id = record["pair"]["id"]
            name = figure_name(space, pair_id)
            wanted = _stamp(store, space, pair_id, digests.get(space), code)
            if _up_to_date(store, space, pair_id, held.get(name), wanted, own.get(space)):
                held.setdefault(name, wanted)  # a stamp there says more (its decoder)
                kept.add((space, pair_id))
            elif (space, pair_id) in chosen:
                todo.append((space, record, wanted))
            else:
                # A figure that no longer shows its record is removed rather than left wrong.
                (store.folder / name).unlink(missing_ok=True)
                held.pop(name, None)
    if todo:
        print(
            f"Drawing {len(todo)} figure{'' if len(todo) == 1 else 's'} (figures={figures}; "
            f"{len(kept)} up to date"
            + ("; --figures all draws every pair)" if figures == "auto" else ")"),
            flush=True,
        )
    spaces = {space for space, _, _ in todo}  # decoders are loaded only where a figure needs one
    needed = {s: p for s, p in decoders.items() if s in spaces}
    try:
        modules = load_decoders(needed, manifest.get("classifier"))
    except ConnectivityError as error:
        raise ConnectivityError(
            f"{len(todo)} figures need the decoders {needed}, which cannot be loaded from here "
            f"({error}); run from the folder the run was made in, give them with --decoders "
            "'{space: checkpoint}', or leave figures as they are with --figures none"
        ) from error
    from tqdm import tqdm

    try:
        for space, record, wanted in tqdm(
            todo, desc="figures", unit="figure", leave=False, file=sys.stderr, disable=None
        ):
            pair_id = record["pair"]["id"]
            _draw_pair(store, space, record, manifest["class_names"], modules)
            held[figure_name(space, pair_id)] = wanted
            kept.add((space, pair_id))
    finally:
        # Also after an interruption: what was drawn is not drawn again.
        if held != before:
            atomic_write_text(
                store.folder / STAMPS_FILE,
                json.dumps({"figures": dict(sorted(held.items()))}, indent=1) + "\n",
            )
    return kept


def write_report(
    store: RunStore,
    decoders: dict[str, str] | None = None,
    wandb: WandbOptions | None = None,
    figures: str = "auto",
) -> str:
    """Write the table, figures and web pages of a run from its records; log them to W&B if
    asked. The pages (:func:`gallery_pages`) are written also without ``figures``: they link
    the figures found in the folder.

    W&B gets the report once per run folder (see :class:`WandbOptions`): into the run of
    :func:`paths_logger` when it is still active, else into the folder's run id (resumed);
    a folder whose report is logged already is skipped unless ``wandb.relog``. Offline runs
    found in the folder then name their staged files relative to the folder
    (:func:`relocate_offline_runs`), so a copy of the folder syncs as it is.

    Args:
        store: The run folder.
        decoders: ``{space: decoder checkpoint}`` used to show latent points as images.
        wandb: W&B settings (None: no W&B).
        figures: Which pair figures to draw (:data:`FIGURES`, see :func:`draw_figures`);
            figures already drawn from the same record, decoder and code are kept.

    Returns:
        The table as Markdown (also printed).

    Raises:
        OptionsError: ``figures`` is not one of :data:`FIGURES` (before any work).
        RunFolderError: The folder has no ``run.json``, or a record cannot be read.
    """
    check_figures(figures)
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
    print(f"\n{markdown}\nRun folder: {store.folder}", flush=True)

    drawn = draw_figures(store, by_space, decoders or {}, figures)
    atomic_write_text(store.folder / "pairs.csv", pairs_csv(by_space, class_names, drawn))
    run_id = None
    if wandb is not None and wandb.enabled:
        run_id = report_run_id(store, wandb)
    if run_id is not None:
        assert wandb is not None
        # Every point as a person sees it, for the W&B tables: only when they are logged.
        decoder_modules = load_decoders(decoders or {}, manifest.get("classifier"))
        shown: dict[tuple[str, int], tuple[Tensor | None, Tensor | None]] = {}
        for space, records in by_space.items():
            for record in records:
                shown[(space, record["pair"]["id"])] = (
                    _images(space, record["line"], decoder_modules),
                    _images(space, record["path"], decoder_modules),
                )
        figure_files = {key: store.folder / figure_name(*key) for key in drawn}
        with run_folder_environment(store.folder):
            _log_wandb(store, run_id, manifest, table, by_space, figure_files, shown, wandb)
    # Always: the pages link only the figures whose files exist, whichever were drawn.
    for page, text in gallery_pages(by_space, manifest, store.folder, markdown).items():
        atomic_write_text(store.folder / page, text)
    relocate_offline_runs(store.folder, finished=run_id)
    return markdown


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


def _log_wandb(
    store: RunStore,
    run_id: str,
    manifest: dict[str, Any],
    table: dict[str, dict[str, dict]],
    by_space: dict[str, list[dict]],
    figure_files: dict[tuple[str, int], Path],
    shown: dict[tuple[str, int], tuple[Tensor | None, Tensor | None]],
    options: WandbOptions,
) -> None:
    """Log the report into run ``run_id`` and finish it; mark the folder as reported.

    Call inside :func:`run_folder_environment`, so the staged files land in the folder.
    """
    import wandb

    run = wandb.run
    if run is None or run.id != run_id:
        # A run of another folder or of the caller is left alone: "create_new" runs beside it.
        run = wandb.init(**_init_arguments(store, options, run_id), reinit="create_new")
    else:
        # The Trainer's run may have started before run.json was written.
        run.config.update(_config(store), allow_val_change=True)
    class_names = manifest["class_names"]

    counts = wandb.Table(columns=["space", "check", *VERDICTS])
    table1 = wandb.Table(columns=["space", "verdict", "row", "label", "dense", "pivots"])
    for space, checks in table.items():
        for check, values in checks.items():
            counts.add_data(space, check, *(values[v] for v in VERDICTS))
        for verdict in VERDICTS:
            table1.add_data(
                space,
                verdict,
                ROW_NAMES[verdict],
                f"{space}: {ROW_NAMES[verdict]}",
                checks["dense"][verdict],
                checks["pivots"][verdict],
            )

    probability_columns = [f"p_{name}" for name in class_names]
    pairs = []
    for row in pair_rows(by_space, class_names):
        file = figure_files.get((row[0], row[1]))
        pairs.append([*row[:-1], wandb.Image(str(file)) if file else None])
    point_columns = [
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
        *probability_columns,
    ]
    points: list[list[Any]] = []
    profile_columns = ["pair", "space", "along", "curve", "position", "energy"]
    profiles: list[list[Any]] = []
    walks: list[tuple[str, int, str]] = []  # the walk of each row of points and profiles
    profiles_by_space: dict[str, list[list[Any]]] = {space: [] for space in by_space}
    for space, records in by_space.items():
        for record in records:
            pair_id, target = record["pair"]["id"], int(record["target"])
            for along, images, probs, energy in _walks(record, shown[(space, pair_id)]):
                positions = _position(len(probs))
                for k, (p, position) in enumerate(zip(probs.float(), positions, strict=True)):
                    values = [float(v) for v in p.tolist()]
                    points.append(
                        [
                            space,
                            pair_id,
                            record["verdict"],
                            along,
                            k,
                            position,
                            wandb.Image(image_array(images[k])) if images is not None else None,
                            wandb.Image(bar_image(p, target)),
                            class_names[int(p.argmax())],
                            class_names[target],
                            values[target],
                            float(energy[k]),
                            *values,
                        ]
                    )
                    row = [pair_id, space, along, f"pair {pair_id} {along}", position]
                    profiles.append([*row, float(energy[k])])
                    profiles_by_space[space].append([*row, float(energy[k])])
                    walks.append((space, pair_id, along))

    logged: dict[str, Any] = {
        "verdicts": counts,
        "table1": table1,
        "table1_chart": wandb.plot.bar(
            table1, "label", "dense", title="Table 1: pairs per verdict and space"
        ),
        **table_parts("pairs", PAIR_COLUMNS, pairs),
        **table_parts("points", point_columns, points, walks),
        **table_parts("energy_profiles", profile_columns, profiles, walks),
    }
    for space, rows in profiles_by_space.items():
        curves = [row[3] for row in rows]
        parts = table_parts(f"energy/{space}", profile_columns, rows, curves)
        for key, part in parts.items():
            logged[key] = wandb.plot.line(
                part,
                "position",
                "energy",
                stroke="curve",
                title=f"{space}: energy -log p(target) along the line and the path"
                + (f" ({key.rpartition('_')[2]})" if key != f"energy/{space}" else ""),
            )
    run.log(logged)
    run.summary.update(
        {
            f"{space}/{check}/{v}": values[v]
            for space, checks in table.items()
            for check, values in checks.items()
            for v in VERDICTS
        }
    )
    _log_classifier(run, manifest)
    line = wandb_run_line(run, run_folder=store.folder)
    run.finish()
    print(line, flush=True)
    mark_reported(store.folder, run_id)


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


# W&B's transaction log (``run-<id>.wandb``): LevelDB's log format with W&B's own header.
# A file is 32 KiB blocks of records ``crc32(type + data) (4, LE) | length (2, LE) | type (1)
# | data``; a record too long for its block continues in the next (first/middle/last parts);
# a block tail shorter than a record header is zeros. Each whole record is a protobuf
# ``wandb_internal.Record``.
_LOG_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_transaction_log(path: str | Path) -> list[bytes]:
    """The raw records of a W&B transaction log, in order.

    Raises:
        ValueError: The file is no W&B transaction log, or a record's checksum is wrong.
    """
    data = Path(path).read_bytes()
    if not data.startswith(_LOG_HEADER[:4]):
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    records, parts, position = [], [], len(_LOG_HEADER)
    while position + 7 <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < 7:
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding to the end of the block
            position += left
            continue
        if position + 7 + length > len(data):
            break  # a record cut short: the run is still writing, or was killed mid-record
        chunk = data[position + 7 : position + 7 + length]
        if zlib.crc32(bytes([kind]) + chunk) != checksum:
            raise ValueError(f"{path}: damaged record at byte {position}")
        position += 7 + length
        parts.append(chunk)
        if kind in (_FULL, _LAST):
            records.append(b"".join(parts))
            parts = []
    return records


def write_transaction_log(path: str | Path, records: list[bytes]) -> None:
    """Write ``records`` as a W&B transaction log (atomically), as W&B itself lays them out."""
    out = bytearray(_LOG_HEADER)
    for record in records:
        rest, first = record, True
        while True:
            left = _BLOCK - len(out) % _BLOCK
            if left < 7:
                out += bytes(left)
                continue
            chunk, rest = rest[: left - 7], rest[left - 7 :]
            last = not rest
            kind = (_FULL if last else _FIRST) if first else (_LAST if last else _MIDDLE)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind)
            out += chunk
            first = False
            if last:
                break
    atomic_write_bytes(Path(path), bytes(out))


def offline_run_records(run_dir: str | Path) -> list[Record]:
    """The records of an offline run folder (``.../wandb/offline-run-*``), parsed."""
    from wandb.proto.wandb_internal_pb2 import Record

    records = []
    for file in sorted(Path(run_dir).glob("run-*.wandb")):
        for raw in read_transaction_log(file):
            record = Record()
            record.ParseFromString(raw)
            records.append(record)
    return records


def offline_runs(folder: str | Path) -> list[Path]:
    """The offline W&B runs of a run folder, oldest first by the second they started (W&B's
    folder name; runs started in the same second come in id order)."""
    return sorted((Path(folder) / WANDB_SUBDIR).glob("offline-run-*"))


def _relative(path: str, folder: Path) -> str:
    """``path`` of a file staged under some location of the run folder (``.../wandb/data/...``),
    relative to the folder (``wandb/data/...``) when that file lies in ``folder``; unchanged
    when it is not a staged file, is relative already, or is not in ``folder``."""
    marker = f"{os.sep}{WANDB_SUBDIR}{os.sep}{DATA_SUBDIR}{os.sep}"
    before, found, tail = path.rpartition(marker)
    if not found or not before:
        return path
    relative = os.path.join(WANDB_SUBDIR, DATA_SUBDIR, tail)
    return relative if (folder / relative).exists() else path


def _finished_log(run_dir: Path, wait: float) -> bool:
    """Whether the transaction log of ``run_dir`` ends with the run's exit record, waiting up
    to ``wait`` seconds for it: ``run.finish()`` can return before W&B's service has written
    the last records, and a log rewritten before then would lose them."""
    from wandb.proto.wandb_internal_pb2 import Record

    deadline = time.monotonic() + wait
    while True:
        for file in run_dir.glob("run-*.wandb"):
            try:
                raws = read_transaction_log(file)
            except ValueError:
                continue  # being written
            if raws:
                record = Record()
                record.ParseFromString(raws[-1])
                if record.WhichOneof("record_type") == "exit":
                    return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def relocate_offline_runs(
    folder: str | Path, finished: str | None = None, wait: float = 30.0
) -> list[Path]:
    """Make a folder's offline runs name their staged files relative to the folder.

    W&B records each staged table, image and artifact file by absolute path (under
    ``<folder>/wandb/data``); a copy of the folder would name files of the original. Records
    that name such files, under the folder where it lies now or under an earlier location of
    it, are rewritten to the same file relative to the folder (``wandb/data/...``), so a
    copied or moved folder syncs as it is, from inside the folder:
    ``cd <folder> && wandb sync wandb/offline-run-*`` (W&B opens a relative path from the
    directory it runs in). Nothing else changes.

    Args:
        folder: The run folder.
        finished: Id of a run this process has just finished: its newest offline run is
            rewritten only once W&B has written its exit record (waiting up to ``wait``
            seconds; else it is left as it is, with a warning).
        wait: Most seconds to wait for that run's log.

    Returns:
        The offline run folders to give ``wandb sync`` (oldest first).
    """
    from wandb.proto.wandb_internal_pb2 import Record

    folder = Path(folder).resolve()
    runs = offline_runs(folder)
    own = [r for r in runs if finished is not None and r.name.endswith(f"-{finished}")]
    for run_dir in runs:
        if own and run_dir == own[-1] and not _finished_log(run_dir, wait):
            warnings.warn(
                f"{run_dir} is still being written by W&B; its staged files keep their absolute "
                "paths: run `connectivity report` on the folder again before copying it",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        for file in run_dir.glob("run-*.wandb"):
            try:
                raws = read_transaction_log(file)
            except ValueError as error:
                warnings.warn(f"left as it is: {error}", RuntimeWarning, stacklevel=2)
                continue
            changed = False
            for i, raw in enumerate(raws):
                record = Record()
                record.ParseFromString(raw)
                kind = record.WhichOneof("record_type")
                if kind == "artifact":
                    manifest = record.artifact.manifest
                elif kind == "request" and record.request.HasField("log_artifact"):
                    manifest = record.request.log_artifact.artifact.manifest
                else:
                    continue
                touched = False
                for entry in manifest.contents:
                    if entry.local_path:
                        moved = _relative(entry.local_path, folder)
                        touched |= moved != entry.local_path
                        entry.local_path = moved
                if manifest.manifest_file_path:
                    moved = _relative(manifest.manifest_file_path, folder)
                    touched |= moved != manifest.manifest_file_path
                    manifest.manifest_file_path = moved
                if touched:
                    raws[i] = record.SerializeToString()
                    changed = True
            if changed:
                write_transaction_log(file, raws)
    return runs


def load_records(folder: str | Path) -> dict[str, list[dict]]:
    """All saved records of a run folder, by space (for notebooks)."""
    return RunStore(folder).load_all()
