"""Is there a path between two same-class points on which every point keeps the class?

Pure PyTorch on top of :mod:`connectivity.neb`: the classifier energy
``L(z) = cross_entropy(tail(z), target)``, the dense check that certifies a piecewise-linear
path, and the verdict of each pair (linear, nonlinear, none, diverged).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.errors import InputError, OptionsError
from connectivity.neb import (
    METHODS,
    OPTIMIZERS,
    ElasticBand,
    PathResult,
    StopFn,
    find_paths,
    straight_line,
)
from connectivity.split import FrozenTail


class Verdict(str, Enum):
    """What was found between a pair."""

    LINEAR = "linear"  # the straight line stays in the class
    NONLINEAR = "nonlinear"  # the line leaves the class, the optimised band does not
    NONE = "none"  # neither, within the step budget
    DIVERGED = "diverged"  # the optimisation hit NaN/inf; nothing can be said


@dataclass(frozen=True)
class PathOptions:
    """Options of a path search.

    Args:
        num_pivots: Movable points of the band between the fixed ends.
        steps: Most optimisation steps per pair.
        optimizer: ``adam`` or ``sgd``.
        lr: Learning rate of the pivots.
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

    def __post_init__(self) -> None:
        for name, minimum in (
            ("num_pivots", 1),
            ("steps", 0),
            ("line_points", 2),
            ("chunk_size", 1),
        ):
            object.__setattr__(self, name, _checked_int(getattr(self, name), name, minimum))
        for name, positive in (("lr", True), ("spring_constant", False), ("tol", False)):
            object.__setattr__(self, name, _checked_number(getattr(self, name), name, positive))
        if self.method not in METHODS:
            raise OptionsError(f"method must be one of {METHODS}, got {self.method!r}")
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
        """The options an :class:`~connectivity.neb.ElasticBand` (and ``find_paths``) takes."""
        return {
            "num_pivots": self.num_pivots,
            "spring_constant": self.spring_constant,
            "method": self.method,
            "climbing": self.climbing,
            "bounds": self.bounds,
            "tol": self.tol,
        }

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
    """Everything found for one pair; tensors are on the CPU."""

    verdict: str
    pivot_verdict: str
    target: int
    steps: int
    max_energy: float  # highest -log p(target) over the densely checked path
    min_target_probability: float  # lowest p(target) over the densely checked path
    length_ratio: float  # path length over the straight-line distance of the ends
    line_max_energy: float  # the same two on the straight line
    line_min_target_probability: float
    max_force: float
    line: Tensor  # (num_pivots + 2, *point_shape) straight line, ends included
    path: Tensor  # (num_pivots + 2, *point_shape) optimised band (the line for linear pairs)
    line_probabilities: Tensor  # (num_pivots + 2, classes) at the line's points
    path_probabilities: Tensor  # (num_pivots + 2, classes) at the path's points
    line_energy: Tensor  # (num_pivots + 2,)
    path_energy: Tensor  # (num_pivots + 2,)
    # How far each point of the path moved from its point on the line, (num_pivots + 2,) (0 at
    # the ends and for linear pairs), in the space's own units (pixels in [0, 1] for images).
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

    def metrics(self) -> dict[str, float | int | str]:
        """The scalar part, for tables."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, Tensor)}


def distances_from_line(path: Tensor, line: Tensor) -> tuple[Tensor, Tensor]:
    """L2 and L-infinity distance of each point of one path from its point on the straight line.

    Args:
        path: ``(N, *point_shape)``.
        line: The same shape.

    Returns:
        Two ``(N,)`` tensors, in the units of the points (pixels in [0, 1] for images).
    """
    difference = (path - line).flatten(1)
    return difference.norm(dim=-1), difference.abs().amax(dim=-1)


def _pivot_rows(dense: Tensor, per_segment: int) -> Tensor:
    return dense[:, :: per_segment + 1]


@dataclass
class LineCheck:
    """The straight line between each pair's ends and its dense check."""

    line: Tensor  # (pairs, num_pivots + 2, *point_shape)
    log_probabilities: Tensor  # (pairs, M, classes) at the refined line's points
    ok: Tensor  # (pairs,) bool: every checked point is on target

    def subset(self, index: Tensor) -> LineCheck:
        """The check of the pairs at ``index``."""
        return LineCheck(self.line[index], self.log_probabilities[index], self.ok[index])


def check_lines(
    tail: nn.Module, starts: Tensor, ends: Tensor, targets: Tensor, options: PathOptions
) -> LineCheck:
    """Check the straight line of each pair densely (pivots and points between them)."""
    if starts.shape != ends.shape or targets.shape != (starts.shape[0],):
        raise ValueError("starts and ends must be (pairs, *point_shape) and targets (pairs,)")
    line = straight_line(starts, ends, options.num_pivots)
    log_p = path_log_probabilities(tail, line, options.points_per_segment, options.chunk_size)
    return LineCheck(line, log_p, on_target(log_p, targets).all(dim=1))


def certification_stop(tail: nn.Module, options: PathOptions, num_classes: int) -> StopFn:
    """The ``stop`` callback of the path search: a pair is done once its band is certified.

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

    The straight line is checked densely first; pairs whose line leaves the class get a NEB
    band (:func:`connectivity.neb.find_paths`), which stops as soon as its own dense check
    passes (unless ``options.converge``). All pairs and all pivots go through the network
    together.

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
    """
    options = options or PathOptions()
    starts, ends = working_precision(starts, ends)
    targets = targets.to(device=starts.device, dtype=torch.long)
    check_range(starts, ends, options.bounds)
    # Our own frozen, eval-mode copy: the caller's module is never changed, and points of the
    # working precision are cast to the network's dtype inside.
    if not isinstance(tail, FrozenTail):
        tail = FrozenTail(copy.deepcopy(tail)).to(starts.device)
    check = check_lines(tail, starts, ends, targets, options)
    decisions = Decisions(tail, targets, check, options, on_record)
    decisions.decide_lines()
    need = (~check.ok).nonzero().squeeze(1)
    if on_progress is not None:
        on_progress(0, len(decisions.records))

    def on_step(band: ElasticBand) -> None:
        decisions.decide_band(band, need)
        if on_progress is not None:
            on_progress(int(band.steps.max()), len(decisions.records))

    if need.numel():
        result = find_paths(
            classifier_energy(tail),
            starts[need],
            ends[need],
            steps=options.steps,
            optimizer=options.optimizer,
            lr=options.lr,
            **options.band_options(),
            stop=certification_stop(tail, options, check.log_probabilities.shape[-1]),
            labels=targets[need],
            on_step=on_step,
        )
        # Pairs that never took a step (e.g. a non-finite end) are finished here.
        decisions.decide_band(result, need, done=torch.ones_like(need, dtype=torch.bool))
    return decisions.in_order()


class Decisions:
    """The records of a batch of pairs, each made the moment its pair is decided.

    One code path for both drivers of the search, the plain loop of :func:`connect_points` and
    the Lightning :class:`~connectivity.path_module.PathModule`: pairs whose line passes are
    decided by the line check, the others when they leave their band; each gets its verdicts
    and metrics from :func:`make_records`, once.

    Args:
        tail: The frozen tail the pairs are decided with.
        targets: ``(pairs,)`` target classes.
        check: The line check of all pairs.
        options: The path options.
        on_record: Called as ``on_record(pair_index, record)`` for each new record.

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
    ) -> None:
        self.tail, self.targets, self.check, self.options = tail, targets, check, options
        self.on_record = on_record
        self.records: dict[int, PairRecord] = {}

    def _finish(self, index: Tensor, outcome: BandOutcome) -> None:
        new = make_records(
            self.tail, self.targets[index], self.check.subset(index), outcome, self.options
        )
        for i, record in zip(index.tolist(), new, strict=True):
            self.records[i] = record
            if self.on_record is not None:
                self.on_record(i, record)

    def decide_lines(self) -> None:
        """Record every pair whose straight line passes the check (no band needed)."""
        linear = self.check.ok.nonzero().squeeze(1)
        linear = linear[[i not in self.records for i in linear.tolist()]]
        if linear.numel():
            self._finish(linear, BandOutcome.unmoved(self.check.line[linear]))

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
        rows = [r for r in rows if int(pairs[r]) not in self.records]
        if not rows:
            return
        fresh = torch.tensor(rows, device=pairs.device)
        outcome = BandOutcome(
            band.path[fresh],
            band.steps[fresh],
            band.max_force[fresh].to(self.check.line.dtype),
            band.diverged[fresh],
        )
        self._finish(pairs[fresh], outcome)

    def in_order(self) -> list[PairRecord]:
        """Every pair's record, in pair order (all pairs must be decided)."""
        return [self.records[i] for i in range(len(self.targets))]


@dataclass
class BandOutcome:
    """Where the band of each pair ended (the line itself for pairs that needed no band)."""

    path: Tensor  # (pairs, num_pivots + 2, *point_shape)
    steps: Tensor  # (pairs,) long
    max_force: Tensor  # (pairs,)
    diverged: Tensor  # (pairs,) bool

    @staticmethod
    def unmoved(line: Tensor) -> BandOutcome:
        """The outcome of pairs that needed no band: the line, no steps."""
        pairs, device = line.shape[0], line.device
        return BandOutcome(
            path=line,
            steps=torch.zeros(pairs, dtype=torch.long, device=device),
            max_force=torch.zeros(pairs, device=device),
            diverged=torch.zeros(pairs, dtype=torch.bool, device=device),
        )


def make_records(
    tail: nn.Module,
    targets: Tensor,
    check: LineCheck,
    outcome: BandOutcome,
    options: PathOptions,
) -> list[PairRecord]:
    """Check the final bands densely and give each pair its verdicts and metrics."""
    per_segment = options.points_per_segment
    line, line_dense, path = check.line, check.log_probabilities, outcome.path
    dense = line_dense.clone()
    need = (~check.ok).nonzero().squeeze(1)
    if need.numel():
        dense[need] = path_log_probabilities(tail, path[need], per_segment, options.chunk_size)
    path_ok = on_target(dense, targets).all(dim=1)
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
    records = []
    for i in range(len(targets)):
        verdict = _verdict(bool(check.ok[i]), bool(diverged[i]), bool(path_ok[i]))
        pivot_verdict = _verdict(
            bool(line_pivots_ok[i]), bool(diverged[i]), bool(path_pivots_ok[i])
        )
        records.append(
            PairRecord(
                verdict=verdict.value,
                pivot_verdict=pivot_verdict.value,
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
                certificate="sampled",
                min_margin=float(margin[i].min()),
                line_min_margin=float(line_margin[i].min()),
                check_position=position,
                check_margin=margin[i].float(),
                check_predicted=predicted[i],
                line_check_position=position,
                line_check_margin=line_margin[i].float(),
                line_check_predicted=line_predicted[i],
                line_probabilities=line_pivots[i].exp().cpu(),
                path_probabilities=path_pivots[i].exp().cpu(),
                line_energy=_pivot_rows(line_energy, per_segment)[i].cpu(),
                path_energy=_pivot_rows(path_energy, per_segment)[i].cpu(),
            )
        )
    return records


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
