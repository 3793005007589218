"""The untrained baseline of surfaces runs: loops drawn by each untrained network's own
predictions, filled apart from the trained network's, one run.json naming both, the
side-by-side table, and reruns that add or leave out the baseline without deciding again."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from connectivity.data import DigitsDataModule, stack_images
from connectivity.engine.options import SurfaceOptions
from connectivity.errors import OptionsError
from connectivity.reporting.surface_report import write_surface_report
from connectivity.reporting.surface_tables import SURFACE_QUANTITIES, surface_comparison
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.baselines import untrained_network
from connectivity.runs.loops import LoopSampling, select_loops
from connectivity.runs.sampling import PairError
from connectivity.runs.surfaces import SurfaceExperiment, run_surfaces
from connectivity.store.records import RunFolderError
from connectivity.store.surfaces import SurfaceStore
from tests.runs.helpers import NO_WANDB

NAMES = [str(c) for c in range(10)]


class _Brightest(nn.Module):
    """Puts an image in the class of its brightest pixel: classes known by construction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _dataset(classes: list[int]) -> TensorDataset:
    """One 1x1x3 image per entry, brightest at that class; every label 0 (the labels must not
    matter to a draw by predictions)."""
    images = torch.zeros(len(classes), 1, 1, 3)
    for i, c in enumerate(classes):
        images[i, 0, 0, c] = 1.0
    return TensorDataset(images, torch.zeros(len(classes), dtype=torch.long))


def test_loops_by_predictions_keep_classes_with_enough_inputs_in_the_seeds_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    classes = [0, 1, 2, 0, 1, 0, 1, 0, 1, 0, 1, 1]  # class 2 holds one input: too few for a loop
    dataset = _dataset(classes)
    sampling = LoopSampling(count=1, size=3, seed=5)
    loops = select_loops(_Brightest(), dataset, sampling, NAMES[:3], predicted=True)
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(5)).tolist()
    expected = {c: tuple([i for i in order if classes[i] == c][:3]) for c in (0, 1)}
    assert [(loop.id, loop.label, loop.indices) for loop in loops] == [
        (0, 0, expected[0]),
        (1, 1, expected[1]),
    ]
    assert "1 of the 3 classes are left out" in capsys.readouterr().out
    # by the dataset's labels (all 0) the same draw is refused: class 1 has no input
    with pytest.raises(PairError, match=r"class '1' \(1\) has only 0 correctly classified"):
        select_loops(_Brightest(), dataset, sampling, NAMES[:3])
    # no class with a whole loop: refused, naming what the network puts where
    with pytest.raises(PairError, match=r"fewer than loops.count x loops.size = 9 .*\{0: 5, 1: 6"):
        select_loops(
            _Brightest(), dataset, LoopSampling(count=3, size=3), NAMES[:3], predicted=True
        )


def _loop_record(verdict: str, target: int, certificate: str, flat: float, surface: float) -> dict:
    open_loop = verdict == "no-loop"
    return {
        "verdict": verdict,
        "target": target,
        "certificate": certificate,
        "planar_min_margin": math.nan if open_loop else flat,
        "min_margin": math.nan if open_loop else surface,
        "steps": 0 if verdict in ("planar", "no-loop") else 40,
        "vertices": 0 if open_loop else 16,
        "moved_ratio": math.nan if open_loop else (0.0 if verdict == "planar" else 0.5),
    }


def test_the_comparison_is_each_groups_counts_medians_and_spread_over_seeds() -> None:
    trained = [
        _loop_record("planar", 0, "exact", 2.0, 2.0),
        _loop_record("curved", 0, "sampled", -1.0, 0.5),
        _loop_record("none", 1, "sampled", -3.0, -0.5),
        _loop_record("no-loop", 1, "sampled", 0.0, 0.0),
    ]
    seed0 = [_loop_record("planar", 4, "sampled", 1.0, 1.0)]
    seed1 = [
        _loop_record("none", 4, "sampled", -1.0, -2.0),
        _loop_record("planar", 4, "exact", 3, 3),
    ]
    manifest = {
        "spaces": ["flatten"],
        "baseline": {"seeds": [0, 1], "loops": {"0": [{}], "1": [{}, {}]}},
    }
    baselines = {"untrained_seed0/flatten": seed0, "untrained_seed1/flatten": seed1}
    table = surface_comparison(manifest, {"flatten": trained}, baselines)["flatten"]
    names = [name for name, _ in SURFACE_QUANTITIES]
    values = {group: dict(zip(names, v, strict=True)) for group, v in table.items()}
    assert list(values) == [
        "trained",
        "untrained seed 0",
        "untrained seed 1",
        "untrained mean",
        "untrained sd",
    ]
    mine = values["trained"]
    assert mine["loops"] == 4 and mine["classes"] == 2
    assert mine["Planar fill (the flat fan of the loop)"] == 1
    assert mine["Curved surface (relaxed membrane)"] == 1 and mine["No surface found"] == 1
    assert mine["No loop (a side has no path)"] == 1 and mine["Diverged"] == 0
    assert mine["filled (%)"] == 50.0 and mine["filled and proved (%)"] == 25.0
    # medians over the loops with a surface: the open loop's margins, steps, vertices are left
    # out (with its 0 steps, the median of 0, 40, 40, 0 would be 20)
    assert mine["median lowest margin, flat fill"] == -1.0
    assert mine["median lowest margin, surface"] == 0.5
    assert mine["median moved ratio"] == 0.5 and mine["median steps"] == 40
    assert mine["median vertices"] == 16
    assert values["untrained seed 1"]["filled and proved (%)"] == 50.0
    assert values["untrained mean"]["loops"] == 1.5
    assert values["untrained sd"]["loops"] == pytest.approx(math.sqrt(0.5))
    assert values["untrained mean"]["filled (%)"] == 75.0
    assert values["untrained sd"]["filled (%)"] == pytest.approx(25.0 * math.sqrt(2))


def _experiment(classifier: Path, folder: Path, **kwargs) -> SurfaceExperiment:
    defaults = {
        "spaces": ["flatten"],
        "loops": LoopSampling(count=1, size=3, classes=[4, 9]),
        "surface": SurfaceOptions(num_pivots=4, steps=20, samples_per_edge=3),
        "output_dir": str(folder),
        "figures": "none",
    }
    return SurfaceExperiment(classifier=str(classifier), name="s", **{**defaults, **kwargs})


def _predicted_loops(classifier: Path, seed: int, classes: list[int]) -> list[tuple]:
    """The loops the untrained network of ``seed`` should draw, found by brute force: in
    each asked class it puts 3 or more test inputs in, its first 3 in the draw's order."""
    dataset = DigitsDataModule().dataset("test")
    images, _ = stack_images(dataset, list(range(len(dataset))))
    with torch.no_grad():
        put = untrained_network(classifier, seed)(images).argmax(1).tolist()
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    drawn = {c: [i for i in order if put[i] == c][:3] for c in classes}
    return [(c, items) for c, items in drawn.items() if len(items) == 3]


@pytest.mark.parametrize(
    "full",
    # slow: the baseline added to a run without, the loops found again by brute force, the
    # figures, a refused rerun (~5 s more)
    [False, pytest.param(True, marks=pytest.mark.slow)],
)
def test_a_surfaces_run_with_the_untrained_baseline(
    digits_classifier: Path, tmp_path: Path, full: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DigitsDataModule()
    experiment = _experiment(
        digits_classifier, tmp_path, baseline="untrained", baseline_seeds=[0, 2]
    )
    trained: dict[Path, int] = {}
    if full:  # the baseline added to a run that has none: its loops are not decided again
        plain = run_surfaces(_experiment(digits_classifier, tmp_path), data, wandb=NO_WANDB)
        assert plain is not None
        trained = {p: p.stat().st_mtime_ns for p in plain.records_dir.rglob("*.pt")}
    store = run_surfaces(experiment, data, wandb=NO_WANDB)
    assert isinstance(store, SurfaceStore)
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in trained.items())
    manifest = json.loads((store.folder / "run.json").read_text())
    assert manifest["baseline"]["kind"] == "untrained" and manifest["baseline"]["seeds"] == [0, 2]
    dataset = data.dataset("test")
    for seed in (0, 2):
        loops = manifest["baseline"]["loops"][str(seed)]
        assert loops and {loop["label"] for loop in loops} <= {4, 9}
        # same-class loops for the untrained network: it puts every input in the loop's class
        network = untrained_network(digits_classifier, seed)
        for loop in loops:
            images, _ = stack_images(dataset, loop["indices"])
            with torch.no_grad():
                assert network(images).argmax(1).tolist() == [loop["label"]] * 3
        if full:
            expected = _predicted_loops(digits_classifier, seed, [4, 9])
            assert [(loop["label"], loop["indices"]) for loop in loops] == expected
        key = f"untrained_seed{seed}/flatten"
        records = store.load_loops(key)
        assert [list(r["loop"]["indices"]) for r in records] == [loop["indices"] for loop in loops]
        assert all(r["verdict"] in ("planar", "curved", "none", "diverged") for r in records)
        sides = sorted(p.name for p in (store.records_dir / key / "sides").glob("pair_*.pt"))
        assert sides == [f"pair_{k:04d}.pt" for k in range(3 * len(loops))]
    # the trained network's loops are where they always were, and only its loops
    assert {p.parent.name for p in store.records_dir.glob("*/loop_*.pt")} == {"flatten"}
    assert [list(r["loop"]["indices"]) for r in store.load_loops("flatten")] == [
        loop["indices"] for loop in manifest["loops"]
    ]
    table = (store.folder / "surfaces.md").read_text()
    assert "untrained (2 seeds, mean ± sd)" in table and "### flatten" in table
    rows = list(csv.DictReader(io.StringIO((store.folder / "baselines.csv").read_text())))
    asked = [len(manifest["loops"]), *(len(manifest["baseline"]["loops"][s]) for s in "02")]
    assert [(r["group"], float(r["loops"])) for r in rows[:3]] == list(
        zip(["trained", "untrained seed 0", "untrained seed 2"], asked, strict=True)
    )
    assert [r["group"] for r in rows[3:]] == ["untrained mean", "untrained sd"]
    # a rerun without the baseline is the same experiment: nothing is decided again, and the
    # report keeps the baseline it has records of
    stamps = {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")}
    run_surfaces(_experiment(digits_classifier, tmp_path), data, wandb=NO_WANDB)
    assert {p: p.stat().st_mtime_ns for p in store.records_dir.rglob("*.pt")} == stamps
    assert (store.folder / "surfaces.md").read_text() == table
    if not full:
        return
    # figures are the trained network's only; the offline W&B run holds the comparison
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # anything W&B leaks lands here
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(name, raising=False)
    write_surface_report(store, wandb=WandbOptions(), figures="all")
    drawn = {p.relative_to(store.folder).parts[1] for p in store.folder.glob("figures/**/*.png")}
    assert drawn == {"flatten"}
    (logged,) = store.folder.glob("wandb/offline-run-*/files/media/table/baselines_*.table.json")
    assert [row[1] for row in json.loads(logged.read_text())["data"]] == [r["group"] for r in rows]
    # other seeds are another baseline: refused, naming it
    experiment.baseline_seeds = [0, 1]
    with pytest.raises(RunFolderError, match=r"differs in: .*baseline"):
        run_surfaces(experiment, data, wandb=NO_WANDB)


def test_a_wrong_baseline_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match=r"baseline is 'random'") as error:
        _experiment(tmp_path / "classifier.ckpt", tmp_path, baseline="random")
    assert "\n" not in str(error.value)
    with pytest.raises(OptionsError, match=r"baseline_seeds is \[1, 1\]"):
        _experiment(
            tmp_path / "classifier.ckpt", tmp_path, baseline="untrained", baseline_seeds=[1, 1]
        )


@pytest.mark.slow  # ~1 s: the untrained network's predictions of the whole split
def test_a_baseline_without_loops_fails_before_any_folder(
    digits_classifier: Path, tmp_path: Path
) -> None:
    # a seed whose network puts fewer than 3 test digits in class 1 (found by brute force)
    seed = next((s for s in (0, 1) if not _predicted_loops(digits_classifier, s, [1])), None)
    if seed is None:
        pytest.skip("every untrained seed tried puts 3 test digits in class 1")
    experiment = _experiment(
        digits_classifier,
        tmp_path,
        loops=LoopSampling(count=1, size=3, classes=[1]),
        baseline="untrained",
        baseline_seeds=[seed],
    )
    with pytest.raises(PairError, match=rf"^the untrained baseline of seed {seed}: the network"):
        run_surfaces(experiment, DigitsDataModule(), wandb=NO_WANDB)
    assert not (tmp_path / "s").exists()


def test_correctly_classified_loops_leave_out_misclassified_inputs_past_the_first_chunk() -> None:
    classes = [k % 3 for k in range(600)]
    dataset = _dataset(classes)
    wrong = set(range(0, 600, 7))  # labelled one class on: the network gets them wrong
    labels = torch.tensor([(c + 1) % 3 if k in wrong else c for k, c in enumerate(classes)])
    dataset = TensorDataset(dataset.tensors[0], labels)
    sampling = LoopSampling(count=50, size=3, seed=2)  # 150 of some 171 right per class
    loops = select_loops(_Brightest(), dataset, sampling, NAMES[:3])
    used = {i for loop in loops for i in loop.indices}
    assert len(used) == 450 and not used & wrong
