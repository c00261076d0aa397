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
from dataclasses import dataclass, field
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


@dataclass(frozen=True, kw_only=True)
class VariantsConfig:
    """Which variants :func:`compare_variants` trains, the run each makes, and how they are scored."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    """Which of lmcore.finetune.variants.VARIANTS to train: dense, moe_token, moe_expert, prefix, span, masked."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The run every variant makes (its objective comes from the variant)."""
    max_eval_tokens: int | None = None
    """Score at most this many test tokens (None: all)."""
    pseudo_perplexity_rows: int = 4
    """Test rows of the context length for the encoder's pseudo-perplexity (context_length forwards each)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))  # lists from YAML/Dagster config
        if unknown := [name for name in self.variants if name not in VARIANTS]:
            raise ValueError(f"variants {unknown} are unknown; choose from {', '.join(VARIANTS)}")


@dataclass(frozen=True, kw_only=True)
class VariantsRun:
    """What :func:`compare_variants` trains, from what base, on which shards, and where."""

    config: VariantsConfig
    base_model: ModelConfig
    """The model each variant changes only as :data:`VARIANTS` says."""
    base_vocab: int
    """The tokenizer's vocabulary size; an objective's special tokens (``<|mask|>``, sentinels) follow it."""
    shard_root: Path
    """The token shards: "train" to train on, "val" to validate (and to measure the experts on)."""
    runs_dir: Path
    """Each variant trains (or resumes) in ``runs_dir/<run key>``."""
    meta_extra: dict[str, Any] | None = None
    """Fields added to every checkpoint's meta.json."""


def compare_variants(
    run: VariantsRun,
    test_arrays: Sequence[np.ndarray],
    token_bytes: np.ndarray,
    *,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train (or resume) each variant of ``run`` and score it on ``test_arrays``; figures by variant name.

    ``token_bytes`` gives each token id's length in bytes (for bits per byte). ``callback(name, record)``
    gets every training record.
    """
    from lmcore.model.moe import expert_report

    cfg, shard_root = run.config, run.shard_root
    max_eval_tokens = cfg.max_eval_tokens
    total_bytes = count_target_bytes(test_arrays, token_bytes, max_eval_tokens)
    out: dict[str, dict[str, Any]] = {}
    for name in cfg.variants:
        mc, tc = variant_configs(name, run.base_model, cfg.train, run.base_vocab)
        on_record = (lambda r, n=name: callback(n, r)) if callback else None
        summary = train(mc, tc, shard_root, run.runs_dir, callback=on_record, meta_extra=run.meta_extra)
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
            masked = evaluate_encoder(
                model,
                test_arrays,
                run.base_vocab,
                mask_rate=tc.mask_rate,
                max_windows=None,
                pll_rows=cfg.pseudo_perplexity_rows,
            )
            figures.update({k: masked[k] for k in ("masked_accuracy", "masked_tokens", "pseudo_perplexity")})
        if mc.n_experts:
            val = TokenLoader.from_split(shard_root, "val", context_length=mc.context_length, batch_size=8, seed=0)
            batches = [val.next_batch() for _ in range(min(8, val.batches_per_epoch))]
            figures["experts"] = expert_report(model, batches)
        out[name] = figures
    return out
