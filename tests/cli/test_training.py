"""Training through LightningCLI (``connectivity fit``): each run in its own folder with its
resolved config and checkpoints, one line for its W&B run, no library lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import wandb
import yaml

from connectivity.classifier import ClassifierModule
from connectivity.cli.main import main
from tests.conftest import CONFIGS, LIBRARY_LINES, printed_lines

QUICK = str(CONFIGS / "classifier" / "quick.yaml")


def test_fit_with_offline_wandb_leaves_a_checkpoint_and_a_run(
    in_tmp: Path,
    users_shell: None,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
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
    for _ in range(2):  # a second run must not trip over the first run's saved config
        main(args)
        wandb.finish()  # as the end of a process does: the next run is a new W&B run
    runs = sorted((in_tmp / "lightning_logs" / "connectivity").iterdir())
    assert len(runs) == 2
    # Per run, one line for its W&B run (4 steps: no validation, so no best checkpoint) and no
    # library line: the first run started W&B in a fresh folder, where it warned of its git root.
    lines = printed_lines(capfd, caplog, recwarn)
    offline = "W&B run (offline): upload it with `wandb sync lightning_logs/wandb/offline-run-"
    assert sum(line.startswith(offline) for line in lines) == 2, lines
    assert not [line for line in lines if any(words in line for words in LIBRARY_LINES)]
    for run in runs:
        assert (run / "config.yaml").is_file()
        checkpoint = run / "checkpoints" / "last.ckpt"
        module = ClassifierModule.from_checkpoint(checkpoint)
        assert module.hparams.backbone == "resnet18"
    offline = list((in_tmp / "lightning_logs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    assert all(list(run.glob("*.wandb")) for run in offline)


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
