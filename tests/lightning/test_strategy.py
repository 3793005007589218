"""Path runs on several ranks: ``ddp_pairs`` is registered wherever a run can start, gives the
single-process records, and plain DDP is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import StrategyRegistry

from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.errors import ConnectivityError
from connectivity.lightning.strategy import PairsDDPStrategy
from connectivity.runs.paths import run_paths
from connectivity.store.records import RunStore
from tests.runs.helpers import NO_WANDB, band_and_line_pairs, digits_experiment, pairs_config
from tests.test_imports import import_graph  # the package's own import graph


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_find_unused_parameters_true"])
def test_plain_ddp_is_refused_before_any_work(
    digits_classifier: Path, tmp_path: Path, strategy: str
) -> None:
    trainer = {"accelerator": "cpu", "devices": 2, "strategy": strategy}
    with pytest.raises(ConnectivityError, match=r"overwrite every rank's pivots.*ddp_pairs"):
        run_paths(
            digits_experiment(digits_classifier, tmp_path, "x"),
            DigitsDataModule(),
            trainer=trainer,
            wandb=NO_WANDB,
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # about 17 s: two processes; the default run covers the take-over of band
# checkpoints by other ranks in one process (tests/runs/test_takeover.py) and the ends' batch
# independence (test_a_pairs_ends_do_not_depend_on_the_other_pairs_of_its_rank)
def test_two_process_ddp_pairs_gives_the_single_process_records(
    digits_classifier: Path, tmp_path: Path
) -> None:
    # Rank 0 gets a pair whose band runs every step, rank 1 one the line decides at once: the
    # ranks must stop together (Lightning runs a collective in every training step).
    spaces = ["input", "flatten"]
    indices = band_and_line_pairs(digits_classifier)

    # SGD: a step proportional to the force, so rounding differences of another batch
    # composition stay rounding-sized (Adam divides near-zero force components by their own
    # size and can turn them into whole steps).
    path = "{num_pivots: 4, steps: 20, tol: 0.0, optimizer: sgd, lr: 0.01}"

    def config(name: str) -> Path:
        return pairs_config(tmp_path, digits_classifier, name, spaces, indices, path)

    single, double = config("one"), config("two")
    main(["paths", "-c", str(single), "--trainer.accelerator", "cpu"])  # in this process
    run_paths_cli = [sys.executable, "-m", "connectivity.cli", "paths"]
    two_ranks = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    done = subprocess.run(
        [*run_paths_cli, "-c", str(double), *two_ranks, "--trainer.strategy", "ddp_pairs"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "one" / "table.md").read_text() == (
        tmp_path / "two" / "table.md"
    ).read_text()
    one, two = RunStore(tmp_path / "one"), RunStore(tmp_path / "two")
    assert [r["steps"] for r in two.load("input")] == [20, 0]  # a band ran on rank 0 only
    eps = torch.finfo(torch.float32).eps
    for space in spaces:
        for a, b in zip(one.load(space), two.load(space), strict=True):
            assert (a["pair"], a["verdict"], a["steps"]) == (b["pair"], b["verdict"], b["steps"])
            # Each pair's ends go through the head in a batch of their own two images, on any
            # number of ranks, so the ends, and with them the bands, are the same computation
            # (bit for bit on this CPU). Left open: a kernel's reduction order can follow the
            # threads per process (2 here, 1 per rank there): a few float32 eps of the largest
            # value. Ends computed in batches of other pairs (1 here, 2 there) differed by
            # about 6 eps of the largest value (4e-6 at values up to 5.7).
            for key in ("line", "path"):
                bound = 4 * eps * float(a[key].abs().max())
                assert float((a[key] - b[key]).abs().max()) <= bound, (space, key)


def test_ddp_pairs_is_registered_wherever_a_run_or_the_cli_is_imported() -> None:
    graph = import_graph()

    def reaches(module: str, seen: set[str]) -> bool:
        if module == "connectivity.lightning.strategy":
            return True
        seen.add(module)
        return any(reaches(m, seen) for m in graph[module] - seen)

    # Importing the strategy's module registers it: every entry point imports it.
    for entry in ("connectivity.runs.paths", "connectivity.runs.graph", "connectivity.cli.main"):
        assert reaches(entry, set()), entry
    for name, start in (("ddp_pairs", "popen"), ("ddp_pairs_spawn", "spawn")):
        assert StrategyRegistry[name]["strategy"] is PairsDDPStrategy
        assert StrategyRegistry[name]["init_params"] == {"start_method": start}
