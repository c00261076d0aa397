"""A recurrent language model baseline (Elman RNN or LSTM), fitted quickly on the train tokens.

It sits between the n-gram and the transformer in the perplexity report: it learns, like the
transformer, but carries its whole history in one state vector. Training is truncated
backpropagation through time: the concatenated train tokens are cut into ``batch_size``
contiguous streams, each step reads the next ``bptt`` tokens of every stream, and the state
carries over (detached) to the next step; at the end of the streams it restarts from a zero
state. Seeded, on CPU, so a fit is reproducible. Scoring (:func:`rnn_nats`) walks the same
target tokens as :func:`lmcore.eval.perplexity.lm_nats` (see ``eval_slices``).
This module knows nothing of the transformer, checkpoints or Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

CELLS = ("elman", "lstm", "none")


@dataclass(kw_only=True, frozen=True)
class RnnConfig:
    """Shape and training budget of the RNN baseline of the perplexity report."""

    cell: str = "elman"
    """"elman" (tanh RNN, the default: cheapest per step), "lstm", or "none" (no RNN row in the report)."""
    d_model: int = 128
    """Width of the embedding and of the recurrent state."""
    n_layer: int = 1
    """Stacked recurrent layers."""
    steps: int = 300
    """Optimizer steps of truncated BPTT over the train tokens."""
    batch_size: int = 16
    """Parallel streams the train tokens are cut into."""
    bptt: int = 64
    """Tokens per stream per step (gradients flow back this far)."""
    lr: float = 3e-3
    """Adam learning rate (constant; gradients clipped to norm 1)."""
    seed: int = 0
    """Seed of the initialization."""
    eval_streams: int = 16
    """Scoring cuts each evaluated array into this many pieces read in parallel (each starts from a zero state)."""

    def __post_init__(self) -> None:
        problems = []
        if self.cell not in CELLS:
            problems.append(f"cell must be one of {CELLS}, got {self.cell!r}")
        for name in ("d_model", "n_layer", "steps", "batch_size", "bptt", "eval_streams"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if problems:
            raise ValueError("invalid RnnConfig: " + "; ".join(problems))


class RnnLM(nn.Module):
    """Embedding, recurrent layers, linear head."""

    def __init__(self, vocab_size: int, config: RnnConfig) -> None:
        super().__init__()
        if config.cell == "none":
            raise ValueError("RnnConfig.cell='none' builds no model; use 'elman' or 'lstm'")
        rnn = nn.LSTM if config.cell == "lstm" else nn.RNN
        self.embed = nn.Embedding(vocab_size, config.d_model)
        self.rnn = rnn(config.d_model, config.d_model, config.n_layer, batch_first=True)
        self.head = nn.Linear(config.d_model, vocab_size)

    def forward(self, idx: Tensor, state: object = None) -> tuple[Tensor, object]:
        """Logits (B, T, V) for ids (B, T), and the state after the last token."""
        out, state = self.rnn(self.embed(idx), state)  # (B, T, d)
        return self.head(out), state


def _detach(state: object) -> object:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()  # type: ignore[union-attr]


def fit_rnn(arrays: Sequence[np.ndarray], vocab_size: int, config: RnnConfig) -> RnnLM:
    """Fit an :class:`RnnLM` on the concatenated ``arrays`` (the train split) with truncated BPTT."""
    tokens = np.concatenate([np.asarray(a) for a in arrays]).astype(np.int64)
    per_stream = tokens.size // config.batch_size
    if per_stream < 2:
        raise ValueError(f"need at least 2 * batch_size={2 * config.batch_size} train tokens, got {tokens.size}")
    streams = torch.from_numpy(tokens[: per_stream * config.batch_size].reshape(config.batch_size, per_stream))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RnnLM(vocab_size, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    state, pos = None, 0
    for _ in range(config.steps):
        if pos + 1 >= per_stream:  # the streams are used up: start again from a zero state
            state, pos = None, 0
        end = min(pos + config.bptt, per_stream - 1)
        x, y = streams[:, pos:end], streams[:, pos + 1 : end + 1]  # (B, bptt)
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state, pos = _detach(state), end
    return model.eval()


@torch.no_grad()
def rnn_nats(
    model: RnnLM, slices: Sequence[np.ndarray], groups: Sequence[np.ndarray], n_groups: int, streams: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(nats, tokens)`` per group of every target ``s[1:]`` of each slice (group ids ``g`` laid out like ``s``).

    Each slice is cut into ``streams`` contiguous pieces read side by side, in chunks, carrying the state.
    """
    nats, tokens = np.zeros(n_groups), np.zeros(n_groups, dtype=np.int64)
    for s, g in zip(slices, groups, strict=True):
        n = s.size - 1
        P = min(streams, n)
        L = math.ceil(n / P)
        x = torch.from_numpy(np.pad(s[:-1].astype(np.int64), (0, P * L - n))).view(P, L)
        y = torch.from_numpy(np.pad(s[1:].astype(np.int64), (0, P * L - n), constant_values=-100)).view(P, L)
        owner = np.pad(g[1:].astype(np.int64), (0, P * L - n)).reshape(P, L)
        state = None
        for i in range(0, L, 256):
            logits, state = model(x[:, i : i + 256], state)  # (P, chunk, V)
            yi = y[:, i : i + 256]
            loss = F.cross_entropy(logits.flatten(0, 1), yi.flatten(), reduction="none", ignore_index=-100)
            scored = (yi != -100).flatten().numpy()
            who = owner[:, i : i + 256].reshape(-1)[scored]
            nats += np.bincount(who, weights=loss.double().numpy()[scored], minlength=n_groups)
            tokens += np.bincount(who, minlength=n_groups)
    return nats, tokens
