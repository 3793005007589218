"""What the path-run tests share: a small digits experiment and its configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from connectivity.data import DigitsDataModule
from connectivity.engine.options import PathOptions
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.networks import load_network
from connectivity.runs.pairs import PairSampling
from connectivity.runs.paths import Experiment

NO_WANDB = WandbOptions(enabled=False)
SPACES = ["input", "layer1", "flatten"]


def digits_experiment(classifier: Path, folder: Path, name: str, **kwargs) -> Experiment:
    defaults = {
        "spaces": SPACES,
        "pairs": PairSampling(count=6, seed=1),
        "path": PathOptions(num_pivots=4, steps=20),
        "output_dir": str(folder),
    }
    return Experiment(classifier=str(classifier), name=name, **{**defaults, **kwargs})


def digits_config(
    path: Path, classifier: Path, output: Path, name: str, count: int, spaces
) -> Path:
    path.write_text(
        f"name: {name}\nclassifier: {classifier}\noutput_dir: {output}\n"
        f"spaces: [{', '.join(spaces)}]\n"
        f"pairs: {{count: {count}, seed: 1}}\npath: {{num_pivots: 4, steps: 20}}\n"
        "data: {class_path: connectivity.data.DigitsDataModule}\nwandb: {enabled: false}\n"
    )
    return path


def pairs_config(
    folder: Path,
    classifier: Path,
    name: str,
    spaces: list[str],
    indices: list[list[int]],
    path: str,
    extra: str = "",
) -> Path:
    """A `paths` config of explicit pairs of the digits, without W&B."""
    config = folder / f"{name}.yaml"
    config.write_text(
        f"name: {name}\nclassifier: {classifier}\noutput_dir: {folder}\n"
        f"spaces: [{', '.join(spaces)}]\npairs: {{indices: {indices}}}\npath: {path}\n{extra}"
        "data: {class_path: connectivity.data.DigitsDataModule}\nwandb: {enabled: false}\n"
    )
    return config


def band_and_line_pairs(classifier: Path) -> list[list[int]]:
    """Two same-class test pairs: the first has a misclassified end, so its line never passes
    the check and its band runs every step; the second joins two correct images."""
    dataset = DigitsDataModule().dataset("test")
    network = load_network(str(classifier))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    with torch.no_grad():
        wrong = (network(images).argmax(dim=1) != labels).nonzero().squeeze(1).tolist()
    if not wrong:
        pytest.skip("the digits classifier classifies every test image correctly")
    bad = wrong[0]
    same = [i for i in range(len(dataset)) if labels[i] == labels[bad] and i != bad][:3]
    return [[bad, same[0]], [same[1], same[2]]]
