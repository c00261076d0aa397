"""Processes and devices: who am I under torchrun, one process group per run, small
collectives, which device a rank uses and how many FLOP/s it can do at best.

Under ``torchrun`` the environment carries ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
without them a run is a single process and every collective here is a no-op. The backend
is NCCL on CUDA and gloo on CPU (so multi-process training is testable on a laptop).
The environment is read when ``dist_env()`` is called, never at import.

Peak FLOP/s (the MFU denominator) comes from a table of dense bf16 tensor-core peaks for
known GPUs (halved for float32, which runs as TF32), else from timing a large matmul in
the run's dtype once per process; on CPU that measured figure is what the cores sustain,
so CPU MFU is relative to it (and is noisy on a busy machine: pass an explicit peak).
This module knows nothing of models, data or checkpoints.
"""

from __future__ import annotations

import functools
import math
import os
import time
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


PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
)
"""Dense bf16 tensor-core peak FLOP/s by substring of the CUDA device name (first match wins)."""


def peak_flops(device: torch.device, dtype: str, override: float | None = None) -> float:
    """Peak FLOP/s of one device: the override, the GPU table, or a measured matmul."""
    if override is not None:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16_FLOPS:
            if key in name:
                return flops if dtype == "bfloat16" else flops / 2
    return measure_matmul_flops(str(device), dtype)


@functools.cache
def measure_matmul_flops(device: str, dtype: str, n: int = 0, budget_s: float = 0.5) -> float:
    """Sustained FLOP/s of a large square matmul (measured once per process; does not touch the RNG).

    Up to 6 timings (the first warms caches and kernels; the fastest counts), stopping once ``budget_s`` is
    spent. A CPU without native bfloat16 runs a bf16 matmul a hundred times slower than float32, so on CPU a
    256-wide probe first decides whether the default 1024 fits the budget.
    """
    dev = torch.device(device)
    if not n:
        n = 8192 if dev.type == "cuda" else 1024
        if dev.type == "cpu" and _time_matmul(dev, dtype, 256) * (n / 256) ** 3 > budget_s / 4:
            n = 256
    best, spent = math.inf, 0.0
    for i in range(6):
        took = _time_matmul(dev, dtype, n)
        best, spent = min(best, took), spent + took
        if spent > budget_s and i >= 1:
            break
    return 2.0 * n**3 / best


def _time_matmul(device: torch.device, dtype: str, n: int) -> float:
    a = torch.full((n, n), 0.5, device=device, dtype=getattr(torch, dtype))
    b = torch.full((n, n), 0.25, device=device, dtype=getattr(torch, dtype))
    _sync(device)
    t0 = time.perf_counter()
    (a @ b).sum().item()
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    """Resolve "auto" to cuda or cpu; under torchrun, CUDA ranks take cuda:LOCAL_RANK."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and env.distributed:
        requested = f"cuda:{env.local_rank}"
    return torch.device(requested)
