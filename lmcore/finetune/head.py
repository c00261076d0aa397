"""``head``: the LM with a linear classification head on the last non-pad token of the prompt.

The head reads the final hidden state (after the last norm) of the same ChatML prompt
``label_lm`` uses, and trains with cross-entropy through the pretraining loop, the whole
model or head + LoRA. The LM's output head is replaced by ``Identity``, so ``GPT.forward``
hands back hidden states and the model code stays as it is. On an encoder
(``attention="bidirectional"``, :mod:`lmcore.finetune.encoder`) the same head reads the first
position instead, BERT's [CLS]. This module knows nothing of Dagster.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

from lmcore.data.tokenizer import Tokenizer
from lmcore.finetune.prompts import INSTRUCTION, Labeled, by_length, device_of, pad_right, prompts
from lmcore.finetune.sft import (
    EpochSource,
    FinetuneRun,
    epoch_seed,
    init_model_config,
    rank_share,
    run_from_init,
    share_size,
)
from lmcore.io import digest_of
from lmcore.model.checkpoint import load_checkpoint, read_meta
from lmcore.model.gpt import GPT, ModelConfig
from lmcore.train.job import Batch, BatchSource, Callback
from lmcore.train.summary import TrainSummary


class SequenceClassifier(nn.Module):
    """An LM with a linear head on the final hidden state of each row's last non-pad token.

    The LM's output head is replaced by ``Identity`` (the classifier does not need it).
    Rows are right-padded with ``pad_id``, which must not occur inside a prompt (the
    ``<|pad|>`` id never does: chat rendering encodes special-token text as plain bytes).

    On an encoder (``not lm.config.causal``) the head reads the FIRST position instead: every
    prompt starts with the same template token (``<|im_start|>``), which plays BERT's [CLS] and
    attends to the whole row (a prompt cut to the context keeps its last tokens, so its first is
    then a text token; it still sees the whole row). The encoder gets ``segment_ids = (idx ==
    pad_id)``: real tokens are segment 0 and padding segment 1, and attention stays inside a
    segment, so no real token attends to the padding and a row's logits do not depend on how
    much padding its batch gives it. A decoder needs neither: its last real token sees no padding.
    """

    def __init__(self, lm: GPT, num_labels: int, pad_id: int) -> None:
        super().__init__()
        lm.lm_head = nn.Identity()  # GPT.forward now returns the final hidden states (B, T, d)
        self.lm, self.pad_id, self.config = lm, pad_id, lm.config
        self.head = nn.Linear(lm.config.d_model, num_labels)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, segment_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Class logits (B, C) for prompts ``idx`` (B, T), and the mean cross-entropy against ``targets`` (B,)."""
        if segment_ids is not None:
            raise ValueError("the classifier takes one prompt per row, not packed rows")
        if self.config.causal:
            hidden, _ = self.lm(idx)  # (B, T, d)
            T = idx.size(1)
            pooled = T - 1 - (idx != self.pad_id).flip(1).int().argmax(1)  # (B,) index of the last non-pad token
        else:  # an encoder: [CLS] pooling on position 0; padding in a segment of its own
            hidden, _ = self.lm(idx, segment_ids=(idx == self.pad_id).long())
            pooled = torch.zeros(idx.size(0), dtype=torch.long, device=idx.device)
        logits = self.head(hidden[torch.arange(idx.size(0), device=idx.device), pooled])  # (B, C)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        return self.lm.flops_per_token()


def head_source(
    items: Sequence[tuple[list[int], int]],
    *,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    pad_id: int,
    fill: bool = False,
    **_: Any,
) -> EpochSource:
    """Batches ``(prompts right-padded (B, T), label indices (B,))`` in a new seeded order each epoch.

    Each rank takes its share of the epoch (:func:`~lmcore.finetune.sft.rank_share`; ``fill`` for
    validation). Within each window
    of 32 batches' worth of shuffled examples, a batch takes prompts of similar length (less padding);
    the batches are then shuffled.
    """
    share = share_size(items, world_size, fill=fill)

    def epoch(e: int) -> Iterator[Batch]:
        rng = random.Random(epoch_seed(seed, e))
        mine = rank_share(items, rank, world_size, epoch_seed(seed, e), fill=fill)
        order = list(range(len(mine)))
        rng.shuffle(order)
        batches = []
        for lo in range(0, len(order), 32 * batch_size):
            window = sorted(order[lo : lo + 32 * batch_size], key=lambda i: len(mine[i][0]))
            batches += [window[b : b + batch_size] for b in range(0, len(window), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            rows = [mine[i] for i in batch]
            yield pad_right([ids for ids, _ in rows], pad_id), torch.tensor([y for _, y in rows], dtype=torch.long)

    fingerprint = {"examples": len(items), "batch_size": batch_size, "seed": seed, "world_size": world_size}
    return EpochSource(epoch, -(-share // batch_size), fingerprint)


def train_head(
    run: FinetuneRun,
    train: Labeled,
    validation: Labeled,
    tokenizer: Tokenizer,
    labels: Sequence[str],
    *,
    instruction: str = INSTRUCTION,
    callback: Callback | None = None,
) -> TrainSummary:
    """Train a :class:`SequenceClassifier` from ``run.init_checkpoint`` (whole model, or head + ``run.lora``);
    returns the summary.

    The final checkpoint holds the merged classifier; read it with :func:`load_classifier`.
    """
    mc, _ = init_model_config(run.init_checkpoint)
    pad_id = tokenizer.pad_id
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in [*train[1], *validation[1]] if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not in labels={list(labels)}; add them")
    data = [
        list(zip(prompts(t, tokenizer, mc.context_length, instruction), [index[y] for y in ys], strict=True))
        for t, ys in (train, validation)
    ]

    def sources(*, validation: bool, **kw: Any) -> tuple[BatchSource, BatchSource | None]:
        val = head_source(data[1], pad_id=pad_id, fill=True, **kw) if validation else None
        return head_source(data[0], pad_id=pad_id, **kw), val

    return run_from_init(
        run,
        sources=sources,
        data_version=_digest(data),
        wrap=lambda lm: SequenceClassifier(lm, len(labels), pad_id),
        config={"head": {"labels": list(labels), "pad_id": pad_id}},
        callback=callback,
    )


def _digest(splits: Sequence[Sequence[tuple[list[int], int]]]) -> str:
    return digest_of([[[ids, y] for ids, y in split] for split in splits])


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[SequenceClassifier, list[str]]:
    """A :func:`train_head` checkpoint's classifier (eval mode, verified) and its label names."""
    meta = read_meta(path)
    head = meta["config"]["head"]
    model = SequenceClassifier(GPT(ModelConfig.from_dict(meta["config"]["model"])), len(head["labels"]), head["pad_id"])
    load_checkpoint(path, model.to(device))
    return model.eval(), head["labels"]


@torch.no_grad()
def predict_head(
    model: SequenceClassifier,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    instruction: str = INSTRUCTION,
    batch_size: int = 64,
) -> list[str]:
    """The argmax label of each text."""
    prompt_list = prompts(texts, tokenizer, model.config.context_length, instruction)
    out = [""] * len(texts)
    was_training = model.training
    model.eval()
    try:
        for idx in by_length([len(p) for p in prompt_list], batch_size):
            logits, _ = model(pad_right([prompt_list[i] for i in idx], model.pad_id).to(device_of(model)))
            for i, k in zip(idx.tolist(), logits.argmax(1).tolist(), strict=True):
                out[i] = labels[k]
    finally:
        model.train(was_training)
    return out
