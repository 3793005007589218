"""The surface search: surfaces of one class that fill loops of its inputs (issue 22).

* :class:`SurfaceRecord`: what was found for one loop.
* :class:`SurfaceSearch`: the search of a batch of loops, one membrane evaluation at a time,
  with the shape of :class:`~connectivity.engine.search.PathSearch` (``start``, ``step``,
  ``done``, ``records``, ``checkpoint``): the flat fill of each loop of straight sides is
  checked first; the other loops go to membranes (:class:`~connectivity.engine.membrane.
  Membrane`) in rounds: a loop whose triangles fail a check is refined where they fail
  (:func:`~connectivity.engine.membrane.refine`) and comes back in the next round with a new
  optimiser, as a band comes back with inserted pivots. :func:`fill_loops` drives it in a
  plain loop.

Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from connectivity.engine.membrane import (
    Membrane,
    Mesh,
    diameter,
    fan_triangles,
    loop_mesh,
    nudge_mesh,
    refine,
)
from connectivity.engine.optimizers import make_optimizer
from connectivity.engine.options import SurfaceOptions
from connectivity.engine.search import ClassifierEnergy
from connectivity.engine.split import FrozenTail
from connectivity.engine.triangles import (
    BUDGET,
    COUNTEREXAMPLE,
    PROVED,
    SAMPLED,
    UNDECIDED,
    TriangleCheck,
    sampled_triangles,
)
from connectivity.errors import InputError

__all__ = ["SurfaceEvaluation", "SurfaceRecord", "SurfaceSearch", "TriangleCheckFn", "fill_loops"]

# ``check(a, b, c, targets) -> TriangleCheck`` of triangles with corners ``(T, *point_shape)``.
TriangleCheckFn = Callable[[Tensor, Tensor, Tensor, Tensor], TriangleCheck]

PLANAR, CURVED, NONE, DIVERGED = "planar", "curved", "none", "diverged"
# how a loop's search ended (``SurfaceRecord.status``)
CERTIFIED, CONVERGED, OUT_OF_STEPS, SPENT = "certified", "converged", "out_of_steps", "budget"
# the step of the last check of a loop never checked
_NEVER = -(10**9)
# a loop waiting for the next round: its mesh, steps taken, refinements, step of its last check
Queued = tuple[Mesh, int, int, int]


@dataclass
class SurfaceRecord:
    """What was found for one loop; tensors are on the CPU.

    Attributes:
        verdict: ``"planar"`` (the flat fill of the loop's straight sides passed),
            ``"curved"`` (a relaxed membrane passed), ``"none"`` (none found: not a proof that
            none exists) or ``"diverged"`` (the membrane blew up); the API adds ``"no-loop"``
            for a loop with a side without a path.
        status: How the search ended: ``planar``, ``certified`` (the membrane's check passed
            before it converged), ``converged``, ``out_of_steps``, ``budget`` (failing triangles
            could not be refined within ``max_vertices``) or ``diverged``.
        certificate: ``"exact"``, ``"bounds"`` or ``"sampled"``: the weakest check that any
            triangle's pass rests on.
        target: The class.
        size: ``k``, the loop's inputs.
        min_margin: The lowest target margin over the surface: the proved lower bound where
            every triangle is proved, else the lowest margin at the evaluated points.
        min_margin_lower_bound: The proved lower bound over every triangle (NaN unless every
            triangle is proved).
        planar_min_margin: ``min_margin`` of the flat fill of the corners (the fan).
        points, flat, uv, triangles, fixed, corners: The surface's mesh
            (:class:`~connectivity.engine.membrane.Mesh`); every triangle is the flat triangle
            of its three vertices.
        steps: Membrane steps taken (0: planar).
        refinements: Rounds of refinement.
        vertices: ``V``.
        triangles_proved, triangles_sampled, triangles_failed, triangles_undecided: Triangles
            by the status of the last check.
        moved_max, moved_mean: Distance of the vertices from their flat positions, in the
            space's units; ``moved_ratio``: ``moved_max`` over the loop's diameter.
        pairs: The loop sides' path records (the API fills it).
        note: Why the certificate is weaker than asked, or other remarks.
    """

    verdict: str
    status: str
    certificate: str
    target: int
    size: int
    min_margin: float
    min_margin_lower_bound: float
    planar_min_margin: float
    points: Tensor
    flat: Tensor
    uv: Tensor
    triangles: Tensor
    fixed: Tensor
    corners: Tensor
    steps: int
    refinements: int
    vertices: int
    triangles_proved: int
    triangles_sampled: int
    triangles_failed: int
    triangles_undecided: int
    moved_max: float
    moved_mean: float
    moved_ratio: float
    pairs: list = field(default_factory=list)
    note: str = ""

    def metrics(self) -> dict[str, float | int | str]:
        """The scalar part, for tables."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, (Tensor, list))}


@dataclass
class SurfaceEvaluation:
    """What one :meth:`SurfaceSearch.step` saw, for a driver's metrics and progress."""

    max_energy: float  # highest energy of the evaluated vertices
    max_force: float  # largest normal force of the evaluated loops
    on_target: float  # fraction of the evaluated vertices on their target
    active_loops: int  # loops still in the membrane after the step
    vertices: int  # free vertices of the membrane
    steps: int  # most steps a loop of the membrane has taken


def _merge_checks(first: TriangleCheck, again: TriangleCheck, rows: Tensor) -> TriangleCheck:
    """``first`` with the triangles ``rows`` replaced by ``again``'s (their re-check)."""
    merged = copy.copy(first)
    merged.status = list(first.status)
    merged.note = list(first.note)
    for name in ("min_margin", "min_margin_lower_bound", "counterexample"):
        value = getattr(first, name).clone()
        value[rows] = getattr(again, name).to(value.dtype)
        setattr(merged, name, value)
    merged.counterexample_margin = first.counterexample_margin.clone()
    merged.counterexample_margin[rows] = again.counterexample_margin
    for i, r in enumerate(rows.tolist()):
        why = first.note[r] or first.status[r]
        merged.status[r] = again.status[i]
        merged.note[r] = f"decided at sampled points ({why})"
    return merged


def _certificate(check: TriangleCheck) -> str:
    """The weakest check any passed triangle rests on."""
    if any(s == SAMPLED for s in check.status) or check.kind == "sampled":
        return "sampled"
    return check.kind


def _moved(mesh: Mesh) -> tuple[float, float, float]:
    away = (mesh.points - mesh.flat).reshape(mesh.vertices, -1).double().norm(dim=1)
    size = diameter(mesh.points[mesh.fixed.to(mesh.points.device)])
    top = float(away.max())
    return top, float(away.mean()), top / size if size > 0 else math.nan


class SurfaceSearch:
    """The surface search of a batch of loops, one membrane evaluation at a time::

        search = SurfaceSearch(tail, loops, corners, targets, straight, options)
        search.start()
        while not search.done:
            search.step()
        records = search.records()

    Built with the loops, it checks the flat fill (the ``k`` fan triangles of the corners,
    :func:`~connectivity.engine.membrane.fan_triangles`) of every loop, and decides
    ``"planar"`` every loop of straight sides whose fill passes. The others start a membrane
    from :func:`~connectivity.engine.membrane.loop_mesh` (nudged, ``options.nudge``). A loop's
    triangles are checked when all its vertices are on the target (at most every
    ``check_every`` steps) and when it ends with them all on the target; triangles a proof
    leaves ``"budget"``/``"undecided"`` are re-checked at sampled points (the note says so).
    All passed: ``"curved"``. Some failed: they are refined (with the neighbours conformity
    needs) while the mesh stays within ``max_vertices``, and the loop goes on in the next round
    with a new optimiser (``on_membrane``); past the budget it goes on unrefined and ends
    ``"none"`` (status ``budget``) if its check still fails at its end. A loop that converges
    with vertices off the target has the triangles round them refined likewise. Out of steps
    without a pass: ``"none"``; blown up: ``"diverged"``. Every loop is independent of the
    others of its batch (a loop waits for the next round without changing).

    Args:
        tail: Points ``(B, *point_shape)`` to logits ``(B, classes)``; batch entries
            independent.
        loops: Per loop ``(B_l, *point_shape)`` the closed polyline, first point not repeated.
        corners: Per loop the increasing indices of its ``k >= 3`` inputs in it.
        targets: ``(L,)`` target class of each loop.
        straight: ``(L,)`` bool: the loop's sides are the straight segments between its
            corners (its flat fill is a fill of it).
        options: Surface options (defaults if None).
        check: ``check(a, b, c, targets) -> TriangleCheck`` of triangles; default the sampled
            check (:func:`~connectivity.engine.triangles.sampled_triangles`) with
            ``options.samples_per_edge``.
        on_record: Called as ``on_record(loop_index, record)`` as soon as a loop is decided.
        on_membrane: Called with the optimiser of each new membrane.

    Attributes:
        decided: ``{loop: SurfaceRecord}`` of the loops decided so far.
        membrane: The current round's :class:`~connectivity.engine.membrane.Membrane` (None
            between rounds and once done); ``rows``: the loop of each of its rows;
            ``optimizer``: its optimiser.
        queue: ``{loop: (mesh, steps, refinements, last check)}``: the loops waiting for the
            next round (last check: the step of the check that refined the mesh).
        planar_margin: Per loop, ``min_margin`` of its flat fill.
        restored: Loops a membrane decided before a resume (from its checkpoint).

    Raises:
        InputError: loops that are not floating point, of another point shape than the first,
            or outside ``options.bounds``; lists of other lengths than ``targets``.
        ValueError: corners outside what :func:`~connectivity.engine.membrane.loop_mesh` takes.
    """

    def __init__(
        self,
        tail: nn.Module,
        loops: list[Tensor],
        corners: list[list[int]],
        targets: Tensor,
        straight: Tensor,
        options: SurfaceOptions | None = None,
        check: TriangleCheckFn | None = None,
        on_record: Callable[[int, SurfaceRecord], None] | None = None,
        on_membrane: Callable[[torch.optim.Optimizer], None] | None = None,
    ) -> None:
        self.options = options = options or SurfaceOptions()
        self.tail = tail
        self.loops = _prepared(loops, corners, targets, straight, options)
        self.corners = [list(c) for c in corners]
        self.targets = targets.to(dtype=torch.long).reshape(-1).cpu()
        self.straight = straight.to(torch.bool).reshape(-1).cpu()
        self.check_fn = check or self._sampled
        self.on_record, self.on_membrane = on_record, on_membrane
        self.energy = ClassifierEnergy(tail)
        self.decided: dict[int, SurfaceRecord] = {}
        self.queue: dict[int, Queued] = {}
        self.membrane: Membrane | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.rows: list[int] = []  # the loop of each membrane row
        self.refinements: list[int] = []  # per membrane row
        self.last_check: list[int] = []  # per membrane row: step of its last check
        self.budget_spent: set[int] = set()
        self.planar_margin = [math.nan] * len(self.loops)
        self._started = False
        self.restored = 0  # loops a membrane decided before a resume (from its checkpoint)
        self._check_flat()

    def _sampled(self, a: Tensor, b: Tensor, c: Tensor, targets: Tensor) -> TriangleCheck:
        return sampled_triangles(
            self.tail,
            a,
            b,
            c,
            targets,
            per_edge=self.options.samples_per_edge,
            chunk_size=self.options.chunk_size,
        )

    def _check(self, a: Tensor, b: Tensor, c: Tensor, targets: Tensor) -> TriangleCheck:
        """``check``, with the triangles a proof leaves undecided decided at sampled points."""
        result = self.check_fn(a, b, c, targets)
        left = torch.tensor([s in (BUDGET, UNDECIDED) for s in result.status], dtype=torch.bool)
        if not bool(left.any()):
            return result
        rows = left.nonzero().squeeze(1)
        again = self._sampled(a[rows], b[rows], c[rows], targets[rows])
        return _merge_checks(result, again, rows)

    def _check_flat(self) -> None:
        """Check every loop's flat fill; decide the straight loops whose fill passes."""
        if not self.loops:
            return
        fans = [
            fan_triangles(loop[torch.tensor(c)])
            for loop, c in zip(self.loops, self.corners, strict=True)
        ]
        a, b, c = (torch.cat([f[i] for f in fans]) for i in range(3))
        sizes = [len(c) for c in self.corners]
        targets = self.targets.repeat_interleave(torch.tensor(sizes)).to(a.device)
        result = self._check(a, b, c, targets)
        first = 0
        for loop, size in enumerate(sizes):
            part = _rows_of(result, first, first + size)
            first += size
            self.planar_margin[loop] = _margins(part)[0]
            if bool(self.straight[loop]) and bool(part.passed.all()):
                mesh = loop_mesh(self.loops[loop], self.corners[loop], rings=1)
                self._decide(loop, PLANAR, PLANAR, mesh, part, 0, 0, "")

    # --- driving ---

    def _membrane(self) -> Membrane:
        if self.membrane is None:
            raise RuntimeError("start the search first (SurfaceSearch.start)")
        return self.membrane

    @property
    def done(self) -> bool:
        """Every loop is decided (after :meth:`start`)."""
        return self.membrane is None and not self.queue and self._started

    def start(self, checkpoint: dict[str, Any] | None = None) -> None:
        """Queue the loops the flat fill did not decide for membranes and start the first
        round, or go on from a ``checkpoint`` (:meth:`checkpoint`, written for these loops)."""
        self._started = True
        if checkpoint is not None:
            self._continue(checkpoint)
            return
        for loop in range(len(self.loops)):
            if loop not in self.decided:
                self.queue[loop] = (self._initial_mesh(loop), 0, 0, _NEVER)
        self._next_round()

    def _initial_mesh(self, loop: int) -> Mesh:
        mesh = loop_mesh(self.loops[loop], self.corners[loop], self.options.rings)
        return nudge_mesh(mesh, self.options.nudge, self.options.nudge_seed)

    def _next_round(self) -> None:
        """A membrane of the queued loops (None when none is queued)."""
        self.membrane = self.optimizer = None
        if not self.queue:
            return
        rows = sorted(self.queue)
        meshes = [self.queue[r][0] for r in rows]
        membrane = Membrane(meshes, self.targets[rows].to(meshes[0].points.device), self.options)
        membrane.steps.copy_(torch.tensor([self.queue[r][1] for r in rows]))
        self.refinements = [self.queue[r][2] for r in rows]
        # A refined mesh relaxes ``check_every`` steps before its next check (unless it ends
        # first): checked at once, its new vertices would only refine it again where it is.
        self.last_check = [self.queue[r][3] for r in rows]
        self.queue = {}
        self._use(membrane, rows)

    def _use(self, membrane: Membrane, rows: list[int]) -> None:
        self.membrane, self.rows = membrane, rows
        options = self.options
        self.optimizer = make_optimizer(options.optimizer, [membrane.free], options.lr)
        if self.on_membrane is not None:
            self.on_membrane(self.optimizer)

    def step(self) -> SurfaceEvaluation:
        """One evaluation of the active loops' free vertices and one update; loops that ended
        or whose check decided them leave the membrane, and a finished membrane is replaced by
        the next round's."""
        membrane = self._membrane()
        if membrane.done:
            raise RuntimeError("the search is done: every loop is decided")
        evaluated = membrane.active.clone()
        x = membrane.active_points().requires_grad_(True)
        labels = membrane.active_labels()
        with torch.enable_grad():
            energies = self.energy(x, labels)
            (grad,) = torch.autograd.grad(energies.sum(), x)
        logits = self.energy.logits
        assert logits is not None
        on = logits.argmax(dim=-1) == labels
        membrane.project_(grad, energies, on)
        for row in evaluated.nonzero().squeeze(1).tolist():
            self._after_evaluation(row)
        if bool(membrane.active.any()):
            assert self.optimizer is not None
            self.optimizer.step()
            before = membrane.diverged.clone()
            membrane.after_step_()
            for row in (membrane.diverged & ~before).nonzero().squeeze(1).tolist():
                self._finish(row, DIVERGED, DIVERGED, None, "")
        evaluation = SurfaceEvaluation(
            max_energy=float(energies.detach().max()) if energies.numel() else math.nan,
            max_force=float(membrane.max_force[evaluated].max()),
            on_target=float(on.double().mean()) if on.numel() else math.nan,
            active_loops=int(membrane.active.sum()),
            vertices=int(membrane.free.shape[0]),
            steps=int(membrane.steps.max()),
        )
        if membrane.done:
            self._next_round()
        return evaluation

    def _after_evaluation(self, row: int) -> None:
        """Decide, refine or keep membrane row ``row`` after its evaluation."""
        membrane = self._membrane()
        if bool(membrane.diverged[row]):
            self._finish(row, DIVERGED, DIVERGED, None, "")
            return
        finished = not bool(membrane.active[row])
        steps = int(membrane.steps[row])
        if bool(membrane.on_target[row]):
            if finished or steps - self.last_check[row] >= self.options.check_every:
                self._check_row(row, finished)
            return
        if not finished:
            return
        if not bool(membrane.converged[row]):
            self._finish(row, NONE, OUT_OF_STEPS, None, "vertices off the target")
            return
        # converged with vertices off the target: resolve the surface round them
        mesh = membrane.mesh(row)
        first = int(membrane.offsets[row])
        off = torch.zeros(mesh.vertices, dtype=torch.bool)
        rows = membrane.row_loop == row
        off[(membrane.free_index[rows] - first).cpu()] = ~membrane.vertex_on_target[rows].cpu()
        marked = off[mesh.triangles.cpu()].any(dim=1)
        if not self._requeue(row, mesh, marked):
            status = OUT_OF_STEPS if steps >= self.options.steps else SPENT
            self._finish(row, NONE, status, None, "converged with vertices off the target")

    def _check_row(self, row: int, finished: bool) -> None:
        membrane = self._membrane()
        mesh = membrane.mesh(row)
        self.last_check[row] = int(membrane.steps[row])
        result = self._check_mesh(mesh, self.targets[self.rows[row]])
        if bool(result.passed.all()):
            status = CERTIFIED
            if finished:
                status = CONVERGED if bool(membrane.converged[row]) else OUT_OF_STEPS
            self._finish(row, CURVED, status, result, "")
            return
        if self._requeue(row, mesh, result.failed):
            return
        steps = int(membrane.steps[row])
        if steps < self.options.steps:
            self.budget_spent.add(self.rows[row])
        if finished:
            status = SPENT if steps < self.options.steps else OUT_OF_STEPS
            self._finish(row, NONE, status, result, "triangles off the target")

    def _check_mesh(self, mesh: Mesh, target: Tensor) -> TriangleCheck:
        t = mesh.triangles.to(mesh.points.device)
        a, b, c = mesh.points[t[:, 0]], mesh.points[t[:, 1]], mesh.points[t[:, 2]]
        return self._check(a, b, c, target.repeat(t.shape[0]).to(a.device))

    def _requeue(self, row: int, mesh: Mesh, marked: Tensor) -> bool:
        """Refine ``mesh`` at ``marked`` and queue it for the next round, unless the result
        is over the vertex budget or the loop has no steps left; says whether it did."""
        membrane = self._membrane()
        steps = int(membrane.steps[row])
        if steps >= self.options.steps or not bool(marked.any()):
            return False
        refined = refine(mesh, marked)
        if refined.vertices > self.options.max_vertices:
            return False
        membrane.retire_(torch.tensor([row], device=membrane.active.device))
        checked = self.last_check[row] if self.last_check[row] == steps else _NEVER
        self.queue[self.rows[row]] = (refined, steps, self.refinements[row] + 1, checked)
        return True

    def _finish(
        self, row: int, verdict: str, status: str, result: TriangleCheck | None, note: str
    ) -> None:
        membrane = self._membrane()
        membrane.retire_(torch.tensor([row], device=membrane.active.device))
        loop = self.rows[row]
        mesh = membrane.mesh(row)
        if loop in self.budget_spent and verdict == NONE:
            status = SPENT
        if result is None and verdict == NONE:
            result = self._check_mesh(mesh, self.targets[loop])
        steps, refinements = int(membrane.steps[row]), self.refinements[row]
        self._decide(loop, verdict, status, mesh, result, steps, refinements, note)

    def _decide(
        self,
        loop: int,
        verdict: str,
        status: str,
        mesh: Mesh,
        result: TriangleCheck | None,
        steps: int,
        refinements: int,
        note: str,
    ) -> None:
        """Make and keep loop ``loop``'s record."""
        mesh = mesh.cpu()
        counts = dict.fromkeys((PROVED, SAMPLED, COUNTEREXAMPLE, "left"), 0)
        low, bound, certificate = math.nan, math.nan, "sampled"
        if result is not None:
            low, bound = _margins(result)
            certificate = _certificate(result)
            for s in result.status:
                counts[s if s in counts else "left"] += 1
            notes = sorted({n for n in result.note if n})
            note = "; ".join([note, *notes]) if note else "; ".join(notes)
        if verdict == NONE:
            note = "; ".join(n for n in (note, *self._why_stuck(mesh)) if n)
        top, mean, ratio = _moved(mesh)
        record = SurfaceRecord(
            verdict=verdict,
            status=status,
            certificate=certificate,
            target=int(self.targets[loop]),
            size=len(self.corners[loop]),
            min_margin=low,
            min_margin_lower_bound=bound,
            planar_min_margin=self.planar_margin[loop],
            points=mesh.points,
            flat=mesh.flat,
            uv=mesh.uv,
            triangles=mesh.triangles,
            fixed=mesh.fixed,
            corners=mesh.corners,
            steps=steps,
            refinements=refinements,
            vertices=mesh.vertices,
            triangles_proved=counts[PROVED],
            triangles_sampled=counts[SAMPLED],
            triangles_failed=counts[COUNTEREXAMPLE],
            triangles_undecided=counts["left"],
            moved_max=top,
            moved_mean=mean,
            moved_ratio=ratio,
            note=note,
        )
        self.decided[loop] = record
        if self.on_record is not None:
            self.on_record(loop, record)

    def _why_stuck(self, mesh: Mesh) -> list[str]:
        """What kept a membrane from filling its loop, where the options or the space did."""
        why = []
        dimensions = mesh.points[0].numel() if mesh.vertices else 0
        if dimensions <= 2:
            why.append(
                f"a surface in a space of {dimensions} dimensions has no normal direction: the "
                "membrane cannot move, only the flat fill is tried"
            )
        budget = self.options.max_vertices
        if mesh.vertices + 3 > budget:  # a refined triangle adds up to 3 vertices
            why.append(
                f"max_vertices ({budget}) leaves no room to refine the mesh of "
                f"{mesh.vertices} vertices"
            )
        return why

    def steps_taken(self) -> int:
        """The most steps of a loop still in the membrane (of any loop of it once none is; 0
        without a membrane)."""
        if self.membrane is None:
            return 0
        steps = self.membrane.steps
        active = steps[self.membrane.active]
        return int(active.max()) if active.numel() else int(steps.max())

    def records(self) -> list[SurfaceRecord]:
        """Every loop's record, in loop order (once :attr:`done`)."""
        return [self.decided[i] for i in range(len(self.loops))]

    # --- checkpoints ---

    def checkpoint(self) -> dict[str, Any]:
        """What a checkpoint saves to continue this search (:meth:`start`): the membrane
        (``membrane``: its state; ``meshes``: the meshes it was built from; ``rows``: the loop
        of each of its rows, with ``refinements`` and ``last_check``), its optimiser's state
        (``optimizer``), the queued loops (``queued``: ``{loop: (mesh, steps, refinements, last
        check)}``),
        the loops whose budget was spent (``budget_spent``) and the records of the loops the
        membranes decided so far (``decided``)."""
        membrane = self.membrane
        state: dict[str, Any] = {
            "queued": {i: (m.cpu().to_dict(), *rest) for i, (m, *rest) in self.queue.items()},
            "decided": {i: asdict(r) for i, r in self.decided.items() if r.verdict != PLANAR},
            "budget_spent": sorted(self.budget_spent),
            "membrane": None,
        }
        if membrane is not None and self.optimizer is not None:
            state.update(
                membrane=membrane.state_dict(),
                meshes=[m.cpu().to_dict() for m in membrane.meshes],
                rows=list(self.rows),
                refinements=list(self.refinements),
                last_check=list(self.last_check),
                optimizer=self.optimizer.state_dict(),
            )
        return state

    def _continue(self, checkpoint: dict[str, Any]) -> None:
        device = self.loops[0].device if self.loops else torch.device("cpu")
        for i, r in checkpoint.get("decided", {}).items():
            self.decided[int(i)] = SurfaceRecord(**r)
        self.restored = len(checkpoint.get("decided", {}))
        self.budget_spent = {int(i) for i in checkpoint.get("budget_spent", [])}
        for i, (mesh, steps, refinements, checked) in checkpoint.get("queued", {}).items():
            self.queue[int(i)] = (_mesh_on(mesh, device), int(steps), int(refinements), checked)
        rows = [int(r) for r in checkpoint.get("rows", [])]
        for loop in range(len(self.loops)):
            if loop not in self.decided and loop not in self.queue and loop not in rows:
                self.queue[loop] = (self._initial_mesh(loop), 0, 0, _NEVER)
        if checkpoint.get("membrane") is None:
            self._next_round()
            return
        meshes = [_mesh_on(m, device) for m in checkpoint["meshes"]]
        membrane = Membrane(meshes, self.targets[rows].to(device), self.options)
        membrane.load_state_dict(checkpoint["membrane"])
        self.refinements = list(checkpoint["refinements"])
        self.last_check = list(checkpoint["last_check"])
        self._use(membrane, rows)
        assert self.optimizer is not None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if membrane.done:
            self._next_round()


def _mesh_on(values: dict[str, Tensor], device: torch.device) -> Mesh:
    mesh = Mesh(**values)
    return Mesh(mesh.points.to(device), mesh.flat.to(device), *list(asdict(mesh).values())[2:])


def _rows_of(check: TriangleCheck, first: int, last: int) -> TriangleCheck:
    """The triangles ``first:last`` of ``check``."""
    return TriangleCheck(
        check.kind,
        check.status[first:last],
        check.min_margin[first:last],
        check.min_margin_lower_bound[first:last],
        check.counterexample[first:last],
        check.counterexample_margin[first:last],
        check.pieces[first:last],
        check.evaluations[first:last],
        check.note[first:last],
    )


def _margins(check: TriangleCheck) -> tuple[float, float]:
    """``(min_margin, min_margin_lower_bound)`` over a check's triangles: the proved bound
    where every triangle is proved (and NaN otherwise), else the lowest evaluated margin."""
    if bool(check.proved.all()) and len(check.status):
        bound = float(check.min_margin_lower_bound.min())
        return bound, bound
    evaluated = check.min_margin[~torch.isnan(check.min_margin)]
    low = float(evaluated.min()) if evaluated.numel() else math.nan
    return low, math.nan


def _prepared(
    loops: list[Tensor],
    corners: list[list[int]],
    targets: Tensor,
    straight: Tensor,
    options: SurfaceOptions,
) -> list[Tensor]:
    """The loops in the working precision (float64 if any is, else float32), checked."""
    count = targets.reshape(-1).shape[0]
    if not (len(loops) == len(corners) == count == straight.reshape(-1).shape[0]):
        raise InputError(
            f"loops ({len(loops)}), corners ({len(corners)}), targets ({count}) and straight "
            f"({straight.reshape(-1).shape[0]}) must have one entry per loop"
        )
    if any(not loop.is_floating_point() for loop in loops):
        raise InputError("loops must be floating point")
    if any(loop.shape[1:] != loops[0].shape[1:] for loop in loops):
        raise InputError("every loop must have the same point shape")
    dtype = torch.float64 if any(loop.dtype == torch.float64 for loop in loops) else torch.float32
    out = [loop.detach().to(dtype) for loop in loops]
    box = options.bounds
    for loop in out:
        if box is not None and (float(loop.min()) < box[0] or float(loop.max()) > box[1]):
            raise InputError(f"a loop has values outside bounds {tuple(box)}")
    return out


def fill_loops(
    tail: nn.Module,
    loops: list[Tensor],
    corners: list[list[int]],
    targets: Tensor,
    straight: Tensor,
    options: SurfaceOptions | None = None,
    check: TriangleCheckFn | None = None,
) -> list[SurfaceRecord]:
    """Fill each loop with a surface of its target class: a plain loop over
    :class:`SurfaceSearch` (see it for the arguments and the method).

    The tail is run as a frozen, eval-mode copy (the caller's module is never changed).

    Returns:
        One :class:`SurfaceRecord` per loop, in order.
    """
    if not isinstance(tail, FrozenTail):
        device = loops[0].device if loops else torch.device("cpu")
        tail = FrozenTail(copy.deepcopy(tail)).to(device)
    search = SurfaceSearch(tail, loops, corners, targets, straight, options, check)
    search.start()
    while not search.done:
        search.step()
    return search.records()
