"""A path run stopped or killed part-way, resumed: intact records, bands continued from their
checkpoints, damaged records decided again; another experiment never reuses a folder."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.runs.paths import run_paths
from connectivity.store.records import RunFolderError, RunStore
from tests.conftest import REPO
from tests.runs.helpers import (
    NO_WANDB,
    band_and_line_pairs,
    digits_config,
    digits_experiment,
    pairs_config,
)


def test_a_changed_experiment_does_not_reuse_a_folder(
    digits_classifier: Path, tmp_path: Path
) -> None:
    data = DigitsDataModule()
    run_paths(
        digits_experiment(digits_classifier, tmp_path, "c", spaces=["flatten"]),
        data,
        wandb=NO_WANDB,
    )
    with pytest.raises(RunFolderError, match=r"different experiment.*spaces"):
        run_paths(
            digits_experiment(digits_classifier, tmp_path, "c", spaces=["input"]),
            data,
            wandb=NO_WANDB,
        )


@pytest.mark.slow  # ~27 s: two whole runs; a real SIGKILL mid-band is tested fast below
def test_killed_run_keeps_intact_records_and_resumes(
    digits_classifier: Path, tmp_path: Path
) -> None:
    spaces = ["input", "layer2", "flatten"]
    config = digits_config(tmp_path / "kill.yaml", digits_classifier, tmp_path, "k", 12, spaces)
    command = [sys.executable, "-m", "connectivity.cli", "paths", "-c", str(config)]
    records = tmp_path / "k" / "records"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(records.rglob("pair_*.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = list(records.rglob("pair_*.pt"))
    assert 0 < len(written) < 12 * len(spaces), "the kill should land part-way"
    for file in written:  # every record on disk is whole
        torch.load(file, weights_only=True)

    main(["paths", "-c", str(config)])
    uninterrupted = digits_config(
        tmp_path / "whole.yaml", digits_classifier, tmp_path, "w", 12, spaces
    )
    main(["paths", "-c", str(uninterrupted)])
    assert (tmp_path / "k" / "table.md").read_text() == (tmp_path / "w" / "table.md").read_text()
    resumed, whole = RunStore(tmp_path / "k"), RunStore(tmp_path / "w")
    for space in spaces:
        a, b = resumed.load(space), whole.load(space)
        assert [r["verdict"] for r in a] == [r["verdict"] for r in b]
        assert all(
            torch.allclose(x["path"], y["path"], atol=1e-5) for x, y in zip(a, b, strict=True)
        )


def test_a_band_killed_mid_way_continues_from_its_checkpoint(
    digits_classifier: Path, tmp_path: Path
) -> None:
    # A pair with a misclassified end never passes the check: its band runs all its steps.
    indices = band_and_line_pairs(digits_classifier)

    path = "{num_pivots: 4, steps: 60, converge: true, tol: 0.0}"

    def config(name: str) -> Path:
        return pairs_config(
            tmp_path, digits_classifier, name, ["input"], indices, path, "checkpoint_every: 10\n"
        )

    # Killed for real (SIGKILL) after band step 35; checkpoints every 10: the last at 30.
    kill = "[{class_path: tests.toy.KillAfterBandStep, init_args: {step: 35}}]"
    command = [sys.executable, "-m", "connectivity.cli", "paths", "-c", str(config("k"))]
    done = subprocess.run(
        [*command, "--trainer.callbacks", kill], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    checkpoint = tmp_path / "k" / "bands" / "input" / "rank0.pt"
    before = torch.load(checkpoint, weights_only=True)["steps"]
    assert before == 30
    band_pair = 0  # the pair with the misclassified end
    assert not RunStore(tmp_path / "k").record_path("input", band_pair).exists()

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["paths", "-c", str(config("k"))])
    assert f"band continued from its checkpoint at step {before}" in out.getvalue()
    assert not checkpoint.exists()  # the band is done: its checkpoint is gone
    main(["paths", "-c", str(config("w"))])
    resumed, whole = RunStore(tmp_path / "k").load("input"), RunStore(tmp_path / "w").load("input")
    for a, b in zip(resumed, whole, strict=True):
        assert (a["verdict"], a["steps"]) == (b["verdict"], b["steps"])
        assert torch.equal(a["path"], b["path"])
    assert resumed[band_pair]["steps"] == 60 and resumed[band_pair]["verdict"] == "none"


def test_a_damaged_record_is_named_by_report_and_decided_again_on_resume(
    digits_classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = digits_config(tmp_path / "g.yaml", digits_classifier, tmp_path, "g", 3, ["input"])
    main(["paths", "-c", str(config)])
    # A band bar only for a band that runs: none when the line check decides all.
    out = capsys.readouterr().out
    linear = int(re.search(r"input: line check: (\d) of 3 pairs linear", out).group(1))
    assert ("input band" in out) == (linear < 3), out
    table = (tmp_path / "g" / "table.md").read_text()
    store = RunStore(tmp_path / "g")
    damaged = store.record_path("input", 1)
    before = store.load("input")[1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(store.folder)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(damaged) in err[0] and "Rerun the same config" in err[0]

    with pytest.warns(RuntimeWarning, match=r"pair_0001\.pt cannot be read"):
        main(["paths", "-c", str(config)])
    assert (tmp_path / "g" / "table.md").read_text() == table
    after = store.load("input")[1]
    assert after["pair"] == before["pair"] and after["verdict"] == before["verdict"]
    assert torch.allclose(after["path"], before["path"], atol=1e-5)
    assert len(list(damaged.parent.glob("pair_0001.pt.damaged-*"))) == 1
