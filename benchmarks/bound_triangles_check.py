"""Bounds over triangles (issue 22) on small random nets: sub-triangles, evaluations and time.

For each tail (a ReLU MLP, a GELU/tanh MLP, a two-token attention block with LayerNorm; random
weights, seeded) and each triangle size (corners ``centre + scale * N(0, 1)``, targets the
class at the centroid), one call of
:func:`connectivity.engine.bound_triangles.prove_triangles` on all triangles (``--max-splits``
per triangle), printing per setting: the statuses ``proved / counterexample / budget``, the
median and largest final sub-triangles and bound evaluations per triangle, and seconds per
triangle (the call's wall time over the triangles; tracing not counted). For comparison, the
same triangles' three edges by :func:`connectivity.engine.bounds.prove_segments` (seconds per
triangle, three segments each) and the sampled check with 30 points per edge
(:func:`connectivity.engine.triangles.sampled_triangles`, 496 points per triangle). No
timing is asserted anywhere; numbers depend on the machine and its load.

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
from connectivity.engine.bounds import bound_program, prove_segments
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
    _, sampled = timed(sampled_triangles, net, a, b, c, y, per_edge=30)
    statuses = "/".join(str(check.status.count(s)) for s in ("proved", "counterexample", "budget"))
    pieces, evaluations = check.pieces.double(), check.evaluations.double()
    return (
        f"| {name} | {scale:g} | {statuses} | {pieces.median():.0f} ({pieces.max():.0f}) | "
        f"{evaluations.median():.0f} ({evaluations.max():.0f}) | {seconds / count:.4f} | "
        f"{edges / count:.4f} | {sampled / count:.5f} |"
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
        "| tail | scale | proved/cex/budget | sub-triangles median (max) | evaluations median "
        "(max) | bounds s/tri | 3 edges s/tri | sampled s/tri |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (net, width) in tails(args.width).items():
        for scale in (float(s) for s in args.scales.split(",")):
            print(row(name, net, width, scale, args), flush=True)


if __name__ == "__main__":
    main()
