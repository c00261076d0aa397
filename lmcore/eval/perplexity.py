"""Held-out loss, perplexity and bits per byte, for the neural model and the n-gram (and RNN) baselines alike.

Both evaluators score the same target tokens: every token of each array except its
first, in order, up to ``max_tokens`` in all (:func:`eval_slices`). The model reads them
in non-overlapping windows of ``context_length`` (its context restarts at each window);
the n-gram model uses its own short history. Bits per byte divide the total nats by
ln 2 and by the UTF-8 bytes of the target tokens. Compute that byte count once with
:func:`count_target_bytes` and pass the same ``total_bytes`` to both evaluators, which
makes their figures comparable with each other and across tokenizers.
Figures are sums over target tokens, so they can be kept per document
(:func:`document_of_tokens`) and added up again over any subset (:func:`subset_figures`),
e.g. the test documents that no training 13-gram touches.
This module knows nothing of training, checkpoints or Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.ngram import NGramLM
from lmcore.eval.rnn import RnnConfig, fit_rnn, rnn_nats
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
    return int(target_bytes(arrays, token_bytes, max_tokens=max_tokens).sum())


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


def document_of_tokens(arrays: Sequence[np.ndarray], eot_id: int) -> tuple[list[np.ndarray], int]:
    """For each array of a split, the document index of every position, and the number of documents.

    A split's documents are concatenated with ``eot_id`` after each, across arrays (shards);
    a position belongs to the document whose ``eot_id`` is the next one, itself included.
    """
    out, before = [], 0
    for a in arrays:
        is_eot = a == eot_id
        out.append((np.cumsum(is_eot, dtype=np.int64) - is_eot + before).astype(np.int32))
        before += int(is_eot.sum())
    trailing = bool(arrays) and arrays[-1].size > 0 and arrays[-1][-1] != eot_id
    return out, before + int(trailing)


Groups = tuple[list[np.ndarray], int]
"""Per array, a group index (e.g. the document) for every position, and the number of groups."""


def _group_slices(slices: list[np.ndarray], groups: Groups | None) -> tuple[list[np.ndarray], int]:
    """Group ids laid out like ``slices`` (all 0 when ``groups`` is None)."""
    if groups is None:
        return [np.zeros(s.size, dtype=np.int32) for s in slices], 1
    return [g[: s.size] for s, g in zip(slices, groups[0], strict=False)], groups[1]


def _windows(slices: list[np.ndarray], groups: list[np.ndarray], T: int) -> Iterator[tuple[np.ndarray, ...]]:
    """(inputs, targets, target groups) of at most T tokens each, stepping T through every slice."""
    for s, g in zip(slices, groups, strict=True):
        for i in range(0, s.size - 1, T):
            yield s[i : i + T], s[i + 1 : i + T + 1], g[i + 1 : i + T + 1]


def _batches(
    slices: list[np.ndarray], groups: list[np.ndarray], T: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """Windows stacked into (B, T) batches; short windows padded (inputs 0, targets -100, groups 0)."""
    inputs, targets, owners = [], [], []
    for x, y, g in _windows(slices, groups, T):
        inputs.append(np.pad(x.astype(np.int64), (0, T - x.size)))
        targets.append(np.pad(y.astype(np.int64), (0, T - y.size), constant_values=-100))
        owners.append(np.pad(g.astype(np.int64), (0, T - g.size)))
        if len(inputs) == batch_size:
            yield torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets)), np.stack(owners)
            inputs, targets, owners = [], [], []
    if inputs:
        yield torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets)), np.stack(owners)


@torch.no_grad()
def lm_nats(
    model: GPT,
    arrays: Sequence[np.ndarray],
    *,
    groups: Groups | None = None,
    context_length: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """``(nats, tokens)`` of ``model`` per group (one group if ``groups`` is None), on :func:`eval_slices`' targets.

    The model reads non-overlapping windows of ``context_length`` (default: the model's), so
    a group's figures depend on the groups around it only through the context it is given.
    """
    if not model.config.causal:
        raise ValueError(
            "an encoder (attention='bidirectional') sees the tokens it would predict, so it has no perplexity; "
            "score it by masked-token accuracy and pseudo-perplexity (lmcore.finetune.encoder.evaluate_encoder)"
        )
    T = model.config.context_length if context_length is None else context_length
    if not 1 <= T <= model.config.context_length or batch_size < 1:
        raise ValueError(f"need 1 <= context_length <= {model.config.context_length} and batch_size >= 1")
    slices = eval_slices(arrays, max_tokens)
    owner_slices, n_groups = _group_slices(slices, groups)
    nats, tokens = np.zeros(n_groups), np.zeros(n_groups, dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for x, y, g in _batches(slices, owner_slices, T, batch_size):
            logits, _ = model(x.to(device))  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none")  # (B*T,)
            scored = (y != -100).flatten().numpy()
            owner = g.reshape(-1)[scored]
            nats += np.bincount(owner, weights=loss.double().cpu().numpy()[scored], minlength=n_groups)
            tokens += np.bincount(owner, minlength=n_groups)
    finally:
        model.train(was_training)
    return nats, tokens


def ngram_nats(
    ngram: NGramLM, arrays: Sequence[np.ndarray], *, groups: Groups | None = None, max_tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(nats, tokens)`` of the n-gram model per group, on the same targets as :func:`lm_nats`."""
    slices = eval_slices(arrays, max_tokens)
    owner_slices, n_groups = _group_slices(slices, groups)
    nats, tokens = np.zeros(n_groups), np.zeros(n_groups, dtype=np.int64)
    for s, g in zip(slices, owner_slices, strict=True):
        nats -= np.bincount(g[1:], weights=ngram.log_prob(s), minlength=n_groups)
        tokens += np.bincount(g[1:], minlength=n_groups)
    return nats, tokens


def target_bytes(
    arrays: Sequence[np.ndarray],
    token_bytes: np.ndarray,
    *,
    groups: Groups | None = None,
    max_tokens: int | None = None,
) -> np.ndarray:
    """UTF-8 bytes of the evaluated target tokens per group (see :func:`count_target_bytes`)."""
    slices = eval_slices(arrays, max_tokens)
    owner_slices, n_groups = _group_slices(slices, groups)
    out = np.zeros(n_groups, dtype=np.int64)
    for s, g in zip(slices, owner_slices, strict=True):
        out += np.bincount(g[1:], weights=token_bytes[s[1:].astype(np.int64)], minlength=n_groups).astype(np.int64)
    return out


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
    nats, tokens = lm_nats(
        model, arrays, context_length=context_length, batch_size=batch_size, max_tokens=max_tokens, device=device
    )
    return _summary(float(nats.sum()), int(tokens.sum()), total_bytes, bytes_per_token)


def evaluate_ngram(
    ngram: NGramLM,
    arrays: Sequence[np.ndarray],
    *,
    total_bytes: int | None = None,
    bytes_per_token: float | None = None,
    max_tokens: int | None = None,
) -> dict[str, float | int | None]:
    """The same figures as :func:`evaluate_lm` for the n-gram baseline, on the same target tokens."""
    nats, tokens = ngram_nats(ngram, arrays, max_tokens=max_tokens)
    return _summary(float(nats.sum()), int(tokens.sum()), total_bytes, bytes_per_token)


def subset_figures(documents: dict[str, list], keep: Sequence[bool]) -> dict[str, Any]:
    """``{"documents", "model", "ngram"}`` (and ``"rnn"`` if scored) figures over the documents where ``keep`` is true.

    ``documents`` is a split's per-document entry of :func:`perplexity_comparison`. The figures
    are sums over the same target tokens as the whole split's, restricted to those documents;
    ``model``/``ngram`` are None when no kept document has a scored token.
    """
    if len(keep) != len(documents["tokens"]):
        raise ValueError(f"keep has {len(keep)} entries for {len(documents['tokens'])} documents")
    mask = np.asarray(keep, dtype=bool)
    tokens, n_bytes = int(np.asarray(documents["tokens"])[mask].sum()), int(np.asarray(documents["bytes"])[mask].sum())
    out: dict[str, Any] = {"documents": int(mask.sum())}
    for who in ("model", "ngram", "rnn"):
        if f"{who}_nats" not in documents:
            continue
        nats = float(np.asarray(documents[f"{who}_nats"], dtype=np.float64)[mask].sum())
        out[who] = _summary(nats, tokens, n_bytes, None) if tokens and n_bytes else None
    return out


@dataclass(frozen=True)
class Scoring:
    """How a split is scored: at most ``max_tokens`` target tokens (None: all), ``batch_size`` windows per forward
    pass on ``device``; the splits named in ``per_document`` are also scored document by document."""

    max_tokens: int | None = None
    batch_size: int = 8
    device: torch.device | str = "cpu"
    per_document: Collection[str] = ()


def perplexity_comparison(
    model: GPT,
    tokenizer: Tokenizer,
    split_arrays: dict[str, Sequence[np.ndarray]],
    train_arrays: Sequence[np.ndarray],
    *,
    scoring: Scoring = Scoring(),  # noqa: B008 (frozen, so one shared default is safe)
    ngram_order: int = 3,
    rnn: RnnConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """``{split: {"model": figures, "ngram": figures}}``: the model against an n-gram fitted on ``train_arrays``.

    Both are scored on the same target tokens and divided by the same UTF-8 byte count, so
    their bits per byte are directly comparable. For each split in ``per_document`` (documents
    separated by the tokenizer's ``<|endoftext|>``; see :class:`Scoring`), ``"documents"`` also holds, per document in
    order, ``tokens``, ``bytes``, ``model_nats`` and ``ngram_nats``, whose sums are the split's
    figures, so that :func:`subset_figures` scores any subset of documents without a new pass.
    ``rnn`` (unless None or ``cell="none"``) also fits an RNN on ``train_arrays`` and scores it on the
    same targets: ``"rnn"`` figures and ``rnn_nats`` per document.
    """
    token_bytes = token_byte_lengths(tokenizer)
    ngram = NGramLM.fit(list(train_arrays), model.config.vocab_size, order=ngram_order)
    if rnn is not None and rnn.cell == "none":
        rnn = None
    recurrent = None if rnn is None else fit_rnn(train_arrays, model.config.vocab_size, rnn)
    out: dict[str, dict[str, Any]] = {}
    for split, arrays in split_arrays.items():
        groups = document_of_tokens(arrays, tokenizer.eot_id) if split in scoring.per_document else None
        max_tokens = scoring.max_tokens
        n_bytes = target_bytes(arrays, token_bytes, groups=groups, max_tokens=max_tokens)
        model_nats, tokens = lm_nats(
            model, arrays, groups=groups, batch_size=scoring.batch_size, max_tokens=max_tokens, device=scoring.device
        )
        baseline_nats, _ = ngram_nats(ngram, arrays, groups=groups, max_tokens=max_tokens)
        total = int(n_bytes.sum())
        out[split] = {
            "model": _summary(float(model_nats.sum()), int(tokens.sum()), total, None),
            "ngram": _summary(float(baseline_nats.sum()), int(tokens.sum()), total, None),
        }
        if groups is not None:
            out[split]["documents"] = {
                "tokens": tokens.tolist(),
                "bytes": n_bytes.tolist(),
                "model_nats": model_nats.tolist(),
                "ngram_nats": baseline_nats.tolist(),
            }
        if recurrent is not None and rnn is not None:
            slices = eval_slices(arrays, max_tokens)
            rnn_total, rnn_tokens = rnn_nats(recurrent, slices, *_group_slices(slices, groups), rnn.eval_streams)
            assert (rnn_tokens == tokens).all()  # the same targets as the model's
            out[split]["rnn"] = _summary(float(rnn_total.sum()), int(rnn_tokens.sum()), total, None)
            if groups is not None:
                out[split]["documents"]["rnn_nats"] = rnn_total.tolist()
    return out
