"""The ``connectivity`` command as a user runs it, in-process (``main`` is the console script)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import Timer

import connectivity
from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.paths import Experiment
from tests.conftest import CONFIGS, printed_lines

QUICK = str(CONFIGS / "classifier" / "quick.yaml")
PATHS_QUICK = str(CONFIGS / "paths" / "quick.yaml")
COMMANDS = (
    *("fit", "validate", "test", "predict"),
    *("paths", "graph", "surfaces", "report", "quickstart"),
)


def test_help_names_all_nine_commands_one_line_each(capsys: pytest.CaptureFixture) -> None:
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
