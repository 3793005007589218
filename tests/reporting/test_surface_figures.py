"""Figures of planes and surface domains draw the maps they are given, where they lie."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from connectivity.engine.planes import NO_CLASS, DomainMap
from connectivity.maps import PlaneMap
from connectivity.reporting.figures import figure_png
from connectivity.reporting.surface_figures import (
    class_colours,
    plane_map_figure,
    surface_domain_figure,
)

U = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
V = [-2.4, 0.0, 2.4, 4.8, 7.2, 9.6, 12.0, 14.4]
DIAGONAL = torch.tensor([[int(u + v > 7.5) for u in U] for v in V])
ACROSS = torch.tensor([[int(u > 2.5) for u in U] for v in V])
CORNERS = torch.tensor([[0.0, 0.0], [5.0, 0.0], [5.0, 12.0]], dtype=torch.float64)
NAMES = ["zero", "one", "two"]


def hand_map(*maps: torch.Tensor) -> PlaneMap:
    """A :class:`PlaneMap` of the given ``(8, 8)`` class maps on the grid of U and V."""
    classes = torch.stack(maps)
    agreement = (classes[1:] == classes[0]).double().mean(dim=0) if len(maps) > 1 else None
    flat = classes.flatten(1)
    return PlaneMap(
        u=torch.tensor(U, dtype=torch.float64),
        v=torch.tensor(V, dtype=torch.float64),
        classes=classes,
        margins=torch.zeros(classes.shape, dtype=torch.float64),
        corners=CORNERS,
        input_classes=torch.zeros(len(maps), 3, dtype=torch.long),
        agreement=torch.ones(8, 8, dtype=torch.float64) if agreement is None else agreement,
        pairwise=(flat.unsqueeze(0) == flat.unsqueeze(1)).double().mean(dim=2),
        layer="input",
        target=None,
    )


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_one_classifier_is_one_panel_with_its_classes_and_the_inputs() -> None:
    fig = plane_map_figure(hand_map(DIAGONAL), class_names=NAMES)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "classifier 0"
    (image,) = ax.images
    # Pixel (i, j) centred on (U[j], V[i]): half a step of 1 and of 2.4 beyond the axes.
    assert np.allclose(image.get_extent(), (-1.5, 6.5, -3.6, 15.6))
    drawn = np.asarray(image.get_array())
    assert np.allclose(drawn[2, 7], to_rgb("C1")) and np.allclose(drawn[2, 6], to_rgb("C0"))
    assert np.allclose(drawn[DIAGONAL.numpy() == 1], to_rgb("C1"))
    # The straight lines between the inputs: the closed triangle through the corners.
    (lines,) = ax.lines
    assert np.allclose(lines.get_xydata(), [[0, 0], [5, 0], [5, 12], [0, 0]])
    texts = _texts(fig)
    assert {"0", "1", "2", "zero", "one"} <= set(texts) and "two" not in texts
    assert figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_classifiers_get_an_agreement_panel() -> None:
    fig = plane_map_figure(hand_map(DIAGONAL, ACROSS), titles=["seed 0", "seed 1"])
    # two maps, the agreement and its colour bar
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == ["seed 0", "seed 1", "agreement with seed 0"]
    agreement = np.asarray(fig.axes[2].images[0].get_array())
    assert np.array_equal(agreement, (DIAGONAL == ACROSS).double().numpy())
    # The maps agree at 39 of the 64 grid points.
    assert any("seed 0 / seed 1 0.61" in t for t in _texts(fig))
    fig = plane_map_figure(hand_map(DIAGONAL, ACROSS, DIAGONAL, ACROSS, DIAGONAL))
    assert len(fig.axes) == 7
    assert any("mean over pairs" in t for t in _texts(fig))


def test_class_colours_are_the_series_colours_and_stay_distinct() -> None:
    assert np.allclose(class_colours(3), [to_rgb(f"C{k}") for k in range(3)])
    for count in (15, 40):
        colours = class_colours(count)
        assert colours.shape == (count, 3) and len(np.unique(colours, axis=0)) == count


def test_the_domain_figure_draws_both_maps_with_the_loop() -> None:
    grid = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    before = torch.tensor([[int(min(a, b) > 0.3) for a in grid] for b in grid])
    after = torch.tensor([[1 if a >= b else NO_CLASS for a in grid] for b in grid])
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    fig = surface_domain_figure(before, after, square, NAMES, "loop 3 of class one")
    assert len(fig.axes) == 2
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["before relaxation (flat fill)", "after relaxation"]
    for ax, classes in zip(fig.axes, (before, after), strict=True):
        assert np.allclose(ax.images[0].get_extent(), (-0.1, 1.1, -0.1, 1.1))
        drawn = np.asarray(ax.images[0].get_array())
        assert np.allclose(drawn[classes.numpy() == 1], to_rgb("C1"))
        assert np.allclose(ax.lines[0].get_xydata(), [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]])
    assert np.allclose(np.asarray(fig.axes[1].images[0].get_array())[5, 0], (1, 1, 1))
    texts = _texts(fig)
    assert {"loop 3 of class one", "zero", "one", "no class"} <= set(texts)
    # A DomainMap places the picture by its own grid.
    wide = DomainMap(
        torch.linspace(0, 2, 6, dtype=torch.float64),
        torch.tensor(grid, dtype=torch.float64),
        before,
        torch.zeros(6, 6, dtype=torch.float64),
        torch.zeros(6, 6, dtype=torch.long),
    )
    fig = surface_domain_figure(wide, wide, square)
    assert np.allclose(fig.axes[0].images[0].get_extent(), (-0.2, 2.2, -0.1, 1.1))


def test_images_along_a_surface_are_two_rows_with_their_classes() -> None:
    import torch

    from connectivity.reporting.surface_figures import surface_images_figure

    flat, surface = torch.rand(5, 1, 8, 8), torch.rand(5, 3, 8, 8)
    figure = surface_images_figure(
        flat,
        surface,
        torch.tensor([1, 1, 8, 8, 1]),
        torch.tensor([1, 1, 1, 1, 1]),
        [str(k) for k in range(10)],
        "images",
    )
    axes = figure.get_axes()
    assert len(axes) == 10
    assert [ax.get_title() for ax in axes[:5]] == ["1", "1", "8", "8", "1"]
    assert axes[0].get_ylabel() == "flat fill" and axes[5].get_ylabel() == "surface"
    assert axes[5].get_images()[0].get_array().shape == (8, 8, 3)
