"""torchrun / DDP helpers: who am I, one process group per run, small collectives.

Under ``torchrun`` the environment carries ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
without them a run is a single process and every helper here is a no-op. The backend
is NCCL on CUDA and gloo on CPU (so multi-process training is testable on a laptop).
The environment is read when ``dist_env()`` is called, never at import.
This module knows nothing of models, data or checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(kw_only=True, frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    """Global rank, 0..world_size-1; rank 0 writes checkpoints and reports metrics."""
    local_rank: int = 0
    """Rank on this machine; picks the CUDA device."""
    world_size: int = 1
    """Number of processes; 1 means no process group."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {self.local_rank}")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Read RANK / LOCAL_RANK / WORLD_SIZE as set by torchrun (defaults: a single process)."""
    try:
        return DistEnv(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK/LOCAL_RANK/WORLD_SIZE): {e}") from e


def init_distributed(env: DistEnv, device_type: str) -> bool:
    """Join the process group (nccl on CUDA, gloo on CPU) if this is a multi-process run.

    Returns True when this call created the group (so the caller should destroy it).
    """
    if not env.distributed or dist.is_initialized():
        return False
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``t`` over ranks (in place; returns it); identity in a single process."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= env.world_size
    return t


def broadcast_int(value: int, env: DistEnv, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (as a tensor, no pickling)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def all_gather_bytes(t: torch.Tensor, env: DistEnv, device: torch.device) -> list[torch.Tensor]:
    """Every rank's uint8 tensor ``t`` (same size on all ranks), as CPU tensors, in rank order."""
    if not env.distributed:
        return [t.cpu()]
    src = t.to(device)
    out = [torch.empty_like(src) for _ in range(env.world_size)]
    dist.all_gather(out, src)
    return [o.cpu() for o in out]
