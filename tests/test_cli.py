"""`connectivity fit` through the CLI, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from connectivity.classifier import ClassifierModule
from connectivity.cli import main
from tests.conftest import CONFIGS

QUICK = str(CONFIGS / "classifier" / "quick.yaml")


def test_quick_classifier_fast_dev_run(in_tmp: Path) -> None:
    main(["fit", "-c", QUICK, "--trainer.fast_dev_run", "true"])


def test_fit_with_offline_wandb_leaves_a_checkpoint_and_a_run(in_tmp: Path) -> None:
    args = [
        "fit",
        "-c",
        QUICK,
        "--trainer.max_steps",
        "4",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    for _ in range(2):  # a second run must not trip over the first run's saved config
        done = subprocess.run(
            [sys.executable, "-m", "connectivity.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((in_tmp / "lightning_logs" / "connectivity").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "config.yaml").is_file()
        checkpoint = run / "checkpoints" / "last.ckpt"
        module = ClassifierModule.from_checkpoint(checkpoint)
        assert module.hparams.backbone == "resnet18"
    offline = list((in_tmp / "lightning_logs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    assert all(list(run.glob("*.wandb")) for run in offline)


def test_missing_data_is_one_clear_error(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    config = in_tmp / "cifar.yaml"
    config.write_text(
        "model:\n  class_path: connectivity.classifier.ClassifierModule\n"
        "  init_args: {backbone: resnet18}\n"
        "data:\n  class_path: connectivity.data.CIFAR10DataModule\n"
        "  init_args: {data_dir: missing_cifar, download: false}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(config), "--trainer.logger", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "missing_cifar" in err and "download" in err
    assert "Traceback" not in err


def test_runs_without_a_logger_never_share_a_folder(in_tmp: Path) -> None:
    for lr in ("0.01", "0.002"):
        main(
            [
                "fit",
                "-c",
                QUICK,
                "--trainer.logger",
                "false",
                "--model.init_args.lr",
                lr,
                "--trainer.max_steps",
                "1",
                "--trainer.limit_val_batches",
                "1",
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
    root = in_tmp / "lightning_logs"
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    assert not (in_tmp / "checkpoints").exists() and not (in_tmp / "config.yaml").exists()
    for version, lr in (("version_0", 0.01), ("version_1", 0.002)):
        config = yaml.safe_load((root / version / "config.yaml").read_text())
        assert config["model"]["init_args"]["lr"] == lr
        checkpoints = sorted(p.name for p in (root / version / "checkpoints").iterdir())
        assert checkpoints == ["last.ckpt"]  # one step: no validation yet, so no "best"
        module = ClassifierModule.from_checkpoint(root / version / "checkpoints" / "last.ckpt")
        assert module.hparams.lr == lr
