"""Performance benchmark of the NEB path engine (``connectivity.engine.band``).

Setting: ResNet50 (torchvision, random weights, 10 classes, eval mode) at 32x32 input, split with
``connectivity.engine.split.split`` at ``input`` (points 3x32x32) and at its last feature layer
``flatten`` (points of 2048); ``pairs`` bands of ``pivots`` pivots each; energy
``classifier_energy(tail)`` with one random target per pair (per-point labels, as ``find_paths``
passes them). Batch norm is in eval mode, so the batch composition does not change the results.

Measured per space (median of ``--repeats`` timed runs after ``--warmup`` untimed ones; CUDA is
synchronised around every timed region):

1. ``bare``: one forward + backward of the tail on the batch of all ``pairs * pivots`` pivots
   (``x.requires_grad_``, ``energy(x, y).sum()``, ``autograd.grad`` w.r.t. ``x``).
2. ``neb step``: one full iteration of ``find_paths``: ``active_points`` -> forward + backward ->
   ``band.project_`` -> ``optimizer.step`` (Adam) -> ``band.after_step_``. Timed interleaved with
   ``bare`` so both see the same machine load; the ratio neb/bare is the engine's cost (goal
   <= 1.05). A second, instrumented run times the pieces: ``prep`` (``active_points`` +
   ``active_labels``), ``fwd+bwd``, ``project_``, ``step``, ``after_step_``; the pure overhead is
   ``project_ + step + after_step_``.
3. ``pivot loop``: the same energy and gradient, one pivot at a time (batch 1, as PyTorch-AutoNEB
   does), and ``pair loop``: one call per pair (batch ``pivots``). Batched speed-up = loop / bare.
   When a full pivot loop would take longer than ``--loop-budget`` seconds, only the first ``k``
   pivots are timed and the time is scaled by ``pairs * pivots / k`` (marked in the table).

Usage::

    python benchmarks/neb_step.py [--device cpu|cuda] [--pairs 25] [--pivots 8] [--repeats 7]
                                  [--spaces input,flatten]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision
from torch import Tensor

from connectivity.engine.band import ElasticBand
from connectivity.engine.optimizers import make_optimizer
from connectivity.engine.search import classifier_energy
from connectivity.engine.split import split

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
# Cheap measurements (e.g. the ``flatten`` tail, a single linear layer) get more repeats, so that
# each one is timed for about this many seconds in total.
MIN_TIMED_SECONDS = 0.5
MAX_REPEATS = 500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--pairs", type=int, default=25)
    parser.add_argument("--pivots", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (min)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--spaces", default="input,flatten", help="comma-separated layer names")
    parser.add_argument(
        "--loop-budget",
        type=float,
        default=2.0,
        help="seconds one timed pivot/pair loop may take before it is subsampled",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads(N) first; 0 (default) keeps torch's default",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.pairs, args.pivots, args.repeats) < 1 or min(args.warmup, args.threads) < 0:
        parser.error("pairs, pivots and repeats must be >= 1, warmup and threads >= 0")
    return args


# ---------------------------------------------------------------------------------- timing


class Clock:
    """Wall-clock timer that waits for the device before reading the time."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def time(self, fn: Callable[[], object]) -> float:
        start = self.now()
        fn()
        return self.now() - start


@dataclass
class Sample:
    """Seconds of the timed runs of one measurement."""

    seconds: list[float] = field(default_factory=list)
    scale: float = 1.0  # extrapolation factor (subsampled loops)
    note: str = ""

    @property
    def ms(self) -> float:
        return 1e3 * self.scale * statistics.median(self.seconds)

    @property
    def best_ms(self) -> float:
        return 1e3 * self.scale * min(self.seconds)

    @property
    def spread(self) -> str:
        """Relative spread of the timed runs: (max - min) / median."""
        if len(self.seconds) < 2:
            return "-"
        med = statistics.median(self.seconds)
        return f"{100 * (max(self.seconds) - min(self.seconds)) / med:.0f}%"


def repeats_for(first: float, minimum: int) -> int:
    """At least ``minimum`` runs, more for cheap ones (about ``MIN_TIMED_SECONDS`` in total)."""
    if first <= 0:
        return MAX_REPEATS
    return max(minimum, min(MAX_REPEATS, math.ceil(MIN_TIMED_SECONDS / first)))


# ---------------------------------------------------------------------------------- setting


@dataclass
class Space:
    """One split of the network and the points of one band batch in its space."""

    name: str
    tail: torch.nn.Module
    starts: Tensor  # (pairs, *point_shape)
    ends: Tensor
    targets: Tensor  # (pairs,)

    @property
    def point_shape(self) -> tuple[int, ...]:
        return tuple(self.starts.shape[1:])


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None, num_classes=NUM_CLASSES).eval()


@torch.no_grad()
def make_space(
    model: torch.nn.Module, layer: str, pairs: int, device: torch.device, seed: int
) -> Space:
    """Split at ``layer``; the band ends are the head's images of random images in [0, 1]."""
    head, tail = split(model, layer)
    head, tail = head.to(device), tail.to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(2 * pairs, *IMAGE_SHAPE, generator=generator).to(device)
    points = head(images)
    targets = torch.randint(NUM_CLASSES, (pairs,), generator=generator).to(device)
    return Space(layer, tail, points[:pairs].contiguous(), points[pairs:].contiguous(), targets)


def make_band(space: Space, pivots: int) -> tuple[ElasticBand, torch.optim.Optimizer]:
    """A band that never finishes (tol 0, no step limit) with its Adam, ends evaluated."""
    band = ElasticBand(
        space.starts,
        space.ends,
        num_pivots=pivots,
        tol=0.0,
        steps=2**62,
        labels=space.targets,
    )
    energy = classifier_energy(space.tail)
    with torch.no_grad():
        band.set_end_energies_(energy(band.end_points(), band.end_labels()).reshape(-1))
    return band, make_optimizer("adam", [band.pivots], 1e-2)


# ---------------------------------------------------------------------------------- workloads


def energy_and_grad(energy: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """The bare evaluation: energies and their gradient w.r.t. the points."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        e = energy(x, y).reshape(-1)
        (g,) = torch.autograd.grad(e.sum(), x)
    return g


def neb_step(band: ElasticBand, opt: torch.optim.Optimizer, energy: Callable) -> None:
    """One iteration of ``find_paths``'s loop, verbatim (stop=None)."""
    x = band.active_points().requires_grad_(True)
    with torch.enable_grad():
        e = energy(x, band.active_labels()).reshape(-1)
        (g,) = torch.autograd.grad(e.sum(), x)
    if band.project_(g, e).any():
        opt.step()
        band.after_step_()


PIECES = ("prep", "fwd+bwd", "project_", "step", "after_step_")


def neb_step_pieces(
    band: ElasticBand, opt: torch.optim.Optimizer, energy: Callable, clock: Clock
) -> list[float]:
    """``neb_step`` with the device synchronised and the clock read between the pieces."""
    t0 = clock.now()
    x = band.active_points().requires_grad_(True)
    y = band.active_labels()
    t1 = clock.now()
    with torch.enable_grad():
        e = energy(x, y).reshape(-1)
        (g,) = torch.autograd.grad(e.sum(), x)
    t2 = clock.now()
    moved = bool(band.project_(g, e).any())
    t3 = clock.now()
    if moved:
        opt.step()
    t4 = clock.now()
    if moved:
        band.after_step_()
    t5 = clock.now()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]


@dataclass
class Result:
    space: str
    point_shape: tuple[int, ...]
    bare: Sample
    neb: Sample
    pieces: dict[str, float]  # median ms of each piece
    pivot_loop: Sample
    pair_loop: Sample
    all_active: bool


def run_loop(
    energy: Callable,
    points: Tensor,
    labels: Tensor,
    batch: int,
    clock: Clock,
    args: argparse.Namespace,
) -> Sample:
    """Energy + gradient in calls of ``batch`` points; subsampled when a pass is too slow."""
    calls = [(i, i + batch) for i in range(0, len(points), batch)]

    def run(some: list[tuple[int, int]]) -> None:
        for lo, hi in some:
            energy_and_grad(energy, points[lo:hi], labels[lo:hi])

    for _ in range(args.warmup):
        run(calls[:1])
    # Cost of one call, from a few of them (single calls are noisy on a loaded machine).
    probe = calls[: min(len(calls), 5)]
    first = statistics.median(clock.time(lambda c=c: run([c])) for c in probe)
    wanted = max(1, math.floor(args.loop_budget / max(first, 1e-9)))
    subset = calls[: min(len(calls), wanted)]
    sample = Sample(scale=len(calls) / len(subset))
    if len(subset) < len(calls):
        sample.note = f"{len(subset)}/{len(calls)} calls, x{sample.scale:.2g}"
    once = clock.time(lambda: run(subset))
    sample.seconds.append(once)
    for _ in range(repeats_for(once, args.repeats) - 1):
        sample.seconds.append(clock.time(lambda: run(subset)))
    return sample


def bench_space(space: Space, clock: Clock, args: argparse.Namespace) -> Result:
    energy = classifier_energy(space.tail)
    band, opt = make_band(space, args.pivots)
    points = band.active_points().clone()
    labels = band.active_labels()

    def bare() -> None:
        energy_and_grad(energy, points, labels)

    def step() -> None:
        neb_step(band, opt, energy)

    # 1 + 2: bare and neb step, interleaved so that both see the same load.
    for _ in range(args.warmup):
        bare()
        step()
    first = clock.time(bare) + clock.time(step)
    repeats = repeats_for(first / 2, args.repeats)
    bare_s, neb_s = Sample(), Sample()
    for _ in range(repeats):
        bare_s.seconds.append(clock.time(bare))
        neb_s.seconds.append(clock.time(step))
    # The same step, instrumented piece by piece.
    rows = [neb_step_pieces(band, opt, energy, clock) for _ in range(repeats)]
    columns = zip(*rows, strict=True)
    pieces = {name: 1e3 * statistics.median(c) for name, c in zip(PIECES, columns, strict=True)}
    all_active = bool(band.active.all())

    # 3: one pivot per call, one pair per call.
    pivot_loop = run_loop(energy, points, labels, 1, clock, args)
    pair_loop = run_loop(energy, points, labels, args.pivots, clock, args)
    return Result(
        space.name,
        space.point_shape,
        bare_s,
        neb_s,
        pieces,
        pivot_loop,
        pair_loop,
        all_active,
    )


# ---------------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpus = f"CPU {cpu} ({torch.get_num_threads()} torch threads, "
    cpus += f"{torch.get_num_interop_threads()} interop)"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        flags = f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
        flags += f"matmul TF32={torch.backends.cuda.matmul.allow_tf32}"
        return f"GPU {gpu} (CUDA {torch.version.cuda}, {flags}); host {cpus}"
    return cpus


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    return "\n".join([fmt[0], line, *fmt[1:]])


def report(results: list[Result], args: argparse.Namespace, device: torch.device) -> str:
    batch = args.pairs * args.pivots
    lines = [
        "NEB path engine benchmark: ResNet50 (random weights, 10 classes, eval) at 32x32",
        f"device: {device_name(device)}",
        "threads: " + (f"--threads {args.threads}" if args.threads else "torch default"),
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"python {platform.python_version()}",
        f"{args.pairs} pairs x {args.pivots} pivots = {batch} points per NEB call; "
        f"Adam lr 1e-2; median of >= {args.repeats} runs after {args.warmup} warm-up "
        f"(spread = (max - min) / median)",
        "",
        "NEB step vs bare forward+backward (ms)",
    ]
    rows = []
    for r in results:
        overhead = r.pieces["project_"] + r.pieces["step"] + r.pieces["after_step_"]
        rows.append(
            [
                r.space,
                "x".join(map(str, r.point_shape)),
                f"{r.bare.ms:.2f}",
                r.bare.spread,
                f"{r.neb.ms:.2f}",
                r.neb.spread,
                f"{r.neb.ms / r.bare.ms:.3f}",
                f"{r.neb.best_ms / r.bare.best_ms:.3f}",
                f"{overhead:.2f}",
                f"{100 * overhead / r.bare.ms:.1f}%",
                str(len(r.bare.seconds)),
            ]
        )
    header = ["space", "point", "bare", "spread", "neb step", "spread", "neb/bare", "(min/min)"]
    header += ["overhead", "ovh/bare", "runs"]
    lines += [table(header, rows), ""]
    lines.append("NEB step pieces, instrumented run with a sync between pieces (median ms)")
    rows = [
        [r.space, *(f"{r.pieces[p]:.3f}" for p in PIECES), f"{sum(r.pieces.values()):.2f}"]
        for r in results
    ]
    lines += [table(["space", *PIECES, "sum"], rows), ""]
    lines.append(f"Batched ({batch} points per call) vs loops (ms per {batch} evaluations)")
    rows = []
    for r in results:
        rows.append(
            [
                r.space,
                f"{r.bare.ms:.2f}",
                f"{r.pivot_loop.ms:.1f}",
                r.pivot_loop.spread,
                f"{r.pivot_loop.ms / r.bare.ms:.1f}x",
                r.pivot_loop.note or "all calls",
                f"{r.pair_loop.ms:.1f}",
                r.pair_loop.spread,
                f"{r.pair_loop.ms / r.bare.ms:.1f}x",
                r.pair_loop.note or "all calls",
            ]
        )
    header = ["space", "batched", f"pivot loop ({batch}x1)", "spread", "speed-up", "timed"]
    header += [f"pair loop ({args.pairs}x{args.pivots})", "spread", "speed-up", "timed"]
    lines.append(table(header, rows))
    lines.append("")
    lines.append(
        "overhead = project_ + optimizer.step + after_step_ (pure NEB engine cost, "
        "goal neb/bare <= 1.05); (min/min) = fastest neb step / fastest bare run, a check on "
        "the medians when the machine is loaded"
    )
    lines.append("speed-up = loop / batched (goal >= 8x over the pivot loop on CPU)")
    for r in results:
        if not r.all_active:
            lines.append(f"WARNING {r.space}: some pairs left the band; the timings are off")
    return "\n".join(lines)


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    clock = Clock(device)
    model = make_model(args.seed)
    results = []
    started = time.perf_counter()
    for name in (s.strip() for s in args.spaces.split(",") if s.strip()):
        space = make_space(model, name, args.pairs, device, args.seed)
        print(f"[{time.perf_counter() - started:6.1f}s] {name}: {space.point_shape}", flush=True)
        results.append(bench_space(space, clock, args))
    print(f"[{time.perf_counter() - started:6.1f}s] done\n", flush=True)
    print(report(results, args, device))
    print(f"load average (1, 5, 15 min): {load_before} before, {load()} after")


if __name__ == "__main__":
    main()
