"""Attention: how a token reads the others.

The attention layer (:class:`CausalSelfAttention`: fused q/k/v, grouped-query heads, QK-norm, scaled dot-product
attention), the positions it sees (rotary tables in the rotate-half convention; ALiBi's per-head linear bias), the
one mask function (causal, a two-way prefix, packed segments, or none for an encoder) and the KV cache for
decoding. :class:`~lmcore.model.gpt.GPT` assembles these; this module knows nothing of the rest of the block, of
training or of files.

References: RoFormer (rotary positions), Press et al. 2022 (ALiBi), Ainslie et al. 2023 (grouped-query attention).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F


class AttentionConfig(Protocol):
    """What :class:`CausalSelfAttention` reads of its config (``lmcore.model.gpt.ModelConfig`` has these)."""

    arch: str
    d_model: int
    n_head: int
    qkv_bias: bool
    dropout: float
    qk_norm: bool

    @property
    def kv_heads(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @property
    def causal(self) -> bool: ...


class KVCache:
    """Keys and values of past positions, preallocated for every layer, for incremental decoding.

    ``GPT.forward`` writes each layer's new keys/values at ``pos`` and advances ``pos``
    by the number of new tokens once all layers have run.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nkv, max_len, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (B, nkv, T, hs) at ``pos``; return all keys/values so far (B, nkv, pos+T, hs)."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested; make a longer cache")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (the HF Llama convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables (length, head_dim); frequency i is used at dims i and i + head_dim/2."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (hs/2,)
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (length, hs)
    return emb.cos(), emb.sin()


def alibi_slopes(n_head: int) -> Tensor:
    """ALiBi head slopes (n_head,): 2^(-8i/n) for i = 1..n (Press et al. 2022).

    When n is not a power of two: the slopes of the power of two below it, then every other slope
    of the next power of two (the paper's reference code).
    """
    if n_head & (n_head - 1) == 0:
        return torch.tensor([2.0 ** (-8.0 * i / n_head) for i in range(1, n_head + 1)])
    low = 1 << (n_head.bit_length() - 1)
    return torch.cat((alibi_slopes(low), alibi_slopes(2 * low)[0::2][: n_head - low]))


def alibi_bias(slopes: Tensor, T: int, past: int, mask: Tensor | None, causal: bool = True) -> Tensor:
    """Additive float mask: -slope * |distance| where ``mask`` (from :func:`attention_mask`) allows, -inf elsewhere.

    Query i sits at position past + i; keys at 0..past + T - 1. Without a mask, ``causal`` says whether later
    keys are hidden. Returns (nh, T, S), or (B, nh, T, S) with a per-example mask; distances cross segment
    boundaries only where the mask already forbids attention. The bias is symmetric, so an encoder or a
    prefix penalizes later keys as it does earlier ones.
    """
    device = slopes.device
    q = torch.arange(past, past + T, device=device)
    k = torch.arange(past + T, device=device)
    bias = -slopes[:, None, None] * (k[None, :] - q[:, None]).abs().float()  # (nh, T, S), <= 0
    if mask is None:
        mask = torch.ones(T, past + T, dtype=torch.bool, device=device)
        mask = mask.tril(diagonal=past) if causal else mask
    return torch.where(mask, bias, float("-inf"))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        # q, k and v projections in one matmul; k and v have n_kv_head heads (GQA)
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.d_model, qkv_out, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.arch == "gpt2")
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.causal = config.causal

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        B, T, C = x.size()  # batch, new tokens, d_model
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:  # unit-RMS q and k bound the attention logits (modded-nanogpt, OLMo 2)
            q, k = F.rms_norm(q, (hs,)), F.rms_norm(k, (hs,))
        if rope is not None:
            cos, sin = (t.to(q.dtype) for t in rope)  # (T, hs)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hs), S = past + T
        if nkv != nh:  # each k/v head serves nh // nkv consecutive query heads
            k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(nh // nkv, dim=1)
        # without an explicit mask, queries and keys cover the same positions (or T == 1, which sees everything)
        assert mask is not None or T == 1 or k.size(2) == T or not self.causal
        is_causal = mask is None and T > 1 and self.causal
        if mask is not None and mask.is_floating_point():  # ALiBi's additive bias (causal masking included)
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


def attention_mask(
    T: int,
    past: int,
    segment_ids: Tensor | None,
    device: torch.device,
    *,
    prefix: Tensor | None = None,
    causal: bool = True,
) -> Tensor | None:
    """Boolean mask (True = may attend) when plain ``is_causal`` (or, for an encoder, no mask) is not enough,
    else None.

    A token sees earlier tokens (``causal``; every token when not), and with ``prefix`` (B, T) bool also
    every token of the prefix when it is itself in the prefix: the prefix attends both ways, the rest
    causally (prefix LM). With ``segment_ids`` (B, T), all of this stays inside a token's own segment
    (block-diagonal, for packed examples). With ``past`` cached positions and several new queries, query i
    sits at position past + i and sees keys 0..past + i.
    """
    if segment_ids is None and prefix is None:
        if past > 0 and T > 1 and causal:
            return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)  # (T, past + T)
        return None
    allowed = torch.ones(1, T, T, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed.tril()
        if prefix is not None:
            allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])  # (B, T, T)
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return allowed.unsqueeze(1)  # (B, 1, T, T), broadcast over heads
