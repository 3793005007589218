"""A graph run folder: pair ids of a layout, records per model, rounds, embeddings, inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from connectivity.store.files import RunFolderError
from connectivity.store.graph import GraphLayout, GraphStore
from tests.store.graph_folder import graph_folder


def test_a_layout_gives_every_pair_of_every_class_one_id_read_back_to_it() -> None:
    layout = GraphLayout((2, 3))
    ids = [
        layout.pair_id(k, (i, j)) for k, n in enumerate((2, 3)) for i in range(n) for j in range(n)
    ]
    assert ids == list(range(4 + 9))
    assert all(layout.locate(layout.pair_id(1, (i, 2))) == (1, (i, 2)) for i in range(3))
    with pytest.raises(ValueError, match="outside this layout"):
        layout.locate(13)


def test_each_model_keeps_its_records_apart(tmp_path: Path) -> None:
    store = graph_folder(tmp_path / "graph")
    first, second = store.model(0), store.model(1)
    assert first.record_path("input", 1).parent == store.folder / "records" / "model0" / "input"
    assert first.done("input") == {1, 5, 10, 11} and second.done("input") == {1, 2, 10, 14}
    assert first.read_record("input", 5)["verdict"] == "nonlinear"
    assert [r["verdict"] for r in second.load("input")] == ["linear", "none", "linear", "linear"]


def test_rounds_are_replayed_as_planned_and_a_space_is_settled_once_done(tmp_path: Path) -> None:
    store = GraphStore(tmp_path / "graph")
    assert store.round_plan(0, "input", 0) is None and not store.settled(0, "input")
    store.save_round_plan(0, "input", 0, [(0, 1, 2), (1, 0, 1)])
    assert store.round_plan(0, "input", 0) == [(0, 1, 2), (1, 0, 1)]
    assert store.round_plan(1, "input", 0) is None  # another model's rounds are its own
    store.mark_settled(0, "input")
    assert store.settled(0, "input") and not store.settled(0, "layer1")
    (store.rounds_dir(0, "input") / "round_0001.json").write_text('{"pairs": [')
    with pytest.raises(RunFolderError, match=r"round_0001\.json is damaged"):
        store.round_plan(0, "input", 1)


def test_embeddings_inputs_and_misclassified_tries_come_back_as_kept(tmp_path: Path) -> None:
    store = graph_folder(tmp_path / "graph")
    embedding = store.load_embedding(1, "input", 0)
    assert torch.equal(embedding["coords"], torch.arange(6.0).reshape(3, 2))
    assert store.load_inputs(1)["images"].dtype == torch.uint8
    (row,) = store.misclassified(0, "input")
    assert row["index"] == 99 and row["tries"][0]["pair"] == 0
    assert store.misclassified(1, "input") == []
    assert store.bands_dir(1, "input") == store.folder / "bands" / "model1" / "input"
