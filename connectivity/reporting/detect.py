"""Path scores as a detector of adversarial pairs (issue 23): how well a pair's energy barrier,
or its lowest margin, tells pairs whose end is a targeted adversarial example
(``pair["adversarial"]``, positives) from pairs of two natural inputs (negatives).

Four scores per pair, each oriented so that a higher score should mean adversarial:

* ``barrier``: the path's energy barrier, the highest ``-log p(target)`` above the higher of its
  ends' (:func:`~connectivity.reporting.tables.pair_barrier`; nats);
* ``line_barrier``: the same along the straight line;
* ``margin``: minus the path's lowest target-logit margin
  (:func:`~connectivity.reporting.figures.lowest_margin`; logit units): a path that comes closer
  to leaving the class scores higher;
* ``line_margin``: the same along the straight line.

The scores are read off the path the search found, whatever its verdict: a pair with no path
found still has one. Each score's AUROC per space (:func:`connectivity.engine.scores.auroc`: the
chance that a random adversarial pair scores above a random natural one, ties counting one half)
goes into ``detect.md`` and ``detect.csv``, its ROC curves into ``figures/detect.png``
(:func:`write_detect`) and into W&B
(:func:`connectivity.reporting.wandb_log.tables.detect_plots`). Pairs whose score is not finite (NaN
of a diverged search) are left out of that score's AUROC and counted.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from matplotlib.figure import Figure

from connectivity.engine.scores import auroc, roc_curve
from connectivity.reporting.figures import (
    SMALL_PT,
    TEXT_PT,
    TITLE_PT,
    figure_png,
    lowest_margin,
)
from connectivity.reporting.tables import csv_text, pair_barrier
from connectivity.store.records import RunStore

# Each score, what it is, and how it is drawn in the figure.
SCORES = {
    "barrier": "energy barrier of the path (nats)",
    "line_barrier": "energy barrier of the straight line (nats)",
    "margin": "minus the lowest target margin of the path (logits)",
    "line_margin": "minus the lowest target margin of the straight line (logits)",
}
STYLES = {
    "barrier": ("tab:red", "-"),
    "line_barrier": ("tab:red", "--"),
    "margin": ("tab:blue", "-"),
    "line_margin": ("tab:blue", "--"),
}
DETECT_COLUMNS = ["space", "score", "auroc", "n_adversarial", "n_natural", "left_out", "note"]
DETECT_FIGURE = "figures/detect.png"
DETECT_FILES = ("detect.md", "detect.csv")
PANEL_IN = 3.6  # inches per panel (square ROC axes)
READING = (
    "AUROC: the chance that an adversarial-natural pair (its end a targeted adversarial example) "
    "scores above a natural-natural one, ties counting one half; 0.5 = chance, 1 = every "
    "adversarial pair above every natural one, below 0.5 = the score ranks them the wrong way.\n"
    "Scores (higher = adversarial): barrier = highest -log p(target) above the higher end, "
    "margin = minus the lowest target-logit margin, of the path found (line_: of the straight "
    "line); a pair with no path found still has a path, so a barrier. Pairs whose score is not "
    "finite (a diverged search) are left out of that score's AUROC and pair counts, and counted "
    "under left out."
)


def is_adversarial(record: dict[str, Any]) -> bool:
    """Whether a saved record's pair ends at an adversarial example (missing: natural)."""
    return bool(record["pair"].get("adversarial", False))


def has_adversarial(by_space: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether any record of a run is of an adversarial pair (the detect report is written
    only then)."""
    return any(is_adversarial(r) for records in by_space.values() for r in records)


def pair_scores(record: dict[str, Any]) -> dict[str, float]:
    """The four :data:`SCORES` of a saved record (NaN where its path diverged), the same numbers
    as ``pairs.csv``'s ``barrier``, ``line_barrier``, ``min_margin`` and ``line_min_margin``,
    margins negated."""
    with warnings.catch_warnings():
        # An old record of a diverged pair has NaN margins only: its score is NaN, said by the
        # table's left-out count rather than by numpy's all-NaN warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        margin, line_margin = lowest_margin(record, "path"), lowest_margin(record, "line")
    return {
        "barrier": pair_barrier(record, "path"),
        "line_barrier": pair_barrier(record, "line"),
        "margin": -margin,
        "line_margin": -line_margin,
    }


def _score_tensors(records: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({score: (N,) float64}, positive (N,) bool)`` of a space's records."""
    scores = [pair_scores(r) for r in records]
    positive = torch.tensor([is_adversarial(r) for r in records], dtype=torch.bool)
    by_score = {
        name: torch.tensor([s[name] for s in scores], dtype=torch.float64) for name in SCORES
    }
    return by_score, positive


def _row(space: str, name: str, values: torch.Tensor, positive: torch.Tensor) -> dict[str, Any]:
    """One :func:`detect_rows` row of one space and score."""
    finite = torch.isfinite(values)
    n_adversarial = int((finite & positive).sum())
    n_natural = int((finite & ~positive).sum())
    left_out = int((~finite).sum())
    notes = []
    missing = [
        kind for kind, n in (("adversarial", n_adversarial), ("natural", n_natural)) if not n
    ]
    if missing:
        with_score = " with a finite score" if left_out else ""
        notes.append(f"no {' and no '.join(missing)} pair{with_score}: no AUROC")
    if left_out:
        notes.append(f"{left_out} left out: score not finite")
    area = None if missing else auroc(values, positive)
    return {
        "space": space,
        "score": name,
        "auroc": area,
        "n_adversarial": n_adversarial,
        "n_natural": n_natural,
        "left_out": left_out,
        "note": "; ".join(notes),
    }


def detect_rows(by_space: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The AUROC of each score as a detector of adversarial pairs, per space.

    Args:
        by_space: Saved records by space (:meth:`~connectivity.store.records.RunStore.load_all`);
            a record is adversarial where ``record["pair"]["adversarial"]`` is true (missing:
            natural).

    Returns:
        One dict per space and score (in :data:`SCORES` order), keys :data:`DETECT_COLUMNS`:
        ``auroc`` (float in [0, 1]; higher score = adversarial, so 1 = perfect, 0.5 = chance;
        None where the space has no adversarial or no natural pair with a finite score),
        ``n_adversarial`` and ``n_natural`` (pairs with a finite score, those the AUROC rests
        on), ``left_out`` (pairs whose score is NaN or infinite) and ``note`` (why there is
        no AUROC, and what was left out; empty when nothing is to say).
    """
    rows = []
    for space, records in by_space.items():
        by_score, positive = _score_tensors(records)
        rows.extend(_row(space, name, by_score[name], positive) for name in SCORES)
    return rows


def detect_curves(
    by_space: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """``{space: {score: (false positive rate (K,), true positive rate (K,))}}`` from the
    highest threshold down (:func:`connectivity.engine.scores.roc_curve`), for the spaces and
    scores that have an AUROC in :func:`detect_rows`."""
    curves: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for space, records in by_space.items():
        by_score, positive = _score_tensors(records)
        curves[space] = {}
        for name, values in by_score.items():
            if _row(space, name, values, positive)["auroc"] is not None:
                fpr, tpr, _ = roc_curve(values, positive)
                curves[space][name] = (fpr, tpr)
    return curves


def _auroc_cell(row: dict[str, Any]) -> str:
    return "-" if row["auroc"] is None else f"{row['auroc']:.3f}"


def detect_markdown(rows: list[dict[str, Any]]) -> str:
    """``detect.md``: one line per space and score of :func:`detect_rows` (AUROC to 3 decimals,
    ``-`` with the reason where there is none), then how to read it (:data:`READING`)."""
    lines = [
        "Path scores as a detector of adversarial pairs: AUROC per space and score.",
        "",
        "| space | score | AUROC | adversarial pairs | natural pairs | left out | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["space"], row["score"], _auroc_cell(row)]
        cells += [str(row[k]) for k in ("n_adversarial", "n_natural", "left_out")]
        lines.append("| " + " | ".join([*cells, row["note"] or "-"]) + " |")
    return "\n".join([*lines, "", READING.replace("\n", "\n\n")]) + "\n"


def detect_csv(rows: list[dict[str, Any]]) -> str:
    """``detect.csv``: :func:`detect_rows` under a header of :data:`DETECT_COLUMNS` (an empty
    ``auroc`` where there is none)."""
    table = [["" if row[k] is None else row[k] for k in DETECT_COLUMNS] for row in rows]
    return csv_text(DETECT_COLUMNS, table)


def detect_figure(by_space: dict[str, list[dict[str, Any]]]) -> Figure:
    """One panel per space (1 row, ``PANEL_IN`` inches each): the ROC curve of each score with an
    AUROC (true against false positive rate, its AUROC in the legend; a score without one is
    named so there) and the chance diagonal; a space with no AUROC at all says why."""
    rows = detect_rows(by_space)
    curves = detect_curves(by_space)
    spaces = list(by_space)
    fig = Figure(figsize=(PANEL_IN * len(spaces) + 0.4, PANEL_IN + 0.9), layout="constrained")
    for ax, space in zip(fig.subplots(1, len(spaces), squeeze=False)[0], spaces, strict=True):
        ax.plot([0, 1], [0, 1], ":", color="tab:grey", lw=1.0, label="chance (0.5)")
        for row in (r for r in rows if r["space"] == space and curves[space]):
            colour, style = STYLES[row["score"]]
            if row["score"] in curves[space]:
                fpr, tpr = curves[space][row["score"]]
                label = f"{row['score']} ({row['auroc']:.3f})"
                ax.plot(fpr.numpy(), tpr.numpy(), style, color=colour, lw=1.5, label=label)
            else:  # its pairs of one kind all had a non-finite score: said, not dropped
                ax.plot([], [], style, color=colour, lw=1.5, label=f"{row['score']} (no AUROC)")
        if not curves[space]:
            note = next(r["note"] for r in rows if r["space"] == space)
            ax.text(0.5, 0.55, note.split(";")[0], ha="center", fontsize=TEXT_PT, wrap=True)
        records = by_space[space]
        adversarial = sum(is_adversarial(r) for r in records)
        ax.set_title(
            f"{space}: {adversarial} adversarial, {len(records) - adversarial} natural pairs",
            fontsize=TITLE_PT,
        )
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.set_xlabel("false positive rate (natural pairs flagged)", fontsize=TEXT_PT)
        ax.set_ylabel("true positive rate (adversarial flagged)", fontsize=TEXT_PT)
        ax.tick_params(labelsize=SMALL_PT)
        ax.legend(title="score (AUROC)", fontsize=SMALL_PT, title_fontsize=SMALL_PT, loc=4)
    return fig


def write_detect(store: RunStore, by_space: dict[str, list[dict[str, Any]]]) -> str:
    """Write ``detect.md``, ``detect.csv`` and ``figures/detect.png`` of a run through its store.

    Returns:
        The Markdown of ``detect.md``.
    """
    rows = detect_rows(by_space)
    markdown = detect_markdown(rows)
    store.save_text(DETECT_FILES[0], markdown)
    store.save_text(DETECT_FILES[1], detect_csv(rows))
    png = figure_png(detect_figure(by_space))
    # As the text files: a report of the same records rewrites nothing (matplotlib's PNG of the
    # same figure is the same bytes: no time stamp in it).
    drawn = store.path(DETECT_FIGURE)
    if not drawn.is_file() or drawn.read_bytes() != png:
        store.save_bytes(DETECT_FIGURE, png)
    return markdown
