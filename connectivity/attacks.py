"""Targeted adversarial examples of a classifier, for path runs whose one end is adversarial.

The attacks are the Adversarial Robustness Toolbox's (ART, Nicolae et al. 2018,
https://github.com/Trusted-AI/adversarial-robustness-toolbox): projected gradient descent in
the L-infinity ball (Madry et al. 2018, one random start) and the fast gradient sign method
(Goodfellow et al. 2015), both targeted. ART is imported only when an attack runs, so
``import connectivity`` does not pay for it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from connectivity.errors import ConnectivityError, InputError
from connectivity.runs.networks import working_copy
from connectivity.runs.sampling import PairError, is_whole

ATTACKS = ("pgd", "fgsm")

# Float32 rounding of ART's projection onto the ball and of our own subtraction; far below a
# pixel step (1/255), so no example that is truly over budget passes.
BUDGET_TOLERANCE = 1e-6
# Seeds numpy, torch and each round's seed + attacks so far all accept.
SEED_LIMIT = 2**31


class AttackError(ConnectivityError, RuntimeError):
    """An attack returned an example outside its L-infinity budget or outside [0, 1]."""


@dataclass
class AdversarialOptions:
    """How the adversarial ends of a path run are made (``pairs.adversarial``).

    Args:
        attack: ``pgd`` (projected gradient descent, one random start) or ``fgsm`` (one
            signed-gradient step of size ``budget``).
        budget: Largest L-infinity distance of an example from its source, in pixel units of
            images in [0, 1] (8/255: eight grey levels of an 8-bit image); in (0, 1].
        steps: PGD iterations (FGSM takes one step whatever this says); a whole number >= 1.
        step_size: PGD's step per iteration in the same units; None: ``2.5 * budget / steps``
            (Madry et al.'s rule, so the walk can cross the ball and back).
        seed: Seed of the random starts; the same seed gives the same examples.
        count: Adversarial-natural pairs wanted; None: as many as ``pairs.count``.

    Raises:
        PairError: At construction, for an attack other than pgd/fgsm, a budget outside (0, 1],
            ``steps`` or ``count`` not a whole number >= 1, a step size that is not > 0, or a
            seed that is not a whole number.
    """

    attack: str = "pgd"
    budget: float = 8 / 255
    steps: int = 40
    step_size: float | None = None
    seed: int = 0
    count: int | None = None

    OPTION: ClassVar[str] = "pairs.adversarial"

    def __post_init__(self) -> None:
        name = self.OPTION
        if self.attack not in ATTACKS:
            raise PairError(
                f"{name}.attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}"
            )
        if not _positive_at_most(self.budget, 1.0):
            raise PairError(
                f"{name}.budget must be in (0, 1] (an L-infinity distance in pixel units of "
                f"images in [0, 1], e.g. 0.031 for 8/255), got {self.budget!r}"
            )
        for field, value in (("steps", self.steps), ("count", self.count)):
            if value is not None and (not is_whole(value) or value < 1):
                raise PairError(f"{name}.{field} must be a whole number >= 1, got {value!r}")
        if self.step_size is not None and not _positive_at_most(self.step_size, math.inf):
            raise PairError(
                f"{name}.step_size must be > 0 (or null for 2.5 * budget / steps), got "
                f"{self.step_size!r}"
            )
        if not is_whole(self.seed) or not 0 <= self.seed < SEED_LIMIT:
            raise PairError(
                f"{name}.seed must be a whole number from 0 to {SEED_LIMIT - 1}, got {self.seed!r}"
            )

    @property
    def step(self) -> float:
        """PGD's step per iteration (pixel units): ``step_size`` or ``2.5 * budget / steps``."""
        return self.step_size if self.step_size is not None else 2.5 * self.budget / self.steps


def _positive_at_most(value: Any, most: float) -> bool:
    """Whether ``value`` is a finite number in ``(0, most]`` (``True`` is not a number here)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and 0 < value <= most


def check_within_budget(
    adversarial: Tensor, sources: Tensor, budget: float, tolerance: float = BUDGET_TOLERANCE
) -> Tensor:
    """``(N,)``: each example's L-infinity distance from its source, once every example is
    checked to lie within ``budget`` (plus ``tolerance``) of it and in [0, 1] (to within
    ``tolerance``).

    Args:
        adversarial, sources: ``(N, C, H, W)`` images, pixel values in [0, 1].
        budget: Largest allowed distance, pixel units.
        tolerance: Float rounding allowed beyond ``budget`` and [0, 1].

    Raises:
        AttackError: an example farther than ``budget + tolerance`` from its source, or with
            a pixel outside ``[-tolerance, 1 + tolerance]`` (or not finite).
    """
    if adversarial.shape != sources.shape:
        raise AttackError(
            f"the attack returned examples of shape {tuple(adversarial.shape)} for sources of "
            f"shape {tuple(sources.shape)}"
        )
    distance = (adversarial.double() - sources.double()).flatten(1).abs().amax(dim=1)
    bad = ~(distance <= budget + tolerance)  # NaN counts as bad
    if bool(bad.any()):
        k = int(bad.nonzero()[0])
        raise AttackError(
            f"adversarial example {k} lies {float(distance[k]):.6g} from its source in "
            f"L-infinity, over the budget {budget:.6g}"
        )
    low, high = float(adversarial.min()), float(adversarial.max())
    if not (-tolerance <= low and high <= 1 + tolerance):
        raise AttackError(
            f"adversarial examples hold pixel values in [{low:.6g}, {high:.6g}], outside [0, 1]"
        )
    return distance.to(adversarial.dtype)


def targeted_examples(
    network: nn.Module, images: Tensor, targets: Tensor, options: AdversarialOptions
) -> tuple[Tensor, Tensor]:
    """Targeted adversarial examples of ``images`` (ART's PGD or FGSM, L-infinity).

    The network and the tensors given are left as they are: the attack runs on an eval-mode
    copy of the network, on its device, with its own random state (numpy's and torch's global
    generators are as they were afterwards).

    Args:
        network: Logits ``(N, classes)`` of images in [0, 1]; float32.
        images: ``(N, C, H, W)`` floating, pixel values in [0, 1].
        targets: ``(N,)`` integer classes each example should be put in.
        options: The attack, its budget, steps and seed.

    Returns:
        ``(adversarial, success)``: ``(N, C, H, W)`` float32 examples on ``images``' device,
        each within ``options.budget`` of its image in L-infinity and in [0, 1]; ``(N,)`` bool,
        whether the network puts each example in its target class.

    Raises:
        InputError: images that are not ``(N, C, H, W)`` floating values in [0, 1], or targets
            that are not ``(N,)`` integer classes of the network.
        AttackError: an example out of budget or out of [0, 1] (:func:`check_within_budget`).
    """
    _check_inputs(images, targets)
    copy = working_copy(network)
    device = next(copy.parameters(), torch.empty(0)).device
    sources = images.detach().to(device=device, dtype=torch.float32)
    with torch.no_grad():
        classes = copy(sources[:1]).shape[1]
    if int(targets.min()) < 0 or int(targets.max()) >= classes:
        raise InputError(
            f"targets must be classes of the network (0 to {classes - 1}), got values from "
            f"{int(targets.min())} to {int(targets.max())}"
        )
    adversarial = _run_attack(copy, sources, targets.detach().cpu().long(), classes, options)
    check_within_budget(adversarial, sources, options.budget)
    with torch.no_grad():
        predicted = copy(adversarial).argmax(dim=1).cpu()
    success = predicted == targets.detach().cpu().long()
    return adversarial.to(images.device), success.to(images.device)


def _check_inputs(images: Tensor, targets: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point() or images.shape[0] == 0:
        raise InputError(
            f"images must be a non-empty (N, C, H, W) floating tensor, got shape "
            f"{tuple(images.shape)} of {images.dtype}"
        )
    if not (float(images.min()) >= 0 and float(images.max()) <= 1):
        raise InputError(
            f"images must hold pixel values in [0, 1], got [{float(images.min()):.4g}, "
            f"{float(images.max()):.4g}]"
        )
    if targets.shape != images.shape[:1] or targets.is_floating_point() or targets.is_complex():
        raise InputError(
            f"targets must be ({images.shape[0]},) integer classes, one per image, got shape "
            f"{tuple(targets.shape)} of {targets.dtype}"
        )


def _run_attack(
    network: nn.Module, sources: Tensor, targets: Tensor, classes: int, options: AdversarialOptions
) -> Tensor:
    """ART's attack of ``sources`` (float32 on the network's device) towards ``targets``;
    float32 examples on the same device. ART draws its random starts from numpy's global
    generator: it is seeded here and put back as it was."""
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    device = sources.device
    estimator = PyTorchClassifier(
        model=network,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(sources.shape[1:]),
        nb_classes=classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    common = {"norm": np.inf, "eps": options.budget, "targeted": True, "batch_size": 128}
    attack: Any
    if options.attack == "pgd":
        attack = ProjectedGradientDescent(
            estimator,
            eps_step=options.step,
            max_iter=options.steps,
            num_random_init=1,
            verbose=False,
            **common,
        )
    else:  # one step of size budget: FGSM's eps_step matters only with minimal=True
        attack = FastGradientMethod(estimator, eps_step=options.budget, **common)
    state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        np.random.seed(options.seed)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(options.seed)
            # ART runs on the current CUDA device: the network's, here.
            with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
                found = attack.generate(x=sources.cpu().numpy(), y=targets.numpy())
    finally:
        np.random.set_state(state)
    return torch.from_numpy(np.ascontiguousarray(found, dtype=np.float32)).to(device)
