"""Held-out loss, perplexity and bits per byte, for the neural model and the n-gram baseline alike.

Both evaluators score the same target tokens: every token of each array except its
first, in order, up to ``max_tokens`` in all (:func:`eval_slices`). The model reads them
in non-overlapping windows of ``context_length`` (its context restarts at each window);
the n-gram model uses its own short history. Bits per byte divide the total nats by
ln 2 and by the UTF-8 bytes of the target tokens. Compute that byte count once with
:func:`count_target_bytes` and pass the same ``total_bytes`` to both evaluators, which
makes their figures comparable with each other and across tokenizers.
This module knows nothing of training, checkpoints or Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.ngram import NGramLM
from lmcore.model.gpt import GPT


def eval_slices(arrays: Sequence[np.ndarray], max_tokens: int | None = None) -> list[np.ndarray]:
    """The stretches evaluated: views ``a[: k + 1]`` whose ``k`` targets are ``a[1 : k + 1]``, ``max_tokens`` in all."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    out, left = [], math.inf if max_tokens is None else max_tokens
    for a in arrays:
        k = int(min(a.size - 1, left))
        if k >= 1:
            out.append(a[: k + 1])
            left -= k
        if left <= 0:
            break
    if not out:
        raise ValueError("nothing to evaluate: every array has fewer than 2 tokens")
    return out


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 byte length of each id of a byte-level BPE ``tokenizers.Tokenizer``; special tokens count 0.

    In the byte-level alphabet every character of a token stands for one byte, so decoding
    a sequence yields exactly the sum of these lengths.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for token, i in tokenizer.get_vocab().items():
        if token in special:
            continue
        if not set(token) <= alphabet:
            raise ValueError(f"token {token!r} (id {i}) is not byte-level BPE; bytes per token cannot be counted")
        lengths[i] = len(token)
    return lengths


def count_target_bytes(arrays: Sequence[np.ndarray], token_bytes: np.ndarray, max_tokens: int | None = None) -> int:
    """UTF-8 bytes of the text the evaluated target tokens decode to (see :func:`eval_slices`)."""
    return int(sum(token_bytes[s[1:].astype(np.int64)].sum() for s in eval_slices(arrays, max_tokens)))


def _summary(
    nats: float, tokens: int, total_bytes: int | None, bytes_per_token: float | None
) -> dict[str, float | int | None]:
    if total_bytes is not None and bytes_per_token is not None:
        raise ValueError("give total_bytes or bytes_per_token, not both")
    n_bytes = bytes_per_token * tokens if bytes_per_token is not None else total_bytes
    if n_bytes is not None and n_bytes <= 0:
        raise ValueError(f"the byte count must be positive, got {n_bytes}")
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": None if n_bytes is None else nats / math.log(2) / n_bytes,
        "tokens": tokens,
    }


def _windows(slices: list[np.ndarray], T: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) of at most T tokens each, stepping T through every slice."""
    for s in slices:
        for i in range(0, s.size - 1, T):
            yield s[i : i + T], s[i + 1 : i + T + 1]


def _batches(slices: list[np.ndarray], T: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows stacked into (B, T) batches; short windows padded (inputs 0, targets -100)."""
    inputs, targets = [], []
    for x, y in _windows(slices, T):
        inputs.append(np.pad(x.astype(np.int64), (0, T - x.size)))
        targets.append(np.pad(y.astype(np.int64), (0, T - y.size), constant_values=-100))
        if len(inputs) == batch_size:
            yield torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))
            inputs, targets = [], []
    if inputs:
        yield torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


@torch.no_grad()
def evaluate_lm(
    model: GPT,
    arrays: Sequence[np.ndarray],
    *,
    context_length: int | None = None,
    batch_size: int = 8,
    total_bytes: int | None = None,
    bytes_per_token: float | None = None,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float | int | None]:
    """Mean cross-entropy (nats/token), perplexity and bits per byte of ``model`` on ``arrays``.

    ``context_length`` defaults to the model's. ``bits_per_byte`` is None unless
    ``total_bytes`` (preferred, from :func:`count_target_bytes`) or ``bytes_per_token`` is given.
    """
    T = model.config.context_length if context_length is None else context_length
    if not 1 <= T <= model.config.context_length or batch_size < 1:
        raise ValueError(f"need 1 <= context_length <= {model.config.context_length} and batch_size >= 1")
    slices = eval_slices(arrays, max_tokens)
    was_training = model.training
    model.eval()
    nats, tokens = 0.0, 0
    try:
        for x, y in _batches(slices, T, batch_size):
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
            nats += float(loss)
            tokens += int((y != -100).sum())
    finally:
        model.train(was_training)
    return _summary(nats, tokens, total_bytes, bytes_per_token)


def evaluate_ngram(
    ngram: NGramLM,
    arrays: Sequence[np.ndarray],
    *,
    total_bytes: int | None = None,
    bytes_per_token: float | None = None,
    max_tokens: int | None = None,
) -> dict[str, float | int | None]:
    """The same figures as :func:`evaluate_lm` for the n-gram baseline, on the same target tokens."""
    nats, tokens = 0.0, 0
    for s in eval_slices(arrays, max_tokens):
        nats -= float(ngram.log_prob(s).sum())
        tokens += s.size - 1
    return _summary(nats, tokens, total_bytes, bytes_per_token)


def perplexity_comparison(
    model: GPT,
    tokenizer: Tokenizer,
    split_arrays: dict[str, Sequence[np.ndarray]],
    train_arrays: Sequence[np.ndarray],
    *,
    ngram_order: int = 3,
    max_tokens: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """``{split: {"model": figures, "ngram": figures}}``: the model against an n-gram fitted on ``train_arrays``.

    Both are scored on the same target tokens and divided by the same UTF-8 byte count, so
    their bits per byte are directly comparable.
    """
    token_bytes = token_byte_lengths(tokenizer)
    ngram = NGramLM.fit(list(train_arrays), model.config.vocab_size, order=ngram_order)
    out = {}
    for split, arrays in split_arrays.items():
        n_bytes = count_target_bytes(arrays, token_bytes, max_tokens)
        out[split] = {
            "model": evaluate_lm(
                model, arrays, batch_size=batch_size, total_bytes=n_bytes, max_tokens=max_tokens, device=device
            ),
            "ngram": evaluate_ngram(ngram, arrays, total_bytes=n_bytes, max_tokens=max_tokens),
        }
    return out
