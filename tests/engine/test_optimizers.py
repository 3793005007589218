"""FIRE and L-BFGS against known answers on quadratic bowls, one system per row."""

from __future__ import annotations

import pytest
import torch

from connectivity.engine.optimizers import FIRE, LBFGS, make_optimizer

# Two systems (rows), each a bowl f(x) = sum_i c_i x_i^2 / 2 with its own curvatures c.
CURVATURE = torch.tensor([[1.0, 4.0, 0.5], [2.0, 2.0, 10.0]], dtype=torch.float64)
START = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.3, 0.2]], dtype=torch.float64)


def _descend(optimizer_type: type, steps: int, lr: float, start: torch.Tensor = START) -> list:
    """The positions after each step on the bowls (the gradient set by hand, as a band does)."""
    x = torch.nn.Parameter(start.clone())
    optimizer = optimizer_type([x], lr=lr)
    seen = []
    for _ in range(steps):
        x.grad = CURVATURE[: start.shape[0], : start.shape[1]] * x.detach()
        optimizer.step()
        seen.append(x.detach().clone())
    return seen


def test_fire_takes_an_euler_step_first_and_reaches_the_minimum() -> None:
    dt = 0.1
    first, *_, last = _descend(FIRE, 400, dt)
    # From rest: v = dt * F, then x = x + dt * v.
    assert torch.allclose(first, START - dt**2 * CURVATURE * START)
    assert last.abs().max() < 1e-6


def test_lbfgs_takes_a_gradient_step_first_and_then_newtons_step_in_one_dimension() -> None:
    lr = 0.1
    start = torch.tensor([[3.0]], dtype=torch.float64)
    first, second = _descend(LBFGS, 2, lr, start)
    assert torch.allclose(first, start - lr * CURVATURE[0, 0] * start)
    # One curvature pair of a 1-D quadratic is its exact curvature: the minimum in one step.
    assert torch.allclose(second, torch.zeros(1, 1, dtype=torch.float64), atol=1e-12)


def test_lbfgs_reaches_the_minimum_of_a_bowl() -> None:
    *_, last = _descend(LBFGS, 60, 0.1)
    assert last.abs().max() < 1e-8


@pytest.mark.parametrize("optimizer_type", [FIRE, LBFGS])
def test_rows_never_mix(optimizer_type: type) -> None:
    both = _descend(optimizer_type, 20, 0.1)
    alone = _descend(optimizer_type, 20, 0.1, START[:1])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(both, alone, strict=True))


@pytest.mark.parametrize("optimizer_type", [FIRE, LBFGS])
def test_a_row_with_zero_gradient_stays_put(optimizer_type: type) -> None:
    x = torch.nn.Parameter(START.clone())
    optimizer = optimizer_type([x], lr=0.1)
    for _ in range(3):
        x.grad = CURVATURE * x.detach()
        x.grad[1] = 0.0  # a frozen pair, as the band hands it over
        optimizer.step()
    assert torch.equal(x.detach()[1], START[1])
    assert not torch.equal(x.detach()[0], START[0])


def test_make_optimizer_knows_the_four_names_only() -> None:
    x = torch.nn.Parameter(torch.zeros(2, 3))
    made = {name: type(make_optimizer(name, [x], 0.1)) for name in ("adam", "sgd", "fire", "lbfgs")}
    assert made == {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "fire": FIRE, "lbfgs": LBFGS}
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("rmsprop", [x], 0.1)
