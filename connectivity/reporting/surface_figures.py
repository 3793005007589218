"""Figures of planes and surfaces coloured by predicted class (issue 22).

``plane_map_figure`` draws :func:`connectivity.maps.plane_map`: the plane through three inputs,
one panel per classifier, as dbViz draws it (Somepalli et al., CVPR 2022), with the inputs and
the straight lines between them, and how far several classifiers agree.
``surface_domain_figure`` draws a surface's parameter domain
(:func:`connectivity.engine.planes.surface_domain_map`) before and after relaxation.

Built with matplotlib's object API (``Figure``), never pyplot, as
:mod:`connectivity.reporting.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from connectivity.engine.planes import NO_CLASS, DomainMap
from connectivity.maps import PlaneMap
from connectivity.reporting.figures import SMALL_PT, TEXT_PT, TITLE_PT, _class_name

# Where no class is drawn (outside a surface's domain, non-finite logits).
NO_CLASS_COLOUR = (1.0, 1.0, 1.0)
LINE_COLOUR = "black"
PANEL_IN = 3.6  # inches per panel (square maps)
# Pairwise agreements named in the title up to this many classifiers (the mean beyond).
NAMED_PAIRS = 4


def class_colours(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` RGB in [0, 1]: ``tab10`` up to 10 classes (class ``k`` is ``Ck``, as
    the other figures colour series), ``tab20`` up to 20, evenly spaced hues of ``hsv`` beyond.
    """
    if num_classes <= 20:
        # A listed colour map called with an integer gives its k-th colour.
        cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
        return np.array([cmap(k)[:3] for k in range(num_classes)])
    cmap = matplotlib.colormaps["hsv"]
    return np.array([cmap(k / num_classes)[:3] for k in range(num_classes)])


def class_image(classes: Tensor, num_classes: int) -> np.ndarray:
    """``(H, W, 3)`` RGB of an ``(H, W)`` class map (:data:`NO_CLASS` white)."""
    colours = np.vstack([class_colours(num_classes), NO_CLASS_COLOUR])
    index = classes.detach().cpu().numpy().copy()
    index[index == NO_CLASS] = num_classes
    return colours[index]


def _pixel_extent(u: np.ndarray, v: np.ndarray) -> tuple[float, float, float, float]:
    """``imshow``'s extent that centres pixel ``(i, j)`` on ``(u[j], v[i])``."""
    du = (u[-1] - u[0]) / max(len(u) - 1, 1) / 2
    dv = (v[-1] - v[0]) / max(len(v) - 1, 1) / 2
    return (u[0] - du, u[-1] + du, v[0] - dv, v[-1] + dv)


def _draw_inputs(ax: Axes, corners: np.ndarray, closed: bool = True) -> None:
    """The inputs (numbered markers) and the straight lines between them (a closed polygon
    in the order given)."""
    loop = np.vstack([corners, corners[:1]]) if closed else corners
    ax.plot(loop[:, 0], loop[:, 1], "--", color=LINE_COLOUR, lw=1.2, label="straight lines")
    # Not clipped: the inputs lie on the edge of a surface's domain.
    ax.scatter(
        corners[:, 0],
        corners[:, 1],
        s=70,
        c="white",
        edgecolors=LINE_COLOUR,
        zorder=3,
        clip_on=False,
    )
    for k, (x, y) in enumerate(corners):
        ax.text(x, y, str(k), ha="center", va="center", fontsize=SMALL_PT, zorder=4, clip_on=False)


def _class_legend(fig: Figure, shown: set[int], num_classes: int, names: list[str] | None) -> None:
    colours = class_colours(num_classes)
    handles = [
        Patch(color=colours[k], label=_class_name(names, k)) for k in sorted(shown) if k >= 0
    ]
    if NO_CLASS in shown:
        handles.append(Patch(facecolor=NO_CLASS_COLOUR, edgecolor="0.5", label="no class"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 8),
        fontsize=SMALL_PT,
        frameon=False,
    )


def plane_map_figure(
    found: PlaneMap, class_names: list[str] | None = None, titles: Sequence[str] | None = None
) -> Figure:
    """The plane through three inputs coloured by class: one panel per classifier, and with
    several classifiers a last panel of their agreement with the first (and its colour bar).

    Each panel marks the inputs (numbered 0, 1, 2) and the straight lines between them;
    coordinates are in the layer's units, so the picture keeps the inputs' distances.

    Args:
        found: As :func:`connectivity.maps.plane_map` returns it.
        class_names: Names of the classes (indices where None or too short).
        titles: One title per classifier (default ``classifier k``).
    """
    count = found.classes.shape[0]
    titles = list(titles) if titles is not None else [f"classifier {m}" for m in range(count)]
    panels = count + (1 if count > 1 else 0)
    num_classes = max(int(found.classes.max()) + 1, len(class_names or []), 1)
    # Constrained layout: the panels keep the plane's aspect and the colour bar its room.
    fig = Figure(figsize=(PANEL_IN * panels + 0.6, PANEL_IN + 1.0), layout="constrained")
    grid = fig.add_gridspec(1, panels)
    u, v = found.u.numpy(), found.v.numpy()
    extent = _pixel_extent(u, v)
    corners = found.corners.numpy()
    for m in range(count):
        ax = fig.add_subplot(grid[0, m])
        image = class_image(found.classes[m], num_classes)
        ax.imshow(image, origin="lower", extent=extent, interpolation="nearest")
        _draw_inputs(ax, corners)
        _axes_labels(ax, found.layer, first=m == 0)
        ax.set_title(titles[m], fontsize=TEXT_PT)
    if count > 1:
        ax = fig.add_subplot(grid[0, count])
        shown = ax.imshow(
            found.agreement.numpy(),
            origin="lower",
            extent=extent,
            interpolation="nearest",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
        )
        _draw_inputs(ax, corners)
        _axes_labels(ax, found.layer, first=False)
        ax.set_title(f"agreement with {titles[0]}", fontsize=TEXT_PT)
        bar = fig.colorbar(shown, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=SMALL_PT)
    _class_legend(fig, set(found.classes.unique().tolist()), num_classes, class_names)
    fig.suptitle(_plane_title(found, titles), fontsize=TITLE_PT)
    return fig


def _axes_labels(ax: Axes, layer: str, first: bool) -> None:
    ax.set_xlabel(f"along input 0 → 1 ({layer} units)", fontsize=SMALL_PT)
    if first:
        ax.set_ylabel("towards input 2", fontsize=SMALL_PT)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=SMALL_PT)


def _plane_title(found: PlaneMap, titles: list[str]) -> str:
    """The figure's title: what the colours are, and the pairwise agreement of the maps."""
    count = found.classes.shape[0]
    # One panel is narrow: the words go on two lines there.
    gap = "\n" if count == 1 else " "
    lines = [f"the plane through three inputs in {found.layer!r},{gap}coloured by predicted class"]
    if 1 < count <= NAMED_PAIRS:
        pairs = [
            f"{titles[i]} / {titles[j]} {float(found.pairwise[i, j]):.2f}"
            for i in range(count)
            for j in range(i + 1, count)
        ]
        lines.append("share of the plane with the same class: " + ", ".join(pairs))
    elif count > NAMED_PAIRS:
        upper = found.pairwise.triu(diagonal=1)
        mean = float(upper.sum()) / (count * (count - 1) / 2)
        lines.append(f"share of the plane with the same class, mean over pairs: {mean:.2f}")
    return "\n".join(lines)


def surface_domain_figure(
    before: Tensor | DomainMap,
    after: Tensor | DomainMap,
    corners_uv: Tensor,
    class_names: list[str] | None = None,
    title: str = "",
) -> Figure:
    """A surface's parameter domain coloured by predicted class, before relaxation (the flat
    fill) and after, with the inputs at its corners and the loop between them.

    Args:
        before: ``(H, W)`` classes over the domain (:data:`NO_CLASS` outside it), or the
            :class:`~connectivity.engine.planes.DomainMap` they come from (its grid then places
            the picture).
        after: The same after relaxation.
        corners_uv: ``(k, 2)`` the inputs' domain coordinates, in the loop's order. Without a
            DomainMap the classes' grid is taken to span their bounding box (as
            :func:`~connectivity.engine.planes.surface_domain_map` places it when the inputs
            are the domain's extreme points).
        class_names: Names of the classes (indices where None or too short).
        title: The figure's title (e.g. the loop, its class and the verdict).
    """
    corners = corners_uv.detach().double().cpu().numpy()
    maps = [_domain_classes(m, corners) for m in (before, after)]
    num_classes = max(max(int(c.max()) for c, _ in maps) + 1, len(class_names or []), 1)
    fig = Figure(figsize=(2 * PANEL_IN + 0.6, PANEL_IN + 1.0), layout="constrained")
    grid = fig.add_gridspec(1, 2)
    shown: set[int] = set()
    for k, (name, (classes, extent)) in enumerate(
        zip(("before relaxation (flat fill)", "after relaxation"), maps, strict=True)
    ):
        ax = fig.add_subplot(grid[0, k])
        image = class_image(classes, num_classes)
        ax.imshow(image, origin="lower", extent=extent, interpolation="nearest")
        _draw_inputs(ax, corners)
        ax.set_title(name, fontsize=TEXT_PT)
        ax.set_xlabel("u (surface domain)", fontsize=SMALL_PT)
        if k == 0:
            ax.set_ylabel("v", fontsize=SMALL_PT)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=SMALL_PT)
        shown |= set(classes.unique().tolist())
    _class_legend(fig, shown, num_classes, class_names)
    fig.suptitle(title, fontsize=TITLE_PT)
    return fig


def _domain_classes(
    found: Tensor | DomainMap, corners: np.ndarray
) -> tuple[Tensor, tuple[float, float, float, float]]:
    """A domain map's classes and where its pixels lie."""
    if isinstance(found, DomainMap):
        return found.classes, _pixel_extent(found.u.numpy(), found.v.numpy())
    height, width = found.shape
    u = np.linspace(corners[:, 0].min(), corners[:, 0].max(), width)
    v = np.linspace(corners[:, 1].min(), corners[:, 1].max(), height)
    return found, _pixel_extent(u, v)


def _as_picture(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] as what ``imshow`` takes (grey for one channel)."""
    picture = image.detach().float().clamp(0, 1).cpu()
    if picture.shape[0] == 1:
        return picture[0].numpy()
    return picture.permute(1, 2, 0).numpy()


def surface_images_figure(
    flat: Tensor,
    surface: Tensor,
    flat_classes: Tensor,
    surface_classes: Tensor,
    class_names: list[str] | None = None,
    title: str = "",
) -> Figure:
    """Images along a surface: the same places of its parameter domain (a strip from input 0
    through the domain's centre to the opposite side) on the flat fill (top row) and on the
    relaxed surface (bottom row), each with the class predicted there.

    Args:
        flat: ``(n, C, H, W)`` images in [0, 1] (the points themselves in the input space, or
            decoded) at the strip's vertices of the flat fill.
        surface: The same at the relaxed surface's vertices.
        flat_classes, surface_classes: ``(n,)`` the classes predicted there.
        class_names: Names of the classes.
        title: The figure's title.
    """
    count = flat.shape[0]
    fig = Figure(figsize=(1.1 * count + 0.8, 2.9), layout="constrained")
    axes = fig.subplots(2, count, squeeze=False)
    for row, (images, classes, name) in enumerate(
        ((flat, flat_classes, "flat fill"), (surface, surface_classes, "surface"))
    ):
        for k in range(count):
            ax = axes[row, k]
            ax.imshow(_as_picture(images[k]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(_class_name(class_names, int(classes[k])), fontsize=SMALL_PT)
        axes[row, 0].set_ylabel(name, fontsize=TEXT_PT)
    fig.suptitle(title, fontsize=TITLE_PT)
    return fig
