"""LoRA: low-rank adapters on chosen ``nn.Linear`` layers, and merging them back into the weights.

``apply_lora`` swaps each matching Linear for a :class:`LoRALinear` that keeps the very same
weight and bias Parameters (frozen, under the same state-dict names) and adds
``scale * B @ A`` with ``A`` (rank, in) Kaiming-uniform and ``B`` (out, rank) zero, so the
model computes exactly what it did before training (Hu et al. 2021, as in loralib/PEFT).
Everything else in the model is frozen. ``merge_lora`` folds the adapters into the weights
and puts plain Linears back, so the result is a plain GPT that loads anywhere a GPT does;
``merged_copy`` does the same without touching the model being trained (checkpoints).
This module knows nothing of training loops, data or files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F


@dataclass(kw_only=True, frozen=True)
class LoraConfig:
    """Which Linears get adapters, and their size."""

    rank: int = 8
    """Inner dimension r of each adapter (A is r x in, B is out x r)."""
    alpha: float = 16.0
    """The update is scaled by alpha / rank, so changing rank needs no new learning rate."""
    targets: tuple[str, ...] = ("attn.c_attn", "attn.c_proj")
    """Module-name suffixes to adapt (``attn.c_attn`` matches ``transformer.h.3.attn.c_attn``)."""
    dropout: float = 0.0
    """Dropout on the adapter's input (training only)."""

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            problems.append(f"alpha must be > 0, got {self.alpha}")
        if not self.targets or not all(isinstance(t, str) and t.strip(".") for t in self.targets):
            problems.append(f"targets must be non-empty module-name suffixes such as 'attn.c_attn', got {self.targets}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid LoraConfig: " + "; ".join(problems))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LoraConfig fields {unknown}; valid fields are {sorted(known)}")
        return cls(**{**d, **({"targets": tuple(d["targets"])} if "targets" in d else {})})


class LoRALinear(nn.Linear):
    """A Linear whose frozen weight gets a trainable low-rank update: ``y = x W^T + b + s * (x A^T) B^T``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight  # the same Parameter: tied weights stay tied, state-dict names stay
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init (loralib, PEFT)
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out) via (..., r)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def delta(self) -> Tensor:
        """The weight update ``scale * B @ A`` (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.size(0)}, scale={self.scale:g}"


def _matches(name: str, target: str) -> bool:
    target = target.strip(".")
    return name == target or name.endswith("." + target)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> int:
    """Freeze ``model`` and wrap every Linear whose name matches a target; return the trainable parameter count.

    Raises ValueError naming each target that matches no Linear (with the Linear names
    there are), or a target whose weight is shared with an embedding (a tied output head
    cannot be merged without changing the input embedding too).
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)}
    chosen = {n: m for n, m in linears.items() if any(_matches(n, t) for t in cfg.targets)}
    problems = [f"target {t!r} matches no Linear" for t in cfg.targets if not any(_matches(n, t) for n in linears)]
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    problems += [f"{n} shares its weight with an embedding (tied)" for n, m in chosen.items() if id(m.weight) in tied]
    if problems:
        suffixes = sorted({n.split(".", 3)[-1] if n.startswith("transformer.h.") else n for n in linears})
        raise ValueError(f"LoraConfig.targets: {'; '.join(problems)}; Linears here are {suffixes}")
    model.requires_grad_(False)
    for name, linear in chosen.items():
        _set_module(model, name, LoRALinear(linear, cfg.rank, cfg.alpha, cfg.dropout))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W += scale * B @ A) and put a plain Linear back; returns ``model``.

    The merged model has exactly the plain architecture's state dict. Parameters keep
    their ``requires_grad`` (frozen after ``apply_lora``).
    """
    for name, layer in lora_layers(model).items():
        layer.weight += layer.delta().to(layer.weight.dtype)
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight, plain.bias = layer.weight, layer.bias
        _set_module(model, name, plain)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A merged deep copy of ``model``, in eval mode; the model itself is left as it is (e.g. mid-training)."""
    return merge_lora(copy.deepcopy(model)).eval()
