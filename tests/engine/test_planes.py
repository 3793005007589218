"""The plane through three points and the surface's domain map, against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from connectivity.engine.planes import (
    NO_CLASS,
    class_map,
    grid_axes,
    plane_basis,
    plane_grid,
    surface_domain_map,
)
from connectivity.errors import InputError, OptionsError

# x1 - x0 = (3, 4, 0, 0), x2 - x0 = (3, 4, 0, 12): e1 = (0.6, 0.8, 0, 0), e2 = (0, 0, 0, 1), and
# the corners are (0, 0), (5, 0) and (5, 12) (sides 5, 12 and 13).
X0 = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
X1 = X0 + torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=torch.float64)
X2 = X0 + torch.tensor([3.0, 4.0, 0.0, 12.0], dtype=torch.float64)
# With resolution 8 and padding 0.2: u from -1 to 6 in steps of 1, v from -2.4 to 14.4 in
# steps of 2.4.
U = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
V = [-2.4, 0.0, 2.4, 4.8, 7.2, 9.6, 12.0, 14.4]


def linear_tail(weight: list[float], bias: float) -> nn.Module:
    """Logits ``(0, weight . x + bias)``: class 1 where ``weight . x > -bias``."""
    tail = nn.Linear(len(weight), 2).double()
    with torch.no_grad():
        tail.weight.copy_(torch.tensor([[0.0] * len(weight), weight]))
        tail.bias.copy_(torch.tensor([0.0, bias]))
    return tail.requires_grad_(False)


def test_the_plane_keeps_the_distances_between_the_points() -> None:
    plane = plane_basis(X0, X1, X2)
    expected = torch.tensor([[0.0, 0.0], [5.0, 0.0], [5.0, 12.0]], dtype=torch.float64)
    assert torch.allclose(plane.corners, expected, atol=1e-12)
    assert torch.allclose(plane.basis[0], torch.tensor([0.6, 0.8, 0, 0], dtype=torch.float64))
    assert torch.allclose(plane.basis[1], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))
    assert torch.allclose(plane.points(plane.corners), torch.stack([X0, X1, X2]), atol=1e-12)
    # Image-shaped points at random: the corners' distances are the points' distances.
    x = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    plane = plane_basis(*x)
    flat = x.flatten(1).double()
    assert torch.allclose(torch.cdist(plane.corners, plane.corners), torch.cdist(flat, flat))
    assert plane.basis.shape == (2, 3, 5, 5)
    gram = plane.basis.flatten(1) @ plane.basis.flatten(1).T
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert plane.corners[2, 1] > 0


def test_the_grid_spans_the_points_and_their_padding() -> None:
    points, u, v, _ = plane_grid(X0, X1, X2, resolution=8, padding=0.2)
    assert torch.allclose(u, torch.tensor(U, dtype=torch.float64))
    assert torch.allclose(v, torch.tensor(V, dtype=torch.float64))
    assert points.shape == (64, 4) and points.dtype == torch.float64
    # Pixel (i, j) is u[j], v[i]: the inputs are pixels (1, 1), (1, 6) and (6, 6).
    for (i, j), x in (((1, 1), X0), ((1, 6), X1), ((6, 6), X2)):
        assert torch.allclose(points[i * 8 + j], x, atol=1e-12)


@pytest.mark.parametrize(
    "x2",
    [X0 + 2 * (X1 - X0), X0 - 0.5 * (X1 - X0), X0.clone()],
    ids=["beyond", "behind", "coincide"],
)
def test_collinear_points_are_refused_in_one_line(x2: torch.Tensor) -> None:
    with pytest.raises(InputError, match="one line") as error:
        plane_basis(X0, X1, x2)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="one line"):
        plane_basis(X0, X0, X2)


def test_a_thin_triangle_still_spans_a_plane() -> None:
    plane = plane_basis(X0, X1, X0 + 2 * (X1 - X0) + torch.tensor([0, 0, 1e-3, 0]))
    assert plane.corners[2, 1] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("resolution", "padding"), [(1, 0.2), (2.5, 0.2), (True, 0.2), (8, -0.1), (8, float("nan"))]
)
def test_bad_grids_are_refused(resolution: object, padding: object) -> None:
    with pytest.raises(OptionsError):
        plane_grid(X0, X1, X2, resolution, padding)  # type: ignore[arg-type]
    with pytest.raises(OptionsError):
        grid_axes(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), resolution, padding)  # type: ignore[arg-type]


def test_a_linear_boundary_splits_the_grid_where_the_hand_count_says() -> None:
    points, *_ = plane_grid(X0, X1, X2, resolution=8, padding=0.2)
    # Along e1: class 1 where 2u - 5 > 0, the columns u = 3..6.
    classes, margins = class_map(linear_tail([1.2, 1.6, 0.0, 0.0], -5.0 - 2.8), points)
    classes, margins = classes.view(8, 8), margins.view(8, 8)
    assert (classes == torch.tensor([u > 2.5 for u in U]).long()).all()
    assert torch.allclose(
        margins[3], torch.tensor([abs(2 * u - 5) for u in U], dtype=torch.float64)
    )
    # Along e1 + e2: class 1 where u + v > 7.5: 0, 0, 1, 4, 6, 8, 8, 8 points per row.
    tail = linear_tail([0.6, 0.8, 0.0, 1.0], -7.5 - 2.4)
    classes, margins = class_map(tail, points, chunk_size=5)
    assert classes.view(8, 8).sum(dim=1).tolist() == [0, 0, 1, 4, 6, 8, 8, 8]
    assert classes.view(8, 8)[2].tolist() == [0] * 7 + [1]
    # The target's margin is signed: u + v - 7.5 for class 1, its opposite for class 0.
    _, to_one = class_map(tail, points, targets=1)
    _, to_zero = class_map(tail, points, targets=torch.zeros(64, dtype=torch.long))
    expected = torch.tensor([u + v - 7.5 for v in V for u in U], dtype=torch.float64)
    assert torch.allclose(to_one, expected) and torch.allclose(to_zero, -expected)
    assert torch.allclose(margins, expected.abs())


def test_non_finite_logits_have_no_class() -> None:
    points = torch.tensor([[1.0], [float("inf")]], dtype=torch.float64)
    classes, margins = class_map(nn.Sequential(linear_tail([1.0], 0.0)), points)
    assert classes.tolist() == [1, NO_CLASS] and margins[1] == float("-inf")


# The unit square in uv as two triangles, bent in space: vertex 2 is lifted to z = 1, so on
# triangle (0, 1, 2) (a >= b) the point at uv (a, b) has z = b, on (0, 2, 3) z = a: z = min(a, b).
SQUARE_POINTS = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float64)
SQUARE_UV = SQUARE_POINTS[:, :2].clone()
HALVES = torch.tensor([[0, 1, 2], [0, 2, 3]])
GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_the_domain_map_of_a_bent_square_is_the_hand_answer() -> None:
    tail = linear_tail([0.0, 0.0, 1.0], -0.3)  # class 1 where z > 0.3
    domain = surface_domain_map(tail, SQUARE_POINTS, HALVES, SQUARE_UV, resolution=6, target=1)
    assert torch.allclose(domain.u, torch.tensor(GRID, dtype=torch.float64))
    expected = torch.tensor([[min(a, b) > 0.3 for a in GRID] for b in GRID]).long()
    assert (domain.classes == expected).all() and int(expected.sum()) == 16
    margin = torch.tensor([[min(a, b) - 0.3 for a in GRID] for b in GRID], dtype=torch.float64)
    assert torch.allclose(domain.margins, margin)
    below = torch.tensor([[a > b for a in GRID] for b in GRID])
    above = torch.tensor([[a < b for a in GRID] for b in GRID])
    assert (domain.triangle[below] == 0).all() and (domain.triangle[above] == 1).all()


def test_grid_points_outside_the_domain_have_no_class() -> None:
    tail = linear_tail([0.0, 0.0, 1.0], -0.3)
    domain = surface_domain_map(tail, SQUARE_POINTS, HALVES[:1], SQUARE_UV, resolution=6)
    outside = torch.tensor([[a < b for a in GRID] for b in GRID])
    assert (domain.classes[outside] == NO_CLASS).all() and int(outside.sum()) == 15
    assert (domain.classes[~outside] >= 0).all()
    assert domain.margins[outside].isnan().all()


def test_meshes_that_do_not_fit_are_refused() -> None:
    tail = linear_tail([0.0, 0.0, 1.0], 0.0)
    with pytest.raises(InputError, match="outside"):
        surface_domain_map(tail, SQUARE_POINTS, torch.tensor([[0, 1, 4]]), SQUARE_UV)
    with pytest.raises(InputError, match="uv"):
        surface_domain_map(tail, SQUARE_POINTS, HALVES, SQUARE_UV[:3])
