"""Analytic energy surfaces with known stationary points, for tests and benchmarks of the band.

* ``mueller_brown``: K. Mueller, L. D. Brown, Theor. Chim. Acta 53, 75 (1979); its minima and
  saddles below were found by Newton's method in float64 (gradient norm below 1e-12) from the
  literature's 4-digit values, and are checked by ``tests/engine/test_band.py``.
* ``StiffEmbedding``: a 2-D surface in many dimensions, inside harmonic walls of very different
  stiffness around a curved floor: an ill-conditioned surface whose saddles are still known
  exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

DTYPE = torch.float64

# Mueller-Brown parameters.
MB_A = (-200.0, -100.0, -170.0, 15.0)
MB_a = (-1.0, -1.0, -6.5, 0.7)
MB_b = (0.0, 0.0, 11.0, 0.6)
MB_c = (-10.0, -10.0, -6.5, 0.7)
MB_X0 = (1.0, 0.0, -0.5, -1.0)
MB_Y0 = (0.0, 0.5, 1.5, 1.0)

# Minima A, B, C and the saddles between A and B and between B and C, with their energies.
MB_MINIMA = torch.tensor(
    [
        [-0.558223634633024, 1.441725841804669],
        [-0.050010822998206, 0.466694104871972],
        [0.623499404930877, 0.028037758528686],
    ],
    dtype=DTYPE,
)
MB_SADDLES = torch.tensor(
    [[-0.822001558732732, 0.624312802814871], [0.212486582000662, 0.292988325107368]],
    dtype=DTYPE,
)
MB_SADDLE_ENERGIES = torch.tensor([-40.664843508657, -72.248940112325], dtype=DTYPE)


def mueller_brown(points: Tensor) -> Tensor:
    """Mueller-Brown potential of ``(B, 2)`` points, ``(B,)``."""
    params = [torch.tensor(v, dtype=points.dtype) for v in (MB_A, MB_a, MB_b, MB_c, MB_X0, MB_Y0)]
    amp, a, b, c, x0, y0 = params
    dx = points[:, :1] - x0
    dy = points[:, 1:] - y0
    return (amp * torch.exp(a * dx * dx + b * dx * dy + c * dy * dy)).sum(dim=-1)


class StiffEmbedding:
    """A 2-D surface ``S(u)`` embedded in ``dim`` dimensions inside stiff harmonic walls.

    ``E(x) = S(u) + 1/2 sum_j k_j (z_j - c_j(u))^2`` with ``(u, z) = Q^T x`` (``u`` the first
    two coordinates, ``z`` the other ``dim - 2``), wall stiffnesses ``k_j`` spaced
    logarithmically over ``stiffness = (k_low, k_high)``, a curved floor
    ``c_j(u) = amplitude * sin(w_j . u + phi_j)`` and a random rotation ``Q``. The straight line
    between two lifted points cuts through the walls (the floor is curved), so a band must
    settle into walls whose curvatures differ by ``k_high / k_low``, and the rotation mixes
    every wall into every coordinate (no per-coordinate scaling can undo it).

    The stationary points of ``E`` are exactly the lifts ``x = Q (u*, c(u*))`` of those of
    ``S``, with the same energies and Morse indices: on the floor the wall term and its
    gradient vanish, and the Schur complement of the wall block of the Hessian is the Hessian
    of ``S``. So a saddle of ``S`` gives a first-order saddle of ``E``.

    Args:
        surface: ``S``, maps ``(B, 2)`` to ``(B,)``.
        dim: Dimension of the embedding, ``> 2``.
        stiffness: ``(k_low, k_high)`` of the walls.
        amplitude: Height of the floor's undulation.
        seed: Seed of the floor and the rotation.
    """

    def __init__(
        self,
        surface: Callable[[Tensor], Tensor],
        dim: int = 64,
        stiffness: tuple[float, float] = (10.0, 1e4),
        amplitude: float = 0.05,
        seed: int = 0,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        walls = dim - 2
        self.surface = surface
        self.stiffness = torch.logspace(
            math.log10(stiffness[0]), math.log10(stiffness[1]), walls, dtype=DTYPE
        )
        self.frequencies = 2.0 * torch.randn(walls, 2, generator=gen, dtype=DTYPE)
        self.phases = 2 * math.pi * torch.rand(walls, generator=gen, dtype=DTYPE)
        self.amplitude = amplitude
        self.rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=DTYPE))

    def floor(self, u: Tensor) -> Tensor:
        """``(B, dim - 2)`` wall centres above ``(B, 2)`` points of the surface."""
        return self.amplitude * torch.sin(u @ self.frequencies.T + self.phases)

    def lift(self, u: Tensor) -> Tensor:
        """``(B, dim)`` points on the floor above ``(B, 2)`` points of the surface."""
        return torch.cat([u, self.floor(u)], dim=-1) @ self.rotation.T

    def __call__(self, x: Tensor) -> Tensor:
        """``(B,)`` energies of ``(B, dim)`` points."""
        y = x @ self.rotation
        u, z = y[:, :2], y[:, 2:]
        return self.surface(u) + 0.5 * (self.stiffness * (z - self.floor(u)) ** 2).sum(dim=-1)
