"""The path search: one driver of bands, rounds and decisions, taken one evaluation at a time.

* :class:`BandRun`: one band (:class:`~connectivity.engine.band.ElasticBand`), its optimiser
  and its energy; :meth:`BandRun.step` is one batched evaluation of the active pivots and one
  update. :func:`find_paths` runs one to the end, for any energy.
* :class:`PathSearch`: the search of a batch of pairs of a classifier: the ends in the working
  precision, the line check, then rounds of bands (a band per round, pairs that leave the class
  between pivots come back in a later round with pivots inserted), each pair decided the moment
  its line or band is (:class:`~connectivity.engine.decisions.Decisions`), and the state a band
  checkpoint saves and a resume starts from. :func:`connect_points` drives it in a plain loop;
  :class:`~connectivity.lightning.path_module.PathModule` drives it from a Trainer's hooks (one
  training step, one :meth:`PathSearch.step`).

The energy of the search is :class:`ClassifierEnergy`, ``cross_entropy(tail(z), y)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectivity.engine.band import ElasticBand, EnergyFn, PathResult, StopFn, straight_line
from connectivity.engine.checks import Certifier, LineCheck, certification_stop, check_lines
from connectivity.engine.decisions import Decisions, PairRecord
from connectivity.engine.optimizers import make_optimizer
from connectivity.engine.options import BandOptions, PathOptions
from connectivity.engine.split import FrozenTail, check_batch_independent
from connectivity.errors import InputError

__all__ = [
    "BandRun",
    "ClassifierEnergy",
    "Evaluation",
    "PathSearch",
    "check_range",
    "classifier_energy",
    "connect_points",
    "find_paths",
    "prepare_pairs",
    "working_precision",
]


class ClassifierEnergy:
    """The energy of the path search: ``L(z | y) = cross_entropy(tail(z), y)`` per point.

    Called as ``energy(points, targets)`` with ``(B, *point_shape)`` points and ``(B,)`` long
    targets; returns ``(B,)``.

    Attributes:
        logits: ``(B, classes)`` of the last call, detached (for a driver's metrics).
    """

    def __init__(self, tail: nn.Module) -> None:
        self.tail = tail
        self.logits: Tensor | None = None

    def __call__(self, points: Tensor, targets: Tensor) -> Tensor:
        logits = self.tail(points)
        self.logits = logits.detach()
        return F.cross_entropy(logits, targets, reduction="none")


def classifier_energy(tail: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """``L(z | y) = cross_entropy(tail(z), y)`` per point: the energy of the path search
    (:class:`ClassifierEnergy`)."""
    return ClassifierEnergy(tail)


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


def prepare_pairs(
    starts: Tensor, ends: Tensor, targets: Tensor, bounds: tuple[float, float] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The pairs as the search takes them: the ends in the working precision
    (:func:`working_precision`), the targets long on their device.

    Raises:
        InputError: ends that are not floating point, or outside ``bounds``
            (:func:`check_range`).
    """
    starts, ends = working_precision(starts, ends)
    check_range(starts, ends, bounds)
    return starts, ends, targets.to(device=starts.device, dtype=torch.long)


@dataclass
class StepResult:
    """One evaluation of a band's active pivots (before its update)."""

    energies: Tensor  # (evaluated pairs * pivots,) detached
    labels: Tensor | None  # (evaluated pairs * pivots,) the labels of the evaluated points
    evaluated: Tensor  # (pairs,) bool: the pairs evaluated
    moved: Tensor  # (pairs,) bool: the pairs the update moved (still in the band)


class BandRun:
    """One band, its optimiser (``band.options.optimizer`` and ``lr``) and its energy.

    Args:
        band: The band, on its starting path.
        energy: Maps ``(B, *point_shape)`` points (and ``(B,)`` labels, for a band with
            ``labels``) to ``(B,)`` energies; differentiable, batch entries independent.
        stop: The band's ``stop`` callback (see ``ElasticBand.project_``), or None.

    Drive it with :meth:`start`, then :meth:`step` until :attr:`done`.
    """

    def __init__(self, band: ElasticBand, energy: EnergyFn, stop: StopFn | None = None) -> None:
        self.band, self.energy, self.stop = band, energy, stop
        options = band.options
        self.optimizer = make_optimizer(options.optimizer, [band.pivots], options.lr)

    def _evaluate(self, points: Tensor, labels: Tensor | None) -> Tensor:
        energies = self.energy(points) if labels is None else self.energy(points, labels)
        return energies.reshape(-1)

    @torch.no_grad()
    def start(self) -> None:
        """Evaluate the fixed ends (a pair with a non-finite end is finished at once)."""
        if self.band.pairs:
            band = self.band
            band.set_end_energies_(self._evaluate(band.end_points(), band.end_labels()))

    @property
    def done(self) -> bool:
        return self.band.done

    def step(self) -> StepResult:
        """One evaluation of the active pivots (forward and backward) and, for the pairs still
        active, one update of the optimiser."""
        band = self.band
        x = band.active_points().requires_grad_(True)
        labels = band.active_labels()
        with torch.enable_grad():
            energies = self._evaluate(x, labels)
            (grad,) = torch.autograd.grad(energies.sum(), x)
        evaluated = band.active.clone()
        moved = band.project_(grad, energies, stop=self.stop)
        if moved.any():
            self.optimizer.step()
            band.after_step_()
        return StepResult(energies.detach(), labels, evaluated, moved)


def find_paths(
    energy: EnergyFn,
    starts: Tensor,
    ends: Tensor,
    options: BandOptions | None = None,
    *,
    stop: StopFn | None = None,
    labels: Tensor | None = None,
    on_step: Callable[[ElasticBand], None] | None = None,
    initial: Tensor | None = None,
    steps_taken: Tensor | None = None,
    anchored: Tensor | None = None,
    **values: Any,
) -> PathResult:
    """Optimise one band per (start, end) pair towards a minimum energy path.

    Each iteration makes one batched energy call (forward + backward) on the pivots of the
    pairs still active; pairs leave the batch when they converge, are stopped, diverge or run
    out of steps. One extra gradient-free call evaluates the fixed ends at the beginning.

    Args:
        energy: maps ``(B, *point_shape)`` to ``(B,)``; must be differentiable in its input
            and must treat batch entries independently.
        starts: ``(pairs, *point_shape)``.
        ends: ``(pairs, *point_shape)``.
        options: The band's options (:class:`~connectivity.engine.options.BandOptions`, or a
            :class:`~connectivity.engine.options.PathOptions`); defaults if None.
        stop: ``stop(path, energy) -> (n,) bool`` called each time pairs are evaluated (also on
            the straight line, before any step); True ends that pair. See
            ``ElasticBand.project_``.
        labels: optional ``(pairs,)`` labels for a conditional energy: ``energy`` is then
            called as ``energy(points, labels_of_points)`` and ``stop`` as
            ``stop(path, energy, labels)``, e.g. a classifier's loss for each pair's target.
        on_step: optional ``on_step(band)`` called after every evaluation (and update), e.g. to
            report progress or to save pairs as soon as they leave the batch.
        initial: optional ``(pairs, N, *point_shape)`` paths to start from instead of the
            straight line (their ends must be ``starts`` and ``ends``; ``N - 2`` replaces
            ``num_pivots``), e.g. a band that got more pivots where it was poorly resolved.
        steps_taken: optional ``(pairs,)`` long steps these paths already took; they count
            towards ``steps``.
        anchored: optional ``(pairs, N)`` bool, the points of ``initial`` that the ``string``
            respacing leaves in place (e.g. inserted pivots; the ends always stay).
        **values: Options replacing those of ``options``, by their names in
            :class:`~connectivity.engine.options.BandOptions` (``num_pivots``, ``steps``,
            ``optimizer``, ``lr``, ``spring_constant``, ``method``, ``climbing``,
            ``climb_after``, ``bounds``, ``tol``, ``max_step``, ``max_energy_rise``,
            ``backoffs``, ``nudge``, ``nudge_seed``); ``max_backoffs``, the former name of
            ``backoffs``, is taken too.

    Returns:
        ``PathResult`` whose energies and forces belong to the returned paths.

    Raises:
        OptionsError: an unknown option name or a value outside what the options accept.
    """
    if initial is not None:
        values = {**values, "num_pivots": initial.shape[1] - 2}
    band = ElasticBand(starts, ends, options, labels=labels, **values)
    band.start_from_(initial, steps_taken, anchored)
    run = BandRun(band, energy, stop)
    run.start()
    while not run.done:
        run.step()
        if on_step is not None:
            on_step(band)
    return band.result()


@dataclass
class Evaluation:
    """What one :meth:`PathSearch.step` saw, for a driver's metrics and progress."""

    max_energy: Tensor  # highest energy of the evaluated pivots
    max_force: Tensor  # largest max_force of the evaluated pairs
    on_target: Tensor  # fraction of the evaluated pivots the tail puts in their target class
    active_pairs: int  # pairs still in the band after the step
    pivots: int  # pivots per pair of the band
    steps: int  # most steps a pair of the band has taken


class PathSearch:
    """The path search of a batch of pairs, one evaluation at a time.

    Built with the pairs, it checks their straight lines and decides every pair whose line
    stays in the class; :meth:`start` queues the others for bands (or continues a band
    checkpoint), and each :meth:`step` evaluates and updates the current round's band once,
    decides the pairs that left it, and starts the next round's band once it is done::

        search = PathSearch(tail, starts, ends, targets, options)
        search.start()
        while not search.done:
            search.step()
        records = search.records()

    Args:
        tail: The frozen tail (:class:`~connectivity.engine.split.FrozenTail`): points
            ``(B, *point_shape)`` to logits ``(B, classes)``.
        starts: ``(pairs, *point_shape)`` first ends.
        ends: ``(pairs, *point_shape)`` second ends.
        targets: ``(pairs,)`` target class of each pair.
        options: Path options.
        on_record: Called as ``on_record(pair_index, record)`` as soon as a pair is decided.
        on_band: Called with the optimiser of each new band (e.g. to hand it to a Trainer).

    Attributes:
        decisions: The records so far and the pairs waiting for a band.
        certifier: The check the verdicts rest on.
        rows: ``(band.pairs,)`` long: the pair (index into ``starts``) of each band row.
        restored: Pairs a band decided before a resume (from its checkpoint).

    Raises:
        InputError: ends that are not floating point or outside ``options.bounds``.
        NotPiecewiseLinearError, NotBoundedError: ``options.certify`` ``"exact"`` (``"bounds"``)
            with a tail that is not piecewise linear (holds an operation bounds do not cover).
    """

    def __init__(
        self,
        tail: nn.Module,
        starts: Tensor,
        ends: Tensor,
        targets: Tensor,
        options: PathOptions,
        *,
        on_record: Callable[[int, PairRecord], None] | None = None,
        on_band: Callable[[torch.optim.Optimizer], None] | None = None,
    ) -> None:
        self.options = options
        self.tail = tail
        self.starts, self.ends, self.targets = prepare_pairs(starts, ends, targets, options.bounds)
        self.on_band = on_band
        self.certifier = Certifier.for_tail(tail, options, self.starts[:1])
        check = self._check_lines()
        self.decisions = Decisions(tail, self.targets, check, options, on_record, self.certifier)
        self.decisions.decide_lines()
        classes = check.log_probabilities.shape[-1]
        self.stop = certification_stop(tail, options, classes, self.certifier)
        self.energy = ClassifierEnergy(tail)
        self.run: BandRun | None = None
        self.rows = torch.zeros(0, dtype=torch.long, device=self.starts.device)
        self.restored = 0

    def _check_lines(self) -> LineCheck:
        if self.starts.shape[0] == 0:  # e.g. a rank with no pairs of its own
            line = straight_line(self.starts, self.ends, self.options.num_pivots)
            ok = torch.zeros(0, dtype=torch.bool, device=line.device)
            return LineCheck(line, line.new_zeros(0, 0, 2), ok)
        return check_lines(
            self.tail, self.starts, self.ends, self.targets, self.options, self.certifier
        )

    @property
    def band(self) -> ElasticBand:
        """The band of the current round (an empty one once no pair waits for a band)."""
        if self.run is None:
            raise RuntimeError("start the search first (PathSearch.start)")
        return self.run.band

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the current band."""
        return self._run().optimizer

    def _run(self) -> BandRun:
        if self.run is None:
            raise RuntimeError("start the search first (PathSearch.start)")
        return self.run

    @property
    def done(self) -> bool:
        """Every pair is decided (after :meth:`start`)."""
        return self._run().done

    def start(self, checkpoint: dict[str, Any] | None = None) -> None:
        """Queue the pairs whose line fails for bands and start the first round's band, or
        continue from a band ``checkpoint`` (:meth:`checkpoint` as saved and loaded; the
        search's pairs must be the ones it was written for)."""
        if checkpoint is not None:
            self._continue(checkpoint)
            return
        self.decisions.queue_lines()
        self._next_band()

    def step(self) -> Evaluation:
        """One evaluation of the current band's active pivots and one update; the pairs that
        left the band are decided, and a finished band is replaced by the next round's."""
        run = self._run()
        if run.done:
            raise RuntimeError("the search is done: every pair is decided")
        result = run.step()
        band = run.band
        logits = self.energy.logits
        assert logits is not None and result.labels is not None
        evaluation = Evaluation(
            max_energy=result.energies.max(),
            max_force=band.max_force[result.evaluated].max(),
            on_target=(logits.argmax(dim=-1) == result.labels).float().mean(),
            active_pairs=int(result.moved.sum()),
            pivots=band.num_pivots,
            steps=int(band.steps.max()),
        )
        self.decisions.decide_band(band, self.rows)
        if band.done:
            self._next_band()
        return evaluation

    def records(self) -> list[PairRecord]:
        """Every pair's record, in pair order (once :attr:`done`)."""
        return self.decisions.in_order()

    def steps_taken(self) -> int:
        """The most steps of a pair still in the band (of any pair once none is): the pairs of
        a later round bring the steps of their earlier rounds, and one that leaves the band
        must not hold the count still."""
        band = self.band
        if band.pairs == 0:
            return 0
        active = band.steps[band.active]
        return int(active.max()) if active.numel() else int(band.steps.max())

    def checkpoint(self) -> dict[str, Any]:
        """What a band checkpoint saves to continue this search (:meth:`start`): the band
        (``band``: its pivots and per-pair state), which pairs its rows are (``band_rows``),
        the pairs queued for later rounds with the paths they go on from (``queued``), the
        nudges of earlier bands (``nudges``), the records of the pairs bands decided so far
        (``decided``: ``{pair index: PairRecord}``) and the optimiser's state (``optimizer``).
        """
        run = self._run()
        return {
            "band": run.band.state_dict(),
            "band_rows": self.rows.tolist(),
            "queued": self.decisions.queued(),
            "nudges": self.decisions.nudges(),
            "decided": self.decisions.band_records(),
            "optimizer": run.optimizer.state_dict(),
        }

    def _make_band(self, rows: Tensor, num_pivots: int) -> ElasticBand:
        """A band of the pairs ``rows`` with ``num_pivots`` pivots on their lines."""
        options = self.options.band(num_pivots=num_pivots)
        return ElasticBand(self.starts[rows], self.ends[rows], options, labels=self.targets[rows])

    def _use(self, band: ElasticBand, rows: Tensor) -> BandRun:
        """Make ``band`` (of the pairs ``rows``) the one optimised, with a new optimiser."""
        self.run, self.rows = BandRun(band, self.energy, self.stop), rows
        if self.on_band is not None:
            self.on_band(self.run.optimizer)
        return self.run

    def _start_band(self) -> None:
        """Evaluate the fixed ends of the new band and decide the pairs it finished."""
        run = self._run()
        run.start()
        self.decisions.decide_band(run.band, self.rows)

    def _next_band(self) -> None:
        """Replace the band by the next round's (see :class:`Decisions`), and again while the
        new one is done at once; with no pair waiting for a band, an empty band is left."""
        while True:
            next_round = self.decisions.next_round()
            if next_round is None:
                rows = self.rows[:0]
                self._use(self._make_band(rows, self.options.num_pivots), rows)
                return
            rows, initial, taken, anchored = next_round
            band = self._make_band(rows, initial.shape[1] - 2)
            band.start_from_(initial, taken, anchored)
            self._use(band, rows)
            self._start_band()
            if not band.done:
                return

    def _continue(self, checkpoint: dict[str, Any]) -> None:
        """Go on from a band checkpoint: its band and optimiser (when it holds a band), then
        its queued pairs; the other pairs whose line fails start from their line.

        The pairs a band decided in earlier rounds get their saved records. A file written
        before bands ran in rounds holds one band of every pair (no ``band_rows``, ``queued``
        or ``decided``)."""
        state = checkpoint.get("band")
        rows = checkpoint.get("band_rows", range(self.starts.shape[0]))
        rows = torch.as_tensor(rows, dtype=torch.long).to(self.starts.device)
        decided = checkpoint.get("decided", {})
        self.decisions.restore({int(i): PairRecord(**r) for i, r in decided.items()})
        self.restored = len(decided)
        self.decisions.requeue(checkpoint.get("queued", {}))
        self.decisions.restore_nudges(checkpoint.get("nudges", {}))
        if state is None or state["pivots"].shape[0] == 0:
            self.decisions.queue_lines()
            self._next_band()
            return
        self.decisions.queue_lines(skip=set(rows.tolist()))
        band = self._make_band(rows, state["pivots"].shape[1])
        band.load_state_dict(state)
        self._use(band, rows).optimizer.load_state_dict(checkpoint["optimizer"])
        self._start_band()
        if band.done:
            self._next_band()


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

    The straight line is checked first; pairs whose line leaves the class get a NEB band,
    which stops as soon as its own check passes (unless ``options.converge``). All pairs and
    all pivots go through the network together. With the exact check (``options.certify``), a
    band (or a line) found off the target between its points gets a pivot inserted in each
    such stretch and goes on in a new round, up to ``options.max_pivots`` pivots (AutoNEB:
    Kolsbjerg, Groves and Hammer, J. Chem. Phys. 145, 094107 (2016)); pairs of a round that
    have the same number of pivots run as one band. A plain loop over :class:`PathSearch`.

    Args:
        tail: Maps points ``(B, *point_shape)`` to logits ``(B, classes)``.
        starts: ``(pairs, *point_shape)``.
        ends: ``(pairs, *point_shape)``.
        targets: ``(pairs,)`` target class of each pair.
        options: Path options (defaults if None).
        on_record: Called as ``on_record(pair_index, record)`` as soon as a pair is decided
            (linear pairs right after the line check, the others when they leave the band),
            so callers can save each result at once.
        on_progress: Called as ``on_progress(steps_done, pairs_decided)`` after the line
            check and after every step.

    Returns:
        One :class:`PairRecord` per pair, in order.

    Raises:
        InputError: ends that are not floating point or outside ``options.bounds``.
        NotPiecewiseLinearError, NotBoundedError: ``options.certify`` ``"exact"`` (``"bounds"``)
            with a tail that is not piecewise linear (holds an operation bounds do not cover),
            before any work.
        BatchDependenceError: a tail whose logits of a point depend on the rest of its batch
            (batch statistics in eval mode; before any work).
    """
    options = options or PathOptions()
    starts, ends, targets = prepare_pairs(starts, ends, targets, options.bounds)
    # Our own frozen, eval-mode copy: the caller's module is never changed, and points of the
    # working precision are cast to the network's dtype inside.
    if not isinstance(tail, FrozenTail):
        tail = FrozenTail(copy.deepcopy(tail)).to(starts.device)
        # A tail of the user's own (split's tails were checked where they were probed).
        check_batch_independent(nn.Identity(), tail, torch.cat([starts[:1], ends[:1]]))
    search = PathSearch(tail, starts, ends, targets, options, on_record=on_record)
    if on_progress is not None:
        on_progress(0, len(search.decisions.records))
    search.start()
    while not search.done:
        evaluation = search.step()
        if on_progress is not None:
            on_progress(evaluation.steps, len(search.decisions.records))
    return search.records()
