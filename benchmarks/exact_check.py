"""Cost of the exact check (``connectivity.engine.exact``, ExactLine) against a plain forward pass.

Setting: a CIFAR ResNet-20 (He et al. 2016, Section 4.2: 3 stages of 3 basic blocks at 16, 32,
64 channels, written here; random weights) and torchvision's ResNet18 (random weights), both
10 classes, eval mode, 32x32 inputs (``--size``), or torchvision's ResNet50; each split with
``connectivity.engine.split.split`` in the input space and at two hidden layers. Segments join the
points of random images (uniform in [0, 1]).

Printed per model and space:

* ``pieces/seg``: linear pieces per segment found by the exact check (median and range);
* ``s/seg``: wall time of the exact check per segment (``check_segments`` on ``--segments``
  segments at once, the end check included, after a warm-up check of a short stretch);
* ``fwd ms/pt``: one point's share of a plain forward of the same tail on a batch of 1,024
  points (no gradients; timed in the same run, median of ``--repeats``);
* ``fwd/piece``: the exact check's time per linear piece in units of that forward share (goal:
  at most 2 on CPU);
* ``peak GB``: peak memory: on CUDA of the exact check alone; on CPU of the whole process so
  far (its resident set), an upper bound of the check's.

Usage::

    python benchmarks/exact_check.py [--device cpu|cuda] [--segments 2] [--repeats 3]
                                     [--models resnet20,resnet18] [--size 32] [--threads N]

The paper's ResNet50 at 224 (memory stays bounded: the exact check cuts its batches at
``connectivity.engine.exact.MAX_VALUES`` values per activation)::

    python benchmarks/exact_check.py --models resnet50 --size 224 --segments 1 --repeats 1

Comparison with an independent ExactLine (issue 21, item 4)::

    python benchmarks/exact_check.py --compare --threads 1 --segments 2 --repeats 2 \
        --spaces layer2,layer1 --fractions 1.0 0.25 [--baseline REV] [--trained-steps 400]

A ResNet-20 trained ``--trained-steps`` SGD steps on the CIFAR-10 JPEGs of
``../shared/data/cifar10-jpeg`` (batch 128; cached in ``--cache``; 400 steps take about 8 CPU
minutes), segments joining the first two test images of classes 0 and 1 mapped to the space,
each cut to its first ``--fractions`` (per space: a whole layer1 segment has about 30,000
pieces). On the same segments: the check now (``ours``), the check at the git revision
``--baseline`` (``before``, imported from ``git show``), both the fastest of ``--repeats``
interleaved runs, and the piece-by-piece walk of ``benchmarks/exact_reference.py`` (``ref``,
one run). Times are CPU seconds of the process (``time.process_time``, one thread): on the
shared 2-core machine wall times of the same run swung by 30% and more. ``ms/pc`` divides by
each method's own piece count (``pieces/seg``: ours, the walk's in brackets; the walk merges
pieces shorter than its ``MIN_STEP``); ``ref/ours`` is the ratio of the times of the whole
checks of the same segments; ``gain`` = before / ours (ms per piece).

Measured 2026-12-06 on this project's 2-core CPU (shared with other jobs), threads 1, baseline
d6972f4 (before this change)::

    | model | space | pieces/seg (ref) | ours ms/pc | ref ms/pc | ref/ours | before ms/pc | gain |
    |---|---|---|---|---|---|---|---|
    | resnet20 | layer2 x1 | 10091 (9145) | 0.146 | 1.690 | 10.5 | 0.224 | 1.53 |
    | resnet20 | layer1 x0.25 | 8452 (7770) | 0.399 | 4.401 | 10.1 | 0.497 | 1.24 |

Where the time goes (cProfile in CPU time, layer1 x0.25, 7.5 s for 16,900 pieces): the
network's own operations 61% (convolutions 48%, ReLU, batch norm, sums), adding points (the
interpolated copies of the live values) 19%, finding the kink crossings 17% (sign bits 8%,
``nonzero`` 6%), Python 3%. Before, finding crossings took five passes over every ReLU input
(comparisons and their combinations) where one sign-bit pass does, and a batch that outgrew the
memory bound (``MAX_VALUES_CPU``) started again from the network's input (15% of the time of a
whole layer1 segment was spent on such discarded runs); now it is cut and goes on from the
operation where it overflowed.

The gap the issue reported (the independent walk 1.5 to 3 times faster per piece) did not
reproduce here: the batched check evaluates most points only in the layers after the kink that
made them, where a walk runs the whole tail twice (point and direction) for every piece; even
the baseline was 7 to 9 times faster than this walk per piece.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from connectivity.engine.exact import check_segments, piecewise_linear_program
from connectivity.engine.split import split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exact_reference import walk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"

SPACES = {
    "resnet20": ["input", "layer1", "layer2"],
    "resnet18": ["input", "layer2", "layer3"],
    "resnet50": ["layer3", "layer4"],  # the paper's network; meant for --size 224
}


class BasicBlock(nn.Module):
    """The CIFAR ResNet's block: two 3x3 convolutions, a 1x1 projection when the shape changes."""

    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 images (0.27 M parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, channels_in = [], 16
        for channels, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(channels_in, channels, stride)]
            blocks += [BasicBlock(channels, channels, 1) for _ in range(2)]
            stages.append(nn.Sequential(*blocks))
            channels_in = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _train_resnet20(steps: int, data: Path, cache: Path) -> nn.Module:
    """A ResNet-20 trained ``steps`` SGD steps (batch 128, lr 0.1, momentum 0.9, random crops
    and flips) on the CIFAR-10 JPEGs in ``data`` (ImageFolder layout), cached in ``cache``; a
    briefly trained network crosses many more pieces per segment than a random one."""
    path = cache / f"resnet20-{steps}.pt"
    torch.manual_seed(0)
    model = ResNet20()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.RandomCrop(32, padding=4),
            torchvision.transforms.RandomHorizontalFlip(),
            torchvision.transforms.ToTensor(),
        ]
    )
    images = torchvision.datasets.ImageFolder(str(data / "train"), transform=transform)
    sampler = torch.utils.data.RandomSampler(images, num_samples=steps * 128)
    loader = torch.utils.data.DataLoader(images, batch_size=128, sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for step, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"  training step {step}: loss {loss.item():.3f}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet20":
        model: nn.Module = ResNet20()
    else:
        model = getattr(torchvision.models, name)(num_classes=10)
    # Random batch-norm statistics, so the random network is not a near-identity map.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_per_point(tail: nn.Module, point: Tensor, repeats: int) -> float:
    batch = point.expand(1024, *point.shape[1:]).contiguous()
    times = []
    with torch.no_grad():
        tail(batch)
        for _ in range(repeats):
            _sync(point.device)
            start = time.perf_counter()
            tail(batch)
            _sync(point.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / 1024


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _baseline(revision: str) -> ModuleType:
    """``connectivity.engine.exact`` as it was at a git ``revision``, imported on its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:connectivity/engine/exact.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "exact_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("exact_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["exact_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _cifar_pairs(data: Path, count: int) -> tuple[Tensor, Tensor]:
    """The first two test images of classes 0, 1, ..., count - 1: ``(2 count, 3, 32, 32)``
    (the first of each class, then the second of each) and the classes ``(count,)``."""
    images = torchvision.datasets.ImageFolder(
        str(data / "test"), transform=torchvision.transforms.ToTensor()
    )
    firsts, seconds = [], []
    for label in range(count):
        rows = [i for i, (_, y) in enumerate(images.samples) if y == label][:2]
        firsts.append(images[rows[0]][0])
        seconds.append(images[rows[1]][0])
    return torch.stack(firsts + seconds), torch.arange(count)


def _cpu_seconds(run: Callable[[], Any]) -> tuple[float, Any]:
    began = time.process_time()
    result = run()
    return time.process_time() - began, result


def compare(args: argparse.Namespace) -> None:
    """The comparison table: the check now, the check at ``--baseline``, and the independent
    walk of ``benchmarks/exact_reference.py``, on the same segments, in CPU seconds."""
    data = Path(args.data)
    model = _train_resnet20(args.trained_steps, data, Path(args.cache))
    images, targets = _cifar_pairs(data, args.segments)
    before = _baseline(args.baseline)
    print(f"ResNet-20 trained {args.trained_steps} steps; baseline {args.baseline}")
    print(
        "| model | space | pieces/seg (ref) | ours ms/pc | ref ms/pc | ref/ours | "
        "before ms/pc | gain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for space, fraction in zip(args.spaces.split(","), args.fractions, strict=True):
        head, tail = split(model, space)
        with torch.no_grad():
            points = head(images)
        starts = points[: args.segments]
        ends = torch.lerp(starts, points[args.segments :], fraction)
        timings: dict[str, list[float]] = {"ours": [], "before": []}
        programs = {
            "ours": piecewise_linear_program(tail),
            "before": before.piecewise_linear_program(tail),
        }
        checks = {"ours": check_segments, "before": before.check_segments}
        for name, program in programs.items():  # warm-up (and the probe)
            checks[name](program, starts[:1], torch.lerp(starts[:1], ends[:1], 0.01), targets[:1])
        pieces = 0
        for _ in range(args.repeats):  # interleaved, so that both see the same load
            for name, program in programs.items():
                seconds, check = _cpu_seconds(
                    functools.partial(checks[name], program, starts, ends, targets)
                )
                timings[name].append(seconds / int(check.pieces().sum()))
                if name == "ours":
                    pieces = check.pieces()
        seconds, walked = _cpu_seconds(functools.partial(walk, tail, starts, ends, targets))
        count = int(pieces.sum())
        ours, old = min(timings["ours"]), min(timings["before"])
        reference = seconds / int(walked.pieces.sum())
        counts = [statistics.median(c.tolist()) for c in (pieces, walked.pieces)]
        spread = f"{counts[0]:.0f} ({counts[1]:.0f})"
        # Ratios of the time of the whole check of the same segments (each counts its pieces).
        print(
            f"| resnet20 | {space} x{fraction:g} | {spread} | {ours * 1e3:.3f} | "
            f"{reference * 1e3:.3f} | {seconds / (ours * count):.1f} | {old * 1e3:.3f} | "
            f"{old / ours:.2f} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet20,resnet18", help="also: resnet50")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--compare", action="store_true", help="the comparison table instead")
    parser.add_argument("--baseline", default="d6972f4", help="git revision of exact.py")
    parser.add_argument("--trained-steps", type=int, default=400)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "connectivity-bench"))
    parser.add_argument("--spaces", default="layer2,layer1")
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[1.0, 0.25], help="of each segment, per space"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        compare(args)
        return
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = "| model | space | point | pieces/seg | s/seg | fwd ms/pt | fwd/piece | peak GB |"
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = _model(name).to(device)
        torch.manual_seed(1)
        images = torch.rand(2 * args.segments, 3, args.size, args.size, device=device)
        for space in SPACES[name]:
            head, tail = split(model, space)
            head, tail = head.to(device), tail.to(device)
            with torch.no_grad():
                points = head(images)
            starts, ends = points[: args.segments], points[args.segments :]
            targets = torch.zeros(args.segments, dtype=torch.long, device=device)
            program = piecewise_linear_program(tail)
            forward = _forward_per_point(tail, starts[:1], args.repeats)
            # Warm-up on a short stretch: the first float64 call of each kernel pays one-time
            # setup that no later check pays.
            near = torch.lerp(starts[:1], ends[:1], 0.01)
            check_segments(program, starts[:1], near, targets[:1])
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            began = time.perf_counter()
            check = check_segments(program, starts, ends, targets)
            _sync(device)
            elapsed = time.perf_counter() - began
            peak = _peak_gb(device)
            pieces = check.pieces().tolist()
            per_piece = elapsed / max(1, sum(pieces)) / forward
            shape = "x".join(str(s) for s in points.shape[1:])
            spread = f"{statistics.median(pieces):.0f} ({min(pieces)}-{max(pieces)})"
            print(
                f"| {name} | {space} | {shape} | {spread} | {elapsed / args.segments:.2f} | "
                f"{forward * 1e3:.3f} | {per_piece:.2f} | {peak:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
