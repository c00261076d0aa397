"""Supervised fine-tuning: the pretraining loop (``lmcore.train.loop.run_job``) on chat examples.

``finetune`` starts from a pretrained checkpoint, optionally with LoRA adapters, and trains
at whatever (lower) learning rate the ``TrainConfig`` says, on batches of rendered ChatML
examples (``lmcore.finetune.sft_data``): targets are -100 outside the assistant tokens and their
``<|im_end|>``, and packed rows carry ``segment_ids`` so attention stays inside each
conversation. Checkpoints, resume, NaN checks and metrics are the loop's own. Every
checkpoint's weights file is a plain GPT (LoRA merged), so ``load_trained_model`` reads it;
a LoRA run keeps its adapters in optimizer.pt ("trainable") and rebuilds the frozen base
from the init checkpoint on resume. The config of a run records the init checkpoint's
digest, so resuming on top of another init is refused. ``run_from_init`` is the part shared
with ``lmcore.finetune.classify``'s head: any module built around the init checkpoint's GPT.

This module knows nothing of Dagster or of where examples come from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmcore.data.tokenizer import Tokenizer
from lmcore.finetune.chat import prompt_ids
from lmcore.finetune.sft_data import SFTExample, sft_batches
from lmcore.model.checkpoint import MODEL_FILE, load_trained_model, read_meta, verify_checkpoint
from lmcore.model.generate import GenerationConfig, generate
from lmcore.model.gpt import GPT, ModelConfig
from lmcore.model.lora import LoraConfig, apply_lora, merged_copy
from lmcore.train.config import TrainConfig
from lmcore.train.job import NO_OUTLETS, Batch, BatchSource, Callback, Job, Outlets
from lmcore.train.loop import run_job
from lmcore.train.objectives import PromptPrefixSource
from lmcore.train.summary import TrainSummary


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSource:
    """A :class:`~lmcore.train.loop.BatchSource` over a finite list of examples, reshuffled every epoch.

    ``epoch_batches(epoch)`` yields one epoch of batches in that epoch's (seeded) order;
    the state is ``(epoch, position)``, and resuming replays the epoch's order up to there.
    ``fingerprint`` (example count, batch size, seed, ...) must match when state is loaded.
    """

    def __init__(
        self, epoch_batches: Callable[[int], Iterator[Batch]], batches_per_epoch: int, fingerprint: dict[str, Any]
    ) -> None:
        if batches_per_epoch < 1:
            raise ValueError(f"an epoch needs at least one batch; got {fingerprint}")
        self.epoch_batches, self.batches_per_epoch, self.fingerprint = epoch_batches, batches_per_epoch, fingerprint
        self.epoch = self.position = 0
        self._batches: Iterator[Batch] | None = None

    def next_batch(self) -> Batch:
        if self._batches is None:
            self._batches = islice(self.epoch_batches(self.epoch), self.position, None)
        batch = next(self._batches)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, **self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {k: state.get(k) for k in self.fingerprint}
        if saved != self.fingerprint:
            raise ValueError(f"batch source state {saved} does not fit {self.fingerprint}; resume with the same data")
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None


def share_size(items: Sequence[Any], world_size: int, *, fill: bool = False) -> int:
    """How many of ``items`` each of ``world_size`` processes gets per epoch (``fill``: rounded up).

    ValueError when, without ``fill``, there are fewer items than processes.
    """
    if fill:
        return -(-len(items) // world_size)
    if len(items) < world_size:
        raise ValueError(
            f"{len(items)} training examples cannot be shared by {world_size} processes (each needs at least "
            "one); add examples or run fewer processes"
        )
    return len(items) // world_size


def rank_share(items: Sequence[Any], rank: int, world_size: int, seed: int, *, fill: bool = False) -> list[Any]:
    """This rank's :func:`share_size` items of an epoch whose shuffle is seeded by ``seed``.

    The ranks' shares are equal in size, so every rank takes the same number of steps. Training
    (``fill`` False) drops the ``len(items) % world_size`` items left over, which change from epoch
    to epoch, so every item is trained on. Validation (``fill`` True) repeats items to fill the
    last shares instead, as ``DistributedSampler`` does, so every item is scored even when there
    are fewer than processes. One process gets every item, in order.
    """
    size = share_size(items, world_size, fill=fill)
    if world_size == 1:
        return list(items)
    order = np.resize(np.random.default_rng([seed, world_size]).permutation(len(items)), size * world_size)
    return [items[i] for i in order[rank::world_size]]


def sft_source(
    examples: Sequence[SFTExample],
    *,
    context_length: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    pad_id: int,
    fill: bool = False,
) -> EpochSource:
    """Batches of ``sft_batches`` over this rank's share of ``examples`` (:func:`rank_share`; ``fill`` for
    validation), in a new seeded order each epoch."""
    share = share_size(examples, world_size, fill=fill)
    fingerprint = {"examples": len(examples), "batch_size": batch_size, "seed": seed, "world_size": world_size}

    def epoch_batches(epoch: int) -> Iterator[Batch]:
        order_seed = epoch_seed(seed, epoch)
        mine = rank_share(examples, rank, world_size, order_seed, fill=fill)
        return sft_batches(mine, batch_size, context_length, order_seed, pad_id)

    return EpochSource(epoch_batches, math.ceil(share / batch_size), fingerprint)


def examples_digest(*splits: Sequence[SFTExample]) -> str:
    """sha256 over the ids, masks and segment lengths of every example of every split, in order."""
    h = hashlib.sha256()
    for examples in splits:
        h.update(f"split {len(examples)}\0".encode())
        for e in examples:
            for part in (e.ids, e.mask, e.segments):
                h.update(np.asarray(part, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()


def _check_examples(name: str, examples: Sequence[SFTExample], config: ModelConfig) -> list[str]:
    too_long = [i for i, e in enumerate(examples) if len(e.ids) - len(e.segments) > config.context_length]
    no_loss = [i for i, e in enumerate(examples) if not any(e.mask)]
    bad_ids = [i for i, e in enumerate(examples) if e.ids and not 0 <= min(e.ids) <= max(e.ids) < config.vocab_size]
    problems = []
    if too_long:
        problems.append(f"{name} {too_long[:5]} exceed context_length={config.context_length}; render with it")
    if no_loss:
        problems.append(f"{name} {no_loss[:5]} have no assistant token to learn from; drop them")
    if bad_ids:
        problems.append(f"{name} {bad_ids[:5]} hold ids outside the model's vocab_size={config.vocab_size}")
    return problems


def init_model_config(init_checkpoint: str | Path) -> tuple[ModelConfig, str]:
    """The model config and weights digest of a checkpoint to start from; raises if it is corrupt."""
    init = Path(init_checkpoint)
    if problems := verify_checkpoint(init):
        raise ValueError(f"init checkpoint {init} is not usable: " + "; ".join(problems))
    meta = read_meta(init)
    return ModelConfig.from_dict(meta["config"]["model"]), meta["files"][MODEL_FILE]


@dataclass(frozen=True, kw_only=True)
class FinetuneRun:
    """One training run from a pretrained checkpoint: what every fine-tuning entry point takes first
    (:func:`finetune`, ``head.train_head``, ``label_lm.train_label_lm``, ``adapt.adapt_lm``).

    ``lmcore.finetune.specs.SftSpec`` is one, with the paths of its inputs added.
    """

    init_checkpoint: Path
    """The checkpoint whose model (and tokenizer's vocabulary) the run starts from."""
    train: TrainConfig
    """The run's settings (objective causal: the task's own targets are the loss)."""
    runs_dir: Path
    """The run lives in ``runs_dir/<run key>`` (keyed by the init weights, the data, the config and LoRA)."""
    lora: LoraConfig | None = None
    """LoRA adapters (merged into the final checkpoint); None: every weight."""
    meta_extra: dict[str, Any] | None = None
    """Fields added to every checkpoint's meta.json (e.g. the tokenizer's path and digest)."""
    outlets: Outlets = NO_OUTLETS
    """Where the records and checkpoints go besides the run directory (a tracker, a mirror)."""


def run_from_init(
    run: FinetuneRun,
    *,
    sources: Callable[..., tuple[BatchSource, BatchSource | None]],
    data_version: str,
    wrap: Callable[[GPT], torch.nn.Module] | None = None,
    config: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> TrainSummary:
    """Run the training loop on the init checkpoint's model; returns its summary with ``trainable_params`` and
    ``init_checkpoint`` set.

    ``wrap`` turns the pretrained GPT into the module to train (e.g. a classifier; default:
    the GPT itself); ``run.lora`` then adapts the GPT inside it and freezes the rest of the GPT.
    ``config`` and ``data`` add fields to the run's identity and to ``meta["data"]``.
    """
    train_config, lora = run.train, run.lora
    if train_config.objective != "causal":
        raise ValueError(
            f"train.objective={train_config.objective!r}: fine-tuning learns the task's own targets (replies, "
            "labels); the objective is pretraining's (a prefix LM reads its prompt as its prefix by itself); "
            "leave it causal"
        )
    init = Path(run.init_checkpoint)
    mc, init_sha = init_model_config(init)
    counts: dict[str, int] = {}

    def build() -> torch.nn.Module:
        lm, _ = load_trained_model(init, "cpu")
        model = wrap(lm) if wrap else lm
        if lora is not None:
            apply_lora(lm, lora)
        counts["trainable"] = trainable_parameters(model)
        return model.train()

    job = Job(
        model_config=mc,
        build_model=build,
        sources=sources,
        config={
            "data_version": data_version,
            "init_checkpoint": init_sha,
            "lora": lora.to_dict() if lora else None,
            **(config or {}),
        },
        data={"init_checkpoint": str(init), "init_sha256": init_sha, "examples_sha256": data_version, **(data or {})},
        export=merged_copy if lora else None,
    )
    summary = run_job(
        lambda: job, train_config, run.runs_dir, callback=callback, meta_extra=run.meta_extra, outlets=run.outlets
    )
    return dataclasses.replace(summary, trainable_params=counts["trainable"], init_checkpoint=init)


def finetune(
    run: FinetuneRun,
    train_examples: Sequence[SFTExample],
    val_examples: Sequence[SFTExample],
    *,
    pad_id: int,
    callback: Callback | None = None,
) -> TrainSummary:
    """Fine-tune (or resume fine-tuning) the model of ``run.init_checkpoint`` on chat examples; return a summary.

    The summary is :func:`lmcore.train.loop.train`'s with ``trainable_params`` and
    ``init_checkpoint`` set. Examples may be packed (``pack_examples``); each must fit the
    model's context and hold at least one assistant token. ``val_examples`` are used when
    ``run.train.eval_batches`` > 0 (cycled if there are fewer batches). The final
    checkpoint is a plain GPT (LoRA merged) for ``load_trained_model``.
    """
    mc, _ = init_model_config(run.init_checkpoint)
    problems = _check_examples("train_examples", train_examples, mc)
    problems += _check_examples("val_examples", val_examples, mc)
    if not train_examples:
        problems.append("train_examples is empty")
    if run.train.eval_batches and not val_examples:
        problems.append("val_examples is empty; pass some or set eval_batches=0")
    if mc.attention == "bidirectional":
        problems.append(f"{run.init_checkpoint} is an encoder (a masked LM); chat fine-tuning needs a decoder")
    if problems:
        raise ValueError("cannot fine-tune: " + "; ".join(problems))

    def sources(*, validation: bool, **kw: Any) -> tuple[BatchSource, BatchSource | None]:
        val = sft_source(val_examples, pad_id=pad_id, fill=True, **kw) if validation else None
        train = sft_source(train_examples, pad_id=pad_id, **kw)
        if mc.attention == "prefix":  # the prompt is the prefix LM's two-way prefix, as in its pretraining
            return PromptPrefixSource(train), PromptPrefixSource(val) if val is not None else None
        return train, val

    return run_from_init(
        run,
        sources=sources,
        data_version=examples_digest(train_examples, val_examples),
        data={"train_examples": len(train_examples), "val_examples": len(val_examples)},
        callback=callback,
    )


def chat_generate(
    model: GPT,
    tokenizer: Tokenizer,
    messages: Sequence[dict[str, Any]],
    config: GenerationConfig,
    *,
    max_new_tokens: int = 256,
) -> str:
    """The assistant's reply to ``messages``: ChatML prompt, generated as ``config`` says (:func:`generate`),
    stopped at ``<|im_end|>``, decoded."""
    prefix_length = None
    if model.config.attention == "prefix":  # as in fine-tuning (prompt_prefix): the turns before the first reply
        first_reply = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        prefix_length = len(prompt_ids(messages[:first_reply], tokenizer))
    ids, stop = prompt_ids(messages, tokenizer), (tokenizer.im_end_id,)
    out = generate(model, ids, config, max_new_tokens=max_new_tokens, stop_ids=stop, prefix_length=prefix_length)
    return tokenizer.decode(out, skip_special_tokens=False)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
