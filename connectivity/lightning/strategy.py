"""The ``ddp_pairs`` strategy: DDP's processes and collectives, each rank its own pairs.

Importing this module registers ``ddp_pairs`` and ``ddp_pairs_spawn`` in Lightning's
``StrategyRegistry``; :mod:`connectivity.runs.trainer` imports it, so every path or graph run
(and the CLI, which runs them) can name them.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class PairsDDPStrategy(DDPStrategy):
    """DDP's launcher, process group and collectives, without wrapping the module.

    Each rank optimises its own pairs: plain DDP would broadcast rank zero's parameters (the
    pivots) to every rank when it wraps the module, silently replacing every other rank's
    pairs, and would average the pivots' gradients across ranks. Registered as ``ddp_pairs``
    (processes started as scripts, as ``ddp``) and ``ddp_pairs_spawn`` (as ``ddp_spawn``).
    """

    def configure_ddp(self) -> None:
        pass  # the module stays as it is: no broadcast, no gradient averaging


for _name, _start in (("ddp_pairs", "popen"), ("ddp_pairs_spawn", "spawn")):
    if _name not in StrategyRegistry:
        StrategyRegistry.register(
            _name,
            PairsDDPStrategy,
            description=f"DDP without wrapping: each rank its own pairs ({_start})",
            start_method=_start,
        )
