"""Rewrite the attention of a tail into primitive operations, for bound propagation (issue 21).

Pure PyTorch (torch.fx), no Lightning. Bound propagation (:mod:`connectivity.engine.bounds`)
traces a tail with torch.fx and bounds it operation by operation. Attention does not trace into
such operations: ``nn.MultiheadAttention`` runs ``F.multi_head_attention_forward``, whose
control flow reads its inputs; torchvision's Swin calls the ``torch.fx.wrap``-ped functions
``shifted_window_attention`` and ``_patch_merging_pad``; timm's ``Attention`` and others call
``F.scaled_dot_product_attention``; torchvision's ``StochasticDepth`` calls the wrapped
``stochastic_depth``; ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` check their
inputs for a fast path. Each would be one opaque node, or stop torch.fx.

:func:`decompose` returns a copy of the network (traced with torch.fx) in which every such call
is replaced by a module written only in primitive operations: ``nn.Linear`` / ``F.linear``,
``reshape`` / ``view`` / ``permute`` / ``transpose``, ``torch.matmul``, products with constants,
``F.softmax``, additions of constant masks and biases, ``torch.roll`` / ``F.pad`` with constant
arguments, indexing and ``torch.cat`` (Swin V2's cosine attention adds squares, sums, ``sqrt``,
``clamp``, ``exp`` and divisions). Each replacement is specialised to the shapes the call saw
on an example (window partitions, padding, shift masks are then constants, and no control flow
on shapes remains), except the batch dimension, which stays free (``-1`` in reshapes), so the
result runs on any number of points.

What a call computes is decided by what it does, not by its name alone: modules are replaced
only when they run their library class's own ``forward`` with no hooks, and every replacement
is checked against the original call on the example's arguments and on random variations of its
point-dependent arguments, then the whole decomposed network against the original one on random
points (another batch size than the example's). A replacement that differs by more than
:data:`TOLERANCE_EPSILONS` machine epsilons of its dtype (relative to the largest value
compared) raises :class:`DecompositionError` naming the call.

Sources: the attention being rewritten is Vaswani et al., "Attention Is All You Need", NeurIPS
2017 (scaled dot-product and multi-head attention, as PyTorch implements it in
``F.multi_head_attention_forward``); Liu et al., "Swin Transformer", ICCV 2021 and "Swin
Transformer V2", CVPR 2022 (shifted windows, relative position bias, cosine attention), as
torchvision implements them. Bounding these operations is the business of bounds.py (Shi et
al., "Robustness Verification for Transformers", ICLR 2020; Bonaert et al., DeepT, PLDI 2021).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, fx, nn
from torchvision.models import swin_transformer

from connectivity.engine.exact import _Tracer
from connectivity.engine.split import FrozenTail, LayerError, floating_dtype

__all__ = ["TOLERANCE_EPSILONS", "DecompositionError", "decompose"]

# A replacement agrees with the original when they differ by at most this many machine epsilons
# of the compared dtype, times (1 + the largest absolute value compared): the two compute the
# same sums in other orders (PyTorch's fused attention kernels against matmul / softmax), so
# they differ by rounding only, a few epsilons per operation.
TOLERANCE_EPSILONS = 1024.0
# Random variations of a call's point-dependent arguments tried per replacement.
_VARIATIONS = 2
_SEED = 20211


class DecompositionError(LayerError):
    """An attention call that cannot be rewritten into primitive operations (an option not
    covered), or whose rewriting does not compute what the call computes."""


# ---------------------------------------------------------------------------------------------
# Replacements written in primitive operations


def _split_heads(x: Tensor, length: int, heads: int, width: int) -> Tensor:
    """``(B, length, heads * width)`` to ``(B, heads, length, width)``; B stays free (sizes are
    constants: reading ``x.shape`` would put size nodes into the traced program)."""
    return x.reshape(-1, length, heads, width).transpose(1, 2)


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    """``softmax(scale q k^T + bias) v`` over the last two dimensions.

    Shapes: ``q (..., L, E)``, ``k (..., S, E)``, ``v (..., S, Ev)``, ``bias`` broadcasting to
    ``(..., L, S)``; returns ``(..., L, Ev)``. The scale multiplies ``q`` (a product with a
    constant) before the product of two point-dependent values.
    """
    scores = torch.matmul(q * scale, k.transpose(-2, -1))
    if bias is not None:
        scores = scores + bias
    return torch.matmul(F.softmax(scores, dim=-1), v)


def _linear_copy(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``weight (out, in)`` and ``bias (out,)``."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer = layer.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.requires_grad_(weight.requires_grad)
    return layer


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (no masks, ``kdim == vdim == embed_dim``, no ``bias_k`` /
    ``bias_v``, no zero attention, eval) on inputs of fixed lengths, in primitive operations.

    Inputs as the layer takes them: ``(B, L, E)`` with ``batch_first``, ``(L, B, E)`` without
    (an unbatched ``(L, E)`` is refused: the batch is the points'); returns ``(output, weights
    or None)`` like the layer, the weights ``(B, L, S)`` (averaged over heads) or
    ``(B, heads, L, S)`` when asked for.
    """

    def __init__(self, layer: nn.MultiheadAttention, call: inspect.BoundArguments) -> None:
        super().__init__()
        embed, heads = layer.embed_dim, layer.num_heads
        weight, bias = layer.in_proj_weight, layer.in_proj_bias
        parts = [(weight[i * embed : (i + 1) * embed], bias) for i in range(3)]
        self.q, self.k, self.v = (
            _linear_copy(w, None if b is None else b[i * embed : (i + 1) * embed])
            for i, (w, b) in enumerate(parts)
        )
        self.out = _linear_copy(layer.out_proj.weight, layer.out_proj.bias)
        query, key = call.arguments["query"], call.arguments["key"]
        self.batch_first = layer.batch_first
        self.length = query.shape[1 if self.batch_first else 0]
        self.source = key.shape[1 if self.batch_first else 0]
        self.heads, self.embed = heads, embed
        self.scale = float(embed // heads) ** -0.5
        self.need_weights = bool(call.arguments["need_weights"])
        self.average = bool(call.arguments["average_attn_weights"])

    def _batch_first(self, x: Tensor) -> Tensor:
        return x if self.batch_first else x.transpose(0, 1)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor | None]:
        # The remaining arguments (no masks, need_weights...) were fixed when this was built.
        width = self.embed // self.heads
        q = _split_heads(self.q(self._batch_first(query)), self.length, self.heads, width)
        k = _split_heads(self.k(self._batch_first(key)), self.source, self.heads, width)
        v = _split_heads(self.v(self._batch_first(value)), self.source, self.heads, width)
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1))
        weights = F.softmax(scores, dim=-1)  # (B, heads, L, S)
        x = torch.matmul(weights, v).transpose(1, 2).reshape(-1, self.length, self.embed)
        x = self.out(x)
        x = x if self.batch_first else x.transpose(0, 1)
        if not self.need_weights:
            return x, None
        return x, weights.mean(dim=1) if self.average else weights


def _sdpa_signature(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> None:
    """The signature of ``F.scaled_dot_product_attention`` (a builtin, which ``inspect`` cannot
    read)."""


class ScaledDotProductAttention(nn.Module):
    """``F.scaled_dot_product_attention`` (no dropout, no grouped-query attention) on inputs of
    fixed last two dimensions, in primitive operations.

    Shapes: ``query (..., L, E)``, ``key (..., S, E)``, ``value (..., S, Ev)``; ``attn_mask``
    broadcasting to ``(..., L, S)``, boolean (True: takes part) or added; returns
    ``(..., L, Ev)``. A causal or boolean mask is a constant buffer of 0 and -inf.
    """

    def __init__(self, call: inspect.BoundArguments) -> None:
        super().__init__()
        query, key = call.arguments["query"], call.arguments["key"]
        given = call.arguments["scale"]
        self.scale = float(given) if given is not None else 1.0 / math.sqrt(query.shape[-1])
        shape, like = (query.shape[-2], key.shape[-2]), query
        bias: Tensor | None = None
        if call.arguments["is_causal"]:
            allowed = torch.ones(shape, dtype=torch.bool, device=query.device).tril()
            bias = _additive(allowed, like)
        mask = call.arguments["attn_mask"]
        self.boolean_mask = mask is not None and mask.dtype == torch.bool
        if self.boolean_mask:
            # A constant (a mask computed from the points would fail decompose's final check
            # on other points): added as 0 / -inf in the query's dtype.
            bias = _additive(mask, like)
        self.register_buffer("bias", bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        # dropout_p (0), is_causal, boolean masks (the buffer) and scale were fixed when this
        # was built; a float mask is added as the call gives it.
        bias = self.bias
        if attn_mask is not None and not self.boolean_mask:
            bias = attn_mask if bias is None else bias + attn_mask
        return _attend(query, key, value, self.scale, bias)


def _additive(allowed: Tensor, like: Tensor) -> Tensor:
    """A boolean mask (True: takes part) as a bias of 0 and -inf in ``like``'s dtype."""
    bias = torch.zeros(allowed.shape, dtype=like.dtype, device=like.device)
    return bias.masked_fill(allowed.logical_not(), float("-inf"))


def _shift_mask(
    padded: tuple[int, int], window: list[int], shift: list[int], like: Tensor
) -> Tensor:
    """Swin's attention mask of shifted windows ``(1, windows, 1, N, N)``: -100 between tokens
    of different regions of the rolled map, 0 within a region (torchvision's construction)."""
    pad_h, pad_w = padded
    mask = like.new_zeros((pad_h, pad_w))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    for count, (h, w) in enumerate((h, w) for h in h_slices for w in w_slices):
        mask[h[0] : h[1], w[0] : w[1]] = count
    mask = mask.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    return mask.unsqueeze(1).unsqueeze(0)


_SHIFTED_SIGNATURE = inspect.signature(swin_transformer.shifted_window_attention)


class ShiftedWindowAttention(nn.Module):
    """torchvision's ``shifted_window_attention`` (Swin V1, and V2 with ``logit_scale``) on an
    input ``(B, H, W, C)`` of fixed ``H, W, C``, in eval, as primitive operations.

    Padding to whole windows, the cyclic shift, the window partition and its shift mask are
    constants read off the example call; the weights, the relative position bias
    ``(1, heads, N, N)`` (``N`` tokens per window) and V2's logit scale come in as arguments,
    as the original function takes them. Returns ``(B, H, W, C)``.
    """

    def __init__(self, call: inspect.BoundArguments) -> None:
        super().__init__()
        arguments = call.arguments
        x = arguments["input"]
        _, self.height, self.width, self.channels = x.shape
        self.window = [int(s) for s in arguments["window_size"]]
        self.heads = int(arguments["num_heads"])
        self.pad_right = (self.window[1] - self.width % self.window[1]) % self.window[1]
        self.pad_bottom = (self.window[0] - self.height % self.window[0]) % self.window[0]
        self.padded = (self.height + self.pad_bottom, self.width + self.pad_right)
        # torchvision does not shift along a side no longer than one window
        self.shift = [
            0 if w >= p else int(s)
            for w, p, s in zip(self.window, self.padded, arguments["shift_size"], strict=True)
        ]
        mask = None
        if sum(self.shift) > 0:
            mask = _shift_mask(self.padded, self.window, self.shift, x)
        self.register_buffer("mask", mask)
        self.cosine = arguments["logit_scale"] is not None
        keep = None
        if self.cosine and arguments["qkv_bias"] is not None:
            # V2 drops the key's bias: multiply by a constant 1 / 0 / 1 pattern (no writes)
            keep = torch.ones_like(arguments["qkv_bias"]).view(3, -1)
            keep[1] = 0
            keep = keep.flatten()
        self.register_buffer("keep", keep)

    def _windows(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` to windows ``(B * windows, N, C)``."""
        if self.pad_right or self.pad_bottom:
            x = F.pad(x, (0, 0, 0, self.pad_right, 0, self.pad_bottom))
        if sum(self.shift) > 0:
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        (ph, pw), (wh, ww), c = self.padded, self.window, self.channels
        x = x.view(-1, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, wh * ww, c)

    def _merge(self, x: Tensor) -> Tensor:
        """Windows ``(B * windows, N, C)`` back to ``(B, H, W, C)``."""
        (ph, pw), (wh, ww), c = self.padded, self.window, self.channels
        x = x.view(-1, ph // wh, pw // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, ph, pw, c)
        if sum(self.shift) > 0:
            x = torch.roll(x, shifts=(self.shift[0], self.shift[1]), dims=(1, 2))
        if self.pad_right or self.pad_bottom:
            x = x[:, : self.height, : self.width, :]
        return x

    def _scores(self, q: Tensor, k: Tensor, logit_scale: Tensor | None) -> Tensor:
        """Attention scores ``(B * windows, heads, N, N)`` before bias and mask."""
        if logit_scale is None:
            return torch.matmul(q * (self.channels // self.heads) ** -0.5, k.transpose(-2, -1))
        # V2's cosine attention: F.normalize(., dim=-1) is x / max(|x|, 1e-12)
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True)).clamp(min=1e-12)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True)).clamp(min=1e-12)
        scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        return torch.matmul(q, k.transpose(-2, -1)) * scale

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Takes the arguments of ``shifted_window_attention``; window_size, num_heads,
        shift_size and dropout (0 in eval) were fixed when this was built."""
        call = _SHIFTED_SIGNATURE.bind(*args, **kwargs)
        call.apply_defaults()
        a = call.arguments
        return self._attend(
            a["input"],
            a["qkv_weight"],
            a["proj_weight"],
            a["relative_position_bias"],
            a["qkv_bias"],
            a["proj_bias"],
            a["logit_scale"],
        )

    def _attend(
        self,
        input: Tensor,
        qkv_weight: Tensor,
        proj_weight: Tensor,
        relative_position_bias: Tensor,
        qkv_bias: Tensor | None,
        proj_bias: Tensor | None,
        logit_scale: Tensor | None,
    ) -> Tensor:
        x = self._windows(input)
        n, c, heads = self.window[0] * self.window[1], self.channels, self.heads
        if self.keep is not None and qkv_bias is not None:
            qkv_bias = qkv_bias * self.keep
        qkv = F.linear(x, qkv_weight, qkv_bias).reshape(-1, n, 3, heads, c // heads)
        # (windows, 3, heads, n, c / heads): the points stay on the first dimension, in blocks,
        # which is how bound propagation reads which sub-interval a row belongs to.
        qkv = qkv.permute(0, 2, 3, 1, 4)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        scores = self._scores(q, k, logit_scale) + relative_position_bias
        if self.mask is not None:
            windows = (self.padded[0] // self.window[0]) * (self.padded[1] // self.window[1])
            scores = (scores.view(-1, windows, heads, n, n) + self.mask).view(-1, heads, n, n)
        x = torch.matmul(F.softmax(scores, dim=-1), v).transpose(1, 2).reshape(-1, n, c)
        return self._merge(F.linear(x, proj_weight, proj_bias))


class TransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (no masks, eval) on ``src`` of fixed length, with its
    self-attention as :class:`MultiheadAttention`; its own linear layers, norms and activation
    are kept. Post-norm ``x = norm1(x + sa(x)); x = norm2(x + ff(x))`` or, with
    ``norm_first``, pre-norm ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``, where ``ff(x) =
    linear2(activation(linear1(x)))`` (dropout is the identity in eval). ``src`` and the result
    are ``(B, L, E)`` with ``batch_first``, ``(L, B, E)`` without."""

    def __init__(self, layer: nn.TransformerEncoderLayer, src: Tensor, name: str) -> None:
        super().__init__()
        attention = _MODULE_KINDS[nn.MultiheadAttention].signature.bind(
            src, src, src, need_weights=False
        )
        attention.apply_defaults()
        self.self_attn = _build_multihead(layer.self_attn, attention, f"{name}, its self_attn")
        self.linear1, self.linear2 = layer.linear1, layer.linear2
        self.norm1, self.norm2 = layer.norm1, layer.norm2
        self.activation = layer.activation  # a module or a function such as F.relu
        self.norm_first = layer.norm_first

    def _attend(self, x: Tensor) -> Tensor:
        return self.self_attn(x, x, x)[0]

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.activation(self.linear1(x)))

    def forward(self, src: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # no masks (refused when built)
        x = src
        if self.norm_first:
            x = x + self._attend(self.norm1(x))
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x))
        return self.norm2(x + self._feed_forward(x))


class TransformerEncoder(nn.Module):
    """``nn.TransformerEncoder`` (no masks, eval): its layers as
    :class:`TransformerEncoderLayer`, one after the other, then its norm if it has one."""

    def __init__(self, encoder: nn.TransformerEncoder, src: Tensor, name: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _build_encoder_layer(layer, src, f"{name}, its layer {i}")
            for i, layer in enumerate(encoder.layers)
        )
        self.norm = encoder.norm

    def forward(self, src: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x)
        return x if self.norm is None else self.norm(x)


class PatchMergingPad(nn.Module):
    """torchvision's ``_patch_merging_pad`` on ``(..., H, W, C)`` of fixed ``H, W``: pad to even
    sides, then the four interleaved quarters side by side, ``(..., H/2, W/2, 4C)``."""

    def __init__(self, call: inspect.BoundArguments) -> None:
        super().__init__()
        height, width = call.arguments["x"].shape[-3:-1]
        self.pad = (0, 0, 0, width % 2, 0, height % 2)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        quarters = [
            x[..., 0::2, 0::2, :],
            x[..., 1::2, 0::2, :],
            x[..., 0::2, 1::2, :],
            x[..., 1::2, 1::2, :],
        ]
        return torch.cat(quarters, -1)


class StochasticDepthInEval(nn.Module):
    """Stochastic depth in eval mode (or with ``p == 0``): returns its input."""

    def forward(self, input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return input


# ---------------------------------------------------------------------------------------------
# Which calls are replaced, and by what


def _refuse(name: str, reasons: list[str]) -> None:
    """Raise :class:`DecompositionError` naming the call when any reason holds."""
    if reasons:
        raise DecompositionError(
            f"{name} cannot be rewritten into primitive operations for bound propagation: "
            f"{'; '.join(reasons)}"
        )


def _build_multihead(layer: Any, call: inspect.BoundArguments, name: str) -> nn.Module:
    arguments = call.arguments
    reasons = [
        reason
        for reason, holds in (
            ("kdim or vdim differs from embed_dim", not layer._qkv_same_embed_dim),
            ("it adds bias_k / bias_v (add_bias_kv=True)", layer.bias_k is not None),
            ("it adds zero attention (add_zero_attn=True)", layer.add_zero_attn),
            ("it is in training mode with dropout", layer.training and layer.dropout > 0),
            ("it is called with a key_padding_mask", arguments["key_padding_mask"] is not None),
            ("it is called with an attn_mask", arguments["attn_mask"] is not None),
            ("it is called with is_causal=True", bool(arguments["is_causal"])),
            ("its query is unbatched, not (B, L, E) or (L, B, E)", arguments["query"].dim() != 3),
        )
        if holds
    ]
    _refuse(name, reasons)
    return MultiheadAttention(layer, call)


_MASKS = ("src_mask", "mask", "src_key_padding_mask")


def _build_encoder_layer(layer: Any, src: Tensor, name: str) -> nn.Module:
    reasons = [
        reason
        for reason, holds in (
            ("it is in training mode with dropout", layer.training and layer.dropout.p > 0),
            ("its src is not (B, L, E) or (L, B, E)", src.dim() != 3),
        )
        if holds
    ]
    _refuse(name, reasons)
    return TransformerEncoderLayer(layer, src, name)


def _build_encoder(original: Any, call: inspect.BoundArguments, name: str) -> nn.Module:
    """A :class:`TransformerEncoderLayer` or :class:`TransformerEncoder` replacement."""
    arguments = call.arguments
    masks = [m for m in _MASKS if arguments.get(m) is not None]
    _refuse(name, [f"it is called with {', '.join(masks)}"] if masks else [])
    _refuse(name, ["it is called with is_causal=True"] if arguments["is_causal"] else [])
    if isinstance(original, nn.TransformerEncoder):
        return TransformerEncoder(original, arguments["src"], name)
    return _build_encoder_layer(original, arguments["src"], name)


def _build_sdpa(function: Any, call: inspect.BoundArguments, name: str) -> nn.Module:
    arguments = call.arguments
    reasons = [
        reason
        for reason, holds in (
            ("dropout_p is not 0 (it drops at random even in eval)", arguments["dropout_p"] != 0),
            ("enable_gqa=True", bool(arguments["enable_gqa"])),
            (
                "is_causal=True with an attn_mask",
                arguments["is_causal"] and arguments["attn_mask"] is not None,
            ),
        )
        if holds
    ]
    _refuse(name, reasons)
    return ScaledDotProductAttention(call)


def _build_shifted(function: Any, call: inspect.BoundArguments, name: str) -> nn.Module:
    arguments = call.arguments
    dropout = arguments["attention_dropout"] > 0 or arguments["dropout"] > 0
    reasons = [
        reason
        for reason, holds in (
            ("it is in training mode with dropout", bool(arguments["training"]) and dropout),
            ("its input is not (B, H, W, C)", arguments["input"].dim() != 4),
        )
        if holds
    ]
    _refuse(name, reasons)
    return ShiftedWindowAttention(call)


def _build_merging(function: Any, call: inspect.BoundArguments, name: str) -> nn.Module:
    _refuse(
        name, ["its input has fewer than 3 dimensions"] if call.arguments["x"].dim() < 3 else []
    )
    return PatchMergingPad(call)


def _build_depth(original: Any, call: inspect.BoundArguments, name: str) -> nn.Module:
    arguments = call.arguments
    if isinstance(original, nn.Module):
        training, p = original.training, original.p
    else:
        training, p = arguments["training"], arguments["p"]
    _refuse(name, ["it is in training mode (it drops at random)"] if training and p > 0 else [])
    return StochasticDepthInEval()


_Builder = Callable[[Any, inspect.BoundArguments, str], nn.Module]


class _Kind:
    """How calls of one library module or function are replaced.

    Attributes:
        signature: Binds a call's arguments by name.
        build: ``(original, bound call, name) -> replacement``; raises DecompositionError.
        varied: The point-dependent arguments, varied at random to check a replacement.
    """

    def __init__(self, signature: inspect.Signature, build: _Builder, varied: tuple[str, ...]):
        self.signature, self.build, self.varied = signature, build, varied


def _method_signature(method: Callable[..., Any]) -> inspect.Signature:
    parameters = list(inspect.signature(method).parameters.values())[1:]  # without self
    return inspect.Signature(parameters)


_MODULE_KINDS: dict[type[nn.Module], _Kind] = {
    nn.MultiheadAttention: _Kind(
        _method_signature(nn.MultiheadAttention.forward),
        _build_multihead,
        ("query", "key", "value"),
    ),
    nn.TransformerEncoderLayer: _Kind(
        _method_signature(nn.TransformerEncoderLayer.forward), _build_encoder, ("src",)
    ),
    nn.TransformerEncoder: _Kind(
        _method_signature(nn.TransformerEncoder.forward), _build_encoder, ("src",)
    ),
    torchvision.ops.StochasticDepth: _Kind(
        _method_signature(torchvision.ops.StochasticDepth.forward), _build_depth, ("input",)
    ),
}
_FUNCTION_KINDS: dict[Any, _Kind] = {
    F.scaled_dot_product_attention: _Kind(
        inspect.signature(_sdpa_signature), _build_sdpa, ("query", "key", "value")
    ),
    swin_transformer.shifted_window_attention: _Kind(
        _SHIFTED_SIGNATURE, _build_shifted, ("input",)
    ),
    swin_transformer._patch_merging_pad: _Kind(
        inspect.signature(swin_transformer._patch_merging_pad), _build_merging, ("x",)
    ),
    torchvision.ops.stochastic_depth: _Kind(
        inspect.signature(torchvision.ops.stochastic_depth), _build_depth, ("input",)
    ),
}


def _module_kind(module: nn.Module) -> _Kind | None:
    """The kind of a module that runs its library class's own ``forward`` with no hooks (a
    subclass computing something of its own is left to be traced into), else None."""
    hooks = torch.nn.modules.module
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return None
    cls_of = type(module)
    if any(callable(v) and hasattr(cls_of, k) for k, v in vars(module).items()):
        return None  # a forward (or another method) replaced on the instance
    for cls, kind in _MODULE_KINDS.items():
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return kind
    return None


class _SiteTracer(_Tracer):
    """exact.py's tracer, keeping the modules replaced here as single nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _module_kind(m) is not None or super().is_leaf_module(m, module_qualified_name)


class _Site(nn.Module):
    """Stands in for one call while the example runs: records the call's arguments (copies of
    its tensors), then computes what the original computes."""

    def __init__(self, original: Any, kind: _Kind, name: str) -> None:
        super().__init__()
        self.original = original  # a module (registered as a child) or a function
        self.kind, self.name = kind, name
        self.calls: list[inspect.BoundArguments] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        copied = _map_tensors((args, kwargs), lambda t: t.detach().clone())
        self.calls.append(self.kind.signature.bind(*copied[0], **copied[1]))
        return self.original(*args, **kwargs)


def _map_tensors(value: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with each tensor in it (in tuples, lists, dicts) replaced by ``function``'s;
    one tensor met twice is mapped once (so self-attention's ``query is key`` stays true)."""
    done: dict[int, Tensor] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, Tensor):
            if id(v) not in done:
                done[id(v)] = function(v)
            return done[id(v)]
        if isinstance(v, tuple | list):
            return type(v)(walk(x) for x in v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    return walk(value)


def _sites(module: fx.GraphModule) -> dict[str, _Site]:
    """Replace each call of a module or function that :func:`decompose` rewrites by a call of a
    new :class:`_Site` submodule (named ``decomposed_<node>``); returns them by name."""
    sites: dict[str, _Site] = {}
    for node in list(module.graph.nodes):
        site: _Site | None = None
        if node.op == "call_module":
            original = module.get_submodule(str(node.target))
            kind = _module_kind(original)
            if kind is not None:
                site = _Site(original, kind, f"{type(original).__name__} (module {node.target})")
        elif node.op == "call_function" and node.target in _FUNCTION_KINDS:
            name = getattr(node.target, "__name__", str(node.target))
            site = _Site(node.target, _FUNCTION_KINDS[node.target], f"{name} (node {node.name})")
        if site is None:
            continue
        target = f"decomposed_{node.name}"
        module.add_submodule(target, site)
        with module.graph.inserting_before(node):
            call = module.graph.call_module(target, node.args, node.kwargs)
        node.replace_all_uses_with(call)
        module.graph.erase_node(node)
        sites[target] = site
    module.recompile()
    return sites


def _tolerance(expected: Tensor) -> float:
    """:data:`TOLERANCE_EPSILONS` epsilons of ``expected``'s dtype, times 1 + its largest
    finite absolute value."""
    finite = expected[torch.isfinite(expected)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    return TOLERANCE_EPSILONS * torch.finfo(expected.dtype).eps * (1.0 + largest)


def _leaves(value: Any) -> list[Any]:
    """The tensors and Nones of a (nested) output, in order."""
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for key in sorted(value, key=str) for leaf in _leaves(value[key])]
    return [value]


def _difference(expected: Any, got: Any) -> str | None:
    """Why two outputs differ (structure, shape, or values past :func:`_tolerance`), else
    None. NaN and infinite entries must sit at the same places with the same values."""
    if isinstance(got, _Failed):
        return f"it raises {got}"
    wanted, found = _leaves(expected), _leaves(got)
    if len(wanted) != len(found):
        return f"{len(found)} outputs in place of {len(wanted)}"
    for e, g in zip(wanted, found, strict=True):
        if not isinstance(e, Tensor) or not isinstance(g, Tensor):
            if (e is None) != (g is None) or isinstance(e, Tensor) or isinstance(g, Tensor):
                return f"{type(g).__name__} in place of {type(e).__name__}"
            continue
        if e.shape != g.shape:
            return f"shape {tuple(g.shape)} in place of {tuple(e.shape)}"
        if not e.is_floating_point():
            if not torch.equal(e, g):
                return "different values"
            continue
        e64, g64 = e.detach().double(), g.detach().double()
        finite = torch.isfinite(e64)
        if not torch.equal(finite, torch.isfinite(g64)) or not torch.equal(
            e64[~finite].nan_to_num(), g64[~finite].nan_to_num()
        ):
            return "NaN or infinite values at other places"
        gap = float((e64[finite] - g64[finite]).abs().max()) if finite.any() else 0.0
        if gap > _tolerance(e.detach()):
            return f"values differ by up to {gap:.3g} (tolerance {_tolerance(e.detach()):.3g})"
    return None


def _varied(
    call: inspect.BoundArguments, names: tuple[str, ...], generator: torch.Generator
) -> inspect.BoundArguments:
    """A copy of ``call`` whose point-dependent arguments ``names`` are moved at random (by
    normal noise of their own standard deviation, at least 1)."""

    def move(t: Tensor) -> Tensor:
        if not t.is_floating_point():
            return t
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        spread = max(float(t.double().std()) if t.numel() > 1 else 0.0, 1.0)
        return t + (noise * spread).to(dtype=t.dtype, device=t.device)

    moved = _map_tensors([call.arguments.get(n) for n in names], move)
    arguments = dict(call.arguments)
    arguments.update(dict(zip(names, moved, strict=True)))
    return inspect.BoundArguments(call.signature, arguments)  # type: ignore[arg-type]


def _run(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``module(*args, **kwargs)``, or a string saying why it failed (a replacement specialised
    to shapes it is then not given: :func:`_difference` reports it)."""
    try:
        return module(*args, **kwargs)
    except Exception as error:  # any failure means "does not compute the same"
        return _Failed(
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )


class _Failed(str):
    """What a replacement that raised gives in place of its output."""


@torch.no_grad()
def _replacement(site: _Site, generator: torch.Generator) -> nn.Module:
    """Build a site's replacement from its example call and check it on that call and on
    :data:`_VARIATIONS` random variations of it.

    Raises:
        DecompositionError: an option the replacement does not cover, or different outputs.
    """
    if len(site.calls) != 1:
        raise DecompositionError(
            f"{site.name} ran {len(site.calls)} times on one forward of the example, not once"
        )
    call = site.calls[0]
    full = inspect.BoundArguments(call.signature, dict(call.arguments))  # type: ignore[arg-type]
    full.apply_defaults()  # the builders read every option by name
    replacement = site.kind.build(site.original, full, site.name)
    for variation in range(1 + _VARIATIONS):
        if variation:
            call = _varied(site.calls[0], site.kind.varied, generator)
        expected = site.original(*call.args, **call.kwargs)
        why = _difference(expected, _run(replacement, call.args, call.kwargs))
        if why is not None:
            raise DecompositionError(
                f"{site.name}: its rewriting in primitive operations does not compute what it "
                f"computes ({why}), so bound propagation cannot use it"
            )
    return replacement


def _traced(network: nn.Module) -> fx.GraphModule | None:
    """``network`` traced with :class:`_SiteTracer`; None when torch.fx cannot trace it (bound
    propagation's own tracing then says why)."""
    try:
        graph = _SiteTracer().trace(network)
    except Exception:  # torch.fx raises many kinds; all mean "not traceable"
        return None
    return fx.GraphModule(network, graph, type(network).__name__)


def _points(example: Tensor, generator: torch.Generator) -> Tensor:
    """The example's points and two more near its first one (another batch size, so a
    replacement that fixed the batch size fails)."""
    spread = max(float(example.double().std()) if example.numel() > 1 else 0.0, 1.0)
    noise = torch.randn((2, *example.shape[1:]), generator=generator, dtype=torch.float64)
    near = example[:1] + (noise * spread).to(dtype=example.dtype, device=example.device)
    return torch.cat([example, near])


@torch.no_grad()
def decompose(network: nn.Module, example: Tensor) -> nn.Module:
    """A copy of ``network`` in which attention is written in primitive operations.

    Replaced (see the module docstring): ``nn.MultiheadAttention`` modules (no masks, ``kdim ==
    vdim == embed_dim``, no ``add_bias_kv`` / ``add_zero_attn``, dropout only in eval),
    ``F.scaled_dot_product_attention`` calls (``dropout_p == 0``, no grouped-query attention;
    masks and ``is_causal`` allowed), torchvision's ``shifted_window_attention`` (Swin V1 and
    V2) and ``_patch_merging_pad``, stochastic depth in eval (module or function: the
    identity), ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` (no masks, eval).

    Args:
        network: Maps points ``(B, *point_shape)`` to its outputs (a tail: to logits). A
            :class:`~connectivity.engine.split.FrozenTail` is decomposed inside and wrapped
            again. Never changed: the work is done on copies.
        example: Points ``(B, *point_shape)`` on which the network runs (dtype and device of
            the network); each replacement is specialised to the shapes seen on them except
            the batch size. The network should be in eval mode: the final comparison runs
            both networks, and dropout left on elsewhere would make them differ at random.

    Returns:
        The copy, as a ``torch.fx.GraphModule`` whose replaced calls run submodules named
        ``decomposed_<node>``; a plain copy when it holds nothing to replace or torch.fx
        cannot trace it.

    Raises:
        DecompositionError: a call uses an option not covered, or a replacement, or the whole
            decomposed network on random points, does not give the original outputs; the
            message names the call.
    """
    if isinstance(network, FrozenTail):
        inner = network.network
        dtype = floating_dtype(inner)
        points = example if dtype is None else example.to(dtype)
        return FrozenTail(decompose(inner, points))
    module = _traced(copy.deepcopy(network))
    sites = _sites(module) if module is not None else {}
    if module is None or not sites:
        return copy.deepcopy(network)
    module(example)  # the sites record their calls
    generator = torch.Generator().manual_seed(_SEED)
    for target, site in sites.items():
        module.add_submodule(target, _replacement(site, generator))
    module.delete_all_unused_submodules()
    module.recompile()
    points = _points(example, generator)
    reference = copy.deepcopy(network)  # run on its own copy: a forward may change state
    why = _difference(reference(points), _run(module, (points,), {}))
    if why is not None:
        names = ", ".join(site.name for site in sites.values())
        raise DecompositionError(
            f"{type(network).__name__} rewritten in primitive operations (replacing {names}) "
            f"does not compute what it computes ({why})"
        )
    return module
