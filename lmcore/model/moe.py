"""Mixture-of-experts MLP: a router and ``n_experts`` copies of the dense MLP, for :class:`lmcore.model.gpt.Block`.

``ModelConfig(n_experts=E)`` makes every block's MLP an :class:`MoE`. Two routings:

``routing="token"`` (token-choice; Shazeer et al. 2017, Switch Transformer / Fedus et al. 2021)
    Each token takes its ``expert_top_k`` most probable experts (softmax of the router logits, in float32),
    weighted by those probabilities renormalized to sum to 1 (so one expert gets a gate of exactly 1.0). An
    expert takes at most ``ceil(capacity_factor * k * N / E)`` of the N tokens of the batch; assignments beyond
    that, in token order (first come, first served; a token's own choices in order of preference), are dropped
    for that expert: they add nothing, and the residual stream carries the token past the MLP.
    ``capacity_factor=0`` means no limit. The Switch load-balancing loss ``E * sum_e f_e * P_e`` (``f_e``: the
    fraction of the k*N router choices, before the capacity cut, that went to expert e; ``P_e``: the mean router
    probability of e) is left in ``aux_loss``; GPT.forward adds ``aux_loss_coef`` times it to the training loss.
    It is 1.0 whenever the mean router probabilities are uniform, and grows as the routing concentrates.

``routing="expert"`` (expert-choice; Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing")
    Each expert takes the ``C = ceil(k * N / E)`` tokens with the highest router probability for it (softmax
    over the experts, per token), so the load is balanced by construction: ``capacity_factor`` is not used and
    ``aux_loss`` is 0. A token's output is the sum, over the experts that chose it, of probability times that
    expert's output; a token chosen by no expert is dropped (the residual carries it). Caveat: which tokens an
    expert takes depends on the whole batch, later positions included, so in a causal LM the choice leaks a
    little about the future within a batch, and the model computes differently when decoding one token at a
    time (a known limitation of expert-choice for autoregressive models; the paper trains encoder-decoders).

Routing is deterministic (no noise, no sampling; ties go the way ``torch.topk`` breaks them), so training
resumes exactly. Every expert runs every step, on the (possibly empty) rows routed to it, so each expert
parameter is part of the autograd graph and receives a gradient (zero when it got no token): DDP without
``find_unused_parameters`` does not hang.

With ``track = True`` the module also counts, without gradients, the assignments each expert processed, the
tokens that no expert processed and the tokens seen (:meth:`MoE.stats`); :func:`expert_report` does so over
a few batches of a whole model.

References: Fedus, Zoph, Shazeer 2021, "Switch Transformers" (load-balancing loss, capacity factor);
Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"; Shazeer et al. 2017 (top-k gating).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F


class RoutingConfig(Protocol):
    """What an :class:`MoE` reads of its config (``lmcore.model.gpt.ModelConfig`` has these fields)."""

    d_model: int
    n_experts: int
    expert_top_k: int
    routing: str
    capacity_factor: float


class MoE(nn.Module):
    """A router ``nn.Linear(d_model, n_experts)`` and ``n_experts`` experts, each a :class:`~lmcore.model.gpt.MLP`.

    Parameters are named ``router.weight`` and ``experts.<i>.<the MLP's own names>``. After each forward,
    ``aux_loss`` holds the load-balancing loss of that batch (a scalar with gradient, token-choice; 0 for
    expert-choice).
    """

    def __init__(self, config: RoutingConfig, make_expert: Callable[[], nn.Module]) -> None:
        """``make_expert()`` builds one expert (the block's dense MLP), so this module needs none of gpt's code."""
        super().__init__()
        if config.n_experts < 1:
            raise ValueError(f"n_experts must be >= 1 for an MoE layer, got {config.n_experts}")
        self.n_experts, self.top_k = config.n_experts, config.expert_top_k
        self.routing, self.capacity_factor = config.routing, config.capacity_factor
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = nn.ModuleList([make_expert() for _ in range(config.n_experts)])
        self.aux_loss: Tensor = torch.zeros(())
        self.track = False  # count routing statistics (see stats); off in training
        self.reset_stats()

    def expert_params(self) -> int:
        """Parameters of one expert (all experts have the same shape)."""
        return sum(p.numel() for p in self.experts[0].parameters())

    def capacity(self, n_tokens: int) -> int:
        """Most assignments one expert processes for a batch of ``n_tokens`` tokens (n_tokens when unlimited)."""
        if self.routing == "expert":
            return min(n_tokens, math.ceil(self.top_k * n_tokens / self.n_experts))
        if self.capacity_factor <= 0:
            return n_tokens
        return min(n_tokens, math.ceil(self.capacity_factor * self.top_k * n_tokens / self.n_experts))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape  # (B, T, d)
        flat = x.reshape(-1, shape[-1])  # (N, d)
        N = flat.size(0)
        with torch.autocast(device_type=flat.device.type, enabled=False):  # route in float32 under autocast too
            logits = F.linear(flat.float(), self.router.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)  # (N, E)
        if self.routing == "token":
            tokens, gates = self._token_choice(probs)
        else:
            tokens, gates = self._expert_choice(probs)
        out = torch.zeros_like(flat)  # (N, d); tokens no expert processed stay 0
        for e, expert in enumerate(self.experts):
            # every expert runs, on its rows (possibly none), so all its parameters get a gradient (DDP)
            y = expert(flat.index_select(0, tokens[e]))  # (n_e, d)
            out.index_add_(0, tokens[e], (y * gates[e].unsqueeze(-1)).to(out.dtype))
        if self.track:
            self._count(N, tokens)
        return out.view(shape)

    def _token_choice(self, probs: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Top-k experts per token, first come first served up to capacity; the Switch loss into ``aux_loss``.

        Returns, per expert, the token rows it processes (ascending) and their gates.
        """
        N, E, k = probs.size(0), self.n_experts, self.top_k
        top_p, top_i = probs.topk(k, dim=-1)  # (N, k), most probable first
        gates = top_p / top_p.sum(dim=-1, keepdim=True)  # (N, k), sums to 1
        choice = F.one_hot(top_i, E).reshape(N * k, E)  # (N*k, E): assignment (token, slot) -> expert
        # Switch loss: E * sum_e f_e * P_e; f_e counts choices (no gradient), P_e carries the gradient
        f = choice.sum(dim=0).float() / (N * k)  # (E,)
        P = probs.mean(dim=0)  # (E,)
        self.aux_loss = E * (f * P).sum()
        # position of each assignment in its expert's queue, in token order (then the token's preference order)
        position = (choice.cumsum(dim=0) * choice).sum(dim=-1) - 1  # (N*k,)
        kept = position < self.capacity(N)  # (N*k,)
        expert_of, token_of = top_i.reshape(-1), torch.arange(N, device=probs.device).repeat_interleave(k)
        flat_gates = gates.reshape(-1)  # (N*k,)
        rows, weights = [], []
        for e in range(E):
            sel = torch.nonzero(kept & (expert_of == e)).squeeze(-1)  # assignments, in token order
            rows.append(token_of.index_select(0, sel))
            weights.append(flat_gates.index_select(0, sel))
        return rows, weights

    def _expert_choice(self, probs: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Each expert's top-C tokens by router probability, C = ceil(k*N/E); no auxiliary loss."""
        C = self.capacity(probs.size(0))
        top_p, top_i = probs.t().topk(C, dim=-1)  # (E, C)
        top_i, order = top_i.sort(dim=-1)  # ascending token rows: a fixed summation order
        top_p = top_p.gather(-1, order)  # (E, C)
        self.aux_loss = probs.new_zeros(())
        return list(top_i.unbind(0)), list(top_p.unbind(0))

    @torch.no_grad()
    def _count(self, n_tokens: int, tokens: list[Tensor]) -> None:
        device = tokens[0].device
        if self._routed.device != device:
            self._routed, self._dropped, self._seen = (t.to(device) for t in (self._routed, self._dropped, self._seen))
        self._routed += torch.tensor([t.numel() for t in tokens], device=device)
        hit = torch.zeros(n_tokens, dtype=torch.bool, device=device)
        for t in tokens:
            hit[t] = True
        self._dropped += (~hit).sum()
        self._seen += n_tokens

    def reset_stats(self) -> None:
        """Zero the routing counters."""
        self._routed = torch.zeros(self.n_experts, dtype=torch.long)  # assignments each expert processed
        self._dropped = torch.zeros((), dtype=torch.long)  # tokens no expert processed
        self._seen = torch.zeros((), dtype=torch.long)  # tokens seen

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset (while ``track`` was on).

        ``utilization``: each expert's share of the processed assignments (sums to 1; [] before any token);
        ``dropped_fraction``: tokens that no expert processed / tokens seen; plus the raw counts.
        """
        routed = self._routed.cpu().tolist()
        total, seen, dropped = sum(routed), int(self._seen), int(self._dropped)
        return {
            "utilization": [r / total for r in routed] if total else [],
            "dropped_fraction": dropped / seen if seen else 0.0,
            "routed": routed,
            "tokens_dropped": dropped,
            "tokens_seen": seen,
        }


def expert_report(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Any]:
    """Routing statistics of a mixture-of-experts GPT (``lmcore.model.gpt.GPT``) over ``batches`` of ``(x, y)``
    token ids.

    Runs the model in eval mode without gradients, with tracking on in every :class:`MoE` (counters reset
    first), then restores the model's training mode and turns tracking off again.
    """
    config = model.config
    if not config.n_experts:
        raise ValueError("expert_report needs a mixture-of-experts model (ModelConfig.n_experts > 0), not a dense one")
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        for m in layers:
            m.reset_stats()
            m.track = True
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(device))
        per_layer = [{k: m.stats()[k] for k in ("utilization", "dropped_fraction")} for m in layers]
    finally:
        for m in layers:
            m.track = False
        model.train(was_training)
    return {
        "layers": per_layer,
        "active_params": model.num_params(active=True),
        "total_params": model.num_params(),
        "routing": config.routing,
        "n_experts": config.n_experts,
        "expert_top_k": config.expert_top_k,
    }
