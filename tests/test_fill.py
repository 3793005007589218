"""``fill_loop``: the loop question from Python, on small models with known answers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from connectivity import SurfaceRecord, fill_loop
from connectivity.engine.exact import NotPiecewiseLinearError
from connectivity.engine.triangles import barycentric_grid, logit_margins, triangle_points
from connectivity.errors import InputError, OptionsError


class Diamond(nn.Module):
    """Class 0 inside the L1 ball of radius 2 (logit ``2 - |x|_1``), class 1 outside (logit
    0): a piecewise-linear classifier whose margin over a triangle is known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.scale.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = 2 - self.scale(x).abs().sum(dim=1, keepdim=True)
        return torch.cat([inside, torch.zeros_like(inside)], dim=1)


def dense_margins(tail: nn.Module, record: SurfaceRecord, per_edge: int = 20) -> torch.Tensor:
    """The margins at a barycentric grid of every triangle of a record's surface."""
    corners = [record.points[record.triangles[:, i]] for i in range(3)]
    points = triangle_points(*corners, barycentric_grid(per_edge))
    targets = torch.full((points.shape[0] * points.shape[1],), record.target)
    with torch.no_grad():
        return logit_margins(tail(points.flatten(0, 1)), targets)


def test_a_triangle_inside_the_diamond_is_planar_and_proved_with_the_hand_margin() -> None:
    inputs = torch.tensor([[0.5, 0.0], [-0.5, 0.5], [0.0, -1.0]], dtype=torch.float64)
    model = Diamond().double()
    record = fill_loop(model, "input", inputs, 0, certify="exact", pixel_range=None)
    assert (record.verdict, record.certificate) == ("planar", "exact")
    # The margin 2 - |x|_1 is concave: its minimum over the triangle is at a corner, (0, -1).
    assert record.min_margin == pytest.approx(1.0, abs=1e-9)
    assert [p.verdict for p in record.pairs] == ["linear"] * 3
    # Every input is a vertex of the surface, and the surface keeps the class densely.
    for x in inputs:
        assert bool((record.points == x).all(dim=1).any())
    assert float(dense_margins(model, record).min()) >= 1.0 - 1e-9


def test_a_loop_round_the_diamonds_outside_has_no_loop_and_says_so() -> None:
    model = Diamond().double()
    inputs = torch.tensor([[0.5, 0.0], [3.0, 3.0], [0.0, -1.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="not classified as class 0"):
        record = fill_loop(model, "input", inputs, 0, pixel_range=None, steps=20)
    assert record.verdict == "no-loop"
    assert record.triangles.shape == (0, 3) and math.isnan(record.min_margin)
    assert [p.verdict for p in record.pairs].count("none") == 2
    assert "side(s) 0, 1" in record.note


def test_fill_loop_never_changes_the_model_or_the_inputs() -> None:
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = torch.tensor([[0.1, 0.2], [0.3, 0.1], [0.2, 0.4]])
    kept = inputs.clone()
    with torch.no_grad():
        target = int(model.eval()(inputs).argmax(dim=1)[0])
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inputs outside the target class are warned about
        fill_loop(model, "input", inputs, target, pixel_range=None, steps=5)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(inputs, kept)


@pytest.mark.parametrize(
    ("inputs", "options", "error", "words"),
    [
        (torch.rand(2, 2), {}, InputError, "at least 3"),
        (torch.rand(3, 2), {"rings": 0}, OptionsError, "rings"),
        (torch.rand(3, 2), {"max_vertices": 0}, OptionsError, "max_vertices"),
        (torch.rand(3, 2), {"samples_per_edge": 0}, OptionsError, "samples_per_edge"),
        (torch.rand(3, 2), {"optimizer": "newton"}, OptionsError, "optimizer"),
    ],
)
def test_bad_loops_and_options_fail_in_one_line_before_any_work(
    inputs: torch.Tensor, options: dict, error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        fill_loop(Diamond(), "input", inputs, 0, pixel_range=None, **options)


def test_exact_on_a_smooth_tail_is_refused_before_any_work() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(NotPiecewiseLinearError, match="certify='exact' is impossible"):
        fill_loop(model, "input", torch.rand(3, 2), 0, certify="exact", pixel_range=None)


def test_float_images_out_of_range_are_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(InputError, match="pixel_range"):
        fill_loop(model, "input", torch.rand(3, 3, 2, 2) * 255, 0)


@pytest.mark.parametrize(
    "inputs",
    [[[0.5, 0.0]] * 3, [[0.1, 0.0], [0.2, 0.0], [0.3, 0.0]]],
    ids=["coinciding", "collinear"],
)
def test_a_loop_that_encloses_no_area_is_warned_about(inputs: list) -> None:
    with pytest.warns(UserWarning, match="encloses no area"):
        record = fill_loop(
            Diamond().double(),
            "input",
            torch.tensor(inputs, dtype=torch.float64),
            0,
            pixel_range=None,
        )
    assert record.verdict == "planar"  # true of the segment or point it fills


class Annulus(nn.Module):
    """Class 0 where ``| |x| - 1.2 | < 0.5`` (logit ``0.25 - (|x| - 1.2)^2``), class 1 else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = 0.25 - (x.norm(dim=1, keepdim=True) - 1.2) ** 2
        return torch.cat([inside, torch.zeros_like(inside)], dim=1)


def test_a_membrane_that_cannot_move_says_why() -> None:
    # Six points round the annulus' hole, their sides straight in the class: the flat fill
    # crosses the hole, and in a plane the membrane has no normal direction to move in; nor
    # does max_vertices leave room to refine.
    angles = torch.arange(6, dtype=torch.float64)
    inputs = 1.2 * torch.stack([angles.cos(), angles.sin()], dim=1)
    record = fill_loop(Annulus(), "input", inputs, 0, pixel_range=None, steps=5, max_vertices=8)
    assert record.verdict == "none"
    assert [p.verdict for p in record.pairs] == ["linear"] * 6
    assert "no normal direction" in record.note and "max_vertices (8)" in record.note
