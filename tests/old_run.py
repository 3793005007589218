"""A small path run written by the code of 2026-12-06 (before the redesign of issue 20), kept
in ``tests/data/run_2026-12-06`` so that later code is tested against a folder it did not
write. Run as ``python -m tests.old_run`` to see how it was made (it refuses to overwrite).

As a run killed before its last pair in space ``2``: that pair's record is moved to
``tests/data/run_2026-12-06_space_2_pair_0002.pt`` (what the older code decided), and the
report's files are removed.

The classifier is a module built from fixed numbers (no checkpoint to commit): a two-layer ReLU
network on the digits' images at their own 8x8 size, its weights drawn from a seeded generator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from connectivity.engine.options import PathOptions
from connectivity.runs.pairs import PairSampling
from connectivity.runs.paths import Experiment

FOLDER = Path(__file__).resolve().parent / "data" / "run_2026-12-06"
# Same-label pairs of the digits' test split (labels 6, 5 and 0).
INDICES = [(0, 8), (1, 2), (11, 37)]


def classifier() -> nn.Module:
    """The run's classifier, the same numbers on every machine (a generator's stream)."""
    generator = torch.Generator().manual_seed(2026)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_((torch.rand(parameter.shape, generator=generator) - 0.5) * 0.2)
    return network.eval()


def experiment(output_dir: Path) -> Experiment:
    return Experiment(
        classifier="in-memory module (tests/old_run.py)",
        name=FOLDER.name,
        spaces=["input", "2"],
        pairs=PairSampling(indices=INDICES, correctly_classified=False),
        path=PathOptions(num_pivots=4, steps=5),
        output_dir=str(output_dir),
        figures="none",
    )


def main() -> None:
    from connectivity.data import DigitsDataModule
    from connectivity.reporting.wandb_log import WandbOptions
    from connectivity.runs.paths import run_paths

    if FOLDER.exists():
        sys.exit(f"{FOLDER} exists: it is test data of older code, not to be rewritten")
    run_paths(
        experiment(FOLDER.parent),
        DigitsDataModule(size=8),
        wandb=WandbOptions(enabled=False),
        network=classifier(),
    )


if __name__ == "__main__":
    main()
