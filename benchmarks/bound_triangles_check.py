"""Bounds over triangles (issue 22) on small random nets: sub-triangles, evaluations and time.

For each tail (a ReLU MLP, a GELU/tanh MLP, a two-token attention block with LayerNorm; random
weights, seeded) and each triangle size (corners ``centre + scale * N(0, 1)``, targets the
class at the centroid), one call of
:func:`connectivity.engine.bound_triangles.prove_triangles` on all triangles
(``--max-splits`` per triangle), printing per setting: the statuses ``proved /
counterexample / budget`` (``p/c/b``), the median (and largest) final sub-triangles
(``pieces``) and bound evaluations (``evals``) per triangle, and seconds per triangle (the
call's wall time over the triangles; tracing not counted). For comparison, the same
triangles' three edges by :func:`connectivity.engine.bounds.prove_segments` (``edges
s/tri``: three segments per triangle) and the sampled check with 30 points per edge
(``grid s/tri``: :func:`connectivity.engine.triangles.sampled_triangles`, 496 points per
triangle). The enclosure's looseness: ``gap tri`` is the median over triangles of the sampled
minimum (30 per edge) less the bound of the whole triangle (no split), ``gap edges`` the same
less the lowest one-parameter bound of its three edges (each edge whole): how much the box
loses beyond what the one-parameter bounds lose along a segment. No timing is asserted anywhere;
numbers depend on the machine and its load.

Measured 2026-12-06 on this project's 2-core CPU shared with three other jobs (times are upper
bounds), defaults (16 triangles per row, ``--max-splits 256``, width 32, one thread, seed 0):

| tail | scale | p/c/b | pieces | evals | s/tri | edges s/tri | grid s/tri | gap tri | gap edges |
|---|---|---|---|---|---|---|---|---|---|
| relu | 0.05 | 15/1/0 | 4 (76) | 7 (111) | 0.0071 | 0.0006 | 0.00053 | 0.185 | 4.98e-08 |
| relu | 0.2 | 12/3/1 | 16 (739) | 31 (995) | 0.0088 | 0.0006 | 0.00022 | 0.829 | 0.0132 |
| relu | 0.5 | 4/10/2 | 1 (739) | 1 (995) | 0.0087 | 0.0012 | 0.00043 | 3.13 | 0.0942 |
| gelu/tanh | 0.05 | 15/1/0 | 8 (40) | 15 (63) | 0.0091 | 0.0008 | 0.00021 | 0.338 | 0.00107 |
| gelu/tanh | 0.2 | 9/7/0 | 8 (223) | 15 (307) | 0.0176 | 0.0045 | 0.00057 | 1.64 | 0.0168 |
| gelu/tanh | 0.5 | 7/8/1 | 1 (739) | 1 (995) | 0.0434 | 0.0047 | 0.00021 | 3.57 | 0.0939 |
| attention | 0.05 | 16/0/0 | 8 (307) | 15 (419) | 0.0108 | 0.0030 | 0.00065 | 1.12 | 0.0109 |
| attention | 0.2 | 11/4/1 | 16 (717) | 31 (973) | 0.0181 | 0.0025 | 0.00033 | 9.21 | 0.18 |
| attention | 0.5 | 7/9/0 | 1 (685) | 1 (927) | 0.0261 | 0.0053 | 0.00036 | 1.43e+03 | 1.12 |

The same rows with every split in four (the first version): proved/cex/budget 14/1/1, 9/3/4,
1/10/5, 15/1/0, 6/7/3, 2/8/6, 14/0/2, 7/4/5, 2/9/5; evaluations median 21, 321, 1, 85, 85,
1, 85, 201, 1.

Usage::

    python benchmarks/bound_triangles_check.py [--triangles 16] [--max-splits 256]
        [--width 32] [--scales 0.05,0.2,0.5] [--threads 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from connectivity.engine.bound_triangles import prove_triangles
from connectivity.engine.bounds import bound_program, margin_bounds, prove_segments
from connectivity.engine.triangles import sampled_triangles


class Attention(nn.Module):
    """A point ``(B, 2 w)`` as two tokens of width ``w``: softmax attention (one head) with a
    residual, LayerNorm, mean over tokens, a linear head to 10 classes."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, z: Tensor) -> Tensor:
        x = z.view(-1, 2, self.width)
        scores = self.q(x) @ self.k(x).transpose(1, 2) / self.width**0.5
        return self.head(self.norm(x + torch.softmax(scores, dim=-1) @ self.v(x)).mean(1))


def tails(width: int) -> dict[str, tuple[nn.Module, int]]:
    """The benchmark's tails (eval mode, float32) and their input widths."""
    relu = nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )
    smooth = nn.Sequential(
        nn.Linear(16, width), nn.GELU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )
    attention = Attention(8)
    return {
        "relu": (relu.eval(), 16),
        "gelu/tanh": (smooth.eval(), 16),
        "attention": (attention.eval(), 16),
    }


def timed(function, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return out, time.perf_counter() - start


def row(name: str, net: nn.Module, width: int, scale: float, args: argparse.Namespace) -> str:
    """One table row: the setting's statuses, counts and times per triangle."""
    count = args.triangles
    centre = torch.randn(count, width)
    a, b, c = (centre + scale * torch.randn(count, width) for _ in range(3))
    with torch.no_grad():
        y = net((a + b + c) / 3).argmax(1)
    program = bound_program(net, a[:1])
    check, seconds = timed(prove_triangles, program, a, b, c, y, max_splits=args.max_splits)
    starts, ends = torch.cat([a, b, c]), torch.cat([b, c, a])
    _, edges = timed(prove_segments, program, starts, ends, y.repeat(3), max_splits=args.max_splits)
    sampled, sampled_seconds = timed(sampled_triangles, net, a, b, c, y, per_edge=30)
    whole = prove_triangles(program, a, b, c, y, max_splits=0).min_margin_lower_bound
    one = torch.ones(count, dtype=torch.float64)
    edge = [margin_bounds(program, s, e, y, one * 0, one) for s, e in ((a, b), (b, c), (c, a))]
    lowest = sampled.min_margin
    gaps = (lowest - whole).median(), (lowest - torch.stack(edge).amin(0)).median()
    statuses = "/".join(str(check.status.count(s)) for s in ("proved", "counterexample", "budget"))
    pieces, evaluations = check.pieces.double(), check.evaluations.double()
    return (
        f"| {name} | {scale:g} | {statuses} | {pieces.median():.0f} ({pieces.max():.0f}) | "
        f"{evaluations.median():.0f} ({evaluations.max():.0f}) | {seconds / count:.4f} | "
        f"{edges / count:.4f} | {sampled_seconds / count:.5f} | {gaps[0]:.3g} | {gaps[1]:.3g} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triangles", type=int, default=16)
    parser.add_argument("--max-splits", type=int, default=256)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--scales", default="0.05,0.2,0.5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(
        "| tail | scale | p/c/b | pieces | evals | s/tri | edges s/tri | grid s/tri | gap tri | "
        "gap edges |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (net, width) in tails(args.width).items():
        for scale in (float(s) for s in args.scales.split(",")):
            print(row(name, net, width, scale, args), flush=True)


if __name__ == "__main__":
    main()
