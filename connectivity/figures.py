"""Figures of paths: points as images with their softmax bars, and energy profiles.

Built with matplotlib's object API (``Figure``, saved through its own canvas), never pyplot:
importing this module leaves the backend of a notebook or script as it was, and figures are
freed with their last reference rather than kept in pyplot's global list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

TARGET_COLOUR = "tab:red"
OTHER_COLOUR = "tab:grey"


def _as_image(point: Tensor) -> np.ndarray:
    image = point.detach().float().clamp(0, 1).cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.permute(1, 2, 0).numpy()


def _draw_bars(ax: Axes, probabilities: Tensor, target: int) -> None:
    probs = probabilities.detach().float().cpu().numpy()
    colours = [TARGET_COLOUR if k == target else OTHER_COLOUR for k in range(len(probs))]
    ax.bar(np.arange(len(probs)), probs, color=colours, width=0.8)
    ax.set_ylim(0, 1)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_strip(
    axes_images: list, axes_bars: list, images: Tensor | None, probs: Tensor, target: int
) -> None:
    predicted = probs.argmax(dim=-1)
    for k, (ax_image, ax_bar) in enumerate(zip(axes_images, axes_bars, strict=True)):
        ax_image.axis("off")
        if images is not None:
            ax_image.imshow(_as_image(images[k]), interpolation="nearest")
        marker = "" if predicted[k] == target else " ✗"
        ax_image.set_title(f"{k}{marker}", fontsize=7, color="black" if not marker else "red")
        _draw_bars(ax_bar, probs[k], target)


def pair_figure(
    record: dict,
    title: str,
    line_images: Tensor | None = None,
    path_images: Tensor | None = None,
) -> Figure:
    """One pair in one space: image strips with softmax bars (when images are given), and the
    energy profile along the straight line and along the optimised path.

    Args:
        record: A saved pair record (see :class:`connectivity.records.RunStore`).
        title: Figure title.
        line_images: ``(points, C, H, W)`` images of the line's points, or None.
        path_images: Images of the optimised path's points, or None.
    """
    target = int(record["target"])
    # A path may have more points than the line (pivots inserted by the exact check): the
    # grid is as wide as the longer strip, the shorter one leaves its last columns empty.
    line_points = record["line_probabilities"].shape[0]
    path_points = record["path_probabilities"].shape[0]
    shows_path = record["verdict"] != "linear"
    points = max(line_points, path_points) if shows_path else line_points
    strips = [] if line_images is None else [("line", line_images, record["line_probabilities"])]
    if line_images is not None and record["verdict"] != "linear" and path_images is not None:
        strips.append(("path", path_images, record["path_probabilities"]))
    rows = 2 * len(strips) + 1
    heights = [1.0, 0.5] * len(strips) + [1.6]
    fig = Figure(figsize=(max(6.0, 0.9 * points), 0.9 * sum(heights) + 0.8))
    grid = fig.add_gridspec(rows, points, height_ratios=heights, hspace=0.35, wspace=0.08)
    for s, (name, images, probs) in enumerate(strips):
        count = probs.shape[0]
        axes_images = [fig.add_subplot(grid[2 * s, k]) for k in range(count)]
        axes_bars = [fig.add_subplot(grid[2 * s + 1, k]) for k in range(count)]
        _draw_strip(axes_images, axes_bars, images, probs, target)
        axes_images[0].text(
            -0.3,
            0.5,
            name,
            transform=axes_images[0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=9,
        )
    ax = fig.add_subplot(grid[rows - 1, :])
    line_position = np.linspace(0, 1, line_points)
    ax.plot(line_position, record["line_energy"].float().numpy(), "o-", label="straight line")
    if shows_path:
        path_position = np.linspace(0, 1, path_points)
        ax.plot(path_position, record["path_energy"].float().numpy(), "s-", label="optimised path")
    ax.axhline(np.log(2), color="grey", lw=0.8, ls="--", label="p(target) = 1/2")
    ax.set_xlabel("position along the path (pivot index / (pivots + 1))")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    return fig


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
