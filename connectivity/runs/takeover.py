"""Which saved band state each pair of a rank continues from, whatever rank saved it.

A path run checkpoints each rank's band in ``bands/<space>/rank<k>.pt``; a run resumed on
another number of ranks gives the pairs out again. :func:`take_over` reads every file's states
and says, for one rank, which file's band it continues exactly, which of its pairs start again
from a saved path, and which states it keeps for pairs that other ranks now decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# A pair's saved band state: its path, steps, the marks of inserted pivots (None: none
# marked) and the length of the symmetry nudges its bands got.
SavedState = tuple[Tensor, int, Tensor | None, float]


@dataclass
class TakeOver:
    """What one rank continues from the band checkpoints of a space (:func:`take_over`).

    Attributes:
        checkpoint: For :meth:`PathModule.resume_from` (rows index the rank's pairs): the rows
            of one file's band, with their optimiser state, and the other pairs with a saved
            path, queued; None when no pair of the rank has a saved band state.
        carried: ``{pair id: (path, steps, inserted, nudge)}``: the newest band states, found
            in files this rank replaces or removes, of pairs that other ranks decide now
            (``inserted``: ``(points,)`` bool marks of inserted pivots or None; ``nudge``: the
            symmetry nudges of the pair's bands so far).
        taken_over: The rank's pairs whose band state comes from another rank's file.
    """

    checkpoint: dict[str, Any] | None
    carried: dict[int, SavedState]
    taken_over: int


def _band_rows(state: dict[str, Any], rows: list[int], count: int) -> dict[str, Any]:
    """The per-pair tensors of a band's (or its optimiser's) state, for ``rows`` only: every
    tensor whose first dimension is the band's ``count`` pairs (all of a band's state, and all
    of its optimisers' per-pair state) is cut; the rest (Adam's step count) is kept."""
    index = torch.tensor(rows, dtype=torch.long)
    return {
        key: value[index]
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == count
        else value
        for key, value in state.items()
    }


def _row_path(band: dict[str, Any], row: int) -> tuple[Tensor, int]:
    """``(path, steps)`` of one row of a saved band: its ends and pivots, its steps."""
    path = torch.cat(
        [band["starts"][row : row + 1], band["pivots"][row], band["ends"][row : row + 1]]
    )
    return path, int(band["steps"][row])


# Where a pair's newest state is: (newness key, file rank, row of the file's band or None,
# the saved path state when it is not a band row).
_Found = tuple[tuple[int, int, int, int], int, int | None, SavedState | None]


class _NewestStates:
    """The newest saved state of each undecided pair, over every band checkpoint file.

    Every state counts: a live one (a row of a file's band still active, or a queued path)
    or a carried copy. The newest wins: the most steps, then the most points (a grown path
    comes after the band it grew from), then a live one, then the lowest file.
    """

    def __init__(self, found: dict[int, dict[str, Any]], undecided: set[int]) -> None:
        self.found, self.undecided = found, undecided
        self.best: dict[int, _Found] = {}
        for k, checkpoint in sorted(found.items()):
            self._read(k, checkpoint)

    def _offer(self, pair: int, key: tuple[int, int, int], k: int, row, state) -> None:
        if pair not in self.undecided:
            return  # decided: its record is the truth
        newness = (*key, -k)
        if pair not in self.best or newness > self.best[pair][0]:
            self.best[pair] = (newness, k, row, state)

    def _read(self, k: int, checkpoint: dict[str, Any]) -> None:
        ids = [int(i) for i in checkpoint["pair_ids"]]
        band = checkpoint.get("band")
        if band is not None and band["pivots"].shape[0]:
            rows = checkpoint.get("band_rows", range(len(ids)))
            points = band["pivots"].shape[1] + 2
            for j, row in enumerate(rows):
                if bool(band["active"][j]):  # a finished row was decided or queued
                    self._offer(ids[int(row)], (int(band["steps"][j]), points, 1), k, j, None)
        nudges = checkpoint.get("nudges", {})
        for row, (path, steps, *marks) in checkpoint.get("queued", {}).items():
            nudge = float(nudges.get(int(row), 0.0))
            state = (path, int(steps), marks[0] if marks else None, nudge)
            self._offer(ids[int(row)], (int(steps), path.shape[0], 1), k, None, state)
        for pair, (path, steps, *extra) in checkpoint.get("carried", {}).items():
            state = (path, int(steps), extra[0] if extra else None, extra[1] if extra[1:] else 0.0)
            self._offer(int(pair), (int(steps), path.shape[0], 0), k, None, state)

    def in_band(self, pair: int) -> bool:
        """Whether the pair's newest state is a row of a file's band."""
        return pair in self.best and self.best[pair][2] is not None

    def prior_nudge(self, pair: int) -> float:
        """The nudges of the pair's earlier bands, from the file of its newest state."""
        _, k, row, state = self.best[pair]
        if row is None:
            assert state is not None
            return state[3]
        ids = [int(i) for i in self.found[k]["pair_ids"]]
        return float(self.found[k].get("nudges", {}).get(ids.index(pair), 0.0))

    def saved_path(self, pair: int) -> SavedState:
        """The pair's newest state as a path (a band row's nudge so far counted too)."""
        _, k, row, state = self.best[pair]
        if row is None:
            assert state is not None
            return state
        band = self.found[k]["band"]
        path, steps = _row_path(band, row)
        anchored = band.get("anchored")
        # The band's marks are of its pivots; a path's include its two ends.
        inserted = None if anchored is None else F.pad(anchored[row], (1, 1))
        nudged = float(band["nudged"][row]) if "nudged" in band else 0.0
        return (path, steps, inserted, self.prior_nudge(pair) + nudged)


def _continued_band(
    source: dict[str, Any], rows: list[int], index: dict[int, int]
) -> dict[str, Any]:
    """The ``rows`` of the band (and optimiser) of the checkpoint ``source``, as
    :meth:`PathModule.resume_from` reads them; ``index``: ``{pair id: row of the rank}``."""
    count = source["band"]["pivots"].shape[0]
    ids = [int(i) for i in source["pair_ids"]]
    file_rows = source.get("band_rows", range(len(ids)))
    band = _band_rows(source["band"], rows, count)
    optimizer = dict(source["optimizer"])
    optimizer["state"] = {
        key: _band_rows(value, rows, count) for key, value in optimizer["state"].items()
    }
    return {
        "band": band,
        "optimizer": optimizer,
        "band_rows": [index[ids[int(file_rows[j])]] for j in rows],
        "steps": int(band["steps"].max()),
    }


def take_over(
    found: dict[int, dict[str, Any]],
    rank: int,
    world: int,
    mine: list[int],
    undecided: set[int],
) -> TakeOver:
    """Which saved band state each of a rank's pairs continues from, whatever rank saved it.

    Every state of an undecided pair in any file counts, and the newest wins (see
    :class:`_NewestStates`). The rank continues one file's band exactly (band and optimiser
    rows): its own file's, else the one holding most of its pairs; its other pairs with a saved
    state are queued from their paths (:meth:`Decisions.requeue`), and its pairs with none
    start from their line.

    Args:
        found: ``{rank: checkpoint}`` of the files read (with ``pair_ids``).
        rank: This rank; ``world``: the number of ranks now.
        mine: Ids of the rank's undecided pairs, in the order of its rows.
        undecided: Ids of every undecided pair of the fit (those with no record).
    """
    newest = _NewestStates(found, undecided)
    best = newest.best
    index = {pair: i for i, pair in enumerate(mine)}
    in_bands: dict[int, list[int]] = {}
    for pair in mine:
        if newest.in_band(pair):
            in_bands.setdefault(best[pair][1], []).append(pair)
    primary = None
    if in_bands:
        primary = rank if rank in in_bands else max(in_bands, key=lambda k: (len(in_bands[k]), -k))
    continued = {pair for pair in mine if newest.in_band(pair) and best[pair][1] == primary}
    queued_states = {
        index[pair]: newest.saved_path(pair)
        for pair in mine
        if pair in best and pair not in continued
    }
    queued = {row: state[:3] for row, state in queued_states.items()}
    # Nudges of earlier bands: a continued band row's own nudge is in its band state.
    nudges = {row: state[3] for row, state in queued_states.items()}
    nudges.update({index[pair]: newest.prior_nudge(pair) for pair in continued})
    adopted = {k for k in found if k == rank or (k >= world and k % world == rank)}
    carried = {
        pair: newest.saved_path(pair)
        for pair in sorted(best)
        if pair not in index and best[pair][1] in adopted
    }
    taken_over = sum(1 for pair in mine if pair in best and best[pair][1] != rank)
    if primary is None and not queued:
        return TakeOver(None, carried, taken_over)
    checkpoint: dict[str, Any] = {
        "queued": queued,
        "nudges": {row: nudge for row, nudge in nudges.items() if nudge},
        "band_rows": [],
        "steps": 0,
    }
    if primary is not None:
        rows = sorted(best[pair][2] for pair in in_bands[primary])  # type: ignore[type-var]
        checkpoint.update(_continued_band(found[primary], rows, index))
    return TakeOver(checkpoint, carried, taken_over)
