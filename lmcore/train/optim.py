"""The optimizer of every training run: AdamW, or Muon for the hidden matrices, built by :func:`build_optimizer`.

Pretraining, SFT and the classifiers all train through the loop, which calls :func:`build_optimizer` once;
``lr``, ``weight_decay``, ``betas``, ``muon_lr`` and ``muon_momentum`` come from :class:`TrainConfig`, so each
has one default. ``TrainConfig.optimizer = "muon"`` builds :class:`MuonAdamW`: one ``torch.optim.Optimizer`` whose
param groups say which rule they follow. The 2-D weights inside the transformer blocks take Muon
(Nesterov momentum, then the update orthogonalized by a Newton-Schulz iteration, as in Keller
Jordan's modded-nanogpt); embeddings, the output head, norms and biases take AdamW. Being one
optimizer with plain tensor state, it saves and loads through ``state_dict()`` like AdamW, so exact
resume, DDP and the FSDP full-state-dict checkpoints work unchanged. Under FSDP2 a Muon matrix is
sharded by rows: each rank gathers the full momentum-corrected gradient, orthogonalizes it (every
rank computes the same result) and keeps its own rows.

``torch.optim.Muon`` (torch >= 2.9) does the Muon half, but it accepts 2-D parameters only (so the
other half would be a second optimizer beside it, which the loop's one ``opt`` and the FSDP state-dict
helpers do not expect) and orthogonalizes in bfloat16, which is slow on CPU; hence this module.

Each group's ``lr_scale`` multiplies the scheduled learning rate (``lr_at``): Muon's groups get
``muon_lr / lr``, so one schedule drives both rules. This module knows nothing of data or files.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lmcore.model.gpt import Block
from lmcore.train.config import TrainConfig

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients chosen for the steepest slope at zero (Keller Jordan's Muon)."""

ADAM_EPS = 1e-8
"""AdamW's epsilon (torch's default), in both optimizers."""


def newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalize ``g`` (m, n): U S' V^T with S' near 1, where g = U S V^T."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16() if g.is_cuda else g.float()  # bfloat16 is fast on GPU only
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T  # (min, min)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with ``muon=True`` (2-D matrices), AdamW for the others, in one optimizer."""

    def __init__(self, groups: list[dict[str, Any]], *, lr: float, betas: tuple[float, float], momentum: float):
        defaults = dict(lr=lr, betas=betas, eps=ADAM_EPS, momentum=momentum, weight_decay=0.0, muon=False, lr_scale=1.0)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("MuonAdamW: Muon groups may hold 2-D matrices only")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        assert closure is None, "MuonAdamW takes no closure"
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    self._muon(p, group)
                else:
                    self._adamw(p, group)

    def _muon(self, p: Tensor, group: dict[str, Any]) -> None:
        state, mu = self.state[p], group["momentum"]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - mu)
        update = p.grad.lerp(buf, mu)  # Nesterov
        sharded = hasattr(update, "full_tensor")  # a DTensor under FSDP2
        full = update.full_tensor() if sharded else update  # (rows, cols)
        ortho = newton_schulz(full)
        if sharded:  # every rank holds the same result: keep this rank's rows, as the parameter does
            from torch.distributed.tensor import distribute_tensor

            ortho = distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None)
        rows, cols = full.shape
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(ortho, alpha=-group["lr"] * math.sqrt(max(1.0, rows / cols)))  # same RMS step for tall matrices

    def _adamw(self, p: Tensor, group: dict[str, Any]) -> None:
        state, (b1, b2) = self.state[p], group["betas"]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - b2**step)).add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1**step))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, over the trainable parameters of ``model`` (a GPT, or a module
    holding one, such as a classifier).

    Weight decay applies to matrices and embeddings (2-D and up), never to norms or biases. With "muon", the
    2-D weights inside the transformer blocks (a mixture's router excepted) come first, in a Muon group at
    ``muon_lr``; the others follow AdamW, in the same two groups as with "adamw".
    """
    params = [p for p in model.parameters() if p.requires_grad]
    muon = _muon_matrices(model, params) if cfg.optimizer == "muon" else []
    taken = {id(p) for p in muon}
    rest = [p for p in params if id(p) not in taken]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":  # both groups even when one is empty: the layout resumed checkpoints hold
        fused = all(p.is_cuda for p in params)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=ADAM_EPS, fused=fused or None)
    muon_group = {"params": muon, "muon": True, "weight_decay": cfg.weight_decay, "lr_scale": cfg.muon_lr / cfg.lr}
    groups = [g for g in [muon_group, *groups] if g["params"]]
    return MuonAdamW(groups, lr=cfg.lr, betas=cfg.betas, momentum=cfg.muon_momentum)


def _muon_matrices(model: nn.Module, params: list[Tensor]) -> list[Tensor]:
    """Of ``params``, the 2-D weights inside a :class:`~lmcore.model.gpt.Block`, in order; a mixture's router
    is a classifier over experts, so it stays with AdamW, as in its usual recipe."""
    in_blocks = {id(p) for m in model.modules() if isinstance(m, Block) for p in m.parameters()}
    in_blocks -= {id(p) for name, p in model.named_parameters() if name.endswith("mlp.router.weight")}
    return [p for p in params if p.dim() == 2 and id(p) in in_blocks]
