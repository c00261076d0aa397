"""``label_lm``: the LM fine-tuned to answer a ChatML classification prompt with the label.

The format is ChatML, the same as every other SFT example::

    <|im_start|>user\n{instruction}\n{text}<|im_end|>\n<|im_start|>assistant\n{label}<|im_end|>

Prediction scores every label: the total log-likelihood of the label's tokens and its
``<|im_end|>`` after the prompt (so a label that is a prefix of another cannot win by
being short), all labels of a batch of texts in one forward pass. Free generation
(greedy, stopped at ``<|im_end|>``) is reported too, as exact match. Prompts longer than
the context keep their last tokens. This module knows nothing of Dagster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.baselines import evaluate_classifier
from lmcore.finetune.chat import encode_plain, render_chatml
from lmcore.finetune.prompts import INSTRUCTION, Labeled, by_length, device_of, pad_right, prompt_messages, prompts
from lmcore.finetune.sft import FinetuneRun, chat_generate, finetune, init_model_config
from lmcore.finetune.sft_data import SFTExample, pack_examples
from lmcore.model.generate import greedy
from lmcore.model.gpt import GPT
from lmcore.train.job import Callback
from lmcore.train.summary import TrainSummary


def label_examples(
    texts: Sequence[str],
    labels: Sequence[str],
    tokenizer: Tokenizer,
    *,
    context_length: int,
    instruction: str = INSTRUCTION,
) -> list[SFTExample]:
    """One ChatML example per text, answered by its label (the loss is on the label and its ``<|im_end|>``)."""
    out = []
    for text, label in zip(texts, labels, strict=True):
        messages = [*prompt_messages(text, instruction), {"role": "assistant", "content": label}]
        rendered = render_chatml(messages, tokenizer, context_length=context_length)
        if rendered.dropped:
            raise ValueError(f"label {label!r} does not fit context_length={context_length}; use shorter labels")
        out.append(SFTExample(ids=rendered.ids, mask=rendered.mask))
    return out


def train_label_lm(
    run: FinetuneRun,
    train: Labeled,
    validation: Labeled,
    tokenizer: Tokenizer,
    *,
    instruction: str = INSTRUCTION,
    callback: Callback | None = None,
) -> TrainSummary:
    """Fine-tune ``run.init_checkpoint`` to write each text's label (examples packed); returns ``finetune``'s
    summary."""
    mc, _ = init_model_config(run.init_checkpoint)
    splits = [
        pack_examples(
            label_examples(*s, tokenizer, context_length=mc.context_length, instruction=instruction), mc.context_length
        )
        for s in (train, validation)
    ]
    return finetune(run, *splits, pad_id=tokenizer.pad_id, callback=callback)


@torch.no_grad()
def score_labels(
    model: GPT,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    instruction: str = INSTRUCTION,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """(N, L) total log-likelihood of ``label + <|im_end|>`` after each text's prompt, for every label.

    Each forward pass holds about ``batch_size`` sequences: every label appended to each of
    ``batch_size // L`` prompts of similar length, right-padded. ``progress(done, total)``
    about every 100 texts.
    """
    conts = [ids + [tokenizer.im_end_id] for ids in encode_plain(tokenizer, list(labels))]
    ctx = model.config.context_length
    limit = ctx + 1 - max(len(c) for c in conts)  # prompt + continuation - 1 inputs must fit the context
    if limit < 2:
        raise ValueError(f"labels of up to {max(len(c) for c in conts)} tokens leave no room in context {ctx}")
    prompt_list = prompts(texts, tokenizer, limit, instruction)
    scores = torch.empty(len(texts), len(labels))
    done = 0
    was_training = model.training
    model.eval()
    try:
        for idx in by_length([len(p) for p in prompt_list], max(1, batch_size // len(labels))):
            scores[torch.as_tensor(idx)] = _continuation_logprobs(model, [prompt_list[i] for i in idx], conts)
            done += len(idx)
            if progress and (done // 100 > (done - len(idx)) // 100 or done == len(texts)):
                progress(done, len(texts))
    finally:
        model.train(was_training)
    return scores


def _continuation_logprobs(model: GPT, prompt_rows: list[list[int]], conts: list[list[int]]) -> Tensor:
    """(P, C) summed log-probabilities of each continuation after each prompt, in one forward pass."""
    pairs = [(p, c) for p in prompt_rows for c in conts]
    x = pad_right([(p + c)[:-1] for p, c in pairs], 0).to(device_of(model))  # right padding is never attended
    rows = torch.tensor([r for r, (_, c) in enumerate(pairs) for _ in c], device=x.device)
    cols = torch.tensor([len(p) - 1 + k for p, c in pairs for k in range(len(c))], device=x.device)
    targets = torch.tensor([t for _, c in pairs for t in c], device=x.device)  # token k of c is predicted at len(p)-1+k
    logits, _ = model(x)  # (P*C, T, V)
    token_lp = logits[rows, cols].float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)  # (M,)
    per_pair = torch.zeros(len(pairs), device=x.device).index_add_(0, rows, token_lp)
    return per_pair.view(len(prompt_rows), len(conts)).cpu()


def generate_labels(
    model: GPT,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    instruction: str = INSTRUCTION,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy answers to each text's prompt, stopped at ``<|im_end|>``."""
    out = []
    for i, text in enumerate(texts, 1):
        out.append(
            chat_generate(model, tokenizer, prompt_messages(text, instruction), greedy(), max_new_tokens=max_new_tokens)
        )
        if progress and (i % 100 == 0 or i == len(texts)):
            progress(i, len(texts))
    return out


def evaluate_label_lm(
    model: GPT,
    tokenizer: Tokenizer,
    test: Labeled,
    labels: Sequence[str],
    *,
    instruction: str = INSTRUCTION,
    batch_size: int = 64,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Metrics of label scoring on ``test`` with its ``predictions``, plus ``generation_exact_match`` and
    ``generation_valid`` (a label)."""
    texts, truth = test
    step = (lambda what: lambda d, n: progress(what, d, n)) if progress else (lambda what: None)
    scores = score_labels(
        model, tokenizer, texts, labels, instruction=instruction, batch_size=batch_size, progress=step("score")
    )
    predicted = [labels[i] for i in scores.argmax(1).tolist()]
    metrics = {**evaluate_classifier(truth, predicted, labels), "predictions": predicted}
    longest = max(len(ids) for ids in encode_plain(tokenizer, list(labels)))
    generated = generate_labels(
        model, tokenizer, texts, max_new_tokens=longest + 1, instruction=instruction, progress=step("generate")
    )
    metrics["generation_exact_match"] = float(np.mean([g == t for g, t in zip(generated, truth, strict=True)]))
    metrics["generation_valid"] = float(np.mean([g in set(labels) for g in generated]))
    return metrics
