"""Figures of paths: points as images with their softmax bars, and energy profiles.

Built with matplotlib's object API (``Figure``, saved through its own canvas), never pyplot:
importing this module leaves the backend of a notebook or script as it was, and figures are
freed with their last reference rather than kept in pyplot's global list.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from connectivity.engine.checks import target_margin

TARGET_COLOUR = "tab:red"
OTHER_COLOUR = "tab:grey"


def _as_image(point: Tensor) -> np.ndarray:
    image = point.detach().float().cpu()
    if point.dtype == torch.uint8:
        image = image / 255.0
    image = image.clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.permute(1, 2, 0).numpy()


OFF_COLOUR = "tab:red"
ON_COLOUR = "tab:green"

# Every text of a pair figure is at least SMALL_PT points: SMALL_PT * FIGURE_DPI / 72 = 9.4
# pixels tall in the saved PNG (the figures of issue 19 had 5-6 point text at 90 dpi, 6-7 px).
FIGURE_DPI = 90
SMALL_PT = 7.5
TEXT_PT = 8.5
TITLE_PT = 10.5
# Inches: the width of one point's column, and the margins left (row labels, the check's
# counts) and right of the columns.
COLUMN_IN = 0.85
LEFT_IN = 1.3
RIGHT_IN = 0.2
MIN_WIDTH_IN = 8.5  # room for the title line
# Many classes make unreadable names under the first point's bars: name them up to this many.
NAMED_CLASSES = 12
# Said where a latent space's points cannot be shown (no decoder).
NOT_IMAGES = "no decoder for this space: its points are not images"


def _class_name(class_names: list[str] | None, k: int) -> str:
    return str(class_names[k]) if class_names is not None and k < len(class_names) else str(k)


def _short_names(names: list[str]) -> tuple[list[str], bool]:
    """Labels under the bars: the class names when all are at most 2 characters, else the
    indices (``True``: the figure then gives the key of indices to names)."""
    if max(len(n) for n in names) <= 2:
        return names, False
    return [str(k) for k in range(len(names))], True


def _margin_from_probabilities(probabilities: Tensor, target: int) -> np.ndarray:
    """Target margin (:func:`~connectivity.engine.checks.target_margin`) at points that only kept
    softmax bars (records written before the checked points were saved)."""
    tiny = torch.finfo(torch.float64).tiny  # a probability of 0 would give -inf - -inf
    log_p = probabilities.detach().double().clamp_min(tiny).log().unsqueeze(0)
    return target_margin(log_p, torch.tensor([target]))[0].numpy()


def checked_points(record: dict[str, Any], which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points the verdict of the line (``which="line"``) or of the path (``"path"``) rests
    on: ``(position in [0, 1], target margin, predicted class)``, each ``(M,)``.

    Older records without the checked points give their pivots instead.
    """
    prefix = "line_" if which == "line" else ""
    position = record.get(f"{prefix}check_position")
    if position is not None:
        return (
            position.float().numpy(),
            record[f"{prefix}check_margin"].float().numpy(),
            record[f"{prefix}check_predicted"].long().numpy(),
        )
    probabilities = record[f"{which}_probabilities"]
    count = probabilities.shape[0]
    target = int(record["target"])
    return (
        np.linspace(0.0, 1.0, count),
        _margin_from_probabilities(probabilities, target),
        probabilities.argmax(dim=-1).numpy(),
    )


def lowest_margin(record: dict[str, Any], which: str | None = None) -> float:
    """The lowest target margin along the path (``which="line"``: along the line) of a record;
    from its checked points when the record predates the saved margins."""
    which = which or ("line" if record["verdict"] == "linear" else "path")
    saved = record.get("line_min_margin" if which == "line" else "min_margin")
    if saved is not None and not math.isnan(saved):
        return float(saved)
    return float(np.nanmin(checked_points(record, which)[1]))


def _best_other(probabilities: Tensor, target: int) -> int | None:
    """The most probable class other than ``target`` at one point, ``(classes,)``; None where
    the softmax cannot tell (a tie, e.g. every other probability rounded to 0)."""
    others = probabilities.detach().double().clone()
    others[target] = -1.0
    best = float(others.max())
    if best <= 0.0 or int((others == best).sum()) > 1:
        return None
    return int(others.argmax())


def competing_class(record: dict[str, Any], which: str) -> tuple[int, int | None] | None:
    """The class the lowest target margin of the line (``which="line"``) or the path is measured
    against: the best class other than the target at the checked point of lowest margin.

    Derived from the record alone. Off the target there, it is the predicted class. At a pivot,
    it is read from the pivot's softmax (softmax keeps the order of the logits). The record
    does not keep the other classes of checked points between pivots: for such a point on the
    target, the best other class at the pivot of lowest margin is given instead.

    Returns:
        ``(class, None)`` for the class at the lowest checked point, ``(class, pivot)`` for the
        fallback to pivot ``pivot``, or None where the stored softmax cannot tell (a tie).
    """
    target = int(record["target"])
    position, margin, predicted = checked_points(record, which)
    lowest = int(np.nanargmin(np.where(np.isnan(margin), -np.inf, margin)))
    if int(predicted[lowest]) != target:
        return int(predicted[lowest]), None
    probabilities = record[f"{which}_probabilities"]
    pivots = np.linspace(0.0, 1.0, probabilities.shape[0])
    at = np.flatnonzero(np.abs(pivots - position[lowest]) < 1e-6)
    if at.size:
        best = _best_other(probabilities[int(at[0])], target)
        return None if best is None else (best, None)
    pivot = int(np.argmin(_margin_from_probabilities(probabilities, target)))
    best = _best_other(probabilities[pivot], target)
    return None if best is None else (best, pivot)


def _competing_text(record: dict[str, Any], which: str, class_names: list[str] | None) -> str:
    """``"min 1.37 against '8'"`` for the margin panel's legend."""
    text = f"min {lowest_margin(record, which):.3g}"
    found = competing_class(record, which)
    if found is None:
        return text
    k, pivot = found
    name = repr(_class_name(class_names, k))
    if pivot is None:
        return f"{text} against {name}"
    return f"{text}; best other class at the pivots: {name} (pivot {pivot})"


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, last)]`` index ranges of the consecutive True entries of ``mask``."""
    runs, first = [], None
    for k, value in enumerate(mask.tolist()):
        if value and first is None:
            first = k
        if not value and first is not None:
            runs.append((first, k - 1))
            first = None
    if first is not None:
        runs.append((first, len(mask) - 1))
    return runs


class _Columns:
    """Where point ``k`` of a strip lies: the centre ``k * step`` of column ``k`` (``step =
    1 / (points - 1)``, so the columns line up with positions along the path), with ``extra``
    columns more on each side for the inputs at the ends of a latent space."""

    def __init__(self, points: int, extra: int) -> None:
        self.points, self.extra = points, extra
        self.step = 1.0 / max(points - 1, 1)

    def x(self, k: int) -> float:
        return k * self.step

    def limits(self, extra: bool = True) -> tuple[float, float]:
        half = (0.5 + (self.extra if extra else 0)) * self.step
        return -half, 1.0 + half

    def box(self, x: float, bottom: float = 0.03, top: float = 0.97) -> tuple[float, ...]:
        """``imshow``'s extent of an image in the column centred at ``x``."""
        return (x - 0.45 * self.step, x + 0.45 * self.step, bottom, top)


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _point_titles(ax: Axes, cols: _Columns, probs: Tensor, target: int, names: list[str]) -> None:
    """Each point's index above its column; red, with the class it went to, off the target."""
    predicted = probs.argmax(dim=-1)
    for k in range(probs.shape[0]):
        others = torch.cat([probs[k, :target], probs[k, target + 1 :]])
        # Strict, as the check: a tie with another class is off target.
        off = not bool((probs[k, target] > others).all())
        went = int(predicted[k])
        title = f"{k} ✗ {'tie' if went == target else names[went]}" if off else f"{k}"
        ax.text(
            cols.x(k),
            1.02,
            title,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=SMALL_PT,
            color=OFF_COLOUR if off else "black",
        )


def _draw_images(
    ax: Axes,
    cols: _Columns,
    images: Tensor | None,
    ends: Tensor | None,
    note: str | None,
) -> None:
    """One strip's images in one axes (one axes per image would cost most of a figure's
    drawing time): the points, and the end inputs in the outer columns."""
    for k in range(images.shape[0] if images is not None else 0):
        ax.imshow(_as_image(images[k]), extent=cols.box(cols.x(k)), interpolation="nearest")
    if ends is not None:
        for x, end in ((-cols.step, ends[0]), (1.0 + cols.step, ends[1])):
            ax.imshow(_as_image(end), extent=cols.box(x), interpolation="nearest")
            ax.text(
                x,
                1.02,
                "input",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=SMALL_PT,
                color="tab:blue",
            )
    if note:
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=TEXT_PT, color="0.35")
    ax.set_aspect("auto")
    ax.set_xlim(*cols.limits())
    ax.set_ylim(0, 1)
    _bare(ax)


def _draw_bars(
    ax: Axes, cols: _Columns, probs: Tensor, target: int, labels: list[str], named: bool
) -> None:
    """Every point's softmax bars in one axes, target red, each point in its own frame; the
    first point's bars are named (``named``), and the bar of the class an off-target point
    went to."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    values = probs.detach().float().cpu().numpy()
    points, classes = values.shape
    width = 0.88 * cols.step / classes
    offsets = (np.arange(classes) - (classes - 1) / 2) * width
    xs = (np.arange(points)[:, None] * cols.step + offsets[None, :]).ravel()
    colours = np.where(np.arange(classes) == target, TARGET_COLOUR, OTHER_COLOUR)
    ax.bar(xs, values.ravel(), width=0.8 * width, color=np.tile(colours, points))
    frames = [
        Rectangle((cols.x(k) - 0.46 * cols.step, 0.0), 0.92 * cols.step, 1.0) for k in range(points)
    ]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="0.55", lw=0.6))
    ticks, names, colours_of = [], [], []
    if named and classes <= NAMED_CLASSES:
        ticks += (offsets + cols.x(0)).tolist()
        names += labels
        colours_of += ["black"] * classes
    predicted = values.argmax(axis=1)
    for k in range(1 if named else 0, points):
        if int(predicted[k]) != target:
            ticks.append(cols.x(k) + offsets[predicted[k]])
            names.append(labels[predicted[k]])
            colours_of.append(OFF_COLOUR)
    _bare(ax)
    ax.set_xticks(ticks, names, fontsize=SMALL_PT)
    for label, colour in zip(ax.get_xticklabels(), colours_of, strict=True):
        label.set_color(colour)
    ax.tick_params(axis="x", length=0, pad=1)
    ax.set_xlim(*cols.limits())
    ax.set_ylim(0, 1.03)  # the frames' top edges inside the axes


def _draw_track(
    ax: Axes,
    record: dict[str, Any],
    which: str,
    cols: _Columns,
    class_names: list[str] | None,
) -> None:
    """The check the verdict rests on, under a strip: every checked point on target (green) or
    off target (red, with the class it went to)."""
    position, margin, predicted = checked_points(record, which)
    target = int(record["target"])
    off = ~(margin > 0)
    ax.set_xlim(*cols.limits(extra=False))
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.scatter(position[~off], np.full((~off).sum(), 0.4), s=6, color=ON_COLOUR, marker="|")
    ax.scatter(position[off], np.full(off.sum(), 0.4), s=14, color=OFF_COLOUR, marker="|")
    spacing = 0.5 / max(len(position) - 1, 1)
    for first, last in _runs(off):
        ax.axvspan(
            position[first] - spacing, position[last] + spacing, color=OFF_COLOUR, alpha=0.25, lw=0
        )
        went = sorted(
            {
                _class_name(class_names, int(c))
                for c in predicted[first : last + 1]
                if int(c) != target
            }
            or {"tie"}
        )
        ax.text(
            (position[first] + position[last]) / 2,
            1.0,
            "→ " + ", ".join(went),
            ha="center",
            va="bottom",
            fontsize=SMALL_PT,
            color=OFF_COLOUR,
        )
    # Where a whole-path check decided, what it found off the target is drawn too (hatched
    # stretches of the exact check, lines at the points bounds found): they can be far
    # narrower than the spacing of the sampled points.
    prefix = "line_" if which == "line" else ""
    stretches = record.get(f"{prefix}off_target_intervals")
    if stretches is not None:
        for low, high in stretches.tolist():
            if high > low:
                ax.axvspan(low, high, color=OFF_COLOUR, alpha=0.7, hatch="////", lw=0.5)
            else:
                ax.axvline(low, color=OFF_COLOUR, lw=1.0)
        if record.get("certificate") == "bounds":
            sub = record.get(f"{prefix}sub_intervals", 0)
            label = f"bounds check\n{sub} sub-intervals, {len(stretches)} off"
        else:
            pieces = record.get(f"{prefix}pieces", 0)
            label = f"exact check\n{pieces} pieces, {len(stretches)} off"
    else:
        label = f"sampled check\n{len(position)} pts, {int(off.sum())} off"
    ax.text(-0.01, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=SMALL_PT)


def _distances(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    l2, linf = record.get("distance_l2"), record.get("distance_linf")
    if l2 is None or linf is None:
        moved = (record["path"] - record["line"]).flatten(1).float()
        l2, linf = moved.norm(dim=1), moved.abs().amax(dim=1)
    return l2.float().numpy(), linf.float().numpy()


def _draw_moved(
    ax: Axes, cols: _Columns, record: dict[str, Any], difference: np.ndarray | None
) -> None:
    """How far each point of the path lies from its point on the line: its L2 and L-infinity
    distance, under the path minus the line (``(points, H, W)`` on one symmetric colour scale)
    where the points are images."""
    l2, linf = _distances(record)
    if difference is not None:
        scale = float(np.abs(difference).max()) or 1.0
        for k in range(difference.shape[0]):
            ax.imshow(
                difference[k],
                cmap="RdBu_r",
                vmin=-scale,
                vmax=scale,
                extent=cols.box(cols.x(k)),
                interpolation="nearest",
            )
        label, y, va = f"path - line\n±{scale:.2g}", -0.02, "top"
    else:
        label, y, va = "moved from\nthe line", 0.5, "center"
    for k in range(len(l2)):
        ax.text(
            cols.x(k),
            y,
            f"L2 {l2[k]:.3g}\nL∞ {linf[k]:.3g}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va=va,
            fontsize=SMALL_PT,
        )
    ax.set_aspect("auto")
    ax.set_xlim(*cols.limits())
    ax.set_ylim(0, 1)
    _bare(ax)
    ax.set_ylabel(label, fontsize=TEXT_PT)


class _Rows:
    """Rows stacked from the top of a figure, in inches: ``(gap above, height)`` each."""

    def __init__(self, top: float) -> None:
        self.spans: list[tuple[float, float]] = []  # (top, height) from the figure's top
        self.depth = top

    def add(self, gap: float, height: float) -> int:
        self.depth += gap
        self.spans.append((self.depth, height))
        self.depth += height
        return len(self.spans) - 1


def pair_figure(
    record: dict[str, Any],
    title: str,
    line_images: Tensor | None = None,
    path_images: Tensor | None = None,
    *,
    class_names: list[str] | None = None,
    images_note: str | None = None,
    difference: bool = False,
    end_images: Tensor | None = None,
) -> Figure:
    """One pair in one space: what its verdict rests on.

    Rows, for the straight line and (when a band ran) the optimised path: the points as images
    (where the space has a decoder, or is the input), with the two inputs of the pair beside
    the ends in a latent space; their softmax bars (class names under the first point's and
    under the bar of any other class a point went to); and the track of the check the verdict
    rests on (every checked point, off-target runs red with the class they went to). For a
    band in the input space, ``difference`` adds the path minus the line on one colour scale,
    and every band gets each point's L2 and L-infinity distance from the line. Below: the
    target margin (target logit minus the best other, zero at the decision boundary) along
    every checked point, with the class its lowest value is measured against
    (:func:`competing_class`), and the band's energy (cross-entropy) at the pivots.

    Every text is at least :data:`SMALL_PT` points, at least 9 pixels tall once saved at
    :data:`FIGURE_DPI` (:func:`figure_png`).

    Args:
        record: A saved pair record (see :class:`connectivity.store.records.RunStore`).
        title: Figure title.
        line_images: ``(points, C, H, W)`` images of the line's points, or None.
        path_images: Images of the optimised path's points, or None.
        class_names: Names of the classes (default: their indices).
        images_note: How the images were made, written under the title (e.g. "decoded by
            the layer1 decoder, validation PSNR 21.3 dB").
        difference: Draw path minus line (the images are the points themselves).
        end_images: ``(2, C, H, W)`` the pair's two inputs (floats in [0, 1] or uint8), drawn
            beside the ends of a latent space's strips; None in the input space (its ends are
            the inputs) and for records saved without them.
    """
    banded = record["verdict"] != "linear"
    # A path may have more points than the line (pivots inserted by the exact check): the
    # columns are as many as the longer strip has points; the shorter one leaves the last empty.
    line_probs, path_probs = record["line_probabilities"], record["path_probabilities"]
    points = max(line_probs.shape[0], path_probs.shape[0]) if banded else line_probs.shape[0]
    classes = line_probs.shape[-1]
    names = [_class_name(class_names, k) for k in range(classes)]
    labels, keyed = _short_names(names)
    cols = _Columns(points, extra=1 if end_images is not None else 0)
    walks = [("line", line_images, line_probs, end_images)]
    if banded:
        walks.append(("path", path_images, path_probs, None))

    lines = [title]
    if images_note:
        lines.append(f"images {images_note}")
    if line_images is None and end_images is None:
        lines.append(NOT_IMAGES)
    if keyed and classes <= NAMED_CLASSES:
        lines.append("bars: " + ", ".join(f"{k} {n}" for k, n in enumerate(names)))
    rows = _Rows(top=0.2 * len(lines) + 0.25)
    column = max(COLUMN_IN, (MIN_WIDTH_IN - LEFT_IN - RIGHT_IN) / (points + 2 * cols.extra))
    layout: list[tuple[str, int, Any]] = []
    for name, images, probs, ends in walks:
        has_images = images is not None or ends is not None
        if has_images:
            layout.append(("images", rows.add(0.3, 0.95 * column), (name, images, probs, ends)))
        bars = (name, probs, has_images)
        layout.append(("bars", rows.add(0.08 if has_images else 0.3, 0.45), bars))
        layout.append(("track", rows.add(0.32, 0.3), name))
    if banded:
        moved = _moved(line_images, path_images) if difference else None
        tall = 0.95 * column if moved is not None else 0.4
        layout.append(("moved", rows.add(0.25, tall), moved))
    margin_row = rows.add(0.55 if banded and difference else 0.3, 1.5)
    energy_row = rows.add(0.35, 1.05)
    height = rows.depth + 0.55
    width = LEFT_IN + (points + 2 * cols.extra) * column + RIGHT_IN
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI)

    def axes(row: int, full: bool = True) -> Axes:
        top, tall = rows.spans[row]
        inset = 0 if full else cols.extra * column
        left = LEFT_IN + inset
        wide = (points + 2 * cols.extra) * column - 2 * inset
        return fig.add_axes((left / width, 1 - (top + tall) / height, wide / width, tall / height))

    for kind, row, what in layout:
        ax = axes(row, full=kind != "track")
        _draw_row(ax, kind, what, record, cols, names, labels, class_names, bool(images_note))

    _draw_margins(axes(margin_row, full=False), record, banded, cols, class_names)
    _draw_energy(axes(energy_row, full=False), record, banded, cols)
    fig.suptitle("\n".join(lines), fontsize=TITLE_PT, y=1 - 0.12 / height, va="top")
    return fig


def _draw_row(
    ax: Axes,
    kind: str,
    what: Any,
    record: dict[str, Any],
    cols: _Columns,
    names: list[str],
    labels: list[str],
    class_names: list[str] | None,
    decoded: bool,
) -> None:
    """One row of a walk in :func:`pair_figure`: its ``images``, softmax ``bars``, check
    ``track``, or how the path ``moved`` from the line (``what`` as the layout holds it)."""
    target, banded = int(record["target"]), record["verdict"] != "linear"
    if kind == "images":
        name, images, probs, ends = what
        _draw_images(ax, cols, images, ends, NOT_IMAGES if images is None else None)
        _point_titles(ax, cols, probs, target, names)
        shown = images is not None and decoded
        ax.set_ylabel(f"{name}\n(decoded)" if shown else name, fontsize=TEXT_PT)
    elif kind == "bars":
        name, probs, has_images = what
        _draw_bars(ax, cols, probs, target, labels, named=name == "line" or not banded)
        if not has_images:  # the point titles and the row's name go on the bars instead
            _point_titles(ax, cols, probs, target, names)
            ax.set_ylabel(name, fontsize=TEXT_PT)
    elif kind == "track":
        _draw_track(ax, record, what, cols, class_names)
    else:
        _draw_moved(ax, cols, record, what)


def _moved(line_images: Tensor | None, path_images: Tensor | None) -> np.ndarray | None:
    """Path minus line, ``(points, H, W)`` averaged over channels, where both are images of
    one shape; else None."""
    if line_images is None or path_images is None or line_images.shape != path_images.shape:
        return None
    return (path_images.float() - line_images.float()).mean(dim=1).cpu().numpy()


def _draw_margins(
    ax: Axes,
    record: dict[str, Any],
    banded: bool,
    cols: _Columns,
    class_names: list[str] | None,
) -> None:
    """The target margin at every checked point of the line (and the path), with a marker at
    each pivot and the class each lowest margin is measured against."""
    for which, style in (("line", "o-"), ("path", "s-"))[: 2 if banded else 1]:
        position, margin, _ = checked_points(record, which)
        shown = "straight line" if which == "line" else "optimised path"
        finite = np.where(np.isfinite(margin), margin, np.nan)
        label = shown
        if np.isfinite(finite).any():
            label = f"{shown} ({_competing_text(record, which, class_names)})"
        ax.plot(position, finite, "-", lw=1, label=label)
        count = record[f"{which}_probabilities"].shape[0]
        at = [int(np.abs(position - x).argmin()) for x in np.linspace(0.0, 1.0, count)]
        ax.plot(position[at], finite[at], style[0], color=ax.lines[-1].get_color(), ms=4)
    ax.axhline(0.0, color="black", lw=0.8, ls="--", label="decision boundary (margin 0)")
    ax.set_xlim(*cols.limits(extra=False))
    ax.set_ylabel("target margin\n(logit - best other)", fontsize=TEXT_PT)
    ax.legend(fontsize=SMALL_PT, loc="best")
    ax.tick_params(labelsize=SMALL_PT)


def _draw_energy(ax: Axes, record: dict[str, Any], banded: bool, cols: _Columns) -> None:
    """The band's energy (cross-entropy) at the pivots of the line (and the path)."""
    walks = [("line", "o-", "straight line"), ("path", "s-", "optimised path")]
    for which, style, label in walks[: 2 if banded else 1]:
        energy = record[f"{which}_energy"].float().numpy()
        ax.plot(np.linspace(0, 1, len(energy)), energy, style, ms=4, label=label)
    ax.set_xlim(*cols.limits(extra=False))
    ax.set_xlabel("position along the path (pivot k of N at k / (N - 1))", fontsize=TEXT_PT)
    ax.set_ylabel("energy at pivots\n(cross-entropy)", fontsize=TEXT_PT)
    ax.legend(fontsize=SMALL_PT, loc="best")
    ax.tick_params(labelsize=SMALL_PT)


def reconstruction_figure(originals: Tensor, reconstructions: Tensor, title: str) -> Figure:
    """Originals above their reconstructions, at least 96 pixels per image, rows labelled.

    Args:
        originals: ``(n, C, H, W)`` images in [0, 1].
        reconstructions: The decoder's images of the same shape.
        title: Figure title (e.g. the epoch and the validation PSNR).
    """
    count = originals.shape[0]
    side = max(96, originals.shape[-1]) / 72  # inches at 72 dpi per image: >= 96 px
    fig = Figure(figsize=(side * count + 1.2, 2 * side + 0.6), dpi=72)
    grid = fig.add_gridspec(2, count, wspace=0.04, hspace=0.06)
    for row, (name, images) in enumerate((("original", originals), ("decoded", reconstructions))):
        for k in range(count):
            ax = fig.add_subplot(grid[row, k])
            ax.imshow(_as_image(images[k]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


def figure_array(fig: Figure, dpi: int = 72) -> np.ndarray:
    """``fig`` rendered to an RGB array (uint8 HWC), e.g. for a logger's image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_png(fig: Figure) -> bytes:
    """``fig`` as the bytes of a PNG file at :data:`FIGURE_DPI`, cropped to what is drawn
    (the store writes them: :meth:`~connectivity.store.records.RunStore.save_bytes`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    return buffer.getvalue()


def bar_image(probabilities: Tensor, target: int, height: int = 32, width: int = 4) -> np.ndarray:
    """A tiny softmax bar chart as an RGB array (target red), cheap enough for every point."""
    probs = probabilities.detach().float().cpu().clamp(0, 1)
    image = np.full((height, width * len(probs), 3), 255, dtype=np.uint8)
    for k, p in enumerate(probs.tolist()):
        top = height - round(p * height)
        colour = (214, 39, 40) if k == target else (127, 127, 127)
        image[top:, k * width + 1 : (k + 1) * width] = colour
    return image


def image_array(point: Tensor) -> np.ndarray:
    """A point shown as an image (uint8 HWC)."""
    return (torch.as_tensor(_as_image(point)) * 255).round().to(torch.uint8).numpy()


EDGE_COLOURS = {"linear": "tab:blue", "nonlinear": "tab:orange"}


def graph_figure(
    coords: Tensor,
    components: list[list[int]],
    edges: dict[tuple[int, int], str],
    failed: list[tuple[int, int]],
    title: str,
    images: Tensor | None = None,
) -> Figure:
    """One class in one space: its inputs placed by a 2-D embedding, joined by the pairs decided.

    Args:
        coords: ``(N, 2)`` positions (e.g. the first two principal components of the points).
        components: Lists of input indices, largest first; each component's thumbnails get a
            frame of its own colour (the largest blue, then orange, ... as in ``tab10``).
        edges: ``{(i, j): verdict}`` of the pairs found connected: solid, blue for ``linear``,
            orange for ``nonlinear``.
        failed: Pairs decided not connected by the paths tried: dashed grey.
        title: Figure title.
        images: ``(N, C, H, W)`` thumbnails (uint8 0..255 or floats in [0, 1]), or None for
            dots.
    """
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    xy = coords.detach().float().cpu().numpy()
    fig = Figure(figsize=(8.0, 7.0))
    ax = fig.add_subplot()
    for i, j in failed:
        ax.plot(*xy[[i, j]].T, ls="--", lw=0.6, color="tab:grey", alpha=0.6, zorder=1)
    for (i, j), verdict in edges.items():
        ax.plot(*xy[[i, j]].T, lw=1.6, color=EDGE_COLOURS.get(verdict, "black"), zorder=2)
    palette = [f"C{k % 10}" for k in range(len(components))]
    span = float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-9))
    for k, members in enumerate(components):
        for i in members:
            if images is None:
                ax.scatter(*xy[i], s=40, color=palette[k], zorder=3)
                continue
            image = images[i]
            picture = image.float() / 255.0 if image.dtype == torch.uint8 else image
            box = OffsetImage(_as_image(picture), zoom=max(0.6, 24.0 / picture.shape[-1]))
            ax.add_artist(
                AnnotationBbox(
                    box,
                    tuple(xy[i]),
                    frameon=True,
                    pad=0.1,
                    zorder=3,
                    bboxprops={"edgecolor": palette[k], "linewidth": 1.5},
                )
            )
    margin = 0.08 * span
    ax.set_xlim(xy[:, 0].min() - margin, xy[:, 0].max() + margin)
    ax.set_ylim(xy[:, 1].min() - margin, xy[:, 1].max() + margin)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.legend(
        handles=[
            Line2D([], [], color=EDGE_COLOURS["linear"], lw=1.6, label="linear path"),
            Line2D([], [], color=EDGE_COLOURS["nonlinear"], lw=1.6, label="nonlinear path"),
            Line2D(
                [], [], color="tab:grey", ls="--", lw=0.8, label="not connected by the paths tried"
            ),
        ],
        fontsize=7,
        loc="best",
    )
    fig.suptitle(title, fontsize=10)
    return fig
