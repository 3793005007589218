"""Is there a path between two same-class points on which every point keeps the class?

Pure PyTorch on top of :mod:`connectivity.engine.band` and :mod:`connectivity.engine.exact`:
the classifier energy ``L(z) = cross_entropy(tail(z), target)``, the checks of a polyline path
(``sampled``: evenly spaced points; ``exact``: every point, for piecewise-linear tails), and the
verdict of each pair (linear, nonlinear, none, diverged).
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.band import (
    DEFAULT_BACKOFFS,
    DEFAULT_MAX_ENERGY_RISE,
    DEFAULT_MAX_STEP,
    DEFAULT_NUDGE,
    METHODS,
    OPTIMIZERS,
    ElasticBand,
    PathResult,
    StopFn,
    find_paths,
    straight_line,
)
from connectivity.engine.exact import (
    NotPiecewiseLinearError,
    PathCheck,
    Program,
    UnreliableExactCheckError,
    check_paths,
    piecewise_linear_program,
    undecided_checks,
)
from connectivity.engine.split import FrozenTail, check_batch_independent
from connectivity.errors import InputError, OptionsError

CERTIFY = ("exact", "sampled", "auto")


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


@dataclass(frozen=True)
class PathOptions:
    """Options of a path search.

    Args:
        num_pivots: Movable points of the band between the fixed ends.
        steps: Most optimisation steps per pair.
        optimizer: ``adam``, ``sgd``, ``fire`` or ``lbfgs``
            (:func:`~.band.make_optimizer`). ``fire`` (Bitzek et al., PRL 97, 170201,
            2006) and ``lbfgs`` (limited-memory BFGS on the NEB force) are made for elastic
            bands and converge on stiff surfaces; ``adam`` rescales each coordinate, so its
            step is not kept perpendicular to the band (the NEB projection is bent), and it
            stalls or blows up on stiff surfaces; ``sgd`` keeps the direction but needs
            ``lr`` below 2 / (largest curvature). See the README's "which optimizer when".
        lr: Learning rate of the pivots (``fire``: initial time step, at most 10 times that
            later; ``lbfgs``: the first step is ``lr`` times the force).
        spring_constant: Spring ``k`` along the band (``neb``).
        method: ``neb`` (improved tangent and springs) or ``string`` (equal arc length).
        climbing: Let the highest pivot climb to the saddle (``neb``).
        bounds: Box the pivots stay in, e.g. ``(0, 1)`` in pixel space; None for no box.
        tol: Convergence threshold on the largest perpendicular force.
        line_points: At least this many evenly spaced points are checked on a path (pivots
            included, and points on every segment between neighbouring pivots).
        converge: Keep optimising a pair after its path is certified, to the minimum energy
            path (by default a pair stops as soon as a path is found: the question is existence).
        chunk_size: Most points per network call in the dense check (bounds memory).
        certify: Which check a verdict rests on. ``"exact"``: every point of the line and the
            path (:mod:`connectivity.engine.exact`, ExactLine); refused for a tail that is not
            piecewise linear. ``"sampled"``: ``line_points`` evenly spaced points only.
            ``"auto"``: exact where the tail is piecewise linear, sampled otherwise (the record
            says which, and why).
        max_pivots: Most pivots a band may grow to when the exact check finds stretches of it
            off the target between pivots: a pivot is inserted in each (as AutoNEB does) and
            the band goes on. None: ``4 * num_pivots``. Both drivers insert pivots
            (:func:`connect_points` and :class:`~connectivity.lightning.path_module.PathModule`).
        max_step: Longest move of any pivot in one step, in units of the pair's pivot spacing on
            the straight line (``|end - start| / (num_pivots + 1)``); longer steps are shortened
            as a whole, as ASE's ``maxstep``. None: 0.5 for ``fire`` and ``lbfgs``, no cap
            (``.inf``) for ``adam`` and ``sgd`` (``connectivity.engine.band.DEFAULT_MAX_STEP``).
        max_energy_rise: Blow-up threshold: a band whose highest pivot energy exceeds its
            straight line's highest energy by more than ``max_energy_rise`` times the line's
            energy scale (the larger of its energy range, highest minus lowest energy on the
            line with the ends, and its largest absolute energy) has blown up, as has one with
            a NaN/inf energy, gradient or position. ``.inf`` keeps only the NaN/inf test.
        backoffs: Times a pair that blows up goes back to its previous path and halves its
            step (learning rate, or FIRE time step) before the next blow-up marks it
            ``diverged``.
        nudge: A band that converges before it has moved while its path is not certified
            (every force along it, e.g. a line through the centre of a round hole in the class)
            has every pivot displaced by this fraction of its ends' distance, orthogonally to
            its line, in a direction seeded by its ends, and goes on (recorded in the record's
            ``nudge``); 0 turns this off (see :class:`~connectivity.engine.band.ElasticBand`).

    Raises:
        OptionsError: when built with a value outside the above (options are frozen: use
            ``dataclasses.replace`` for a variant, which checks again).
    """

    num_pivots: int = 8
    steps: int = 200
    optimizer: str = "adam"
    lr: float = 1e-2
    spring_constant: float = 1.0
    method: str = "neb"
    climbing: bool = False
    bounds: tuple[float, float] | None = None
    tol: float = 1e-3
    line_points: int = 64
    converge: bool = False
    chunk_size: int = 512
    certify: str = "sampled"
    max_pivots: int | None = None
    max_step: float | None = None
    max_energy_rise: float = DEFAULT_MAX_ENERGY_RISE
    backoffs: int = DEFAULT_BACKOFFS
    nudge: float = DEFAULT_NUDGE

    def __post_init__(self) -> None:
        for name, minimum in (
            ("num_pivots", 1),
            ("steps", 0),
            ("line_points", 2),
            ("chunk_size", 1),
            ("backoffs", 0),
        ):
            object.__setattr__(self, name, _checked_int(getattr(self, name), name, minimum))
        for name, positive in (
            ("lr", True),
            ("spring_constant", False),
            ("tol", False),
            ("nudge", False),
        ):
            object.__setattr__(self, name, _checked_number(getattr(self, name), name, positive))
        for name in ("max_step", "max_energy_rise"):
            value = getattr(self, name)
            if value is None and name == "max_step":
                continue  # the optimizer's default
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (number and value > 0):  # NaN fails here too
                also = " or null (the optimizer's default)" if name == "max_step" else ""
                raise OptionsError(f"{name} must be a number > 0 (.inf: none){also}, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.method not in METHODS:
            raise OptionsError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.certify not in CERTIFY:
            raise OptionsError(f"certify must be one of {CERTIFY}, got {self.certify!r}")
        if self.max_pivots is not None:
            most = _checked_int(self.max_pivots, "max_pivots", self.num_pivots)
            object.__setattr__(self, "max_pivots", most)
        if self.optimizer not in OPTIMIZERS:
            raise OptionsError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("climbing", "converge"):
            if not isinstance(getattr(self, name), bool):
                raise OptionsError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.climbing and self.method != "neb":
            # Respacing after each step would drag the climbing pivot off the saddle.
            raise OptionsError(
                f"climbing works with method='neb' only, got method={self.method!r}; "
                "drop climbing or use method='neb'"
            )
        if self.bounds is not None:
            bounds = self.bounds
            if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
                raise OptionsError(f"bounds must be (low, high) or None, got {bounds!r}")
            low, high = (_checked_number(b, "bounds", None) for b in bounds)
            if not low < high:
                raise OptionsError(
                    f"bounds must be finite (low, high) with low < high, got {bounds!r}"
                )
            object.__setattr__(self, "bounds", (low, high))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PathOptions:
        """Options from keyword values; an unknown name is an :class:`OptionsError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionsError(
                f"unknown path option {unknown[0]!r}; the options are {', '.join(sorted(known))}"
            )
        return cls(**values)

    def band_options(self) -> dict[str, Any]:
        """The options an :class:`~connectivity.engine.band.ElasticBand` (and ``find_paths``)
        takes."""
        return {
            "num_pivots": self.num_pivots,
            "spring_constant": self.spring_constant,
            "method": self.method,
            "climbing": self.climbing,
            "bounds": self.bounds,
            "tol": self.tol,
            "max_step": self.resolved_max_step,
            "max_energy_rise": self.max_energy_rise,
            "max_backoffs": self.backoffs,
            "nudge": self.nudge,
        }

    @property
    def most_pivots(self) -> int:
        """The most pivots a band may grow to (``max_pivots``, default ``4 * num_pivots``)."""
        return self.max_pivots if self.max_pivots is not None else 4 * self.num_pivots

    @property
    def resolved_max_step(self) -> float:
        """``max_step``, or the optimizer's default when it is None (``inf``: no cap)."""
        return DEFAULT_MAX_STEP[self.optimizer] if self.max_step is None else self.max_step

    @property
    def points_per_segment(self) -> int:
        """Points checked strictly inside each segment between neighbouring pivots."""
        return max(0, math.ceil((self.line_points - 1) / (self.num_pivots + 1)) - 1)


def _checked_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise OptionsError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _checked_number(value: Any, name: str, positive: bool | None) -> float:
    """``value`` as a finite float; ``positive``: > 0 (True), >= 0 (False), any sign (None)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (positive is None or (value > 0 if positive else value >= 0))
    if not ok:
        bound = {True: " > 0", False: " >= 0", None: ""}[positive]
        raise OptionsError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def classifier_energy(tail: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """``L(z | y) = cross_entropy(tail(z), y)`` per point: the energy of the path search."""

    def energy(points: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(tail(points), targets, reduction="none")

    return energy


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
    # many linear pieces the exact check went through. None / 0 where the exact check did not
    # decide that path.
    off_target_intervals: Tensor | None = None
    line_off_target_intervals: Tensor | None = None
    pieces: int = 0
    line_pieces: int = 0
    # Why the certificate is what it is where "auto" or the tolerance chose "sampled".
    certificate_note: str = ""
    # Length of the symmetry nudge(s) the band got (0: none): a band that converged before it
    # moved, off the target, had every pivot displaced by this much (PathOptions.nudge).
    nudge: float = 0.0

    def metrics(self) -> dict[str, float | int | str]:
        """The scalar part, for tables."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, Tensor)}


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


def _pivot_rows(dense: Tensor, per_segment: int) -> Tensor:
    return dense[:, :: per_segment + 1]


class Certifier:
    """Which check decides a tail's paths, and the exact check itself (one per tail).

    Built once per tail with :meth:`for_tail`, before any work: ``certify="exact"`` with a tail
    that is not piecewise linear is refused there.

    Attributes:
        kind: ``"exact"`` or ``"sampled"``.
        note: Why ``"auto"`` chose the sampled check (the operation that is not piecewise
            linear), else empty.
    """

    def __init__(self, kind: str, note: str = "", program: Program | None = None) -> None:
        self.kind, self.note, self.program = kind, note, program
        self._cache: dict[tuple[bytes, int], PathCheck] = {}  # (path digest, target)

    @staticmethod
    def for_tail(tail: nn.Module, options: PathOptions) -> Certifier:
        """The certifier of ``tail`` under ``options.certify``.

        Raises:
            NotPiecewiseLinearError: ``certify="exact"`` and the tail holds an operation that is
                not piecewise linear (named in the message).
        """
        if options.certify == "sampled":
            return Certifier("sampled")
        try:
            program = piecewise_linear_program(tail)
        except NotPiecewiseLinearError as error:
            if options.certify == "exact":
                raise NotPiecewiseLinearError(
                    f"certify='exact' is impossible here: {error}; use certify='auto' or 'sampled'"
                ) from error
            return Certifier("sampled", f"auto chose sampled: {error}")
        return Certifier("exact", program=program)

    @property
    def exact(self) -> bool:
        return self.kind == "exact"

    def check(self, paths: Tensor, targets: Tensor) -> list[PathCheck]:
        """The exact check of each path ``(pairs, N, *point_shape)``, one :class:`PathCheck` of
        one pair each; paths checked before (the band's stop, then its record) are reused."""
        assert self.program is not None
        # A digest, not the bytes: a key of the path itself would keep megabytes per pair of
        # a large input space alive in the cache.
        keys = [(_digest(paths[i]), int(targets[i])) for i in range(paths.shape[0])]
        found = {key: self._cache[key] for key in keys if key in self._cache}
        todo = [i for i, key in enumerate(keys) if key not in found]
        if todo:
            index = torch.tensor(todo, device=paths.device)
            try:
                result = check_paths(self.program, paths[index].detach(), targets[index])
            except (UnreliableExactCheckError, NotPiecewiseLinearError) as error:
                # Rounding the exact check cannot vouch for, or an operation found only when
                # run (values that are not floating point): these paths are decided at the
                # sampled points, and their records say why.
                result = undecided_checks(
                    paths[index], f"the exact check failed, decided at the sampled points: {error}"
                )
            found.update((keys[i], _pick(result, row)) for row, i in enumerate(todo))
            # The cache bridges the checks of one band evaluation (its stop, its growth, its
            # record); each entry holds every piece end of its path.
            if len(self._cache) + len(todo) > _CACHED_CHECKS:
                self._cache.clear()
            self._cache.update((keys[i], found[keys[i]]) for i in todo)
        return [found[key] for key in keys]


_CACHED_CHECKS = 1024


def _digest(path: Tensor) -> bytes:
    """A digest of a path's shape, dtype and values."""
    values = path.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()
    header = f"{tuple(path.shape)}{path.dtype}".encode()
    return hashlib.blake2b(header + values.tobytes(), digest_size=20).digest()


def _pick(check: PathCheck, row: int) -> PathCheck:
    """The :class:`PathCheck` of one pair of a batch."""
    return PathCheck(
        min_margin=check.min_margin[row : row + 1],
        tolerance=check.tolerance[row : row + 1],
        passed=check.passed[row : row + 1],
        decided=check.decided[row : row + 1],
        pieces=check.pieces[row : row + 1],
        off_target=[check.off_target[row]],
        positions=[check.positions[row]],
        margins=[check.margins[row]],
        note=check.note,
    )


def _exact_ok(checks: list[PathCheck], sampled_ok: Tensor) -> tuple[Tensor, Tensor]:
    """``(ok, decided)`` per path: the exact verdict where decided, the sampled one where a
    margin within the tolerance of zero leaves the exact check undecided."""
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
    exact: list[PathCheck] | None = None  # the exact check of each line (one segment)

    def subset(self, index: Tensor) -> LineCheck:
        """The check of the pairs at ``index``."""
        exact = None if self.exact is None else [self.exact[i] for i in index.tolist()]
        return LineCheck(self.line[index], self.log_probabilities[index], self.ok[index], exact)


def check_lines(
    tail: nn.Module,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    options: PathOptions,
    certifier: Certifier | None = None,
) -> LineCheck:
    """Check the straight line of each pair: at evenly spaced points (pivots and points between
    them), and exactly (the whole segment from start to end) with an exact ``certifier``."""
    if starts.shape != ends.shape or targets.shape != (starts.shape[0],):
        raise ValueError("starts and ends must be (pairs, *point_shape) and targets (pairs,)")
    line = straight_line(starts, ends, options.num_pivots)
    log_p = path_log_probabilities(tail, line, options.points_per_segment, options.chunk_size)
    ok = on_target(log_p, targets).all(dim=1)
    exact = None
    if certifier is not None and certifier.exact and starts.shape[0]:
        # The line is one segment: its exact check needs no pivots.
        exact = certifier.check(torch.stack([starts, ends], dim=1), targets)
        ok, _ = _exact_ok(exact, ok)
    return LineCheck(line, log_p, ok, exact)


def certification_stop(
    tail: nn.Module,
    options: PathOptions,
    num_classes: int,
    certifier: Certifier | None = None,
) -> StopFn:
    """The ``stop`` callback of the path search: a pair is done once its band is certified.

    With an exact ``certifier``, a band whose sampled points all pass is checked exactly; it
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
        if certifier is not None and certifier.exact:
            sampled = done.nonzero().squeeze(1)
            if sampled.numel():
                checks = certifier.check(band[sampled], labels[sampled])
                ok, decided = _exact_ok(checks, done[sampled])
                can_grow = band.shape[1] - 2 < options.most_pivots
                done[sampled] = ok | (decided & can_grow)
        return done

    return certified


def working_precision(starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """The ends in the band's working precision: float64 if they are float64, else float32.

    Pivots and optimizer state live in this dtype whatever the inputs' or the network's dtype
    (in float16, Adam's epsilon underflows to 0 and every step divides 0 by 0).

    Raises:
        InputError: ends that are not floating point.
    """
    if not (starts.is_floating_point() and ends.is_floating_point()):
        raise InputError(f"points must be floating point, got {starts.dtype} and {ends.dtype}")
    dtype = torch.float64 if torch.float64 in (starts.dtype, ends.dtype) else torch.float32
    return starts.to(dtype), ends.to(dtype)


def check_range(
    starts: Tensor, ends: Tensor, box: tuple[float, float] | None, name: str = "bounds"
) -> None:
    """Raise :class:`InputError` when an end lies outside ``box`` (no check for None).

    Pivots clamped to ``[0, 1]`` between ends at 255 could never form a path between them, and
    the verdict would be a silent ``none``; images in 0..255 given to a hidden layer would be
    misread by the classifier just as silently.
    """
    if box is None or starts.numel() == 0:
        return
    low = float(torch.minimum(starts.min(), ends.min()))
    high = float(torch.maximum(starts.max(), ends.max()))
    if low < box[0] or high > box[1]:
        raise InputError(
            f"the ends have values in [{low:g}, {high:g}], outside {name} {tuple(box)}: images "
            "must be floats in [0, 1] (divide 0..255 values by 255); for points that are not "
            f"images give {name}=None (or a range that holds them)"
        )


def connect_points(
    tail: nn.Module,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    options: PathOptions | None = None,
    on_record: Callable[[int, PairRecord], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[PairRecord]:
    """Decide for each pair whether a path inside the target class joins its ends.

    The straight line is checked first; pairs whose line leaves the class get a NEB band
    (:func:`~.band.find_paths`), which stops as soon as its own check passes (unless
    ``options.converge``). All pairs and all pivots go through the network together. With the
    exact check (``options.certify``), a band (or a line) found off the target between its
    points gets a pivot inserted in each such stretch and goes on in a new round, up to
    ``options.max_pivots`` pivots (AutoNEB: Kolsbjerg, Groves and Hammer, J. Chem. Phys. 145,
    094107 (2016)); pairs of a round that have the same number of pivots run as one band.

    Args:
        tail: Maps points ``(B, *point_shape)`` to logits ``(B, classes)``.
        starts: ``(pairs, *point_shape)``.
        ends: ``(pairs, *point_shape)``.
        targets: ``(pairs,)`` target class of each pair.
        options: Path options (defaults if None).
        on_record: Called as ``on_record(pair_index, record)`` as soon as a pair is decided
            (linear pairs right after the line check, the others when they leave the band),
            so callers can save each result at once.
        on_progress: Called as ``on_progress(steps_done, pairs_decided)`` after every step.

    Returns:
        One :class:`PairRecord` per pair, in order.

    Raises:
        NotPiecewiseLinearError: ``options.certify == "exact"`` with a tail that is not
            piecewise linear (before any work).
        BatchDependenceError: a tail whose logits of a point depend on the rest of its batch
            (batch statistics in eval mode; before any work).
    """
    options = options or PathOptions()
    starts, ends = working_precision(starts, ends)
    targets = targets.to(device=starts.device, dtype=torch.long)
    check_range(starts, ends, options.bounds)
    # Our own frozen, eval-mode copy: the caller's module is never changed, and points of the
    # working precision are cast to the network's dtype inside.
    if not isinstance(tail, FrozenTail):
        tail = FrozenTail(copy.deepcopy(tail)).to(starts.device)
        # A tail of the user's own (split's tails were checked where they were probed).
        check_batch_independent(nn.Identity(), tail, torch.cat([starts[:1], ends[:1]]))
    certifier = Certifier.for_tail(tail, options)
    check = check_lines(tail, starts, ends, targets, options, certifier)
    decisions = Decisions(tail, targets, check, options, on_record, certifier)
    decisions.decide_lines()
    if on_progress is not None:
        on_progress(0, len(decisions.records))
    decisions.queue_lines()
    stop = certification_stop(tail, options, check.log_probabilities.shape[-1], certifier)
    while (next_round := decisions.next_round()) is not None:
        need, initial, taken, anchored = next_round

        def on_step(band: ElasticBand, need: Tensor = need) -> None:
            decisions.decide_band(band, need)
            if on_progress is not None:
                on_progress(int(band.steps.max()), len(decisions.records))

        band_options = {**options.band_options(), "num_pivots": initial.shape[1] - 2}
        result = find_paths(
            classifier_energy(tail),
            starts[need],
            ends[need],
            steps=options.steps,
            optimizer=options.optimizer,
            lr=options.lr,
            **band_options,
            stop=stop,
            labels=targets[need],
            on_step=on_step,
            initial=initial,
            steps_taken=taken,
            anchored=anchored,
        )
        # Pairs that never took a step (e.g. a non-finite end) are finished here.
        decisions.decide_band(result, need, done=torch.ones_like(need, dtype=torch.bool))
    return decisions.in_order()


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
    are     decided by the line check, the others when they leave their band; each gets its verdicts
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
            if self.check.exact is not None:
                off_target = self.check.exact[i].off_target[0]
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
        if self.certifier.exact:
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
    for figures, and it decides wherever the exact check did not (a sampled certifier, or a
    margin within the exact check's tolerance of zero).
    """
    certifier = certifier or Certifier("sampled")
    per_segment = options.points_per_segment
    line, line_dense, path = check.line, check.log_probabilities, outcome.path
    need = (~check.ok).nonzero().squeeze(1)
    if path.shape[1] == line.shape[1]:
        dense = line_dense.clone()
        if need.numel():
            dense[need] = path_log_probabilities(tail, path[need], per_segment, options.chunk_size)
    else:  # bands with inserted pivots: every pair here needed its band
        dense = path_log_probabilities(tail, path, per_segment, options.chunk_size)
    path_ok = on_target(dense, targets).all(dim=1)
    path_exact: list[PathCheck | None] = [None] * len(targets)
    path_decided = torch.zeros_like(path_ok)
    if certifier.exact and need.numel():
        checks = certifier.check(path[need], targets[need])
        ok, decided = _exact_ok(checks, path_ok[need])
        path_ok[need], path_decided[need] = ok, decided
        for k, i in enumerate(need.tolist()):
            path_exact[i] = checks[k]
    line_exact = check.exact if check.exact is not None else [None] * len(targets)
    line_pivots, path_pivots = _pivot_rows(line_dense, per_segment), _pivot_rows(dense, per_segment)
    line_pivots_ok = on_target(line_pivots, targets).all(dim=1)
    path_pivots_ok = on_target(path_pivots, targets).all(dim=1)
    # The energy is -log p(target): read it off the dense check instead of another pass.
    line_energy = -_target_column(line_dense, targets)
    path_energy = -_target_column(dense, targets)
    ratio = polyline_length_ratio(path)
    diverged = outcome.diverged

    distances = [
        tuple(d.cpu() for d in distances_from_line(path[i].detach(), line[i].detach()))
        for i in range(len(targets))
    ]
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
        exact_line, exact_path = line_exact[i], path_exact[i]
        if line_ok:
            exact_path = exact_line  # the path is the line
        line_min = float(line_margin[i].min())
        path_min = float(margin[i].min())
        if exact_line is not None and bool(exact_line.decided[0]):
            line_min = float(exact_line.min_margin[0])
        if exact_path is not None and bool(exact_path.decided[0]):
            path_min = float(exact_path.min_margin[0])
        certificate, note = _certificate(
            certifier, verdict, exact_line, exact_path, bool(path_decided[i]) or line_ok
        )
        status = outcome.status[i]
        if status == BandStatus.CERTIFIED and verdict != Verdict.NONLINEAR:
            # The stop let the band go to grow pivots in its off-target stretches, but it had
            # no steps left to do so (see Decisions._grow): it was never certified.
            status = BandStatus.OUT_OF_STEPS.value
        records.append(
            PairRecord(
                verdict=verdict.value,
                pivot_verdict=pivot_verdict.value,
                status=status,
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
                distance_l2=distances[i][0],
                distance_linf=distances[i][1],
                certificate=certificate,
                min_margin=path_min,
                line_min_margin=line_min,
                check_position=position,
                check_margin=margin[i].float(),
                check_predicted=predicted[i],
                line_check_position=line_position,
                line_check_margin=line_margin[i].float(),
                line_check_predicted=line_predicted[i],
                off_target_intervals=_stretches(exact_path),
                line_off_target_intervals=_stretches(exact_line),
                pieces=_pieces(exact_path),
                line_pieces=_pieces(exact_line),
                certificate_note=note,
                line_probabilities=line_pivots[i].exp().cpu(),
                path_probabilities=path_pivots[i].exp().cpu(),
                line_energy=_pivot_rows(line_energy, per_segment)[i].cpu(),
                path_energy=_pivot_rows(path_energy, per_segment)[i].cpu(),
            )
        )
    return records


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
    """``("exact" | "sampled", note)``: exact when every check the verdict rests on (the line;
    for a band also its path) was decided by the exact check."""
    if not certifier.exact:
        return "sampled", certifier.note
    if verdict == Verdict.DIVERGED:
        return "sampled", "diverged: nothing to certify"
    rests_on = [line] if verdict == Verdict.LINEAR else [line, path]
    if all(_decided(c) for c in rests_on) and path_decided:
        return "exact", ""
    failed = [c.note for c in rests_on if c is not None and c.note]
    if failed:
        return "sampled", failed[0]
    return "sampled", (
        "a margin within the exact check's floating-point tolerance of zero: decided at the "
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
