"""Decisions: the verdict and the record of each pair, made the moment it is decided.

:class:`Decisions` holds the records of a batch of pairs and the pairs waiting for a band
(rounds of pivot insertion, :func:`insert_pivots`); :func:`make_records` gives each decided
pair its :class:`PairRecord`: its :class:`Verdict` (linear, nonlinear, none, diverged), how its
band ended (:class:`BandStatus`), its certificate and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.band import ElasticBand, PathResult
from connectivity.engine.bound_paths import BoundCheck
from connectivity.engine.checks import (
    Certifier,
    LineCheck,
    distances_from_line,
    on_target,
    path_log_probabilities,
    polyline_length_ratio,
    proved_or_sampled,
    target_margin,
)
from connectivity.engine.exact import PathCheck
from connectivity.engine.options import PathOptions


class Verdict(str, Enum):
    """What was found between a pair."""

    LINEAR = "linear"  # the straight line stays in the class
    NONLINEAR = "nonlinear"  # the line leaves the class, the optimised band does not
    NONE = "none"  # neither, within the step budget
    DIVERGED = "diverged"  # the optimisation blew up (NaN/inf or energy); nothing can be said


class BandStatus(str, Enum):
    """How the search of a pair ended (``PairRecord.status``)."""

    LINEAR = "linear"  # no band: the straight line passed the check
    CONVERGED = "converged"  # the band's largest perpendicular force fell to ``tol`` or below
    CERTIFIED = "certified"  # stopped because the band passed the dense check (not converged)
    OUT_OF_STEPS = "out_of_steps"  # ``steps`` ran out first
    DIVERGED = "diverged"  # blew up after every back-off (see ``PathOptions.max_energy_rise``)


@dataclass
class PairRecord:
    """Everything found for one pair; tensors are on the CPU.

    ``status`` says how the search ended, a :class:`BandStatus` value: ``linear`` (no band),
    ``converged``, ``certified``, ``out_of_steps`` or ``diverged``.
    """

    verdict: str
    pivot_verdict: str
    status: str
    target: int
    steps: int
    max_energy: float  # highest -log p(target) over the densely checked path
    min_target_probability: float  # lowest p(target) over the densely checked path
    length_ratio: float  # path length over the straight-line distance of the ends
    line_max_energy: float  # the same two on the straight line
    line_min_target_probability: float
    max_force: float
    line: Tensor  # (num_pivots + 2, *point_shape) straight line, ends included
    # (N, *point_shape) optimised band (the line for linear pairs); N = num_pivots + 2 unless
    # the exact check inserted pivots (N <= max_pivots + 2)
    path: Tensor
    line_probabilities: Tensor  # (num_pivots + 2, classes) at the line's points
    path_probabilities: Tensor  # (N, classes) at the path's points
    line_energy: Tensor  # (num_pivots + 2,)
    path_energy: Tensor  # (N,)
    # How far each point of the path moved from the line's point at the same position, (N,)
    # (0 at the ends and for linear pairs), in the space's own units (pixels in [0, 1] for
    # images).
    distance_l2: Tensor | None = None
    distance_linf: Tensor | None = None
    # The check the verdict rests on: which one ran ("sampled": the points below only), and the
    # lowest margin of the target's logit over the best other class (< 0: off target; 0 is the
    # decision boundary) over the checked points of the path and of the line.
    certificate: str = "sampled"
    min_margin: float = math.nan
    line_min_margin: float = math.nan
    # The checked points themselves, (M,) each: position along the path in [0, 1] (pivot k of
    # N points sits at k / (N - 1)), the target's margin there and the class predicted there.
    check_position: Tensor | None = None
    check_margin: Tensor | None = None
    check_predicted: Tensor | None = None
    line_check_position: Tensor | None = None
    line_check_margin: Tensor | None = None
    line_check_predicted: Tensor | None = None
    # With certificate "exact": the closed stretches of positions along the path (and the line)
    # where it is off the target, (K, 2) float64, merged and in order (empty: none), and how
    # many linear pieces the exact check went through. With certificate "bounds": the points
    # found off the target (stretches [p, p], see engine.bound_paths.BoundCheck). None / 0
    # where no whole-path check decided that path.
    off_target_intervals: Tensor | None = None
    line_off_target_intervals: Tensor | None = None
    pieces: int = 0
    line_pieces: int = 0
    # A proved lower bound of the margin over every point of the path (and the line): the exact
    # minimum (certificate "exact") or the branch and bound's bound ("bounds"); NaN where no
    # whole-path check decided. With "bounds", min_margin is the lowest margin at evaluated
    # points (the sampled ones, segment ends and split points), so the true minimum lies
    # between the two.
    min_margin_lower_bound: float = math.nan
    line_min_margin_lower_bound: float = math.nan
    # The bounds' branch and bound: final sub-intervals, and sub-intervals bounded (0 without).
    sub_intervals: int = 0
    line_sub_intervals: int = 0
    bound_evaluations: int = 0
    line_bound_evaluations: int = 0
    # Why the certificate is what it is where "auto" or the tolerance chose "sampled".
    certificate_note: str = ""
    # Length of the symmetry nudge(s) the band got (0: none): a band that converged before it
    # moved, off the target, had every pivot displaced by this much (PathOptions.nudge).
    nudge: float = 0.0
    # The energy barrier of the path (and of the line): the highest energy -log p(target) over
    # its densely checked points above the higher of its two ends' energies (0 where an end is
    # the highest point), a score of how hard the pair is to join (issue 23; with min_margin).
    # NaN in records saved before it was kept (pair_barrier then reads it off the energies).
    barrier: float = math.nan
    line_barrier: float = math.nan

    def metrics(self) -> dict[str, float | int | str]:
        """The scalar part, for tables."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, Tensor)}


# pair indices, their paths, the steps they took, and which points of the paths were inserted
Round = tuple[Tensor, Tensor, Tensor, Tensor]


# pair index -> (path to go on from, steps taken, (N,) bool: its inserted points); a band
# checkpoint written before issue 18 holds (path, steps) only
Queued = dict[int, tuple[Tensor, int, Tensor]]


def insert_pivots(
    path: Tensor, off_target: Tensor, room: int, inserted: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Insert a point in the middle of each off-target stretch that holds no point of the path.

    Args:
        path: ``(N, *point_shape)`` polyline.
        off_target: ``(K, 2)`` closed stretches of positions along it (point ``k`` sits at
            ``k / (N - 1)``).
        room: Most points to insert; the longest stretches go first.
        inserted: optional ``(N,)`` bool, the points of ``path`` inserted earlier (kept marked).

    Returns:
        ``(N + inserted, *point_shape)``: the same polyline with the new points in order (the
        path itself when none fit), and ``(N + inserted,)`` bool: True at the points inserted
        now or marked in ``inserted`` (the ``string`` method's respacing leaves them in place,
        :func:`connectivity.engine.band.respace_equal_arc`).
    """
    marked = torch.zeros(path.shape[0], dtype=torch.bool, device=path.device)
    if inserted is not None:
        marked = inserted.to(device=path.device, dtype=torch.bool).clone()
    segments = path.shape[0] - 1
    stretches = off_target.to(torch.float64).cpu()
    if room <= 0 or stretches.shape[0] == 0:
        return path, marked
    # A stretch that holds a point of the path is seen by the band already.
    grid = torch.arange(segments + 1, dtype=torch.float64) / segments
    holds = (grid.view(1, -1) >= stretches[:, :1]) & (grid.view(1, -1) <= stretches[:, 1:])
    free = stretches[~holds.any(dim=1)]
    if free.shape[0] == 0:
        return path, marked
    widest = torch.argsort(free[:, 1] - free[:, 0], descending=True, stable=True)[:room]
    middle = free[widest].mean(dim=1).sort().values
    scaled = middle * segments
    segment = scaled.floor().long().clamp(0, segments - 1)
    weight = (scaled - segment).to(path.dtype).to(path.device)
    segment = segment.to(path.device)
    new = torch.lerp(path[segment], path[segment + 1], weight.view(-1, *([1] * (path.dim() - 1))))
    positions = torch.cat([grid.to(path.device), middle.to(path.device)])
    order = torch.argsort(positions, stable=True)
    marked = torch.cat([marked, torch.ones(new.shape[0], dtype=torch.bool, device=path.device)])
    return torch.cat([path, new])[order], marked[order]


class Decisions:
    """The records of a batch of pairs, each made the moment its pair is decided.

    One code path for both drivers of the search, the plain loop of :func:`connect_points` and
    the Lightning :class:`~connectivity.lightning.path_module.PathModule`: pairs whose line passes
    are decided by the line check, the others when they leave their band; each gets its verdicts
    and metrics from :func:`make_records`, once. Pairs waiting for a band are queued, with the
    path they go on from: the line (:meth:`queue_lines`), or, with an exact certifier, a band
    found off the target between pivots with steps and pivots to spare, with a pivot inserted
    in each such stretch (AutoNEB). :meth:`next_round` hands out the queued pairs with the
    fewest points as one band; every band a pair joins has more points than its last, so
    there are at most ``most_pivots - num_pivots + 1`` rounds.

    Args:
        tail: The frozen tail the pairs are decided with.
        targets: ``(pairs,)`` target classes.
        check: The line check of all pairs.
        options: The path options.
        on_record: Called as ``on_record(pair_index, record)`` for each new record.
        certifier: The check that decides paths (default: sampled).

    Attributes:
        records: ``{pair_index: PairRecord}`` of the pairs decided so far.
    """

    def __init__(
        self,
        tail: nn.Module,
        targets: Tensor,
        check: LineCheck,
        options: PathOptions,
        on_record: Callable[[int, PairRecord], None] | None = None,
        certifier: Certifier | None = None,
    ) -> None:
        self.tail, self.targets, self.check, self.options = tail, targets, check, options
        self.on_record = on_record
        self.certifier = certifier or Certifier("sampled")
        self.records: dict[int, PairRecord] = {}
        self._queued: Queued = {}
        # Length of the symmetry nudges each pair's bands got so far (over its rounds).
        self._nudges: dict[int, float] = {}

    def _finish(self, index: Tensor, outcome: BandOutcome) -> None:
        new = make_records(
            self.tail,
            self.targets[index],
            self.check.subset(index),
            outcome,
            self.options,
            self.certifier,
        )
        for i, record in zip(index.tolist(), new, strict=True):
            record.nudge = self._nudges.pop(i, 0.0)
            self.records[i] = record
            if self.on_record is not None:
                self.on_record(i, record)

    def decide_lines(self) -> None:
        """Record every pair whose straight line passes the check (no band needed)."""
        linear = self.check.ok.nonzero().squeeze(1)
        linear = linear[[i not in self.records for i in linear.tolist()]]
        if linear.numel():
            self._finish(linear, BandOutcome.unmoved(self.check.line[linear]))

    def queue_lines(self, skip: Collection[int] = ()) -> None:
        """Queue the undecided pairs whose line fails for a band: from the line's pivots, plus
        (exact check) a pivot in each stretch where the line leaves the class between them.

        Args:
            skip: Pairs not to queue (e.g. those of a band continued from a checkpoint)."""
        room = self.options.most_pivots - self.options.num_pivots
        for i in (~self.check.ok).nonzero().squeeze(1).tolist():
            if i in self.records or i in self._queued or i in skip:
                continue
            path = self.check.line[i]
            inserted = torch.zeros(path.shape[0], dtype=torch.bool, device=path.device)
            if self.check.proofs is not None:
                off_target = self.check.proofs[i].off_target[0]
                path, inserted = insert_pivots(path, off_target, room)
            self._queued[i] = (path, 0, inserted)

    def queued(self) -> Queued:
        """The pairs waiting for a band (a copy, e.g. for a band checkpoint)."""
        return dict(self._queued)

    def requeue(self, queued: Queued) -> None:
        """Queue pairs again (from :meth:`queued` of a band checkpoint; one written before
        issue 18 has no marks of inserted points: none are marked)."""
        device = self.check.line.device
        for i, (path, steps, *marks) in queued.items():
            if int(i) not in self.records:
                if marks and marks[0] is not None:
                    inserted = marks[0]
                else:
                    inserted = torch.zeros(path.shape[0], dtype=torch.bool)
                self._queued[int(i)] = (path.to(device=device), int(steps), inserted.to(device))

    def nudges(self) -> dict[int, float]:
        """``{pair index: length}`` of the symmetry nudges that finished bands gave the pairs
        still undecided (a copy, e.g. for a band checkpoint; the band in progress keeps its
        own in ``ElasticBand.nudged``)."""
        return dict(self._nudges)

    def restore_nudges(self, nudges: dict[int, float]) -> None:
        """Take the nudges of earlier bands (:meth:`nudges` of a band checkpoint), so that a
        resumed run records what an uninterrupted one does."""
        for i, length in nudges.items():
            if int(i) not in self.records:
                self._nudges[int(i)] = float(length)

    def band_records(self) -> dict[int, PairRecord]:
        """The records of the pairs decided by a band (not by their line), e.g. for a band
        checkpoint: a run resumed in a later round cannot decide them again."""
        line = self.check.ok.tolist()
        return {i: r for i, r in self.records.items() if not line[i]}

    def restore(self, records: dict[int, PairRecord]) -> None:
        """Take the records of pairs decided before a resume (:meth:`band_records`), without
        announcing them to ``on_record`` again."""
        for i, record in records.items():
            self.records[int(i)] = record
            self._queued.pop(int(i), None)

    def next_round(self) -> Round | None:
        """Take the queued pairs whose paths have the fewest points, as one band; None when no
        pair is queued."""
        if not self._queued:
            return None
        size = min(path.shape[0] for path, *_ in self._queued.values())
        pairs = sorted(i for i, (path, *_) in self._queued.items() if path.shape[0] == size)
        taken = [self._queued.pop(i) for i in pairs]
        device = taken[0][0].device
        return (
            torch.tensor(pairs, device=device),
            torch.stack([path for path, _, _ in taken]),
            torch.tensor([steps for _, steps, _ in taken], device=device),
            torch.stack([inserted for _, _, inserted in taken]).to(device),
        )

    def decide_band(
        self, band: ElasticBand | PathResult, pairs: Tensor, done: Tensor | None = None
    ) -> None:
        """Record the pairs whose band has finished and that have no record yet.

        Args:
            band: The band (or its final result) of the pairs ``pairs``.
            pairs: ``(band pairs,)`` long: the pair index of each row of the band.
            done: ``(band pairs,)`` bool rows that are finished; default: the inactive rows.
        """
        finished = ~band.active if done is None else done  # type: ignore[union-attr]
        rows = finished.nonzero().squeeze(1).tolist()
        rows = [
            r
            for r in rows
            if int(pairs[r]) not in self.records and int(pairs[r]) not in self._queued
        ]
        if not rows:
            return
        nudged = getattr(band, "nudged", None)
        if nudged is not None:
            for r in rows:
                if float(nudged[r]) > 0:
                    i = int(pairs[r])
                    self._nudges[i] = self._nudges.get(i, 0.0) + float(nudged[r])
        if self.certifier.proves:
            rows = self._grow(band, pairs, rows)
            if not rows:
                return
        fresh = torch.tensor(rows, device=pairs.device)
        outcome = BandOutcome(
            band.path[fresh],
            band.steps[fresh],
            band.max_force[fresh].to(self.check.line.dtype),
            band.diverged[fresh],
            band_status(band.converged[fresh], band.stopped[fresh], band.diverged[fresh]),
        )
        self._finish(pairs[fresh], outcome)

    def _grow(self, band: ElasticBand | PathResult, pairs: Tensor, rows: list[int]) -> list[int]:
        """Queue the finished rows that leave the class between pivots and can still grow;
        return the others."""
        room = self.options.most_pivots - (band.path.shape[1] - 2)
        candidates = [
            r
            for r in rows
            if not bool(band.diverged[r]) and int(band.steps[r]) < self.options.steps and room > 0
        ]
        if not candidates:
            return rows
        index = torch.tensor(candidates, device=pairs.device)
        paths = band.path[index]
        checks = self.certifier.check(paths, self.targets[pairs[index]])
        left = set(rows)
        anchored = getattr(band, "anchored", None)
        for k, (r, c) in enumerate(zip(candidates, checks, strict=True)):
            if bool(c.passed[0]) or not bool(c.decided[0]):
                continue
            earlier = None if anchored is None else F.pad(anchored[r], (1, 1))
            grown, inserted = insert_pivots(paths[k], c.off_target[0], room, earlier)
            if grown.shape[0] > paths[k].shape[0]:
                self._queued[int(pairs[r])] = (grown, int(band.steps[r]), inserted)
                left.discard(r)
        return [r for r in rows if r in left]

    def in_order(self) -> list[PairRecord]:
        """Every pair's record, in pair order (all pairs must be decided)."""
        return [self.records[i] for i in range(len(self.targets))]


@dataclass
class BandOutcome:
    """Where the band of each pair ended (the line itself for pairs that needed no band)."""

    path: Tensor  # (pairs, N, *point_shape)
    steps: Tensor  # (pairs,) long
    max_force: Tensor  # (pairs,)
    diverged: Tensor  # (pairs,) bool
    status: list[str]  # a BandStatus value per pair

    @staticmethod
    def unmoved(line: Tensor) -> BandOutcome:
        """The outcome of pairs that needed no band: the line, no steps."""
        pairs, device = line.shape[0], line.device
        return BandOutcome(
            path=line,
            steps=torch.zeros(pairs, dtype=torch.long, device=device),
            max_force=torch.zeros(pairs, device=device),
            diverged=torch.zeros(pairs, dtype=torch.bool, device=device),
            status=[BandStatus.LINEAR.value] * pairs,
        )


def band_status(converged: Tensor, stopped: Tensor, diverged: Tensor) -> list[str]:
    """How each finished band ended, from its ``(pairs,)`` bool flags (see ``PathResult``).

    Diverged first, then converged (a band certified and converged at the same evaluation is
    a minimum energy path, the stronger statement), then certified (``stop``); a band with no
    flag ran out of steps.
    """
    out = []
    for c, s, d in zip(converged.tolist(), stopped.tolist(), diverged.tolist(), strict=True):
        if d:
            out.append(BandStatus.DIVERGED.value)
        elif c:
            out.append(BandStatus.CONVERGED.value)
        elif s:
            out.append(BandStatus.CERTIFIED.value)
        else:
            out.append(BandStatus.OUT_OF_STEPS.value)
    return out


def make_records(
    tail: nn.Module,
    targets: Tensor,
    check: LineCheck,
    outcome: BandOutcome,
    options: PathOptions,
    certifier: Certifier | None = None,
) -> list[PairRecord]:
    """Check the final bands and give each pair its verdicts and metrics.

    The sampled check (``line_points`` evenly spaced points) always runs: its points are kept
    for figures, and it decides wherever no proof did (a sampled certifier, a margin within a
    proof's tolerance of zero, or a spent split budget).
    """
    certifier = certifier or Certifier("sampled")
    per_segment = options.points_per_segment
    line, line_dense, path = check.line, check.log_probabilities, outcome.path
    dense, path_ok, path_proofs, path_decided = _check_bands(
        tail, targets, check, path, options, certifier
    )
    line_proofs = check.proofs if check.proofs is not None else [None] * len(targets)
    line_pivots, path_pivots = _pivot_rows(line_dense, per_segment), _pivot_rows(dense, per_segment)
    line_pivots_ok = on_target(line_pivots, targets).all(dim=1)
    path_pivots_ok = on_target(path_pivots, targets).all(dim=1)
    # The energy is -log p(target): read it off the dense check instead of another pass.
    line_energy = -_target_column(line_dense, targets)
    path_energy = -_target_column(dense, targets)
    ratio = polyline_length_ratio(path)
    diverged = outcome.diverged
    # NaN (a non-finite network output) counts as the lowest margin: such a point is off target.
    margin = target_margin(dense, targets).nan_to_num(nan=-math.inf).cpu()
    line_margin = target_margin(line_dense, targets).nan_to_num(nan=-math.inf).cpu()
    predicted, line_predicted = dense.argmax(dim=-1).cpu(), line_dense.argmax(dim=-1).cpu()
    position = torch.linspace(0.0, 1.0, dense.shape[1])
    line_position = torch.linspace(0.0, 1.0, line_dense.shape[1])
    records = []
    for i in range(len(targets)):
        line_ok = bool(check.ok[i])
        verdict = _verdict(line_ok, bool(diverged[i]), bool(path_ok[i]))
        pivot_verdict = _verdict(
            bool(line_pivots_ok[i]), bool(diverged[i]), bool(path_pivots_ok[i])
        )
        line_proof, path_proof = line_proofs[i], path_proofs[i]
        if line_ok:
            path_proof = line_proof  # the path is the line
        certificate, note = _certificate(
            certifier, verdict, line_proof, path_proof, bool(path_decided[i]) or line_ok
        )
        l2, linf = distances_from_line(path[i].detach(), line[i].detach())
        records.append(
            PairRecord(
                verdict=verdict.value,
                pivot_verdict=pivot_verdict.value,
                status=_status(outcome.status[i], verdict),
                target=int(targets[i]),
                steps=int(outcome.steps[i]),
                max_energy=float(path_energy[i].max()),
                min_target_probability=float(path_energy[i].max().neg().exp()),
                length_ratio=float(ratio[i]),
                line_max_energy=float(line_energy[i].max()),
                line_min_target_probability=float(line_energy[i].max().neg().exp()),
                max_force=float(outcome.max_force[i]),
                line=line[i].detach().cpu(),
                path=path[i].detach().cpu(),
                distance_l2=l2.cpu(),
                distance_linf=linf.cpu(),
                certificate=certificate,
                min_margin=_min_margin(margin[i], path_proof),
                line_min_margin=_min_margin(line_margin[i], line_proof),
                check_position=position,
                check_margin=margin[i].float(),
                check_predicted=predicted[i],
                line_check_position=line_position,
                line_check_margin=line_margin[i].float(),
                line_check_predicted=line_predicted[i],
                off_target_intervals=_stretches(path_proof),
                line_off_target_intervals=_stretches(line_proof),
                pieces=_pieces(path_proof),
                line_pieces=_pieces(line_proof),
                min_margin_lower_bound=_lower_bound(path_proof),
                line_min_margin_lower_bound=_lower_bound(line_proof),
                sub_intervals=_count(path_proof, "sub_intervals"),
                line_sub_intervals=_count(line_proof, "sub_intervals"),
                bound_evaluations=_count(path_proof, "bound_evaluations"),
                line_bound_evaluations=_count(line_proof, "bound_evaluations"),
                certificate_note=note,
                line_probabilities=line_pivots[i].exp().cpu(),
                path_probabilities=path_pivots[i].exp().cpu(),
                line_energy=_pivot_rows(line_energy, per_segment)[i].cpu(),
                path_energy=_pivot_rows(path_energy, per_segment)[i].cpu(),
                barrier=energy_barrier(path_energy[i]),
                line_barrier=energy_barrier(line_energy[i]),
            )
        )
    return records


def energy_barrier(energy: Tensor) -> float:
    """The barrier of a path whose energies at its points, in order, are ``energy`` ``(M,)``
    (ends included): its highest energy above the higher of its two ends' (``>= 0``; NaN where
    an energy is NaN)."""
    return float(energy.max() - torch.maximum(energy[0], energy[-1]))


def _check_bands(
    tail: nn.Module,
    targets: Tensor,
    check: LineCheck,
    path: Tensor,
    options: PathOptions,
    certifier: Certifier,
) -> tuple[Tensor, Tensor, list[PathCheck | None], Tensor]:
    """The checks of the final paths ``(pairs, N, *point_shape)`` (the line for linear pairs).

    Returns:
        ``(dense, ok, proofs, decided)``: the log-probabilities at the sampled points
        ``(pairs, M, classes)``, whether each path stays in the class ``(pairs,)`` (by the
        whole-path check where it decided, else the sampled one), each path's whole-path
        check (exact or bounds; None where none ran) and whether it decided ``(pairs,)``.
    """
    per_segment = options.points_per_segment
    need = (~check.ok).nonzero().squeeze(1)
    if path.shape[1] == check.line.shape[1]:
        dense = check.log_probabilities.clone()
        if need.numel():
            dense[need] = path_log_probabilities(tail, path[need], per_segment, options.chunk_size)
    else:  # bands with inserted pivots: every pair here needed its band
        dense = path_log_probabilities(tail, path, per_segment, options.chunk_size)
    path_ok = on_target(dense, targets).all(dim=1)
    path_proofs: list[PathCheck | None] = [None] * len(targets)
    path_decided = torch.zeros_like(path_ok)
    if certifier.proves and need.numel():
        checks = certifier.check(path[need], targets[need])
        ok, decided = proved_or_sampled(checks, path_ok[need])
        path_ok[need], path_decided[need] = ok, decided
        for k, i in enumerate(need.tolist()):
            path_proofs[i] = checks[k]
    return dense, path_ok, path_proofs, path_decided


def _status(status: str, verdict: Verdict) -> str:
    """How a pair's band ended (a :class:`BandStatus` value), as its record says it."""
    if status == BandStatus.CERTIFIED and verdict != Verdict.NONLINEAR:
        # The stop let the band go to grow pivots in its off-target stretches, but it had no
        # steps left to do so (see Decisions._grow): it was never certified.
        return BandStatus.OUT_OF_STEPS.value
    return status


def _min_margin(sampled: Tensor, check: PathCheck | None) -> float:
    """The lowest margin of one path: the exact check's where it decided, else the lowest of
    the sampled points' ``(M,)`` and the points the bounds evaluated."""
    if check is not None and bool(check.decided[0]) and not isinstance(check, BoundCheck):
        return float(check.min_margin[0])
    lowest = float(sampled.min())
    if isinstance(check, BoundCheck) and not math.isnan(float(check.min_margin[0])):
        lowest = min(lowest, float(check.min_margin[0]))
    return lowest


def _lower_bound(check: PathCheck | None) -> float:
    """A proved lower bound of one path's margin (NaN where no whole-path check decided)."""
    if not _decided(check):
        return math.nan
    if isinstance(check, BoundCheck):
        return float(check.min_margin_lower_bound[0])
    return float(check.min_margin[0])  # type: ignore[union-attr]


def _count(check: PathCheck | None, name: str) -> int:
    """A count of the bounds' branch and bound of one path (0 without one)."""
    return int(getattr(check, name)[0]) if isinstance(check, BoundCheck) else 0


def _decided(check: PathCheck | None) -> bool:
    return check is not None and bool(check.decided[0])


def _stretches(check: PathCheck | None) -> Tensor | None:
    return check.off_target[0].clone() if _decided(check) else None  # type: ignore[union-attr]


def _pieces(check: PathCheck | None) -> int:
    return int(check.pieces[0]) if _decided(check) else 0  # type: ignore[union-attr]


def _certificate(
    certifier: Certifier,
    verdict: Verdict,
    line: PathCheck | None,
    path: PathCheck | None,
    path_decided: bool,
) -> tuple[str, str]:
    """``("exact" | "bounds" | "sampled", note)``: the certifier's proof when every check the
    verdict rests on (the line; for a band also its path) was decided by it."""
    if not certifier.proves:
        return "sampled", certifier.note
    if verdict == Verdict.DIVERGED:
        return "sampled", "diverged: nothing to certify"
    rests_on = [line] if verdict == Verdict.LINEAR else [line, path]
    if all(_decided(c) for c in rests_on) and path_decided:
        return ("bounds" if isinstance(line, BoundCheck) else "exact"), ""
    failed = [c.note for c in rests_on if c is not None and c.note and not _decided(c)]
    if failed:
        return "sampled", failed[0]
    return "sampled", (
        "a margin within the check's floating-point tolerance of zero: decided at the "
        "sampled points"
    )


def _verdict(line_ok: bool, diverged: bool, path_ok: bool) -> Verdict:
    if line_ok:
        return Verdict.LINEAR
    if diverged:
        return Verdict.DIVERGED
    return Verdict.NONLINEAR if path_ok else Verdict.NONE


def _target_column(log_probabilities: Tensor, targets: Tensor) -> Tensor:
    """``(pairs, M)``: the log-probability of each pair's target at each point."""
    index = targets.view(-1, 1, 1).expand(-1, log_probabilities.shape[1], 1)
    return log_probabilities.gather(2, index).squeeze(2)


def _pivot_rows(dense: Tensor, per_segment: int) -> Tensor:
    return dense[:, :: per_segment + 1]
