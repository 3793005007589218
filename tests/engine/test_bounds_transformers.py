"""``certify="bounds"`` on tails no exact check covers (issue 21): torchvision's ViT and Swin
(random weights, 16x16 images) proved `linear` through both the attention rewrite
(engine/decompose.py) and bound propagation, checked against dense sampling; a smooth sliver
(LayerNorm and GELU) across a line that the sampled check misses is never proved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer

from connectivity import connect, connect_points
from connectivity.engine.bounds import prove_segments
from connectivity.engine.decisions import Verdict
from connectivity.engine.options import PathOptions
from connectivity.engine.split import split
from tests.engine.test_exact import _dense_margins

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=4,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model.eval()


def _swin() -> nn.Module:
    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[2, 2],
        num_classes=4,
    )
    return model.eval()


@pytest.mark.parametrize(
    ("build", "layer"),
    [
        (_vit, "input"),
        (_vit, "encoder.layers.encoder_layer_0.add"),
        (_swin, "input"),
        (_swin, "features.1"),
    ],
)
def test_a_transformer_line_is_proved_linear_by_bounds(build, layer: str) -> None:
    model = build()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 16, 16)
    near = torch.lerp(images[0], images[1], 0.1)  # a line short enough to stay in its class
    with torch.no_grad():
        target = int(model(images[:1]).argmax())
    (record,) = connect(model, layer, images[0], near, target, certify="bounds", steps=0)
    assert record.verdict == Verdict.LINEAR and record.certificate == "bounds"
    assert record.line_sub_intervals >= 1
    head, tail = split(model, layer)
    with torch.no_grad():
        start, end = head(images[:1]), head(near[None])
    dense = _dense_margins(tail, start[0], end[0], target, 10_001)
    assert float(dense.min()) > 0  # what was proved holds at every sampled point
    assert record.line_min_margin_lower_bound <= float(dense.min()) + 1e-6


class SmoothSliver(nn.Module):
    """Points ``(x, y)``: class 1 on a smooth bump ``|x - c| < w / 2`` or so, class 0
    elsewhere. The bump is GELU's second difference ``b = g(s + 1) - 2 g(s) + g(s - 1)``, ``s =
    (x - c) / w``, and the class-1 logit is ``LayerNorm([b, 0, 1/2])[0] - LayerNorm([1/2, 0,
    1/2])[0]``: positive where ``b > 1/2`` (LayerNorm's first output grows with ``b``)."""

    def __init__(self, c: float = 0.0123, w: float = 1e-3) -> None:
        super().__init__()
        self.c, self.w = c, w
        self.norm = nn.LayerNorm(3, elementwise_affine=False)

    def forward(self, z: Tensor) -> Tensor:
        s = (z[:, :1] - self.c) / self.w
        bump = F.gelu(s + 1) - 2 * F.gelu(s) + F.gelu(s - 1)
        zero = torch.zeros_like(bump)
        features = self.norm(torch.cat([bump, zero, zero + 0.5], dim=1))
        threshold = 2**-0.5  # LayerNorm([1/2, 0, 1/2])[0] = (1/6) / sqrt(1/18)
        return torch.cat([zero, features[:, :1] - threshold], dim=1)


def test_a_smooth_sliver_across_a_line_is_never_proved() -> None:
    net = SmoothSliver().double()
    start = torch.tensor([[-1.0, 0.1]], dtype=torch.float64)
    end = torch.tensor([[1.0, 0.1]], dtype=torch.float64)
    dense = _dense_margins(net, start[0], end[0], 0, 10_001)
    assert float(dense.min()) < 0  # the line does leave class 0, on the bump
    sampled = PathOptions(num_pivots=8, steps=0, certify="sampled")
    (record,) = connect_points(net, start, end, torch.tensor([0]), sampled)
    assert record.verdict == Verdict.LINEAR  # the sampled check misses it
    bounds = sampled.with_values(certify="bounds")
    (record,) = connect_points(net, start, end, torch.tensor([0]), bounds)
    assert record.verdict != Verdict.LINEAR and record.certificate == "bounds"
    ((position, _),) = record.line_off_target_intervals.tolist()
    assert abs(2 * position - 1 - 0.0123) < 1e-3  # on the bump
    for budget in (0, 1, 4, 16, 64):  # never proved, whatever the budget
        proof = prove_segments(net, start, end, torch.tensor([0]), max_splits=budget)
        assert proof.status[0] != "proved"
