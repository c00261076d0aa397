"""The classification prompt shared by every LM classifier, and batching helpers for it.

A text becomes the ChatML user turn ``{instruction}\n{text}``; the assistant's answer is the
label (``lmcore.finetune.label_lm``) or a head reads the prompt's last hidden state
(``lmcore.finetune.head``). This module knows nothing of training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from lmcore.data.tokenizer import Tokenizer
from lmcore.finetune.chat import prompt_ids

INSTRUCTION = "Classify the text."
"""Default first line of the user message; the text follows on the next line."""
Labeled = tuple[Sequence[str], Sequence[str]]
"""``(texts, labels)``, as ``lmcore.eval.baselines.load_labeled`` returns them (without its stats)."""


def prompt_messages(text: str, instruction: str = INSTRUCTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{instruction}\n{text}" if instruction else text}]


def prompts(texts: Sequence[str], tokenizer: Tokenizer, limit: int, instruction: str = INSTRUCTION) -> list[list[int]]:
    """ChatML prompt ids of each text (ending in ``<|im_start|>assistant\\n``), keeping the last ``limit``."""
    return [prompt_ids(prompt_messages(t, instruction), tokenizer)[-limit:] for t in texts]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)  # (B, T)


def by_length(lengths: Sequence[int], per: int) -> Iterator[np.ndarray]:
    """Index chunks of at most ``per``, in length order (less padding per batch)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for lo in range(0, len(order), per):
        yield order[lo : lo + per]


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
