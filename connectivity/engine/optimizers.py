"""Optimisers made for elastic bands: FIRE and L-BFGS, batched over pairs.

Pure torch, no Lightning. Both are ``torch.optim.Optimizer`` subclasses driven by the gradient
the band sets (``ElasticBand.project_`` writes minus the NEB force into ``pivots.grad``), so any
driver steps them as it steps Adam, and ``state_dict()`` / ``load_state_dict()`` save and
restore them with the band.

Per-pair state: a parameter is ``(pairs, ...)``; every quantity the methods keep per system
(FIRE's velocity, time step and mixing; L-BFGS's curvature pairs) is kept per row of the first
dimension, and every dot product and norm is taken within one row. Rows never mix, so a pair's
path does not depend on which other pairs share its batch.

A row whose gradient is exactly zero does not move and its state is reset: this is how the band
hands over frozen pairs (finished or diverged, zero gradient, moves undone by
``ElasticBand.after_step_``) and pairs that sit out one step after a back-off. An active pair
has a zero NEB gradient only on an exact minimum energy path, where not moving is right.

The cap on a pivot's step length (ASE's ``maxstep``) is the band's ``max_step``, applied to
whatever step the optimiser takes (``ElasticBand.after_step_``), as ASE applies its cap to the
optimiser's step.

References:
    E. Bitzek, P. Koskinen, F. Gahler, M. Moseler, P. Gumbsch, Phys. Rev. Lett. 97, 170201
    (2006): FIRE.
    J. Nocedal, Math. Comp. 35, 773 (1980); J. Nocedal, S. J. Wright, Numerical Optimization,
    2nd ed. (2006), Algorithm 7.4 (two-loop recursion) and eq. 7.20 (initial scaling).
    D. Sheppard, R. Terrell, G. Henkelman, J. Chem. Phys. 128, 134106 (2008): optimisers for
    NEB (FIRE and L-BFGS on the NEB force).
    ASE, ``ase.optimize.FIRE`` and ``ase.optimize.LBFGS``: the default parameters below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from connectivity.engine.options import OPTIMIZERS

__all__ = ["FIRE", "LBFGS", "make_optimizer"]


def _rows(x: Tensor) -> Tensor:
    """``(pairs, -1)`` view of a per-pair tensor."""
    return x.reshape(x.shape[0], -1)


def _moving(grad: Tensor) -> Tensor:
    """``(pairs,)`` bool: the row's gradient is not all zero (the band moves that pair)."""
    return (grad != 0).any(dim=1)


class _PairOptimizer(torch.optim.Optimizer):
    """Shared loop of the per-pair optimisers: ``_step_one(param, group)`` per parameter."""

    # State that is no floating-point number: ``Optimizer.load_state_dict`` casts every state
    # tensor to the parameter's dtype, so these are cast back.
    _EXACT_STATE: dict[str, torch.dtype] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of every pair from the gradients in ``.grad``.

        Args:
            closure: Optional, re-evaluates the loss (not needed: only gradients are used).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._step_one(p, group)
        return loss

    def _step_one(self, p: Tensor, group: dict) -> None:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``; counters and flags keep their integer and bool dtypes."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key, dtype in self._EXACT_STATE.items():
                if key in state:
                    state[key] = state[key].to(dtype)


class FIRE(_PairOptimizer):
    """Fast Inertial Relaxation Engine (Bitzek et al., PRL 97, 170201, 2006), one system per
    pair, as ASE's ``FIRE`` does it.

    Each step, per pair, with force ``F = -grad`` and velocity ``v``: if ``P = F . v > 0``
    (downhill), ``v <- (1 - a) v + a |v| F / |F|`` and, after more than ``n_min`` downhill steps
    in a row, ``dt <- min(f_inc dt, dt_max)``, ``a <- f_alpha a``; otherwise (uphill) ``v <- 0``,
    ``dt <- f_dec dt``, ``a <- alpha_start``. Then semi-implicit Euler: ``v <- v + dt F``,
    ``x <- x + dt v``. A pair's first step (``v = 0``) only takes the Euler step, as in ASE.

    Units: ``dt`` is in the units that make ``dt**2 * force`` a displacement (masses are 1).

    Args:
        params: Parameters ``(pairs, ...)``; each row is one system.
        lr: Initial time step ``dt`` of every pair (ASE: 0.1), > 0.
        dt_max: Largest time step; default ``10 * lr`` (LAMMPS's ``tmax = 10``; ASE: 1.0 for
            ``dt = 0.1``).
        n_min: Downhill steps before ``dt`` may grow (paper and ASE: 5).
        f_inc: Growth factor of ``dt`` (1.1).
        f_dec: Shrink factor of ``dt`` on an uphill step (0.5).
        alpha_start: Initial velocity mixing ``a`` (0.1).
        f_alpha: Decay of ``a`` while downhill (0.99).

    Raises:
        ValueError: a parameter outside its range.

    State per parameter (``state_dict`` holds it): ``velocity`` like the parameter, and
    ``(pairs,)`` tensors ``dt``, ``alpha`` and ``downhill_steps``.
    """

    _EXACT_STATE = {"downhill_steps": torch.long}

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.1,
        dt_max: float | None = None,
        n_min: int = 5,
        f_inc: float = 1.1,
        f_dec: float = 0.5,
        alpha_start: float = 0.1,
        f_alpha: float = 0.99,
    ) -> None:
        dt_max = 10.0 * lr if dt_max is None else dt_max
        if not (lr > 0 and dt_max >= lr):
            raise ValueError(f"FIRE needs 0 < lr <= dt_max, got lr={lr}, dt_max={dt_max}")
        if not (n_min >= 0 and f_inc >= 1 and 0 < f_dec < 1 and 0 < alpha_start < 1):
            raise ValueError("FIRE needs n_min >= 0, f_inc >= 1, 0 < f_dec < 1, 0 < alpha < 1")
        if not 0 < f_alpha <= 1:
            raise ValueError(f"FIRE needs 0 < f_alpha <= 1, got {f_alpha}")
        defaults = dict(
            lr=lr,
            dt_max=dt_max,
            n_min=n_min,
            f_inc=f_inc,
            f_dec=f_dec,
            alpha_start=alpha_start,
            f_alpha=f_alpha,
        )
        super().__init__(params, defaults)

    def _step_one(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        pairs = p.shape[0]
        if not state:
            state["velocity"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["dt"] = torch.full((pairs,), group["lr"], dtype=p.dtype, device=p.device)
            state["alpha"] = torch.full(
                (pairs,), group["alpha_start"], dtype=p.dtype, device=p.device
            )
            state["downhill_steps"] = torch.zeros(pairs, dtype=torch.long, device=p.device)
        force = _rows(p.grad).neg()
        v = _rows(state["velocity"])
        dt, alpha, count = state["dt"], state["alpha"], state["downhill_steps"]
        moving = _moving(force)
        power = (force * v).sum(dim=1)
        # v = 0: the first step (or the first after a reset) has no direction to judge yet.
        fresh = ~(v != 0).any(dim=1)
        downhill = (power > 0) & moving
        uphill = ~downhill & ~fresh & moving
        tiny = torch.finfo(p.dtype).tiny
        f_unit = force / force.norm(dim=1, keepdim=True).clamp_min(tiny)
        a = alpha.unsqueeze(1)
        mixed = (1 - a) * v + a * v.norm(dim=1, keepdim=True) * f_unit
        v = torch.where(downhill.unsqueeze(1), mixed, v)
        grow = downhill & (count > group["n_min"])
        dt.copy_(
            torch.where(
                grow,
                (dt * group["f_inc"]).clamp_max(group["dt_max"]),
                torch.where(uphill, dt * group["f_dec"], dt),
            )
        )
        reset = uphill | ~moving
        alpha.copy_(
            torch.where(
                grow, alpha * group["f_alpha"], torch.where(reset, group["alpha_start"], alpha)
            )
        )
        count.copy_(torch.where(downhill, count + 1, torch.where(reset, 0, count)))
        v = torch.where(reset.unsqueeze(1), torch.zeros_like(v), v)
        v = v + dt.unsqueeze(1) * force
        state["velocity"].copy_(v.reshape(p.shape))
        p.add_((dt.unsqueeze(1) * v).reshape(p.shape))


class LBFGS(_PairOptimizer):
    """Limited-memory BFGS on the band's force, one system per pair, without a line search.

    Per pair, the step is ``-H g`` with ``H`` the L-BFGS inverse Hessian from the last
    ``memory`` pairs ``s = x_k - x_{k-1}``, ``y = g_k - g_{k-1}`` (two-loop recursion,
    Nocedal & Wright, Algorithm 7.4) and initial scaling ``H0 = s.y / y.y`` of the newest pair
    (eq. 7.20), ``H0 = lr`` before there is one. ``s`` is the move the pair actually made, read
    from its positions, so a step the band capped, clamped to a box or respaced is accounted for
    as taken. A pair whose new ``s.y`` is not positive (the NEB force is not a gradient, so this
    can happen) keeps its old pairs. There is no line search (as in ASE's ``LBFGS``); the band's
    ``max_step`` caps the step length instead.

    Args:
        params: Parameters ``(pairs, ...)``; each row is one system.
        lr: Inverse curvature of the first step (and of the first after a reset): that step is
            ``lr * force``, > 0.
        memory: Curvature pairs kept per pair (ASE: 100; 10 here, as the pairs are as large as
            the pivots: memory costs ``2 * memory`` copies of the parameter).

    Raises:
        ValueError: ``lr <= 0`` or ``memory < 1``.

    State per parameter (``state_dict`` holds it): ``s`` and ``y`` ``(pairs, memory, n)`` (oldest
    first; unused slots are zero with ``rho = 0`` and drop out of the recursion), ``rho``
    ``(pairs, memory)``, ``gamma`` ``(pairs,)``, and ``previous_x``, ``previous_grad``
    ``(pairs, n)`` with ``has_previous`` ``(pairs,)``.
    """

    _EXACT_STATE = {"has_previous": torch.bool}

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, memory: int = 10) -> None:
        if not lr > 0:
            raise ValueError(f"LBFGS needs lr > 0, got {lr}")
        if memory < 1:
            raise ValueError(f"LBFGS needs memory >= 1, got {memory}")
        super().__init__(params, dict(lr=lr, memory=memory))

    def _step_one(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        pairs, memory = p.shape[0], group["memory"]
        x, g = _rows(p.detach()), _rows(p.grad)
        if not state:
            n = x.shape[1]
            state["s"] = x.new_zeros(pairs, memory, n)
            state["y"] = x.new_zeros(pairs, memory, n)
            state["rho"] = x.new_zeros(pairs, memory)
            state["gamma"] = x.new_full((pairs,), group["lr"])
            state["previous_x"] = x.clone()
            state["previous_grad"] = g.clone()
            state["has_previous"] = torch.zeros(pairs, dtype=torch.bool, device=p.device)
        s_hist, y_hist, rho, gamma = state["s"], state["y"], state["rho"], state["gamma"]
        moving = _moving(g)

        s_new = x - state["previous_x"]
        y_new = g - state["previous_grad"]
        sy = (s_new * y_new).sum(dim=1)
        yy = (y_new * y_new).sum(dim=1)
        # Curvature condition s.y > 0 keeps H positive definite, so -H g points downhill.
        accept = state["has_previous"] & moving & (sy > 0) & torch.isfinite(sy) & (yy > 0)
        if bool(accept.any()):
            rows = accept.nonzero().squeeze(1)
            # Oldest first: shift the rows' pairs down by one and put the new one last.
            s_hist[rows] = torch.cat([s_hist[rows, 1:], s_new[rows].unsqueeze(1)], dim=1)
            y_hist[rows] = torch.cat([y_hist[rows, 1:], y_new[rows].unsqueeze(1)], dim=1)
            rho[rows] = torch.cat([rho[rows, 1:], (1.0 / sy[rows]).unsqueeze(1)], dim=1)
            gamma[rows] = sy[rows] / yy[rows]
        # Pairs that do not move forget their history: they start afresh when they move again.
        still = ~moving
        if bool(still.any()):
            s_hist[still] = 0
            y_hist[still] = 0
            rho[still] = 0
            gamma[still] = group["lr"]

        q = g.clone()
        coefficients = []
        for j in range(memory - 1, -1, -1):
            a_j = rho[:, j] * (s_hist[:, j] * q).sum(dim=1)
            q -= a_j.unsqueeze(1) * y_hist[:, j]
            coefficients.append(a_j)
        z = gamma.unsqueeze(1) * q
        for j in range(memory):
            b_j = rho[:, j] * (y_hist[:, j] * z).sum(dim=1)
            z += (coefficients[memory - 1 - j] - b_j).unsqueeze(1) * s_hist[:, j]
        # A direction that is not finite (overflowing history) restarts that pair.
        bad = ~torch.isfinite(z).all(dim=1)
        if bool(bad.any()):
            s_hist[bad] = 0
            y_hist[bad] = 0
            rho[bad] = 0
            gamma[bad] = group["lr"]
            z[bad] = group["lr"] * g[bad]
        state["previous_x"].copy_(x)
        state["previous_grad"].copy_(g)
        state["has_previous"].copy_(moving)
        p.sub_(z.reshape(p.shape))


def make_optimizer(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """The optimiser of a band's pivots, stepped on the gradient ``ElasticBand.project_`` sets
    (minus the NEB force).

    * ``"adam"``: ``torch.optim.Adam``, ``lr`` its learning rate. Its per-coordinate scaling
      bends the projected NEB force: the step is no longer perpendicular to the band (nor the
      spring step along it), so springs and true force leak into each other; on stiff surfaces
      it stalls at small ``lr`` and blows up at large ``lr``.
    * ``"sgd"``: plain gradient descent, step ``lr * force``: keeps the force's direction, but is
      stable only for ``lr < 2 / (largest curvature)``, so it crawls on stiff surfaces.
    * ``"fire"``: :class:`FIRE` (Bitzek et al., 2006; as ASE and LAMMPS use it for NEB), ``lr``
      its initial time step, at most ``10 * lr``.
    * ``"lbfgs"``: :class:`LBFGS` on the NEB force, without line search, ``lr`` the inverse
      curvature of its first step.

    Both ``fire`` and ``lbfgs`` keep their state per pair (first dimension of the pivots) and
    rely on the band's ``max_step`` to cap their steps
    (:data:`connectivity.engine.options.DEFAULT_MAX_STEP`).

    Raises:
        ValueError: an unknown ``name``.
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "fire":
        return FIRE(params, lr=lr)
    if name == "lbfgs":
        return LBFGS(params, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
