"""``connect``: the path question for any classifier, from a plain Python call."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from connectivity.engine.checks import on_target
from connectivity.engine.decisions import PairRecord
from connectivity.engine.graph import ClassComponents, Pair, check_graph_options, search_components
from connectivity.engine.options import PathOptions
from connectivity.engine.search import check_range, connect_points
from connectivity.engine.split import INPUT, floating_dtype, probe_split, split
from connectivity.errors import InputError


def as_inputs(x: Tensor, name: str) -> Tensor:
    """Validate one or a batch of inputs and convert them to floats, never in place.

    ``uint8`` images (0..255) become floats in [0, 1]; other floating dtypes are kept (the
    band's working precision is chosen later). A single input (a vector ``(features,)`` or an
    image ``(C, H, W)``) gets a batch dimension; other shapes are taken as batches.

    Raises:
        InputError: not a tensor, an integer dtype other than uint8, or non-finite values.
    """
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise InputError(
            f"{name} has dtype {x.dtype}; give floating images in [0, 1] (or uint8 in 0..255)"
        )
    if x.dim() == 0:
        raise InputError(f"{name} is a scalar; give an input (features,) or (C, H, W)")
    if x.dim() in (1, 3):
        x = x.unsqueeze(0)
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch {tuple(x.shape)}; give at least one input")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} holds NaN or infinite values")
    return x


def as_targets(target: int | Sequence[int] | Tensor, pairs: int) -> Tensor:
    """Target classes as a ``(pairs,)`` long tensor.

    Takes Python and numpy integers, sequences and arrays of them, and integer tensors.

    Raises:
        InputError: a target that is not an integer (a float such as 5.7, a bool) or a shape
            that is neither one target nor one per pair.
    """
    if isinstance(target, bool):
        raise InputError(f"target must be integer class indices, got {target!r}")
    if isinstance(target, numbers.Integral):
        targets = torch.tensor(int(target))
    else:
        try:
            targets = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InputError(f"target must be integer class indices, got {target!r}") from error
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            shown = f"dtype {targets.dtype}" if isinstance(target, Tensor) else repr(target)
            raise InputError(f"target must be integer class indices, got {shown}")
    targets = targets.long()
    if targets.dim() == 0:
        targets = targets.expand(pairs)
    if targets.shape != (pairs,):
        raise InputError(
            f"target has shape {tuple(targets.shape)}; give one class or one per pair ({pairs},)"
        )
    return targets


def check_targets(targets: Tensor, num_classes: int) -> None:
    """Raise :class:`InputError` unless every target is a class of a ``num_classes`` model."""
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise InputError(
            f"target {int(bad[0])} is not a class of the classifier, which has {num_classes} "
            f"classes (0..{num_classes - 1})"
        )


def connect(
    classifier: nn.Module,
    layer: str,
    x_start: Tensor,
    x_end: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    output: Hashable | None = None,
    pixel_range: tuple[float, float] | None = (0.0, 1.0),
    **path_options: Any,
) -> list[PairRecord]:
    """Is each pair of inputs joined by a path, in ``layer``'s space, that keeps the target class?

    Args:
        classifier: Any ``nn.Module`` returning logits ``(B, classes)`` (or
            ``(B, classes, 1, 1)``) that torch.fx can trace (a ClassifierModule's ``network``,
            a torchvision model, a tabular MLP...). It is copied, never changed, whatever its
            mode, device or dtype.
        layer: ``"input"`` or a layer name (see :func:`connectivity.engine.split.layer_names`).
        x_start: First inputs, ``(pairs, *input_shape)``, or one image ``(C, H, W)`` or one
            vector ``(features,)``. Floating images lie in [0, 1]; ``uint8`` images (0..255)
            are converted to [0, 1]. Any floating dtype: the band itself runs in float32
            (float64 for float64 inputs).
        x_end: Second inputs, same shape.
        target: The class the path must keep: one integer for all pairs or one per pair.
        output: For a classifier that returns a tuple or dict, the index or key of the logits.
        pixel_range: The range images (4-D batches) must lie in, whatever the layer: the
            classifier's input convention, (0, 1) here. None accepts any values (inputs already
            normalised, say). In the input space it is also the default ``bounds``.
        **path_options: Fields of :class:`connectivity.engine.options.PathOptions`. In the input
            space of images ``bounds`` defaults to ``pixel_range`` so every point stays an
            image; other inputs get no box unless one is given.

    Returns:
        One :class:`connectivity.engine.decisions.PairRecord` per pair: the verdicts (``verdict`` by
        the check ``certificate`` names, ``exact``, ``bounds`` or ``sampled``; ``pivot_verdict``
        as the paper checks), the path in the layer's space, the softmax at every path point and
        the path metrics.

    Raises:
        InputError: inputs of another dtype, shape or range (e.g. float images in 0..255),
            targets that are not classes of the model.
        OptionsError: an invalid path option.
        LayerError: a layer that is no cut, a model whose output is not logits, or one whose
            logits of a point depend on the rest of its batch (``BatchDependenceError``, e.g.
            BatchNorm with ``track_running_stats=False``).
    """
    starts, ends = as_inputs(x_start, "x_start"), as_inputs(x_end, "x_end")
    if starts.shape != ends.shape:
        raise InputError(f"x_start {tuple(starts.shape)} and x_end {tuple(ends.shape)} differ")
    targets = as_targets(target, starts.shape[0]).to(starts.device)
    images = starts.dim() == 4
    if images and pixel_range is not None:
        check_range(starts, ends, pixel_range, "pixel_range")
    if layer == INPUT and images and pixel_range is not None:
        path_options.setdefault("bounds", pixel_range)
    options = PathOptions.from_dict(path_options)
    records = connect_in_layer(classifier, layer, starts, ends, targets, options, output=output)
    _warn_ends_outside_the_class(records)
    return records


def _warn_ends_outside_the_class(records: list[PairRecord]) -> None:
    """Warn about pairs whose ends the classifier does not put in the target class: no path
    inside the class can join them, whatever the search does (their verdict is ``none``)."""
    off = []
    for k, record in enumerate(records):
        ends = record.line_probabilities[[0, -1]]
        predicted = ends.argmax(dim=-1).tolist()
        # As the path check counts it: the end is on target only where the target's
        # probability is strictly the highest.
        others = ends.clone()
        others[:, record.target] = -1.0
        on = (ends[:, record.target] > others.amax(dim=-1)).tolist()
        for name, is_on, c in zip(("x_start", "x_end"), on, predicted, strict=True):
            if not is_on:
                off.append(f"pair {k}: {name} is classified as class {c}, not {record.target}")
    if off:
        shown = "; ".join(off[:6]) + (f"; and {len(off) - 6} more" if len(off) > 6 else "")
        warnings.warn(
            f"{shown}. No path inside the target class can join such ends, so these pairs end "
            "'none': give inputs the classifier puts in the target class (check with "
            "classifier(x).argmax(dim=1))",
            stacklevel=3,
        )


@torch.no_grad()
def encode_pairs(
    head: nn.Module, tail: nn.Module, starts: Tensor, ends: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """The pairs' ends in the layer's space, after one probe forward checks the split.

    The head runs in the model's own dtype (the input space's head is the identity: its points
    stay exactly as given); float64 inputs or a float64 model give float64 points, so the band
    runs in float64.

    Args:
        head: As :func:`connectivity.engine.split.split` returns it, on the inputs' device.
        tail: Likewise.
        starts: ``(pairs, *input_shape)`` floating inputs.
        ends: Same shape.
        targets: ``(pairs,)`` target classes.

    Raises:
        InputError: a target that is not a class of the classifier.
        LayerError: see :func:`connectivity.engine.split.probe_split`.
    """
    dtype = floating_dtype(head) or starts.dtype
    probe = probe_split(head, tail, starts[:1].to(dtype))
    check_targets(targets, probe.num_classes)
    z_start, z_end = head(starts.to(dtype)), head(ends.to(dtype))
    if torch.float64 in (starts.dtype, z_start.dtype):
        z_start, z_end = z_start.double(), z_end.double()
    return z_start, z_end


def connect_in_layer(
    classifier: nn.Module,
    layer: str,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    options: PathOptions,
    on_record: Callable[[int, PairRecord], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    output: Hashable | None = None,
) -> list[PairRecord]:
    """Split ``classifier`` at ``layer``, map the input pairs there and decide them.

    One probe forward checks the split (one tensor at the layer, ``(B, classes)`` logits) and
    the targets before any path work.

    Args:
        classifier: As in :func:`connect` (copied, never changed).
        layer: As in :func:`connect`.
        starts: ``(pairs, *input_shape)`` floating inputs; the work runs on their device.
        ends: Same shape.
        targets: ``(pairs,)`` target classes.
        options: Path options, used as given.
        on_record: See :func:`connectivity.engine.search.connect_points`.
        on_progress: See :func:`connectivity.engine.search.connect_points`.
        output: As in :func:`connect`.

    Raises:
        InputError: a target that is not a class of the classifier.
        LayerError: see :func:`connectivity.engine.split.split` and
            :func:`connectivity.engine.split.probe_split`.
    """
    head, tail = split(classifier, layer, output=output)
    head, tail = head.to(starts.device), tail.to(starts.device)
    z_start, z_end = encode_pairs(head, tail, starts, ends, targets)
    return connect_points(tail, z_start, z_end, targets, options, on_record, on_progress)


def as_class(target: Any) -> int:
    """One class index (Python, numpy or 0-d integer tensor) as an ``int``.

    Raises:
        InputError: anything else (a float, a bool, a list or a tensor of several classes).
    """
    if isinstance(target, Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = target.item()
    if isinstance(target, bool) or not isinstance(target, numbers.Integral):
        raise InputError(
            f"target must be one integer class (all inputs are of that class), got {target!r}"
        )
    return int(target)


def pairwise_distances(points: Tensor) -> list[list[float]]:
    """``(N, N)`` Euclidean distances between ``(N, *point_shape)`` points (flattened), in the
    points' own units, computed in float64 so that near ties order the same on every device."""
    flat = points.detach().flatten(1).double()
    return torch.cdist(flat, flat).cpu().tolist()


def warn_outside_the_class(tail: nn.Module, points: Tensor, target: int, chunk_size: int) -> None:
    """Warn about inputs the classifier does not put in ``target``: no path inside the class
    reaches them, so each ends up a component of its own that is not part of the class."""
    with torch.no_grad():
        log_p = torch.cat(
            [
                tail(points[i : i + chunk_size]).log_softmax(dim=-1)
                for i in range(0, len(points), chunk_size)
            ]
        )
    index = torch.full((len(points),), target, dtype=torch.long, device=log_p.device)
    outside = (~on_target(log_p.unsqueeze(1), index).squeeze(1)).nonzero().squeeze(1).tolist()
    if outside:
        predicted = log_p.argmax(dim=-1)
        shown = ", ".join(f"{i} (class {int(predicted[i])})" for i in outside[:10])
        more = f" and {len(outside) - 10} more" if len(outside) > 10 else ""
        warnings.warn(
            f"inputs {shown}{more} are not classified as class {target}: no path inside the "
            "class reaches them, so each will be a component of its own; leave them out for the "
            "components of the class (`connectivity graph` with include_misclassified reports "
            "how such inputs connect to the class they are classified as)",
            stacklevel=3,
        )


def class_points(
    classifier: nn.Module,
    layer: str,
    inputs: Tensor,
    target: Any,
    kind: type[PathOptions],
    values: dict[str, Any],
    output: Hashable | None,
    pixel_range: tuple[float, float] | None,
    least: int = 1,
) -> tuple[Tensor, nn.Module, Any, int]:
    """Inputs of one class in ``layer``'s space, for the questions about several inputs of a
    class (:func:`connect_all`, :func:`connectivity.fill_loop`), validated as :func:`connect`
    validates them, before any work.

    Args:
        classifier, layer, output, pixel_range: As in :func:`connect`.
        inputs: ``(N, *input_shape)``, ``N >= least``.
        target: Their class (one integer).
        kind: The options' class (:class:`PathOptions` or a subclass), built from ``values``;
            in the input space of images ``bounds`` defaults to ``pixel_range``.
        least: The fewest inputs the question takes.

    Returns:
        ``(z, tail, options, target)``: the inputs' values at the layer ``(N, *point_shape)``,
        the classifier's tail there (a copy), the options and the class.

    Raises:
        InputError: inputs :func:`connect` refuses, fewer than ``least``, or a target that is
            not one class of the classifier.
        OptionsError: an invalid option.
        LayerError: as in :func:`connect`.

    Warns:
        UserWarning: naming the inputs the classifier does not put in ``target``.
    """
    points = as_inputs(inputs, "inputs")
    if points.shape[0] < least:
        raise InputError(
            f"inputs holds {points.shape[0]} input(s); this takes at least {least} "
            "(N, *input_shape)"
        )
    target = as_class(target)
    if points.dim() == 4 and pixel_range is not None:
        check_range(points, points, pixel_range, "pixel_range")
    if layer == INPUT and points.dim() == 4 and pixel_range is not None:
        values.setdefault("bounds", pixel_range)
    options = kind.from_dict(values)
    head, tail = split(classifier, layer, output=output)
    head, tail = head.to(points.device), tail.to(points.device)
    targets = torch.full((points.shape[0],), target, dtype=torch.long, device=points.device)
    z, _ = encode_pairs(head, tail, points, points[:1], targets)
    warn_outside_the_class(tail, z, target, options.chunk_size)
    return z, tail, options, target


def connect_all(
    classifier: nn.Module,
    layer: str,
    inputs: Tensor,
    target: int,
    *,
    output: Hashable | None = None,
    pixel_range: tuple[float, float] | None = (0.0, 1.0),
    round_size: int | None = None,
    max_tries: int | None = None,
    known: dict[Pair, PairRecord] | None = None,
    on_record: Callable[[Pair, PairRecord], None] | None = None,
    **path_options: Any,
) -> ClassComponents[PairRecord]:
    """The connected components of ``N`` inputs of one class, in ``layer``'s space.

    Two inputs are joined when :func:`connect` finds a path between them that keeps the class;
    components are the transitive closure of the joined pairs. Not every pair is decided:
    candidate pairs go from near to far (Euclidean distance in ``layer``'s space), a pair whose
    ends already share a component is skipped, and the pairs of each round are decided in one
    batched band call (see :mod:`connectivity.engine.graph`). With ``max_tries=None`` the components
    are those that deciding all ``N (N - 1) / 2`` pairs would give, for far fewer pairs when
    the class holds together.

    Args:
        classifier: As in :func:`connect` (copied, never changed).
        layer: ``"input"`` or a layer name.
        inputs: ``(N, *input_shape)`` inputs of the class (images in [0, 1], or ``uint8``).
        target: Their class (one integer).
        output: As in :func:`connect`.
        pixel_range: As in :func:`connect`.
        round_size: Most pairs per round (None: no limit; bounds the band's memory).
        max_tries: Most failed pairs between two components before they are left apart
            (None: no limit).
        known: ``{(i, j): record}`` decided earlier (e.g. by a run that stopped); not decided
            again.
        on_record: Called as ``on_record((i, j), record)`` the moment a pair is decided.
        **path_options: Fields of :class:`connectivity.engine.options.PathOptions`.

    Returns:
        :class:`connectivity.engine.graph.ClassComponents` with ``components`` (lists of input
        indices, largest first), ``edges`` and ``failed`` (``{(i, j): PairRecord}``) and the
        ``rounds``. Inputs in different components are not connected by the paths tried.

    Raises:
        InputError: inputs that :func:`connect` refuses, or a target that is not one class of
            the classifier.

    Warns:
        UserWarning: naming the inputs (and their classes) that the classifier does not put in
            ``target``: each can only be a component of its own.
        OptionsError: an invalid path option, ``round_size`` or ``max_tries``.
        LayerError: as in :func:`connect`.
    """
    check_graph_options(round_size, max_tries)
    z, tail, options, target = class_points(
        classifier, layer, inputs, target, PathOptions, path_options, output, pixel_range
    )

    def decide(pairs: list[Pair]) -> list[PairRecord]:
        first = torch.tensor([i for i, _ in pairs], device=z.device)
        second = torch.tensor([j for _, j in pairs], device=z.device)
        report = None if on_record is None else (lambda k, r: on_record(pairs[k], r))
        same = torch.full((len(pairs),), target, dtype=torch.long, device=z.device)
        return connect_points(tail, z[first], z[second], same, options, report)

    return search_components(
        pairwise_distances(z), decide, known=known, round_size=round_size, max_tries=max_tries
    )
