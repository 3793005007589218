"""The ``connectivity`` command as a user runs it, in-process (``main`` is the console script)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import wandb
import yaml
from lightning.pytorch.callbacks import Timer

import connectivity
from connectivity.classifier import ClassifierModule
from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.reporting.report import WandbOptions
from connectivity.runs.paths import Experiment
from tests.conftest import CONFIGS, LIBRARY_LINES, printed_lines

QUICK = str(CONFIGS / "classifier" / "quick.yaml")
PATHS_QUICK = str(CONFIGS / "paths" / "quick.yaml")
COMMANDS = ("fit", "validate", "test", "predict", "paths", "graph", "report", "quickstart")


def test_help_names_all_eight_commands_one_line_each(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for command in COMMANDS:
        # "    paths               Decide same-class pairs..." (help text on the same line)
        assert any(line.split()[:1] == [command] and len(line.split()) > 1 for line in lines), (
            command
        )


def test_report_help_names_the_quickstarts_folder_and_the_runs_decoders(
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help lines are wrapped anywhere
    assert "lightning_logs/quickstart/paths for `connectivity quickstart`" in out
    assert "the decoders the run was made with (its decoders.json)" in out
    assert "default: {}" not in out and "default: null" in out


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"connectivity {connectivity.__version__}"


@pytest.fixture
def ran_paths(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what ``connectivity paths`` hands to ``run_paths`` instead of running it."""
    calls: list[dict[str, Any]] = []

    def record(experiment, data, trainer=None, wandb=None, network=None) -> None:
        calls.append({"experiment": experiment, "data": data, "trainer": trainer, "wandb": wandb})

    monkeypatch.setattr("connectivity.cli.commands.run_paths", record)
    return calls


def test_paths_takes_the_full_trainer_arguments(ran_paths: list[dict[str, Any]]) -> None:
    main(
        [
            "paths",
            "-c",
            PATHS_QUICK,
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.devices",
            "[0]",
            "--trainer.num_nodes",
            "2",
            "--trainer.callbacks+=lightning.pytorch.callbacks.Timer",
            "--trainer.callbacks.duration",
            "00:00:01:00",
            "--wandb.enabled",
            "false",
            "--pairs.count",
            "3",
        ]
    )
    (call,) = ran_paths
    assert isinstance(call["experiment"], Experiment)
    assert call["experiment"].pairs.count == 3 and call["experiment"].name == "paths"
    assert isinstance(call["data"], DigitsDataModule)
    assert call["wandb"] == WandbOptions(enabled=False)
    trainer = call["trainer"]
    # Only what was given: run_paths keeps its own defaults and logging settings.
    assert set(trainer) == {"precision", "devices", "num_nodes", "callbacks"}
    assert trainer["precision"] == "bf16-mixed" and trainer["devices"] == [0]
    assert trainer["num_nodes"] == 2
    (timer,) = trainer["callbacks"]
    assert isinstance(timer, Timer)  # instantiated, as LightningCLI does for fit


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--path.lr", "abc"), ("--pairs.count", "2.5"), ("--path.bounds", "[0,nan]")],
)
def test_a_wrong_value_is_one_line(
    flag: str, value: str, ran_paths: list, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["paths", "-c", PATHS_QUICK, flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"connectivity: error: {flag}:"), err
    assert value.strip("[]").split(",")[-1] in err
    assert not ran_paths


def test_verbose_after_the_command_says_where_it_goes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", "--verbose"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "connectivity --verbose <command>" in err, err


def test_quick_classifier_fast_dev_run_and_verbose_shows_lightning_lines(
    in_tmp: Path,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
    main(["--verbose", "fit", "-c", QUICK, "--trainer.fast_dev_run", "true"])
    lines = printed_lines(capfd, caplog, recwarn)
    for words in ("Seed set to 0", "GPU available", "`Trainer.fit` stopped"):
        assert any(words in line for line in lines), (words, lines)


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


@pytest.mark.parametrize(
    ("command", "flag", "value", "instead"),
    [
        ("paths", "max_steps", "3", "--path.steps"),
        ("graph", "max_steps", "3", "--path.steps"),
        ("paths", "max_epochs", "5", "--path.steps"),
        ("graph", "limit_train_batches", "0.5", "--path.steps"),
        ("paths", "gradient_clip_val", "0.5", "--path.max_step"),
        ("graph", "val_check_interval", "2", "no validation loop"),
    ],
)
def test_trainer_arguments_the_experiment_owns_are_refused(
    command: str,
    flag: str,
    value: str,
    instead: str,
    in_tmp: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    config = str(CONFIGS / command / "quick.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "-c", config, f"--trainer.{flag}", value, "--wandb.enabled", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"connectivity: error: --trainer.{flag} {value} is not honoured"), err
    assert instead in err
    # Refused before the classifier checkpoint is even looked for, so before any folder.
    assert not (in_tmp / "lightning_logs").exists()


def test_trainer_arguments_at_their_effective_defaults_are_not_refused() -> None:
    # limit_train_batches=None means all batches: 1.0 (and 1) say the same and are honoured.
    from connectivity.errors import OptionsError
    from connectivity.runs.trainer import check_trainer_arguments

    check_trainer_arguments({"limit_train_batches": 1.0, "max_epochs": 1})
    check_trainer_arguments({"limit_train_batches": 1})
    with pytest.raises(OptionsError, match=r"--trainer.limit_train_batches 0.5 is not honoured"):
        check_trainer_arguments({"limit_train_batches": 0.5})
