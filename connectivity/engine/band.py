"""Nudged Elastic Band (NEB) and string method for minimum energy paths.

Pure torch, no Lightning. A band joins a fixed start and end point through ``num_pivots`` movable
pivots; many bands ("pairs") are optimised together and all their active pivots go through one
batched energy call per step.

Layers, from low to high:

* pure functions on explicit tensors (``straight_line``, ``tangents``, ``neb_gradient``,
  ``perpendicular_force_norm``, ``respace_equal_arc``) that callers can use with gradients they
  computed themselves;
* ``ElasticBand``, the per-step state machine (pivots, flags, bookkeeping) that any driver,
  e.g. a Lightning module, can step with its own optimiser and energy evaluation;
* the drivers live in :mod:`connectivity.engine.search`: ``find_paths``, a short loop over
  ``ElasticBand`` with a torch.optim optimiser (``make_optimizer`` of
  :mod:`connectivity.engine.optimizers`: Adam, SGD, FIRE or L-BFGS), and the path search.

Options (``num_pivots``, ``steps``, ``max_step``...) are those of
:class:`~connectivity.engine.options.BandOptions`.

Shapes: a path is ``(pairs, num_pivots + 2, *point_shape)`` with the fixed ends at index 0 and -1;
geometry (lengths, tangents, projections) is done on flattened points of size ``D``.

References:
    G. Henkelman, H. Jonsson, J. Chem. Phys. 113, 9978 (2000): improved tangent.
    G. Henkelman, B. P. Uberuaga, H. Jonsson, J. Chem. Phys. 113, 9901 (2000): climbing image.
    W. E, W. Ren, E. Vanden-Eijnden, J. Chem. Phys. 126, 164103 (2007): simplified string method.
    D. Sheppard, R. Terrell, G. Henkelman, J. Chem. Phys. 128, 134106 (2008): optimisers for NEB.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from connectivity.engine.options import METHODS, BandOptions

__all__ = [
    "ElasticBand",
    "PathResult",
    "neb_gradient",
    "perpendicular_force_norm",
    "respace_equal_arc",
    "straight_line",
    "symmetry_nudge",
    "tangents",
]

# Plain energies take points; conditional ones (``labels`` given) take points and their labels.
EnergyFn = Callable[..., Tensor]
StopFn = Callable[..., Tensor]


@dataclass
class PathResult:
    """Outcome of ``find_paths`` / ``ElasticBand.result``.

    Attributes:
        path: ``(pairs, num_pivots + 2, *point_shape)``, fixed ends included.
        energy: ``(pairs, num_pivots + 2)``, energies of exactly the returned path.
        steps: ``(pairs,)`` long, optimiser updates that produced the returned path.
        max_force: ``(pairs,)`` max over pivots of the force norm used for convergence
            (perpendicular force; full climbing force for the climbing pivot), at the returned path.
        converged: ``(pairs,)`` bool, ``max_force <= tol``.
        stopped: ``(pairs,)`` bool, the ``stop`` callback said the pair was done.
        diverged: ``(pairs,)`` bool, the band blew up (a non-finite energy, gradient or
            position, or an energy far above its straight line's, see ``ElasticBand``) more
            often than it may back off; the pair was frozen at its last path whose energy and
            gradient were finite and not blown up.
        backoffs: ``(pairs,)`` long, times the pair's step was halved after a blow-up.
        nudged: ``(pairs,)`` length of the nudge that broke the pair's symmetry (0: none;
            see ``ElasticBand``).
        anchored: ``(pairs, num_pivots)`` bool, the pivots the string's respacing keeps.

    A pair that is none of converged, stopped and diverged ran out of steps.
    """

    path: Tensor
    energy: Tensor
    steps: Tensor
    max_force: Tensor
    converged: Tensor
    stopped: Tensor
    diverged: Tensor
    backoffs: Tensor
    nudged: Tensor | None = None
    anchored: Tensor | None = None


def straight_line(starts: Tensor, ends: Tensor, num_pivots: int) -> Tensor:
    """Evenly spaced path on the segment between each start and end.

    Args:
        starts: ``(pairs, *point_shape)``.
        ends: ``(pairs, *point_shape)``.
        num_pivots: number of interior points.

    Returns:
        ``(pairs, num_pivots + 2, *point_shape)``; index 0 is ``starts``, -1 is ``ends`` exactly.
    """
    if starts.shape != ends.shape:
        raise ValueError(f"starts {tuple(starts.shape)} and ends {tuple(ends.shape)} differ")
    weight = torch.linspace(0.0, 1.0, num_pivots + 2, dtype=starts.dtype, device=starts.device)
    weight = weight.view(1, -1, *([1] * (starts.dim() - 1)))
    # lerp is exact at both weight 0 and weight 1, so the ends are bit-identical to the inputs.
    return torch.lerp(starts.unsqueeze(1), ends.unsqueeze(1), weight)


def _flat(path: Tensor) -> Tensor:
    return path.reshape(path.shape[0], path.shape[1], -1)


def tangents(path: Tensor, energy: Tensor) -> Tensor:
    """Unit tangents at the pivots, improved tangent of Henkelman & Jonsson (2000).

    On a monotone stretch the tangent points to the higher-energy neighbour (upwinding); at a
    local extremum the two neighbour directions are mixed with weights given by the energy
    differences, so the tangent turns smoothly. Where that mix vanishes (flat energy) the
    central difference ``R[i+1] - R[i-1]`` is used instead.

    Args:
        path: ``(pairs, num_pivots + 2, *point_shape)``.
        energy: ``(pairs, num_pivots + 2)``.

    Returns:
        ``(pairs, num_pivots, D)`` unit tangents on flattened points (zero only where the
        neighbours coincide with the pivot).
    """
    return _tangent_parts(path, energy)[0]


def _tangent_parts(path: Tensor, energy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unit tangents and the forward and backward differences they are built from.

    The case split (rising, falling, extremum) is made on ``(pairs, pivots)`` weights, so only a
    few full-size operations touch the points: this is the hot loop of every step.
    """
    points = _flat(path)
    forward = points[:, 2:] - points[:, 1:-1]
    backward = points[:, 1:-1] - points[:, :-2]
    v_prev, v_here, v_next = energy[:, :-2], energy[:, 1:-1], energy[:, 2:]
    rising = (v_next > v_here) & (v_here > v_prev)
    falling = (v_next < v_here) & (v_here < v_prev)
    d_next = (v_next - v_here).abs()
    d_prev = (v_prev - v_here).abs()
    d_max = torch.maximum(d_next, d_prev)
    d_min = torch.minimum(d_next, d_prev)
    # At an extremum the higher neighbour gets the larger weight, as in the paper.
    next_higher = v_next > v_prev
    w_forward = torch.where(next_higher, d_max, d_min)
    w_backward = torch.where(next_higher, d_min, d_max)
    one, zero = torch.ones_like(w_forward), torch.zeros_like(w_forward)
    w_forward = torch.where(rising, one, torch.where(falling, zero, w_forward)).unsqueeze(-1)
    w_backward = torch.where(rising, zero, torch.where(falling, one, w_backward)).unsqueeze(-1)
    tau = w_forward * forward + w_backward * backward
    # tau is exactly zero where the energy is flat; there it becomes the central difference.
    flat = (tau.norm(dim=-1, keepdim=True) == 0).to(tau.dtype)
    tau = torch.addcmul(tau, flat, forward + backward)
    tiny = torch.finfo(tau.dtype).tiny
    return tau / tau.norm(dim=-1, keepdim=True).clamp_min(tiny), forward, backward


def _rows_finite(x: Tensor) -> Tensor:
    """``(n,)``: every entry of row ``i`` of ``x`` is finite (amax passes NaN and inf on)."""
    return torch.isfinite(x.reshape(x.shape[0], -1).abs().amax(dim=1))


def _climbing_mask(climbing_index: Tensor, pairs: int, pivots: int, like: Tensor) -> Tensor:
    """``(pairs, pivots, 1)`` bool, True at each pair's climbing pivot (index < 0: none)."""
    index = climbing_index.to(device=like.device, dtype=torch.long).reshape(pairs, 1)
    columns = torch.arange(pivots, device=like.device).unsqueeze(0)
    return ((columns == index) & (index >= 0)).unsqueeze(-1)


def neb_gradient(
    path: Tensor,
    energy: Tensor,
    grad: Tensor,
    *,
    spring_constant: float = 1.0,
    method: str = "neb",
    climbing_index: Tensor | None = None,
) -> Tensor:
    """Effective gradient (minus the NEB force) to hand to a gradient-descent optimiser.

    ``neb``: ``g_perp - k (|R[i+1] - R[i]| - |R[i] - R[i-1]|) tau`` with
    ``g_perp = g - (g . tau) tau``; the true force acts only across the band, the springs only
    along it. ``string``: ``g_perp`` alone (spacing is kept by ``respace_equal_arc`` instead).
    Climbing pivot: ``g - 2 (g . tau) tau`` (no spring), i.e. it descends across the band and
    ascends along it, converging on the saddle.

    Args:
        path: ``(pairs, num_pivots + 2, *point_shape)``.
        energy: ``(pairs, num_pivots + 2)``.
        grad: energy gradient at the pivots, ``(pairs, num_pivots, *point_shape)`` or
            ``(pairs, num_pivots, D)``.
        spring_constant: ``k``; only used by ``neb``.
        method: ``"neb"`` or ``"string"``.
        climbing_index: optional ``(pairs,)`` pivot index (0-based among pivots) of each
            pair's climbing pivot; negative entries mean no climbing pivot for that pair.

    Returns:
        Tensor shaped like ``grad``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _, effective = _forces(path, energy, grad, spring_constant, method, climbing_index)
    return effective.reshape(grad.shape)


def _forces(
    path: Tensor,
    energy: Tensor,
    grad: Tensor,
    spring_constant: float,
    method: str,
    climbing_index: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``(perpendicular_force_norm, neb_gradient)`` from one tangent computation."""
    tau, forward, backward = _tangent_parts(path, energy)
    g = grad.reshape(tau.shape)
    along = (g * tau).sum(dim=-1, keepdim=True)
    perpendicular = g - along * tau
    effective = perpendicular
    if method == "neb":
        d_next = forward.norm(dim=-1, keepdim=True)
        d_prev = backward.norm(dim=-1, keepdim=True)
        effective = perpendicular - spring_constant * (d_next - d_prev) * tau
    force = perpendicular
    if climbing_index is not None:
        climb = _climbing_mask(climbing_index, tau.shape[0], tau.shape[1], tau)
        climbed = g - 2.0 * along * tau
        force = torch.where(climb, climbed, perpendicular)
        effective = torch.where(climb, climbed, effective)
    return force.norm(dim=-1), effective


def perpendicular_force_norm(
    path: Tensor, energy: Tensor, grad: Tensor, *, climbing_index: Tensor | None = None
) -> Tensor:
    """Norm of the true (spring-free) NEB force at each pivot; the convergence measure.

    For ordinary pivots this is ``|g - (g . tau) tau|``: the path is a minimum energy path when
    it vanishes. For a climbing pivot it is the full climbing force ``|g - 2 (g . tau) tau|``
    (= ``|g|``), which vanishes only at a stationary point.

    Args:
        path: ``(pairs, num_pivots + 2, *point_shape)``.
        energy: ``(pairs, num_pivots + 2)``.
        grad: ``(pairs, num_pivots, ...)`` energy gradient at the pivots.
        climbing_index: as in ``neb_gradient``.

    Returns:
        ``(pairs, num_pivots)``.
    """
    return _forces(path, energy, grad, 0.0, "string", climbing_index)[0]


def respace_equal_arc(path: Tensor, keep: Tensor | None = None) -> Tensor:
    """Redistribute the points of each path to equal arc length along its polyline.

    The ends stay fixed; interior points are placed by linear interpolation of the
    piecewise-linear path at arc lengths ``j / (N - 1)`` of the total. Because new points lie on
    the old segments, a path inside a box stays inside it.

    With ``keep``, the kept points stay where they are too, and the points between two
    neighbouring kept points (or ends) are spread at equal arc length over the stretch between
    them: point ``j`` between kept points ``a < j < b`` goes to arc length
    ``s_a + (j - a) / (b - a) * (s_b - s_a)``. A pivot inserted where the band must resolve a
    narrow feature (``insert_pivots`` of :mod:`connectivity.engine.decisions`) is kept this way,
    so the respacing does not carry it off the feature.

    Args:
        path: ``(pairs, N, *point_shape)``, ``N >= 2``.
        keep: optional ``(pairs, N)`` bool, the points to leave in place (the ends always are).

    Returns:
        Tensor shaped like ``path``.
    """
    points = _flat(path)
    pairs, count, dim = points.shape
    segment = (points[:, 1:] - points[:, :-1]).norm(dim=-1)
    arc = torch.cat([segment.new_zeros(pairs, 1), segment.cumsum(dim=-1)], dim=-1)
    fraction = torch.linspace(0.0, 1.0, count, dtype=points.dtype, device=points.device)
    target = fraction.unsqueeze(0) * arc[:, -1:]
    kept = None
    if keep is not None:
        kept = keep.to(device=points.device, dtype=torch.bool).reshape(pairs, count).clone()
        kept[:, 0] = True
        kept[:, -1] = True
        rows = kept[:, 1:-1].any(dim=1)
        if bool(rows.any()):
            column = torch.arange(count, device=points.device).expand(pairs, count)
            # the last kept point at or before each point, and the first at or after it
            before = torch.where(kept, column, torch.zeros_like(column)).cummax(dim=1).values
            last = torch.full_like(column, count - 1)
            after = torch.where(kept, column, last).flip(1).cummin(dim=1).values.flip(1)
            share = (column - before).to(points.dtype) / (after - before).clamp_min(1).to(
                points.dtype
            )
            low, high = arc.gather(1, before), arc.gather(1, after)
            # Rows without kept pivots keep the plain targets bit for bit.
            target = torch.where(rows.unsqueeze(1), low + share * (high - low), target)
        else:
            kept = None
    # right=True puts targets that hit a vertex on the segment after it, which also skips
    # zero-length segments (repeated arc values) instead of dividing by their zero length.
    index = torch.searchsorted(arc.contiguous(), target.contiguous(), right=True) - 1
    index = index.clamp(0, count - 2)
    start_arc = arc.gather(1, index)
    length = segment.gather(1, index)
    tiny = torch.finfo(points.dtype).tiny
    t = ((target - start_arc) / length.clamp_min(tiny)).clamp(0.0, 1.0).unsqueeze(-1)
    left = points.gather(1, index.unsqueeze(-1).expand(pairs, count, dim))
    right = points.gather(1, (index + 1).unsqueeze(-1).expand(pairs, count, dim))
    out = left + t * (right - left)
    out[:, 0] = points[:, 0]
    out[:, -1] = points[:, -1]
    if kept is not None:
        out = torch.where(kept.unsqueeze(-1), points, out)
    return out.reshape(path.shape)


def symmetry_nudge(start: Tensor, end: Tensor, length: float, seed: int = 0) -> Tensor:
    """The offset that breaks a band's symmetry (see ``ElasticBand``): a random direction
    orthogonal to ``end - start``, of length ``length * |end - start|``.

    The direction is drawn from a generator seeded with ``seed`` and the bytes of the ends (as
    float64), so the same ends always get the same offset, whatever the batch, device or rank.

    Args:
        start: ``point_shape`` tensor.
        end: same shape as ``start``.
        length: in units of ``|end - start|``.
        seed: any integer.

    Returns:
        ``point_shape`` tensor in ``start``'s dtype and device; zero where the ends coincide or
        the points have one coordinate (no direction is orthogonal to the line).
    """
    a = start.detach().to("cpu", torch.float64).reshape(-1)
    b = end.detach().to("cpu", torch.float64).reshape(-1)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(16, "little", signed=True))
    digest.update(a.numpy().tobytes())
    digest.update(b.numpy().tobytes())
    generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
    direction = torch.randn(a.numel(), generator=generator, dtype=torch.float64)
    chord = b - a
    span = float(chord.norm())
    if span > 0:
        direction -= (direction @ chord) / (chord @ chord) * chord
    size = float(direction.norm())
    if span == 0 or size <= 1e-12 * math.sqrt(a.numel()):
        return torch.zeros_like(start)
    offset = direction * (length * span / size)
    return offset.reshape(start.shape).to(dtype=start.dtype, device=start.device)


class ElasticBand(torch.nn.Module):
    """Per-step state of a batch of bands; drive it with any optimiser over ``self.pivots``.

    An ``nn.Module``: the pivots are its one parameter and the per-pair state (ends, energies,
    forces, step counts, flags, labels) its buffers, so ``.to(device)``, ``state_dict()`` and a
    Lightning checkpoint move and save the whole band. Its floating state keeps a working
    precision of float32 (float64 when converted to it): a conversion to float16 or bfloat16
    (a precision plugin's ``bf16-true``) leaves the band as it was.

    One step of a driver (see :func:`connectivity.engine.search.find_paths`)::

        x = band.active_points().requires_grad_(True)
        e = energy(x)                               # (len(x),)
        (g,) = torch.autograd.grad(e.sum(), x)
        if band.project_(g, e, stop=stop).any():   # bookkeeping + sets band.pivots.grad
            optimizer.step()
            band.after_step_()                      # freeze, bounds, respacing, step counts

    Before the first step, the end energies must be given with
    ``band.set_end_energies_(energy(band.end_points()))``. The loop ends when ``band.done``.

    Every path a pair holds has been evaluated before that pair leaves the batch, so the
    recorded energies and forces always belong to the current path (no extra final call).

    Blow-ups and back-off: a pair blows up when an evaluation gives a non-finite energy or
    gradient, when a step gives a non-finite position, or when its highest pivot energy exceeds
    ``energy_limit``: its straight line's highest energy plus ``max_energy_rise`` times the
    line's energy scale (the larger of its energy range, highest minus lowest energy on the line
    with the ends, and its largest absolute energy; 1 where all are 0). A band started from
    other pivots (``find_paths(initial=...)``, a resumed checkpoint without a limit) measures
    from that starting path instead. The pair then returns
    to its path before the step, its steps are halved from then on (``step_scale``), and it
    sits out one optimiser step with a zero gradient (so ``fire`` and ``lbfgs`` reset its
    state). After ``backoffs`` back-offs the next blow-up marks it diverged. A blow-up of
    the straight line itself (nothing earlier to return to) is divergence at once.

    Symmetry nudge: a band can sit where every force lies along it, e.g. a straight line through
    the centre of a round hole in the class (the true force is along the line, the springs
    balance), and would count as converged before it has moved, though a path round the hole
    exists. When a ``stop`` callback is given and says a pair is not done, a pair that converges
    before it has moved (at step 0; with ``climbing``, up to ``climb_after``, where the
    climbing pivot's force first counts) is not finished: every pivot of it is displaced by one
    vector of length ``nudge`` times the distance of its ends, orthogonal to the line of its
    ends, in a direction drawn from a generator seeded with ``nudge_seed`` and the pair's ends
    (so a pair gets the same nudge whatever its batch, rank or driver), and it goes on; its
    ``nudged`` records the length. A pair is nudged at most once per band. Without ``stop`` the
    band does not know whether a path is good enough, and converged means converged.

    Attributes:
        pivots: ``torch.nn.Parameter`` ``(pairs, num_pivots, *point_shape)``; the optimiser's
            only parameter. Its ``requires_grad`` is irrelevant: ``.grad`` is set directly.
        starts, ends: ``(pairs, *point_shape)`` fixed ends.
        energy: ``(pairs, num_pivots + 2)`` energies of the last evaluated path (NaN until then).
        max_force: ``(pairs,)`` convergence measure at that path (inf until evaluated).
        steps: ``(pairs,)`` long, updates applied to the current path.
        active: ``(pairs,)`` bool, still being optimised.
        converged, stopped, diverged: ``(pairs,)`` bool flags, see ``PathResult``.
        energy_limit: ``(pairs,)`` highest pivot energy before a blow-up (inf until the
            starting path, the straight line unless a driver set other pivots, is evaluated).
        step_scale: ``(pairs,)`` factor on every step of the pair, ``0.5 ** backoffs``.
        backoffs: ``(pairs,)`` long, back-offs so far.
        held: ``(pairs,)`` bool, the pair sits out the next optimiser step.
        nudged: ``(pairs,)`` length of the symmetry nudge each pair got (0: none).
        anchored: ``(pairs, num_pivots)`` bool, pivots the ``string`` respacing leaves in place
            (``respace_equal_arc``'s ``keep``), e.g. pivots a driver inserted; all False
            unless a driver sets them.
    """

    def __init__(
        self,
        starts: Tensor,
        ends: Tensor,
        options: BandOptions | None = None,
        *,
        labels: Tensor | None = None,
        **values: Any,
    ) -> None:
        """Start every band on the straight line between its ends.

        Args:
            starts: ``(pairs, *point_shape)`` floating tensor.
            ends: same shape as ``starts``.
            options: The band's options (:class:`~connectivity.engine.options.BandOptions`;
                defaults if None). Of them the band uses ``num_pivots``, ``spring_constant``,
                ``method``, ``climbing``, ``climb_after`` (a climbing pair cannot count as
                converged before it climbs), ``bounds`` (the pivots are clamped into the box
                after every step), ``tol`` (a pair converges when its ``max_force <= tol``),
                ``steps`` (most updates per pair), ``max_step`` (longest move of any pivot in
                one step, in units of the pair's pivot spacing on the straight line,
                ``|end - start| / (num_pivots + 1)``: a longer step of the optimiser is
                shortened as a whole, direction kept; pairs whose ends coincide do not move
                under a finite cap; None: the optimizer's default), ``max_energy_rise``,
                ``backoffs`` and ``nudge``/``nudge_seed`` (see the class docstring).
            labels: optional ``(pairs,)`` label of each pair (e.g. its target class) for a
                conditional energy ``E(z | label)``; see ``active_labels`` and ``project_``.
            **values: Options replacing those of ``options`` (``BandOptions.with_values``),
                e.g. ``num_pivots=4``.

        Raises:
            ValueError: shapes or dtypes outside the above.
            OptionsError: options outside what :class:`BandOptions` accepts (a ValueError).
        """
        if starts.shape != ends.shape or starts.dim() < 2:
            raise ValueError("starts and ends must both be (pairs, *point_shape)")
        if not starts.is_floating_point():
            raise ValueError("starts and ends must be floating point")
        if labels is not None and labels.shape != (starts.shape[0],):
            raise ValueError(f"labels must be (pairs,) = ({starts.shape[0]},)")
        super().__init__()
        options = (options or BandOptions()).with_values(**values)
        self.options = options
        self.num_pivots = options.num_pivots
        # The cap in force: the optimizer's default where the options give none.
        self.max_step = options.resolved_max_step
        self.point_shape = tuple(starts.shape[1:])
        labels = None if labels is None else labels.detach().to(starts.device).clone()
        self.register_buffer("labels", labels)
        self.register_buffer("starts", starts.detach().clone())
        self.register_buffer("ends", ends.detach().clone())
        self.pivots = torch.nn.Parameter(self.initial_pivots())
        self._register_state(starts.shape[0], starts.device, starts.dtype)
        # Pivots before the pending optimiser step: used to undo the optimiser's moves of
        # frozen pairs (Adam momentum moves them even with zero grad) and to roll back pairs
        # that diverge.
        self._before: Tensor | None = None

    def _register_state(self, pairs: int, device: torch.device, dtype: torch.dtype) -> None:
        """The per-pair buffers, at their values before the first evaluation."""

        def full(value: float, *shape: int) -> Tensor:
            return torch.full(shape, value, dtype=dtype, device=device)

        def flags(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.bool, device=device)

        self.register_buffer("energy", full(math.nan, pairs, self.num_pivots + 2))
        self.register_buffer("max_force", full(math.inf, pairs))
        self.register_buffer("steps", torch.zeros(pairs, dtype=torch.long, device=device))
        self.register_buffer("active", torch.ones(pairs, dtype=torch.bool, device=device))
        self.register_buffer("converged", flags(pairs))
        self.register_buffer("stopped", flags(pairs))
        self.register_buffer("diverged", flags(pairs))
        self.register_buffer("energy_limit", full(math.inf, pairs))
        self.register_buffer("step_scale", full(1.0, pairs))
        self.register_buffer("backoffs", torch.zeros(pairs, dtype=torch.long, device=device))
        self.register_buffer("held", flags(pairs))
        self.register_buffer("nudged", full(0.0, pairs))
        self.register_buffer("anchored", flags(pairs, self.num_pivots))

    def initial_pivots(self) -> Tensor:
        """``(pairs, num_pivots, *point_shape)``: the straight line, clamped to ``bounds``, in
        the ends' dtype (a driver that changes the dtype before the first step rebuilds the
        pivots with this, so they are the line of that precision, not a rounded one)."""
        initial = straight_line(self.starts, self.ends, self.num_pivots)[:, 1:-1]
        if self.options.bounds is not None:
            initial = initial.clamp(self.options.bounds[0], self.options.bounds[1])
        return initial.contiguous()

    @torch.no_grad()
    def start_from_(
        self, path: Tensor | None, steps: Tensor | None = None, anchored: Tensor | None = None
    ) -> None:
        """Start from other paths than the straight line, before the first evaluation.

        Args:
            path: ``(pairs, num_pivots + 2, *point_shape)`` paths whose ends are the band's
                (e.g. a band that got more pivots where it was poorly resolved), or None to
                keep the line.
            steps: optional ``(pairs,)`` long steps these paths already took; they count
                towards ``steps``.
            anchored: optional ``(pairs, num_pivots + 2)`` bool, the points the ``string``
                respacing leaves in place (e.g. inserted pivots; the ends always stay).
        """
        if path is not None:
            self.pivots.data = path[:, 1:-1].to(self.pivots.dtype).clone()
        if steps is not None:
            self.steps.copy_(steps)
        if anchored is not None:
            self.anchored.copy_(anchored[:, 1:-1])

    @property
    def pairs(self) -> int:
        """Number of bands."""
        return self.pivots.shape[0]

    @property
    def done(self) -> bool:
        """True when no pair is active any more."""
        return not bool(self.active.any())

    @property
    def path(self) -> Tensor:
        """Detached full paths ``(pairs, num_pivots + 2, *point_shape)``."""
        pivots = self.pivots.detach()
        return torch.cat([self.starts.unsqueeze(1), pivots, self.ends.unsqueeze(1)], dim=1)

    def end_points(self) -> Tensor:
        """``(2 * pairs, *point_shape)``: all starts then all ends, for one energy call."""
        return torch.cat([self.starts, self.ends], dim=0)

    def set_end_energies_(self, energies: Tensor) -> None:
        """Record the energies of ``end_points()`` (``(2 * pairs,)``, same order).

        A pair with a non-finite end energy is marked diverged at once and never evaluated.
        """
        values = energies.detach().to(self.energy.dtype).reshape(2, self.pairs)
        self.energy[:, 0] = values[0]
        self.energy[:, -1] = values[1]
        bad = ~torch.isfinite(values).all(dim=0)
        self.diverged |= bad
        self.active &= ~bad

    def end_labels(self) -> Tensor | None:
        """Labels matching ``end_points()`` (None without labels)."""
        return None if self.labels is None else torch.cat([self.labels, self.labels])

    def active_labels(self) -> Tensor | None:
        """Labels matching ``active_points()``, one per pivot (None without labels)."""
        if self.labels is None:
            return None
        return self.labels[self.active].repeat_interleave(self.num_pivots)

    _WORKING = (
        "pivots",
        "starts",
        "ends",
        "energy",
        "max_force",
        "energy_limit",
        "step_scale",
        "nudged",
    )

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # Precision plugins convert every floating tensor of a module (bf16-true: to
        # bfloat16). The band keeps its working precision so its steps stay exact: float32,
        # or float64 when converted to float64 (64-true).
        before = {name: getattr(self, name) for name in self._WORKING}
        before = {name: t.detach().clone() for name, t in before.items() if t is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            dtype = torch.float64 if torch.float64 in (old.dtype, new.dtype) else old.dtype
            if new.dtype != dtype:
                new.data = old.to(device=new.device, dtype=dtype)
        return self

    # Buffers that band checkpoints written before issue 13 lack: such a checkpoint resumes
    # with their initial values (no energy limit, no back-offs so far, nothing held).
    # Likewise ``nudged`` and ``anchored``, added with issue 18 (no nudge, nothing anchored).
    _LATER_BUFFERS = ("energy_limit", "step_scale", "backoffs", "held", "nudged", "anchored")

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        for name in self._LATER_BUFFERS:
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    def retire_(self, pairs: Tensor) -> None:
        """Take pairs out of the optimisation before or between steps (e.g. already decided)."""
        self.active[pairs] = False

    def active_points(self) -> Tensor:
        """Detached copy of the active pairs' pivots, ``(active * num_pivots, *point_shape)``.

        Pair-major order: the pivots of the first active pair come first.
        """
        return self.pivots.detach()[self.active].reshape(-1, *self.point_shape)

    def climbing_index(self, pivot_energy: Tensor, steps: Tensor) -> Tensor | None:
        """Climbing pivot per pair (highest-energy pivot, -1 before ``climb_after`` steps).

        Args:
            pivot_energy: ``(n, num_pivots)``.
            steps: ``(n,)`` steps taken by those pairs.

        Returns:
            ``(n,)`` long, or None when climbing is off.
        """
        if not self.options.climbing:
            return None
        index = pivot_energy.argmax(dim=1)
        return torch.where(steps >= self.options.climb_after, index, torch.full_like(index, -1))

    def project_(self, grad: Tensor, energies: Tensor, stop: StopFn | None = None) -> Tensor:
        """Take in one evaluation of the active pivots and set ``pivots.grad`` for the next step.

        For each pair that was active, in order: a blow-up (non-finite energy or gradient, or a
        pivot energy above ``energy_limit``) -> back-off or diverged (see the class docstring);
        otherwise the energies and ``max_force`` are recorded, then ``max_force <= tol`` ->
        converged, ``stop`` -> stopped, and ``steps`` reached -> out of steps; any of these
        ends the pair. Pairs still active get the NEB effective gradient, except those that sit
        out this step (``held``), which get a zero gradient like all other pairs. A pair's first
        evaluation with finite values (its straight line, or the path a driver started the band
        from) sets its ``energy_limit``.

        Args:
            grad: ``(active * num_pivots, *point_shape)`` gradient of the energy at
                ``active_points()``.
            energies: ``(active * num_pivots,)`` energies at ``active_points()``.
            stop: optional ``stop(path, energy) -> (n,) bool`` called with the full paths
                ``(n, num_pivots + 2, *point_shape)`` and energies ``(n, num_pivots + 2)`` of
                the ``n`` pairs just evaluated with finite values (converged ones included),
                and their labels as a third argument when the band has ``labels``. Called on
                the initial straight line too, so True there means 0 steps.

        Returns:
            ``(pairs,)`` bool, the pairs still in the batch (= ``self.active``): the next
            optimiser step moves them, except the ``held`` ones.

        Raises:
            ValueError: ``stop`` returned the wrong number of values.
        """
        idx = self.active.nonzero().squeeze(1)
        n, p = idx.numel(), self.num_pivots
        dtype = self.energy.dtype
        e = energies.detach().to(dtype).reshape(n, p)
        g = grad.detach().to(dtype).reshape(n, p, -1)
        finite = torch.isfinite(e).all(dim=1) & _rows_finite(g)
        self._set_energy_limits_(idx, e, finite)
        fine = finite & (e.amax(dim=1) <= self.energy_limit[idx])
        if bool(fine.all()):
            good = idx
        else:
            self._back_off_(idx[~fine], evaluated=True)
            good = idx[fine]
            e, g = e[fine], g[fine]
        if good.numel() == 0:
            self._set_grad_(good, None)
            return self.active.clone()
        self.energy[good, 1:-1] = e
        # Indexing copies whole paths; skip it in the common case that every pair is in.
        everyone = good.numel() == self.pairs
        path = self.path if everyone else self.path[good]
        energy = self.energy.clone() if everyone else self.energy[good]
        climb = self.climbing_index(energy[:, 1:-1], self.steps[good])
        force, effective = _forces(
            path, energy, g, self.options.spring_constant, self.options.method, climb
        )
        self.max_force[good] = force.amax(dim=1)

        finished = self.max_force[good] <= self.options.tol
        if self.options.climbing:
            finished &= self.steps[good] >= self.options.climb_after
        self.converged[good] = finished
        if stop is not None:
            told = (
                stop(path, energy) if self.labels is None else stop(path, energy, self.labels[good])
            )
            said = torch.as_tensor(told, device=idx.device).reshape(-1)
            if said.numel() != good.numel():
                raise ValueError(f"stop returned {said.numel()} values for {good.numel()} pairs")
            said = said.to(torch.bool)
            self.stopped[good] = said
            if self.options.nudge > 0:
                finished = finished & ~self._nudge_stuck_(good, finished & ~said)
            finished = finished | said
        finished = finished | (self.steps[good] >= self.options.steps)
        self.active[good] = ~finished

        keep = ~finished & ~self.held[good]
        if bool(keep.all()):
            self._set_grad_(good, effective)
        else:
            self._set_grad_(good[keep], effective[keep] if keep.any() else None)
        return self.active.clone()

    def _nudge_stuck_(self, index: Tensor, converged: Tensor) -> Tensor:
        """Nudge the pairs at ``index`` that converged (``converged``, ``(len(index),)``) on a
        path not good enough before they moved; return which (see the class docstring)."""
        unmoved = self.steps[index] <= (self.options.climb_after if self.options.climbing else 0)
        stuck = converged & unmoved & (self.nudged[index] == 0)
        stuck &= self.steps[index] < self.options.steps
        if not bool(stuck.any()):
            return stuck
        rows = index[stuck]
        offsets = torch.stack(
            [
                symmetry_nudge(
                    self.starts[r], self.ends[r], self.options.nudge, self.options.nudge_seed
                )
                for r in rows
            ]
        ).to(self.pivots.dtype)
        with torch.no_grad():
            moved = self.pivots[rows] + offsets.unsqueeze(1)
            if self.options.bounds is not None:
                moved = moved.clamp(*self.options.bounds)
            self.pivots[rows] = moved
        self.nudged[rows] = offsets.reshape(rows.numel(), -1).norm(dim=1).to(self.nudged.dtype)
        self.converged[rows] = False
        return stuck

    def _set_energy_limits_(self, index: Tensor, pivot_energy: Tensor, finite: Tensor) -> None:
        """Set ``energy_limit`` of the pairs at ``index`` evaluated for the first time (on their
        starting path) with finite values."""
        line = torch.cat([self.energy[index, :1], pivot_energy, self.energy[index, -1:]], dim=1)
        top, bottom = line.amax(dim=1), line.amin(dim=1)
        # The line's energy scale: its range, or its largest magnitude where the range is
        # small (a line whose ends are as high as its middle would otherwise count rounding
        # noise as a blow-up).
        scale = torch.maximum(top - bottom, torch.maximum(top.abs(), bottom.abs()))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        limit = top + self.options.max_energy_rise * scale
        current = self.energy_limit[index]
        first = finite & torch.isinf(current)
        self.energy_limit[index] = torch.where(first, limit, current)

    def _set_grad_(self, index: Tensor, effective: Tensor | None) -> None:
        if effective is not None and index.numel() == self.pairs:  # all pairs, in order
            self.pivots.grad = effective.reshape(self.pivots.shape)
        else:
            full = torch.zeros_like(self.pivots.detach())
            if effective is not None:
                full[index] = effective.reshape(-1, self.num_pivots, *self.point_shape)
            self.pivots.grad = full
        self._before = self.pivots.detach().clone()

    def _back_off_(self, index: Tensor, evaluated: bool) -> None:
        """Return blown-up pairs to their path before the last step, halve their steps and hold
        them for one step; pairs out of back-offs, or on their straight line, diverge.

        Args:
            index: ``(k,)`` long pairs.
            evaluated: the blown-up path was evaluated (its step was counted), else it is a
                non-finite position found right after the step.
        """
        can = self.backoffs[index] < self.options.backoffs
        if evaluated:
            can &= self.steps[index] > 0  # on the straight line there is nothing to go back to
        if self._before is None:
            can &= False  # resumed from a checkpoint: the path before is not kept
        self._diverge_(index[~can], evaluated)
        retry = index[can]
        if retry.numel() == 0:
            return
        with torch.no_grad():
            self.pivots[retry] = self._before[retry]
        if evaluated:
            self.steps[retry] -= 1
        self.backoffs[retry] += 1
        self.step_scale[retry] *= 0.5
        self.held[retry] = True

    def _diverge_(self, index: Tensor, evaluated: bool) -> None:
        """Mark pairs diverged and return them to the path before their last step."""
        if index.numel() == 0:
            return
        self.diverged[index] = True
        self.active[index] = False
        if self._before is None:
            return  # diverged on the initial path: nothing earlier to return to
        with torch.no_grad():
            self.pivots[index] = self._before[index]
        if evaluated:
            self.steps[index] = (self.steps[index] - 1).clamp_min(0)

    @torch.no_grad()
    def after_step_(self) -> None:
        """Finish an optimiser step: undo moves of frozen and held pairs, then for the moved
        pairs catch non-finite positions (back-off or diverged), shorten steps (``max_step``,
        ``step_scale``), clamp to ``bounds``, respace (``string``), and count the step."""
        if self._before is None:
            raise RuntimeError("after_step_ called before project_")
        plain = (
            self.options.method == "neb"
            and self.options.bounds is None
            and math.isinf(self.max_step)
        )
        if (
            plain
            and bool((self.active & ~self.held & (self.step_scale == 1)).all())
            and bool(_rows_finite(self.pivots).all())
        ):
            self.steps += 1  # nothing to undo, shorten, clamp or respace
            self.pivots.grad = None
            return
        still = ~self.active | self.held
        self.pivots[still] = self._before[still]
        self.held.zero_()  # the held pairs have sat out their step
        moved = (~still).nonzero().squeeze(1)
        if moved.numel():
            finite = _rows_finite(self.pivots[moved])
            bad = moved[~finite]
            if bad.numel():
                self._back_off_(bad, evaluated=False)
            moved = moved[finite]
        if moved.numel():
            self._shorten_steps_(moved)
            if self.options.bounds is not None:
                self.pivots[moved] = self.pivots[moved].clamp(*self.options.bounds)
            if self.options.method == "string":
                keep = None
                if bool(self.anchored.any()):
                    keep = torch.nn.functional.pad(self.anchored[moved], (1, 1))
                self.pivots[moved] = respace_equal_arc(self.path[moved], keep)[:, 1:-1]
                if self.options.bounds is not None:
                    # Respaced points lie on the clamped polyline, so this only bites when an
                    # end lies outside the box; the box wins over equal spacing then.
                    self.pivots[moved] = self.pivots[moved].clamp(*self.options.bounds)
            self.steps[moved] += 1
        self.pivots.grad = None

    def pivot_spacing(self) -> Tensor:
        """``(pairs,)`` distance of neighbouring pivots on the straight line,
        ``|end - start| / (num_pivots + 1)``: the unit of ``max_step``."""
        chord = (self.ends - self.starts).reshape(self.pairs, -1).norm(dim=1)
        return chord / (self.num_pivots + 1)

    def _shorten_steps_(self, moved: Tensor) -> None:
        """Scale the step of each moved pair by its ``step_scale`` and, where a pivot moved
        farther than ``max_step`` allows, by the cap over that pivot's move (a pair's step keeps
        its direction). Rows that need no shortening are left bit for bit as they are."""
        capped = math.isfinite(self.max_step)
        if not capped and bool((self.step_scale[moved] == 1).all()):
            return
        step = self.pivots[moved] - self._before[moved]
        factor = self.step_scale[moved]
        if capped:
            longest = step.reshape(step.shape[0], self.num_pivots, -1).norm(dim=-1).amax(dim=1)
            cap = self.max_step * self.pivot_spacing()[moved]
            factor = factor * torch.where(longest > cap, cap / longest, torch.ones_like(cap))
        shrink = factor < 1
        if not bool(shrink.any()):
            return
        rows = moved[shrink]
        factor = factor[shrink].reshape(-1, *([1] * (step.dim() - 1)))
        self.pivots[rows] = self._before[rows] + factor * step[shrink]

    def result(self) -> PathResult:
        """Snapshot of the current state as a ``PathResult`` (tensors are copies)."""
        return PathResult(
            path=self.path.clone(),
            energy=self.energy.clone(),
            steps=self.steps.clone(),
            max_force=self.max_force.clone(),
            converged=self.converged.clone(),
            stopped=self.stopped.clone(),
            diverged=self.diverged.clone(),
            backoffs=self.backoffs.clone(),
            nudged=self.nudged.clone(),
            anchored=self.anchored.clone(),
        )
