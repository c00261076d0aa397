"""A masked-LM encoder beside the pretrained decoder: pretrain it on the token shards, and measure it.

The classifier method ``encoder`` (:mod:`lmcore.finetune.classify`) puts a [CLS]-style head
(:class:`lmcore.finetune.head.SequenceClassifier`) on an encoder of the same shape as the pretrained
decoder, trained from scratch with BERT's masked-LM objective (``TrainConfig.objective="masked"``,
:mod:`lmcore.train.objectives`) on the same token shards:

* :func:`encoder_config`: the decoder's :class:`~lmcore.model.gpt.ModelConfig` with
  ``attention="bidirectional"`` and one more token id, ``<|mask|>``, appended after the shards'
  vocabulary (id = manifest ``vocab_size``).
* :func:`encoder_train_config`: the run's TrainConfig with ``objective="masked"``.
* :func:`pretrain_encoder`: the run, through the pretraining loop (:func:`lmcore.train.loop.train`:
  its own run directory, exact resume, DDP under torchrun).
* :func:`evaluate_encoder`: masked-token accuracy over windows of a held-out split, and
  pseudo-perplexity (Salazar et al. 2020) on a few of them.

This module knows nothing of Dagster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmcore.data.shards import load_manifest, open_split
from lmcore.finetune.prompts import device_of
from lmcore.model.gpt import ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.job import NO_OUTLETS, Callback, Outlets
from lmcore.train.loop import train
from lmcore.train.objectives import MASK, Objective, extra_token_ids, masked_accuracy, pseudo_perplexity
from lmcore.train.summary import TrainSummary

MASKED = TrainConfig(objective="masked")
"""A run of the encoder's objective (what it adds to the vocabulary depends on nothing else)."""
EVAL_SEED = 0
"""Seed of the evaluation's masks: every evaluation of the same split masks the same positions."""


def encoder_train_config(train_config: TrainConfig, field: str = "encoder_pretrain") -> TrainConfig:
    """``train_config`` with ``objective="masked"``.

    ``"causal"`` (TrainConfig's default, what a profile that leaves the field out arrives with) is
    replaced; any other objective than ``"masked"`` raises ValueError naming ``<field>.objective``.
    """
    if train_config.objective not in ("causal", "masked"):
        raise ValueError(
            f"{field}.objective={train_config.objective!r}: the encoder is pretrained with the masked-LM "
            f"objective; set {field}.objective: masked (or leave it out)"
        )
    return dataclasses.replace(train_config, objective="masked")


def shard_vocab(shard_root: Path) -> int:
    """The tokenizer vocabulary size the shards were written with (manifest ``vocab_size``)."""
    vocab = load_manifest(shard_root).get("vocab_size")
    if vocab is None:
        raise ValueError(f"{shard_root}: the manifest has no vocab_size; re-materialize the token shards")
    return int(vocab)


def encoder_config(lm_config: ModelConfig, base_vocab: int) -> ModelConfig:
    """The decoder's shape as an encoder: bidirectional attention, and the masked objective's ``<|mask|>`` after the
    ``base_vocab`` ids."""
    extras = extra_token_ids(MASKED, base_vocab, lm_config.context_length)
    return dataclasses.replace(lm_config, attention="bidirectional", vocab_size=base_vocab + len(extras))


def pretrain_encoder(
    lm_config: ModelConfig,
    train_config: TrainConfig,
    shard_root: Path,
    runs_dir: Path,
    *,
    callback: Callback | None = None,
    outlets: Outlets = NO_OUTLETS,
    meta_extra: dict[str, Any] | None = None,
) -> TrainSummary:
    """Pretrain (or resume) a masked-LM encoder shaped like ``lm_config`` on the shards; returns the loop's summary.

    The encoder starts from fresh weights (the decoder's are trained for another objective) and
    trains on the shards' "train" windows, validated on "val" (:func:`lmcore.train.loop.train`), in
    ``runs_dir/<run key>``. ``train_config`` goes through :func:`encoder_train_config`. The summary
    has ``mask_id`` set (the ``<|mask|>`` id, = the shards' vocabulary size).
    """
    shard_root = Path(shard_root)
    base = shard_vocab(shard_root)
    cfg = encoder_train_config(train_config)
    summary = train(
        encoder_config(lm_config, base),
        cfg,
        shard_root,
        Path(runs_dir),
        callback=callback,
        meta_extra=meta_extra,
        outlets=outlets,
    )
    return dataclasses.replace(summary, mask_id=extra_token_ids(cfg, base, lm_config.context_length)[MASK])


def _windows(arrays: Sequence[np.ndarray], T: int, max_windows: int | None) -> torch.Tensor:
    """Non-overlapping windows (N, T) of the arrays' tokens laid end to end (a short last one is dropped,
    unless it would be the only one)."""
    tokens = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]) if arrays else np.zeros(0, np.int64)
    if tokens.size == 0:
        raise ValueError("nothing to evaluate the encoder on: the split has no tokens")
    n = max(tokens.size // T, 1)
    if max_windows is not None:
        n = min(n, max_windows)
    if tokens.size < T:
        return torch.from_numpy(tokens[None, :])
    return torch.from_numpy(tokens[: n * T].reshape(n, T))


@torch.no_grad()
def evaluate_encoder(
    model: torch.nn.Module,
    test: Sequence[np.ndarray] | tuple[Path, str],
    mask_id: int,
    *,
    mask_rate: float = 0.15,
    max_windows: int | None = 256,
    pll_rows: int = 4,
    batch_size: int = 16,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """Masked-token accuracy and pseudo-perplexity of an encoder (a bidirectional GPT) on held-out tokens.

    ``test`` is the token arrays (e.g. ``open_split(root, "test").arrays``) or ``(shard_root, split)``.
    They are cut into non-overlapping windows of the model's context (at most ``max_windows``;
    None: all). Accuracy: each window masked as in training (:meth:`Objective.mask` with
    ``mask_rate``; ``mask_id`` = the base vocabulary size), each window's mask drawn from ``seed`` and the
    window's index, so they are the same on every call, whatever ``batch_size``; the share of chosen positions whose
    argmax is the original token. Pseudo-perplexity: exp(-PLL / tokens) over the first
    ``pll_rows`` windows (0: skipped, None returned), each token masked in turn; it costs
    context_length forward passes per row (in batches of 64), so keep ``pll_rows`` small.
    Returns ``masked_accuracy``, ``masked_tokens``, ``windows``, ``pseudo_perplexity``, ``pll_rows``.
    """
    if isinstance(test, tuple) and len(test) == 2 and isinstance(test[1], str):
        test = open_split(test[0], test[1]).arrays
    T = model.config.context_length
    rows = _windows(test, T, max_windows)
    objective = Objective(TrainConfig(objective="masked", mask_rate=mask_rate), mask_id, T)
    device = device_of(model)
    was_training = model.training
    model.eval()
    try:
        correct = counted = 0
        for lo in range(0, len(rows), batch_size):
            window = range(lo, min(lo + batch_size, len(rows)))
            masked = [objective.mask(rows[i : i + 1], np.random.default_rng([seed, i])) for i in window]
            inputs, targets = torch.cat([m[0] for m in masked]), torch.cat([m[1] for m in masked])
            logits, _ = model(inputs.to(device))
            hit, n = masked_accuracy(logits, targets.to(device))
            correct, counted = correct + hit, counted + n
        pll = rows[: max(pll_rows, 0)].to(device)
        ppl = pseudo_perplexity(model, pll, mask_id) if len(pll) else None
    finally:
        model.train(was_training)
    return {
        "masked_accuracy": correct / counted,
        "masked_tokens": counted,
        "windows": len(rows),
        "pseudo_perplexity": ppl,
        "pll_rows": len(pll),
    }
