"""The language model: one GPT-style decoder in two flavours, its config, its MLP and its blocks.

``arch="modern"`` is a Llama-style block (RMSNorm, rotary positions in the rotate-half
convention, SwiGLU MLP, optional grouped-query attention, no biases); ``arch="gpt2"`` is
GPT-2 (learned absolute positions, LayerNorm, tanh-GELU MLP, biases). Both use the same
parameter names, so checkpoints, the optimizer and the HF export treat them alike.
``position="alibi"`` replaces either's positions with ALiBi's per-head linear attention bias.
Speedrun options from modded-nanogpt / nanochat (QK-norm, ReLU², logit soft-capping, zero-initialized
output projections; ``SPEEDRUN`` is the measured set) are off by default. Attention, positions, masks and
the KV cache live in :mod:`lmcore.model.attention`, the mixture of experts in :mod:`lmcore.model.moe`.
This module knows nothing of data loading, training loops or files.

References: nanoGPT's model.py (layout, init), the Llama paper (modern block),
PaLM appendix B (FLOPs per token).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

from lmcore.model.attention import CausalSelfAttention, KVCache, alibi_bias, alibi_slopes, attention_mask, rope_tables
from lmcore.model.moe import MoE

ARCHES = ("modern", "gpt2")
ACTIVATIONS = ("auto", "relu2")
POSITIONS = ("auto", "alibi")
ATTENTIONS = ("causal", "prefix", "bidirectional")
ROUTINGS = ("token", "expert")


@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    """Shape and flavour of a :class:`GPT`; saved inside every checkpoint via ``to_dict``."""

    arch: str = "modern"  # "modern" (RMSNorm, RoPE, SwiGLU, GQA) or "gpt2" (LayerNorm, learned positions, GELU)
    vocab_size: int  # number of token ids, including special tokens
    context_length: int  # longest sequence the model attends over (size of the position table / RoPE cache)
    n_layer: int  # transformer blocks
    n_head: int  # query heads; must divide d_model
    n_kv_head: int | None = None  # key/value heads for grouped-query attention (modern only); None = n_head
    d_model: int  # residual stream width
    mlp_hidden: int | None = None  # MLP hidden width; None = 4*d (gpt2) or 8/3*d rounded up to 64 (modern SwiGLU)
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches (training only)
    qkv_bias: bool = False  # bias on the q/k/v projection (gpt2 keeps biases on its other linears regardless)
    tie_embeddings: bool = True  # output head shares the token-embedding matrix
    rope_theta: float = 10000.0  # RoPE base frequency (modern only)
    # "alibi": no position embedding but a per-head linear distance penalty on the attention logits (Press et al.
    # 2022); with no table to outgrow, forward accepts sequences longer than context_length (the training length)
    position: str = "auto"  # "auto": the arch's own (RoPE for modern, learned table for gpt2); or "alibi"
    norm_eps: float = 1e-5  # epsilon of RMSNorm / LayerNorm
    # speedrun options (modded-nanogpt, nanochat); the defaults are the plain gpt2/modern blocks
    qk_norm: bool = False  # RMS-normalize each head's queries and keys (no weight) before RoPE and attention
    activation: str = "auto"  # "auto": SwiGLU (modern) / tanh-GELU (gpt2); "relu2": relu(x)^2, ungated, 4*d wide
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap) (Gemma 2); 0 = off
    zero_init_proj: bool = False  # start the residual-writing projections (attn and MLP c_proj) at zero
    # "causal": a decoder; "prefix": a decoder whose prefix (the prompt; ``forward(prefix=)``) attends both ways
    # (prefix LM, T5's span corruption on a decoder); "bidirectional": an encoder (masked LM), which cannot generate
    attention: str = "causal"
    # mixture of experts (lmcore.model.moe): each block's MLP becomes n_experts MLPs of mlp_hidden width and a router
    n_experts: int = 0  # 0: a dense MLP
    expert_top_k: int = 2  # experts per token (token-choice), or the mean experts per token (expert-choice capacity)
    # "token": each token picks its top-k experts; "expert": each expert picks its tokens from the whole batch (Zhou
    # et al. 2022), so in a decoder a token's route depends on later tokens of the batch: a small look-ahead that
    # makes its scores slightly optimistic, and decoding token by token routes differently (the paper's caveat)
    routing: str = "token"
    capacity_factor: float = 1.25  # token-choice: an expert takes at most factor*k*tokens/n_experts; 0 = unlimited
    aux_loss_coef: float = 0.01  # token-choice: weight of the Switch load-balancing loss added to the training loss

    def __post_init__(self) -> None:
        problems = []
        if self.arch not in ARCHES:
            problems.append(f"arch must be one of {ARCHES}, got {self.arch!r}")
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_kv_head", "mlp_hidden"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                problems.append(f"{name} must be positive or None, got {getattr(self, name)}")
        if self.n_head > 0 and self.d_model % self.n_head:
            problems.append(f"n_head={self.n_head} must divide d_model={self.d_model}")
        elif self.n_head > 0 and self.rope and self.head_dim % 2:
            problems.append(f"d_model/n_head must be even for RoPE, got head size {self.head_dim}; change n_head")
        if self.n_kv_head is not None and self.n_kv_head > 0 and self.n_head % self.n_kv_head:
            problems.append(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.arch == "gpt2" and self.n_kv_head not in (None, self.n_head):
            problems.append("n_kv_head: the gpt2 arch has no grouped-query attention; leave it None")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.position not in POSITIONS:
            problems.append(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.logit_softcap >= 0:
            problems.append(f"logit_softcap must be >= 0 (0 = off), got {self.logit_softcap}")
        if self.attention not in ATTENTIONS:
            problems.append(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.expert_top_k <= self.n_experts):
            got = f"{self.n_experts}, {self.expert_top_k}"
            problems.append(f"n_experts must be >= 0 and expert_top_k in [1, n_experts], got {got}")
        if self.routing not in ROUTINGS:
            problems.append(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.capacity_factor < 0 or self.aux_loss_coef < 0:
            got = f"{self.capacity_factor}, {self.aux_loss_coef}"
            problems.append(f"capacity_factor and aux_loss_coef must be >= 0, got {got}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            problems.append(f"rope_theta and norm_eps must be positive, got {self.rope_theta}, {self.norm_eps}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def rope(self) -> bool:
        """Whether queries and keys are rotated (RoPE): the modern arch's own positions."""
        return self.arch == "modern" and self.position == "auto"

    @property
    def learned_positions(self) -> bool:
        """Whether a learned absolute position table (wpe) is added to the embeddings: gpt2's own positions."""
        return self.arch == "gpt2" and self.position == "auto"

    @property
    def kv_heads(self) -> int:
        """Resolved number of key/value heads."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def gated(self) -> bool:
        """Whether the MLP is SwiGLU (two input matrices fused into one)."""
        return self.arch == "modern" and self.activation == "auto"

    @property
    def hidden_dim(self) -> int:
        """Resolved MLP hidden width."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if not self.gated:
            return 4 * self.d_model
        return -(-8 * self.d_model // (3 * 64)) * 64  # SwiGLU keeps ~8d^2 MLP params with 3 matrices

    @property
    def causal(self) -> bool:
        """Whether a token attends only to earlier ones (outside a prefix): false for an encoder."""
        return self.attention != "bidirectional"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; valid fields are {sorted(known)}")
        return cls(**d)


def tiny(vocab_size: int = 512, **overrides: Any) -> ModelConfig:
    """2 layers, width 64, context 64: for tests."""
    base = dict(vocab_size=vocab_size, context_length=64, n_layer=2, n_head=4, d_model=64)
    return ModelConfig(**{**base, **overrides})


def demo(vocab_size: int = 4096, **overrides: Any) -> ModelConfig:
    """4 layers, width 256, context 256 (~4.3M params at vocab 4096): trains in minutes on 2 CPU cores."""
    base = dict(vocab_size=vocab_size, context_length=256, n_layer=4, n_head=4, d_model=256)
    return ModelConfig(**{**base, **overrides})


def gpt2_124m(vocab_size: int = 50304, **overrides: Any) -> ModelConfig:
    """GPT-2 small. 50304 = 50257 padded to a multiple of 128 for faster matmuls."""
    base = dict(
        arch="gpt2", vocab_size=vocab_size, context_length=1024, n_layer=12, n_head=12, d_model=768, qkv_bias=True
    )
    return ModelConfig(**{**base, **overrides})


PRESETS = {"tiny": tiny, "demo": demo, "gpt2_124m": gpt2_124m}

SPEEDRUN: dict[str, Any] = dict(qk_norm=True, activation="relu2", zero_init_proj=True)
"""ModelConfig overrides of the speedrun recipe (with ``lmcore.train.config.SPEEDRUN``); a profile sets them
under ``pretrained_model.model``. Measured in benchmarks/recipe.py."""


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu, self.relu2 = config.gated, config.activation == "relu2"
        hidden, bias = config.hidden_dim, config.arch == "gpt2"
        # SwiGLU fuses the gate and up projections: first half gate, second half up
        self.c_fc = nn.Linear(config.d_model, 2 * hidden if self.swiglu else hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, config.d_model, bias=bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up  # (B, T, hidden)
        elif self.relu2:
            h = F.relu(h).square()  # (B, T, hidden); sparse and cheap (Primer, modded-nanogpt)
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))


def _norm(config: ModelConfig) -> nn.Module:
    if config.arch == "gpt2":
        return nn.LayerNorm(config.d_model, eps=config.norm_eps)
    return nn.RMSNorm(config.d_model, eps=config.norm_eps)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp: nn.Module = MoE(config, lambda: MLP(config)) if config.n_experts else MLP(config)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, mask, cache, layer)  # pre-norm residual blocks
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        modules: dict[str, nn.Module] = dict(
            wte=nn.Embedding(config.vocab_size, config.d_model),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=_norm(config),
        )
        if config.learned_positions:
            modules["wpe"] = nn.Embedding(config.context_length, config.d_model)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # one matrix, read in and written out
        if config.rope:  # derived from the config, so not saved in checkpoints
            cos, sin = rope_tables(config.head_dim, config.context_length, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (context_length, hs)
            self.register_buffer("rope_sin", sin, persistent=False)
        if config.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)  # (nh,)
        self.apply(self._init_weights)
        # scaled init of the projections that write into the residual stream (GPT-2 paper)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:  # each block starts as the identity (modded-nanogpt)
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        segment_ids: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V) for token ids ``idx`` (B, T), and the mean cross-entropy if ``targets`` is given.

        ``targets`` equal to -100 are ignored. ``kv_cache`` continues from the cached
        positions and advances the cache. ``segment_ids`` (B, T) keeps attention inside
        each packed example; positions are not reset at segment starts. ``prefix`` (B, T) bool marks the
        tokens that attend both ways (``attention="prefix"`` only; given with an empty cache). With
        ``position="alibi"`` there is no position table, so sequences longer than ``context_length`` (the
        training length) are accepted. A mixture-of-experts model adds its load-balancing loss to the loss.
        """
        B, T = idx.size()
        past = 0 if kv_cache is None else kv_cache.pos
        if past + T > self.config.context_length and self.config.position != "alibi":
            raise ValueError(f"sequence of {past + T} tokens exceeds context_length={self.config.context_length}")
        if segment_ids is not None and (kv_cache is not None or segment_ids.shape != idx.shape):
            raise ValueError(f"segment_ids must have idx's shape {tuple(idx.shape)} and no kv_cache may be given")
        if prefix is not None and (self.config.attention != "prefix" or past or prefix.shape != idx.shape):
            raise ValueError(
                f"prefix must have idx's shape {tuple(idx.shape)}, an empty kv_cache and a model with "
                f"attention='prefix' (this one: {self.config.attention!r})"
            )
        if kv_cache is not None and not self.config.causal:
            raise ValueError("an encoder (attention='bidirectional') has no KV cache: it sees the whole sequence")
        x = self.transformer.wte(idx)  # (B, T, d)
        rope = None
        if self.config.learned_positions:
            x = x + self.transformer.wpe(torch.arange(past, past + T, device=idx.device))  # (T, d) broadcast
        elif self.config.rope:
            rope = (self.rope_cos[past : past + T], self.rope_sin[past : past + T])  # (T, hs) each
        x = self.transformer.drop(x)
        mask = attention_mask(T, past, segment_ids, idx.device, prefix=prefix, causal=self.config.causal)
        if self.config.position == "alibi":
            mask = alibi_bias(self.alibi_slopes, T, past, mask, self.config.causal)  # (nh, T, S) or (B, nh, T, S)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, mask, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        if self.config.logit_softcap > 0:  # smooth clamp to (-cap, cap)
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(-1), ignore_index=-100)
            if self.config.n_experts and self.config.aux_loss_coef and self.training:
                loss = loss + self.config.aux_loss_coef * sum(b.mlp.aux_loss for b in self.transformer.h)
        return logits, loss

    def new_kv_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty cache on the model's device and dtype (max_len defaults to the context length)."""
        p = next(self.parameters())
        c = self.config
        length = c.context_length if max_len is None else max_len
        return KVCache(c.n_layer, batch_size, c.kv_heads, length, c.head_dim, device=p.device, dtype=p.dtype)

    def num_params(self, non_embedding: bool = False, active: bool = False) -> int:
        """Parameter count, a tied matrix counted once.

        ``non_embedding`` drops the lookup tables that cost no matmul FLOPs: the position
        table, and the token table when it is not also the output head (as nanoGPT). ``active`` counts, of a
        mixture of experts, only the expert_top_k experts a token passes through.
        """
        n = sum(p.numel() for p in self.parameters())
        if active and self.config.n_experts:
            idle = self.config.n_experts - self.config.expert_top_k
            n -= sum(idle * b.mlp.expert_params() for b in self.transformer.h)
        if non_embedding:
            if self.config.learned_positions:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token at full context: 6N + 12*L*d*T (PaLM appendix B), for MFU; N counts the
        active parameters of a mixture of experts."""
        c = self.config
        attention = 12.0 * c.n_layer * c.n_head * c.head_dim * c.context_length
        return 6.0 * self.num_params(non_embedding=True, active=True) + attention
