"""Baselines that say what a run's counts mean: the same architecture, untrained.

Vrabel, Shem-Ur, Oz and Krueger ("Input Space Mode Connectivity in Deep Neural Networks",
arXiv 2409.05800, 2024) find that inputs an **untrained** network puts in one class are joined
by nearly straight paths too. ``baseline: untrained`` decides, in the same run, pairs of a
freshly initialised copy of the classifier's architecture (one per seed), drawn from the same
pool by that network's own predictions; their records go to ``records/untrained_seed<s>/``
(:func:`~connectivity.store.records.untrained_key`), never beside the trained network's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import Dataset

from connectivity.classifier import ClassifierModule
from connectivity.engine.options import PathOptions, SurfaceOptions
from connectivity.errors import ConnectivityError, OptionsError
from connectivity.runs.networks import probe_spaces, working_copy
from connectivity.runs.sampling import PairError, is_whole
from connectivity.store.files import read_json_or

UNTRAINED = "untrained"
BASELINES = (UNTRAINED,)
DEFAULT_SEEDS = (0, 1, 2)  # one untrained network per seed, when a baseline names none


def check_baseline(baseline: str | None, seeds: list[int] | None) -> list[int] | None:
    """Refuse a baseline that does not exist, seeds that are not distinct whole numbers, or
    seeds without a baseline (they would do nothing).

    Returns:
        The seeds as ints (:data:`DEFAULT_SEEDS` for a baseline without them); None without a
        baseline.

    Raises:
        OptionsError: naming the value and what to do.
    """
    if baseline is None:
        if seeds is not None:
            raise OptionsError(
                f"baseline_seeds is {seeds!r} but there is no baseline; add `baseline: "
                "untrained` or leave baseline_seeds out"
            )
        return None
    if baseline not in BASELINES:
        raise OptionsError(
            f"baseline is {baseline!r}; it must be one of {list(BASELINES)}, or left out "
            "(null) for none"
        )
    if seeds is None:
        return list(DEFAULT_SEEDS)
    if (
        not isinstance(seeds, (list, tuple))
        or not seeds
        or not all(is_whole(s) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise OptionsError(
            f"baseline_seeds is {seeds!r}; give a non-empty list of distinct integers from 0 to "
            f"{2**31 - 1}, one untrained network per seed (e.g. [0, 1, 2])"
        )
    return [int(s) for s in seeds]


ExperimentT = TypeVar("ExperimentT")
DrawnT = TypeVar("DrawnT")


def with_folder_baseline(experiment: ExperimentT, folder: Path) -> ExperimentT:
    """The experiment as its run folder asks: a rerun that leaves out the baseline of a folder
    whose ``run.json`` holds one still decides what is left of it (the folder's report sets
    those records beside the trained network's, so a baseline cut short must not stay short).

    Args:
        experiment: A paths, graph or surfaces experiment (``baseline``, ``baseline_seeds``).
        folder: Its run folder (it may not exist yet).

    Returns:
        ``experiment`` itself, or a copy with the folder's baseline.
    """
    if experiment.baseline is not None:
        return experiment
    manifest = read_json_or(folder / "run.json", None)
    entry = manifest.get("baseline") if isinstance(manifest, dict) else None
    if not entry:
        return experiment
    if rank_zero_only.rank == 0:
        print(
            f"baseline: {folder} holds the untrained baseline of seeds {entry['seeds']}; "
            "deciding what is left of it (another name leaves it out)",
            flush=True,
        )
    return dataclasses.replace(  # type: ignore[type-var]
        experiment, baseline=entry["kind"], baseline_seeds=list(entry["seeds"])
    )


@dataclass(kw_only=True)
class BaselineFields:
    """The baseline options of a paths, graph or surfaces experiment (each experiment class
    takes them from here, so they are declared once).

    Args:
        baseline: ``untrained``: also decide, in every space, the run's pairs (graph: inputs,
            surfaces: loops) of a freshly initialised network of the classifier's architecture
            (graph: the first classifier's) for each seed of ``baseline_seeds``
            (:mod:`connectivity.runs.baselines`), drawn from the same split with the same
            options but by that network's own predictions (graph and surfaces: a class it puts
            too few inputs in is left out, and the report says so); the report sets them beside
            the trained network's. None: no baseline. Adding or leaving out the baseline on a
            rerun keeps the trained network's results (leaving it out still finishes the
            baseline the run folder holds).
        baseline_seeds: One untrained network per seed (the same seed, the same network);
            None: ``[0, 1, 2]`` with a baseline. Given without a baseline: an error.

    Raises:
        OptionsError: At construction (:meth:`check_baseline_fields`), see
            :func:`check_baseline`.
    """

    baseline: str | None = None
    baseline_seeds: list[int] | None = None

    def check_baseline_fields(self) -> None:
        """Check the two fields, filling in the default seeds (call in ``__post_init__``)."""
        self.baseline_seeds = check_baseline(self.baseline, self.baseline_seeds)


def untrained_network(classifier: str | Path | nn.Module, seed: int) -> nn.Module:
    """A freshly initialised network of the classifier's architecture, the same for the same
    seed (the global random state is left as it was).

    Args:
        classifier: A ClassifierModule checkpoint: its architecture is built anew from its
            saved hyperparameters, weights drawn by the architecture's own constructor
            (torchvision's initialisation), no pretrained weights. Or a network module: a copy
            whose every submodule's ``reset_parameters`` is called (the input normalisation
            and other buffers without parameters are kept).
        seed: Seed of the draw.

    Returns:
        The network in eval mode on the CPU (a module: on its device).

    Raises:
        ConnectivityError: a module holding parameters that no ``reset_parameters`` draws
            again (they would keep their trained values); the message names them.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not isinstance(classifier, nn.Module):
            return ClassifierModule.untrained_like(classifier).network.eval()
        network = working_copy(classifier)
        kept = _reset(network)
    if kept:
        raise ConnectivityError(
            f"the untrained baseline cannot re-initialise {', '.join(kept[:5])}"
            + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
            + ": no reset_parameters() of their modules draws them again, so they would keep "
            "their trained values; run the baseline from a checkpoint of `connectivity fit`, or "
            "pass an untrained network as the classifier of a run of its own"
        )
    return network


def _reset(network: nn.Module) -> list[str]:
    """Call every submodule's ``reset_parameters``; the names of the parameters none of them
    wrote (their version counters did not move: a ``reset_parameters`` that leaves a parameter
    of its module as it was does not count as drawing it)."""
    versions = {id(p): p._version for p in network.parameters()}
    for module in network.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()  # batch norm's reset draws its running statistics again too
    return [name for name, p in network.named_parameters() if p._version == versions[id(p)]]


def baseline_manifest(
    seeds: list[int], drawn: dict[int, list[Any]], from_checkpoint: bool, items: str = "pairs"
) -> dict[str, Any]:
    """The ``baseline`` entry of ``run.json``: which networks, how they were initialised, and
    what each decides, under ``items`` (``pairs``; a graph run's ``inputs``, a surfaces run's
    ``loops``, as :func:`~connectivity.reporting.baselines.baseline_keys` reads them)."""
    return {
        "kind": UNTRAINED,
        "seeds": seeds,
        "initialisation": "the architecture's constructor (the checkpoint's hyperparameters)"
        if from_checkpoint
        else "reset_parameters() of every module",
        items: {str(seed): drawn[seed] for seed in seeds},
    }


def untrained_baselines(
    classifier: str | Path | nn.Module,
    seeds: list[int],
    spaces: list[str],
    dataset: Dataset,
    options: PathOptions | SurfaceOptions,
    device: str,
    draw: Callable[[nn.Module], DrawnT],
) -> dict[int, tuple[nn.Module, DrawnT]]:
    """``{seed: (untrained network, what it decides)}``: each seed's network
    (:func:`untrained_network`, on ``device``, its spaces checked as the trained one's are,
    with ``options``) and what ``draw`` takes for it from ``dataset`` (a paths run's pairs,
    a graph run's inputs, a surfaces run's loops, drawn by its own predictions).

    Raises:
        As :func:`untrained_network` and :func:`~connectivity.runs.networks.probe_spaces`;
        PairError: ``draw`` found too few items, the message naming the seed.
    """
    baselines = {}
    for seed in seeds:
        network = untrained_network(classifier, seed).to(device)
        probe_spaces(network, spaces, dataset, options)
        try:
            drawn = draw(network)
        except PairError as error:
            raise PairError(f"the untrained baseline of seed {seed}: {error}") from None
        baselines[seed] = (network, drawn)
    return baselines
