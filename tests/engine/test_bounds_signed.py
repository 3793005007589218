"""Signed affine layers in bound propagation (engine/bounds.py, issue 21): the centre-radius
form ``A C -+ |A| R`` of :func:`connectivity.engine.bounds._signed` against the direct
``A+ L + A- U`` (the layer run with the positive / negative part of its weight) on random
convolutions, linear layers and batch norms with random lines; on dyadic weights and lines,
where float64 computes both exactly, the widened bounds enclose the exact ones."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from connectivity.engine.bounds import _Lines, _signed, bound_program
from connectivity.engine.exact import AFFINE, INPUT

pytestmark = pytest.mark.usefixtures("one_thread")


def _layers() -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Layers with random weights, bias and running statistics, and their input shape (the
    linear layer and the convolution of one pixel run as their matrices, the others as
    themselves)."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(6)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.1, 3.0)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    return [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (4, 7, 7)),
        (nn.Conv2d(3, 5, 2, bias=False), (3, 5, 5)),
        (nn.Linear(9, 7), (2, 9)),
        (nn.Conv2d(8, 6, 3, padding=1), (8, 1, 1)),  # a pixel: run as its matrix
        (norm, (6, 3, 3)),
    ]


def _through(layer: nn.Module, lines: _Lines) -> tuple[_Lines, _Lines, Tensor]:
    """``(centre-radius lines, direct lines, |terms|)``: ``_signed`` on the traced layer, the
    direct ``A+ L + A- U + c`` (``c`` the layer at zero) and the size of the terms of each
    output (the layer with ``|weight|`` on ``|lw| + |lb| + |uw| + |ub|``, plus ``|c|``)."""
    program = bound_program(nn.Sequential(layer).eval())
    step = next(s for s in program.steps if s.kind == AFFINE)
    source = next(s.node for s in program.steps if s.kind == INPUT)
    ours = _signed(step.node, step, program.module, {source: lines})
    module = copy.deepcopy(program.module.get_submodule(str(step.node.target)))
    weight = module.weight.detach().clone()
    offset = module(torch.zeros_like(lines.lb))
    with torch.no_grad():
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
        if hasattr(module, "running_mean"):
            module.running_mean.zero_()

    def part(w: Tensor) -> nn.Module:
        with torch.no_grad():
            module.weight.copy_(w)
        return copy.deepcopy(module)

    pos, neg, size = part(weight.clamp(min=0)), part(weight.clamp(max=0)), part(weight.abs())
    direct = _Lines(
        pos(lines.lw) + neg(lines.uw),
        pos(lines.lb) + neg(lines.ub) + offset,
        pos(lines.uw) + neg(lines.lw),
        pos(lines.ub) + neg(lines.lb) + offset,
    )
    terms = size(lines.lw.abs() + lines.lb.abs() + lines.uw.abs() + lines.ub.abs())
    return ours, direct, terms + offset.abs()


@pytest.mark.parametrize("index", range(5))
def test_centre_radius_equals_the_positive_and_negative_parts(index: int) -> None:
    """Random lines (upper ones above the lower on ``[0, 1]``, slopes of either sign): every
    line part within 1e-10 of the size of its terms of the direct one, the widening included;
    the slopes are not widened."""
    layer, shape = _layers()[index]
    generator = torch.Generator().manual_seed(index)
    lw, lb, dw = (torch.randn(5, *shape, generator=generator, dtype=torch.float64) for _ in "abc")
    gap = torch.rand(5, *shape, generator=generator, dtype=torch.float64) + dw.abs()
    lines = _Lines(lw, lb, lw + dw, lb + gap)
    with torch.no_grad():
        ours, direct, terms = _through(layer, lines)
    mine_parts = (ours.lw, ours.lb, ours.uw, ours.ub)
    for mine, theirs in zip(mine_parts, (direct.lw, direct.lb, direct.uw, direct.ub), strict=True):
        assert ((mine - theirs).abs() <= 1e-10 * terms).all()
    assert (ours.lb <= direct.lb).all() and (ours.ub >= direct.ub).all()


@pytest.mark.parametrize("index", range(4))
def test_dyadic_lines_are_enclosed_exactly(index: int) -> None:
    """Weights, bias and lines on grids of powers of two (float64 sums them exactly): the
    slopes equal the exact ones, the intercepts enclose them strictly where the terms are not
    all zero."""
    layer, shape = _layers()[index]
    generator = torch.Generator().manual_seed(10 + index)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randint(-8, 9, p.shape, generator=generator) / 8)

    def grid() -> Tensor:
        return torch.randint(-64, 65, (5, *shape), generator=generator).double() / 4

    lines = _Lines(grid(), grid(), grid(), grid())
    with torch.no_grad():
        ours, direct, terms = _through(layer, lines)
    assert torch.equal(ours.lw, direct.lw) and torch.equal(ours.uw, direct.uw)
    moved = terms > 0
    assert (ours.lb[moved] < direct.lb[moved]).all() and (ours.ub[moved] > direct.ub[moved]).all()
    assert ((direct.lb - ours.lb) <= 1e-10 * terms).all()
