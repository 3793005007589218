"""PathModule under a Lightning Trainer gives the same answers as the plain path search."""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from connectivity.engine.decisions import PairRecord
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.lightning.path_module import PathModule
from tests.engine.test_exact import TWO_ROUNDS, TWO_ROUNDS_OPTIONS, Sliver
from tests.toy import HOLE_ENDS, Annulus, Hole, RingNet, Stripes, ring_images


def _fit(module: PathModule, tmp_path) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module)
    return trainer


def _assert_same_records(got: list[PairRecord], expected: list[PairRecord]) -> None:
    """Every field of every record equal: scalars (NaN equal to NaN) and tensors bit for bit."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        for field in dataclasses.fields(PairRecord):
            x, y = getattr(a, field.name), getattr(b, field.name)
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), field.name
            elif isinstance(x, float) and math.isnan(x):
                assert math.isnan(y), field.name
            else:
                assert x == y, field.name


OPTIMIZERS = ["adam", "sgd", "fire", "lbfgs"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_same_result_as_connect_points_on_toy_regions(tmp_path, optimizer: str) -> None:
    starts = torch.tensor([[1.5, 0.2], [1.2, -0.3], [1.5, 0.6]])
    ends = torch.tensor([[-1.5, 0.1], [1.4, 0.3], [-1.4, 0.8]])
    targets = torch.tensor([0, 0, 0])
    options = PathOptions(num_pivots=8, steps=120, lr=0.05, optimizer=optimizer)
    expected = connect_points(Annulus(), starts, ends, targets, options)
    module = PathModule(Annulus(), starts, ends, targets, options)
    trainer = _fit(module, tmp_path)
    got = module.records()
    assert "linear" in [r.verdict for r in got] and "nonlinear" in [r.verdict for r in got]
    # Both drivers run the same search object: the very same records, not only close ones.
    _assert_same_records(got, expected)
    # it stopped by itself once every pair was decided, long before max_steps
    assert trainer.global_step < options.steps
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    for name in ["path/max_energy", "path/max_force", "path/on_target", "path/active_pairs"]:
        assert name in metrics


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_same_records_as_connect_points_with_pivots_inserted(tmp_path, optimizer: str) -> None:
    # A sliver of the class between two pivots: with the exact check, pair 0's line gets a
    # pivot inserted there and its band runs in a second round.
    starts, ends, targets = TWO_ROUNDS
    options = dataclasses.replace(TWO_ROUNDS_OPTIONS, optimizer=optimizer, max_pivots=10)
    expected = connect_points(Sliver(), starts, ends, targets, options)
    module = PathModule(Sliver(), starts, ends, targets, options)
    _fit(module, tmp_path)
    got = module.records()
    assert got[0].path.shape[0] > options.num_pivots + 2  # pivots were inserted
    _assert_same_records(got, expected)


def test_same_result_on_a_small_conv_net_in_image_space(tmp_path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 3),
    ).eval()
    starts, ends = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    targets = net(starts).argmax(dim=1)
    options = PathOptions(num_pivots=4, steps=15, lr=0.02, bounds=(0.0, 1.0), converge=True)
    expected = connect_points(net, starts, ends, targets, options)
    module = PathModule(net, starts, ends, targets, options)
    _fit(module, tmp_path)
    for a, b in zip(module.records(), expected, strict=True):
        assert a.verdict == b.verdict and a.steps == b.steps
        assert torch.allclose(a.path, b.path, atol=1e-5)
        assert a.path.min() >= 0.0 and a.path.max() <= 1.0


def test_tail_stays_frozen_in_eval_mode(tmp_path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    before = [p.clone() for p in net.parameters()]
    starts, ends = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    module = PathModule(net, starts, ends, torch.tensor([0]), PathOptions(steps=5, converge=True))
    _fit(module, tmp_path)
    assert not module.tail.network.training
    assert all(p.requires_grad for p in net.parameters())  # the caller's module is not frozen
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_linear_pairs_need_no_steps(tmp_path) -> None:
    starts, ends = torch.tensor([[-3.0, -2.0]]), torch.tensor([[0.5, 3.0]])
    module = PathModule(Stripes(), starts, ends, torch.tensor([0]))
    trainer = _fit(module, tmp_path)
    (record,) = module.records()
    assert record.verdict == "linear" and record.steps == 0
    assert trainer.global_step == 0


PRECISIONS = ["32-true", "64-true", "bf16-true", "bf16-mixed"] + (
    ["16-mixed"] if torch.cuda.is_available() else []  # Lightning refuses 16-mixed on CPU
)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_trainer_precision_gives_the_32_bit_verdicts(tmp_path, precision: str) -> None:
    start, end = ring_images()
    starts, ends = torch.stack([start, start]), torch.stack([end, start.flip(-1)])
    targets = torch.tensor([0, 0])
    options = PathOptions(steps=300, bounds=(0.0, 1.0))
    expected = connect_points(RingNet(), starts, ends, targets, options)
    module = PathModule(RingNet(), starts, ends, targets, options)
    trainer = L.Trainer(
        max_epochs=1,
        precision=precision,
        accelerator="cuda" if precision == "16-mixed" else "cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module)
    got = module.records()
    assert [r.verdict for r in got] == [r.verdict for r in expected] == ["nonlinear", "linear"]
    # the band keeps its working precision whatever the tail runs in
    working = torch.float64 if precision == "64-true" else torch.float32
    assert module.band.pivots.dtype == working and got[0].path.dtype == working
    assert torch.equal(got[0].path[0], starts[0].to(working))  # the ends stay exact
    if precision == "32-true":
        assert got[0].steps == expected[0].steps
        assert torch.allclose(got[0].path, expected[0].path, atol=1e-6)


def test_64_true_follows_the_float64_search_step_by_step(tmp_path) -> None:
    # A band built in float32 and cast to float64 carried rounding noise across the band, which
    # Adam's first step turned into a visible move. On this symmetric pair the tangential force
    # is exactly 0, so the float64 search is steered by rounding alone: the module must follow
    # the very same float64 trajectory, not only reach the same kind of verdict.
    start, end = ring_images(torch.float64)
    starts, ends, targets = start[None], end[None], torch.tensor([0])
    options = PathOptions(steps=100, num_pivots=1, bounds=(0.0, 1.0))
    (expected,) = connect_points(RingNet().double(), starts, ends, targets, options)
    module = PathModule(RingNet(), starts, ends, targets, options)
    L.Trainer(
        max_epochs=1,
        precision="64-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    ).fit(module)
    (got,) = module.records()
    assert got.verdict == expected.verdict and got.steps == expected.steps
    assert torch.allclose(got.path, expected.path, atol=1e-12)


def test_the_lightning_driver_nudges_a_symmetric_band_as_connect_points_does(tmp_path) -> None:
    starts, ends = HOLE_ENDS
    options = PathOptions(num_pivots=8, steps=300, lr=0.1, line_points=1001, optimizer="fire")
    (expected,) = connect_points(Hole(), starts, ends, torch.tensor([0]), options)
    module = PathModule(Hole(), starts, ends, torch.tensor([0]), options)
    _fit(module, tmp_path)
    (got,) = module.records()
    assert (
        (got.verdict, got.status)
        == (expected.verdict, expected.status)
        == (
            "nonlinear",
            "certified",
        )
    )
    assert got.nudge == expected.nudge > 0 and got.steps == expected.steps > 0
    assert torch.equal(got.path, expected.path)
