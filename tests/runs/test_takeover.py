"""Runs resumed on another number of ranks decide each pair exactly once.

The fast tests play the ranks of a run one after another in this process
(:class:`tests.toy.PretendRank`, on :class:`tests.toy.RingNet`, whose pairs across the ring's hole
all need a band); the slow ones start real processes (``ddp_pairs`` on the CPU, gloo).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from connectivity.engine.decisions import PairRecord
from connectivity.engine.options import PathOptions
from connectivity.lightning.path_module import BandCheckpoint
from connectivity.runs.paths import SpacePathModule
from connectivity.runs.takeover import take_over
from connectivity.runs.trainer import RecordWriter
from connectivity.store.records import Pair, RunStore
from tests.conftest import REPO
from tests.toy import PretendRank, RaiseAfterBandStep, RingNet, digits_test_predictions, ring_pairs

PAIRS = 4
# converge + tol 0: every band runs all its steps; SGD: a band re-queued from its saved path
# goes on as it would have (no optimiser state to lose).
OPTIONS = PathOptions(num_pivots=4, steps=12, tol=0.0, converge=True, optimizer="sgd", lr=0.05)


class CountingStore(RunStore):
    """A run folder that counts the record writes of each ``(space, pair id)``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.writes: Counter[tuple[str, int]] = Counter()

    def save(
        self, space: str, pair: Pair, record: PairRecord, end_images: torch.Tensor | None = None
    ) -> None:
        self.writes[space, pair.id] += 1
        super().save(space, pair, record, end_images)


class FirstSteps(L.Callback):
    """The steps each pair's band showed at the end of the first training step it was in:
    at most 1 for a band that started from its line, more for one that went on from a saved
    state."""

    def __init__(self) -> None:
        self.first: dict[int, int] = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *_: Any) -> None:
        band = module.band
        for j, row in enumerate(module.band_rows.tolist()):
            pair = module.rows[row].id
            self.first.setdefault(pair, int(band.steps[j]))


def _fit(store: RunStore, strategy: Any, *callbacks: L.Callback) -> SpacePathModule:
    images, indices = ring_pairs(PAIRS)
    dataset = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    pairs = [Pair(k, i, j, 0) for k, (i, j) in enumerate(indices)]
    folder = store.folder / "bands" / "input"
    module = SpacePathModule(RingNet(), "input", pairs, dataset, OPTIONS, store, folder)
    trainer = L.Trainer(
        accelerator="cpu",
        strategy=strategy,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[RecordWriter(store), BandCheckpoint(folder, every_n_steps=4), *callbacks],
    )
    trainer.fit(module)
    return module


def _killed(store: RunStore, strategy: Any) -> None:
    """A fit stopped after band step 6: its last band checkpoint is the one of step 4."""
    with pytest.raises(RuntimeError, match="on purpose"):
        _fit(store, strategy, RaiseAfterBandStep(6))


def _bands(store: RunStore) -> dict[str, dict[str, Any]]:
    folder = store.folder / "bands" / "input"
    return {p.name: torch.load(p, weights_only=True) for p in sorted(folder.glob("*.pt"))}


def _record_bytes(store: RunStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (store.records_dir / "input").glob("pair_*.pt")}


def test_killed_on_two_ranks_finished_on_one_takes_over_the_other_ranks_band(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "run")
    for rank in (0, 1):
        _killed(store, PretendRank(rank, 2))
    saved = _bands(store)
    assert {name: c["pair_ids"] for name, c in saved.items()} == {
        "rank0.pt": [0, 2],
        "rank1.pt": [1, 3],
    }
    assert {c["steps"] for c in saved.values()} == {4} and not store.writes
    leftover = (store.folder / "bands" / "input" / "rank1.pt").read_bytes()

    first = FirstSteps()
    module = _fit(store, "auto", first)
    assert store.writes == {("input", k): 1 for k in range(PAIRS)}
    assert store.done("input") == set(range(PAIRS))
    assert _bands(store) == {}  # rank1.pt was taken over, then removed with rank0.pt
    assert module.taken_over == 2 and module.resumed_at == 4
    # Every band went on from step 4, none from its line.
    assert sorted(first.first) == list(range(PAIRS)) and min(first.first.values()) >= 4

    # The same pairs decided on two ranks without a stop: the same records.
    whole = CountingStore(tmp_path / "whole")
    for rank in (0, 1):
        _fit(whole, PretendRank(rank, 2))
    for a, b in zip(store.load("input"), whole.load("input"), strict=True):
        assert (a["pair"], a["verdict"], a["steps"]) == (b["pair"], b["verdict"], b["steps"])
        assert a["steps"] == OPTIONS.steps
        assert torch.equal(a["path"], b["path"]), a["pair"]

    # A finished run with a band checkpoint of a rank left behind (as the run that left it
    # stopped before its pairs were saved elsewhere) decides nothing, on any number of ranks.
    records = _record_bytes(store)
    (store.folder / "bands" / "input" / "rank1.pt").write_bytes(leftover)
    for rank in (0, 1):
        _fit(store, PretendRank(rank, 2))
    assert store.writes == {("input", k): 1 for k in range(PAIRS)}
    assert _record_bytes(store) == records and _bands(store) == {}


def test_killed_on_one_rank_resumed_on_two_decides_each_pair_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "run")
    _killed(store, "auto")
    assert _bands(store)["rank0.pt"]["pair_ids"] == list(range(PAIRS))

    # Rank 0 of 2 goes on with pairs 0 and 2 from the band of rank0.pt and decides them while
    # rank 1 is still busy: its own file, written anew, still carries the saved band states
    # of pairs 1 and 3 (rank 1 reads it after rank 0 replaced it).
    first = FirstSteps()
    _fit(store, PretendRank(0, 2, others_busy=True), first)
    assert store.writes == {("input", 0): 1, ("input", 2): 1}
    carried = _bands(store)["rank0.pt"]["carried"]
    assert sorted(carried) == [1, 3] and {state[1] for state in carried.values()} == {4}
    module = _fit(store, PretendRank(1, 2), first)
    assert module.taken_over == 2
    assert store.writes == {("input", k): 1 for k in range(PAIRS)}
    # All went on from step 4, none from its line.
    assert sorted(first.first) == list(range(PAIRS)) and min(first.first.values()) >= 4

    # A rerun of the finished run, on two ranks, decides nothing; its records stay as they are.
    records = _record_bytes(store)
    for rank in (0, 1):
        _fit(store, PretendRank(rank, 2))
    assert store.writes == {("input", k): 1 for k in range(PAIRS)}
    assert _record_bytes(store) == records and _bands(store) == {}


def _digit_pairs(classifier: Path, bands: int, lines: int) -> list[list[int]]:
    """Same-class test pairs of the digits: ``bands`` pairs with a misclassified end (their
    line never passes the check, so their band runs every step), then ``lines`` pairs of
    correctly classified images."""
    dataset, labels, right = digits_test_predictions(classifier)
    wrong = (~right).nonzero().squeeze(1).tolist()
    if len(wrong) < bands:
        pytest.skip(f"the digits classifier misclassifies fewer than {bands} test images")
    used: set[int] = set(wrong[:bands])
    pairs = []
    for bad in wrong[:bands]:
        other = next(
            i
            for i in range(len(dataset))
            if labels[i] == labels[bad] and right[i] and i not in used
        )
        used.add(other)
        pairs.append([bad, other])
    for _ in range(lines):
        a = next(i for i in range(len(dataset)) if right[i] and i not in used)
        b = next(
            i
            for i in range(len(dataset))
            if right[i] and labels[i] == labels[a] and i not in used | {a}
        )
        used |= {a, b}
        pairs.append([a, b])
    return pairs


@pytest.mark.slow  # ~1-2 min: four runs in other processes, two of them on two ranks
def test_real_ranks_killed_and_resumed_on_other_numbers_decide_each_pair_once(
    digits_classifier: Path, tmp_path: Path
) -> None:
    indices = _digit_pairs(digits_classifier, bands=4, lines=2)
    config = tmp_path / "r.yaml"
    config.write_text(
        f"name: r\nclassifier: {digits_classifier}\noutput_dir: {tmp_path}\nspaces: [input]\n"
        f"pairs: {{indices: {indices}}}\n"
        "path: {num_pivots: 4, steps: 30, converge: true, tol: 0.0}\ncheckpoint_every: 5\n"
        "data: {class_path: connectivity.data.DigitsDataModule}\nwandb: {enabled: false}\n"
    )
    log = tmp_path / "writes.log"
    bands = tmp_path / "r" / "bands" / "input"
    records = tmp_path / "r" / "records" / "input"

    def run(ranks: int, kill: int | None) -> list[tuple[str, str, str]]:
        callbacks = f"{{class_path: tests.toy.LogRecordWrites, init_args: {{log: {log}}}}}"
        if kill is not None:
            callbacks += (
                f", {{class_path: tests.toy.KillAfterBandStep, init_args: {{step: {kill}}}}}"
            )
        command = [sys.executable, "-m", "connectivity.cli", "paths", "-c", str(config)]
        command += ["--trainer.accelerator", "cpu", "--trainer.callbacks", f"[{callbacks}]"]
        if ranks > 1:
            command += ["--trainer.devices", str(ranks), "--trainer.strategy", "ddp_pairs"]
        before = log.read_text().splitlines() if log.exists() else []
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
        expected = 0 if kill is None else -signal.SIGKILL
        assert done.returncode == expected, done.stderr[-3000:]
        return [tuple(line.split()) for line in log.read_text().splitlines()[len(before) :]]

    # Killed on 1 process after band step 12 (band checkpoint at step 10): the 2 line pairs
    # are decided; the 4 bands are in rank0.pt.
    first = run(1, kill=12)
    assert sorted(int(p) for _, p, _ in first) == [4, 5]
    assert sorted(f.name for f in bands.glob("*.pt")) == ["rank0.pt"]
    # Resumed on 2 ranks, killed again after step 17 (checkpoints at step 15 on both ranks).
    second = run(2, kill=17)
    assert second == []
    assert sorted(f.name for f in bands.glob("*.pt")) == ["rank0.pt", "rank1.pt"]
    # Finished on 1 process: rank1.pt is taken over, and removed.
    third = run(1, kill=None)
    assert sorted(int(p) for _, p, _ in third) == [0, 1, 2, 3]
    assert list(bands.glob("*.pt")) == []
    writes = Counter(int(p) for _, p, _ in first + second + third)
    assert writes == {k: 1 for k in range(6)}  # each pair's record written once
    steps = {r["pair"]["id"]: r["steps"] for r in RunStore(tmp_path / "r").load("input")}
    assert steps == {0: 30, 1: 30, 2: 30, 3: 30, 4: 0, 5: 0}

    # The finished run rerun on 2 ranks decides nothing: its records stay byte for byte.
    saved = {f.name: f.read_bytes() for f in records.glob("pair_*.pt")}
    assert run(2, kill=None) == []
    assert {f.name: f.read_bytes() for f in records.glob("pair_*.pt")} == saved
    assert list(bands.glob("*.pt")) == []


def _saved_band(nudged: list[float], anchored: list[list[bool]]) -> dict[str, Any]:
    """A band checkpoint's band state of two pairs of 1-D points with two pivots each."""
    pairs = len(nudged)
    return {
        "starts": torch.zeros(pairs, 1),
        "ends": torch.ones(pairs, 1),
        "pivots": torch.full((pairs, 2, 1), 0.5),
        "steps": torch.tensor([7] * pairs),
        "active": torch.ones(pairs, dtype=torch.bool),
        "nudged": torch.tensor(nudged),
        "anchored": torch.tensor(anchored),
    }


def test_a_taken_over_pair_keeps_its_nudges_and_inserted_pivots() -> None:
    # Rank 1's file (a run on two ranks) holds the band of pairs 10 and 11 and the queued path
    # of pair 12; pair 11 had a nudge of 0.25 in an earlier band, and this band nudged pair 10
    # by 0.5. Rank 0 of one rank continues its own file's band (pair 13) and takes them over.
    own = {
        "pair_ids": [13],
        "band": _saved_band([0.0], [[False, False]]),
        "band_rows": [0],
        "optimizer": {"state": {}, "param_groups": []},
    }
    other = {
        "pair_ids": [10, 11, 12],
        "band": _saved_band([0.5, 0.0], [[True, False], [False, False]]),
        "band_rows": [0, 1],
        "queued": {2: (torch.zeros(5, 1), 3, torch.tensor([0, 1, 0, 0, 0]).bool())},
        "nudges": {1: 0.25, 2: 0.125},
        "optimizer": {"state": {}, "param_groups": []},
    }
    plan = take_over({0: own, 1: other}, 0, 1, [13, 10, 11, 12], {10, 11, 12, 13})
    checkpoint = plan.checkpoint
    assert checkpoint is not None and checkpoint["band_rows"] == [0]  # pair 13 goes on
    queued = checkpoint["queued"]
    assert sorted(queued) == [1, 2, 3]  # pairs 10, 11, 12 (rows of rank 0) queued
    path, steps, inserted = queued[1]
    assert steps == 7 and path.shape == (4, 1)
    assert inserted.tolist() == [False, True, False, False]  # pair 10's anchored pivot
    assert queued[3][2].tolist() == [False, True, False, False, False]
    # Earlier bands' nudges plus the nudge of the band the pair leaves.
    assert checkpoint["nudges"] == {1: 0.5, 2: 0.25, 3: 0.125}
