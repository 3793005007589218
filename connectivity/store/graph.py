"""Where a graph run (``connectivity graph``) keeps its records, rounds and embeddings."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from connectivity.engine.graph import Pair
from connectivity.store.records import RunStore, atomic_write_bytes

MISCLASSIFIED = "misclassified"


class ScopedStore(RunStore):
    """The records of one model in a graph run folder: ``records/<scope>/<space>/``."""

    def __init__(self, folder: str | Path, scope: str) -> None:
        super().__init__(folder)
        self.scope = scope

    def record_path(self, space: str, pair_id: int) -> Path:
        return super().record_path(f"{self.scope}/{space}", pair_id)

    def _files(self, space: str) -> list[Path]:
        return super()._files(f"{self.scope}/{space}")


class GraphStore(RunStore):
    """A graph run folder (see :mod:`connectivity.runs.graph` for its layout)."""

    def model(self, k: int) -> ScopedStore:
        return ScopedStore(self.folder, f"model{k}")

    def rounds_dir(self, k: int, space: str) -> Path:
        return self.folder / "rounds" / f"model{k}" / space

    def embedding_path(self, k: int, space: str, label: int) -> Path:
        return self.folder / "embeddings" / f"model{k}" / space / f"class_{label}.pt"

    def inputs_path(self, label: int) -> Path:
        return self.folder / "inputs" / f"class_{label}.pt"


@dataclass(frozen=True)
class GraphLayout:
    """Pair ids of one model and space: class ``k``'s pair ``(i, j)`` of its ``N_k`` inputs
    is ``offset_k + i * N_k + j`` (unique, stable, readable back)."""

    sizes: tuple[int, ...]

    @property
    def offsets(self) -> list[int]:
        out, total = [], 0
        for n in self.sizes:
            out.append(total)
            total += n * n
        return out

    def pair_id(self, k: int, pair: Pair) -> int:
        return self.offsets[k] + pair[0] * self.sizes[k] + pair[1]

    def locate(self, pair_id: int) -> tuple[int, Pair]:
        for k, (offset, n) in enumerate(zip(self.offsets, self.sizes, strict=True)):
            if offset <= pair_id < offset + n * n:
                i, j = divmod(pair_id - offset, n)
                return k, (i, j)
        raise ValueError(f"pair id {pair_id} is outside this layout")


def write_tensor(path: Path, value: Any) -> None:
    """``torch.save`` ``value`` to ``path`` atomically (readers see the old file or the new)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())
