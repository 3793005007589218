"""Figures show what a verdict rests on: real records of a classifier whose margins are known."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.reporting.figures import (
    FIGURE_DPI,
    checked_points,
    competing_class,
    pair_figure,
    reconstruction_figure,
)
from tests.reporting.folders import NAMES
from tests.reporting.folders import line_records as _records


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_checked_points_are_the_dense_check_with_its_margins() -> None:
    linear, crossing = _records()
    position, margin, predicted = checked_points(crossing, "line")
    assert len(position) == 9
    assert torch.allclose(torch.from_numpy(margin), 2 - 4 * torch.from_numpy(position))
    assert (predicted == (position > 0.5)).all()
    # A record written before the checked points were saved falls back to its pivots.
    old = {k: v for k, v in linear.items() if "check" not in k}
    position, margin, _ = checked_points(old, "line")
    assert len(position) == 5
    assert torch.allclose(torch.from_numpy(margin).float(), 3 - 2 * torch.linspace(0, 1, 5))


def test_the_figure_marks_off_target_points_and_names_their_class() -> None:
    _, crossing = _records()
    fig = pair_figure(crossing, "t", class_names=NAMES)
    texts = _texts(fig)
    # the tie at 4/8 and points 5/8 to 8/8 of the 9 checked ones are off target
    assert "sampled check\n9 pts, 5 off" in texts
    assert "→ one" in texts
    # bars in a space without images: no image (nor placeholder), one line that says why
    assert not [im for ax in fig.axes for im in ax.images]
    assert any("no decoder for this space: its points are not images" in t for t in texts)
    assert "3 ✗ one" in texts and "4 ✗ one" in texts and "2 ✗ tie" in texts
    # the line that decides: the margin's zero, not p = 1/2
    assert "decision boundary (margin 0)" in texts
    assert not any("1/2" in t for t in texts)


def test_the_figure_of_a_linear_pair_has_one_strip_and_no_off_target_mark() -> None:
    linear, _ = _records()
    texts = _texts(pair_figure(linear, "t", class_names=NAMES))
    assert "sampled check\n9 pts, 0 off" in texts
    assert not any(t.startswith("→") for t in texts)
    assert sum(t.startswith("sampled check") for t in texts) == 1  # the line's track alone


def test_input_space_figures_show_path_minus_line_with_its_scale() -> None:
    _, crossing = _records()
    record = dict(crossing)
    images = torch.zeros(5, 1, 2, 2)
    moved = images.clone()
    moved[2, 0, 0, 0] = 0.02  # one pixel of the middle point moved by 0.02
    record["distance_l2"] = (moved - images).flatten(1).norm(dim=1)
    record["distance_linf"] = (moved - images).flatten(1).abs().amax(dim=1)
    texts = _texts(pair_figure(record, "t", images, moved, class_names=NAMES, difference=True))
    assert "path - line\n±0.02" in texts
    assert "L2 0.02\nL∞ 0.02" in texts and "L2 0\nL∞ 0" in texts


def test_reconstructions_are_at_least_96_pixels_per_image_with_labelled_rows() -> None:
    images = torch.rand(4, 3, 8, 8)
    fig = reconstruction_figure(images, images, "epoch 3, validation PSNR 21.0 dB")
    width, height = fig.get_size_inches() * fig.dpi
    assert width >= 4 * 96 and height >= 2 * 96
    assert {"original", "decoded", "epoch 3, validation PSNR 21.0 dB"} <= set(_texts(fig))


def test_an_exact_check_draws_its_off_target_stretch() -> None:
    # Margin 2 - 5 s along (2, 0) -> (0, 3): exactly off target on (0.4, 1], no step allowed.
    options = PathOptions(num_pivots=3, steps=0, line_points=9, certify="exact")
    (record,) = connect_points(
        torch.nn.Identity(),
        torch.tensor([[2.0, 0.0]]),
        torch.tensor([[0.0, 3.0]]),
        torch.tensor([0]),
        options,
    )
    assert record.certificate == "exact"
    assert torch.allclose(record.line_off_target_intervals, torch.tensor([[0.4, 1.0]]).double())
    saved = {
        "space": "input",
        "pair": {"id": 0, "start_index": 0, "end_index": 1},
        **asdict(record),
    }
    texts = _texts(pair_figure(saved, "t", class_names=NAMES))
    assert any(t.startswith("exact check\n") and t.endswith(" 1 off") for t in texts)


def _smallest_text_pixels(fig) -> float:
    FigureCanvasAgg(fig).draw()  # tick labels get their text when drawn
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    return min(sizes) * FIGURE_DPI / 72


def test_every_text_of_a_figure_is_at_least_9_pixels_tall_once_saved() -> None:
    linear, crossing = _records()
    images = torch.rand(5, 1, 4, 4)
    long_names = ["airplane", "automobile"]  # named by index under the bars, keyed in the title
    fig = pair_figure(crossing, "t", images, images + 0.01, class_names=long_names, difference=True)
    assert _smallest_text_pixels(fig) >= 9
    assert any("bars: 0 airplane, 1 automobile" in t for t in _texts(fig))
    ends = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    fig = pair_figure(linear, "t", images, images, images_note="decoded", end_images=ends)
    assert _smallest_text_pixels(fig) >= 9


def _shown(fig) -> list[tuple[object, float, np.ndarray]]:
    """``(axes, centre x, RGB array)`` of every image drawn in ``fig``."""
    return [
        (ax, (im.get_extent()[0] + im.get_extent()[1]) / 2, np.asarray(im.get_array()))
        for ax in fig.axes
        for im in ax.images
    ]


def test_a_latent_space_shows_the_pair_inputs_at_the_ends_and_beside_their_decodings() -> None:
    _, crossing = _records()  # 5 points, so the columns are 1/4 apart
    record = {**crossing, "space": "layer"}
    ends = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    ends[0, 0, 0, 0], ends[1, 0, 3, 3] = 255, 51  # two inputs told apart by one pixel
    start, end = np.zeros((4, 4, 3)), np.zeros((4, 4, 3))
    start[0, 0], end[3, 3] = 1.0, 0.2

    # No decoder: the two inputs are the only images, outside the columns of the points.
    shown = _shown(pair_figure(record, "t", class_names=NAMES, end_images=ends))
    assert [round(x, 6) for _, x, _ in shown] == [-0.25, 1.25]
    assert np.allclose(shown[0][2], start) and np.allclose(shown[1][2], end)

    # Decoded: each input beside its end's decoding, in the line's row of images.
    decoded = torch.full((5, 1, 4, 4), 0.5)
    fig = pair_figure(record, "t", decoded, decoded, class_names=NAMES, end_images=ends)
    shown = _shown(fig)
    inputs = [s for s in shown if np.allclose(s[2], start) or np.allclose(s[2], end)]
    assert [round(x, 6) for _, x, _ in inputs] == [-0.25, 1.25]
    row = inputs[0][0]
    decodings = sorted(round(x, 6) for ax, x, a in shown if ax is row and np.allclose(a, 0.5))
    assert decodings == [0.0, 0.25, 0.5, 0.75, 1.0]  # the line's points; the ends next to inputs
    assert inputs[1][0] is row
    assert len(shown) == 2 + 5 + 5  # the path's row has its points alone


def test_the_competing_class_is_the_best_other_at_the_lowest_checked_point() -> None:
    # Logits = the point (3 classes), target 0. Pair 0: (4, 0, 3) -> (4, 1, 0), margin
    # 4 - max(t, 3 - 3t): lowest (1) at the start, against class 2. Pair 1: (4, 0, 1) ->
    # (4, 3, 0): lowest (1) at the end, against class 1.
    names = ["zero", "one", "two"]
    starts = torch.tensor([[4.0, 0.0, 3.0], [4.0, 0.0, 1.0]])
    ends = torch.tensor([[4.0, 1.0, 0.0], [4.0, 3.0, 0.0]])
    options = PathOptions(num_pivots=3, steps=0, line_points=9)
    records = connect_points(torch.nn.Identity(), starts, ends, torch.tensor([0, 0]), options)
    first, second = ({"pair": {"id": i}, **asdict(r)} for i, r in enumerate(records))
    assert competing_class(first, "line") == (2, None)
    assert competing_class(second, "line") == (1, None)
    assert "straight line (min 1 against 'two')" in _texts(
        pair_figure(first, "t", class_names=names)
    )
    assert "straight line (min 1 against 'one')" in _texts(
        pair_figure(second, "t", class_names=names)
    )

    # Off the target at the lowest point (between pivots): the class predicted there, whatever
    # the pivots say.
    hand = {
        "target": 0,
        "line_check_position": torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]),
        "line_check_margin": torch.tensor([2.0, -0.5, 0.3, 0.7, 2.0]),
        "line_check_predicted": torch.tensor([0, 2, 0, 0, 0]),
        # pivots at 0, 0.5 and 1
        "line_probabilities": torch.tensor([[0.8, 0.15, 0.05], [0.5, 0.4, 0.1], [0.8, 0.05, 0.15]]),
    }
    assert competing_class(hand, "line") == (2, None)
    # On the target at its lowest point, between pivots: the record does not say which class
    # was second there, so the best other at the pivot of lowest margin is named, with it.
    hand["line_check_margin"] = torch.tensor([2.0, 0.3, 0.6, 0.7, 2.0])
    hand["line_check_predicted"] = torch.zeros(5, dtype=torch.long)
    assert competing_class(hand, "line") == (1, 1)
    # A tie of the others at that pivot: no class is named.
    hand["line_probabilities"][1] = torch.tensor([0.5, 0.25, 0.25])
    assert competing_class(hand, "line") is None
