"""Checks of polyline paths: is every point of a path in its target class?

The sampled check (:func:`path_log_probabilities` at ``line_points`` evenly spaced points of
each path, :func:`on_target`), the checks of every point of a path (:class:`Certifier`: the
exact check of a piecewise-linear tail, :mod:`connectivity.engine.exact`, and bound
propagation, :mod:`connectivity.engine.bound_paths`), the check of each pair's straight
line (:func:`check_lines`), and the stop rule of a band (:func:`certification_stop`: a pair is
done once its path is certified).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from connectivity.engine.band import StopFn, straight_line
from connectivity.engine.bound_paths import BoundCheck, bound_paths
from connectivity.engine.bound_triangles import prove_triangles
from connectivity.engine.bounds import BoundProgram, NotBoundedError, bound_program
from connectivity.engine.exact import (
    NotPiecewiseLinearError,
    PathCheck,
    Program,
    UnreliableExactCheckError,
    check_paths,
    piecewise_linear_program,
    undecided_checks,
)
from connectivity.engine.exact_plane import exact_triangles
from connectivity.engine.options import DEFAULT_MAX_REGIONS, DEFAULT_MAX_SPLITS, PathOptions
from connectivity.engine.triangles import UNDECIDED, TriangleCheck, empty_check


def refine(path: Tensor, per_segment: int) -> Tensor:
    """Insert ``per_segment`` evenly spaced points into every segment of each path.

    Args:
        path: ``(pairs, N, *point_shape)``.
        per_segment: Points added strictly inside each of the ``N - 1`` segments.

    Returns:
        ``(pairs, (N - 1) * (per_segment + 1) + 1, *point_shape)``; the original points sit at
        every ``per_segment + 1``-th index.
    """
    if per_segment == 0:
        return path
    steps = per_segment + 1
    weight = torch.arange(steps, dtype=path.dtype, device=path.device) / steps
    weight = weight.view(1, 1, steps, *([1] * (path.dim() - 2)))
    left, right = path[:, :-1].unsqueeze(2), path[:, 1:].unsqueeze(2)
    inner = torch.lerp(left, right, weight).flatten(1, 2)
    return torch.cat([inner, path[:, -1:]], dim=1)


@torch.no_grad()
def path_log_probabilities(
    tail: nn.Module, path: Tensor, per_segment: int, chunk_size: int
) -> Tensor:
    """Log-softmax of the tail at every point of the refined paths, ``(pairs, M, classes)``.

    Log-probabilities, so that the energy ``-log p(target)`` is read off without another pass
    and without the underflow of ``log(softmax)``.

    Refines a few pairs at a time so that at most about ``chunk_size`` points are in memory.
    """
    pairs = path.shape[0]
    count = (path.shape[1] - 1) * (per_segment + 1) + 1
    per_call = max(1, chunk_size // count)
    out = []
    for first in range(0, pairs, per_call):
        points = refine(path[first : first + per_call], per_segment)
        logits = tail(points.flatten(0, 1))
        out.append(logits.log_softmax(dim=-1).reshape(points.shape[0], count, -1))
    return torch.cat(out)


def target_margin(log_probabilities: Tensor, targets: Tensor) -> Tensor:
    """``(pairs, M)``: the target's log-probability minus the best other class's at each point.

    Equal to the logit margin ``logit[target] - max_{k != target} logit[k]`` (the softmax's
    normaliser cancels): positive on target, zero on the decision boundary, negative off it.
    """
    index = targets.view(-1, 1, 1).expand(-1, log_probabilities.shape[1], 1)
    target = log_probabilities.gather(2, index)
    others = log_probabilities.scatter(2, index, float("-inf")).amax(dim=-1, keepdim=True)
    return (target - others).squeeze(2)


def on_target(log_probabilities: Tensor, targets: Tensor) -> Tensor:
    """``(pairs, M)`` bool: each point's target scores strictly above every other class.

    A tie is not on target (argmax would break it towards the lowest class index, so a point on
    a boundary, or a network whose outputs are all equal, would count as class 0), and a point
    whose network output is not finite never is (argmax of NaNs says 0).
    """
    finite = torch.isfinite(log_probabilities).all(dim=-1)
    return (target_margin(log_probabilities, targets) > 0) & finite


def polyline_length_ratio(path: Tensor) -> Tensor:
    """Length of each path over the distance between its ends, ``(pairs,)``.

    1 for a path that does not move between coinciding ends; inf for a path that leaves and
    returns to coinciding ends.
    """
    flat = path.flatten(2)
    length = (flat[:, 1:] - flat[:, :-1]).norm(dim=-1).sum(dim=1)
    chord = (flat[:, -1] - flat[:, 0]).norm(dim=-1)
    ratio = length / chord.clamp_min(torch.finfo(flat.dtype).tiny)
    # Coinciding ends joined by a path that does not move: the path is its own chord.
    return torch.where((length == 0) & (chord == 0), torch.ones_like(ratio), ratio)


def distances_from_line(path: Tensor, line: Tensor) -> tuple[Tensor, Tensor]:
    """L2 and L-infinity distance of each point of one path from the straight line's point at
    the same position (point ``k`` of ``N`` sits at ``k / (N - 1)``).

    Args:
        path: ``(N, *point_shape)``.
        line: ``(N', *point_shape)`` evenly spaced points from the path's first end to its last
            (``N' = N`` unless pivots were inserted into the path).

    Returns:
        Two ``(N,)`` tensors, in the units of the points (pixels in [0, 1] for images).
    """
    if line.shape[0] != path.shape[0]:
        weight = torch.linspace(0.0, 1.0, path.shape[0], dtype=line.dtype, device=line.device)
        weight = weight.view(-1, *([1] * (line.dim() - 1)))
        line = torch.lerp(line[:1], line[-1:], weight)
    difference = (path - line).flatten(1)
    return difference.norm(dim=-1), difference.abs().amax(dim=-1)


class Certifier:
    """Which check decides a tail's paths, and that check itself (one per tail).

    Built once per tail with :meth:`for_tail`, before any work: ``certify="exact"`` with a tail
    that is not piecewise linear, or ``certify="bounds"`` with one that holds an operation bound
    propagation does not cover, is refused there.

    Attributes:
        kind: ``"exact"`` (ExactLine, :mod:`connectivity.engine.exact`), ``"bounds"`` (bound
            propagation with branch and bound, :mod:`connectivity.engine.bounds`) or
            ``"sampled"``.
        note: Why ``"auto"`` chose the sampled check (the operation no proof covers), else
            empty.
        program: The exact check's program (``kind == "exact"``).
        bounds: The bound program (``kind == "bounds"``).
        max_splits: The branch and bound's budget per segment (and per triangle).
        max_regions: The exact plane check's budget of linear regions per triangle (surface
            options only; paths have no use for it).
    """

    def __init__(
        self,
        kind: str,
        note: str = "",
        program: Program | None = None,
        bounds: BoundProgram | None = None,
        max_splits: int = DEFAULT_MAX_SPLITS,
        max_regions: int = DEFAULT_MAX_REGIONS,
    ) -> None:
        self.kind, self.note, self.program, self.bounds = kind, note, program, bounds
        self.max_splits, self.max_regions = max_splits, max_regions
        self._cache: dict[tuple[bytes, int], PathCheck] = {}  # (path digest, target)

    @staticmethod
    def for_tail(tail: nn.Module, options: PathOptions, example: Tensor | None = None) -> Certifier:
        """The certifier of ``tail`` under ``options.certify``; ``example``: points ``(B,
        *point_shape)`` of the tail's space, on which attention is rewritten for bounds (see
        :func:`connectivity.engine.bounds.bound_program`; without them a tail with attention
        gets no bounds).

        ``"auto"`` proves with ExactLine where the tail is piecewise linear (on trained ReLU
        networks it costs a fraction of the bounds' branch and bound, which needs sub-intervals
        finer than ExactLine's pieces once a kink is crossed: docs/certificates.md), with bounds
        where they cover a tail that is not, and falls back to the sampled check where neither
        covers it (the note names the operation).

        Raises:
            NotPiecewiseLinearError: ``certify="exact"`` and the tail holds an operation that is
                not piecewise linear (named in the message).
            NotBoundedError: ``certify="bounds"`` and the tail holds an operation bound
                propagation does not cover (named in the message).
        """
        certify, splits = options.certify, options.max_splits
        regions = getattr(options, "max_regions", DEFAULT_MAX_REGIONS)  # a SurfaceOptions'
        if certify == "sampled":
            return Certifier("sampled")
        if certify in ("exact", "auto"):
            try:
                program = piecewise_linear_program(tail)
                return Certifier("exact", program=program, max_regions=regions)
            except NotPiecewiseLinearError as error:
                if certify == "exact":
                    raise NotPiecewiseLinearError(
                        f"certify='exact' is impossible here: {error}; use certify='auto' or "
                        "'sampled'"
                    ) from error
        bounds, why = _bound_program(tail, example)
        if bounds is not None:
            return Certifier("bounds", bounds=bounds, max_splits=splits)
        if certify == "bounds":
            raise NotBoundedError(
                f"certify='bounds' is impossible here: {why}; use certify='auto' or 'sampled'"
            )
        return Certifier("sampled", f"auto chose sampled: {why}")

    @property
    def proves(self) -> bool:
        """Whether a whole-path check runs (exact or bounds), beside the sampled points."""
        return self.kind != "sampled"

    def check(self, paths: Tensor, targets: Tensor) -> list[PathCheck]:
        """The whole-path check of each path ``(pairs, N, *point_shape)``, one
        :class:`PathCheck` (a :class:`BoundCheck` where bounds decided) of one pair each; paths
        checked before (the band's stop, then its record) are reused."""
        # A digest, not the bytes: a key of the path itself would keep megabytes per pair of
        # a large input space alive in the cache.
        keys = [(_digest(paths[i]), int(targets[i])) for i in range(paths.shape[0])]
        found = {key: self._cache[key] for key in keys if key in self._cache}
        todo = [i for i, key in enumerate(keys) if key not in found]
        if todo:
            index = torch.tensor(todo, device=paths.device)
            results = self._check(paths[index].detach(), targets[index])
            found.update((keys[i], results[row]) for row, i in enumerate(todo))
            # The cache bridges the checks of one band evaluation (its stop, its growth, its
            # record); each entry holds every piece end of its path.
            if len(self._cache) + len(todo) > _CACHED_CHECKS:
                self._cache.clear()
            self._cache.update((keys[i], found[keys[i]]) for i in todo)
        return [found[key] for key in keys]

    def _check(self, paths: Tensor, targets: Tensor) -> list[PathCheck]:
        """One check per path, by this certifier's kind."""
        if self.bounds is not None:
            try:
                bound = bound_paths(self.bounds, paths, targets, max_splits=self.max_splits)
            except NotBoundedError as error:
                # What the bounds find only when run (the traced program computing other
                # values than the tail on these points): decided at the sampled points.
                failed = undecided_checks(
                    paths, f"bounds failed, decided at the sampled points: {error}"
                )
                return [_pick(failed, row) for row in range(paths.shape[0])]
            return [_pick(bound, row) for row in range(paths.shape[0])]
        assert self.program is not None
        try:
            exact = check_paths(self.program, paths, targets)
        except (UnreliableExactCheckError, NotPiecewiseLinearError) as error:
            # Rounding the exact check cannot vouch for, or an operation found only when run
            # (values that are not floating point): these paths are decided at the sampled
            # points, and their records say why.
            exact = undecided_checks(
                paths, f"the exact check failed, decided at the sampled points: {error}"
            )
        return [_pick(exact, row) for row in range(paths.shape[0])]

    def check_triangles(self, a: Tensor, b: Tensor, c: Tensor, targets: Tensor) -> TriangleCheck:
        """The proof over every point of each flat triangle ``(a, b, c)`` (each ``(T,
        *point_shape)``; ``targets`` ``(T,)``) by this certifier's kind: the partition into
        linear regions (:func:`connectivity.engine.exact_plane.exact_triangles`, budget
        ``max_regions``) or bound propagation with subdivision
        (:func:`connectivity.engine.bound_triangles.prove_triangles`, budget ``max_splits``). A
        check that fails when run (the traced program disagreeing with the tail, an operation
        found only when run) leaves the triangles ``"undecided"`` with the reason, for the
        sampled check to decide.

        Raises:
            ValueError: a sampled certifier (it proves nothing; use
                :func:`connectivity.engine.triangles.sampled_triangles`).
        """
        count = a.shape[0]
        if self.bounds is not None:
            try:
                return prove_triangles(self.bounds, a, b, c, targets, max_splits=self.max_splits)
            except NotBoundedError as error:
                note = f"bounds failed, decided at the sampled points: {error}"
                return empty_check("bounds", count, UNDECIDED, note)
        if self.program is not None:
            try:
                return exact_triangles(self.program, a, b, c, targets, max_regions=self.max_regions)
            except (UnreliableExactCheckError, NotPiecewiseLinearError) as error:
                note = f"the exact check failed, decided at the sampled points: {error}"
                return empty_check("exact", count, UNDECIDED, note)
        raise ValueError(f"a {self.kind} certifier proves no triangle")


def _bound_program(tail: nn.Module, example: Tensor | None) -> tuple[BoundProgram | None, str]:
    """The tail's bound program, or None and why bounds do not cover it."""
    try:
        return bound_program(tail, example), ""
    except NotBoundedError as error:
        return None, str(error)


_CACHED_CHECKS = 1024


def _digest(path: Tensor) -> bytes:
    """A digest of a path's shape, dtype and values."""
    values = path.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()
    header = f"{tuple(path.shape)}{path.dtype}".encode()
    return hashlib.blake2b(header + values.tobytes(), digest_size=20).digest()


def _pick(check: PathCheck, row: int) -> PathCheck:
    """The check (of the same class: :class:`PathCheck` or :class:`BoundCheck`) of one pair of
    a batch."""
    values = {}
    for item in dataclasses.fields(check):
        value = getattr(check, item.name)
        if isinstance(value, Tensor):
            value = value[row : row + 1]
        elif isinstance(value, list):
            value = [value[row]]
        values[item.name] = value
    if isinstance(check, BoundCheck):
        values["note"] = check.note_of(row)
    return type(check)(**values)


def proved_or_sampled(checks: list[PathCheck], sampled_ok: Tensor) -> tuple[Tensor, Tensor]:
    """``(ok, decided)`` per path: the whole-path check's verdict where it decided, the sampled
    one where it did not (a margin within the tolerance of zero, a split budget spent)."""
    decided = torch.tensor([bool(c.decided[0]) for c in checks], dtype=torch.bool)
    passed = torch.tensor([bool(c.passed[0]) for c in checks], dtype=torch.bool)
    decided, passed = decided.to(sampled_ok.device), passed.to(sampled_ok.device)
    return torch.where(decided, passed, sampled_ok), decided


@dataclass
class LineCheck:
    """The straight line between each pair's ends and its checks."""

    line: Tensor  # (pairs, num_pivots + 2, *point_shape)
    log_probabilities: Tensor  # (pairs, M, classes) at the refined line's points
    ok: Tensor  # (pairs,) bool: the line stays in the class (by the check that decided it)
    # The whole-path check (exact or bounds) of each line (one segment), None with none.
    proofs: list[PathCheck] | None = None

    def subset(self, index: Tensor) -> LineCheck:
        """The check of the pairs at ``index``."""
        proofs = None if self.proofs is None else [self.proofs[i] for i in index.tolist()]
        return LineCheck(self.line[index], self.log_probabilities[index], self.ok[index], proofs)


def check_lines(
    tail: nn.Module,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    options: PathOptions,
    certifier: Certifier | None = None,
) -> LineCheck:
    """Check the straight line of each pair: at evenly spaced points (pivots and points between
    them), and at every point (the whole segment from start to end) with a ``certifier`` that
    proves (exact or bounds)."""
    if starts.shape != ends.shape or targets.shape != (starts.shape[0],):
        raise ValueError("starts and ends must be (pairs, *point_shape) and targets (pairs,)")
    line = straight_line(starts, ends, options.num_pivots)
    log_p = path_log_probabilities(tail, line, options.points_per_segment, options.chunk_size)
    ok = on_target(log_p, targets).all(dim=1)
    proofs = None
    if certifier is not None and certifier.proves and starts.shape[0]:
        # The line is one segment: its whole-path check needs no pivots.
        proofs = certifier.check(torch.stack([starts, ends], dim=1), targets)
        ok, _ = proved_or_sampled(proofs, ok)
    return LineCheck(line, log_p, ok, proofs)


def certification_stop(
    tail: nn.Module,
    options: PathOptions,
    num_classes: int,
    certifier: Certifier | None = None,
) -> StopFn:
    """The ``stop`` callback of the path search: a pair is done once its band is certified.

    With a ``certifier`` that proves, a band whose sampled points all pass is checked at every
    point (exact or bounds); it
    is done when every point passes, and also, when it has fewer than ``options.most_pivots``
    pivots, when stretches of it are off target between pivots: the band would not see them,
    so the driver inserts pivots there and goes on in another round (see :class:`Decisions`).
    With ``options.converge`` it never stops a pair (the band runs to the minimum energy path).
    """
    log_classes = math.log(num_classes)

    def certified(band: Tensor, energies: Tensor, labels: Tensor) -> Tensor:
        done = torch.zeros(len(labels), dtype=torch.bool, device=band.device)
        if options.converge:
            return done
        # A pivot off target has p(target) < 1/C, i.e. energy > log C: skip those bands.
        maybe = (energies.amax(dim=1) <= log_classes).nonzero().squeeze(1)
        if maybe.numel():
            dense = path_log_probabilities(
                tail, band[maybe], options.points_per_segment, options.chunk_size
            )
            done[maybe] = on_target(dense, labels[maybe]).all(dim=1)
        if certifier is not None and certifier.proves:
            sampled = done.nonzero().squeeze(1)
            if sampled.numel():
                checks = certifier.check(band[sampled], labels[sampled])
                ok, decided = proved_or_sampled(checks, done[sampled])
                can_grow = band.shape[1] - 2 < options.most_pivots
                done[sampled] = ok | (decided & can_grow)
        return done

    return certified
