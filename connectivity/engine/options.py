"""The options of a path search, declared once: :class:`BandOptions` (the band and its
optimiser), which :class:`~connectivity.engine.band.ElasticBand` and
:func:`~connectivity.engine.search.find_paths` take, and :class:`PathOptions`, which extends them
with the checks and the rounds of pivot insertion (the ``path:`` block of a YAML config, and
``path`` in a run folder's ``run.json``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from connectivity.errors import OptionsError

METHODS = ("neb", "string")
OPTIMIZERS = ("adam", "sgd", "fire", "lbfgs")
CERTIFY = ("exact", "bounds", "sampled", "auto")
# Midpoint splits per segment before the bounds' branch and bound gives up on it: 2^10
# sub-intervals resolve a kink or a sliver to about 1/1000 of a segment.
DEFAULT_MAX_SPLITS = 1024
# The band's cap on a pivot's move per step (a fraction of its pair's pivot spacing on the
# straight line) when none is given: fire and lbfgs take steps of their own length, which the
# cap keeps from jumping across the band, as ASE's ``maxstep`` does; adam and sgd keep the
# uncapped steps they always took.
DEFAULT_MAX_STEP = {"adam": math.inf, "sgd": math.inf, "fire": 0.5, "lbfgs": 0.5}
# Back-offs (halvings of a pair's step) before a blow-up or a non-finite value is divergence.
DEFAULT_BACKOFFS = 4
# How far above its straight line's highest energy a band may rise (in units of the line's
# energy range) before it counts as blown up.
DEFAULT_MAX_ENERGY_RISE = 10.0
# Length of the nudge that breaks a band's symmetry (see ``ElasticBand``), as a fraction of the
# distance between its ends: far below any feature the band resolves with its pivot spacing.
DEFAULT_NUDGE = 1e-3

# Names ``find_paths`` and ``ElasticBand`` took before the options were declared once.
_FORMER_NAMES = {"max_backoffs": "backoffs", "max_steps": "steps"}


@dataclass(frozen=True)
class BandOptions:
    """Options of a band: its pivots, forces, optimiser, stop rules and blow-up handling.

    Args:
        num_pivots: Movable points of the band between the fixed ends.
        steps: Most optimisation steps per pair.
        optimizer: ``adam``, ``sgd``, ``fire`` or ``lbfgs``
            (:func:`~connectivity.engine.optimizers.make_optimizer`). ``fire`` (Bitzek et al.,
            PRL 97, 170201, 2006) and ``lbfgs`` (limited-memory BFGS on the NEB force) are made
            for elastic bands and converge on stiff surfaces; ``adam`` rescales each
            coordinate, so its step is not kept perpendicular to the band (the NEB projection
            is bent), and it stalls or blows up on stiff surfaces; ``sgd`` keeps the direction
            but needs ``lr`` below 2 / (largest curvature).
        lr: Learning rate of the pivots (``fire``: initial time step, at most 10 times that
            later; ``lbfgs``: the first step is ``lr`` times the force).
        spring_constant: Spring ``k`` along the band (``neb``).
        method: ``neb`` (improved tangent and springs) or ``string`` (equal arc length).
        climbing: Let the highest pivot climb to the saddle (``neb``).
        climb_after: Steps a pair takes before its highest pivot climbs, so that the band
            first settles near the minimum energy path; a climbing pair cannot converge earlier.
        bounds: Box the pivots stay in, e.g. ``(0, 1)`` in pixel space; None for no box.
        tol: Convergence threshold on the largest perpendicular force.
        max_step: Longest move of any pivot in one step, in units of the pair's pivot spacing on
            the straight line (``|end - start| / (num_pivots + 1)``); longer steps are shortened
            as a whole, as ASE's ``maxstep``. None: 0.5 for ``fire`` and ``lbfgs``, no cap
            (``.inf``) for ``adam`` and ``sgd`` (:data:`DEFAULT_MAX_STEP`).
        max_energy_rise: Blow-up threshold: a band whose highest pivot energy exceeds its
            straight line's highest energy by more than ``max_energy_rise`` times the line's
            energy scale (the larger of its energy range, highest minus lowest energy on the
            line with the ends, and its largest absolute energy) has blown up, as has one with
            a NaN/inf energy, gradient or position. ``.inf`` keeps only the NaN/inf test.
        backoffs: Times a pair that blows up goes back to its previous path and halves its
            step (learning rate, or FIRE time step) before the next blow-up marks it
            ``diverged``.
        nudge: A band that converges before it has moved while its path is not good enough
            (every force along it, e.g. a line through the centre of a round hole in the class)
            has every pivot displaced by this fraction of its ends' distance, orthogonally to
            its line, in a direction seeded by its ends, and goes on; 0 turns this off (see
            :class:`~connectivity.engine.band.ElasticBand`).
        nudge_seed: Seed of the nudges' directions (with each pair's ends).

    Raises:
        OptionsError: when built with a value outside the above (options are frozen: use
            ``dataclasses.replace`` or :meth:`with_values` for a variant, which checks again).
    """

    num_pivots: int = 8
    steps: int = 200
    optimizer: str = "adam"
    lr: float = 1e-2
    spring_constant: float = 1.0
    method: str = "neb"
    climbing: bool = False
    climb_after: int = 10
    bounds: tuple[float, float] | None = None
    tol: float = 1e-3
    max_step: float | None = None
    max_energy_rise: float = DEFAULT_MAX_ENERGY_RISE
    backoffs: int = DEFAULT_BACKOFFS
    nudge: float = DEFAULT_NUDGE
    nudge_seed: int = 0

    # What the options are called in messages (a surface search's: "surface").
    _KIND: ClassVar[str] = "path"

    def __post_init__(self) -> None:
        for name, minimum in (
            ("num_pivots", 1),
            ("steps", 0),
            ("climb_after", 0),
            ("backoffs", 0),
        ):
            self._set(name, _checked_int(getattr(self, name), name, minimum))
        if isinstance(self.nudge_seed, bool) or not isinstance(self.nudge_seed, numbers.Integral):
            raise OptionsError(f"nudge_seed must be an integer, got {self.nudge_seed!r}")
        self._set("nudge_seed", int(self.nudge_seed))
        for name, positive in (("lr", True), ("spring_constant", False), ("tol", False)):
            self._set(name, _checked_number(getattr(self, name), name, positive))
        self._set("nudge", _checked_number(self.nudge, "nudge", False))
        for name in ("max_step", "max_energy_rise"):
            value = getattr(self, name)
            if value is None and name == "max_step":
                continue  # the optimizer's default
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (number and value > 0):  # NaN fails here too
                also = " or null (the optimizer's default)" if name == "max_step" else ""
                raise OptionsError(f"{name} must be a number > 0 (.inf: none){also}, got {value!r}")
            self._set(name, float(value))
        if self.method not in METHODS:
            raise OptionsError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.optimizer not in OPTIMIZERS:
            raise OptionsError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not isinstance(self.climbing, bool):
            raise OptionsError(f"climbing must be true or false, got {self.climbing!r}")
        if self.climbing and self.method != "neb":
            # Respacing after each step would drag the climbing pivot off the saddle.
            raise OptionsError(
                f"climbing works with method='neb' only, got method={self.method!r}; "
                "drop climbing or use method='neb'"
            )
        if self.bounds is not None:
            self._set("bounds", _checked_bounds(self.bounds))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: the checked value replaces the given one

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """Options from keyword values; an unknown name is an :class:`OptionsError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionsError(
                f"unknown {cls._KIND} option {unknown[0]!r}; the options are "
                f"{', '.join(sorted(known))}"
            )
        return cls(**values)

    def with_values(self, **values: Any) -> Any:
        """A copy with ``values`` replaced (checked again).

        The names ``max_backoffs`` and ``max_steps``, which ``find_paths`` and ``ElasticBand``
        took before, are read as ``backoffs`` and ``steps``.

        Raises:
            OptionsError: an unknown name, a former name given with its new one, or a value
                outside what the options accept.
        """
        for old, new in _FORMER_NAMES.items():
            if old in values:
                if new in values:
                    raise OptionsError(f"give {new} or its former name {old}, not both")
                values[new] = values.pop(old)
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionsError(
                f"unknown option {unknown[0]!r}; the options are {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **values) if values else self

    @property
    def resolved_max_step(self) -> float:
        """``max_step``, or the optimizer's default when it is None (``inf``: no cap)."""
        return DEFAULT_MAX_STEP[self.optimizer] if self.max_step is None else self.max_step

    def band(self, **values: Any) -> BandOptions:
        """The band's own options (these, without what a subclass adds), with ``values``
        replaced, e.g. ``num_pivots`` of a band that grew pivots."""
        own = {f.name: getattr(self, f.name) for f in fields(BandOptions)}
        return BandOptions(**{**own, **values})


@dataclass(frozen=True)
class PathOptions(BandOptions):
    """Options of a path search: the band's (:class:`BandOptions`) and the checks'.

    Args:
        line_points: At least this many evenly spaced points are checked on a path (pivots
            included, and points on every segment between neighbouring pivots).
        converge: Keep optimising a pair after its path is certified, to the minimum energy
            path (by default a pair stops as soon as a path is found: the question is existence).
        chunk_size: Most points per network call in the dense check (bounds memory).
        certify: Which check a verdict rests on. ``"exact"``: every point of the line and the
            path (:mod:`connectivity.engine.exact`, ExactLine); refused for a tail that is not
            piecewise linear. ``"bounds"``: every point too, by bound propagation with branch
            and bound on each segment (:mod:`connectivity.engine.bounds`); refused for a tail
            holding an operation it does not cover. ``"sampled"``: ``line_points`` evenly
            spaced points only. ``"auto"``: ExactLine where the tail is piecewise linear (it is
            the cheaper proof there), bounds where they cover a tail that is not, sampled where
            neither does (the record says which, and why). A path a proof leaves undecided (a
            margin within rounding of zero, a spent budget) is decided at the sampled points,
            and its record says so.
        max_splits: Most midpoint splits of one segment in the bounds' branch and bound; a
            segment neither proved nor refuted by then is left undecided.
        max_pivots: Most pivots a band may grow to when the exact check finds stretches of it
            off the target between pivots: a pivot is inserted in each (as AutoNEB does) and
            the band goes on. None: ``4 * num_pivots``. Both drivers insert pivots
            (:func:`~connectivity.engine.search.connect_points` and
            :class:`~connectivity.lightning.path_module.PathModule`).

    The band's options are those of :class:`BandOptions` (``num_pivots``, ``steps``,
    ``optimizer``, ``lr``, ``spring_constant``, ``method``, ``climbing``, ``climb_after``,
    ``bounds``, ``tol``, ``max_step``, ``max_energy_rise``, ``backoffs``, ``nudge``,
    ``nudge_seed``); a record's ``nudge`` says the length of the nudge its band got.

    Raises:
        OptionsError: when built with a value outside the above.
    """

    line_points: int = 64
    converge: bool = False
    chunk_size: int = 512
    certify: str = "sampled"
    max_splits: int = DEFAULT_MAX_SPLITS
    max_pivots: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, minimum in (("line_points", 2), ("chunk_size", 1), ("max_splits", 0)):
            self._set(name, _checked_int(getattr(self, name), name, minimum))
        if self.certify not in CERTIFY:
            raise OptionsError(f"certify must be one of {CERTIFY}, got {self.certify!r}")
        if self.max_pivots is not None:
            self._set("max_pivots", _checked_int(self.max_pivots, "max_pivots", self.num_pivots))
        if not isinstance(self.converge, bool):
            raise OptionsError(f"converge must be true or false, got {self.converge!r}")

    @property
    def most_pivots(self) -> int:
        """The most pivots a band may grow to (``max_pivots``, default ``4 * num_pivots``)."""
        return self.max_pivots if self.max_pivots is not None else 4 * self.num_pivots

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


def _checked_bounds(bounds: Any) -> tuple[float, float]:
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise OptionsError(f"bounds must be (low, high) or None, got {bounds!r}")
    low, high = (_checked_number(b, "bounds", None) for b in bounds)
    if not low < high:
        raise OptionsError(f"bounds must be finite (low, high) with low < high, got {bounds!r}")
    return low, high


# Interior rings of the fan mesh a membrane starts from: 3 rings make the fan's triangles about
# a third of the loop's radius, fine enough for the membrane to bend over a cap.
DEFAULT_RINGS = 3
# Vertices one loop's mesh may grow to by refinement.
DEFAULT_MAX_VERTICES = 256
# Budget of linear regions of the exact plane check per triangle.
DEFAULT_MAX_REGIONS = 4096


@dataclass(frozen=True)
class SurfaceOptions(PathOptions):
    """Options of a surface search (issue 22): the membrane's and the checks of its triangles.

    The membrane (:class:`~connectivity.engine.membrane.Membrane`) takes the band's options
    where they have a meaning for it: ``steps`` (most membrane steps per loop, over all its
    rounds of refinement), ``optimizer`` and ``lr``, ``spring_constant`` (weight of the
    in-surface umbrella Laplacian, the membrane's springs), ``tol`` (a loop converges when the
    largest normal force of its free vertices is at most ``tol``), ``max_step`` (longest move of a
    vertex in one step, in units of the loop's mean edge length when its mesh was built; None:
    the optimizer's default), ``bounds`` (box the vertices are clamped to), ``nudge`` and
    ``nudge_seed`` (the symmetry nudge of the free vertices when a membrane starts, in units of
    the loop's diameter). The checks take ``certify``, ``max_splits`` (bounds over a triangle)
    and ``chunk_size`` (most points per network call). ``num_pivots``, ``method``,
    ``climbing``, ``climb_after``, ``max_energy_rise``, ``backoffs``, ``line_points``,
    ``converge`` and ``max_pivots`` are the paths' of the loop's sides.

    Args:
        rings: Interior rings of the fan mesh a membrane starts from (ring ``j`` of ``rings``
            is the loop scaled by ``j / rings`` towards its corners' centroid).
        max_vertices: Most vertices one loop's mesh may grow to by refinement; a loop whose
            failing triangles cannot be refined within it ends ``none`` (status ``budget``).
        samples_per_edge: Divisions per edge of the barycentric grid of the sampled check of a
            triangle (``(n + 1)(n + 2) / 2`` points per triangle).
        check_every: Membrane steps between two checks of a loop's triangles while all its
            vertices are on the target (a loop is checked the first time they all are, and
            when it ends with them all on the target).
        max_regions: Most linear regions the exact plane check enumerates in one triangle
            before it leaves the triangle undecided (``"budget"``).

    Raises:
        OptionsError: when built with a value outside the above.
    """

    rings: int = DEFAULT_RINGS
    max_vertices: int = DEFAULT_MAX_VERTICES
    samples_per_edge: int = 4
    check_every: int = 10
    max_regions: int = DEFAULT_MAX_REGIONS

    _KIND: ClassVar[str] = "surface"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, minimum in (
            ("rings", 1),
            ("max_vertices", 4),
            ("samples_per_edge", 1),
            ("check_every", 1),
            ("max_regions", 1),
        ):
            self._set(name, _checked_int(getattr(self, name), name, minimum))
