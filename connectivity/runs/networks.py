"""The classifier a run works on: its own eval-mode copy, and its spaces checked before work."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import Dataset

from connectivity.classifier import ClassifierModule
from connectivity.data import stack_images
from connectivity.engine.checks import Certifier
from connectivity.engine.options import PathOptions
from connectivity.engine.split import floating_dtype, probe_split, split


def working_copy(network: nn.Module) -> nn.Module:
    """The tool's own eval-mode copy of a caller's network.

    The caller's module keeps its mode (a ``train()`` network must not be switched to eval,
    nor its batch-norm statistics updated by our forward passes), device and parameters.
    """
    return copy.deepcopy(network).eval()


def load_network(classifier: str | nn.Module) -> nn.Module:
    """The classifier network (logits of images in [0, 1]) from a checkpoint path or a module.

    A module is copied (:func:`working_copy`), never changed.
    """
    if isinstance(classifier, nn.Module):
        return working_copy(classifier)
    return ClassifierModule.from_checkpoint(classifier).network.eval()


def probe_spaces(
    network: nn.Module, spaces: list[str], dataset: Dataset, options: PathOptions | None = None
) -> None:
    """Check every space's split on two images of ``dataset`` before any work: one tensor at
    the layer, ``(B, classes)`` logits, and logits of a point that do not depend on its batch;
    with ``options``, also that ``options.certify`` can check the tail (on the layer's value of
    one image, on which bounds rewrite attention).

    Raises:
        LayerError: see :func:`connectivity.engine.split.probe_split`.
        BatchDependenceError: the class of an image would depend on the batch it is in.
        NotPiecewiseLinearError, NotBoundedError: see
            :meth:`connectivity.engine.checks.Certifier.for_tail`.
    """
    device = next(network.parameters(), torch.empty(0)).device
    images, _ = stack_images(dataset, list(range(min(2, len(dataset)))))  # type: ignore[arg-type]
    for space in spaces:
        head, tail = split(network, space)
        dtype = floating_dtype(head) or images.dtype
        images = images.to(device=device, dtype=dtype)
        probe_split(head.to(device), tail.to(device), images)
        if options is not None:
            with torch.no_grad():
                Certifier.for_tail(tail, options, head(images[:1]))


@torch.no_grad()
def predicted_classes(
    networks: list[nn.Module], dataset: Dataset, indices: list[int], device: str
) -> list[list[int]]:
    """Each network's predicted class of the items ``indices`` of ``dataset``, as one batch on
    ``device``: ``[[class per item] per network]``."""
    images, _ = stack_images(dataset, indices)
    images = images.to(device)
    return [network(images).argmax(dim=1).cpu().tolist() for network in networks]
