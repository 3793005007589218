"""Rounds of pivot insertion: a resume in any round, band checkpoints that keep
coming, the exact-check cache, and paths with points that are not points. Found by a
newcomer's attempt to break the Lightning driver's rounds."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.checks import Certifier
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.lightning.path_module import BandCheckpoint, PathModule
from connectivity.lightning.progress import line_check_words
from tests.engine.test_exact import TWO_ROUNDS, TWO_ROUNDS_OPTIONS, Sliver


def _trainer(*callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize("killed_in", [1, 2])
def test_a_band_killed_in_any_round_resumes_to_the_same_records(tmp_path, killed_in: int) -> None:
    # Round 1 is pair 1's band (8 pivots) with pair 0 queued on its grown line; round 2 is pair
    # 0's band (9 pivots), pair 1 decided by its band in round 1.
    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *_) -> None:
            band = pl_module.band
            if band.num_pivots == 7 + killed_in and int(band.steps.max()) >= 2:
                raise RuntimeError("killed")

    starts, ends, targets = TWO_ROUNDS
    whole = PathModule(Sliver(), starts, ends, targets, TWO_ROUNDS_OPTIONS)
    _trainer().fit(whole)
    killed = PathModule(Sliver(), starts, ends, targets, TWO_ROUNDS_OPTIONS)
    saver = BandCheckpoint(tmp_path, every_n_steps=1)
    with pytest.raises(RuntimeError, match="killed"):
        _trainer(saver, Kill()).fit(killed)
    checkpoint = torch.load(saver.path(0), weights_only=True)
    assert checkpoint["band"]["pivots"].shape[1] == 7 + killed_in
    if killed_in == 1:
        assert checkpoint["band_rows"] == [1] and list(checkpoint["decided"]) == []
        assert list(checkpoint["queued"]) == [0] and checkpoint["queued"][0][0].shape[0] == 11
    else:
        assert checkpoint["band_rows"] == [0] and list(checkpoint["queued"]) == []
        assert list(checkpoint["decided"]) == [1]  # no band or queue would decide it again
    resumed = PathModule(Sliver(), starts, ends, targets, TWO_ROUNDS_OPTIONS)
    resumed.resume_from(checkpoint)
    said = []

    class Say(L.Callback):  # the line a person reads when the resumed band starts
        def on_train_start(self, trainer, pl_module) -> None:
            said.append(line_check_words(pl_module))

    _trainer(BandCheckpoint(tmp_path, every_n_steps=1), Say()).fit(resumed)
    # Neither line passes; pair 1 was decided by its band before the kill, not by its line.
    kept = "; 1 decided by the band before it stopped (kept)" if killed_in == 2 else ""
    assert said == [f"path: line check: 0 of 2 pairs linear{kept}"]
    for a, b in zip(resumed.records(), whole.records(), strict=True):
        assert (a.verdict, a.certificate, a.steps) == (b.verdict, b.certificate, b.steps)
        assert torch.equal(a.path, b.path)
    assert not saver.path(0).exists()  # every pair decided: the checkpoint is gone


def test_the_exact_check_cache_overflowing_on_a_call_with_hits_and_misses(monkeypatch) -> None:
    from connectivity.engine import checks

    monkeypatch.setattr(checks, "_CACHED_CHECKS", 8)  # the logic of 1,024, in 8 checks
    certifier = Certifier.for_tail(Sliver(), PathOptions(certify="exact"))
    target = torch.zeros(1, dtype=torch.long)
    cached = torch.tensor([[[-1.0, 0.5], [1.0, 0.5]]])
    certifier.check(cached, target)
    for k in range(7):  # a full cache
        certifier.check(torch.tensor([[[-1.0, 0.6 + k * 1e-3], [1.0, 0.5]]]), target)
    new = torch.tensor([[[-1.0, -0.5], [1.0, -0.5]]])
    # the miss overflows the cache; the hit must still be answered (it raised KeyError)
    checks = certifier.check(torch.cat([cached, new]), torch.zeros(2, dtype=torch.long))
    assert [bool(c.passed[0]) for c in checks] == [True, True]
    # y = 0.5 lies beyond the strip's |y| < 0.3: the lowest margin is 4 * (0.5 - 0.3)
    assert [float(c.min_margin[0]) for c in checks] == pytest.approx([0.8, 0.8], abs=1e-6)


class Bars(nn.Module):
    """Class 1 on three bars (piecewise linear), class 0 elsewhere, tilted in y."""

    BARS = ((0.0, 0.02, 0.0, 0.6), (1.0, 0.2, 0.0, 0.8), (-1.0, 0.05, 0.0, 50.0))

    def forward(self, z: Tensor) -> Tensor:
        x, y = z[:, 0], z[:, 1]
        best = None
        for c, w, d, h in self.BARS:
            a = 5.0 * (w - (x - c).abs())
            b = 5.0 * (h - (y - d).abs())
            m = a - F.relu(a - b)
            best = m if best is None else best + F.relu(m - best)
        return torch.stack([0.7 * y, best], dim=1)


def test_band_checkpoints_keep_coming_after_the_pair_with_most_steps_leaves(tmp_path) -> None:
    starts = torch.tensor([[-0.5, 0.0], [0.5, 0.1], [-0.4, 0.9], [-1.5, 0.0], [-0.3, 0.3],
                           [0.45, -0.3], [-0.45, -0.1]])  # fmt: skip
    ends = torch.tensor([[0.6, 0.1], [1.6, 0.2], [0.5, 0.9], [-0.5, 0.1], [2.0, -0.2],
                         [0.7, -0.35], [0.62, 0.0]])  # fmt: skip
    options = PathOptions(num_pivots=3, steps=80, lr=0.05, certify="exact", optimizer="fire")

    class Watch(BandCheckpoint):
        unsaved: list[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            before = self._saved_at
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            band = pl_module.band
            if not band.done and self._saved_at == before:
                self.unsaved.append(batch_idx)

    watch = Watch(tmp_path, every_n_steps=1)
    module = PathModule(Bars(), starts, ends, torch.zeros(7, dtype=torch.long), options)
    _trainer(watch).fit(module)
    # it skipped batches 84..95 (band [0, 3, 6]: pair 3 came with 16 steps and left at 19)
    assert watch.unsaved == []
    assert len(module.records()) == 7


def test_a_path_through_a_point_that_is_not_a_point_leaves_the_class_exactly() -> None:
    # A NaN coordinate made the exact check's tolerance NaN and raised "please report".
    nan = float("nan")
    paths = torch.tensor([[[nan, 0.0], [0.5, 0.0]], [[-1.0, 0.5], [1.0, 0.5]]])
    certifier = Certifier.for_tail(Sliver(), PathOptions(certify="exact"))
    first, second = certifier.check(paths, torch.zeros(2, dtype=torch.long))
    assert bool(first.decided[0]) and not bool(first.passed[0])
    assert float(first.min_margin[0]) == -math.inf and first.off_target[0].tolist() == [[0, 1]]
    assert bool(second.passed[0]) and float(second.min_margin[0]) == pytest.approx(0.8, abs=1e-6)
    records = connect_points(
        Sliver(), paths[:, 0], paths[:, 1], torch.zeros(2, dtype=torch.long),
        PathOptions(certify="exact", steps=5),
    )  # fmt: skip
    assert [(r.verdict, r.status) for r in records] == [
        ("diverged", "diverged"),
        ("linear", "linear"),
    ]
    assert records[1].certificate == "exact"


def test_the_tolerance_covers_the_rounding_of_interpolated_points() -> None:
    # In float32, the margin 0.8 at a point inserted between logits of 10^4 comes out 1.4e-4
    # off: more than 1,000 epsilons of the point's own logits, within 1,000 of the path's.
    from connectivity.engine.exact import check_paths

    path = torch.tensor([[[-1.0, 0.5], [1.0, 0.5]]])
    check = check_paths(Sliver().float(), path, torch.tensor([0]))
    error = abs(float(check.min_margin[0]) - 0.8)
    eps = torch.finfo(torch.float32).eps
    assert error > 1000 * eps * 0.8
    assert error <= float(check.tolerance[0]) == pytest.approx(1000 * eps * 10_113, rel=1e-3)
    assert not bool(check.decided[0])  # the lowest margin, 0.8, lies within 1.2 of 0
