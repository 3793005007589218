"""``connectivity graph`` end to end on the digits: report, resume, two models, errors."""

from __future__ import annotations

import csv
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import connectivity
from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.reporting.wandb_log import offline_run_records
from connectivity.runs.networks import load_network
from connectivity.store.graph import GraphStore
from connectivity.store.records import RunFolderError, RunStore
from tests.conftest import REPO
from tests.toy import digits_test_predictions


def _misclassified_and_others(classifier: Path, count: int = 5) -> list[int]:
    """A test image the classifier gets wrong and ``count`` of its label it gets right: the
    wrong one's pairs never pass the line check, so their bands run every step."""
    _, labels, right = digits_test_predictions(classifier)
    wrong = (~right).nonzero().squeeze(1).tolist()
    if not wrong:
        pytest.skip("the digits classifier classifies every test image correctly")
    bad = wrong[0]
    same = ((labels == labels[bad]) & right).nonzero().squeeze(1).tolist()[:count]
    return [bad, *same]


def _config(
    folder: Path, name: str, classifiers: list[Path], indices: list[int], extra: str = ""
) -> Path:
    config = folder / f"{name}.yaml"
    config.write_text(
        f"name: {name}\noutput_dir: {folder}\nclassifiers: [{', '.join(map(str, classifiers))}]\n"
        f"spaces: [flatten]\ninputs: {{indices: {indices}}}\n"
        "path: {num_pivots: 4, steps: 12, tol: 0.0}\ncheckpoint_every: 5\n"
        "data: {class_path: connectivity.data.DigitsDataModule}\nwandb: {enabled: false}\n"
        f"{extra}"
    )
    return config


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_graph_resumes_after_a_stop_and_identical_models_agree(
    digits_classifier: Path, tmp_path: Path
) -> None:
    indices = _misclassified_and_others(digits_classifier)
    twin = tmp_path / "twin.ckpt"
    shutil.copy(digits_classifier, twin)
    models = [digits_classifier, twin]
    stop = "[{class_path: tests.toy.RaiseAfterBandStep, init_args: {step: 7}}]"
    with pytest.raises(RuntimeError, match="stopped on purpose"):
        main(
            [
                "graph",
                "-c",
                str(_config(tmp_path, "k", models, indices)),
                "--trainer.callbacks",
                stop,
            ]
        )
    records = list((tmp_path / "k" / "records").rglob("pair_*.pt"))
    assert records and not (tmp_path / "k" / "rounds" / "model0" / "flatten" / "settled").exists()
    main(["graph", "-c", str(_config(tmp_path, "k", models, indices))])

    # The same search from plain Python, uninterrupted: the same components and pairs.
    dataset = DigitsDataModule().dataset("test")
    images = torch.stack([dataset[i][0] for i in indices])
    with pytest.warns(UserWarning, match=r"inputs 0 \(class \d\) are not classified"):
        whole = connectivity.connect_all(
            load_network(str(digits_classifier)),
            "flatten",
            images,
            int(dataset[indices[0]][1]),
            num_pivots=4,
            steps=12,
            tol=0.0,
        )
    assert whole.components == [[1, 2, 3, 4, 5], [0]]  # the misclassified image is alone
    resumed = _rows(tmp_path / "k" / "components.csv")
    for row in resumed:
        assert (row["components"], row["sizes"], row["linear_edges"]) == ("2", "5 1", "4")
        assert int(row["pairs_decided"]) == whole.pairs_decided < int(row["all_pairs"]) == 15
        assert row["settled"] == "True"
    decided = {
        (int(r["i"]), int(r["j"])): r["verdict"]
        for r in _rows(tmp_path / "k" / "edges.csv")
        if r["model"] == "0"
    }
    assert decided == {p: r.verdict for p, r in {**whole.edges, **whole.failed}.items()}
    # Two identical checkpoints: identical structures, side by side.
    (comparison,) = _rows(tmp_path / "k" / "comparison.csv")
    assert comparison["same_components"] == "True"
    assert comparison["edges_only_a"] == comparison["edges_only_b"] == ""
    assert comparison["opposite_verdicts"] == ""
    assert (tmp_path / "k" / "figures" / "model1" / "flatten").glob("class_*.png")
    assert "not connected by the paths tried" in (tmp_path / "k" / "components.md").read_text()


@pytest.mark.slow
def test_graph_killed_for_real_resumes_to_the_same_components(
    digits_classifier: Path, tmp_path: Path
) -> None:
    indices = _misclassified_and_others(digits_classifier)
    kill = "[{class_path: tests.toy.KillAfterBandStep, init_args: {step: 7}}]"
    config = _config(tmp_path, "k", [digits_classifier], indices)
    command = [sys.executable, "-m", "connectivity.cli", "graph", "-c", str(config)]
    done = subprocess.run(
        [*command, "--trainer.callbacks", kill], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert list((tmp_path / "k" / "bands").rglob("rank0.pt"))  # killed mid-band
    main(["graph", "-c", str(config), "--wandb.enabled", "true"])
    main(["graph", "-c", str(_config(tmp_path, "w", [digits_classifier], indices))])
    for name in ("components.csv", "edges.csv"):
        assert _rows(tmp_path / "k" / name) == _rows(tmp_path / "w" / name), name
    # The report went to the folder's offline W&B run: tables and one figure per class.
    (run,) = (tmp_path / "k" / "wandb").glob("offline-run-*")
    keys = {
        item.key or "/".join(item.nested_key)
        for record in offline_run_records(run)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
    }
    assert {"components", "edges"} <= {key.split("/")[0] for key in keys}
    assert any(key.startswith("graph/model0/flatten/") for key in keys)
    # `connectivity report` rebuilds a graph run's report from its records.
    (tmp_path / "k" / "components.md").unlink()
    main(["report", str(tmp_path / "k")])
    assert "| components |" in (tmp_path / "k" / "components.md").read_text()


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("inputs: {per_class: 1}", r"inputs\.per_class must be a whole number >= 2, got 1"),
        ("inputs: {classes: [3, 12]}", r"inputs\.classes holds 12, not a class .*0\.\.9"),
        ("max_tries: 0", r"max_tries must be a whole number >= 1 or None .*got 0"),
        ("spaces: [layer9]", r"'layer9' is not a layer"),
    ],
)
def test_graph_errors_are_one_line_before_any_folder(
    digits_classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture, option: str, words: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"name: bad\noutput_dir: {tmp_path / 'out'}\nclassifiers: [{digits_classifier}]\n"
        f"data: {{class_path: connectivity.data.DigitsDataModule}}\n{option}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["graph", "-c", str(config)])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("connectivity: error:")
    assert re.search(words, line), line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_process_ddp_pairs_gives_the_single_process_components(
    digits_classifier: Path, tmp_path: Path
) -> None:
    # Each round's pairs are shared out across the two ranks (rank k takes every second pair).
    indices = _misclassified_and_others(digits_classifier)
    command = [sys.executable, "-m", "connectivity.cli", "graph", "-c"]
    one = _config(tmp_path, "one", [digits_classifier], indices)
    subprocess.run([*command, str(one)], check=True, capture_output=True, cwd=REPO)
    two = _config(tmp_path, "two", [digits_classifier], indices)
    ranks = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    done = subprocess.run(
        [*command, str(two), *ranks, "--trainer.strategy", "ddp_pairs"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _rows(tmp_path / "one" / "components.csv") == _rows(tmp_path / "two" / "components.csv")
    edges = [_rows(tmp_path / name / "edges.csv") for name in ("one", "two")]
    columns = ("i", "j", "verdict", "steps")
    assert [[r[c] for c in columns] for r in edges[0]] == [
        [r[c] for c in columns] for r in edges[1]
    ]


def test_paths_and_graph_runs_never_claim_each_others_folders(tmp_path: Path) -> None:
    graph = GraphStore(tmp_path / "run")
    graph.start({"kind": "graph", "spaces": ["input"]})
    graph.model(0).record_path("input", 3).parent.mkdir(parents=True)
    graph.model(0).record_path("input", 3).write_bytes(b"")  # a decided pair, as start sees
    with pytest.raises(RunFolderError, match=r"different experiment \(differs in: kind"):
        RunStore(tmp_path / "run").start({"spaces": ["input"]})


def test_the_documented_two_seeds_command_has_both_classifiers_made_before_it(
    capsys: pytest.CaptureFixture,
) -> None:
    # The graph commands of docs/graphs.md, in order, must make every checkpoint
    # configs/graph/two_seeds.yaml names before the command that reads them.
    docs = (REPO / "docs" / "graphs.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", docs, re.S) if "two_seeds" in b)
    commands = re.sub(r"\\\n\s*", "", block).splitlines()  # continuation lines joined
    graph = next(i for i, c in enumerate(commands) if "two_seeds.yaml" in c)
    config = (REPO / "configs" / "graph" / "two_seeds.yaml").read_text()
    named = re.findall(r"^\s+- (\S+\.ckpt)$", config, re.M)
    assert named == [
        "lightning_logs/quickstart/classifier.ckpt",  # `connectivity quickstart` writes it
        "lightning_logs/quickstart/classifier_seed1.ckpt",
    ]
    before = commands[:graph]
    copy = next(i for i, c in enumerate(before) if c.split("#")[0].rstrip().endswith(named[1]))
    assert before[copy].startswith('cp "$(ls -t lightning_logs/connectivity/*/checkpoints/best-')
    fit = before[copy - 1].split("#")[0].split()
    assert fit[:4] == ["connectivity", "fit", "-c", "configs/classifier/quick.yaml"]
    # The fit command as written parses, with the second seed.
    with pytest.raises(SystemExit):
        main([*fit[1:3], str(REPO / fit[3]), *fit[4:], "--print_config"])
    assert "seed_everything: 1" in capsys.readouterr().out
