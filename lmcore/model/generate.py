"""Autoregressive sampling from a :class:`~lmcore.model.gpt.GPT` with its KV cache.

The prompt is run once (prefill), then one token per step. Sampling knobs follow the
usual API semantics: temperature (0 = greedy), top-k, top-p (nucleus), OpenAI-style
frequency/presence penalties over the generated tokens, transformers' (CTRL's)
multiplicative repetition penalty and ``no_repeat_ngram_size`` over prompt and output,
stop ids and stop sequences. :class:`GenerationConfig` holds those knobs as one validated
value (what a profile sets); :func:`greedy` is plain argmax decoding.
This module knows nothing of training, checkpoints or files.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmcore.data.tokenizer import Tokenizer
from lmcore.model.attention import KVCache
from lmcore.model.gpt import GPT

EOT = "<|endoftext|>"


@dataclass(kw_only=True, frozen=True)
class GenerationConfig:
    """How each next token is chosen: what :func:`generate` takes besides the length, the stops and the prefix.

    ``generate(model, ids, config, max_new_tokens=n)``. These are the one set of defaults, the evaluation's:
    deterministic (an evaluation should not move with a seed), with CTRL's repetition penalty of 1.2 and no
    3-gram said twice, so a small model does not loop; a temperature above 0 samples from the top 0.9 of the
    probability, seeded. :func:`greedy` switches every control off: plain argmax.
    """

    temperature: float = 0.0
    """Softmax temperature; 0 = greedy (argmax after the penalties and the n-gram ban; top_k, top_p, seed unused)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens; None: no limit."""
    top_p: float | None = 0.9
    """Nucleus sampling: only the most likely tokens that together hold this much probability; None or 1: all."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated (OpenAI's; the prompt does not count)."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token generated at least once (OpenAI's; the prompt does not count)."""
    repetition_penalty: float = 1.2
    """transformers' (CTRL's): the logit of each token already in the prompt or the output is divided by this
    when positive, multiplied when negative; 1 = off, > 1 discourages repeats."""
    no_repeat_ngram_size: int = 3
    """A token that would complete an n-gram of this many tokens already in the prompt or the output is never
    chosen (transformers' semantics); 0 = off."""
    seed: int | None = 0
    """Seed of the sampling RNG (draws happen on the CPU, so the same on any device); None: torch's global RNG."""

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1] or None, got {self.top_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not math.isfinite(getattr(self, name)):
                problems.append(f"{name} must be a finite number (0 = off), got {getattr(self, name)}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            problems.append(f"repetition_penalty must be > 0 (1 = off, e.g. 1.1), got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            problems.append(f"no_repeat_ngram_size must be >= 0 (0 = off, e.g. 3), got {self.no_repeat_ngram_size}")
        if problems:
            raise ValueError("; ".join(problems))

    def is_greedy(self) -> bool:
        """Whether this decodes exactly as :func:`greedy` does (at temperature 0, top_k, top_p and seed do nothing)."""
        return (
            self.temperature == 0
            and self.frequency_penalty == self.presence_penalty == 0
            and self.repetition_penalty == 1
            and self.no_repeat_ngram_size == 0
        )


def greedy() -> GenerationConfig:
    """Plain greedy decoding: the argmax at every step, no penalty, no ban."""
    return GenerationConfig(temperature=0.0, top_p=None, repetition_penalty=1.0, no_repeat_ngram_size=0, seed=None)


class NoRepeatNGram:
    """The tokens that would complete an ``n``-gram already in a growing token list.

    A table from each (n-1)-gram to the tokens seen right after it, extended by one entry per
    appended token: O(n) per step, where rescanning the text for its n-grams (as transformers
    does) is O(length) per step.
    """

    def __init__(self, n: int, ids: Sequence[int]) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.ids = n, []
        self.follow: dict[tuple[int, ...], set[int]] = {}
        for token in ids:
            self.append(token)

    def append(self, token: int) -> None:
        self.ids.append(token)
        if len(self.ids) >= self.n:
            self.follow.setdefault(tuple(self.ids[len(self.ids) - self.n : -1]), set()).add(token)

    def banned(self) -> set[int]:
        """Tokens that must not come next: those that followed the last n-1 tokens before."""
        if len(self.ids) < self.n - 1:
            return set()
        return self.follow.get(tuple(self.ids[len(self.ids) - self.n + 1 :]), set())


def next_token_probs(
    logits: Tensor,
    counts: Tensor,
    config: GenerationConfig,
    *,
    seen: Tensor | None = None,
    banned: Collection[int] = (),
) -> Tensor:
    """Sampling distribution (V,) from last-position ``logits`` (V,) and generated-token ``counts`` (V,).

    ``config.repetition_penalty`` divides the positive logits of the tokens in ``seen`` (V,) bool (prompt and
    output; default: the generated ones) and multiplies their negative ones; the other penalties subtract
    ``frequency_penalty * count + presence_penalty * (count > 0)``; ``banned`` tokens get -inf. Then
    temperature scaling, top-k and top-p filtering. ``temperature == 0`` puts all mass on the (penalised)
    argmax. At least one token must stay unbanned. ``no_repeat_ngram_size`` and ``seed`` are the caller's
    (:func:`generate` turns the first into ``banned`` and draws with the second).
    """
    c = config
    logits = logits.float()
    if c.repetition_penalty != 1.0:
        mask = seen if seen is not None else counts > 0
        penalised = torch.where(logits > 0, logits / c.repetition_penalty, logits * c.repetition_penalty)
        logits = torch.where(mask, penalised, logits)
    logits = logits - c.frequency_penalty * counts - c.presence_penalty * (counts > 0).float()
    if banned:
        logits[torch.tensor(sorted(banned), device=logits.device)] = float("-inf")
    if c.temperature == 0:
        probs = torch.zeros_like(logits)
        probs[logits.argmax()] = 1.0
        return probs
    logits = logits / c.temperature
    if c.top_k is not None:
        kth = torch.topk(logits, min(c.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if c.top_p is not None and c.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= c.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def _step(model: GPT, ids: list[int], cache: KVCache, n_prompt: int) -> Tensor:
    """Feed the newest token (or, when the cache is empty or full, the last context window); return logits (V,).

    A prefix LM (``attention="prefix"``) reads the prompt's tokens in the window as its two-way prefix, as in
    training; the first ``n_prompt`` of ``ids`` are the prompt.
    """
    device = cache.k.device
    ctx = model.config.context_length
    kw = {}
    if cache.pos == 0 or cache.pos >= ctx:
        # past the context the window slides: recompute it, exactly as a cache-less loop would
        cache.reset()
        window = ids[-ctx:]
        if model.config.attention == "prefix":
            in_window = max(0, n_prompt - (len(ids) - len(window)))
            kw["prefix"] = (torch.arange(len(window), device=device) < in_window)[None, :]
    else:
        window = ids[-1:]
    logits, _ = model(torch.tensor([window], dtype=torch.long, device=device), kv_cache=cache, **kw)
    return logits[0, -1]  # (V,)


def _ends_with_stop(out: list[int], stop_sequences: Sequence[Sequence[int]]) -> int:
    """Length of the stop sequence ``out`` ends with, or 0."""
    for seq in stop_sequences:
        if seq and len(out) >= len(seq) and out[-len(seq) :] == list(seq):
            return len(seq)
    return 0


def _check(model: GPT, prompt_ids: list[int], max_new_tokens: int) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not prompt_ids:
        raise ValueError("prompt_ids is empty; start from at least one token (e.g. the <|endoftext|> id)")
    if not model.config.causal:
        raise ValueError(
            "this model is an encoder (attention='bidirectional', a masked LM): it fills in <|mask|> tokens but "
            "does not generate; generate with a causal or prefix model"
        )


def _seen(vocab: int, ids: list[int], stops: set[int], device: torch.device) -> Tensor:
    """(V,) bool: the tokens of ``ids`` that the repetition penalty treats as seen; never a stop id (ending is
    not repeating)."""
    seen = torch.zeros(vocab, dtype=torch.bool, device=device)
    seen[torch.tensor(ids, device=device)] = True
    seen[torch.tensor(sorted(stops), dtype=torch.long, device=device)] = False
    return seen


@torch.no_grad()
def generate(
    model: GPT,
    prompt_ids: list[int],
    config: GenerationConfig,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
    prefix_length: int | None = None,
) -> list[int]:
    """Continue ``prompt_ids``, each token chosen as ``config`` says; return only the new tokens, without a
    stop id or stop sequence that ended it.

    The prompt is cropped to its last ``context_length`` tokens; the repetition penalty and the n-gram ban
    look at that prompt and the output, and never touch a stop id (ending is not repeating); generation also
    ends when the ban leaves no token. ``config.seed`` makes sampling reproducible (draws happen on the CPU,
    so the same seed gives the same tokens on any device). A prefix LM reads the first ``prefix_length``
    prompt tokens (default: all) as its two-way prefix.
    """
    _check(model, prompt_ids, max_new_tokens)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    ids = list(prompt_ids[-model.config.context_length :])
    cropped = len(prompt_ids) - len(ids)
    n_prompt = len(ids) if prefix_length is None else max(0, min(prefix_length - cropped, len(ids)))
    out: list[int] = []
    cache = model.new_kv_cache(1)
    vocab = model.config.vocab_size
    counts = torch.zeros(vocab, device=cache.k.device)
    stops = set(stop_ids)
    seen = _seen(vocab, ids, stops, cache.k.device)
    ngrams = NoRepeatNGram(config.no_repeat_ngram_size, ids) if config.no_repeat_ngram_size else None
    try:
        for _ in range(max_new_tokens):
            banned = ngrams.banned() - stops if ngrams is not None else set()
            if len(banned) >= vocab:
                break  # every token would repeat an n-gram
            probs = next_token_probs(_step(model, ids, cache, n_prompt), counts, config, seen=seen, banned=banned)
            if config.temperature == 0:
                token = int(probs.argmax())
            else:
                token = int(torch.multinomial(probs.cpu(), 1, generator=gen))
            if token in stops:
                break
            ids.append(token)
            out.append(token)
            counts[token] += 1
            seen[token] = True
            if ngrams is not None:
                ngrams.append(token)
            if n := _ends_with_stop(out, stop_sequences):
                del out[-n:]
                break
    finally:
        model.train(was_training)
    return out


def generate_text(
    model: GPT, tokenizer: Tokenizer, prompt: str, config: GenerationConfig, *, max_new_tokens: int
) -> str:
    """Encode ``prompt``, generate (:func:`generate`) until ``<|endoftext|>``, decode the continuation."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [tokenizer.eot_id]  # empty prompt: start a doc
    out = generate(model, ids, config, max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eot_id,))
    return tokenizer.decode(out, skip_special_tokens=False)
