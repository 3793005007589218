"""The experiment commands (``paths``, ``graph``) built from their configs, and ``report``
sent to the report of the run folder's kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectivity.cli.commands import GraphCommand, PathsCommand, graph_parser, report
from connectivity.data import DigitsDataModule
from connectivity.errors import OptionsError
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.graph import GraphExperiment
from connectivity.runs.paths import Experiment
from connectivity.store.records import RunStore
from tests.conftest import CONFIGS


def _recorder(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple]:
    calls: list[tuple] = []
    monkeypatch.setattr(f"connectivity.cli.commands.{name}", lambda *a, **k: calls.append((a, k)))
    return calls


def test_a_graph_config_becomes_its_experiment_data_given_trainer_arguments_and_wandb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = graph_parser()
    quick = str(CONFIGS / "graph" / "quick.yaml")
    given = ["--trainer.precision", "64", "--wandb.offline", "false", "--round_size", "7"]
    config = parser.parse_args(["-c", quick, *given])
    command = GraphCommand.from_config(parser, config)
    assert isinstance(command.experiment, GraphExperiment) and command.experiment.round_size == 7
    assert isinstance(command.data, DigitsDataModule)
    assert command.trainer == {"precision": 64}  # only what was given
    assert command.wandb == WandbOptions(offline=False)
    calls = _recorder(monkeypatch, "run_graph")
    command.run()
    ((arguments, _),) = calls
    assert arguments == (command.experiment, command.data, command.trainer, command.wandb)


def test_a_paths_config_file_becomes_a_paths_command(monkeypatch: pytest.MonkeyPatch) -> None:
    command = PathsCommand.from_file(CONFIGS / "paths" / "quick.yaml")
    assert isinstance(command.experiment, Experiment) and command.trainer == {}
    calls = _recorder(monkeypatch, "run_paths")
    command.run()
    assert calls[0][0][0] is command.experiment


def test_report_writes_the_report_of_the_folders_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths_reports = _recorder(monkeypatch, "write_report")
    graph_reports = _recorder(monkeypatch, "write_graph_report")
    graph = RunStore(tmp_path / "graph")
    graph.start({"kind": "graph"})
    report(str(graph.folder))
    ((arguments, options),) = graph_reports
    assert arguments[0].folder == graph.folder and options["wandb"] == WandbOptions()
    paths = RunStore(tmp_path / "paths")
    paths.start({"spaces": ["input"]})
    paths.save_decoders({"layer1": "decoder.ckpt"})
    report(str(paths.folder), figures="all", wandb=WandbOptions(enabled=False))
    ((arguments, options),) = paths_reports
    assert options["decoders"] == {"layer1": str(Path("decoder.ckpt").resolve())}
    assert options["figures"] == "all" and options["wandb"] == WandbOptions(enabled=False)


def test_report_refuses_a_bad_figures_value_before_reading_the_folder(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="figures must be one of"):
        report(str(tmp_path / "absent"), figures="every")
