"""TrainConfig: everything about a pretraining run except the model's shape and the data paths.

Kept apart from ``lmcore.train.loop`` so assets and the entry point can build and validate a
config without importing the training loop. This module knows nothing of Dagster.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = ("auto", "float32", "bfloat16")
DATA_PARALLEL = ("ddp", "fsdp")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
OBJECTIVES = ("causal", "prefix", "span", "masked")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

RESUMABLE_CHANGES = (
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.compile",
    "train.device",
    "train.peak_flops",
)
"""Fields a resumed run may change: they alter reporting, speed or placement, not the loss curve."""

SPEEDRUN: dict[str, Any] = dict(
    optimizer="muon", muon_lr=0.02, lr=3e-3, schedule="wsd", decay_fraction=0.4, min_lr_ratio=0.0
)
"""TrainConfig overrides of the speedrun recipe (with ``lmcore.model.gpt.SPEEDRUN``); a profile sets them
under ``pretrained_model.train``. Measured in benchmarks/recipe.py."""


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """Optimizer, schedule, batch and bookkeeping settings of one pretraining run."""

    max_steps: int = 300
    """Optimizer steps in the whole run; a resumed run continues to the same number. 0: no training, the starting
    weights (a base model's, or the previous model's) are evaluated and become the run's checkpoint."""
    batch_size: int = 8
    """Sequences (rows of context_length tokens, or examples) per micro-batch per process."""
    grad_accum_steps: int = 1
    """Micro-batches summed into one optimizer step; tokens per step = batch*accum*T*world_size."""
    lr: float = 6e-4
    """Peak learning rate, reached at the end of warmup (with optimizer="muon": of the AdamW parameters)."""
    min_lr_ratio: float = 0.1
    """The decay (cosine, or the linear cooldown of "wsd") ends at lr * min_lr_ratio on the last step."""
    schedule: str = "cosine"
    """After warmup: "cosine" (decay over all remaining steps) or "wsd" (warmup-stable-decay: hold lr, then
    decay linearly over the last ``decay_fraction`` of the steps after warmup)."""
    decay_fraction: float = 0.2
    """The "wsd" schedule's cooldown, as a fraction of the steps after warmup (1.0: a linear decay throughout)."""
    warmup_steps: int = 0
    """Steps of linear warmup from lr/warmup_steps to lr; 0 starts at lr."""
    weight_decay: float = 0.1
    """Decoupled weight decay (AdamW, and Muon's matrices), applied to matrices and embeddings only."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    optimizer: str = "adamw"
    """"adamw" for every parameter, or "muon": Muon (orthogonalized momentum, modded-nanogpt) for the 2-D
    weights inside the transformer blocks, AdamW at ``lr`` for embeddings, the head, norms and biases."""
    muon_lr: float = 0.02
    """Peak learning rate of the Muon matrices (scheduled like ``lr``); used with optimizer="muon" only."""
    muon_momentum: float = 0.95
    """Nesterov momentum of Muon; used with optimizer="muon" only."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    eval_every: int = 0
    """Validation loss every this many steps (and always at the last step); 0: only at the last step."""
    eval_batches: int = 20
    """Validation batches per process per evaluation; 0 disables validation (no "val" split needed)."""
    checkpoint_every: int = 0
    """Checkpoint every this many steps (and always at the last step); 0: only at the last step."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep in the run directory."""
    seed: int = 0
    """Seeds weight init, dropout and the data order."""
    dtype: str = "auto"
    """Autocast dtype: "float32", "bfloat16", or "auto" (bfloat16 on CUDA when supported, else float32)."""
    compile: bool = False
    """torch.compile the model (needs a working compiler toolchain; worth it on GPU)."""
    device: str = "auto"
    """"auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N" or "mps"; under torchrun
    CUDA ranks use cuda:LOCAL_RANK."""
    log_every: int = 10
    """Report loss, lr, tokens/s and MFU every this many steps (and at the last step)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU; None: a table for known GPUs, else a measured matmul."""
    data_parallel: str = "ddp"
    """How several processes share the model: "ddp" (a replica per process, gradients all-reduced) or "fsdp"
    (FSDP2: parameters, gradients and optimizer state sharded over the processes, for models that do not
    fit one device with DDP). Ignored by a single process."""
    objective: str = "causal"
    """What the model learns to predict (:mod:`lmcore.train.objectives`): "causal" (the next token), "prefix"
    (prefix LM: the rest of a row after a random bidirectional prefix), "span" (T5 span corruption: dropped
    spans after sentinels) or "masked" (BERT masked LM, an encoder). The model's ``attention`` must match:
    causal, prefix, prefix, bidirectional."""
    mask_rate: float = 0.15
    """objective="masked": fraction of positions chosen for the loss (80% masked, 10% random, 10% kept)."""
    corruption_rate: float = 0.15
    """objective="span": fraction of each row's tokens dropped in spans."""
    mean_span_length: float = 3.0
    """objective="span": mean length of a dropped span."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "grad_accum_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        nonnegative = ("max_steps", "warmup_steps", "weight_decay", "grad_clip", "eval_every", "eval_batches")
        for name in (*nonnegative, "checkpoint_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps > self.max_steps:
            problems.append(f"warmup_steps={self.warmup_steps} must not exceed max_steps={self.max_steps}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.muon_lr > 0:
            problems.append(f"muon_lr must be > 0, got {self.muon_lr}")
        if not 0 <= self.muon_momentum < 1:
            problems.append(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.decay_fraction <= 1:
            problems.append(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not _DEVICE.match(self.device):
            problems.append(f"device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.data_parallel not in DATA_PARALLEL:
            problems.append(f"data_parallel must be one of {DATA_PARALLEL}, got {self.data_parallel!r}")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("mask_rate", "corruption_rate"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not self.mean_span_length >= 1:
            problems.append(f"mean_span_length must be >= 1, got {self.mean_span_length}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            problems.append(f"peak_flops must be > 0 or None, got {self.peak_flops}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @property
    def min_lr(self) -> float:
        return self.lr * self.min_lr_ratio

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid fields are {sorted(known)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def resolved(self, device: str) -> TrainConfig:
        """A copy with ``device`` and ``dtype`` made concrete ("auto" replaced), as saved in checkpoints."""
        dtype = self.dtype
        if dtype == "auto":
            bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
            dtype = "bfloat16" if bf16 else "float32"
        return dataclasses.replace(self, device=device, dtype=dtype)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr``, or for
    ``schedule="wsd"`` constant and then a linear cooldown reaching ``min_lr`` on the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.max_steps - cfg.warmup_steps
    if cfg.schedule == "wsd":
        cooldown = max(1, round(cfg.decay_fraction * decay_steps))
        into = step - (cfg.max_steps - cooldown) + 1  # 1 on the first cooldown step, cooldown on the last
        return cfg.lr if into <= 0 else cfg.lr + min(into / cooldown, 1.0) * (cfg.min_lr - cfg.lr)
    if decay_steps <= 1:
        return cfg.lr
    progress = min((step - cfg.warmup_steps) / (decay_steps - 1), 1.0)  # 0 at the first, 1 at the last step
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


INITS = ("scratch", "previous")


@dataclass(kw_only=True, frozen=True)
class WarmStartConfig:
    """Where pretraining starts when the corpus has grown: from new weights, or from the previous model."""

    init: str = "scratch"
    """``scratch``: new weights (or, when ``base_model.source`` names one, the base model's); ``previous``: the last
    pretrained model's weights (same shape and tokenizer),
    trained on the new tokens plus ``replay_fraction`` of old ones, with the schedule restarted from step 0 (its
    warmup re-warms the learning rate) and a fresh optimizer."""
    replay_fraction: float = 0.25
    """With ``init: previous``: the share of training windows drawn from shards the previous model was trained
    on (the rest from shards it has not seen), in [0, 1)."""

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r}: choose one of {', '.join(INITS)}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"replay_fraction={self.replay_fraction}: must be in [0, 1) (the share of old windows)")
