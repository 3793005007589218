"""Tests for connectivity.engine.band on hand-computed bands and the Mueller-Brown surface."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor

from connectivity.engine.band import (
    ElasticBand,
    neb_gradient,
    perpendicular_force_norm,
    respace_equal_arc,
    straight_line,
    symmetry_nudge,
    tangents,
)
from connectivity.engine.optimizers import make_optimizer
from connectivity.engine.search import find_paths
from tests.surfaces import (
    MB_MINIMA,
    MB_SADDLE_ENERGIES,
    MB_SADDLES,
    StiffEmbedding,
    mueller_brown,
)

DTYPE = torch.float64

MINIMA = torch.tensor([[-0.5582, 1.4417], [-0.0500, 0.4667], [0.6235, 0.0280]], dtype=DTYPE)
STARTS = MINIMA[:2]
ENDS = MINIMA[1:]
SADDLES = torch.tensor([[-0.8220, 0.6243], [0.2125, 0.2930]], dtype=DTYPE)
SADDLE_ENERGIES = torch.tensor([-40.665, -72.249], dtype=DTYPE)

# Settings that converge both Mueller-Brown bands to tol=1e-3 in ~300 steps: Adam's roughly
# scale-free steps suit the surface's energies of order 100, and a stiff spring keeps the
# pivots spread along the strongly curved first path.
MB_OPTIONS = dict(num_pivots=8, steps=600, optimizer="adam", lr=1e-2, spring_constant=100.0)


@pytest.fixture(autouse=True)
def _one_thread():
    # Hundreds of steps on a few small points: with several threads on a busy machine every op
    # waits for a descheduled thread, which costs far more than the work itself.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def highest_pivot(result) -> tuple[Tensor, Tensor, Tensor]:
    """Position, energy and path index of each pair's highest pivot."""
    index = result.energy[:, 1:-1].argmax(dim=1) + 1
    rows = torch.arange(result.path.shape[0])
    return result.path[rows, index], result.energy[rows, index], index


# --- pure functions on a hand-computed band -------------------------------------------------

# One polyline, two energy profiles (two "pairs"); pivots are points 1..3.
HAND_PATH = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [3.0, 1.0], [4.0, 0.0]], dtype=DTYPE)
HAND_ENERGY = torch.tensor(
    [
        [0.0, 1.0, 3.0, 2.0, 4.0],  # rising, maximum (next > prev), minimum (next > prev)
        [4.0, 2.0, 3.0, 1.0, 0.0],  # minimum (next < prev), maximum (next < prev), falling
    ],
    dtype=DTYPE,
)


def _unit(*v: float) -> Tensor:
    t = torch.tensor(v, dtype=DTYPE)
    return t / t.norm()


# Worked out from Henkelman & Jonsson (2000), eq. 8-11; tau+ = R[i+1] - R[i], tau- = R[i] - R[i-1].
HAND_TANGENTS = torch.stack(
    [
        torch.stack(
            [
                _unit(1, 1),  # V rises: tau+ = (1, 1)
                _unit(3, 1),  # max, dVmax=2, dVmin=1, V3 > V1: 2 tau+ + tau- = 2(1,0) + (1,1)
                _unit(3, -2),  # min, dVmax=2, dVmin=1, V4 > V2: 2 tau+ + tau- = 2(1,-1) + (1,0)
            ]
        ),
        torch.stack(
            [
                _unit(3, 1),  # min, dVmax=2, dVmin=1, V2 < V0: tau+ + 2 tau- = (1,1) + 2(1,0)
                _unit(3, 2),  # max, dVmax=2, dVmin=1, V3 < V1: tau+ + 2 tau- = (1,0) + 2(1,1)
                _unit(1, 0),  # V falls: tau- = (1, 0)
            ]
        ),
    ]
)


def _hand_band() -> tuple[Tensor, Tensor, Tensor]:
    path = HAND_PATH.expand(2, -1, -1).clone()
    grad = torch.tensor([1.0, 2.0], dtype=DTYPE).expand(2, 3, 2).clone()
    return path, HAND_ENERGY.clone(), grad


def test_improved_tangent_matches_hand_values() -> None:
    path, energy, _ = _hand_band()
    assert torch.allclose(tangents(path, energy), HAND_TANGENTS, atol=1e-12)


def test_tangent_falls_back_to_central_difference_on_flat_energy() -> None:
    path = HAND_PATH.unsqueeze(0)
    flat = torch.zeros(1, 5, dtype=DTYPE)
    expected = torch.stack([_unit(2, 1), _unit(2, 1), _unit(2, -1)])
    assert torch.allclose(tangents(path, flat)[0], expected, atol=1e-12)


def test_neb_gradient_projection_and_springs_match_hand_values() -> None:
    path, energy, grad = _hand_band()
    k = 2.0
    root2 = math.sqrt(2.0)
    # |R[i+1] - R[i]| - |R[i] - R[i-1]| at pivots 1..3: sqrt2 - 1, 1 - sqrt2, sqrt2 - 1.
    stretch = torch.tensor([root2 - 1, 1 - root2, root2 - 1], dtype=DTYPE)
    g = torch.tensor([1.0, 2.0], dtype=DTYPE)
    expected = torch.empty(2, 3, 2, dtype=DTYPE)
    perp_norm = torch.empty(2, 3, dtype=DTYPE)
    for pair in range(2):
        for i in range(3):
            tau = HAND_TANGENTS[pair, i]
            perp = g - (g @ tau) * tau
            expected[pair, i] = perp - k * stretch[i] * tau
            perp_norm[pair, i] = perp.norm()

    got = neb_gradient(path, energy, grad, spring_constant=k, method="neb")
    assert torch.allclose(got, expected, atol=1e-12)
    # The spring acts only along the band, the true force only across it.
    assert torch.allclose((got * HAND_TANGENTS).sum(-1), -k * stretch.expand(2, 3), atol=1e-12)

    string = neb_gradient(path, energy, grad, spring_constant=k, method="string")
    assert torch.allclose(string.norm(dim=-1), perp_norm, atol=1e-12)
    assert torch.allclose((string * HAND_TANGENTS).sum(-1), torch.zeros(2, 3, dtype=DTYPE))

    assert torch.allclose(perpendicular_force_norm(path, energy, grad), perp_norm, atol=1e-12)


def test_climbing_pivot_reverses_the_parallel_gradient() -> None:
    path, energy, grad = _hand_band()
    g = torch.tensor([1.0, 2.0], dtype=DTYPE)
    climbing_index = torch.tensor([1, -1])  # pair 0 climbs at its middle pivot, pair 1 not at all
    got = neb_gradient(path, energy, grad, spring_constant=2.0, climbing_index=climbing_index)
    plain = neb_gradient(path, energy, grad, spring_constant=2.0)
    tau = HAND_TANGENTS[0, 1]
    assert torch.allclose(got[0, 1], g - 2 * (g @ tau) * tau, atol=1e-12)
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 1] = False
    assert torch.equal(got[mask], plain[mask])
    # Convergence measure of a climbing pivot is the full force, |g|.
    norm = perpendicular_force_norm(path, energy, grad, climbing_index=climbing_index)
    assert norm[0, 1].item() == pytest.approx(g.norm().item())


def test_straight_line_is_even_and_keeps_ends_exact() -> None:
    starts = torch.randn(3, 2, 4, 4, dtype=DTYPE)
    ends = torch.randn(3, 2, 4, 4, dtype=DTYPE)
    path = straight_line(starts, ends, num_pivots=4)
    assert path.shape == (3, 6, 2, 4, 4)
    assert torch.equal(path[:, 0], starts)
    assert torch.equal(path[:, -1], ends)
    steps = (path[:, 1:] - path[:, :-1]).flatten(2)
    assert torch.allclose(steps, ((ends - starts) / 5).flatten(1).unsqueeze(1).expand_as(steps))


def test_respace_equal_arc_hand_example() -> None:
    path = torch.tensor(
        [[[0.0, 0.0], [0.5, 0.0], [2.0, 0.0], [2.0, 0.2], [2.0, 2.0]]], dtype=DTYPE
    )  # total length 4
    expected = torch.tensor(
        [[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.0, 1.0], [2.0, 2.0]]], dtype=DTYPE
    )
    assert torch.allclose(respace_equal_arc(path), expected, atol=1e-12)
    # Coincident points (zero-length path) stay put instead of producing NaNs.
    still = torch.ones(1, 4, 2, dtype=DTYPE)
    assert torch.equal(respace_equal_arc(still), still)


def test_respace_keeps_the_kept_points_and_spreads_the_others_between_them() -> None:
    path = torch.tensor(
        [
            [[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [4.0, 0.0]],
            [[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [3.0, 0.0]],
        ],
        dtype=DTYPE,
    )
    keep = torch.tensor([[False, False, True, False], [False, False, False, False]])
    out = respace_equal_arc(path, keep)
    # row 0: point 1 halfway along the arc to the kept point 2 (at arc 1.5), which stays
    assert out[0].tolist() == [[0.0, 0.0], [0.75, 0.0], [1.5, 0.0], [4.0, 0.0]]
    # row 1 keeps nothing: plain equal arc (total 3), the same as without ``keep``
    assert out[1].tolist() == [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]
    assert torch.equal(out[1], respace_equal_arc(path[1:])[0])


def test_symmetry_nudge_is_orthogonal_small_and_depends_on_the_ends_only() -> None:
    start, end = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[4.0, 6.0], [0.0, 1.0]])
    offset = symmetry_nudge(start, end, 1e-3, seed=7)
    assert offset.shape == start.shape
    chord = (end - start).reshape(-1)
    assert abs(float(offset.reshape(-1) @ chord)) < 1e-9
    assert float(offset.norm()) == pytest.approx(1e-3 * float(chord.norm()), rel=1e-6)
    assert torch.equal(offset, symmetry_nudge(start.clone(), end.clone(), 1e-3, seed=7))
    assert not torch.equal(offset, symmetry_nudge(start, end, 1e-3, seed=8))
    # no direction is orthogonal to a line in one dimension, nor to coinciding ends
    assert torch.equal(symmetry_nudge(torch.zeros(1), torch.ones(1), 1e-3), torch.zeros(1))
    assert torch.equal(symmetry_nudge(start, start, 1e-3), torch.zeros_like(start))


# --- Mueller-Brown ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def climbing_result():
    return find_paths(mueller_brown, STARTS, ENDS, climbing=True, **MB_OPTIONS)


def test_climbing_neb_finds_mueller_brown_saddles(climbing_result) -> None:
    result = climbing_result
    assert result.converged.all()
    assert not result.diverged.any() and not result.stopped.any()
    top, top_energy, _ = highest_pivot(result)
    assert (top - SADDLES).norm(dim=1).max() < 1e-2
    assert (top_energy - SADDLE_ENERGIES).abs().max() < 1e-2
    # Ends never move and the energies belong to the returned path.
    assert torch.equal(result.path[:, 0], STARTS)
    assert torch.equal(result.path[:, -1], ENDS)
    recomputed = mueller_brown(result.path.reshape(-1, 2)).reshape(2, -1)
    assert torch.allclose(result.energy, recomputed, rtol=0, atol=1e-10)


def test_plain_neb_highest_pivot_is_within_spacing_of_saddle() -> None:
    result = find_paths(mueller_brown, STARTS, ENDS, climbing=False, **MB_OPTIONS)
    top, _, index = highest_pivot(result)
    rows = torch.arange(2)
    spacing = torch.maximum(
        (result.path[rows, index + 1] - top).norm(dim=1),
        (top - result.path[rows, index - 1]).norm(dim=1),
    )
    assert ((top - SADDLES).norm(dim=1) < spacing).all()


def test_batched_pairs_match_single_pairs(climbing_result) -> None:
    for pair in range(2):
        single = find_paths(
            mueller_brown,
            STARTS[pair : pair + 1],
            ENDS[pair : pair + 1],
            climbing=True,
            **MB_OPTIONS,
        )
        assert torch.allclose(single.path[0], climbing_result.path[pair], atol=1e-9)
        assert torch.allclose(single.energy[0], climbing_result.energy[pair], atol=1e-7)
        assert single.steps[0] == climbing_result.steps[pair]
        assert single.converged[0] == climbing_result.converged[pair]


def test_manual_band_loop_is_bit_identical_to_find_paths() -> None:
    options = dict(num_pivots=6, spring_constant=10.0, climbing=True, climb_after=5, tol=1e-3)
    reference = find_paths(mueller_brown, STARTS, ENDS, steps=40, lr=1e-2, **options)
    band = ElasticBand(STARTS, ENDS, steps=40, **options)
    opt = make_optimizer("adam", [band.pivots], lr=1e-2)
    band.set_end_energies_(mueller_brown(band.end_points()))
    while not band.done:
        x = band.active_points().requires_grad_(True)
        e = mueller_brown(x)
        (g,) = torch.autograd.grad(e.sum(), x)
        if band.project_(g, e).any():
            opt.step()
            band.after_step_()
    mine = band.result()
    for field in ("path", "energy", "steps", "max_force", "converged"):
        assert torch.equal(getattr(mine, field), getattr(reference, field)), field


def test_string_method_keeps_equal_arc_length() -> None:
    result = find_paths(mueller_brown, STARTS, ENDS, num_pivots=8, steps=200, method="string")
    segments = (result.path[:, 1:] - result.path[:, :-1]).norm(dim=-1)
    assert torch.allclose(segments, segments.mean(dim=1, keepdim=True), rtol=1e-4)
    assert (result.max_force < 1.0).all()  # it moved well off the straight line's ~100s


def test_climbing_requires_neb_method() -> None:
    with pytest.raises(ValueError, match="climbing"):
        find_paths(mueller_brown, STARTS, ENDS, method="string", climbing=True)


def test_bounds_are_respected() -> None:
    # x >= -0.7 cuts off the first saddle (x = -0.82); y <= 1.3 leaves the first start
    # (y = 1.44) outside the box, which must still hold for the pivots.
    lo, hi = -0.7, 1.3
    result = find_paths(mueller_brown, STARTS, ENDS, steps=100, bounds=(lo, hi), tol=0.0)
    pivots = result.path[:, 1:-1]
    assert pivots.min() >= lo and pivots.max() <= hi
    assert pivots[0, :, 0].min() == lo  # the band pushes against the box
    string = find_paths(
        mueller_brown, STARTS, ENDS, steps=50, bounds=(lo, hi), method="string", tol=0.0
    )
    assert string.path[:, 1:-1].min() >= lo and string.path[:, 1:-1].max() <= hi


def test_steps_count_and_final_energies_are_of_final_path() -> None:
    calls: list[int] = []

    def energy(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return mueller_brown(x)

    result = find_paths(energy, STARTS, ENDS, num_pivots=5, steps=7, tol=0.0)
    assert result.steps.tolist() == [7, 7]
    assert not result.converged.any() and not result.stopped.any()
    # One call for the ends, then one per evaluated path: after 0, 1, ..., 7 steps.
    assert calls == [4] + [10] * 8
    recomputed = mueller_brown(result.path.reshape(-1, 2)).reshape(2, -1)
    assert torch.allclose(result.energy, recomputed, rtol=0, atol=1e-10)

    none = find_paths(energy, STARTS, ENDS, num_pivots=5, steps=0)
    assert none.steps.tolist() == [0, 0]
    assert torch.equal(none.path, straight_line(STARTS, ENDS, 5))
    assert torch.isfinite(none.max_force).all()


def test_stop_removes_pairs_from_the_batch() -> None:
    calls: list[int] = []

    def energy(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return mueller_brown(x)

    def stop(path: Tensor, energies: Tensor) -> Tensor:
        assert path.shape[1:] == (6, 2) and energies.shape == path.shape[:2]
        return path[:, 0, 0] < -0.3  # only the first pair starts left of x = -0.3

    result = find_paths(energy, STARTS, ENDS, num_pivots=4, steps=5, tol=0.0, stop=stop)
    assert result.stopped.tolist() == [True, False]
    assert result.steps.tolist() == [0, 5]
    assert torch.equal(result.path[0], straight_line(STARTS, ENDS, 4)[0])
    # Ends, both pairs on the straight line, then only the second pair.
    assert calls == [4, 8] + [4] * 5


def test_stop_after_some_steps() -> None:
    seen: list[int] = []

    def stop(path: Tensor, energies: Tensor) -> Tensor:
        seen.append(path.shape[0])
        return torch.full((path.shape[0],), len(seen) == 4)

    result = find_paths(mueller_brown, STARTS, ENDS, steps=50, tol=0.0, stop=stop)
    # The fourth evaluation is of the path after 3 steps.
    assert seen == [2, 2, 2, 2]
    assert result.stopped.all() and result.steps.tolist() == [3, 3]
    recomputed = mueller_brown(result.path.reshape(-1, 2)).reshape(2, -1)
    assert torch.allclose(result.energy, recomputed, rtol=0, atol=1e-10)


def _valley_or_cliff(points: Tensor) -> Tensor:
    """A harmless valley for y <= 5; above, -x^4, which plain SGD rides off to infinity."""
    valley = 0.5 * points[:, 1] ** 2 + 0.05 * points[:, 0] ** 2
    return torch.where(points[:, 1] > 5, -(points[:, 0] ** 4), valley)


def test_blow_up_marks_only_that_pair_diverged() -> None:
    starts = torch.tensor([[-1.0, 0.2], [1.0, 10.0]], dtype=DTYPE)
    ends = torch.tensor([[1.0, -0.2], [1.0, 12.0]], dtype=DTYPE)
    result = find_paths(_valley_or_cliff, starts, ends, optimizer="sgd", lr=0.1, steps=500)
    assert result.diverged.tolist() == [False, True]
    assert result.converged[0] and result.max_force[0] <= 1e-3
    # The diverged pair is frozen at its last path with finite energy, after a few steps.
    assert torch.isfinite(result.path[1]).all() and torch.isfinite(result.energy[1]).all()
    assert 0 < result.steps[1] < 20


def test_nan_energy_marks_only_that_pair_diverged() -> None:
    def energy(x: Tensor) -> Tensor:
        value = mueller_brown(x)
        return torch.where(x[:, 0] > 0.3, torch.full_like(value, math.nan), value)

    # The second pair's pivots near its end (x = 0.62) give NaN on the very first evaluation.
    result = find_paths(energy, STARTS, ENDS, climbing=True, **MB_OPTIONS)
    assert result.diverged.tolist() == [False, True]
    assert result.steps[1] == 0
    assert torch.equal(result.path[1], straight_line(STARTS, ENDS, 8)[1])
    assert result.converged[0]
    top, _, _ = highest_pivot(result)
    assert (top[0] - SADDLES[0]).norm() < 1e-2


def test_image_shaped_points_keep_their_shape() -> None:
    target = torch.linspace(-1, 1, 12, dtype=DTYPE).reshape(3, 2, 2)

    def energy(x: Tensor) -> Tensor:
        assert x.shape[1:] == (3, 2, 2)
        return ((x - target) ** 2).sum(dim=(1, 2, 3)) + x[:, 0].sum(dim=(1, 2)).sin()

    starts = torch.zeros(2, 3, 2, 2, dtype=DTYPE)
    ends = torch.ones(2, 3, 2, 2, dtype=DTYPE)
    ends[1] = -1.0
    result = find_paths(energy, starts, ends, num_pivots=3, steps=1000, lr=1e-2, tol=1e-3)
    assert result.path.shape == (2, 5, 3, 2, 2)
    assert result.energy.shape == (2, 5)
    assert result.converged.all()


# --- band optimizers, blow-ups, back-off ------------------------------------------------------


def test_mueller_brown_reference_points_are_stationary_with_known_index() -> None:
    # The exact answers the optimizers are held to: zero gradient, and one negative Hessian
    # eigenvalue at each saddle (none at the minima).
    for points, negative in ((MB_SADDLES, 1), (MB_MINIMA, 0)):
        for point in points:
            x = point.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(mueller_brown(x[None])[0], x)
            hessian = torch.autograd.functional.hessian(lambda p: mueller_brown(p[None])[0], point)
            assert g.norm() < 1e-9
            assert int((torch.linalg.eigvalsh(hessian) < 0).sum()) == negative
    assert torch.allclose(mueller_brown(MB_SADDLES), MB_SADDLE_ENERGIES, rtol=0, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_band_optimizers_find_both_mueller_brown_saddles_to_1e_4(optimizer: str) -> None:
    result = find_paths(
        mueller_brown,
        STARTS,
        ENDS,
        num_pivots=8,
        steps=2000,
        optimizer=optimizer,
        lr=1e-3,
        spring_constant=100.0,
        climbing=True,
        tol=1e-4,
    )
    assert result.converged.all() and not result.diverged.any()
    top, top_energy, _ = highest_pivot(result)
    assert (top - MB_SADDLES).norm(dim=1).max() < 1e-4
    assert (top_energy - MB_SADDLE_ENERGIES).abs().max() < 1e-4


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_stiff_embedding_climbing_pivot_converges_to_the_saddle(optimizer: str) -> None:
    # Mueller-Brown in 64 dimensions, inside rotated walls of stiffness 10 to 10,000.
    surface = StiffEmbedding(mueller_brown, dim=64, stiffness=(10.0, 1e4))
    assert surface.stiffness.max() / surface.stiffness.min() >= 1000
    minima = surface.lift(MB_MINIMA)
    saddle = surface.lift(MB_SADDLES[:1])[0]
    result = find_paths(
        surface,
        minima[:1],
        minima[1:2],
        num_pivots=8,
        steps=20_000,
        optimizer=optimizer,
        lr=1e-3,
        spring_constant=100.0,
        climbing=True,
        tol=1e-3,
    )
    assert result.converged[0] and result.steps[0] < 20_000
    top, top_energy, _ = highest_pivot(result)
    assert (top[0] - saddle).norm() < 1e-3
    assert (top_energy[0] - MB_SADDLE_ENERGIES[0]).abs() < 1e-3


def _soft_or_stiff(points: Tensor) -> Tensor:
    """A valley ``y^2 / 2`` for x < 4 and a wall 1000 times stiffer beyond: gradient descent at
    lr 0.1 settles in the first and overshoots ever further in the second."""
    stiffness = torch.where(points[:, 0] < 4, 1.0, 1000.0)
    return 0.5 * stiffness * points[:, 1] ** 2 + 0.01 * points[:, 0] ** 2


def test_energy_blow_up_is_divergence_after_back_offs_and_spares_the_other_pairs() -> None:
    seen: list[float] = []

    def energy(x: Tensor) -> Tensor:
        e = _soft_or_stiff(x)
        seen.append(float(e.detach().max()))
        return e

    starts = torch.tensor([[-1.0, 0.2], [6.0, 0.2]], dtype=DTYPE)
    ends = torch.tensor([[1.0, -0.2], [8.0, -0.2]], dtype=DTYPE)
    options = dict(num_pivots=4, optimizer="sgd", lr=0.1, steps=300, backoffs=3)
    result = find_paths(energy, starts, ends, **options)
    # The stiff pair's energy exploded (far above its line's 20.64) but never became non-finite.
    assert max(seen) > 1e3 and all(math.isfinite(e) for e in seen)
    assert result.diverged.tolist() == [False, True]
    assert result.backoffs.tolist() == [0, 3]
    # It is frozen at a path below the limit: the line's top + 10 x its scale (here the top,
    # 20.64 at the end (8, -0.2), above the range).
    line = _soft_or_stiff(straight_line(starts, ends, 4)[1])
    assert line.max() == pytest.approx(20.64) and line.max() - line.min() < line.max()
    assert result.energy[1].max() <= line.max() + 10 * line.max()
    assert torch.isfinite(result.path).all()
    # The soft pair went on as if alone.
    alone = find_paths(_soft_or_stiff, starts[:1], ends[:1], **options)
    assert result.converged[0] and torch.equal(result.path[0], alone.path[0])
    assert result.steps[0] == alone.steps[0]


def test_back_off_halves_the_step_and_lets_a_pair_recover() -> None:
    # SGD on the wall of stiffness 1000 grows by |1 - 2.5| per step at lr 0.0025 and shrinks
    # by |1 - 1.25| at half that: one back-off, then it converges.
    starts = torch.tensor([[6.0, 0.2]], dtype=DTYPE)
    ends = torch.tensor([[8.0, -0.2]], dtype=DTYPE)
    options = dict(num_pivots=4, optimizer="sgd", lr=0.0025, steps=3000, tol=1e-2)
    result = find_paths(_soft_or_stiff, starts, ends, **options)
    assert result.converged[0] and not result.diverged[0]
    assert result.backoffs[0] == 1
    never = find_paths(_soft_or_stiff, starts, ends, backoffs=0, **options)
    assert never.diverged[0] and never.backoffs[0] == 0


@pytest.mark.parametrize("optimizer", ["sgd", "fire", "lbfgs"])
def test_batched_pairs_match_single_pairs_for_each_optimizer(optimizer: str) -> None:
    # The pairs converge at different steps, so one runs on while the other is frozen.
    lr = {"sgd": 4e-4, "fire": 1e-3, "lbfgs": 1e-3}[optimizer]
    options = dict(
        num_pivots=8, steps=400, optimizer=optimizer, lr=lr, spring_constant=100.0, tol=1e-2
    )
    together = find_paths(mueller_brown, STARTS, ENDS, climbing=True, **options)
    assert together.steps[0] != together.steps[1]
    for pair in range(2):
        single = find_paths(
            mueller_brown, STARTS[pair : pair + 1], ENDS[pair : pair + 1], climbing=True, **options
        )
        assert torch.allclose(single.path[0], together.path[pair], rtol=0, atol=1e-12)
        assert single.steps[0] == together.steps[pair]
        assert single.converged[0] == together.converged[pair]


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_band_and_optimizer_state_resume_to_the_same_path(optimizer: str) -> None:
    options = dict(num_pivots=6, spring_constant=100.0, climbing=True, climb_after=5, tol=1e-3)

    def band_and_optimizer() -> tuple[ElasticBand, torch.optim.Optimizer]:
        band = ElasticBand(STARTS, ENDS, steps=600, max_step=0.5, **options)
        band.set_end_energies_(mueller_brown(band.end_points()))
        return band, make_optimizer(optimizer, [band.pivots], lr=1e-3)

    def run(band: ElasticBand, opt: torch.optim.Optimizer, until: int) -> None:
        while not band.done and int(band.steps.max()) < until:
            x = band.active_points().requires_grad_(True)
            e = mueller_brown(x)
            (g,) = torch.autograd.grad(e.sum(), x)
            if band.project_(g, e).any():
                opt.step()
                band.after_step_()

    whole, whole_opt = band_and_optimizer()
    run(whole, whole_opt, until=10**9)
    first, first_opt = band_and_optimizer()
    run(first, first_opt, until=30)
    buffer = io.BytesIO()
    torch.save({"band": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    second, second_opt = band_and_optimizer()
    second.load_state_dict(saved["band"])
    second_opt.load_state_dict(saved["optimizer"])
    run(second, second_opt, until=10**9)
    assert whole.converged.all()
    assert torch.equal(second.pivots, whole.pivots) and torch.equal(second.steps, whole.steps)


def test_max_step_caps_the_longest_pivot_move_per_step() -> None:
    # A huge SGD step on Mueller-Brown is cut to max_step pivot spacings, direction kept.
    band = ElasticBand(STARTS, ENDS, num_pivots=4, steps=1, max_step=0.25)
    band.set_end_energies_(mueller_brown(band.end_points()))
    opt = make_optimizer("sgd", [band.pivots], lr=1.0)
    before = band.pivots.detach().clone()
    x = band.active_points().requires_grad_(True)
    e = mueller_brown(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    band.project_(g, e)
    direction = -band.pivots.grad.clone()
    opt.step()
    band.after_step_()
    move = band.pivots.detach() - before
    longest = move.norm(dim=-1).amax(dim=1)
    assert torch.allclose(longest, 0.25 * band.pivot_spacing(), rtol=1e-12)
    scale = (move / direction)[..., 0]
    assert torch.allclose(scale, scale[:, :1].expand_as(scale), rtol=1e-9)


def test_a_band_checkpoint_without_the_back_off_buffers_still_loads() -> None:
    # Band checkpoints written before these buffers existed lack them; unknown keys are still
    # refused.
    state = ElasticBand(STARTS, ENDS).state_dict()
    for name in ("energy_limit", "step_scale", "backoffs", "held"):
        del state[name]
    band = ElasticBand(STARTS, ENDS)
    band.load_state_dict(state)
    assert torch.isinf(band.energy_limit).all() and (band.step_scale == 1).all()
    with pytest.raises(RuntimeError, match="Unexpected"):
        band.load_state_dict({**state, "other": torch.zeros(1)})
