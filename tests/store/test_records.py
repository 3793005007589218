"""The run folder: what it accepts, what each record holds, how damage is reported."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from connectivity.engine.decisions import PairRecord
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.store.records import Pair, RunFolderError, RunStore
from tests.toy import Stripes


def _records(pairs: int, dim: int = 64) -> list[PairRecord]:
    """Records of ``pairs`` pairs decided together in one batch (points in ``dim`` dims)."""
    generator = torch.Generator().manual_seed(0)
    # Stripes: class 0 wherever x < 1; all ends lie there. Pair k's ends do not depend on
    # how many pairs are drawn.
    ends = torch.rand(pairs, 2, dim, generator=generator) * 0.5
    starts, ends = ends[:, 0], ends[:, 1]
    targets = torch.zeros(pairs, dtype=torch.long)
    return connect_points(Stripes(), starts, ends, targets, PathOptions(num_pivots=4, steps=5))


def _save(store: RunStore, ids: list[int], record: PairRecord, space: str = "input") -> None:
    for k in ids:
        store.save(space, Pair(k, k, k + 1, 0), record)


def test_a_record_holds_its_own_pair_only(tmp_path: Path) -> None:
    alone = _records(1)[0]
    in_batch = _records(64)[0]  # the same pair (same seed), decided beside 63 others
    assert torch.equal(alone.path, in_batch.path)
    one, many = RunStore(tmp_path / "one"), RunStore(tmp_path / "many")
    _save(one, [0], alone)
    _save(many, [0], in_batch)
    size_one = one.record_path("input", 0).stat().st_size
    size_many = many.record_path("input", 0).stat().st_size
    # A slice saved as is would carry all 64 pairs' tensors (over 60 times the 6x64 floats).
    assert size_many <= size_one
    assert size_one - size_many < 300
    assert many.load("input")[0]["path"].shape == (6, 64)


def test_records_come_back_in_pair_id_order_past_9999(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    record = _records(1, dim=2)[0]
    _save(store, [10001, 2, 9999, 10000, 9998], record)
    assert [r["pair"]["id"] for r in store.load("input")] == [2, 9998, 9999, 10000, 10001]
    assert store.done("input") == {2, 9998, 9999, 10000, 10001}


def test_a_folder_without_records_is_claimed_anew_one_with_records_is_refused(
    tmp_path: Path,
) -> None:
    store = RunStore(tmp_path)
    store.start({"spaces": ["input"], "path": {"steps": -1}})  # a run that died at once
    store.start({"spaces": ["input"], "path": {"steps": 20}})  # its corrected rerun
    assert store.manifest() == {"spaces": ["input"], "path": {"steps": 20}}
    _save(store, [0], _records(1, dim=2)[0])
    # The key under `path` that differs, with both values (issue 19 item 4).
    words = r"different experiment \(differs in: path\.steps \(folder: 20, asked: 30\)\)"
    with pytest.raises(RunFolderError, match=words):
        store.start({"spaces": ["input"], "path": {"steps": 30}})
    words = r"differs in: path\.lr \(folder: absent, asked: 0\.1\); spaces \(folder: "
    with pytest.raises(RunFolderError, match=words):
        store.start({"spaces": ["input", "flatten"], "path": {"steps": 20, "lr": 0.1}})
    assert store.manifest() == {"spaces": ["input"], "path": {"steps": 20}}
    # The pair options by the name a config gives them (the manifest keeps them as sampling).
    drawn = RunStore(tmp_path / "drawn")
    drawn.start({"pairs": [[0, 1, 2, 0]], "sampling": {"count": 3}})
    _save(drawn, [0], _records(1, dim=2)[0])
    words = r"differs in: the pairs drawn \(folder: .*\); pairs\.count \(folder: 3, asked: 4\)\)"
    with pytest.raises(RunFolderError, match=words):
        drawn.start({"pairs": [[0, 1, 2, 0], [1, 3, 4, 0]], "sampling": {"count": 4}})


def test_a_damaged_record_is_named_when_loaded_and_moved_aside_on_resume(
    tmp_path: Path,
) -> None:
    store = RunStore(tmp_path)
    _save(store, [0, 1, 2], _records(1, dim=2)[0])
    damaged = store.record_path("input", 1)
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(RunFolderError) as error:
        store.load("input")
    message = str(error.value)
    assert str(damaged) in message and "Rerun the same config" in message
    assert "\n" not in message
    with pytest.warns(RuntimeWarning, match=r"pair_0001\.pt cannot be read.*deciding that pair"):
        assert store.done("input") == {0, 2}
    assert not damaged.exists()
    aside = list(damaged.parent.glob("pair_0001.pt.damaged-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left to move aside
        assert [r["pair"]["id"] for r in store.load("input")] == [0, 2]


def test_a_damaged_run_json_is_named(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.start({"spaces": ["input"]})
    (store.folder / "run.json").write_text('{"spaces": [')
    with pytest.raises(RunFolderError, match=r"run\.json is damaged.*delete the run folder"):
        store.manifest()
    store.start({"spaces": ["input"]})  # nothing decided yet: the rerun claims it anew
    assert store.manifest() == {"spaces": ["input"]}
