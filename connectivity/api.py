"""``connect``: the path question for any classifier, from a plain Python call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from connectivity.split import INPUT, split
from connectivity.verdicts import PairRecord, PathOptions, connect_points


def _batch(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() not in (3, 4):
        raise ValueError(f"{name} must be an image (C, H, W) or a batch (pairs, C, H, W)")
    return x.unsqueeze(0) if x.dim() == 3 else x


def connect(
    classifier: nn.Module,
    layer: str,
    x_start: Tensor,
    x_end: Tensor,
    target: int | Tensor,
    **path_options: Any,
) -> list[PairRecord]:
    """Is each pair of inputs joined by a path, in ``layer``'s space, that keeps the target class?

    Args:
        classifier: Any ``nn.Module`` returning logits for images in [0, 1] that torch.fx can
            trace (a ClassifierModule's ``network``, a torchvision model...). It is copied,
            never changed.
        layer: ``"input"`` or a layer name (see :func:`connectivity.split.layer_names`).
        x_start: First images, ``(pairs, C, H, W)`` or one ``(C, H, W)``.
        x_end: Second images, same shape.
        target: The class the path must keep, one for all pairs or ``(pairs,)``.
        **path_options: Fields of :class:`connectivity.verdicts.PathOptions`. In the input
            space ``bounds`` defaults to ``(0, 1)`` so every point stays an image.

    Returns:
        One :class:`connectivity.verdicts.PairRecord` per pair: the verdicts (``verdict``
        certified densely, ``pivot_verdict`` as the paper checks), the path in the layer's
        space, the softmax at every path point and the path metrics.
    """
    starts, ends = _batch(x_start, "x_start"), _batch(x_end, "x_end")
    if starts.shape != ends.shape:
        raise ValueError(f"x_start {tuple(starts.shape)} and x_end {tuple(ends.shape)} differ")
    targets = torch.as_tensor(target, dtype=torch.long, device=starts.device)
    targets = targets.expand(starts.shape[0]) if targets.dim() == 0 else targets
    if layer == INPUT:
        path_options.setdefault("bounds", (0.0, 1.0))
    return connect_in_layer(classifier, layer, starts, ends, targets, PathOptions(**path_options))


def connect_in_layer(
    classifier: nn.Module,
    layer: str,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    options: PathOptions,
    on_record: Callable[[int, PairRecord], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[PairRecord]:
    """Split ``classifier`` at ``layer``, map the image pairs there and decide them.

    Args:
        classifier: As in :func:`connect`.
        layer: As in :func:`connect`.
        starts: ``(pairs, C, H, W)`` images; the work runs on their device.
        ends: Same shape.
        targets: ``(pairs,)`` target classes.
        options: Path options, used as given.
        on_record: See :func:`connectivity.verdicts.connect_points`.
        on_progress: See :func:`connectivity.verdicts.connect_points`.
    """
    head, tail = split(classifier, layer)
    head, tail = head.to(starts.device), tail.to(starts.device)
    with torch.no_grad():
        z_start, z_end = head(starts), head(ends)
    return connect_points(tail, z_start, z_end, targets, options, on_record, on_progress)
