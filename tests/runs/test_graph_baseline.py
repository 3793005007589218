"""The untrained baseline of a graph run: inputs of the untrained network's own predictions,
classes it puts fewer than 2 inputs in skipped and said so, records apart from the trained
model's, one run.json, the side-by-side table, and reruns that add or leave it out."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from connectivity.cli.main import main
from connectivity.data import DigitsDataModule, stack_images
from connectivity.engine.options import PathOptions
from connectivity.errors import OptionsError
from connectivity.reporting.graph_report import graph_models, skipped_line, write_graph_report
from connectivity.runs.baselines import untrained_network
from connectivity.runs.graph import GraphExperiment, other_architectures, run_graph
from connectivity.runs.inputs import ClassInputs, select_inputs
from connectivity.runs.sampling import PairError
from connectivity.store.files import write_tensor
from connectivity.store.graph import GraphLayout, GraphStore
from connectivity.store.records import RunFolderError
from tests.runs.helpers import NO_WANDB
from tests.store.graph_folder import graph_folder

# Ten 1x1x2 images: the network's class is the brighter pixel; the labels disagree on 8 and 9.
LABELS = [0, 1, 0, 1, 0, 1, 0, 1, 1, 0]
IMAGES = torch.tensor([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(10)])
DATASET = TensorDataset(IMAGES.view(10, 1, 1, 2), torch.tensor(LABELS))
BRIGHTER = nn.Flatten()  # logits are the pixels: item i is put in class i % 2


class _AllZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, 0.0]).expand(len(x), 2)


def test_predicted_inputs_follow_the_seeded_order_and_the_networks_classes() -> None:
    draw = ClassInputs(per_class=3, seed=4)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()
    chosen = select_inputs([BRIGHTER], DATASET, draw, ["a", "b"], predicted=True)
    assert [(s.label, s.indices, s.misclassified) for s in chosen] == [
        (c, [i for i in order if i % 2 == c][:3], [[]]) for c in (0, 1)
    ]
    # explicit inputs keep their order and go to the class the network puts them in
    given = ClassInputs(indices=[9, 8, 2, 5])
    chosen = select_inputs([BRIGHTER], DATASET, given, ["a", "b"], predicted=True)
    assert [(s.label, s.indices) for s in chosen] == [(0, [8, 2]), (1, [9, 5])]


def test_a_class_the_network_puts_too_few_inputs_in_is_returned_short_not_refused() -> None:
    draw = ClassInputs(per_class=2, seed=0)
    chosen = select_inputs([_AllZero()], DATASET, draw, ["a", "b"], predicted=True)
    assert [(s.label, len(s.indices)) for s in chosen] == [(0, 2), (1, 0)]
    with pytest.raises(PairError, match=r"class 'b' \(1\) has 0 usable inputs"):
        select_inputs([_AllZero()], DATASET, draw, ["a", "b"])
    with pytest.raises(ValueError, match="one network, got 2"):
        select_inputs([BRIGHTER, BRIGHTER], DATASET, draw, ["a", "b"], predicted=True)


def test_classifiers_of_another_architecture_than_the_first_are_named() -> None:
    torch.manual_seed(0)
    first, same, wider = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(4, 2)
    deeper = nn.Sequential(nn.Linear(3, 2))  # the same shapes under other names
    classifiers = ["a", "b", "c", "d"]
    assert other_architectures(classifiers, [first, same, wider, deeper]) == ["c", "d"]


@pytest.mark.parametrize(
    ("baseline", "seeds", "message"),
    [
        ("random", [0], r"baseline is 'random'; it must be one of \['untrained'\]"),
        ("untrained", [2, 2], r"baseline_seeds is \[2, 2\]; give .* distinct"),
    ],
)
def test_a_wrong_baseline_is_a_one_line_error_at_construction(
    baseline: str, seeds: list[int], message: str
) -> None:
    with pytest.raises(OptionsError, match=message) as error:
        GraphExperiment(["c.ckpt"], "n", baseline=baseline, baseline_seeds=seeds)
    assert "\n" not in str(error.value)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _centroids(dataset: Dataset) -> nn.Module:
    """A linear classifier of the digits: nearest class mean (of the test split, over 90%
    right). Linear, so each class's region is convex: every straight line between two inputs
    it puts in one class stays in that class."""
    images, labels = stack_images(dataset, list(range(len(dataset))))  # type: ignore[arg-type]
    means = torch.stack([images[labels == c].flatten(1).mean(0) for c in range(10)])
    network = nn.Sequential(nn.Flatten(), nn.Linear(means.shape[1], 10))
    with torch.no_grad():
        network[1].weight.copy_(means)
        network[1].bias.copy_(-0.5 * (means * means).sum(1))
    return network


def _expected(
    network: nn.Module | Path, seed: int, classes: list[int], dataset: Dataset
) -> dict[int, list[int]]:
    """Brute force: the first 3 items of the seeded order (seed 0) of the digits' test split
    the untrained network of ``seed`` puts in each class, predicted all at once."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    images, _ = stack_images(dataset, order)
    with torch.no_grad():
        guesses = untrained_network(network, seed)(images).argmax(1).tolist()
    by_class = {c: [i for i, g in zip(order, guesses, strict=True) if g == c] for c in classes}
    return {c: chosen[:3] for c, chosen in by_class.items()}


def _experiment(
    classifier: str, folder: Path, space: str, classes: list[int], **baseline: object
) -> GraphExperiment:
    return GraphExperiment(
        [classifier],
        "g",
        spaces=[space],
        inputs=ClassInputs(per_class=3, classes=classes),
        path=PathOptions(num_pivots=2, steps=4),
        output_dir=str(folder),
        **baseline,  # type: ignore[arg-type]
    )


def _check_baseline_inputs(store: GraphStore, expected: dict, space: str) -> None:
    """run.json's baseline entry holds each seed's brute-force inputs (short classes apart),
    and each record of its folder joins two of them of one class."""
    entry = store.manifest()["baseline"]
    for seed, by_class in expected.items():
        kept = [{"label": c, "indices": v} for c, v in by_class.items() if len(v) >= 2]
        skipped = [{"label": c, "indices": v} for c, v in by_class.items() if len(v) < 2]
        assert entry["inputs"][str(seed)] == kept and entry["skipped"][str(seed)] == skipped
        layout = GraphLayout(tuple(len(s["indices"]) for s in kept))
        records = store.model(f"untrained_seed{seed}").load(space)
        assert records
        for record in records:
            c, (i, j) = layout.locate(record["pair"]["id"])
            ends = (record["pair"]["start_index"], record["pair"]["end_index"])
            assert ends == (kept[c]["indices"][i], kept[c]["indices"][j])
            assert record["pair"]["label"] == kept[c]["label"]
        thumbnails = store.load_inputs(kept[0]["label"], f"untrained_seed{seed}")
        assert thumbnails["indices"] == kept[0]["indices"]


def test_a_linear_classifier_beside_its_untrained_baselines(tmp_path: Path) -> None:
    data = DigitsDataModule()
    dataset = data.dataset("test")
    network = _centroids(dataset)
    # Classes 0 and 4: the untrained network of seed 0 puts no digit in 0, that of seed 1
    # puts some in both.
    classes = [0, 4]
    expected = {seed: _expected(network, seed, classes, dataset) for seed in (0, 1)}
    assert [len(expected[0][c]) for c in classes] == [0, 3]
    assert [len(expected[1][c]) for c in classes] == [3, 3]
    experiment = _experiment("centroids", tmp_path, "input", classes, baseline="untrained")
    experiment.baseline_seeds = [0, 1]
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    store = run_graph(experiment, data, wandb=NO_WANDB, networks=[network])
    assert store is not None
    assert all(torch.equal(v, weights[k]) for k, v in network.state_dict().items())
    _check_baseline_inputs(store, expected, "input")
    entry = store.manifest()["baseline"]
    assert entry["seeds"] == [0, 1] and entry["architecture"] == "centroids"
    assert entry["initialisation"] == "reset_parameters() of every module"
    assert (store.folder / "figures" / "untrained_seed1" / "input" / "class_4.png").is_file()
    components = _rows((store.folder / "components.csv").read_text())
    assert [(r["model"], r["classifier"], r["class"]) for r in components] == [
        ("0", "centroids", "0"),
        ("0", "centroids", "4"),
        ("1", "untrained seed 0", "4"),
        ("2", "untrained seed 1", "0"),
        ("2", "untrained seed 1", "4"),
    ]
    # Linear networks: convex classes, so every pair tried is joined by its straight line.
    for row in components:
        assert (row["inputs"], row["components"], row["not_connected"]) == ("3", "1", "0")
        assert row["linear_edges"] == "2" and row["settled"] == "True"
    markdown = (store.folder / "components.md").read_text()
    assert "untrained seed 0 has no graph of class '0': it puts 0 of the split in it" in markdown
    assert "untrained (2 seeds, mean ± sd)" in markdown
    baselines = _rows((store.folder / "baselines.csv").read_text())
    assert [r["group"] for r in baselines] == [
        "trained",
        "untrained seed 0",
        "untrained seed 1",
        "untrained mean",
        "untrained sd",
    ]
    classes_row = [float(r["classes with a graph"]) for r in baselines]
    assert classes_row == [2, 1, 2, 1.5, pytest.approx(0.5**0.5)]
    assert [float(r["one component (% of classes)"]) for r in baselines] == [100] * 4 + [0]
    assert not (store.folder / "comparison.csv").exists()  # no other trained model


@pytest.mark.slow
def test_a_baseline_added_to_a_run_of_a_checkpoint_keeps_the_trained_results(
    digits_classifier: Path, tmp_path: Path
) -> None:
    # Classes 4 and 9: the untrained ResNet of seed 0 puts every digit in 9, that of seed 1
    # puts digits in both.
    classes = [4, 9]
    data = DigitsDataModule()
    dataset = data.dataset("test")
    expected = {seed: _expected(digits_classifier, seed, classes, dataset) for seed in (0, 1)}
    assert [len(expected[0][c]) for c in classes] == [0, 3]
    assert [len(expected[1][c]) for c in classes] == [3, 3]
    classifier = str(digits_classifier)
    store = run_graph(_experiment(classifier, tmp_path, "flatten", classes), data, wandb=NO_WANDB)
    assert store is not None
    plain = (store.folder / "run.json").read_text()
    assert "baseline" not in json.loads(plain)
    trained = {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")}
    assert trained and {p.relative_to(store.records_dir).parts[0] for p in trained} == {"model0"}

    with_baseline = _experiment(classifier, tmp_path, "flatten", classes, baseline="untrained")
    with_baseline.baseline_seeds = [0, 1]
    run_graph(with_baseline, data, wandb=NO_WANDB)
    manifest = json.loads((store.folder / "run.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "baseline"} == json.loads(plain)
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    _check_baseline_inputs(store, expected, "flatten")
    assert manifest["baseline"]["initialisation"].startswith("the architecture's constructor")
    assert [m.short for m in graph_models(manifest)] == [
        "model 0",
        "untrained seed 0",
        "untrained seed 1",
    ]
    # Leaving the baseline out again decides nothing and keeps the report of its records;
    # other seeds are another baseline, refused by name.
    markdown = (store.folder / "components.md").read_text()
    assert "| untrained seed 1 |" in markdown
    stamps = {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")}
    run_graph(_experiment(classifier, tmp_path, "flatten", classes), data, wandb=NO_WANDB)
    assert {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")} == stamps
    assert (store.folder / "components.md").read_text() == markdown
    with_baseline.baseline_seeds = [0, 2]
    with pytest.raises(RunFolderError, match=r"differs in: .*baseline"):
        run_graph(with_baseline, data, wandb=NO_WANDB)


def _baseline_folder(folder: Path) -> GraphStore:
    """The hand-written two-model folder of the report tests, with untrained seeds 5 (a graph
    of class 1 only: 1 input in class 0) and 6 (2 inputs in each class), their pairs decided:
    seed 5 joins its 3 inputs by a linear and a nonlinear edge; seed 6 leaves its class 0 pair
    apart and joins its class 1 pair."""
    store = graph_folder(folder)
    manifest = store.manifest()
    manifest["baseline"] = {
        "kind": "untrained",
        "seeds": [5, 6],
        "architecture": "a.ckpt",
        "inputs": {
            "5": [{"label": 1, "indices": [10, 11, 12]}],
            "6": [{"label": 0, "indices": [0, 1]}, {"label": 1, "indices": [10, 12]}],
        },
        "skipped": {"5": [{"label": 0, "indices": [4]}], "6": []},
    }
    (store.folder / "run.json").write_text(json.dumps(manifest))
    decided = {5: ((3,), {(0, 0, 1): "linear", (0, 1, 2): "nonlinear"})}
    decided[6] = ((2, 2), {(0, 0, 1): "none", (1, 0, 1): "linear"})
    for seed, (sizes, verdicts) in decided.items():
        layout = GraphLayout(sizes)
        for (c, i, j), verdict in verdicts.items():
            pair_id = layout.pair_id(c, (i, j))
            record = {"pair": {"id": pair_id}, "verdict": verdict, "target": c, "steps": 3}
            write_tensor(store.model(f"untrained_seed{seed}").record_path("input", pair_id), record)
        store.mark_settled(f"untrained_seed{seed}", "input")
    return store


def test_the_report_sets_each_trained_model_beside_the_seeds_and_their_spread(
    tmp_path: Path,
) -> None:
    store = _baseline_folder(tmp_path / "graph")
    markdown = write_graph_report(store, figures=False)
    components = _rows((store.folder / "components.csv").read_text())
    assert [(r["model"], r["classifier"], r["class"], r["sizes"]) for r in components[4:]] == [
        ("2", "untrained seed 5", "one", "3"),
        ("3", "untrained seed 6", "zero", "1 1"),
        ("3", "untrained seed 6", "one", "2"),
    ]
    # the untrained networks join other inputs: only the trained models are compared
    compared = _rows(store.path("comparison.csv").read_text())
    assert [(r["model_a"], r["model_b"]) for r in compared] == [("0", "1")] * 2
    assert "untrained seed 5 has no graph of class 'zero': it puts 1 of the split in it" in markdown
    header = "|  | trained model 0 | trained model 1 | untrained (2 seeds, mean ± sd) |"
    assert header in markdown
    table = {r["group"]: r for r in _rows(store.path("baselines.csv").read_text())}
    assert list(table) == [
        "trained model 0",
        "trained model 1",
        "untrained seed 5",
        "untrained seed 6",
        "untrained mean",
        "untrained sd",
    ]
    # Worked by hand from graph_folder's DECIDED and the seeds' records above.
    expected = {
        "classes with a graph": [2, 2, 1, 2, 1.5, 0.5**0.5],
        "inputs per class": [3, 3, 3, 2, 2.5, 0.5**0.5],
        "components per class": [1.5, 1.5, 1, 1.5, 1.25, 0.5**0.5 / 2],
        "one component (% of classes)": [50, 50, 100, 50, 75, 50 * 0.5**0.5],
        "largest component (% of its class's inputs)": [
            (100 + 200 / 3) / 2,
            (100 + 200 / 3) / 2,
            100,
            75,
            87.5,
            25 * 0.5**0.5,
        ],
        "linear edges per class": [1, 1.5, 1, 0.5, 0.75, 0.5 * 0.5**0.5],
        "nonlinear edges per class": [0.5, 0, 1, 0, 0.5, 0.5**0.5],
        "pairs not connected per class": [0.5, 0.5, 0, 0.5, 0.25, 0.5 * 0.5**0.5],
        "pairs decided per class": [2, 2, 2, 1, 1.5, 0.5**0.5],
    }
    for quantity, values in expected.items():
        assert [float(row[quantity]) for row in table.values()] == pytest.approx(values), quantity


def test_a_wrong_baseline_on_the_command_line_is_one_line_before_any_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"name: bad\noutput_dir: {tmp_path / 'out'}\nclassifiers: [{tmp_path / 'c.ckpt'}]\n"
        "data: {class_path: connectivity.data.DigitsDataModule}\nbaseline: untrained\n"
        "baseline_seeds: [0, 0]\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["graph", "-c", str(config)])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("connectivity: error: baseline_seeds is [0, 0]; give a non-empty")
    assert not (tmp_path / "out").exists()


def test_the_classes_without_a_graph_are_named_with_their_counts() -> None:
    assert skipped_line("untrained seed 3", {"cat": 1}, "split") == (
        "untrained seed 3 has no graph of class 'cat': it puts 1 of the split in it, a graph "
        "needs 2"
    )
    assert skipped_line("untrained seed 3", {"cat": 1, "dog": 0, "ant": 0}, "given inputs") == (
        "untrained seed 3 has no graph of classes 'cat', 'dog', 'ant': it puts 1, 0 and 0 of "
        "the given inputs in them, a graph needs 2"
    )
