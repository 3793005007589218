"""Figures of paths: points as images with their softmax bars, and energy profiles.

Built with matplotlib's object API (``Figure``, saved through its own canvas), never pyplot:
importing this module leaves the backend of a notebook or script as it was, and figures are
freed with their last reference rather than kept in pyplot's global list.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from connectivity.verdicts import target_margin

TARGET_COLOUR = "tab:red"
OTHER_COLOUR = "tab:grey"


def _as_image(point: Tensor) -> np.ndarray:
    image = point.detach().float().clamp(0, 1).cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.permute(1, 2, 0).numpy()


OFF_COLOUR = "tab:red"
ON_COLOUR = "tab:green"
PLACEHOLDER = "0.92"


def _class_name(class_names: list[str] | None, k: int) -> str:
    return str(class_names[k]) if class_names is not None and k < len(class_names) else str(k)


def _margin_from_probabilities(probabilities: Tensor, target: int) -> np.ndarray:
    """Target margin (:func:`~connectivity.verdicts.target_margin`) at points that only kept
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


def _draw_bars(
    ax: Axes, probabilities: Tensor, target: int, class_names: list[str] | None, labels: bool
) -> None:
    probs = probabilities.detach().float().cpu().numpy()
    colours = [TARGET_COLOUR if k == target else OTHER_COLOUR for k in range(len(probs))]
    ax.bar(np.arange(len(probs)), probs, color=colours, width=0.8)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    predicted = int(probs.argmax())
    names = [_class_name(class_names, k) for k in range(len(probs))]
    if labels:  # the first point names every class
        ax.set_xticks(np.arange(len(probs)))
        long_names = max(len(n) for n in names) > 2
        ax.set_xticklabels(names, rotation=90 if long_names else 0, fontsize=5)
    elif predicted != target:  # name the class the point went to, under its bar
        ax.set_xticks([predicted])
        ax.set_xticklabels([names[predicted]], fontsize=6, color=OFF_COLOUR)
    else:
        ax.set_xticks([])
    ax.tick_params(axis="x", length=0, pad=1)


def _draw_strip(
    fig: Figure,
    grid: Any,
    row: int,
    images: Tensor | None,
    probs: Tensor,
    target: int,
    class_names: list[str] | None,
    label: str,
) -> None:
    """Images (or placeholders) and softmax bars of a walk's points on rows ``row, row + 1``."""
    points = probs.shape[0]
    predicted = probs.argmax(dim=-1)
    for k in range(points):
        ax_image = fig.add_subplot(grid[row, k])
        ax_image.set_xticks([])
        ax_image.set_yticks([])
        if images is not None:
            ax_image.imshow(_as_image(images[k]), interpolation="nearest")
        else:
            ax_image.set_facecolor(PLACEHOLDER)
            ax_image.text(
                0.5,
                0.5,
                "no\nimage",
                ha="center",
                va="center",
                fontsize=5,
                color="0.5",
                transform=ax_image.transAxes,
            )
        others = torch.cat([probs[k, :target], probs[k, target + 1 :]])
        # Strict, as the check: a tie with another class is off target.
        off = not bool((probs[k, target] > others).all())
        went = int(predicted[k])
        went_name = "tie" if went == target else _class_name(class_names, went)
        name = f"{k} ✗ {went_name}" if off else f"{k}"
        ax_image.set_title(name, fontsize=6, color=OFF_COLOUR if off else "black", pad=2)
        if k == 0:
            ax_image.set_ylabel(label, fontsize=7)
        _draw_bars(fig.add_subplot(grid[row + 1, k]), probs[k], target, class_names, k == 0)


def _axis_limits(points: int) -> tuple[float, float]:
    """x limits that put position ``k / (points - 1)`` under the centre of column ``k``."""
    half = 0.5 / max(points - 1, 1)
    return -half, 1.0 + half


def _draw_track(
    ax: Axes,
    record: dict[str, Any],
    which: str,
    points: int,
    class_names: list[str] | None,
) -> None:
    """The check the verdict rests on, under a strip: every checked point on target (green) or
    off target (red, with the class it went to)."""
    position, margin, predicted = checked_points(record, which)
    target = int(record["target"])
    off = ~(margin > 0)
    ax.set_xlim(*_axis_limits(points))
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.scatter(position[~off], np.full((~off).sum(), 0.5), s=6, color=ON_COLOUR, marker="|")
    ax.scatter(position[off], np.full(off.sum(), 0.5), s=14, color=OFF_COLOUR, marker="|")
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
            0.95,
            "→ " + ", ".join(went),
            ha="center",
            va="top",
            fontsize=6,
            color=OFF_COLOUR,
        )
    # Where the exact check decided, its off-target stretches are drawn too (hatched): they
    # can be far narrower than the spacing of the sampled points.
    prefix = "line_" if which == "line" else ""
    stretches = record.get(f"{prefix}off_target_intervals")
    if stretches is not None:
        for low, high in stretches.tolist():
            ax.axvspan(low, high, color=OFF_COLOUR, alpha=0.7, hatch="////", lw=0.5)
        pieces = record.get(f"{prefix}pieces", 0)
        label = f"exact check\n{pieces} pieces, {len(stretches)} off"
    else:
        label = f"sampled check\n{len(position)} pts, {int(off.sum())} off"
    ax.text(-0.01, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=5)


def _draw_difference(
    fig: Figure, grid: Any, row: int, line: Tensor, path: Tensor, record: dict[str, Any]
) -> None:
    """Path minus line, per point, on one symmetric colour scale; with each point's distance."""
    difference = (path.float() - line.float()).mean(dim=1).cpu().numpy()  # over channels
    scale = float(np.abs(difference).max()) or 1.0
    l2, linf = _distances(record)
    for k in range(difference.shape[0]):
        ax = fig.add_subplot(grid[row, k])
        ax.imshow(difference[k], cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"L2 {l2[k]:.3g}\nL∞ {linf[k]:.3g}", fontsize=5, labelpad=1)
        if k == 0:
            ax.set_ylabel(f"path - line\n±{scale:.2g}", fontsize=6)


def _distances(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    l2, linf = record.get("distance_l2"), record.get("distance_linf")
    if l2 is None or linf is None:
        moved = (record["path"] - record["line"]).flatten(1).float()
        l2, linf = moved.norm(dim=1), moved.abs().amax(dim=1)
    return l2.float().numpy(), linf.float().numpy()


def _draw_distances(fig: Figure, grid: Any, row: int, record: dict[str, Any]) -> None:
    """How far each point of the path lies from its point on the line (spaces without images)."""
    l2, linf = _distances(record)
    for k in range(len(l2)):
        ax = fig.add_subplot(grid[row, k])
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"L2 {l2[k]:.3g}\nL∞ {linf[k]:.3g}",
            ha="center",
            va="center",
            fontsize=5,
            transform=ax.transAxes,
        )
        if k == 0:
            ax.text(
                -0.1,
                0.5,
                "moved from\nthe line",
                ha="right",
                va="center",
                fontsize=6,
                transform=ax.transAxes,
            )


def pair_figure(
    record: dict[str, Any],
    title: str,
    line_images: Tensor | None = None,
    path_images: Tensor | None = None,
    *,
    class_names: list[str] | None = None,
    images_note: str | None = None,
    difference: bool = False,
) -> Figure:
    """One pair in one space: what its verdict rests on.

    Rows, for the straight line and (when a band ran) the optimised path: the points as images
    (a placeholder where the space has no decoder), their softmax bars (class names on the
    first point and above the bar of any other class a point went to), and the track of the
    check the verdict rests on (every checked point, off-target runs red with the class they
    went to). For a band in the input space, ``difference`` adds the path minus the line on one
    colour scale, and every band gets each point's L2 and L-infinity distance from the line.
    Below: the target margin (target logit minus the best other, zero at the decision
    boundary) along every checked point, and the band's energy (cross-entropy) at the pivots.

    Args:
        record: A saved pair record (see :class:`connectivity.records.RunStore`).
        title: Figure title.
        line_images: ``(points, C, H, W)`` images of the line's points, or None.
        path_images: Images of the optimised path's points, or None.
        class_names: Names of the classes (default: their indices).
        images_note: How the images were made, written beside the strips (e.g. "decoded by
            the layer1 decoder, validation PSNR 21.3 dB").
        difference: Draw path minus line (the images are the points themselves).
    """
    target = int(record["target"])
    banded = record["verdict"] != "linear"
    # A path may have more points than the line (pivots inserted by the exact check): the
    # grid is as wide as the longer strip, the shorter one leaves its last columns empty.
    line_points = record["line_probabilities"].shape[0]
    path_points = record["path_probabilities"].shape[0]
    points = max(line_points, path_points) if banded else line_points
    walks = [("line", line_images, record["line_probabilities"])]
    if banded:
        walks.append(("path", path_images, record["path_probabilities"]))
    heights: list[float] = []
    for _ in walks:
        heights += [1.0, 0.55, 0.3]
    moved_row = len(heights) if banded else None
    if banded:
        heights.append(1.0 if difference and line_images is not None else 0.35)
    heights += [1.5, 1.0]
    fig = Figure(figsize=(max(7.0, 0.95 * points), 0.95 * sum(heights) + 1.0))
    grid = fig.add_gridspec(len(heights), points, height_ratios=heights, hspace=0.6, wspace=0.08)
    for s, (name, images, probs) in enumerate(walks):
        label = name if images is None or not images_note else f"{name}\n(decoded)"
        _draw_strip(fig, grid, 3 * s, images, probs, target, class_names, label)
        _draw_track(fig.add_subplot(grid[3 * s + 2, :]), record, name, points, class_names)
    if moved_row is not None:
        same = line_images is not None and path_images is not None
        if difference and same and line_images.shape == path_images.shape:
            _draw_difference(fig, grid, moved_row, line_images, path_images, record)
        else:
            _draw_distances(fig, grid, moved_row, record)

    ax = fig.add_subplot(grid[len(heights) - 2, :])
    for which, style in (("line", "o-"), ("path", "s-")):
        if which == "path" and not banded:
            continue
        position, margin, _ = checked_points(record, which)
        shown = "straight line" if which == "line" else "optimised path"
        finite = np.where(np.isfinite(margin), margin, np.nan)
        ax.plot(
            position,
            finite,
            "-",
            lw=1,
            label=f"{shown} (min {np.nanmin(finite):.3g})" if np.isfinite(finite).any() else shown,
        )
        pivots = np.linspace(0.0, 1.0, line_points if which == "line" else path_points)
        at = [int(np.abs(position - x).argmin()) for x in pivots]
        ax.plot(position[at], finite[at], style[0], color=ax.lines[-1].get_color(), ms=4)
    ax.axhline(0.0, color="black", lw=0.8, ls="--", label="decision boundary (margin 0)")
    ax.set_xlim(*_axis_limits(points))
    ax.set_ylabel("target margin\n(logit - best other)", fontsize=7)
    ax.legend(fontsize=6, loc="best")
    ax.tick_params(labelsize=6)

    ax = fig.add_subplot(grid[len(heights) - 1, :])
    walks_energy = [("line", "o-", "straight line"), ("path", "s-", "optimised path")]
    for which, style, label in walks_energy[: 2 if banded else 1]:
        energy = record[f"{which}_energy"].float().numpy()
        ax.plot(np.linspace(0, 1, len(energy)), energy, style, ms=4, label=label)
    ax.set_xlim(*_axis_limits(points))
    ax.set_xlabel("position along the path (pivot k of N at k / (N - 1))", fontsize=7)
    ax.set_ylabel("energy at pivots\n(cross-entropy)", fontsize=7)
    ax.legend(fontsize=6, loc="best")
    ax.tick_params(labelsize=6)
    fig.suptitle(title if not images_note else f"{title}\nimages {images_note}", fontsize=9)
    return fig


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


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` (the format follows the suffix), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")


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
