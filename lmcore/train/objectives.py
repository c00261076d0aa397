"""Pretraining objectives besides next-token prediction: masked LM, prefix LM and span corruption.

Each objective turns the loader's windows ``(x, y)`` (B, T) into ``(inputs, targets, None, prefix)``
batches for the one training loop; ``targets`` are -100 where there is no loss and ``prefix`` (B, T)
bool marks the tokens that attend both ways (``ModelConfig.attention="prefix"``). The objective is
``TrainConfig.objective``; the model's attention must match it (:data:`ATTENTION`):

- ``"causal"``: next-token prediction (the loader's batches unchanged).
- ``"masked"``: BERT (Devlin et al. 2019) on an encoder: ``mask_rate`` of the positions are chosen; of
  those 80% become ``<|mask|>``, 10% a random token, 10% stay; the loss is on the chosen positions only.
- ``"prefix"``: prefix LM (Raffel et al. 2020, section 3.2): each row is split at a random point; the
  prefix attends both ways and carries no loss, the rest is predicted causally.
- ``"span"``: T5's span corruption on the decoder: contiguous spans (``corruption_rate`` of the tokens,
  ``mean_span_length`` long on average) are replaced by sentinels ``<|extra_i|>``; the row is the corrupted
  input as a bidirectional prefix, then the target (each sentinel followed by the span it replaced). One
  decoder with a prefix does the encoder-decoder's job with one set of weights and the same loop,
  checkpoints and export path (the T5 paper's "prefix LM" architecture, close to its encoder-decoder).

The new special tokens are appended after the tokenizer's vocabulary (:func:`extra_tokens`), so the ids of
the existing ones never change. Randomness comes from the batch's place in the data (epoch, position), not
from a generator's state: a resumed run redraws the same masks, and validation sees the same ones every time.
This module knows nothing of Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lmcore.train.config import TrainConfig

MASK = "<|mask|>"
ATTENTION = {"causal": "causal", "prefix": "prefix", "span": "prefix", "masked": "bidirectional"}
"""The ModelConfig.attention each objective trains."""
IGNORE = -100


def sentinel(i: int) -> str:
    return f"<|extra_{i}|>"


def span_layout(context_length: int, corruption_rate: float, mean_span_length: float) -> tuple[int, int, int]:
    """(source tokens n, noise tokens, spans S) of one span-corruption row: the longest n whose corrupted
    input plus target (n + 2S tokens) fits a window of context_length + 1."""
    for n in range(context_length + 1, 1, -1):
        noise = min(max(round(n * corruption_rate), 1), n - 1)
        spans = max(1, round(noise / mean_span_length))
        if n + 2 * spans <= context_length + 1 and n - noise >= spans:
            return n, noise, spans
    raise ValueError(f"context_length={context_length} is too short for span corruption")


def extra_tokens(cfg: TrainConfig, context_length: int) -> list[str]:
    """Special tokens ``cfg.objective`` needs beyond the tokenizer's, in id order after its vocabulary."""
    if cfg.objective == "masked":
        return [MASK]
    if cfg.objective == "span":
        _, _, spans = span_layout(context_length, cfg.corruption_rate, cfg.mean_span_length)
        return [sentinel(i) for i in range(spans)]
    return []


def extra_token_ids(cfg: TrainConfig, base_vocab: int, context_length: int) -> dict[str, int]:
    """Each special token ``cfg.objective`` adds, with its id: right after the tokenizer's ``base_vocab`` ids, so
    the existing ids never change; the model's vocabulary is ``base_vocab + len(...)``."""
    return {tok: base_vocab + i for i, tok in enumerate(extra_tokens(cfg, context_length))}


def check_model(cfg: TrainConfig, attention: str, vocab_size: int, base_vocab: int, context_length: int) -> None:
    """Raise ValueError naming the fix when the model cannot train ``cfg.objective``."""
    want = ATTENTION[cfg.objective]
    if attention != want:
        raise ValueError(
            f"train.objective={cfg.objective!r} trains model.attention={want!r}; the model has {attention!r}: "
            f"set model.attention: {want}"
        )
    need = base_vocab + len(extra_token_ids(cfg, base_vocab, context_length))
    if vocab_size < need:
        raise ValueError(
            f"train.objective={cfg.objective!r} appends {need - base_vocab} special token(s) after the "
            f"tokenizer's {base_vocab}; model vocab_size={vocab_size} must be at least {need}"
        )


def _random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` positive integers summing to ``total``, uniformly over such compositions."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([])
    return np.diff(np.concatenate(([0], cuts, [total]))).astype(np.int64)


class Objective:
    """One objective's batch transform (see the module docstring); ``base_vocab`` is the tokenizer's size."""

    def __init__(self, cfg: TrainConfig, base_vocab: int, context_length: int) -> None:
        self.cfg, self.kind, self.base_vocab, self.T = cfg, cfg.objective, base_vocab, context_length
        self.extra_ids = extra_token_ids(cfg, base_vocab, context_length)
        if self.kind == "span":
            self.n, self.noise, self.spans = span_layout(context_length, cfg.corruption_rate, cfg.mean_span_length)

    def apply(self, x: Tensor, y: Tensor, rng: np.random.Generator) -> tuple[Tensor, ...]:
        if self.kind == "masked":
            return self.mask(x, rng)
        if self.kind == "prefix":
            return self.split(x, y, rng)
        if self.kind == "span":
            return self.corrupt(torch.cat((x, y[:, -1:]), dim=1), rng)
        return x, y

    def mask(self, x: Tensor, rng: np.random.Generator) -> tuple[Tensor, ...]:
        """BERT masking of ``x`` (B, T): (inputs, targets on the chosen positions, None, None)."""
        B, T = x.shape
        u = torch.from_numpy(rng.random((B, T)))
        chosen = u < self.cfg.mask_rate
        none = ~chosen.any(dim=1)  # every row gets a loss: its least u is chosen
        chosen[none, u[none].argmin(dim=1)] = True
        what = torch.from_numpy(rng.random((B, T)))
        inputs = x.clone()
        inputs[chosen & (what < 0.8)] = self.extra_ids[MASK]
        swap = chosen & (what >= 0.8) & (what < 0.9)
        inputs[swap] = torch.from_numpy(rng.integers(0, self.base_vocab, size=int(swap.sum()))).to(x.dtype)
        targets = torch.where(chosen, x, torch.full_like(x, IGNORE))
        return inputs, targets, None, None

    def split(self, x: Tensor, y: Tensor, rng: np.random.Generator) -> tuple[Tensor, ...]:
        """Prefix LM: a prefix of 1..T-1 tokens per row, no loss on predicting within it."""
        B, T = x.shape
        p = torch.from_numpy(rng.integers(1, T, size=B))[:, None]  # (B, 1) prefix lengths
        pos = torch.arange(T)[None, :]
        prefix = pos < p  # (B, T)
        # position p-1 (the prefix's last) predicts the first suffix token
        targets = torch.where(pos >= p - 1, y, torch.full_like(y, IGNORE))
        return x, targets, None, prefix

    def corrupt(self, window: Tensor, rng: np.random.Generator) -> tuple[Tensor, ...]:
        """Span corruption of the first n tokens of each (B, T+1) window (see the module docstring)."""
        B, T = window.size(0), self.T
        inputs = torch.zeros(B, T, dtype=window.dtype)
        targets = torch.full((B, T), IGNORE, dtype=window.dtype)
        prefix = torch.zeros(B, T, dtype=torch.bool)
        sentinels = list(self.extra_ids.values())
        for b in range(B):
            source, target = corrupt_spans(window[b, : self.n].tolist(), self.noise, self.spans, sentinels, rng)
            row = source + target  # n + 2S <= T + 1 tokens
            inputs[b, : len(row) - 1] = torch.tensor(row[:-1])
            targets[b, len(source) - 1 : len(row) - 1] = torch.tensor(row[len(source) :])
            prefix[b, : len(source)] = True
        return inputs, targets, None, prefix


def corrupt_spans(
    tokens: Sequence[int], noise: int, spans: int, sentinels: Sequence[int], rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """(corrupted input, target) of ``tokens``: ``spans`` random spans totalling ``noise`` tokens, each
    replaced by the next sentinel in the input and listed after it in the target (T5's
    random_spans_noise_mask: noise and kept lengths are random compositions, kept text first)."""
    noise_lengths = _random_partition(noise, spans, rng)
    keep_lengths = _random_partition(len(tokens) - noise, spans, rng)
    source: list[int] = []
    target: list[int] = []
    at = 0
    for i, (keep, drop) in enumerate(zip(keep_lengths.tolist(), noise_lengths.tolist(), strict=True)):
        source.extend(tokens[at : at + keep])
        source.append(sentinels[i])
        target.append(sentinels[i])
        target.extend(tokens[at + keep : at + keep + drop])
        at += keep + drop
    return source, target


def fill_spans(source: Sequence[int], target: Sequence[int], sentinels: Sequence[int]) -> list[int]:
    """The uncorrupted text: each sentinel of ``source`` replaced by what follows it in ``target``."""
    where = {tok: i for i, tok in enumerate(target) if tok in set(sentinels)}
    out: list[int] = []
    for tok in source:
        if tok not in where:
            out.append(tok)
            continue
        i = where[tok] + 1
        while i < len(target) and target[i] not in where:
            out.append(target[i])
            i += 1
    return out


class _Wrapped:
    """A :class:`lmcore.train.job.BatchSource` that changes another's batches; position and state are its."""

    def __init__(self, source: Any) -> None:
        self.source = source

    @property
    def epoch(self) -> int:
        return self.source.epoch

    @property
    def position(self) -> int:
        return self.source.position

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


class ObjectiveSource(_Wrapped):
    """Applies an :class:`Objective` to another source's batches, drawing on the batch's place in the data."""

    def __init__(self, source: Any, objective: Objective, seed: int, rank: int) -> None:
        super().__init__(source)
        self.objective, self.seed, self.rank = objective, seed, rank

    def next_batch(self) -> tuple[Tensor | None, ...]:
        key = [self.seed, self.rank, self.source.epoch, self.source.position]
        x, y = self.source.next_batch()[:2]
        return self.objective.apply(x, y, np.random.default_rng(key))


def prompt_prefix(targets: Tensor, segment_ids: Tensor | None) -> Tensor:
    """(B, T) bool: in each segment, the positions up to its first scored one (the prompt, and the token that
    predicts the reply's first). Fine-tuning a prefix LM reads the prompt as its two-way prefix; later turns
    stay causal, so no reply sees a later turn. A segment with no scored token (padding) is all prefix."""
    B, T = targets.shape
    segments = torch.zeros(B, T, dtype=torch.long) if segment_ids is None else segment_ids.cpu()
    scored, pos = (targets != IGNORE).cpu(), torch.arange(T)
    prefix = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        for s in segments[b].unique():
            inside = segments[b] == s
            hits = (scored[b] & inside).nonzero()
            prefix[b] |= inside & (pos <= hits.min()) if len(hits) else inside
    return prefix.to(targets.device)


class PromptPrefixSource(_Wrapped):
    """Adds :func:`prompt_prefix` to another source's (x, y, segment_ids) batches."""

    def next_batch(self) -> tuple[Tensor | None, ...]:
        x, y, *rest = self.source.next_batch()
        segments = rest[0] if rest else None
        return x, y, segments, prompt_prefix(y, segments)


def masked_accuracy(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """(correct, counted) argmax predictions on the positions with a target."""
    chosen = targets != IGNORE
    return int((logits.argmax(-1)[chosen] == targets[chosen]).sum()), int(chosen.sum())


@torch.no_grad()
def pseudo_log_likelihood(model: torch.nn.Module, ids: Tensor, mask_id: int, batch: int = 64) -> float:
    """Sum of log p(token_i | the row with only i masked) over one row ``ids`` (T,) (Salazar et al. 2020):
    the encoder's analogue of a log-likelihood; exp(-PLL / tokens) is its pseudo-perplexity."""
    T = ids.numel()
    total = 0.0
    for lo in range(0, T, batch):
        pos = torch.arange(lo, min(lo + batch, T))
        rows = ids.repeat(len(pos), 1)  # (n, T)
        rows[torch.arange(len(pos)), pos] = mask_id
        logits = model(rows)[0].float()  # (n, T, V)
        logp = torch.log_softmax(logits[torch.arange(len(pos)), pos], dim=-1)  # (n, V)
        total += float(logp.gather(1, ids[pos][:, None]).sum())
    return total


def pseudo_perplexity(model: torch.nn.Module, rows: Tensor, mask_id: int) -> float:
    """exp(-mean PLL per token) over rows (N, T)."""
    pll = sum(pseudo_log_likelihood(model, r, mask_id) for r in rows)
    return math.exp(-pll / rows.numel())
