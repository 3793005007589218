"""The untrained baseline: networks that reproduce from their seed, pairs of their own
predictions, records apart from the trained network's, one run.json, the side-by-side table."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from connectivity.classifier import ClassifierModule
from connectivity.data import DigitsDataModule, stack_images
from connectivity.errors import ConnectivityError, OptionsError
from connectivity.reporting.baselines import QUANTITIES, mean_and_sd, summarise
from connectivity.runs.baselines import check_baseline, untrained_network
from connectivity.runs.pairs import PairSampling
from connectivity.runs.paths import run_paths
from connectivity.store.records import RunFolderError
from tests.runs.helpers import NO_WANDB, digits_experiment


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    mine, theirs = a.state_dict(), b.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_an_untrained_network_is_its_seeds_and_leaves_the_global_random_state(
    digits_classifier: Path,
) -> None:
    state = torch.random.get_rng_state()
    first, again = untrained_network(digits_classifier, 3), untrained_network(digits_classifier, 3)
    other = untrained_network(digits_classifier, 4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same_weights(first, again) and not _same_weights(first, other)
    trained = ClassifierModule.from_checkpoint(digits_classifier).network
    conv = trained.conv1.weight
    assert conv.shape == first.conv1.weight.shape and not torch.equal(conv, first.conv1.weight)
    # the input normalisation is the classifier's, not re-drawn
    assert torch.equal(first.normalize.std, trained.normalize.std)
    assert not first.training


def test_a_module_is_reset_by_its_own_reset_parameters_and_left_as_it_was() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    network[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    fresh = untrained_network(network, 1)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert network.training  # the caller's mode is left too
    assert _same_weights(fresh, untrained_network(network, 1))
    assert not torch.equal(fresh[0].weight, network[0].weight)
    assert torch.equal(fresh[1].running_mean, torch.zeros(8))


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.gain = nn.Parameter(torch.ones(3))  # nothing draws it again

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.gain


class _GainLinear(nn.Linear):
    """A linear layer whose own reset_parameters leaves its extra gain as it is."""

    def __init__(self) -> None:
        super().__init__(4, 3)
        self.gain = nn.Parameter(torch.full((3,), 123.0))


@pytest.mark.parametrize(("network", "name"), [(_Scaled(), "gain"), (_GainLinear(), "gain")])
def test_parameters_no_reset_draws_are_refused_by_name(network: nn.Module, name: str) -> None:
    with pytest.raises(ConnectivityError, match=rf"cannot re-initialise {name}: .*reset_paramet"):
        untrained_network(network, 0)


def test_seeds_out_of_the_generators_range_are_refused() -> None:
    with pytest.raises(OptionsError, match=r"from 0 to 2147483647"):
        check_baseline("untrained", [-1])
    with pytest.raises(OptionsError, match=r"from 0 to 2147483647"):
        check_baseline("untrained", [2**40])


@pytest.mark.parametrize(
    ("baseline", "seeds", "message"),
    [
        ("random", [0], r"baseline is 'random'; it must be one of \['untrained'\]"),
        ("untrained", [], r"baseline_seeds is \[\]"),
        ("untrained", [1, 1], r"baseline_seeds is \[1, 1\]; give .* distinct"),
        ("untrained", [0.5], r"baseline_seeds is \[0.5\]"),
        (None, [0, 1], r"baseline_seeds is \[0, 1\] but there is no baseline; add"),
    ],
)
def test_a_wrong_baseline_is_a_one_line_error(
    baseline: str | None, seeds: list, message: str
) -> None:
    with pytest.raises(OptionsError, match=message) as error:
        check_baseline(baseline, seeds)
    assert "\n" not in str(error.value)


def _record(verdict: str, target: int, barrier: float, margin: float, steps: int) -> dict:
    return {
        "verdict": verdict,
        "target": target,
        "barrier": barrier,
        "line_barrier": 2 * barrier,
        "min_margin": margin,
        "line_min_margin": margin - 1,
        "steps": steps,
        "length_ratio": 1.0 + steps / 100,
    }


def test_a_groups_summary_is_its_counts_and_medians() -> None:
    records = [
        _record("linear", 0, 0.0, 3.0, 0),
        _record("nonlinear", 0, 0.5, 1.0, 40),
        _record("none", 2, 1.5, -2.0, 100),
        _record("linear", 0, 0.1, 5.0, 0),
    ]
    values = dict(zip([name for name, _ in QUANTITIES], summarise(records), strict=True))
    assert values["pairs"] == 4 and values["classes"] == 2
    assert values["Linear path exists"] == 2 and values["No path found"] == 1
    assert values["connected (%)"] == 75.0
    assert values["median path barrier"] == pytest.approx(0.3)  # (0.1 + 0.5) / 2
    assert values["median line barrier"] == pytest.approx(0.6)
    assert values["median lowest path margin"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert values["median lowest line margin"] == pytest.approx(1.0)
    assert values["median steps"] == 20.0 and values["median length ratio"] == 1.2
    empty = summarise([])
    assert empty[0] == 0 and all(math.isnan(v) for v in empty[-6:])


def test_the_spread_over_seeds_is_the_mean_and_sample_deviation() -> None:
    means, sds = mean_and_sd([[1.0, math.nan], [3.0, 2.0], [5.0, math.nan]])
    assert means == [3.0, 2.0] and sds == [2.0, 0.0]


def test_a_run_with_the_untrained_baseline(digits_classifier: Path, tmp_path: Path) -> None:
    data = DigitsDataModule()
    plain = digits_experiment(
        digits_classifier,
        tmp_path,
        "base",
        spaces=["layer1"],
        pairs=PairSampling(count=3, seed=1),
        figures="none",
    )
    experiment = dataclasses.replace(plain, baseline="untrained", baseline_seeds=[0, 1])
    store = run_paths(experiment, data, wandb=NO_WANDB)
    assert store is not None
    manifest = json.loads((store.folder / "run.json").read_text())
    assert manifest["baseline"]["seeds"] == [0, 1]
    dataset = data.dataset("test")
    for seed in (0, 1):
        network = untrained_network(digits_classifier, seed)
        pairs = manifest["baseline"]["pairs"][str(seed)]
        assert len(pairs) == 3
        # same-class pairs for the untrained network: it puts both ends in the pair's class
        for pair in pairs:
            images, _ = stack_images(dataset, [pair["start_index"], pair["end_index"]])
            assert network(images).argmax(1).tolist() == [pair["label"]] * 2
        for space in ("layer1",):
            folder = store.records_dir / f"untrained_seed{seed}" / space
            assert sorted(p.name for p in folder.glob("pair_*.pt")) == [
                f"pair_{k:04d}.pt" for k in range(3)
            ]
            saved = [r["pair"] for r in store.load(f"untrained_seed{seed}/{space}")]
            assert [{**p, "adversarial": False} for p in pairs] == saved
    # the trained network's records are where they always were, and only its pairs
    assert {p.parent.name for p in store.records_dir.glob("*/pair_*.pt")} == {"layer1"}
    saved = [r["pair"] for r in store.load("layer1")]
    assert [{**p, "adversarial": False} for p in manifest["pairs"]] == saved
    table = (store.folder / "table.md").read_text()
    assert "untrained (2 seeds, mean ± sd)" in table and "### layer1" in table
    assert (store.folder / "figures" / "baselines.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(io.StringIO((store.folder / "baselines.csv").read_text())))
    groups = [(r["space"], r["group"]) for r in rows]
    assert groups == [
        (space, group)
        for space in ("layer1",)
        for group in (
            "trained",
            "untrained seed 0",
            "untrained seed 1",
            "untrained mean",
            "untrained sd",
        )
    ]
    assert all(float(r["pairs"]) == 3 for r in rows if r["group"] != "untrained sd")

    # a rerun without the baseline is the same experiment: nothing is decided again, and the
    # report keeps the baseline it has records of
    stamps = {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")}
    run_paths(plain, data, wandb=NO_WANDB)
    assert {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")} == stamps
    assert (store.folder / "table.md").read_text() == table
    # ... and a baseline cut short is finished by it, not reported short
    cut = store.records_dir / "untrained_seed1" / "layer1" / "pair_0002.pt"
    cut.unlink()
    run_paths(plain, data, wandb=NO_WANDB)
    assert cut.is_file() and (store.folder / "table.md").read_text() == table
    # other seeds are another baseline: refused, naming it
    experiment.baseline_seeds = [0, 2]
    with pytest.raises(RunFolderError, match=r"differs in: .*baseline"):
        run_paths(experiment, data, wandb=NO_WANDB)
