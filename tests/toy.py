"""Toy classifiers on the plane with known class regions, for tests of the path search."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Annulus(nn.Module):
    """Class 0 inside the ring 1 < r < 2, class 1 elsewhere: connected, but not convex."""

    def forward(self, z: Tensor) -> Tensor:
        r = z.norm(dim=-1)
        inside = 4.0 * (r - 1.0) * (2.0 - r)
        return torch.stack([inside, torch.zeros_like(inside)], dim=-1)


class TwoDisks(nn.Module):
    """Class 0 in two disjoint unit disks around (-2, 0) and (2, 0), class 1 elsewhere."""

    def forward(self, z: Tensor) -> Tensor:
        left = (z - z.new_tensor([-2.0, 0.0])).norm(dim=-1)
        right = (z - z.new_tensor([2.0, 0.0])).norm(dim=-1)
        inside = 4.0 * (1.0 - torch.minimum(left, right))
        return torch.stack([inside, torch.zeros_like(inside)], dim=-1)


class Stripes(nn.Module):
    """Class 0 where x < 1, class 1 where x > 1; a straight line inside x < 1 is fine."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.stack([4.0 * (1.0 - z[..., 0]), torch.zeros_like(z[..., 0])], dim=-1)
