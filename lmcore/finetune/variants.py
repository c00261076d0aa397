"""The textbook's other models, trained side by side on the same shards for the same steps and scored on the
same test split: a dense decoder, mixtures of experts (token-choice and expert-choice) at the dense model's
active parameter count, a prefix LM, T5 span corruption on a decoder, and a masked-LM encoder.

Each variant is a set of ModelConfig and TrainConfig overrides on one base (:data:`VARIANTS`), trained by
the one loop (``lmcore.train.loop.train``: same checkpoints, resume and metrics). Figures per variant:
the validation loss of its own objective (objectives differ, so these compare only within an objective),
test bits per byte where the model predicts plain text left to right (dense, MoE, and the prefix LM read
with an empty prefix), masked-token accuracy and pseudo-perplexity for the encoder, and expert utilization
for the mixtures. This module knows nothing of Dagster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmcore.data.loader import TokenLoader
from lmcore.eval.perplexity import count_target_bytes, evaluate_lm
from lmcore.finetune.encoder import evaluate_encoder
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.gpt import ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train
from lmcore.train.objectives import extra_token_ids

VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "dense": {},
    "moe_token": {"model": {"n_experts": 4, "expert_top_k": 1, "routing": "token"}},
    "moe_expert": {"model": {"n_experts": 4, "expert_top_k": 1, "routing": "expert"}},
    "prefix": {"model": {"attention": "prefix"}, "train": {"objective": "prefix"}},
    "span": {"model": {"attention": "prefix"}, "train": {"objective": "span"}},
    "masked": {"model": {"attention": "bidirectional"}, "train": {"objective": "masked"}},
}
"""Overrides of each variant on the base model and run. The mixtures keep the dense MLP's width per expert
and route each token through one expert, so their active parameters equal the dense model's (plus the
router's d_model x n_experts)."""


def variant_configs(
    name: str, base_model: ModelConfig, base_train: TrainConfig, base_vocab: int
) -> tuple[ModelConfig, TrainConfig]:
    """The model and run of variant ``name``; the vocabulary grows by the objective's special tokens."""
    if name not in VARIANTS:
        raise ValueError(f"variant {name!r} is unknown; choose from {', '.join(VARIANTS)}")
    overrides = VARIANTS[name]
    tc = dataclasses.replace(base_train, **overrides.get("train", {}))
    model = {"mlp_hidden": base_model.hidden_dim, **overrides.get("model", {})}
    mc = dataclasses.replace(base_model, **model)
    return dataclasses.replace(mc, vocab_size=base_vocab + len(extra_token_ids(tc, base_vocab, mc.context_length))), tc


def compare_variants(
    names: Sequence[str],
    base_model: ModelConfig,
    base_train: TrainConfig,
    shard_root: Path,
    runs_dir: Path,
    test_arrays: Sequence[np.ndarray],
    token_bytes: np.ndarray,
    *,
    base_vocab: int,
    max_eval_tokens: int | None = None,
    pseudo_perplexity_rows: int = 4,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
    meta_extra: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train (or resume) each variant in ``runs_dir`` and score it; figures by variant name.

    ``callback(name, record)`` gets every training record. ``pseudo_perplexity_rows`` rows of the
    context length are scored for the encoder's pseudo-perplexity (context_length forwards per row).
    """
    from lmcore.model.moe import expert_report

    total_bytes = count_target_bytes(test_arrays, token_bytes, max_eval_tokens)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        mc, tc = variant_configs(name, base_model, base_train, base_vocab)
        on_record = (lambda r, n=name: callback(n, r)) if callback else None
        summary = train(mc, tc, shard_root, runs_dir, callback=on_record, meta_extra=meta_extra)
        model, _ = load_trained_model(summary.checkpoint, "cpu")
        model.eval()
        figures: dict[str, Any] = {
            "objective": tc.objective,
            "attention": mc.attention,
            "val_loss": summary.val_loss,
            "tokens_seen": summary.tokens_seen,
            "train_seconds": summary.tokens_seen / summary.tokens_per_s if summary.tokens_per_s else None,
            "params": model.num_params(),
            "active_params": model.num_params(active=True),
            "checkpoint": str(summary.checkpoint),
            "val_history": summary.val_history,
        }
        if tc.objective in ("causal", "prefix"):
            test = evaluate_lm(model, test_arrays, total_bytes=total_bytes, max_tokens=max_eval_tokens)
            figures.update(test_perplexity=test["perplexity"], test_bits_per_byte=test["bits_per_byte"])
        if tc.objective == "masked":  # <|mask|> is the first id after the tokenizer's
            masked = evaluate_encoder(model, test_arrays, base_vocab, mask_rate=tc.mask_rate, max_windows=None,
                                      pll_rows=pseudo_perplexity_rows)  # fmt: skip
            figures.update({k: masked[k] for k in ("masked_accuracy", "masked_tokens", "pseudo_perplexity")})
        if mc.n_experts:
            val = TokenLoader.from_split(shard_root, "val", context_length=mc.context_length, batch_size=8, seed=0)
            batches = [val.next_batch() for _ in range(min(8, val.batches_per_epoch))]
            figures["experts"] = expert_report(model, batches)
        out[name] = figures
    return out
