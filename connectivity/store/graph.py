"""Where a graph run (``connectivity graph``) keeps its records, rounds and embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectivity.engine.graph import Pair
from connectivity.store.files import (
    atomic_write_text,
    read_json,
    read_tensor,
    write_json,
    write_tensor,
)
from connectivity.store.records import RunStore

MISCLASSIFIED = "misclassified"

# A model of a graph run: a trained classifier's number ``k`` (folders ``model<k>``), or the
# folder name of an untrained baseline network (:func:`untrained_scope`).
Model = int | str


def untrained_scope(seed: int) -> str:
    """The folder of the untrained baseline network of ``seed`` under ``records/``,
    ``rounds/``, ``embeddings/``, ``bands/``, ``inputs/`` and ``figures/`` (the name a paths
    run gives its records: :func:`~connectivity.store.records.untrained_key`)."""
    return f"untrained_seed{seed}"


def scope_of(model: Model) -> str:
    """The folder name of ``model``: ``model<k>``, or the untrained network's own."""
    return model if isinstance(model, str) else f"model{model}"


class ScopedStore(RunStore):
    """The records of one model in a graph run folder: ``records/<scope>/<space>/``."""

    def __init__(self, folder: str | Path, scope: str) -> None:
        super().__init__(folder)
        self.scope = scope

    def record_path(self, space: str, pair_id: int) -> Path:
        return super().record_path(f"{self.scope}/{space}", pair_id)

    def _files(self, space: str, stem: str = "pair") -> list[Path]:
        return super()._files(f"{self.scope}/{space}", stem)


class GraphStore(RunStore):
    """A graph run folder (see :mod:`connectivity.runs.graph` for its layout)."""

    def model(self, k: Model) -> ScopedStore:
        return ScopedStore(self.folder, scope_of(k))

    def rounds_dir(self, k: Model, space: str) -> Path:
        return self.folder / "rounds" / scope_of(k) / space

    def embedding_path(self, k: Model, space: str, label: int) -> Path:
        return self.folder / "embeddings" / scope_of(k) / space / f"class_{label}.pt"

    def inputs_path(self, label: int, k: Model = 0) -> Path:
        """Where model ``k``'s inputs of class ``label`` lie: one file for every trained model
        (they join the same inputs), a folder of its own for an untrained one."""
        if isinstance(k, str):
            return self.folder / "inputs" / k / f"class_{label}.pt"
        return self.folder / "inputs" / f"class_{label}.pt"

    def bands_dir(self, k: Model, key: str) -> Path:
        """Where the band checkpoints of model ``k`` in ``key`` (a space, or misclassified
        tries) lie."""
        return self.folder / "bands" / scope_of(k) / key

    def save_inputs(self, label: int, value: dict[str, Any], k: Model = 0) -> None:
        """Keep the inputs of class ``label`` (``{"indices", "images"}``, uint8 thumbnails)."""
        write_tensor(self.inputs_path(label, k), value)

    def load_inputs(self, label: int, k: Model = 0) -> dict[str, Any]:
        return read_tensor(self.inputs_path(label, k))

    def save_embedding(self, k: Model, space: str, label: int, value: dict[str, Any]) -> None:
        """Keep the 2-D embedding of class ``label`` (``{"coords", "indices"}``) for figures."""
        write_tensor(self.embedding_path(k, space, label), value)

    def load_embedding(self, k: Model, space: str, label: int) -> dict[str, Any]:
        return read_tensor(self.embedding_path(k, space, label))

    def _round_file(self, k: Model, space: str, number: int) -> Path:
        return self.rounds_dir(k, space) / f"round_{number:04d}.json"

    def round_plan(self, k: Model, space: str, number: int) -> list[tuple[int, ...]] | None:
        """The pairs ``(class, i, j)`` planned for round ``number``, or None when it was not
        planned yet.

        Raises:
            RunFolderError: The plan is damaged.
        """
        file = self._round_file(k, space, number)
        if not file.is_file():
            return None
        return [tuple(p) for p in read_json(file)["pairs"]]

    def save_round_plan(self, k: Model, space: str, number: int, pairs: list[Any]) -> None:
        """Keep round ``number``'s pairs, so a resumed run replays the same rounds."""
        write_json(self._round_file(k, space, number), {"pairs": pairs}, indent=None)

    def mark_settled(self, k: Model, space: str) -> None:
        """Say that every round of model ``k`` in ``space`` is done."""
        atomic_write_text(self.rounds_dir(k, space) / "settled", "")

    def settled(self, k: Model, space: str) -> bool:
        return (self.rounds_dir(k, space) / "settled").is_file()

    def save_misclassified(self, k: Model, space: str, rows: list[dict[str, Any]]) -> None:
        """Keep what each misclassified input of model ``k`` in ``space`` was tried against."""
        write_json(self.rounds_dir(k, space) / f"{MISCLASSIFIED}.json", rows, indent=1)

    def misclassified(self, k: Model, space: str) -> list[dict[str, Any]]:
        """The rows :meth:`save_misclassified` kept (none when the run tried none).

        Raises:
            RunFolderError: The file is damaged.
        """
        file = self.rounds_dir(k, space) / f"{MISCLASSIFIED}.json"
        return read_json(file) if file.is_file() else []


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
