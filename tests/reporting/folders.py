"""A small finished path run folder for the report's tests: two spaces, two pairs."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import torch

from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.store.records import Pair, RunStore
from tests.toy import RingNet, Stripes, ring_images

CLASSES = ["ring", "rest"]
NAMES = ["zero", "one"]


def line_records() -> list[dict]:
    """Two records of the input space, decided exactly on known margins."""
    # Logits = the point (2 classes), target 0: the margin along a line is z0 - z1, known exactly.
    # Pair 0: (3, 0) -> (1, 0) stays in class 0 (linear). Pair 1: (2, 0) -> (0, 2) leaves it
    # for class 1 from position 1/2 on, and no step is allowed: no path found.
    starts = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
    ends = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    options = PathOptions(num_pivots=3, steps=0, line_points=9)
    records = connect_points(torch.nn.Identity(), starts, ends, torch.tensor([0, 0]), options)
    out = []
    for i, record in enumerate(records):
        pair = {"id": i, "start_index": 10 + i, "end_index": 20 + i}
        out.append({"space": "input", "pair": pair, **asdict(record)})
    return out


def run_folder(folder: Path) -> RunStore:
    """A finished two-space run: ``input`` (1x2x2 images on RingNet's ring, one pair whose
    line crosses the hole) and ``hidden`` (8-dim points, Stripes, no images)."""
    store = RunStore(folder)
    checkpoint = folder.parent / f"{folder.name}-classifier.ckpt"
    checkpoint.write_bytes(b"weights of the toy classifier")
    pairs = [Pair(0, 0, 1, 0), Pair(1, 2, 3, 0)]
    store.start(
        {
            "classifier": str(checkpoint),
            "classifier_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "class_names": CLASSES,
            "spaces": ["input", "hidden"],
            "pairs": [asdict(p) for p in pairs],
            "path": {"num_pivots": 4, "steps": 150},
        }
    )
    options = PathOptions(num_pivots=4, steps=150, lr=0.05, bounds=(0.0, 1.0))
    start, end = ring_images()
    near = start.clone()
    near[0, 0] = torch.tensor([0.8, 0.7])  # on the ring beside `start`: a straight line joins
    starts, ends = torch.stack([start, start]), torch.stack([end, near])
    targets = torch.zeros(2, dtype=torch.long)
    for k, record in enumerate(connect_points(RingNet(), starts, ends, targets, options)):
        store.save("input", pairs[k], record)
    points = torch.rand(2, 2, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    hidden = connect_points(
        Stripes(), points[:, 0], points[:, 1], targets, PathOptions(num_pivots=4, steps=5)
    )
    for k, record in enumerate(hidden):
        store.save("hidden", pairs[k], record)
    return store
