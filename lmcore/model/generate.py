"""Autoregressive sampling from a :class:`~lmcore.model.gpt.GPT` with its KV cache.

The prompt is run once (prefill), then one token per step. Sampling knobs follow the
usual API semantics: temperature (0 = greedy), top-k, top-p (nucleus), OpenAI-style
frequency/presence penalties over the generated tokens, stop ids and stop sequences.
This module knows nothing of training, checkpoints or files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lmcore.data.tokenizer import Tokenizer
from lmcore.model.gpt import GPT, KVCache

EOT = "<|endoftext|>"


def next_token_probs(
    logits: Tensor,
    counts: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> Tensor:
    """Sampling distribution (V,) from last-position ``logits`` (V,) and generated-token ``counts`` (V,).

    Penalties subtract ``frequency_penalty * count + presence_penalty * (count > 0)`` from
    the logits; then temperature scaling, top-k and top-p filtering. ``temperature == 0``
    puts all mass on the (penalised) argmax.
    """
    logits = logits.float() - frequency_penalty * counts - presence_penalty * (counts > 0).float()
    if temperature == 0:
        probs = torch.zeros_like(logits)
        probs[logits.argmax()] = 1.0
        return probs
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def _check_args(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    problems = []
    if max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        problems.append(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        problems.append(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        problems.append(f"top_p must be in (0, 1] or None, got {top_p}")
    if problems:
        raise ValueError("; ".join(problems))


def _step(model: GPT, ids: list[int], cache: KVCache) -> Tensor:
    """Feed the newest token (or, when the cache is empty or full, the last context window); return logits (V,)."""
    device = cache.k.device
    ctx = model.config.context_length
    if cache.pos == 0 or cache.pos >= ctx:
        # past the context the window slides: recompute it, exactly as a cache-less loop would
        cache.reset()
        window = ids[-ctx:]
    else:
        window = ids[-1:]
    logits, _ = model(torch.tensor([window], dtype=torch.long, device=device), kv_cache=cache)
    return logits[0, -1]  # (V,)


def _ends_with_stop(out: list[int], stop_sequences: Sequence[Sequence[int]]) -> int:
    """Length of the stop sequence ``out`` ends with, or 0."""
    for seq in stop_sequences:
        if seq and len(out) >= len(seq) and out[-len(seq) :] == list(seq):
            return len(seq)
    return 0


@torch.no_grad()
def generate(
    model: GPT,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    stop_ids: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
    seed: int | None = None,
) -> list[int]:
    """Continue ``prompt_ids``; return only the new tokens, without a stop id or stop sequence that ended it.

    The prompt is cropped to its last ``context_length`` tokens. ``seed`` makes sampling
    reproducible (sampling draws on the CPU, so the same seed gives the same tokens on any
    device); ``None`` uses torch's global RNG.
    """
    _check_args(max_new_tokens, temperature, top_k, top_p)
    if not prompt_ids:
        raise ValueError("prompt_ids is empty; start from at least one token (e.g. the <|endoftext|> id)")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = list(prompt_ids[-model.config.context_length :])
    out: list[int] = []
    cache = model.new_kv_cache(1)
    counts = torch.zeros(model.config.vocab_size, device=cache.k.device)
    stops = set(stop_ids)
    try:
        for _ in range(max_new_tokens):
            probs = next_token_probs(
                _step(model, ids, cache),
                counts,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty,
            )
            if temperature == 0:
                token = int(probs.argmax())
            else:
                token = int(torch.multinomial(probs.cpu(), 1, generator=gen))
            if token in stops:
                break
            ids.append(token)
            out.append(token)
            counts[token] += 1
            if n := _ends_with_stop(out, stop_sequences):
                del out[-n:]
                break
    finally:
        model.train(was_training)
    return out


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, **kw: Any) -> str:
    """Encode ``prompt``, generate, decode the continuation.

    Stops at ``<|endoftext|>`` unless ``stop_ids`` is given. ``kw`` goes to :func:`generate`.
    """
    kw.setdefault("stop_ids", (tokenizer.eot_id,))
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [tokenizer.eot_id]  # empty prompt: start a doc
    return tokenizer.decode(generate(model, ids, **kw), skip_special_tokens=False)
