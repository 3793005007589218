"""The surfaces of a trained classifier's loops, and what a loop costs against its sides' paths.

    python benchmarks/surfaces_cost.py --classifier lightning_logs/quickstart/classifier.ckpt
    python benchmarks/surfaces_cost.py --classifier CKPT --data cifar --size 4 --closest-of 20
    python benchmarks/surfaces_cost.py --classifier CKPT --certify auto --figure curved.png

Draws ``--count`` loops per class of ``--size`` inputs (``--closest-of``: the closest calls of
that many random loops per class, as ``loops.closest_of`` draws them), then per space decides
the loops' sides as path pairs (``connect_points``, all sides batched) and fills the loops
(``fill_loops``, all loops batched), as ``connectivity surfaces`` does without Lightning. Prints
one row per space: loops by verdict (with the certificate of each), seconds per loop of the
sides and of the fill, their ratio, and the vertices and steps of the fills. ``--figure``
writes the domain figure (classes before and after relaxation) of the first curved surface.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

from connectivity.classifier import ClassifierModule
from connectivity.data import DigitsDataModule, ImageFolderDataModule, stack_images
from connectivity.engine.checks import Certifier
from connectivity.engine.options import SurfaceOptions
from connectivity.engine.planes import surface_domain_map
from connectivity.engine.search import connect_points
from connectivity.engine.split import FrozenTail, split
from connectivity.engine.surfaces import fill_loops
from connectivity.fill import PATH_VERDICTS, loop_from_sides, open_loop_record
from connectivity.reporting.surface_figures import surface_domain_figure
from connectivity.runs.loops import LoopSampling, select_loops
from connectivity.runs.paths import options_in_space

CIFAR = "../shared/data/cifar10-jpeg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--data", choices=("digits", "cifar"), default="digits")
    parser.add_argument("--spaces", nargs="+", default=["input", "layer1", "flatten"])
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--closest-of", type=int, default=None)
    parser.add_argument("--certify", default="sampled")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--figure", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = ClassifierModule.from_checkpoint(args.classifier).network.eval()
    if args.data == "digits":
        data = DigitsDataModule()
    else:
        data = ImageFolderDataModule(train_root=f"{CIFAR}/train", test_root=f"{CIFAR}/test")
    dataset = data.dataset("test")
    sampling = LoopSampling(count=args.count, size=args.size, closest_of=args.closest_of)
    loops = select_loops(network, dataset, sampling, data.class_names)
    options = SurfaceOptions(steps=args.steps, certify=args.certify)
    print(f"{len(loops)} loops of {args.size}, certify={args.certify}, steps={args.steps}")
    columns = "verdicts (certificate) | sides s/loop | fill s/loop | fill/sides | V | steps"
    print(f"| space | {columns} |")
    print("|---|---|---|---|---|---|---|")
    figure_done = args.figure is None
    for space in args.spaces:
        head, tail = split(network, space)
        tail = FrozenTail(tail)
        space_options = options_in_space(options, space)
        images = torch.stack([stack_images(dataset, list(loop.indices))[0] for loop in loops])
        with torch.no_grad():
            z = head(images.flatten(0, 1))
        z = z.reshape(len(loops), args.size, *z.shape[1:])
        starts, ends = z.flatten(0, 1), z.roll(-1, dims=1).flatten(0, 1)
        targets = torch.tensor([loop.label for loop in loops]).repeat_interleave(args.size)
        began = time.perf_counter()
        sides = connect_points(tail, starts, ends, targets, space_options)
        sides_time = time.perf_counter() - began
        chains, open_loops = [], {}
        for n, loop in enumerate(loops):
            own = sides[n * args.size : (n + 1) * args.size]
            if any(s.verdict not in PATH_VERDICTS for s in own):
                open_loops[n] = open_loop_record(loop.label, own)
            else:
                chains.append((n, *loop_from_sides(own)))
        certifier = Certifier.for_tail(tail, space_options, z[0, :1])
        began = time.perf_counter()
        filled = fill_loops(
            tail,
            [c[1] for c in chains],
            [c[2] for c in chains],
            torch.tensor([loops[c[0]].label for c in chains], dtype=torch.long),
            torch.tensor([c[3] for c in chains]),
            space_options,
            certifier.check_triangles if certifier.proves else None,
        )
        fill_time = time.perf_counter() - began
        records = list(open_loops.values()) + filled
        counts = Counter((r.verdict, r.certificate) for r in records)
        shown = ", ".join(f"{n} {v} ({c})" for (v, c), n in sorted(counts.items()))
        vertices = max((r.vertices for r in filled), default=0)
        steps = max((r.steps for r in filled), default=0)
        per_sides, per_fill = sides_time / len(loops), fill_time / len(loops)
        ratio = per_fill / per_sides if per_sides > 0 else float("nan")
        print(
            f"| {space} | {shown} | {per_sides:.2f} | {per_fill:.2f} | {ratio:.2f} | "
            f"{vertices} | {steps} |",
            flush=True,
        )
        curved = [r for r in filled if r.verdict == "curved"]
        if not figure_done and curved:
            record = curved[0]
            maps = [
                surface_domain_map(tail, points, record.triangles, record.uv, 64).classes
                for points in (record.flat, record.points)
            ]
            title = f"{space}: a curved surface of class {record.target} ({record.certificate})"
            corners = record.uv[record.corners]
            figure = surface_domain_figure(*maps, corners, data.class_names, title)
            figure.savefig(args.figure, dpi=100)
            print(f"figure of a curved surface: {args.figure}")
            figure_done = True


if __name__ == "__main__":
    main()
