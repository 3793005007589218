"""``fill_loop``: the loop question (is a loop of same-class inputs filled by a surface that
keeps the class?) from a plain Python call (issue 22)."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor, nn

from connectivity.api import class_points
from connectivity.engine.checks import Certifier
from connectivity.engine.decisions import PairRecord
from connectivity.engine.options import SurfaceOptions
from connectivity.engine.search import connect_points
from connectivity.engine.split import FrozenTail
from connectivity.engine.surfaces import SurfaceRecord, fill_loops

PATH_VERDICTS = ("linear", "nonlinear")
NO_LOOP = "no-loop"


def open_loop_record(target: int, sides: list[PairRecord]) -> SurfaceRecord:
    """The record of a loop with a side without a path (verdict ``none`` or ``diverged``):
    verdict ``"no-loop"``, no surface, and the certificate of its first open side."""
    empty = torch.zeros(0)
    open_sides = [i for i, r in enumerate(sides) if r.verdict not in PATH_VERDICTS]
    return SurfaceRecord(
        verdict=NO_LOOP,
        status=NO_LOOP,
        certificate=sides[open_sides[0]].certificate,
        target=target,
        size=len(sides),
        min_margin=math.nan,
        min_margin_lower_bound=math.nan,
        planar_min_margin=math.nan,
        points=empty,
        flat=empty,
        uv=torch.zeros(0, 2, dtype=torch.float64),
        triangles=torch.zeros(0, 3, dtype=torch.long),
        fixed=torch.zeros(0, dtype=torch.bool),
        corners=torch.zeros(0, dtype=torch.long),
        steps=0,
        refinements=0,
        vertices=0,
        triangles_proved=0,
        triangles_sampled=0,
        triangles_failed=0,
        triangles_undecided=0,
        moved_max=math.nan,
        moved_mean=math.nan,
        moved_ratio=math.nan,
        note="no path found for side(s) " + ", ".join(str(i) for i in open_sides),
    )


def loop_from_sides(records: list[PairRecord]) -> tuple[Tensor, list[int], bool]:
    """The closed polyline of a loop from its sides' records (side ``i`` from input ``i`` to
    input ``i + 1``, the last back to input 0): ``(loop (B, *point_shape) without repeating
    its first point, the input's index in it, whether every side is straight)``.

    Raises:
        ValueError: a side without a path (verdict ``none`` or ``diverged``).
    """
    pieces, corners = [], []
    for i, record in enumerate(records):
        if record.verdict not in PATH_VERDICTS:
            raise ValueError(f"side {i} has no path (verdict {record.verdict!r})")
        corners.append(sum(p.shape[0] for p in pieces))
        pieces.append(record.path[:-1])
    straight = all(r.verdict == "linear" for r in records)
    return torch.cat(pieces), corners, straight


def _warn_degenerate(points: Tensor) -> None:
    """Warn when the loop's points (``(k, *point_shape)``) coincide or lie on one line: its
    fill then has no area (a ``planar`` verdict holds for a segment or a point)."""
    flat = points.detach().flatten(1).double()
    centre = flat.mean(dim=0)
    u, v = flat - centre, flat.roll(-1, dims=0) - centre
    # Twice each fan triangle's area, squared (Gram determinant), against the loop's size.
    area = (u * u).sum(1) * (v * v).sum(1) - (u * v).sum(1) ** 2
    size = float(torch.cdist(flat, flat).max()) ** 4
    if bool((area <= 1e-12 * size).all()):  # every angle below about 1e-6 rad
        warnings.warn(
            "the inputs coincide or lie on one line: the loop encloses no area, so its fill is "
            "a segment or a point (give inputs that span a plane)",
            stacklevel=3,
        )


def fill_loop(
    classifier: nn.Module,
    layer: str,
    inputs: Tensor,
    target: int,
    *,
    output: Hashable | None = None,
    pixel_range: tuple[float, float] | None = (0.0, 1.0),
    **surface_options: Any,
) -> SurfaceRecord:
    """Is the loop ``inputs[0] -> inputs[1] -> ... -> inputs[0]`` filled by a surface, in
    ``layer``'s space, on which every point keeps the class ``target``?

    The loop is the chain of its sides' paths, each decided as :func:`connectivity.connect`
    decides a pair (the straight line where it stays in the class, the band's path otherwise).
    Where every side is straight, the flat fill (the fan of triangles from the inputs' centroid)
    is checked first (``planar``); otherwise, or where it leaves the class, a membrane relaxes
    the fan of the loop (the 2-D analogue of the band: :mod:`connectivity.engine.surfaces`),
    and triangles found off the class are subdivided, up to ``max_vertices``.

    Args:
        classifier: As in :func:`connectivity.connect` (copied, never changed).
        layer: ``"input"`` or a layer name (:func:`connectivity.layer_names`).
        inputs: ``(k, *input_shape)`` inputs of one class, ``k >= 3``, in loop order (images in
            [0, 1], or ``uint8``).
        target: Their class (one integer).
        output: As in :func:`connectivity.connect`.
        pixel_range: As in :func:`connectivity.connect`; in the input space of images it is the
            default ``bounds``, the box of the sides' bands and of the membrane's vertices.
        **surface_options: Fields of :class:`connectivity.engine.options.SurfaceOptions` (the
            path options of the sides, and the membrane's).

    Returns:
        A :class:`connectivity.engine.surfaces.SurfaceRecord`: ``verdict`` (``planar``,
        ``curved``, ``none``: no surface found, not a proof that none exists, ``diverged``, or
        ``no-loop``: a side has no path), the ``certificate`` it rests on (``exact``, ``bounds``
        or ``sampled``), the lowest margin over the surface, the mesh (``points``,
        ``triangles``: every point of every triangle keeps the class under the certificate),
        and the sides' :class:`PairRecord` in ``pairs``.

    Raises:
        InputError: fewer than 3 inputs, inputs :func:`connectivity.connect` refuses, or a
            target that is not one class of the classifier.
        OptionsError: an invalid option.
        LayerError: as in :func:`connectivity.connect`.
        NotPiecewiseLinearError, NotBoundedError: ``certify`` ``"exact"`` (``"bounds"``) with a
            tail it cannot check, before any work.
    """
    z, tail, options, target = class_points(
        classifier, layer, inputs, target, SurfaceOptions, surface_options, output, pixel_range, 3
    )
    k = z.shape[0]
    targets = torch.full((k,), target, dtype=torch.long, device=z.device)
    frozen = FrozenTail(copy.deepcopy(tail)).to(z.device)
    # certify="exact"/"bounds" on a tail it cannot check fails here, before any work.
    certifier = Certifier.for_tail(frozen, options, z[:1])
    _warn_degenerate(z)
    sides = connect_points(frozen, z, z.roll(-1, dims=0), targets, options)
    if any(r.verdict not in PATH_VERDICTS for r in sides):
        record = open_loop_record(target, sides)
    else:
        loop, corners, straight = loop_from_sides(sides)
        (record,) = fill_loops(
            frozen,
            [loop.to(z.device)],
            [corners],
            targets[:1],
            torch.tensor([straight]),
            options,
            certifier.check_triangles if certifier.proves else None,
        )
    record.pairs = sides
    return record
