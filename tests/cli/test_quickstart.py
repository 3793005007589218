"""`connectivity quickstart`: its stage logic (fast, stage runners replaced) and one real run.

No wall-clock assertions (machines are shared and noisy): the README reports measured times.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectivity.cli import quickstart as quickstart_module
from connectivity.cli.main import main
from connectivity.reporting.drawing import figures_to_draw
from connectivity.store.records import RunStore, figure_name


class FakeStages:
    """Stand-ins for the quickstart's two stage runners: they record each call and write the
    files a real stage leaves (a checkpoint; a decided table), nothing else."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.weights = b"classifier v1"
        monkeypatch.setattr(quickstart_module, "_fit", self.fit)
        monkeypatch.setattr(quickstart_module, "_run_paths", self.run_paths)

    def fit(self, config: Path, target: Path, classifier: Path | None = None) -> dict:
        self.calls.append(target.stem)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.weights if classifier is None else b"decoder")
        return {"checkpoint": str(target)}

    def run_paths(self, config: Path, classifier: Path, decoders: dict, run: Path) -> None:
        self.calls.append("paths")
        assert config.name == "quick.yaml" and set(decoders) == {"layer1", "flatten"}
        assert all(Path(d).is_file() for d in decoders.values()) and classifier.is_file()
        run.mkdir(parents=True)
        (run / "table.md").write_text("| | input |\n")


STAGES = ["classifier", "decoder_layer1", "decoder_flatten", "paths"]


def test_stages_done_are_reused_and_a_new_classifier_redoes_the_rest(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    stages = FakeStages(monkeypatch)
    folder = in_tmp / "qs"
    summary = quickstart_module.quickstart(str(folder))
    assert stages.calls == STAGES
    assert set(summary) == {"classifier", "decoder layer1", "decoder flatten", "paths"}
    assert json.loads((folder / "summary.json").read_text()) == summary

    stages.calls.clear()
    quickstart_module.quickstart(str(folder))
    assert stages.calls == []  # every stage found done
    assert capsys.readouterr().out.count("done before, reused") == 4

    # Another classifier (retrained by hand, say): its decoders and pairs are stale.
    (folder / "classifier.ckpt").write_bytes(b"classifier v2")
    quickstart_module.quickstart(str(folder))
    assert stages.calls == STAGES[1:]
    assert len(list(folder.glob("paths.stale-*"))) == 1  # old results kept aside
    assert "moved to" in capsys.readouterr().out

    # An interrupted decoder stage (no checkpoint) runs again, and only it.
    stages.calls.clear()
    (folder / "decoder_flatten.ckpt").unlink()
    quickstart_module.quickstart(str(folder))
    assert stages.calls == ["decoder_flatten"]


@pytest.mark.slow  # ~2 min on 2 cores; the stage logic is tested fast above, the pieces elsewhere
def test_quickstart_runs_every_stage_then_reuses_them(in_tmp: Path) -> None:
    main(["quickstart"])
    folder = in_tmp / "lightning_logs" / "quickstart"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary) == {"classifier", "decoder layer1", "decoder flatten", "paths"}
    # issue 2: the quick classifier reaches at least 95% test accuracy
    assert summary["classifier"]["test"]["test/acc"] >= 0.95
    for layer in ("layer1", "flatten"):
        assert (folder / f"decoder_{layer}.ckpt").is_file()
    store = RunStore(folder / "paths")
    for space in ("input", "layer1", "flatten"):
        assert store.done(space) == set(range(50))
    # issue 19: the figures worth a look (figures: auto), not all 450
    drawn = {p.relative_to(store.folder) for p in store.folder.glob("figures/*/pair_*.png")}
    auto = figures_to_draw(store.load_all(), "auto")
    assert drawn == {Path(figure_name(*key)) for key in auto}
    # issues 10 and 19: the embedded default shows several bent paths in the input space, and
    # the example figure is one of them
    assert sum(r["verdict"] == "nonlinear" for r in store.load("input")) >= 3
    example = quickstart_module.example_figure(store)
    assert example is not None and (folder / "example.png").read_bytes() == example.read_bytes()
    assert (store.folder / "index.html").is_file() and (store.folder / "pairs.csv").is_file()
    table = (store.folder / "table.md").read_text()
    assert table.count("|") > 20 and "Not yet decided" not in table
    assert len(list((in_tmp / "lightning_logs" / "wandb").glob("offline-run-*"))) == 3
    assert len(list((store.folder / "wandb").glob("offline-run-*"))) == 1

    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    main(["quickstart"])  # every stage is reused: no file is written again
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps


def test_the_example_figure_is_the_deepest_dip_the_run_bent(tmp_path: Path) -> None:
    from connectivity.reporting.report import write_report
    from connectivity.store.records import figure_name
    from tests.reporting.folders import run_folder as _run_folder

    store = _run_folder(tmp_path / "run")  # input pair 0's line crosses the hole, pair 1's not
    assert quickstart_module.example_figure(store) is None  # nothing drawn yet
    write_report(store, figures="auto")
    assert [r["verdict"] for r in store.load("input")] == ["nonlinear", "linear"]
    assert quickstart_module.example_figure(store) == store.folder / figure_name("input", 0)
