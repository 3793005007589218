"""Path runs end to end: records, table and figures, what the command prints, errors, the
caller's network, the manifest."""

from __future__ import annotations

import csv
import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from connectivity.checkpoints import CheckpointError
from connectivity.classifier import ClassifierModule
from connectivity.cli.main import main
from connectivity.data import CIFAR10DataModule, DigitsDataModule, stack_images
from connectivity.engine.options import PathOptions
from connectivity.engine.split import split
from connectivity.reporting.drawing import figures_to_draw
from connectivity.reporting.report import write_report
from connectivity.reporting.wandb_log import WandbOptions, offline_run_records
from connectivity.runs.networks import load_network
from connectivity.runs.pairs import PairSampling, select_pairs
from connectivity.runs.paths import encode_each_pair, manifest, options_in_space, run_paths
from connectivity.store.records import RunFolderError, RunStore, figure_name
from tests.conftest import LIBRARY_LINES, printed_lines
from tests.runs.helpers import (
    NO_WANDB,
    SPACES,
    band_and_line_pairs,
    digits_config,
    digits_experiment,
    pairs_config,
)


def test_run_writes_records_table_and_figures_and_resumes(
    digits_classifier: Path, tmp_path: Path
) -> None:
    data = DigitsDataModule()
    store = run_paths(digits_experiment(digits_classifier, tmp_path, "a"), data, wandb=NO_WANDB)
    assert store is not None
    for space in SPACES:
        assert store.done(space) == set(range(6))
        record = store.load(space)[0]
        # both ends correctly classified digits of one class: the line stays in the class
        assert record["verdict"] == "linear" and record["steps"] == 0
        assert torch.equal(record["path"], record["line"])
        assert record["path"].shape[0] == 6  # 4 pivots + 2 ends
    # a latent space's record keeps the pair's two inputs (uint8) for its figure
    dataset = data.dataset(digits_experiment(digits_classifier, tmp_path, "a").pairs.split)
    for space in SPACES:
        record = store.load(space)[0]
        if space == "input":
            assert "end_images" not in record
            continue
        pair = record["pair"]
        ends = stack_images(dataset, [pair["start_index"], pair["end_index"]])[0]
        assert record["end_images"].dtype == torch.uint8
        assert torch.equal(record["end_images"], (ends * 255).round().to(torch.uint8))
    # figures: auto (every pair off the line, the closest linear calls), each a real image
    drawn = {p.relative_to(store.folder) for p in store.folder.glob("figures/*/*.png")}
    auto = figures_to_draw(store.load_all(), "auto")
    assert drawn == {Path(figure_name(*key)) for key in auto} and len(drawn) >= len(SPACES) * 3
    assert all((store.folder / p).stat().st_size > 1000 for p in drawn)
    table = (store.folder / "table.md").read_text()
    assert "| Linear path exists |" in table and "input" in table
    csv_rows = (store.folder / "table.csv").read_text().splitlines()
    assert csv_rows[0] == "space,check,linear,nonlinear,none,diverged"
    # per space: all verdicts, pivots-only verdicts, and the verdicts per certificate
    assert len(csv_rows) == 1 + 5 * len(SPACES)  # dense, pivots, exact, bounds, sampled
    totals: dict[tuple[str, str], int] = {}
    for row in csv_rows[1:]:
        space, check, *counts = row.split(",")
        totals[space, check] = sum(map(int, counts))
    for space in SPACES:
        assert totals[space, "dense"] == totals[space, "pivots"] == 6
        assert totals[space, "exact"] + totals[space, "sampled"] == 6

    stamps = {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")}
    run_paths(digits_experiment(digits_classifier, tmp_path, "a"), data, wandb=NO_WANDB)
    assert {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")} == stamps
    assert (store.folder / "table.md").read_text() == table

    (store.folder / "table.md").unlink()
    write_report(store, figures="none")
    assert (store.folder / "table.md").read_text() == table

    # same config and seed under another name: the same pairs and verdicts
    other = run_paths(digits_experiment(digits_classifier, tmp_path, "b"), data, wandb=NO_WANDB)
    for space in SPACES:
        mine = [(r["pair"], r["verdict"], r["pivot_verdict"]) for r in store.load(space)]
        theirs = [(r["pair"], r["verdict"], r["pivot_verdict"]) for r in other.load(space)]
        assert mine == theirs


class NaNAwayFromData(nn.Module):
    """The classifier, except that its logits are NaN for points of one class that are no
    dataset image: the line between two of that class leaves the data at once, and its band
    diverges."""

    def __init__(self, network: nn.Module, anchors: torch.Tensor, trapped: int) -> None:
        super().__init__()
        self.network = network
        self.trapped = trapped
        self.register_buffer("anchors", anchors.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        distance = torch.cdist(x.flatten(1), self.anchors).amin(dim=1, keepdim=True)
        trap = (distance > 1e-4) & (logits.argmax(dim=1, keepdim=True) == self.trapped)
        return torch.where(trap, torch.full_like(logits, float("nan")), logits)


def test_diverged_pairs_get_their_own_column_and_the_run_goes_on(
    digits_classifier: Path, tmp_path: Path
) -> None:
    data = DigitsDataModule()
    dataset = data.dataset("test")
    anchors = torch.stack([dataset[i][0] for i in range(len(dataset))])
    sampling = PairSampling(count=8, seed=0)
    plain = load_network(str(digits_classifier))
    trapped = select_pairs(plain, dataset, sampling, data.class_names)[0].label
    network = NaNAwayFromData(plain, anchors, trapped)
    experiment = digits_experiment(
        digits_classifier, tmp_path, "nan", spaces=["input"], pairs=sampling
    )
    store = run_paths(experiment, data, wandb=NO_WANDB, network=network)
    records = store.load("input")
    verdicts = {r["pair"]["id"]: r["verdict"] for r in records}
    zeros = [r["pair"]["id"] for r in records if r["target"] == trapped]
    assert all(verdicts[k] == "diverged" for k in zeros)
    assert all(v != "diverged" for k, v in verdicts.items() if k not in zeros)
    assert f"| Diverged | {len(zeros)} ({len(zeros)}) |" in (store.folder / "table.md").read_text()


def test_cli_errors_are_clear(
    digits_classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = digits_config(tmp_path / "e.yaml", digits_classifier, tmp_path, "e", 2, ["layer9"])
    with pytest.raises(SystemExit):
        main(["paths", "-c", str(config)])
    err = capsys.readouterr().err
    assert "'layer9' is not a layer" in err and "layer1" in err and "Traceback" not in err

    config = digits_config(
        tmp_path / "m.yaml", tmp_path / "nothing.ckpt", tmp_path, "m", 2, ["input"]
    )
    with pytest.raises(SystemExit):
        main(["paths", "-c", str(config)])
    err = capsys.readouterr().err
    assert "nothing.ckpt" in err and "connectivity fit" in err

    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "not_a_run")])
    assert "no run.json" in capsys.readouterr().err


def test_missing_checkpoint_error_names_a_command_that_makes_that_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"configs/classifier/<config>\.yaml.*--classifier"):
        ClassifierModule.from_checkpoint(tmp_path / "x.ckpt")
    # The configs' fixed paths name the command that writes exactly that file.
    quick = tmp_path / "lightning_logs" / "quickstart" / "classifier.ckpt"
    with pytest.raises(CheckpointError, match="`connectivity quickstart` writes it"):
        ClassifierModule.from_checkpoint(quick)
    cifar = tmp_path / "cifar10_jpeg_resnet18.ckpt"
    with pytest.raises(CheckpointError, match=r"fit -c configs/classifier/cifar10_jpeg_resnet18"):
        ClassifierModule.from_checkpoint(cifar)
    # A typo of a file that is there names that file, and no copy to the misspelled name.
    quick.parent.mkdir(parents=True)
    quick.write_bytes(b"")
    (quick.parent / "decoder_flatten.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        ClassifierModule.from_checkpoint(quick.parent / "clasifier.ckpt")
    assert f"Did you mean {quick.resolve()}?" in str(error.value)
    assert "copy it" not in str(error.value)
    with pytest.raises(CheckpointError, match="copy it to"):  # nothing close: the copy hint
        ClassifierModule.from_checkpoint(quick.parent / "resnet.ckpt")


def test_a_pairs_ends_do_not_depend_on_the_other_pairs_of_its_rank() -> None:
    # The ends of pair 1 encoded with pairs 0 and 2 (one rank) and alone (another number of
    # ranks, or a resume with pairs 0 and 2 decided): the same bits.
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(1024, 10)
    ).eval()
    head, tail = split(network, "3")
    starts, ends = torch.rand(3, 3, 12, 12), torch.rand(3, 3, 12, 12)
    targets = torch.tensor([1, 2, 3])
    z_start, z_end = encode_each_pair(head, tail, starts, ends, targets)
    alone_start, alone_end = encode_each_pair(head, tail, starts[1:2], ends[1:2], targets[1:2])
    assert z_start.shape == (3, 1024) and torch.equal(z_start[1:2], alone_start)
    assert torch.equal(z_end[1:2], alone_end)
    # Each pair's ends are its images through the head (within rounding of another batch).
    with torch.no_grad():
        assert torch.allclose(z_end, head(ends), atol=1e-5, rtol=1e-4)


def test_wandb_offline_report_and_what_the_command_prints(
    digits_classifier: Path,
    tmp_path: Path,
    users_shell: None,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = DigitsDataModule()
    indices = band_and_line_pairs(digits_classifier)
    path = "{num_pivots: 4, steps: 5, tol: 0.0}"
    config = pairs_config(tmp_path, digits_classifier, "w", ["input"], indices, path)
    config.write_text(config.read_text().replace("enabled: false", "offline: true"))
    capfd.readouterr()
    # As on a terminal (bars are shown only there; in a log file each redraw would stay).
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    main(["paths", "-c", str(config), "--trainer.accelerator", "cpu"])
    lines = printed_lines(capfd, caplog, recwarn)
    store = RunStore(tmp_path / "w")
    # One line per step of the run, the table once, no library line; the band's bar
    # is cleared when it is done (what a terminal shows of a line is its last \r-part).
    table = [line for line in (store.folder / "table.md").read_text().splitlines() if line]
    shown = [line.rpartition("\r")[2] for line in lines]
    own = [line for line in shown if line and line not in table]
    assert len(own) == 5, lines
    assert own[0] == "input: line check: 1 of 2 pairs linear"
    assert re.fullmatch(r"input band: 1 pair decided in 5 steps \(\d\d:\d\d\)", own[1])
    assert own[2:] == [
        f"Run folder: {store.folder}",
        "Drawing 2 figures (figures=auto; 0 up to date; --figures all draws every pair)",
        f"W&B run (offline): upload it with `cd {store.folder} && wandb sync wandb/offline-run-*`",
    ]
    assert sum(line in table for line in shown) == len(table), lines
    assert "input band: 5/5 steps" in "".join(lines)  # the bar was drawn, then cleared
    assert not [line for line in lines if any(words in line for words in LIBRARY_LINES)]
    experiment = digits_experiment(
        digits_classifier,
        tmp_path,
        "w",
        spaces=["input"],
        pairs=PairSampling(indices=indices),
        path=PathOptions(num_pivots=4, steps=5, tol=0.0),
    )
    runs = list((store.folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    run_id = (store.folder / "wandb_id").read_text().strip()
    assert runs[0].name.endswith(run_id) and (store.folder / "wandb_reported.json").is_file()
    names = {
        r.artifact.name
        for r in offline_run_records(runs[0])
        if r.WhichOneof("record_type") == "artifact"
    }
    assert {f"run-{run_id}-points", f"run-{run_id}-table1", "classifier"} <= names
    # The band's per-step metrics, from the Trainer's logger, in the same run: one per step.
    steps = [
        {item.key or "/".join(item.nested_key) for item in r.history.item}
        for r in offline_run_records(runs[0])
        if r.WhichOneof("record_type") == "history"
    ]
    metrics = ("input/max_energy", "input/max_force", "input/on_target", "input/active_pairs")
    assert sum(set(metrics) <= keys for keys in steps) == 6  # the line, then 5 steps
    # pairs.csv: one row per pair and space, distances as the saved paths give them
    with open(store.folder / "pairs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    records = store.load("input")
    assert [(r["space"], int(r["pair"])) for r in rows] == [("input", 0), ("input", 1)]
    for row, record in zip(rows, records, strict=True):
        moved = (record["path"] - record["line"]).reshape(len(record["path"]), -1)
        assert float(row["max_distance_l2"]) == pytest.approx(float(moved.norm(dim=1).max()))
        assert float(row["max_distance_linf"]) == pytest.approx(float(moved.abs().max()))
        assert torch.allclose(record["distance_l2"], moved.norm(dim=1))
        assert row["verdict"] == record["verdict"] and int(row["steps"]) == record["steps"]
        assert row["certificate"] == "sampled"
        assert float(row["min_margin"]) == pytest.approx(float(record["check_margin"].min()))
        assert row["status"] == record["status"]
    assert float(rows[0]["max_distance_l2"]) > 0 and float(rows[1]["max_distance_l2"]) == 0
    # A rerun of the finished run adds no second W&B run.
    run_paths(experiment, data, trainer={"accelerator": "cpu"}, wandb=WandbOptions(offline=True))
    assert len(list((store.folder / "wandb").glob("offline-run-*"))) == 1


def _state(network: nn.Module) -> tuple[dict[str, bool], dict[str, torch.Tensor]]:
    flags = {name: module.training for name, module in network.named_modules()}
    return flags, {k: v.clone() for k, v in network.state_dict().items()}


def test_the_callers_network_is_never_changed(digits_classifier: Path, tmp_path: Path) -> None:
    network = ClassifierModule.from_checkpoint(digits_classifier).network.train()
    network.layer1.eval()  # a mixed mode must come back as it was, too
    flags, state = _state(network)
    assert not all(flags.values()) and any(flags.values())
    data = DigitsDataModule()
    # In train mode every forward pass would update batch-norm statistics.
    select_pairs(network, data.dataset("test"), PairSampling(count=3), data.class_names)
    load_network(network)
    experiment = digits_experiment(
        digits_classifier, tmp_path, "own", spaces=["input", "layer1"], pairs=PairSampling(2)
    )
    run_paths(experiment, data, wandb=NO_WANDB, network=network)
    after_flags, after_state = _state(network)
    assert after_flags == flags
    assert after_state.keys() == state.keys()
    assert all(torch.equal(after_state[k], state[k]) for k in state)
    assert all(p.requires_grad for p in network.parameters())
    assert {p.device.type for p in network.parameters()} == {"cpu"}


def test_the_manifest_records_the_data_settings_but_not_loading_ones(
    digits_classifier: Path, tmp_path: Path
) -> None:
    experiment = digits_experiment(digits_classifier, tmp_path, "d")
    digits = manifest(experiment, DigitsDataModule(size=16, batch_size=8), [])["data"]
    assert digits == {
        "class": "connectivity.data.DigitsDataModule",
        "init_args": {"size": 16, "test_fraction": 0.2, "val_fraction": 0.1, "seed": 0},
    }
    assert manifest(experiment, DigitsDataModule(size=16, num_workers=2), [])["data"] == digits
    cifar = manifest(experiment, CIFAR10DataModule("c", resize=224), [])["data"]["init_args"]
    assert cifar == {"data_dir": "c", "resize": 224, "val_fraction": 0.1, "seed": 0}
    store = RunStore(tmp_path / "d")
    store.start(manifest(experiment, DigitsDataModule(size=16), []))
    store.record_path("input", 0).parent.mkdir(parents=True)
    store.record_path("input", 0).write_bytes(b"")  # a decided pair, as far as start sees
    words = r"differs in: data\.init_args\.size \(folder: 16, asked: 32\)\)"
    with pytest.raises(RunFolderError, match=words):
        store.start(manifest(experiment, DigitsDataModule(size=32), []))
    # Path options added later stay out while at their defaults: folders written
    # before them still match; set, they count.
    path = manifest(experiment, DigitsDataModule(size=16), [])["path"]
    assert not {"max_step", "max_energy_rise", "backoffs", "nudge"} & set(path)
    experiment.path = dataclasses.replace(experiment.path, backoffs=2)
    assert manifest(experiment, DigitsDataModule(size=16), [])["path"]["backoffs"] == 2


def test_explicit_bounds_box_the_input_space_only() -> None:
    given = PathOptions(num_pivots=3, bounds=(0.0, 0.5))
    assert options_in_space(given, "input") == PathOptions(num_pivots=3, bounds=(0.0, 0.5))
    assert options_in_space(given, "layer1") == PathOptions(num_pivots=3, bounds=None)
    assert options_in_space(PathOptions(), "input").bounds == (0.0, 1.0)
    assert options_in_space(PathOptions(), "flatten").bounds is None


def test_options_added_later_stay_out_of_run_json_at_their_defaults() -> None:
    from connectivity.runs.paths import path_manifest

    # The keys the first run folders were written with: such folders resume.
    before = {
        "num_pivots",
        "steps",
        "optimizer",
        "lr",
        "spring_constant",
        "method",
        "climbing",
        "bounds",
        "tol",
        "line_points",
        "converge",
        "chunk_size",
    }
    assert set(path_manifest(PathOptions())) == before
    chosen = path_manifest(PathOptions(certify="exact", optimizer="lbfgs", backoffs=2))
    assert chosen["certify"] == "exact" and chosen["backoffs"] == 2
