"""Tests of connectivity.engine.decompose: attention rewritten into primitive operations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, fx, nn
from torchvision.models import swin_transformer

from connectivity.engine.decompose import DecompositionError, _difference, decompose
from connectivity.engine.exact import _trace
from connectivity.engine.split import FrozenTail, LayerError, layer_names, split

pytestmark = pytest.mark.usefixtures("one_thread")

# Calls that must not survive decomposition (opaque to bound propagation).
_OPAQUE_FUNCTIONS = {
    F.scaled_dot_product_attention,
    F.multi_head_attention_forward,
    swin_transformer.shifted_window_attention,
    swin_transformer._patch_merging_pad,
    torchvision.ops.stochastic_depth,
}
_OPAQUE_MODULES = (
    nn.MultiheadAttention,
    torchvision.ops.StochasticDepth,
    swin_transformer.ShiftedWindowAttention,
)


def _vit(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    network = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    return network.to(dtype).eval()


def _swin(dtype: torch.dtype, v2: bool = False) -> nn.Module:
    torch.manual_seed(0)
    extra = {}
    if v2:
        extra = {
            "block": swin_transformer.SwinTransformerBlockV2,
            "downsample_layer": swin_transformer.PatchMergingV2,
        }
    network = swin_transformer.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=24,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=10,
        stochastic_depth_prob=0.2,  # StochasticDepth with p > 0: the identity in eval
        **extra,
    )
    return network.to(dtype).eval()


def _close(got: Tensor, expected: Tensor) -> bool:
    """Equal up to float rounding of the dtype: 1,000 epsilons of the largest value."""
    got, expected = got.detach(), expected.detach()
    scale = 1.0 + float(expected.abs().max())
    return float((got - expected).abs().max()) <= 1e3 * torch.finfo(expected.dtype).eps * scale


def _opaque_nodes(traced: fx.GraphModule) -> list[str]:
    """The nodes of a traced program that bound propagation could not look into."""
    found = []
    for node in traced.graph.nodes:
        if node.op == "call_function" and node.target in _OPAQUE_FUNCTIONS:
            found.append(node.name)
        module = traced.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, _OPAQUE_MODULES):
            found.append(node.name)
    return found


def _snapshot(network: nn.Module) -> tuple[dict[str, Tensor], list[bool]]:
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    return state, [m.training for m in network.modules()]


def _check_tail(network: nn.Module, layer: str, dtype: torch.dtype) -> None:
    """Split at ``layer``, decompose the tail and check: same logits on fresh random points
    (another batch size), torch.fx traceable by exact.py, no opaque node, tail unchanged."""
    head, tail = split(network, layer)
    with torch.no_grad():
        example = head(torch.randn(2, 3, 32, 32, dtype=dtype))
    before = _snapshot(tail)
    with torch.no_grad():
        expected_example = tail(example)
    decomposed = decompose(tail, example)
    assert isinstance(decomposed, FrozenTail)
    traced = _trace(decomposed.network)
    assert _opaque_nodes(traced) == [], layer
    points = example[:1] + torch.randn(5, *example.shape[1:], dtype=dtype)
    with torch.no_grad():
        assert _close(decomposed(points), tail(points)), layer
        assert _close(traced(points), tail(points)), layer
        assert torch.equal(tail(example), expected_example)
    after = _snapshot(tail)
    assert after[1] == before[1]
    assert all(torch.equal(after[0][k], v) for k, v in before[0].items())


_VIT_CUTS = ["input", "encoder.layers.encoder_layer_0.add", "encoder.layers.encoder_layer_1"]
_SWIN_CUTS = ["features.0", "features.1.0.add", "features.3.0"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vit_tails_decompose(dtype: torch.dtype) -> None:
    network = _vit(dtype)
    # The tail as split leaves it: multi-head attention that torch.fx cannot trace.
    _, tail = split(network, _VIT_CUTS[0])
    with pytest.raises(LayerError, match="MultiheadAttention"):
        _trace(tail.network)
    for layer in _VIT_CUTS:
        _check_tail(network, layer, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_swin_tails_decompose(dtype: torch.dtype) -> None:
    network = _swin(dtype)
    for layer in _SWIN_CUTS:
        _check_tail(network, layer, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("make", [_vit, _swin, lambda d: _swin(d, v2=True)])
def test_every_cut_decomposes(make, dtype: torch.dtype) -> None:
    network = make(dtype)
    for layer in layer_names(network)[:-1]:
        _check_tail(network, layer, dtype)


def test_swin_v2_tail_decomposes() -> None:
    _check_tail(_swin(torch.float64, v2=True), "features.0", torch.float64)


def test_whole_network_unchanged_and_decomposed() -> None:
    """A plain (not split) network: decomposed as a whole; the caller's copy untouched."""
    network = _vit(torch.float64)
    network.heads.train()  # a training flag that must survive
    before = _snapshot(network)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    network.eval()
    with torch.no_grad():
        expected = network(x)
    network.heads.train()
    decomposed = decompose(network, x)
    assert _opaque_nodes(_trace(decomposed)) == []
    after = _snapshot(network)
    assert after[1] == before[1]
    assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
    network.eval()
    with torch.no_grad():
        assert torch.equal(network(x), expected)
        assert _close(decomposed(x), expected)


class _Attend(nn.Module):
    """One multi-head attention of its input with itself, as ViT calls it."""

    def __init__(self, attention: nn.MultiheadAttention, need_weights: bool = False) -> None:
        super().__init__()
        self.attention = attention
        self.need_weights = need_weights

    def forward(self, x: Tensor) -> Tensor:
        # points (B, L, E); a layer without batch_first takes (L, B, E)
        x = x if self.attention.batch_first else x.transpose(0, 1)
        out, weights = self.attention(x, x, x, need_weights=self.need_weights)
        out = out if self.attention.batch_first else out.transpose(0, 1)
        return out + weights.sum((-1, -2))[:, None, None] if self.need_weights else out


@pytest.mark.parametrize(
    ("batch_first", "bias", "need_weights"),
    [(True, True, False), (False, True, False), (True, False, True), (False, False, True)],
)
def test_multihead_attention_variants(batch_first: bool, bias: bool, need_weights: bool) -> None:
    torch.manual_seed(1)
    attention = nn.MultiheadAttention(6, 3, bias=bias, batch_first=batch_first)
    network = _Attend(attention.double().eval(), need_weights)
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    decomposed = decompose(network, x)
    assert _opaque_nodes(_trace(decomposed)) == []
    y = x[:1] + torch.randn(3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        assert _close(decomposed(y), network(y))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kdim": 4, "vdim": 4}, "kdim or vdim"),
        ({"add_bias_kv": True}, "add_bias_kv"),
        ({"add_zero_attn": True}, "add_zero_attn"),
        ({"unbatched": True}, "unbatched"),
    ],
)
def test_multihead_attention_refusals(options: dict, message: str) -> None:
    unbatched = options.pop("unbatched", False)
    attention = nn.MultiheadAttention(6, 3, batch_first=True, **options).eval()

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = attention
            self.memory = nn.Parameter(torch.randn(1, 2, options.get("kdim", 6)))

        def forward(self, x: Tensor) -> Tensor:
            if unbatched:  # one sequence (L, E): the points would be its tokens
                return self.attention(x, x, x, need_weights=False)[0]
            memory = self.memory.expand(x.shape[0], -1, -1)
            return self.attention(x, memory, memory, need_weights=False)[0]

    with pytest.raises(DecompositionError, match=rf"MultiheadAttention.*{message}"):
        decompose(Cross(), torch.randn(3, 6) if unbatched else torch.randn(2, 3, 6))


def test_masked_multihead_attention_refused() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(6, 2, batch_first=True)
            self.register_buffer("mask", torch.ones(3, 3, dtype=torch.bool).triu(1))

        def forward(self, x: Tensor) -> Tensor:
            return self.attention(x, x, x, attn_mask=self.mask, need_weights=False)[0]

    with pytest.raises(DecompositionError, match=r"module attention.*attn_mask"):
        decompose(Masked().eval(), torch.randn(2, 3, 6))


class _Sdpa(nn.Module):
    """Self-attention through F.scaled_dot_product_attention, heads split by reshape."""

    def __init__(self, mask: str = "", scale: float | None = None, dropout: float = 0.0):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.mask, self.scale, self.dropout = mask, scale, dropout
        self.register_buffer("allowed", torch.rand(5, 5) > 0.3)
        self.allowed[:, 0] = True  # every query attends somewhere
        self.register_buffer("additive", torch.randn(2, 5, 5))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).reshape(-1, 5, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        mask = {"bool": self.allowed, "float": self.additive}.get(self.mask)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout,
            is_causal=self.mask == "causal",
            scale=self.scale,
        )
        return out.transpose(1, 2).reshape(-1, 5, 8)


@pytest.mark.parametrize(
    ("mask", "scale"), [("", None), ("causal", None), ("bool", 0.3), ("float", None)]
)
def test_scaled_dot_product_attention(mask: str, scale: float | None) -> None:
    torch.manual_seed(2)
    network = _Sdpa(mask, scale).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    decomposed = decompose(network, x)
    traced = _trace(decomposed)
    assert _opaque_nodes(traced) == []
    targets = {node.target for node in traced.graph.nodes}
    assert F.softmax in targets and torch.matmul in targets
    y = torch.randn(4, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        assert _close(traced(y), network(y))


def test_scaled_dot_product_attention_by_hand() -> None:
    """One head, one query, two keys: softmax of the scaled scores, worked out by hand."""

    class One(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=x.dtype)
            return F.scaled_dot_product_attention(x, keys, keys)

    x = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)
    decomposed = decompose(One(), x)
    first = math.exp(2.0 / math.sqrt(2.0))
    expected = torch.tensor([[[first, 1.0]]], dtype=torch.float64) / (first + 1.0)
    assert _close(decomposed(x), expected)


def test_dropout_in_attention_refused() -> None:
    with pytest.raises(DecompositionError, match=r"scaled_dot_product_attention.*dropout_p"):
        decompose(_Sdpa(dropout=0.5).eval(), torch.randn(2, 5, 8))


def test_stochastic_depth_in_training_refused() -> None:
    network = nn.Sequential(nn.Linear(3, 3), torchvision.ops.StochasticDepth(0.5, "row"))
    assert _close(
        decompose(network.eval(), torch.randn(2, 3))(torch.ones(1, 3)), network(torch.ones(1, 3))
    )
    with pytest.raises(DecompositionError, match=r"StochasticDepth.*training"):
        decompose(network.train(), torch.randn(2, 3))


def test_subclass_with_own_forward_is_not_replaced() -> None:
    """A MultiheadAttention subclass with a forward of its own computes something else: it is
    not rewritten as the library layer (here torch.fx then cannot trace it: refused later)."""

    class Doubled(nn.MultiheadAttention):
        def forward(self, *args, **kwargs):  # type: ignore[override]
            out, weights = super().forward(*args, **kwargs)
            return 2 * out, weights

    network = _Attend(Doubled(6, 2, batch_first=True).eval())
    decomposed = decompose(network, torch.randn(2, 3, 6))
    assert not isinstance(decomposed, fx.GraphModule)
    assert isinstance(decomposed.attention, Doubled) and decomposed is not network


def test_network_without_attention_is_a_plain_copy() -> None:
    network = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    decomposed = decompose(network, torch.randn(2, 3))
    assert decomposed is not network and isinstance(decomposed, nn.Sequential)
    assert decomposed[0].weight is not network[0].weight
    assert torch.equal(decomposed[0].weight, network[0].weight)


def test_difference_known_answers() -> None:
    a = torch.tensor([1.0, 2.0, float("-inf")], dtype=torch.float64)
    assert _difference(a, a.clone()) is None
    assert _difference(a, a + torch.tensor([0.0, 1e-14, 0.0], dtype=torch.float64)) is None
    assert "differ by up to" in str(_difference(a, a + torch.tensor([0.0, 1e-6, 0.0])))
    assert "infinite" in str(_difference(a, torch.tensor([1.0, 2.0, 0.0])))
    assert "shape" in str(_difference(a, a[:2]))
    assert "outputs" in str(_difference((a, None), (a,)))
    assert "NoneType" in str(_difference((a, a), (a, None)))


@pytest.mark.slow  # importing timm alone takes about a second
def test_timm_vision_transformer_tail() -> None:
    """timm's Attention calls F.scaled_dot_product_attention: rewritten as matmul / softmax."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    network = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        num_heads=2,
        embed_dim=32,
        num_classes=10,
    ).eval()
    _check_tail(network.double(), "blocks.0", torch.float64)


@pytest.mark.slow
def test_swin_t_tail() -> None:
    """torchvision's swin_t (random weights) at 64x64: windows of 7 padded, shifts dropped."""
    torch.manual_seed(4)
    network = torchvision.models.swin_t(num_classes=10).eval()
    head, tail = split(network, "features.4")
    with torch.no_grad():
        example = head(torch.randn(2, 3, 64, 64))
    decomposed = decompose(tail, example)
    assert _opaque_nodes(_trace(decomposed.network)) == []
    points = example[:1] + torch.randn(3, *example.shape[1:])
    with torch.no_grad():
        assert _close(decomposed(points), tail(points))


def test_mask_computed_from_the_points_is_caught() -> None:
    """A boolean mask is specialised to the example's; one that depends on the points differs
    on other points, which the final check of the whole network finds."""

    class PointMask(nn.Module):
        def forward(self, x: Tensor) -> Tensor:  # x (B, 4, 8)
            keys = x[:, 1:, 0] > 0  # key 0 always takes part: no row is all -inf
            mask = torch.cat([torch.ones_like(keys[:, :1]), keys], dim=1)[:, None, None, :]
            q = x.unsqueeze(1)
            return F.scaled_dot_product_attention(q, q, q, attn_mask=mask).squeeze(1)

    torch.manual_seed(5)
    with pytest.raises(DecompositionError, match="does not compute what it computes"):
        decompose(PointMask(), torch.randn(2, 4, 8, dtype=torch.float64))


@pytest.mark.parametrize(
    ("norm_first", "activation", "batch_first", "stack"),
    [(False, "relu", True, False), (True, "gelu", False, False), (False, "gelu", True, True)],
)
def test_transformer_encoder(norm_first: bool, activation: str, batch_first: bool, stack: bool):
    """PyTorch's encoder layer (and encoder), whose fast-path checks torch.fx cannot trace."""
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(
        8, 2, 16, activation=activation, norm_first=norm_first, batch_first=batch_first
    )
    block: nn.Module = layer
    if stack:
        block = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8), enable_nested_tensor=False)

    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = block

        def forward(self, x: Tensor) -> Tensor:  # x (B, L, E)
            x = x if batch_first else x.transpose(0, 1)
            x = self.block(x)
            return (x if batch_first else x.transpose(0, 1)).mean(1)

    network = Tail().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with pytest.raises(LayerError, match="TransformerEncoder"):
        _trace(network)  # as PyTorch writes it
    decomposed = decompose(network, x)
    assert _opaque_nodes(_trace(decomposed)) == []
    y = x[:1] + torch.randn(4, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        assert _close(decomposed(y), network(y))
    with pytest.raises(DecompositionError, match="training mode with dropout"):
        decompose(network.train(), x)


def test_forward_set_on_the_instance_is_not_replaced() -> None:
    attention = nn.MultiheadAttention(6, 2, batch_first=True).eval()
    library = attention.forward
    attention.forward = lambda *args, **kwargs: (2 * library(*args, **kwargs)[0], None)
    network = _Attend(attention)
    decomposed = decompose(network, torch.randn(2, 3, 6))
    assert not isinstance(decomposed, fx.GraphModule)  # left as it is (not traceable)
