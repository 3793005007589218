"""The folder of a surfaces run: the loops' sides as path records, one record per loop.

Layout, beside a path run's (:class:`~connectivity.store.records.RunStore`): ``run.json`` (with
``"kind": "surfaces"``), ``records/<space>/sides/pair_<id>.pt`` (the sides, decided as path
pairs; side ``i`` of loop ``l`` of size ``k`` has id ``l * k + i``),
``records/<space>/loop_<id>.pt`` (one per filled or refused loop), ``surfaces.md`` /
``surfaces.csv`` (the table per space), ``loops.csv`` and ``figures/<space>/loop_<id>.png``.
An untrained baseline's loops (``baseline`` in ``run.json``) keep the same layout under their
records key :func:`~connectivity.store.records.untrained_key`
(``records/untrained_seed<s>/<space>/loop_<id>.pt``, its sides under ``.../sides/``, their band
checkpoints under ``bands/untrained_seed<s>/<space>/``), with ``baselines.csv`` beside the
tables.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from connectivity.store.files import write_tensor
from connectivity.store.records import RunStore, compact

LOOP = "loop"


def sides_key(space: str) -> str:
    """Where a space's sides are kept among the records (``<space>/sides``)."""
    return f"{space}/sides"


def loop_figure_name(space: str, loop_id: int) -> str:
    """Where a loop's figure lies in its run folder (relative to the folder)."""
    return f"figures/{space}/loop_{loop_id:04d}.png"


class SurfaceStore(RunStore):
    """The folder of one surfaces experiment (see the module docstring)."""

    def loop_path(self, space: str, loop_id: int) -> Path:
        return self.records_dir / space / f"{LOOP}_{loop_id:04d}.pt"

    def loops_done(self, space: str) -> set[int]:
        """Ids of the loops already decided in ``space`` (a damaged record is moved aside and
        its loop decided again, as :meth:`RunStore.done` does for pairs)."""
        return self.done(space, LOOP)

    def save_loop(
        self,
        space: str,
        loop: dict[str, Any],
        record: Any,
        corner_images: torch.Tensor | None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write one loop's record (a :class:`~connectivity.engine.surfaces.SurfaceRecord`)
        atomically, with the loop itself (``loop``: id, dataset indices, label, side ids), in a
        latent space its input images ``(k, C, H, W)`` in [0, 1] as uint8, and ``extra``
        entries (the domain maps of its figure)."""
        payload = compact({"space": space, "loop": loop, **asdict(record), **(extra or {})})
        if corner_images is not None:
            payload["corner_images"] = (
                (corner_images.detach().float().clamp(0, 1) * 255)
                .round()
                .to(device="cpu", dtype=torch.uint8)
            )
        write_tensor(self.loop_path(space, int(loop["id"])), payload)

    def load_loops(self, space: str) -> list[dict[str, Any]]:
        """Every saved loop record of ``space``, by loop id.

        Raises:
            RunFolderError: a record cannot be read (named).
        """
        return self.load(space, LOOP)
