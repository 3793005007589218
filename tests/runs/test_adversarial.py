"""Path runs with adversarial-natural pairs (``pairs.adversarial``): the pairs appended, the
examples kept in the run folder and reused on resume, the options refused before any folder.

The classifier is linear (nearest class mean of the digits): its class regions are convex, so
every pair, adversarial ones too, is joined by its straight line, a verdict known in advance.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from connectivity.attacks import AdversarialOptions, AttackError
from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.engine.options import PathOptions
from connectivity.reporting.tables import PAIR_COLUMNS, pair_rows
from connectivity.runs.adversarial import make_adversarial_ends
from connectivity.runs.pairs import PairSampling
from connectivity.runs.paths import Experiment, manifest, run_paths
from connectivity.runs.sampling import PairError
from connectivity.store.records import Pair, RunFolderError, RunStore
from tests import old_run
from tests.runs.helpers import NO_WANDB


def nearest_mean(data: DigitsDataModule) -> nn.Module:
    """Logits ``m_c . x - |m_c|^2 / 2`` of the train split's class means ``m_c``: the class of
    the nearest mean, a linear classifier (convex class regions)."""
    train = data.dataset("train")
    images = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    labels = torch.tensor([int(train[i][1]) for i in range(len(train))])
    means = torch.stack([images[labels == c].mean(dim=0) for c in range(10)])
    layer = nn.Linear(images.shape[1], 10)
    with torch.no_grad():
        layer.weight.copy_(means)
        layer.bias.copy_(-0.5 * means.pow(2).sum(dim=1))
    return nn.Sequential(nn.Flatten(), layer).eval()


@pytest.fixture(scope="module")
def digits() -> tuple[DigitsDataModule, nn.Module]:
    """The digits at their own 8x8 size and their nearest-mean classifier (built once)."""
    data = DigitsDataModule(size=8)
    return data, nearest_mean(data)


def experiment(folder: Path, adversarial: AdversarialOptions) -> Experiment:
    return Experiment(
        classifier="nearest class mean (tests/runs/test_adversarial.py)",
        name="adv",
        spaces=["input"],
        pairs=PairSampling(count=2, seed=1, adversarial=adversarial),
        path=PathOptions(num_pivots=2, steps=3),
        output_dir=str(folder),
        figures="none",
    )


def test_adversarial_pairs_are_appended_saved_and_reused(
    digits: tuple[DigitsDataModule, nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, network = digits
    before = {k: v.clone() for k, v in network.state_dict().items()}
    # A budget at which about a quarter of the attacks fail: failed sources are skipped.
    options = AdversarialOptions(budget=0.3, steps=10, count=3)
    store = run_paths(experiment(tmp_path, options), data, wandb=NO_WANDB, network=network)
    assert store is not None
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())
    assert "3 adversarial ends made by targeted pgd" in capsys.readouterr().out
    records = store.load("input")
    assert [r["pair"]["adversarial"] for r in records] == [False, False, True, True, True]
    assert all(r["verdict"] == "linear" for r in records)  # convex class regions

    split = data.dataset("test")
    saved = torch.load(store.path("adversarial.pt"), weights_only=True)
    manifest = json.loads(store.path("run.json").read_text())
    assert manifest["adversarial_sources"] == saved["sources"].tolist()
    with torch.no_grad():
        predicted = network(saved["images"]).argmax(dim=1)
    for k, record in enumerate(records[2:]):
        pair = record["pair"]
        natural, source = split[pair["start_index"]], split[int(saved["sources"][k])]
        assert pair["end_index"] == len(split) + k
        assert natural[1] == pair["label"] == record["target"] == int(predicted[k])
        assert source[1] != pair["label"]
        distance = float((saved["images"][k] - source[0]).abs().max())
        assert distance <= 0.3 + 1e-6 and distance == pytest.approx(float(saved["linf"][k]))
        # The path's ends are the natural input and the saved example.
        assert torch.allclose(record["path"][-1], saved["images"][k])
        assert torch.allclose(record["path"][0], natural[0])
    natural_inputs = {r["pair"][end] for r in records[:2] for end in ("start_index", "end_index")}
    assert not natural_inputs & set(saved["naturals"].tolist() + saved["sources"].tolist())
    with open(store.path("pairs.csv")) as file:
        ends = [row["ends"] for row in csv.DictReader(file)]
    assert ends == ["natural"] * 2 + ["adversarial"] * 3
    # Table 1 counts the natural pairs; the adversarial ones are set beside them, and scored
    table = store.path("table.md").read_text()
    assert table.startswith("Pairs: 2.") and "| Linear path exists | 2 (2)" in table
    assert "Natural pairs only: the 3 pairs with an adversarial end" in table
    with open(store.path("baselines.csv")) as file:
        groups = {row["group"]: float(row["pairs"]) for row in csv.DictReader(file)}
    assert groups == {"trained": 2.0, "adversarial ends": 3.0}
    assert "| input | barrier |" in store.path("detect.md").read_text()
    page = store.path("index_input.html").read_text()
    assert page.count("(adversarial end)") == 3

    # Resumed with one adversarial pair undecided: the saved examples are used, not remade.
    kept = store.path("adversarial.pt").read_bytes()
    store.record_path("input", 3).unlink()
    run_paths(experiment(tmp_path, options), data, wandb=NO_WANDB, network=network)
    assert "adversarial ends made" not in capsys.readouterr().out
    assert store.path("adversarial.pt").read_bytes() == kept
    redone = store.read_record("input", 3)
    assert torch.allclose(redone["path"][-1], saved["images"][1])

    # A saved example edited since is never used: checked as a new one is, refused by name.
    edited = dict(saved)
    edited["images"] = saved["images"].clone()
    edited["images"][0] = 1 - edited["images"][0]
    torch.save(edited, store.path("adversarial.pt"))
    store.record_path("input", 2).unlink()
    with pytest.raises(AttackError, match=r"saved adversarial.pt fails its check .* delete it"):
        run_paths(experiment(tmp_path, options), data, wandb=NO_WANDB, network=network)
    assert not store.record_path("input", 2).exists()

    # Another attack in this folder is refused before it runs.
    other = AdversarialOptions(budget=0.25, steps=10, count=3)
    capsys.readouterr()
    with pytest.raises(RunFolderError, match=r"differs in: pairs.adversarial\)"):
        run_paths(experiment(tmp_path, other), data, wandb=NO_WANDB, network=network)
    assert "adversarial ends made" not in capsys.readouterr().out


def test_too_few_successes_fail_in_one_line_before_any_run_folder(
    digits: tuple[DigitsDataModule, nn.Module], tmp_path: Path
) -> None:
    data, network = digits
    hopeless = AdversarialOptions(attack="fgsm", budget=1e-4, count=2)
    with pytest.raises(PairError, match=r"only 0 of 2 adversarial ends .* 0 of 10 ") as error:
        run_paths(experiment(tmp_path, hopeless), data, wandb=NO_WANDB, network=network)
    assert "pairs.adversarial.budget" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "adv").exists()
    # More pairs than the split has inputs for: the message says so, not "a larger budget".
    greedy = AdversarialOptions(attack="fgsm", budget=0.5, count=400)
    with pytest.raises(PairError, match=r"split has no more correctly classified inputs"):
        run_paths(experiment(tmp_path, greedy), data, wandb=NO_WANDB, network=network)
    assert not (tmp_path / "adv").exists()


def test_the_command_line_takes_true_or_a_mapping_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectivity.cli.commands import paths_parser

    parser = paths_parser()
    given = ["--classifier", "c.ckpt", "--name", "n", "--data", "DigitsDataModule"]
    parsed = parser.instantiate(parser.parse_args([*given, "--pairs.adversarial", "true"]))
    assert parsed.pairs.adversarial == AdversarialOptions()
    config = tmp_path / "a.yaml"
    config.write_text("pairs: {adversarial: {attack: fgsm, budget: 0.1}}\n")
    parsed = parser.instantiate(parser.parse_args(["-c", str(config), *given]))
    assert parsed.pairs.adversarial == AdversarialOptions(attack="fgsm", budget=0.1)
    parsed = parser.instantiate(parser.parse_args(given))
    assert parsed.pairs.adversarial is None

    config.write_text(
        f"name: bad\nclassifier: c.ckpt\noutput_dir: {tmp_path}\n"
        "pairs: {adversarial: {attack: fgsm, budget: 2}}\n"
        "data: {class_path: connectivity.data.DigitsDataModule}\nwandb: {enabled: false}\n"
    )
    monkeypatch.setattr(sys, "argv", ["connectivity"])
    with pytest.raises(SystemExit):
        main(["paths", "-c", str(config)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("connectivity: error: pairs.adversarial.budget must be in (0, 1]")
    assert "\n" not in err and not (tmp_path / "bad").exists()


class Threshold(nn.Module):
    """One-pixel images: class 0 above 0.5, class 1 below (logits ``(x - 0.5, 0.5 - x)``); an
    attack of budget ``e`` can cross over exactly from within ``e`` of 0.5."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(dim=1) - 0.5
        return torch.stack([s, -s], dim=1)


def test_failed_attacks_are_skipped_and_no_input_is_used_twice(
    capsys: pytest.CaptureFixture,
) -> None:
    # Per class, five inputs an attack of budget 0.1 carries across 0.5 and five it cannot.
    near, far = [0.03, 0.04, 0.05, 0.06, 0.07], [0.2, 0.25, 0.3, 0.35, 0.4]
    offsets = torch.tensor(near + far)
    values = torch.cat([0.5 + offsets, 0.5 - offsets])
    labels = torch.tensor([0] * 10 + [1] * 10)
    split = TensorDataset(values.reshape(20, 1, 1, 1), labels)
    options = AdversarialOptions(attack="fgsm", budget=0.1, count=4)
    ends = make_adversarial_ends(Threshold(), split, PairSampling(seed=3), options, 4)
    tries = int(re.search(r"4 of (\d+) attacks", capsys.readouterr().out).group(1))
    assert tries > 4  # some attacks failed, and the pairs took further sources
    used = ends.naturals.tolist() + ends.sources.tolist()
    assert len(set(used)) == 8
    assert torch.equal(labels[ends.naturals], ends.targets)
    assert (labels[ends.sources] != ends.targets).all()
    assert ((values[ends.sources] - 0.5).abs() < 0.1).all()  # only those within reach
    # FGSM moves each source by the budget towards the other side.
    moved = values[ends.sources] + torch.where(ends.targets == 0, 0.1, -0.1)
    assert torch.allclose(ends.images.flatten(), moved, atol=1e-6)
    assert torch.allclose(ends.linf, torch.full((4,), 0.1), atol=1e-6)


def test_runs_without_adversarial_pairs_keep_the_older_run_json_and_rows() -> None:
    # A folder written by older code (tests/old_run.py): today's manifest of the same
    # experiment is its run.json byte for byte, so such folders resume; its records, saved
    # before pairs had ends of two kinds, are natural in pairs.csv.
    data = DigitsDataModule(size=8)
    data.dataset("test")  # the class names
    text = (old_run.FOLDER / "run.json").read_text()
    pairs = [Pair(**p) for p in json.loads(text)["pairs"]]
    today = manifest(old_run.experiment(old_run.FOLDER.parent), data, pairs)
    assert json.dumps(today, indent=2, sort_keys=True, default=str) == text
    records = {"input": RunStore(old_run.FOLDER).load("input")}
    assert all("adversarial" not in r["pair"] for r in records["input"])
    rows = [
        dict(zip(PAIR_COLUMNS, row, strict=True)) for row in pair_rows(records, data.class_names)
    ]
    assert [row["ends"] for row in rows] == ["natural"] * len(records["input"]) != []
