"""Figures show what a verdict rests on: real records of a classifier whose margins are known."""

from __future__ import annotations

from dataclasses import asdict

import torch
from matplotlib.text import Text

from connectivity.figures import checked_points, pair_figure, reconstruction_figure
from connectivity.report import gallery_html
from connectivity.verdicts import PathOptions, connect_points

NAMES = ["zero", "one"]


def _records() -> list[dict]:
    # Logits = the point (2 classes), target 0: the margin along a line is z0 - z1, known exactly.
    # Pair 0: (3, 0) -> (1, 0) stays in class 0 (linear). Pair 1: (2, 0) -> (0, 2) leaves it
    # for class 1 from position 1/2 on, and no step is allowed: no path found.
    starts = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
    ends = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    options = PathOptions(num_pivots=3, steps=0, line_points=9)
    records = connect_points(torch.nn.Identity(), starts, ends, torch.tensor([0, 0]), options)
    out = []
    for i, record in enumerate(records):
        pair = {"id": i, "start_index": 10 + i, "end_index": 20 + i}
        out.append({"space": "input", "pair": pair, **asdict(record)})
    return out


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
    # bars in a space without images, placeholders where the images would be
    assert texts.count("no\nimage") == 2 * 5  # the line and the band, 5 points each
    assert "3 ✗ one" in texts and "4 ✗ one" in texts and "2 ✗ tie" in texts
    # the line that decides: the margin's zero, not p = 1/2
    assert "decision boundary (margin 0)" in texts
    assert not any("1/2" in t for t in texts)


def test_the_figure_of_a_linear_pair_has_one_strip_and_no_off_target_mark() -> None:
    linear, _ = _records()
    texts = _texts(pair_figure(linear, "t", class_names=NAMES))
    assert "sampled check\n9 pts, 0 off" in texts
    assert not any(t.startswith("→") for t in texts)
    assert texts.count("no\nimage") == 5


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


def test_the_gallery_lists_pairs_without_a_path_first() -> None:
    linear, crossing = _records()
    manifest = {"name": "demo", "class_names": NAMES, "pairs": [0, 1]}
    page = gallery_html({"input": [linear, crossing]}, manifest)
    assert page.index("pair_0001.png") < page.index("pair_0000.png")
    assert "No path found: 1" in page and "Linear path exists: 1" in page
    assert "sampled check" in page


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
