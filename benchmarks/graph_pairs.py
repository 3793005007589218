"""How many pairs the union-find search of ``connect_all`` decides, and how fast.

For N inputs per class (the first N correctly classified test inputs in the seed-0 order, so
the samples of smaller N are prefixes of larger ones), in each space, every class's components
are found with :func:`connectivity.connect_all` (plain Python, one process). Printed per space
and N: the pairs decided (all classes together) against the N(N-1)/2 per class that deciding
every pair would cost, the rounds, the components of each class, the wall time and the pairs
decided per second.

Data: the CIFAR-10 JPEG folders (``--data cifar10-jpeg``, default; ImageFolder layout under
``--root``) with the checkpoint given (trained here with ``--train-epochs`` epochs when it is
absent), or the embedded digits (``--data digits``; the quick classifier's recipe, trained here
when absent). The header says which.

Usage::

    python benchmarks/graph_pairs.py          # CIFAR-10 JPEGs, N = 20, 50, 100, input + flatten
    python benchmarks/graph_pairs.py --data digits --sizes 20 30 --checkpoint /tmp/digits.ckpt
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import lightning as L
import torch

import connectivity
from connectivity.classifier import ClassifierModule
from connectivity.data import DigitsDataModule, ImageDataModule, ImageFolderDataModule
from connectivity.runs.inputs import ClassInputs, select_inputs

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["cifar10-jpeg", "digits"], default="cifar10-jpeg")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg"))
    parser.add_argument(
        "--checkpoint", default="lightning_logs/classifier/cifar10_jpeg_resnet18.ckpt"
    )
    parser.add_argument("--train-epochs", type=int, default=2, help="when no checkpoint exists")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="default: all")
    parser.add_argument("--spaces", nargs="+", default=["input", "flatten"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--num-pivots", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--max-tries", type=int, default=4, help="0: no limit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def datamodule(args: argparse.Namespace) -> ImageDataModule:
    if args.data == "digits":
        return DigitsDataModule()
    root = Path(args.root)
    return ImageFolderDataModule(train_root=str(root / "train"), test_root=str(root / "test"))


def classifier(args: argparse.Namespace, data: ImageDataModule) -> tuple[torch.nn.Module, str]:
    """The network, and how it was obtained (for the header)."""
    path = Path(args.checkpoint)
    if path.is_file():
        return ClassifierModule.from_checkpoint(path).network.eval(), f"checkpoint {path}"
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=args.train_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu" if args.device == "cpu" else "auto",
    )
    model = ClassifierModule(num_classes=data.num_classes, backbone="resnet18", lr=0.001)
    trainer.fit(model, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return model.network.eval(), f"trained here for {args.train_epochs} epochs, saved to {path}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = datamodule(args)
    network, origin = classifier(args, data)
    network = network.to(args.device)
    dataset = data.dataset("test")
    inputs = ClassInputs(per_class=max(args.sizes), classes=args.classes)
    selections = select_inputs([network], dataset, inputs, data.class_names, args.device)
    print(f"# connect_all: pairs decided vs N(N-1)/2 ({args.data})")
    print(
        f"data {args.data} (test split, correctly classified, seed 0); classifier: {origin}; "
        f"device {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    max_tries = args.max_tries or None
    options = {"steps": args.steps, "num_pivots": args.num_pivots, "lr": args.lr}
    print(f"path options {options}, max_tries {max_tries}\n")
    print(
        "| space | N | classes | pairs decided | all pairs | decided/all | rounds (max) "
        "| linear | nonlinear | not connected | components per class | wall s | pairs/s |"
    )
    print("|---|" + "---|" * 12)
    for space in args.spaces:
        for n in args.sizes:
            decided = all_pairs = rounds = linear = nonlinear = failed = 0
            components = []
            start = time.perf_counter()
            for selection in selections:
                indices = selection.indices[:n]
                images = torch.stack([dataset[i][0] for i in indices]).to(args.device)
                found = connectivity.connect_all(
                    network, space, images, selection.label, max_tries=max_tries, **options
                )
                decided += found.pairs_decided
                all_pairs += found.all_pairs
                rounds = max(rounds, len(found.rounds))
                verdicts = [r.verdict for r in found.edges.values()]
                linear += verdicts.count("linear")
                nonlinear += verdicts.count("nonlinear")
                failed += len(found.failed)
                sizes = "+".join(str(len(c)) for c in found.components)
                components.append(f"{data.class_names[selection.label]}:{sizes}")
            wall = time.perf_counter() - start
            sizes_n = {len(s.indices[:n]) for s in selections}
            shown_n = n if sizes_n == {n} else f"{n} (some {min(sizes_n)})"
            print(
                f"| {space} | {shown_n} | {len(selections)} | {decided} | {all_pairs} | "
                f"{decided / all_pairs:.3f} | {rounds} | {linear} | {nonlinear} | {failed} | "
                f"{' '.join(components)} | {wall:.1f} | {decided / wall:.2f} |",
                flush=True,
            )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\nload averages at the end: {load}")


if __name__ == "__main__":
    main()
