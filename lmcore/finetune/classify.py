"""Text classification with the LM, three ways, scored on the same test split.

* ``label_lm``: fine-tune the LM (``lmcore.finetune.sft.finetune``) to answer a ChatML prompt with
  the label. The format is ChatML, the same as every other SFT example::

      <|im_start|>user\\n{instruction}\\n{text}<|im_end|>\\n<|im_start|>assistant\\n{label}<|im_end|>

  Prediction scores every label: the total log-likelihood of the label's tokens and its
  ``<|im_end|>`` after the prompt (so a label that is a prefix of another cannot win by
  being short), all labels of a batch of texts in one forward pass. Free generation
  (greedy, stopped at ``<|im_end|>``) is reported too, as exact match.
* ``head``: the LM with a linear head on the final hidden state (after the last norm) of
  the last non-pad token of the same prompt, trained with cross-entropy through the same
  loop, the whole model or head + LoRA. The LM's output head is replaced by ``Identity``,
  so ``GPT.forward`` hands back hidden states and model.py stays as it is.
* ``bow``: the bag-of-words baseline of ``lmcore.eval.baselines`` (C tuned on validation).

Optionally, both LM methods start from a task-adapted LM (``lmcore.finetune.adapt``): the pretrained
LM trained further on the task's own train texts with the plain next-token objective,
labels unused ("task-adaptive pretraining", Gururangan et al. 2020).

Prompts longer than the context keep their last tokens. This module knows nothing of
Dagster; progress leaves through a callback.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

from lmcore.data.tokenizer import IM_END, PAD
from lmcore.eval.baselines import evaluate_classifier, tune_bow_baseline
from lmcore.finetune.adapt import adapt_lm
from lmcore.finetune.chat import encode_plain, prompt_ids, render_chatml
from lmcore.finetune.sft import (
    EpochSource,
    chat_generate,
    epoch_seed,
    finetune,
    init_model_config,
    rank_share,
    run_from_init,
)
from lmcore.finetune.sft_data import SFTExample, pack_examples
from lmcore.io import digest_of
from lmcore.model.checkpoint import load_checkpoint, load_trained_model, read_meta
from lmcore.model.gpt import GPT, ModelConfig
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig
from lmcore.train.loop import Batch, BatchSource, Callback

INSTRUCTION = "Classify the text."
"""Default first line of the user message; the text follows on the next line."""
METHODS = ("label_lm", "head", "bow")
Labeled = tuple[Sequence[str], Sequence[str]]
"""``(texts, labels)``, as ``lmcore.eval.baselines.load_labeled`` returns them (without its stats)."""


def prompt_messages(text: str, instruction: str = INSTRUCTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{instruction}\n{text}" if instruction else text}]


def label_examples(
    texts: Sequence[str], labels: Sequence[str], tokenizer: Any, *, context_length: int, instruction: str = INSTRUCTION
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


def prompts(texts: Sequence[str], tokenizer: Any, limit: int, instruction: str = INSTRUCTION) -> list[list[int]]:
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


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------- label_lm


def train_label_lm(
    init_checkpoint: Path,
    train_config: TrainConfig,
    train: Labeled,
    validation: Labeled,
    tokenizer: Any,
    run_dir: Path,
    *,
    lora: LoraConfig | None = None,
    instruction: str = INSTRUCTION,
    callback: Callback | None = None,
    meta_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune the init checkpoint to write each text's label (examples packed); returns ``finetune``'s summary."""
    mc, _ = init_model_config(init_checkpoint)
    splits = [
        pack_examples(
            label_examples(*s, tokenizer, context_length=mc.context_length, instruction=instruction), mc.context_length
        )
        for s in (train, validation)
    ]
    pad_id = tokenizer.token_to_id(PAD)
    return finetune(
        init_checkpoint,
        train_config,
        *splits,
        run_dir,
        pad_id=pad_id,
        lora=lora,
        callback=callback,
        meta_extra=meta_extra,
    )


@torch.no_grad()
def score_labels(
    model: GPT,
    tokenizer: Any,
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
    conts = [ids + [tokenizer.token_to_id(IM_END)] for ids in encode_plain(tokenizer, list(labels))]
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
    x = pad_right([(p + c)[:-1] for p, c in pairs], 0).to(_device(model))  # right padding is never attended
    rows = torch.tensor([r for r, (_, c) in enumerate(pairs) for _ in c], device=x.device)
    cols = torch.tensor([len(p) - 1 + k for p, c in pairs for k in range(len(c))], device=x.device)
    targets = torch.tensor([t for _, c in pairs for t in c], device=x.device)  # token k of c is predicted at len(p)-1+k
    logits, _ = model(x)  # (P*C, T, V)
    token_lp = logits[rows, cols].float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)  # (M,)
    per_pair = torch.zeros(len(pairs), device=x.device).index_add_(0, rows, token_lp)
    return per_pair.view(len(prompt_rows), len(conts)).cpu()


def generate_labels(
    model: GPT,
    tokenizer: Any,
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
            chat_generate(
                model, tokenizer, prompt_messages(text, instruction), max_new_tokens=max_new_tokens, temperature=0
            )
        )
        if progress and (i % 100 == 0 or i == len(texts)):
            progress(i, len(texts))
    return out


def evaluate_label_lm(
    model: GPT,
    tokenizer: Any,
    test: Labeled,
    labels: Sequence[str],
    *,
    instruction: str = INSTRUCTION,
    batch_size: int = 64,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Metrics of label scoring on ``test``, plus ``generation_exact_match`` and ``generation_valid`` (a label)."""
    texts, truth = test
    step = (lambda what: lambda d, n: progress(what, d, n)) if progress else (lambda what: None)
    scores = score_labels(
        model, tokenizer, texts, labels, instruction=instruction, batch_size=batch_size, progress=step("score")
    )
    metrics = evaluate_classifier(truth, [labels[i] for i in scores.argmax(1).tolist()], labels)
    longest = max(len(ids) for ids in encode_plain(tokenizer, list(labels)))
    generated = generate_labels(
        model, tokenizer, texts, max_new_tokens=longest + 1, instruction=instruction, progress=step("generate")
    )
    metrics["generation_exact_match"] = float(np.mean([g == t for g, t in zip(generated, truth, strict=True)]))
    metrics["generation_valid"] = float(np.mean([g in set(labels) for g in generated]))
    return metrics


# ---------------------------------------------------------------- head


class SequenceClassifier(nn.Module):
    """An LM with a linear head on the final hidden state of each row's last non-pad token.

    The LM's output head is replaced by ``Identity`` (the classifier does not need it).
    Rows are right-padded with ``pad_id``, which must not occur inside a prompt (the
    ``<|pad|>`` id never does: chat rendering encodes special-token text as plain bytes).
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
        hidden, _ = self.lm(idx)  # (B, T, d)
        T = idx.size(1)
        last = T - 1 - (idx != self.pad_id).flip(1).int().argmax(1)  # (B,) index of the last non-pad token
        logits = self.head(hidden[torch.arange(idx.size(0), device=idx.device), last])  # (B, C)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss

    def configure_optimizer(
        self, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
    ) -> torch.optim.AdamW:
        return GPT.configure_optimizer(self, lr, weight_decay, betas)  # type: ignore[arg-type]  # same groups

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
    **_: Any,
) -> EpochSource:
    """Batches ``(prompts right-padded (B, T), label indices (B,))`` in a new seeded order each epoch.

    Within each window of 32 batches' worth of shuffled examples, a batch takes prompts of
    similar length (less padding); the batches are then shuffled.
    """
    mine = rank_share(items, rank, world_size)

    def epoch(e: int) -> Iterator[Batch]:
        rng = random.Random(epoch_seed(seed, e))
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
    return EpochSource(epoch, -(-len(mine) // batch_size), fingerprint)


def train_head(
    init_checkpoint: Path,
    train_config: TrainConfig,
    train: Labeled,
    validation: Labeled,
    tokenizer: Any,
    labels: Sequence[str],
    run_dir: Path,
    *,
    lora: LoraConfig | None = None,
    instruction: str = INSTRUCTION,
    callback: Callback | None = None,
    meta_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a :class:`SequenceClassifier` from the init checkpoint (whole model, or head + LoRA); returns the summary.

    The final checkpoint holds the merged classifier; read it with :func:`load_classifier`.
    """
    mc, _ = init_model_config(init_checkpoint)
    pad_id = tokenizer.token_to_id(PAD)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in [*train[1], *validation[1]] if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not in labels={list(labels)}; add them")
    data = [
        list(zip(prompts(t, tokenizer, mc.context_length, instruction), [index[y] for y in ys], strict=True))
        for t, ys in (train, validation)
    ]

    def sources(*, validation: bool, **kw: Any) -> tuple[BatchSource, BatchSource | None]:
        val = head_source(data[1], pad_id=pad_id, **kw) if validation else None
        return head_source(data[0], pad_id=pad_id, **kw), val

    return run_from_init(
        init_checkpoint,
        train_config,
        run_dir,
        sources=sources,
        data_version=_digest(data),
        lora=lora,
        wrap=lambda lm: SequenceClassifier(lm, len(labels), pad_id),
        config={"head": {"labels": list(labels), "pad_id": pad_id}},
        callback=callback,
        meta_extra=meta_extra,
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
    tokenizer: Any,
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
            logits, _ = model(pad_right([prompt_list[i] for i in idx], model.pad_id).to(_device(model)))
            for i, k in zip(idx.tolist(), logits.argmax(1).tolist(), strict=True):
                out[i] = labels[k]
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------- all three


def evaluate_all(
    init_checkpoint: Path,
    tokenizer: Any,
    train: Labeled,
    validation: Labeled,
    test: Labeled,
    run_dir: Path,
    *,
    label_config: TrainConfig,
    head_config: TrainConfig,
    label_lora: LoraConfig | None = None,
    head_lora: LoraConfig | None = None,
    adapt_config: TrainConfig | None = None,
    methods: Sequence[str] = METHODS,
    instruction: str = INSTRUCTION,
    seed: int = 0,
    batch_size: int = 64,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train each method on ``train`` and score it on the same ``test``; returns ``{"labels", method: metrics}``.

    Metrics per method: accuracy, macro_f1, confusion (rows true, columns predicted, in
    ``labels`` order), labels, seconds, and ``train`` (the training summary, trimmed; for
    bow the chosen C). label_lm adds generation_exact_match and generation_valid. The
    LM methods train in ``run_dir/label_lm-<key>`` and ``run_dir/head-<key>`` (and resume
    there), where the key digests the init weights, training config and LoRA, so changing
    one method's config retrains that method only. With ``adapt_config``, both start from
    :func:`adapt_lm` run in ``run_dir/adapt-<key>``, whose summary is returned under
    ``"adaptation"``. ``run_dir`` belongs to one dataset: a run there on other data is
    refused on resume. ``callback`` gets ``{"method", "stage": "train", ...loop record}``
    (method ``adapt`` too) and ``{"method", "stage": "score" | "generate" | "predict",
    "done", "total"}``.
    """
    if bad := sorted(set(methods) - set(METHODS)):
        raise ValueError(f"methods {bad} are unknown; choose from {METHODS}")
    labels = sorted(set(train[1]))
    run_dir = Path(run_dir)
    results: dict[str, Any] = {"labels": labels}
    if adapt_config is not None and {"label_lm", "head"} & set(methods):
        start = time.perf_counter()
        summary = adapt_lm(
            init_checkpoint, adapt_config, train[0], validation[0], tokenizer,
            method_dir(run_dir, "adapt", init_checkpoint, adapt_config),
            callback=report_train("adapt", callback),
        )  # fmt: skip
        init_checkpoint = Path(summary["checkpoint"])
        results["adaptation"] = {**_brief(summary), "seconds": time.perf_counter() - start}

    def report(method: str, stage: str) -> Callable[..., None] | None:
        if callback is None:
            return None
        if stage == "train":
            return report_train(method, callback)
        return lambda what, done, total: callback({"method": method, "stage": what, "done": done, "total": total})

    for method in (m for m in METHODS if m in methods):
        start = time.perf_counter()
        if method == "bow":
            model, chosen = tune_bow_baseline(
                (list(train[0]), list(train[1])), (list(validation[0]), list(validation[1])), seed=seed
            )
            metrics, brief = evaluate_classifier(test[1], model.predict(list(test[0])), labels), chosen
        elif method == "label_lm":
            summary = train_label_lm(
                init_checkpoint,
                label_config,
                train,
                validation,
                tokenizer,
                method_dir(run_dir, method, init_checkpoint, label_config, label_lora),
                lora=label_lora,
                instruction=instruction,
                callback=report(method, "train"),
            )
            lm, _ = load_trained_model(summary["checkpoint"])
            metrics = evaluate_label_lm(
                lm,
                tokenizer,
                test,
                labels,
                instruction=instruction,
                batch_size=batch_size,
                progress=report(method, "predict"),
            )
            brief = _brief(summary)
        else:
            summary = train_head(
                init_checkpoint,
                head_config,
                train,
                validation,
                tokenizer,
                labels,
                method_dir(run_dir, method, init_checkpoint, head_config, head_lora),
                lora=head_lora,
                instruction=instruction,
                callback=report(method, "train"),
            )
            classifier, _ = load_classifier(summary["checkpoint"])
            predicted = predict_head(
                classifier, tokenizer, test[0], labels, instruction=instruction, batch_size=batch_size
            )
            metrics, brief = evaluate_classifier(test[1], predicted, labels), _brief(summary)
        results[method] = {**metrics, "seconds": time.perf_counter() - start, "train": brief}
    return results


def method_dir(
    run_dir: Path, method: str, init_checkpoint: Path, config: TrainConfig, lora: LoraConfig | None = None
) -> Path:
    """``run_dir/<method>-<digest of init weights, config and LoRA>``: one run directory per distinct run."""
    _, init_sha = init_model_config(init_checkpoint)
    key = digest_of([init_sha, config.to_dict(), lora.to_dict() if lora else None])[:12]
    return Path(run_dir) / f"{method}-{key}"


def report_train(method: str, callback: Callable[[dict[str, Any]], None] | None) -> Callback | None:
    return None if callback is None else lambda record: callback({"method": method, "stage": "train", **record})


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("step", "train_loss", "val_loss", "tokens_seen", "tokens_per_s", "params", "trainable_params", "checkpoint")
    return {k: summary.get(k) for k in keys}
