"""``plane_map``: the plane through three inputs coloured by the class a classifier predicts.

The picture researchers draw to look at decision regions (dbViz: Somepalli et al., "Can Neural
Nets Learn the Same Model Twice? Investigating Reproducibility and Double Descent from the
Decision Boundary Perspective", CVPR 2022). Several classifiers on one plane give one map each
and how far they agree, as dbViz compares models. The plane and its grid are
:mod:`connectivity.engine.planes`; the figure is
:func:`connectivity.reporting.surface_figures.plane_map_figure`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from connectivity.api import as_class, as_inputs, encode_pairs
from connectivity.engine.options import _checked_int, _checked_number
from connectivity.engine.planes import Plane, class_map, grid_axes, grid_coordinates, plane_basis
from connectivity.engine.search import check_range
from connectivity.engine.split import INPUT, split
from connectivity.errors import InputError


@dataclass(frozen=True)
class PlaneMap:
    """The plane through three inputs, coloured by predicted class, per classifier.

    Coordinates are in the layer's own units: distances in the plane are Euclidean distances
    between the layer's values (flattened). Pixel ``(i, j)`` of a map is the point at ``(u[j],
    v[i])``; its first axis runs from input 0 to input 1, its second towards input 2.

    Attributes:
        u: ``(W,)`` float64 grid values along the first axis.
        v: ``(H,)`` float64 grid values along the second.
        classes: ``(M, H, W)`` long: the class each of the ``M`` classifiers predicts (-1 where
            its logits are not finite).
        margins: ``(M, H, W)`` float64: the predicted class's margin (top logit minus the
            second), or with ``target`` the target's margin (``logit[target] - max_{k !=
            target} logit[k]``, negative off the target).
        corners: ``(3, 2)`` float64: the three inputs' coordinates (``(0, 0)``, ``(|x1 - x0|,
            0)``, then the third with a positive second coordinate).
        input_classes: ``(M, 3)`` long: each classifier's class at the three inputs.
        agreement: ``(H, W)`` float64: the fraction of the other classifiers whose class there
            is the first's (all ones for one classifier).
        pairwise: ``(M, M)`` float64: the fraction of the grid where classifiers ``i`` and ``j``
            predict the same class (dbViz's reproducibility score of the pair on this plane).
        layer: The layer the plane lies in.
        target: The class of the margins, or None.
    """

    u: Tensor
    v: Tensor
    classes: Tensor
    margins: Tensor
    corners: Tensor
    input_classes: Tensor
    agreement: Tensor
    pairwise: Tensor
    layer: str
    target: int | None


def plane_map(
    classifier: nn.Module | Sequence[nn.Module],
    layer: str,
    inputs: Tensor | Sequence[Tensor],
    *,
    resolution: int = 64,
    padding: float = 0.25,
    target: int | None = None,
    pixel_range: tuple[float, float] | None = (0.0, 1.0),
    output: Hashable | None = None,
    chunk_size: int = 1024,
) -> PlaneMap:
    """The plane through three inputs, in ``layer``'s space, coloured by predicted class.

    In a hidden layer the plane is the one through the three inputs' values there, and its
    points are given to the rest of the network (they need not be the values of any input).
    Several classifiers are compared in the input space only, where their planes are one.

    Args:
        classifier: A classifier as :func:`connectivity.connect` takes it, or a sequence of
            them with the same classes. Each is copied, never changed, whatever its mode,
            device or dtype.
        layer: ``"input"`` or a layer name (see :func:`connectivity.engine.split.layer_names`).
        inputs: ``(3, *input_shape)``, or a sequence of three ``(*input_shape)`` tensors:
            floating images in ``pixel_range`` or ``uint8`` (0..255), or vectors. Not changed.
        resolution: Grid points along each axis (``>= 2``).
        padding: Fraction of the inputs' span along each axis added on each side (``>= 0``).
        target: None for the margin of the predicted class, or a class for its margin.
        pixel_range: The range images (4-D batches) must lie in, as in ``connect``; None
            accepts any values. Grid points past the inputs may leave it: they are not clamped
            (a clamped plane is no plane).
        output: For a classifier returning a tuple or dict, the index or key of its logits.
        chunk_size: Most grid points per forward (bounds memory).

    Returns:
        A :class:`PlaneMap`.

    Raises:
        InputError: not exactly three inputs of one shape, non-finite values, images outside
            ``pixel_range``, three inputs (or their layer values) on one line, several
            classifiers in a hidden layer or with different classes, a target that is no class.
        OptionsError: ``resolution``, ``padding`` or ``chunk_size`` out of range.
        LayerError: as in ``connect`` (a layer that is no cut, no logits, batch dependence).
    """
    models = _as_classifiers(classifier)
    points = _three_inputs(inputs)
    if points.dim() == 4 and pixel_range is not None:
        check_range(points, points, pixel_range, "pixel_range")
    resolution = _checked_int(resolution, "resolution", 2)
    padding = _checked_number(padding, "padding", positive=False)
    chunk_size = _checked_int(chunk_size, "chunk_size", 1)
    target = None if target is None else as_class(target)
    if len(models) > 1 and layer != INPUT:
        raise InputError(
            f"several classifiers are compared in the input space only (each has its own "
            f"{layer!r} space, so their planes differ); give layer='input' or one classifier"
        )
    if layer == INPUT:
        plane_basis(*points)  # collinear inputs are refused before any network work
    tails, values = zip(*(_encoded(m, layer, points, target, output) for m in models), strict=True)
    _same_classes(tails, values)
    plane = plane_basis(*values[0])
    u, v = grid_axes(plane.corners, resolution, padding)
    maps = [_classes_on(tail, plane, u, v, target, chunk_size) for tail in tails]
    classes = torch.stack([c for c, _ in maps])
    firsts = [class_map(tail, z, target)[0] for tail, z in zip(tails, values, strict=True)]
    return PlaneMap(
        u=u,
        v=v,
        classes=classes,
        margins=torch.stack([m for _, m in maps]),
        corners=plane.corners,
        input_classes=torch.stack(firsts),
        agreement=_agreement(classes),
        pairwise=_pairwise(classes),
        layer=layer,
        target=target,
    )


def _as_classifiers(classifier: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(classifier, nn.Module) and not isinstance(classifier, nn.ModuleList):
        return [classifier]
    models = list(classifier) if isinstance(classifier, (Sequence, nn.ModuleList)) else []
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise InputError(
            f"classifier must be an nn.Module or a sequence of them, got {classifier!r:.80}"
        )
    return models


def _three_inputs(inputs: Tensor | Sequence[Tensor]) -> Tensor:
    """The three inputs as one floating ``(3, *input_shape)`` batch (a new tensor or the
    caller's, never changed)."""
    if isinstance(inputs, Tensor):
        shape = tuple(inputs.shape)
        points = as_inputs(inputs, "inputs")
        if points.shape[0] != 3 or inputs.dim() in (1, 3):
            raise InputError(
                f"inputs has shape {shape}; give three inputs (3, *input_shape), e.g. "
                "(3, C, H, W) images or (3, features) vectors"
            )
        return points
    if not isinstance(inputs, Sequence) or len(inputs) != 3:
        count = len(inputs) if isinstance(inputs, Sequence) else type(inputs).__name__
        raise InputError(f"give three inputs (a (3, *input_shape) tensor), got {count}")
    singles = [as_inputs(x, f"inputs[{k}]") for k, x in enumerate(inputs)]
    shapes = {tuple(x.shape) for x in singles}
    if len(shapes) != 1 or next(iter(shapes))[0] != 1:
        shown = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise InputError(f"the three inputs have shapes {shown}; give three of one input shape")
    return torch.cat(singles)


def _encoded(
    classifier: nn.Module, layer: str, points: Tensor, target: int | None, output: Hashable | None
) -> tuple[nn.Module, Tensor]:
    """The classifier's tail after ``layer`` and the inputs' values there, as ``connect``
    takes them (its own eval-mode copy, on the inputs' device, the split probed)."""
    head, tail = split(classifier, layer, output=output)
    head, tail = head.to(points.device), tail.to(points.device)
    targets = torch.full((3,), 0 if target is None else target, device=points.device)
    values, _ = encode_pairs(head, tail, points, points, targets)
    return tail, values


def _same_classes(tails: Sequence[nn.Module], values: Sequence[Tensor]) -> None:
    with torch.no_grad():
        counts = [int(tail(z[:1]).shape[1]) for tail, z in zip(tails, values, strict=True)]
    if len(set(counts)) > 1:
        raise InputError(
            f"the classifiers give {counts} logits: their maps compare classes, so give "
            "classifiers of the same classes"
        )


def _classes_on(
    tail: nn.Module, plane: Plane, u: Tensor, v: Tensor, target: int | None, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """``(H, W)`` classes and margins of the grid, ``chunk_size`` points at a time (the whole
    grid of large inputs would not fit in memory)."""
    coordinates = grid_coordinates(u, v)
    parts = [
        class_map(tail, plane.points(coordinates[k : k + chunk_size]), target, chunk_size)
        for k in range(0, coordinates.shape[0], chunk_size)
    ]
    shape = (v.shape[0], u.shape[0])
    classes = torch.cat([c for c, _ in parts]).view(shape)
    return classes, torch.cat([m for _, m in parts]).view(shape)


def _agreement(classes: Tensor) -> Tensor:
    if classes.shape[0] == 1:
        return torch.ones(classes.shape[1:], dtype=torch.float64)
    return (classes[1:] == classes[0]).double().mean(dim=0)


def _pairwise(classes: Tensor) -> Tensor:
    flat = classes.flatten(1)
    return (flat.unsqueeze(0) == flat.unsqueeze(1)).double().mean(dim=2)
