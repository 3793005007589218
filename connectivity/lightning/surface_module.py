"""SurfaceModule: the surfaces search (:class:`~connectivity.engine.surfaces.SurfaceSearch`)
run by a Lightning Trainer.

The module holds the frozen tail (always in eval mode), the loops it fills and, once the fit
has started, the search, whose membrane (its parameters are the free vertices of every loop's
mesh) is a submodule of this module: each training step is one
:meth:`~connectivity.engine.surfaces.SurfaceSearch.step` (one batched forward and backward of
all free vertices, the membrane's projection, one optimiser step, and the triangle checks and
subdivisions when they are due), the same object that
:func:`~connectivity.engine.surfaces.fill_loops` loops over. Each new record is queued in
``decided`` for a callback to save it at once.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from connectivity.engine.checks import Certifier
from connectivity.engine.options import SurfaceOptions
from connectivity.engine.split import FrozenTail, floating_dtype
from connectivity.engine.surfaces import SurfaceRecord, SurfaceSearch


class SurfaceModule(L.LightningModule):
    """Fill loops with surfaces under a Trainer (``Trainer(max_epochs=1)``): its loader has
    one item per possible step and it stops the Trainer itself once every loop is decided.

    Args:
        tail: The classifier from the loops' space to logits (a frozen copy is kept).
        options: Surface options.
        space: Name of the space, the prefix of the logged metrics.

    Attributes:
        search: The search, from the start of the fit (None before).
        decided: ``[(row, record)]`` decided since a callback last emptied it (a subclass may
            queue another key of its loops than the search's row: see :meth:`_queue`).

    Raises:
        NotPiecewiseLinearError, NotBoundedError: ``options.certify`` ``"exact"`` (``"bounds"``)
            with a tail it cannot check, here, before any work.
    """

    def __init__(
        self, tail: nn.Module, options: SurfaceOptions | None = None, space: str = "surface"
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the membrane sets its vertices' gradient itself
        self.strict_loading = False
        self.options = options or SurfaceOptions()
        self.space = space
        self.tail = FrozenTail(copy.deepcopy(tail))
        # certify="exact"/"bounds" on a tail it cannot check is refused here, before any work;
        # the search gets its own certifier with the tail on its device.
        Certifier.for_tail(self.tail, self.options)
        self.search: SurfaceSearch | None = None
        self.membrane: nn.Module | None = None
        self.decided: list[tuple[Any, SurfaceRecord]] = []
        self._loops: tuple[list[Tensor], list[list[int]], Tensor, Tensor] | None = None

    def set_loops(
        self, loops: list[Tensor], corners: list[list[int]], targets: Tensor, straight: Tensor
    ) -> None:
        """Give the loops (before the fit): closed polylines ``(B_l, *point_shape)``, the index
        of each input in them, ``(L,)`` target classes and ``(L,)`` whether every side is
        straight (see :class:`~connectivity.engine.surfaces.SurfaceSearch`)."""
        self._loops = (
            [loop.detach() for loop in loops],
            [list(c) for c in corners],
            targets.detach().long(),
            straight.detach().bool(),
        )

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The tail is the user's network, fixed for the run.
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not k.startswith("tail."))

    def train_dataloader(self) -> DataLoader:
        # One item per step; the module stops the Trainer once every loop is decided. Each
        # refinement round adds vertices, so there are fewer rounds than max_vertices.
        options = self.options
        rounds = 1 + options.max_vertices
        return DataLoader(range(rounds * (options.steps + 1)), batch_size=None)

    def configure_optimizers(self) -> Any:
        # Called after the strategy moved the module to its device: the search is built there,
        # in the precision the tail was converted to.
        if self._loops is None:
            raise RuntimeError("SurfaceModule has no loops: call set_loops first")
        loops, corners, targets, straight = self._loops
        device = self.device
        dtype = floating_dtype(self.tail) or torch.float32
        dtype = torch.float64 if torch.float64 in (dtype, *(x.dtype for x in loops)) else dtype
        loops = [loop.to(device, dtype) for loop in loops]
        example = loops[0][:1] if loops else None
        certifier = Certifier.for_tail(self.tail, self.options, example)
        self.search = SurfaceSearch(
            self.tail,
            loops,
            corners,
            targets.to(device),
            straight.to(device),
            self.options,
            certifier.check_triangles if certifier.proves else None,
            on_record=self._queue,
            on_membrane=self._use_membrane,
        )
        self.search.start()
        self.membrane = self.search.membrane
        # None when every loop was decided by its flat fill: the fit then takes no step.
        return self.search.optimizer

    def _use_membrane(self, optimizer: torch.optim.Optimizer) -> None:
        """A new membrane (the first, or one of a later round, refined): this module's
        parameters and the Trainer's optimiser."""
        assert self.search is not None
        self.membrane = self.search.membrane
        if self._trainer is not None and self.trainer.strategy.optimizers:
            self.trainer.strategy.optimizers = [optimizer]

    def _queue(self, row: int, record: SurfaceRecord) -> None:
        self.decided.append((row, record))

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        search = self.search
        assert search is not None
        if not search.done:
            self._log(search.step())
        strategy = self.trainer.strategy
        self.trainer.should_stop = bool(strategy.reduce_boolean_decision(search.done, all=True))

    def _log(self, evaluation: Any) -> None:
        values = {
            f"{self.space}/{name}": float(value)
            for name, value in vars(evaluation).items()
            if isinstance(value, (int, float, Tensor))
        }
        self.log_dict(values, prog_bar=False, batch_size=1)

    def records(self) -> list[SurfaceRecord]:
        """Every loop's record, after ``trainer.fit``."""
        if self.search is None:
            raise RuntimeError("run trainer.fit(surface_module) first")
        return self.search.records()
