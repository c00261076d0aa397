"""How several processes share one model: replicated (DDP) or sharded (FSDP2 ``fully_shard``).

With ``TrainConfig.data_parallel = "fsdp"`` each transformer block, then the whole model, is
wrapped by ``torch.distributed.fsdp.fully_shard``: parameters, gradients and optimizer state
are split over the ranks and gathered block by block for compute, so a model that does not fit
one device with DDP can train. Checkpoints stay the plain model's: rank 0 gathers the full state
(``torch.distributed.checkpoint.state_dict``, offloaded to CPU) into a CPU copy of the unsharded
model kept for that purpose, so ``model.safetensors`` loads into a plain ``GPT`` and an FSDP run
resumes from a DDP checkpoint of the same run identity or vice versa in format (the run key
still differs, as the arithmetic does). The optimizer state of an FSDP run is saved by parameter
name (the full-state-dict format), a DDP run's by parameter index, as ``torch.optim`` does.

This module knows nothing of data, checkpoints on disk or Dagster.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class Sharded:
    """A model wrapped by ``fully_shard`` over all ranks, with rank 0's CPU copy for checkpoints."""

    def __init__(self, model: nn.Module, device: torch.device, is_main: bool) -> None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from lmcore.model.gpt import Block

        self.plain = copy.deepcopy(model).cpu() if is_main else None
        """Rank 0's unsharded copy: what gathered state is loaded into before saving, and restored from."""
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        units = [m for m in model.modules() if isinstance(m, Block)]
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        self.model = model

    def gather(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Collective: load the full weights into ``plain`` on rank 0 and return the full optimizer state there
        (None on the other ranks)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        state = get_optimizer_state_dict(self.model, optimizer, options=options)
        if self.plain is None:
            return None
        self.plain.load_state_dict(weights, strict=False)  # a tied matrix appears once in the gathered dict
        missing = set(self.plain.state_dict()) - set(weights) - _tied_names(self.plain)
        if missing:
            raise RuntimeError(f"the gathered FSDP state lacks {sorted(missing)[:5]}")
        return state

    def scatter(self, optimizer: torch.optim.Optimizer | None, optimizer_state: dict[str, Any] | None) -> None:
        """Collective: rank 0's ``plain`` weights (and optimizer state, when given) into every rank's shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        weights = self.plain.state_dict() if self.plain is not None else {}
        set_model_state_dict(self.model, weights, options=options)
        if optimizer is not None:
            set_optimizer_state_dict(self.model, optimizer, optimizer_state or {}, options=options)


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names that alias an earlier one (a tied embedding and head)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return tied


def local(t: torch.Tensor) -> torch.Tensor:
    """The full value of a DTensor (a grad norm), else the tensor."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def all_finite(model: nn.Module) -> torch.Tensor:
    """Whether this rank's (local shards of the) parameters are all finite, as a 0-d bool tensor."""
    return torch.stack([torch.isfinite(getattr(p, "_local_tensor", p)).all() for p in model.parameters()]).all()
