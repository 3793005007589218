"""Which band optimizer converges, and how fast: adam, sgd, fire and lbfgs (issue 13).

Two parts, each printed as a Markdown table:

1. **Analytic surfaces** (``--part surfaces``): the Mueller-Brown surface (2-D, not stiff) and
   its stiff embedding (``tests.surfaces.StiffEmbedding``: 64-D, rotated harmonic walls of
   stiffness 10 to 10,000 around a curved floor). Both Mueller-Brown bands (minimum A to B and
   B to C), 8 pivots, spring 100, climbing image after 10 steps. For each optimizer and
   learning rate: the steps until the highest pivot of each band is within ``--within`` (1e-3)
   of its saddle in position and in energy (the exact saddles, ``tests.surfaces``), at most
   ``--max-steps`` (20,000), and the wall time of the run (both bands batched; the run stops
   when both are there). ``max |F|`` is the largest perpendicular force of the band at the end.
2. **Classifier** (``--part classifier``): the pairs of a ``connectivity paths`` config
   (default ``configs/paths/cifar10_jpeg.yaml``: 25 CIFAR-10 test pairs, input, layer1 and
   flatten, 8 pivots, 300 steps, lr 0.01) decided with each optimizer at the config's ``lr``,
   once as the tool does by default (a band stops once certified) and once with
   ``converge: true`` (to ``tol``, the minimum energy path). Per space: pairs that needed a
   band, how their bands ended (``status``), and the mean and largest steps of those bands.
   ``--classifier`` overrides the config's checkpoint.

Timing is wall-clock on whatever machine runs it; ``--threads`` sets torch's thread count (1 is
steadier on a small busy CPU). The load average is printed with the tables.

Usage::

    python benchmarks/optimizers.py --part surfaces
    python benchmarks/optimizers.py --part classifier --classifier path/to/classifier.ckpt
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.surfaces: the analytic surfaces the tests use

from connectivity.engine.options import OPTIMIZERS  # noqa: E402
from connectivity.engine.search import find_paths  # noqa: E402
from tests.surfaces import (  # noqa: E402
    MB_MINIMA,
    MB_SADDLE_ENERGIES,
    MB_SADDLES,
    StiffEmbedding,
    mueller_brown,
)

# (optimizer, lr) of the analytic part: adam at the lr of the tool's default and at a smaller
# one, sgd near its stability limit (2 / largest curvature: ~5e-4 on Mueller-Brown, 2e-4 in
# the stiff walls), fire and lbfgs at two lrs.
SURFACE_RUNS = (
    ("adam", 1e-2),
    ("adam", 1e-3),
    ("sgd", 1e-4),
    ("fire", 1e-2),
    ("fire", 1e-3),
    ("lbfgs", 1e-2),
    ("lbfgs", 1e-3),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["surfaces", "classifier", "all"], default="all")
    parser.add_argument("--within", type=float, default=1e-3, help="saddle distance (surfaces)")
    parser.add_argument("--max-steps", type=int, default=20_000, help="step budget (surfaces)")
    parser.add_argument("--config", default=str(REPO / "configs/paths/cifar10_jpeg.yaml"))
    parser.add_argument("--classifier", default=None, help="checkpoint instead of the config's")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="classifier part")
    parser.add_argument("--count", type=int, default=None, help="pairs instead of the config's")
    parser.add_argument("--spaces", default=None, help="comma-separated, instead of the config's")
    parser.add_argument("--runs", default="certify,converge", help="classifier runs to make")
    parser.add_argument("--lr", type=float, default=None, help="lr instead of the config's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch's")
    return parser.parse_args(argv)


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def header(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} thread(s), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}"
    )


# ------------------------------------------------------------------------ analytic surfaces


def saddle_stop(starts: Tensor, saddles: Tensor, saddle_energies: Tensor, within: float):
    """A ``stop`` callback: True once a band's highest pivot is within ``within`` of its
    saddle in position and energy (a band is known by its start)."""

    def stop(path: Tensor, energies: Tensor) -> Tensor:
        n = path.shape[0]
        pair = (path[:, 0].reshape(n, 1, -1) == starts.reshape(1, len(starts), -1)).all(dim=2)
        pair = pair.to(torch.long).argmax(dim=1)
        index = energies[:, 1:-1].argmax(dim=1) + 1
        rows = torch.arange(n)
        top = path[rows, index].reshape(n, -1)
        near = (top - saddles[pair]).norm(dim=1) < within
        return near & ((energies[rows, index] - saddle_energies[pair]).abs() < within)

    return stop


def surface_run(
    energy, starts, ends, saddles, saddle_energies, optimizer, lr, args, converge: bool
) -> dict:
    """Both bands with one optimizer, until each climbing pivot is at its saddle (or, with
    ``converge``, until each band's max force is below ``within``); steps, time, state."""
    start = time.perf_counter()
    stop = None if converge else saddle_stop(starts, saddles, saddle_energies, args.within)
    result = find_paths(
        energy,
        starts,
        ends,
        num_pivots=8,
        steps=args.max_steps,
        optimizer=optimizer,
        lr=lr,
        spring_constant=100.0,
        climbing=True,
        climb_after=10,
        tol=args.within if converge else 0.0,
        stop=stop,
    )
    seconds = time.perf_counter() - start
    done = result.converged if converge else result.stopped
    index = result.energy[:, 1:-1].argmax(dim=1) + 1
    rows = torch.arange(len(starts))
    distance = (result.path[rows, index].reshape(len(starts), -1) - saddles).norm(dim=1)
    if bool(done.all()):
        end = "done"
    elif bool(result.diverged.any()):
        end = "diverged"
    elif converge:
        end = "max F " + ", ".join(f"{f:.2g}" for f in result.max_force.tolist())
    else:
        end = ", ".join(f"{d:.1e}" for d in distance.tolist()) + " away"
    steps = [str(int(s)) if bool(d) else "-" for s, d in zip(result.steps, done, strict=True)]
    return {"steps": steps, "seconds": seconds, "end": end}


def surfaces(args: argparse.Namespace) -> None:
    cases = {"Mueller-Brown (2-D)": (mueller_brown, MB_MINIMA, MB_SADDLES)}
    for walls in ((10.0, 1e4), (100.0, 1e5)):
        stiff = StiffEmbedding(mueller_brown, dim=64, stiffness=walls)
        name = f"stiff, 64-D, walls {walls[0]:g}..{walls[1]:g}"
        cases[name] = (stiff, stiff.lift(MB_MINIMA), stiff.lift(MB_SADDLES))
    print(
        f"\n### Analytic surfaces, both Mueller-Brown bands, at most {args.max_steps} steps\n\n"
        f"saddle: steps until the climbing pivot is within {args.within:g} of the saddle in "
        f"position and energy; band: steps until the band's largest force is below "
        f"{args.within:g} (converged); '-': not within the budget\n"
    )
    print(
        "| surface | optimizer | lr | saddle A-B | saddle B-C | time (s) | not there | "
        "band A-B | band B-C | time (s) | not converged |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (energy, minima, saddles) in cases.items():
        for optimizer, lr in SURFACE_RUNS:
            runs = [
                surface_run(
                    energy,
                    minima[:2],
                    minima[1:],
                    saddles,
                    MB_SADDLE_ENERGIES,
                    optimizer,
                    lr,
                    args,
                    converge,
                )
                for converge in (False, True)
            ]
            cells = []
            for run in runs:
                not_done = "" if run["end"] == "done" else run["end"]
                cells += [*run["steps"], f"{run['seconds']:.1f}", not_done]
            print(f"| {name} | {optimizer} | {lr:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{load()}")


# ------------------------------------------------------------------------------- classifier


def classifier(args: argparse.Namespace) -> None:
    from connectivity.api import connect_in_layer
    from connectivity.cli.commands import PathsCommand, quiet_library_output
    from connectivity.data import stack_images
    from connectivity.runs.networks import load_network
    from connectivity.runs.pairs import select_pairs
    from connectivity.runs.paths import options_in_space

    command = PathsCommand.from_file(args.config)
    experiment, data = command.experiment, command.data
    if args.count is not None:
        experiment.pairs = dataclasses.replace(experiment.pairs, count=args.count)
    spaces = args.spaces.split(",") if args.spaces else experiment.spaces
    if args.lr is not None:
        experiment.path = dataclasses.replace(experiment.path, lr=args.lr)
    checkpoint = args.classifier or experiment.classifier
    if not Path(checkpoint).is_file():
        raise SystemExit(
            f"no classifier checkpoint at {checkpoint}: train one (see docs/experiments.md, "
            "'Real images: CIFAR-10 on a CPU') or give --classifier"
        )
    with quiet_library_output():
        network = load_network(checkpoint)
        dataset = data.dataset(experiment.pairs.split)
        pairs = select_pairs(network, dataset, experiment.pairs, data.class_names)
    starts, _ = stack_images(dataset, [p.start_index for p in pairs])
    ends, _ = stack_images(dataset, [p.end_index for p in pairs])
    targets = torch.tensor([p.label for p in pairs])
    print(
        f"\n### Classifier: {Path(args.config).name}, classifier {checkpoint}, {len(pairs)} "
        f"pairs, {experiment.path.num_pivots} pivots, at most {experiment.path.steps} steps, "
        f"lr {experiment.path.lr:g}\n"
    )
    print(
        "| space | optimizer | run | band pairs | nonlinear | how the bands ended | "
        "steps mean | steps max | time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    runs = {"certify": False, "converge": True}
    for space in spaces:
        for optimizer in args.optimizers.split(","):
            for converge in [runs[name] for name in args.runs.split(",")]:
                options = dataclasses.replace(
                    experiment.path, optimizer=optimizer, converge=converge
                )
                options = options_in_space(options, space)
                start = time.perf_counter()
                with quiet_library_output():
                    records = connect_in_layer(network, space, starts, ends, targets, options)
                seconds = time.perf_counter() - start
                band = [r for r in records if r.status != "linear"]
                steps = [r.steps for r in band]
                ended = Counter(r.status for r in band)
                print(
                    f"| {space} | {optimizer} | {'converge' if converge else 'certify'} | "
                    f"{len(band)} | {sum(r.verdict == 'nonlinear' for r in records)} | "
                    f"{', '.join(f'{k} {v}' for k, v in sorted(ended.items())) or '-'} | "
                    f"{statistics.mean(steps) if steps else 0:.1f} | "
                    f"{max(steps) if steps else 0} | {seconds:.1f} |",
                    flush=True,
                )
    print(f"\n{load()}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        print(header(torch.get_num_threads()))
    if args.part in ("surfaces", "all"):
        surfaces(args)
    if args.part in ("classifier", "all"):
        classifier(args)


if __name__ == "__main__":
    main()
