"""Cost of the exact check of flat triangles (``connectivity.engine.exact_plane``, the plane
version of ExactLine) on a small random ResNet-like network.

Setting: a stem convolution (3 -> ``--width`` channels, 3x3), two basic residual blocks
(conv-BN-ReLU-conv-BN, identity skip, ReLU), a 2x2 max pool, global average pooling and a
10-class linear head; random weights, eval mode, ``--size`` x ``--size`` inputs. Triangles:
a random image (uniform in [0, 1]) and two more at a distance of ``scale`` times a random
direction of unit RMS per pixel, for each ``--scales``.

Printed per scale: linear regions per triangle (median and range), wall seconds per triangle
(``exact_triangles`` on ``--triangles`` triangles at once), statuses, and the time per region
in units of one point's share of a plain forward on 1,024 points.

Usage::

    python benchmarks/exact_plane_check.py [--triangles 8] [--scales 0.01 0.03 0.1]
                                           [--size 8] [--width 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch import Tensor, nn

from connectivity.engine.exact_plane import exact_triangles


class Block(nn.Module):
    """A basic residual block (He et al. 2016) with an identity skip."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


def network(width: int) -> nn.Module:
    """The random ResNet-like network of the benchmark, in eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        Block(width),
        nn.MaxPool2d(2),
        Block(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics of a trained-looking layer
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def forward_share(net: nn.Module, point: Tensor) -> float:
    """Seconds of one point's share of a forward on 1,024 points (median of 3)."""
    batch = point.expand(1024, *point.shape).contiguous()
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            net(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triangles", type=int, default=8)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--max-regions", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = network(args.width)
    shape = (args.triangles, 3, args.size, args.size)
    share = forward_share(net, torch.rand(shape[1:]))
    print(f"forward share: {share * 1e6:.1f} us per point")
    print("| scale | regions/tri (median, range) | s/tri | us/region | fwd/region | statuses |")
    print("|---|---|---|---|---|---|")
    for scale in args.scales:
        torch.manual_seed(1)
        a = torch.rand(shape)
        b, c = (a + scale * torch.randn(shape) for _ in range(2))
        with torch.no_grad():
            targets = net(a).argmax(dim=1)
        start = time.perf_counter()
        check = exact_triangles(net, a, b, c, targets, max_regions=args.max_regions)
        elapsed = time.perf_counter() - start
        regions = check.pieces.tolist()
        per_region = elapsed / max(1, sum(regions))
        statuses = ", ".join(f"{k} {v}" for k, v in collections.Counter(check.status).items())
        print(
            f"| {scale} | {statistics.median(regions):.0f} ({min(regions)}-{max(regions)}) "
            f"| {elapsed / args.triangles:.3f} | {per_region * 1e6:.0f} "
            f"| {per_region / share:.0f} | {statuses} |"
        )


if __name__ == "__main__":
    main()
