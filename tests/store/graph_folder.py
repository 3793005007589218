"""A small graph run folder written by hand: two models, one space, two classes of 3 inputs."""

from __future__ import annotations

from pathlib import Path

import torch

from connectivity.store.files import write_tensor
from connectivity.store.graph import MISCLASSIFIED, GraphLayout, GraphStore

SIZES = (3, 3)
# Per model, the decided pairs of each class: (class, i, j) -> verdict.
DECIDED = [
    {(0, 0, 1): "linear", (0, 1, 2): "nonlinear", (1, 0, 1): "none", (1, 0, 2): "linear"},
    {(0, 0, 1): "linear", (0, 0, 2): "none", (1, 0, 1): "linear", (1, 1, 2): "linear"},
]


def graph_folder(folder: Path) -> GraphStore:
    """The folder, settled, with embeddings, thumbnails and one misclassified input of model 0
    tried against class 1's component."""
    store = GraphStore(folder)
    inputs = [
        {"label": label, "indices": [10 * label + i for i in range(n)]}
        for label, n in enumerate(SIZES)
    ]
    store.start(
        {
            "kind": "graph",
            "classifiers": ["a.ckpt", "b.ckpt"],
            "class_names": ["zero", "one"],
            "spaces": ["input"],
            "inputs": inputs,
        }
    )
    layout = GraphLayout(SIZES)
    for k, decided in enumerate(DECIDED):
        for (c, i, j), verdict in decided.items():
            pair_id = layout.pair_id(c, (i, j))
            record = {"pair": {"id": pair_id}, "verdict": verdict, "target": c, "steps": 3}
            write_tensor(store.model(k).record_path("input", pair_id), record)
        store.mark_settled(k, "input")
        for c, n in enumerate(SIZES):
            coords = torch.arange(2.0 * n).reshape(n, 2)
            store.save_embedding(k, "input", c, {"coords": coords, "indices": inputs[c]["indices"]})
    for c, n in enumerate(SIZES):
        images = torch.full((n, 1, 4, 4), 100 * c, dtype=torch.uint8)
        store.save_inputs(c, {"indices": inputs[c]["indices"], "images": images})
    tries = [{"component": 0, "member": 0, "pair": 0}]
    row = {"index": 99, "label": 0, "predicted": 1, "nearest_own_distance": 1.5}
    row |= {"nearest_own_index": 0, "nearest_predicted_distance": 0.5, "tries": tries}
    store.save_misclassified(0, "input", [row])
    tried = {"pair": {"id": 0}, "verdict": "linear", "target": 1}
    write_tensor(store.model(0).record_path(f"{MISCLASSIFIED}-input", 0), tried)
    return store
