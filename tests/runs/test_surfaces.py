"""`connectivity surfaces`: a Lightning run that draws loops, decides their sides, fills them,
saves each loop at once, resumes from its records and refuses a changed experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from connectivity.cli.commands import report
from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.engine.options import SurfaceOptions
from connectivity.runs.loops import LoopSampling
from connectivity.runs.surfaces import SurfaceExperiment, run_surfaces
from connectivity.store.records import RunFolderError
from connectivity.store.surfaces import SurfaceStore, sides_key
from tests.runs.helpers import NO_WANDB


def experiment(classifier: Path, folder: Path, **kwargs) -> SurfaceExperiment:
    defaults = {
        "spaces": ["flatten"],
        "loops": LoopSampling(count=1, size=3, classes=[1, 7], closest_of=4),
        "surface": SurfaceOptions(num_pivots=4, steps=20, samples_per_edge=3),
        "output_dir": str(folder),
    }
    return SurfaceExperiment(classifier=str(classifier), name="s", **{**defaults, **kwargs})


@pytest.mark.parametrize(
    "closest_of",
    [None, pytest.param(4, marks=pytest.mark.slow)],  # slow: ~30 s, membranes at work
)
def test_a_surfaces_run_saves_each_loop_and_resumes_from_its_records(
    digits_classifier: Path, tmp_path: Path, closest_of: int | None
) -> None:
    data = DigitsDataModule()
    loops = LoopSampling(count=1, size=3, classes=[1, 7], closest_of=closest_of)
    store = run_surfaces(experiment(digits_classifier, tmp_path, loops=loops), data, wandb=NO_WANDB)
    assert isinstance(store, SurfaceStore)
    records = store.load_loops("flatten")
    assert [r["loop"]["label"] for r in records] == [1, 7]
    for record in records:
        loop = record["loop"]
        sides = [store.read_record(sides_key("flatten"), i) for i in loop["sides"]]
        # The loop's corners are its sides' first ends, and every corner is a mesh vertex.
        corners = record["points"][record["corners"]]
        assert torch.equal(corners, torch.stack([s["path"][0] for s in sides]))
        assert record["verdict"] in ("planar", "curved", "none", "diverged")
        assert record["domain_after"].shape == (48, 48)
        assert store.path(f"figures/flatten/loop_{loop['id']:04d}.png").is_file()
        assert store.path(f"figures/flatten/loop_{loop['id']:04d}_plane.png").is_file()
        assert record["plane_classes"].shape == (48, 48)
        # The strip of images along the surface starts at input 0; a filled surface keeps the
        # class at each of its vertices.
        assert int(record["strip"][0]) == int(record["corners"][0])
        if record["verdict"] in ("planar", "curved"):
            assert bool((record["strip_surface"] == loop["label"]).all())
    table = store.path("surfaces.md").read_text()
    assert "Loops: 2 of 3 inputs" in table and "| flatten |" in table
    # `connectivity report` rebuilds the table and the figures from the records alone.
    store.remove("surfaces.md")
    store.remove("figures/flatten/loop_0000.png")
    report(str(store.folder), wandb=NO_WANDB)
    assert store.path("surfaces.md").read_text() == table
    assert store.path("figures/flatten/loop_0000.png").is_file()
    # Killed before the second loop was saved: the rerun fills it again, the same.
    store.loop_path("flatten", 1).unlink()
    again = run_surfaces(experiment(digits_classifier, tmp_path, loops=loops), data, wandb=NO_WANDB)
    assert again is not None
    redone = again.load_loops("flatten")[1]
    for key in ("verdict", "certificate", "min_margin", "steps", "vertices"):
        assert redone[key] == records[1][key], key
    assert torch.equal(redone["points"], records[1]["points"])
    with pytest.raises(RunFolderError, match="different experiment"):
        run_surfaces(
            experiment(digits_classifier, tmp_path, loops=loops, spaces=["input"]),
            data,
            wandb=NO_WANDB,
        )


def test_a_bad_loops_option_fails_before_any_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "surfaces",
                "--classifier",
                str(tmp_path / "none.ckpt"),
                "--name",
                "bad",
                "--output_dir",
                str(tmp_path),
                "--loops.size",
                "5",
                "--data",
                "connectivity.data.DigitsDataModule",
            ]
        )
    assert exit_info.value.code == 2
    assert "loops.size must be 3 or 4" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
