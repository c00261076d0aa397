"""GPU check: the real training loop on one GPU with gpt2_124m at context 1024, bf16 and torch.compile.

Run on the GPU machine (one NVIDIA H100/H200), from the repo root, nothing to install:

    python3 benchmarks/gpu.py                 # ~2-3 minutes (about one of them torch.compile); give it 5
    python3 benchmarks/gpu.py --cpu-smoke     # tiny preset, 8 eager steps on CPU, seconds: proves the code paths

Options: --batch-size (default 32 rows of 1024 tokens), --steps (default 60, at least 31), --ddp-compile
(torch.compile both arms of the DDP check too; adds a compile). Without CUDA (and without --cpu-smoke) it
exits 1 saying so.

It imports only lmcore.model and lmcore.train (torch, numpy, pyarrow, safetensors, tokenizers: all on the GPU
machine; no dagster, polars or datasets). Token shards of synthetic, learnable documents (noisy arithmetic
progressions over the whole vocabulary) are written with lmcore's own shard writer, and the throughput run is
lmcore.train.loop.train itself, so it measures the real loop (memory-mapped loader, schedule, clipping,
loss checks, fused AdamW from build_optimizer, TF32 as the loop sets it). The DDP check cannot use
train(): the loop wraps in DDP only when WORLD_SIZE > 1, so it replicates the loop's step (same model,
optimizer, autocast, clipping) eagerly in this process. Progress goes to stderr; the last stdout line is
JSON with these figures:

  tokens_per_s        training tokens per second over the steady steps (after compile, warm-up and the
                      profiled steps), timed from the loop's own metrics records (each after a device sync)
  mfu                 flops_per_token * tokens_per_s / peak_flops. flops_per_token is GPT.flops_per_token
                      (6N + 12*L*d*T); peak_flops is lmcore.train.distributed.peak_flops for bf16 (the
                      PEAK_BF16_FLOPS table: 989e12 for H100 SXM and H200; peak_flops_source says "table" or
                      "measured"). Goal: mfu >= 0.45 (goal_mfu). loop_reported_mfu is the loop's own figure.
  peak_memory_gib     torch.cuda.max_memory_allocated during the training run, GiB
  sdpa_flash_accepts  whether F.scaled_dot_product_attention runs forward and backward under
                      sdpa_kernel(SDPBackend.FLASH_ATTENTION) with the model's (B, heads, T, head_dim) in bf16
                      (sdpa_flash_error: why not)
  sdpa_backend        the backend that ran in the real loop, read off the torch profiler over
                      profile_steps compiled training steps: "flash", "cudnn", "efficient" or "math";
                      sdpa_ops are the attention aten ops seen, sdpa_kernels the attention GPU kernel names
  loss_first, loss_last  training loss at the first and the last logged step (steps = loss_steps); it must
                      fall well below ln(vocab) = 10.8 on these documents
  ddp_losses_equal    whether DDP with one process (a real nccl process group of world size 1, in-process,
                      MASTER_ADDR=127.0.0.1 and a free port) gives the same losses as the plain model, same
                      seed and batches, over ddp_steps eager steps; ddp_max_abs_diff is the largest difference,
                      and plain_repeat_max_abs_diff that of two plain runs (the GPU's own nondeterminism, e.g.
                      atomics in attention backward): DDP is sound when its difference is no larger than that
  fused_adamw         whether build_optimizer picked the fused AdamW (it should on CUDA)
"""

import argparse
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.profiler
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel as DDP

# lmcore from this checkout, with nothing installed (python3 benchmarks/gpu.py on a bare GPU machine)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmcore.data.shards import TokenShardWriter, token_dtype, write_manifest  # noqa: E402
from lmcore.model.gpt import GPT, PRESETS, ModelConfig  # noqa: E402
from lmcore.train import distributed as D  # noqa: E402
from lmcore.train.config import TrainConfig  # noqa: E402
from lmcore.train.loop import train  # noqa: E402
from lmcore.train.optim import build_optimizer  # noqa: E402

GOAL_MFU = 0.45
ATTENTION = re.compile(r"flash|fmha|attention|sdpa|attn", re.IGNORECASE)


def say(msg: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_tokens(vocab: int, n: int, seed: int = 0) -> np.ndarray:
    """Documents of noisy arithmetic progressions over ids 1..vocab-1, each ended by 0: learnable, any vocab."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < n:
        length = int(rng.integers(64, 2048))
        seq = (rng.integers(1, vocab) + np.arange(length) * rng.integers(1, 4)) % (vocab - 1) + 1
        noise = rng.random(length) < 0.05
        seq[noise] = rng.integers(1, vocab, int(noise.sum()))
        parts.append(np.append(seq, 0))
        total += length + 1
    return np.concatenate(parts)[:n]


def write_shards(root: Path, tokens: np.ndarray, vocab: int) -> Path:
    with TokenShardWriter(root / "train", token_dtype(vocab), shard_tokens=1 << 22) as w:
        w.add(tokens)
    write_manifest(root, {"train": {"shards": w.shards, "tokens": w.tokens}}, vocab_size=vocab, eot_id=0)
    return root


def flash_probe(mc: ModelConfig, batch: int, device: torch.device) -> tuple[bool, str | None]:
    """Does the flash kernel take the model's attention shapes in bf16, forward and backward?"""
    shape = (batch, mc.n_head, mc.context_length, mc.head_dim)  # (B, nh, T, hs)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    except RuntimeError as e:
        return False, str(e).strip().splitlines()[0][:300]
    return True, None


def sdpa_seen(prof: torch.profiler.profile) -> dict[str, Any]:
    """Attention ops and kernels in a profile, and the backend they name."""
    events = [e for e in prof.key_averages() if ATTENTION.search(e.key)]
    ops = sorted(e.key for e in events if e.key.startswith("aten::"))
    kernels = sorted(e.key[:160] for e in events if e.device_type != torch.autograd.DeviceType.CPU)  # GPU kernels
    # the aten op names the backend (cuDNN's kernels are called "...flash..." too); kernels only if no op was seen
    text = " ".join(ops or kernels).lower()
    backend = next((b for b in ("cudnn", "flash", "efficient") if b in text), "math")
    return {"sdpa_backend": backend, "sdpa_ops": ops, "sdpa_kernels": kernels}


def loop_run(mc: ModelConfig, cfg: TrainConfig, shards: Path, runs: Path, device: torch.device) -> dict[str, Any]:
    """lmcore's train(): log_every steps of compile and warm-up, log_every profiled steps, then timed steps."""
    every, marks, records = cfg.log_every, {}, []
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities)

    def on_record(record: dict[str, Any]) -> None:
        step = record["step"]
        if step == every:
            say(f"step {step}: warm ({time.perf_counter() - start:.0f} s since start); profiling {every} steps")
            prof.start()
        elif step == 2 * every:
            prof.stop()
        else:
            say(f"step {step}: loss {record['loss']:.3f}, {record['tokens_per_s']:.0f} tok/s")
        records.append(record)
        marks[step] = time.perf_counter()  # after the profiler's own work: timed steps start here

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    summary = train(mc, cfg, shards, runs, callback=on_record)
    timed = cfg.max_steps - 2 * every
    tokens_per_s = timed * cfg.batch_size * mc.context_length / (marks[cfg.max_steps] - marks[2 * every])
    return {
        "tokens_per_s": tokens_per_s,
        "flops_per_token": summary.flops_per_token,
        "timed_steps": timed,
        "profile_steps": every,
        "loop_reported_mfu": records[-1]["mfu"],
        "compile_and_warmup_s": marks[every] - start,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss_first": records[0]["loss"],
        "loss_last": records[-1]["loss"],
        "loss_steps": [records[0]["step"], records[-1]["step"]],
        **sdpa_seen(prof),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_steps(
    mc: ModelConfig, batches: list[torch.Tensor], device: torch.device, ddp: bool, compile: bool
) -> tuple[list[float], bool]:
    """The loop's step (seeded init, build_optimizer, bf16 autocast, clip 1.0, AdamW) over ``batches``."""
    torch.manual_seed(0)
    raw = GPT(mc).to(device)
    opt = build_optimizer(raw, TrainConfig(lr=3e-4, weight_decay=0.1))
    model = torch.compile(raw) if compile else raw
    if ddp:
        model = DDP(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    losses = []
    for b in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(b[:, :-1], b[:, 1:])[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())
    return torch.stack(losses).tolist(), bool(opt.defaults.get("fused"))


def ddp_check(
    mc: ModelConfig, tokens: np.ndarray, device: torch.device, batch: int, steps: int, compile: bool
) -> dict[str, Any]:
    """Losses of DDP over a process group of one process against the plain model, same seed and batches."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as the loop sets it
    rng = np.random.default_rng(1)
    T = mc.context_length
    starts = rng.integers(0, tokens.size - T - 1, (steps, batch))
    batches = [torch.from_numpy(tokens[s[:, None] + np.arange(T + 1)].astype(np.int64)).to(device) for s in starts]
    plain, fused = plain_steps(mc, batches, device, ddp=False, compile=compile)
    again, _ = plain_steps(mc, batches, device, ddp=False, compile=compile)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        wrapped, _ = plain_steps(mc, batches, device, ddp=True, compile=compile)
    finally:
        dist.destroy_process_group()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    diff = max(abs(a - b) for a, b in zip(plain, wrapped, strict=True))
    return {
        "ddp_losses_equal": plain == wrapped,
        "ddp_max_abs_diff": diff,
        "plain_repeat_max_abs_diff": max(abs(a - b) for a, b in zip(plain, again, strict=True)),
        "ddp_steps": steps,
        "ddp_backend": backend,
        "ddp_compiled": compile,
        "ddp_loss_last": wrapped[-1],
        "fused_adamw": fused,
    }


@dataclass(frozen=True)
class Setting:
    """What one invocation measures."""

    device: torch.device
    mc: ModelConfig
    batch: int  # rows of context_length tokens per step
    every: int  # log_every: steps of compile and warm-up, then as many profiled steps, before the timed ones
    steps: int
    compile: bool
    peak: float  # peak FLOP/s of the device in bf16, the MFU denominator
    peak_source: str
    ddp_batch: int
    ddp_steps: int


def setting(args: argparse.Namespace) -> Setting:
    if args.cpu_smoke:  # CPU bf16 matmuls are slow to time (~30 s): the fp32 peak is the denominator
        peak = D.measure_matmul_flops("cpu", "float32")
        return Setting(torch.device("cpu"), PRESETS["tiny"](vocab_size=256), 4, 2, 8, False, peak, "measured", 2, 3)
    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks/gpu.py needs a CUDA GPU and torch.cuda.is_available() is False here; run it on the GPU "
            "machine (python3 benchmarks/gpu.py), or pass --cpu-smoke to exercise its code paths on this CPU"
        )
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    source = "table" if any(key in name for key, _ in D.PEAK_BF16_FLOPS) else "measured"
    if args.steps < 31:
        sys.exit(f"--steps must be >= 31 (10 of warm-up, 10 profiled, then timed ones), got {args.steps}")
    peak = D.peak_flops(device, "bfloat16")
    return Setting(device, PRESETS["gpt2_124m"](), args.batch_size, 10, args.steps, True, peak, source, 8, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny preset, 8 eager steps on CPU")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--ddp-compile", action="store_true", help="torch.compile both arms of the DDP check")
    args = ap.parse_args()
    t0 = time.perf_counter()
    st = setting(args)
    mc, device = st.mc, st.device
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    say(f"torch {torch.__version__} on {name}")
    accepts, why = flash_probe(mc, st.batch, device)
    say(f"flash attention takes (B={st.batch}, nh={mc.n_head}, T={mc.context_length}, hs={mc.head_dim}): {accepts}")
    tokens = make_tokens(mc.vocab_size, st.steps * st.batch * (mc.context_length + 1) * 2)
    say(f"DDP check: {st.ddp_steps} steps, plain twice and under DDP with one process")  # first: cheap to fail
    ddp = ddp_check(mc, tokens, device, st.ddp_batch, st.ddp_steps, compile=args.ddp_compile)
    say(f"DDP equal: {ddp['ddp_losses_equal']} (max diff {ddp['ddp_max_abs_diff']:.3g})")
    cfg = TrainConfig(
        max_steps=st.steps,
        batch_size=st.batch,
        lr=6e-4,
        warmup_steps=st.every,
        eval_batches=0,
        log_every=st.every,
        dtype="bfloat16",
        compile=st.compile,
        device=str(device),
        peak_flops=st.peak,
    )
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        shards = write_shards(Path(tmp) / "shards", tokens, mc.vocab_size)
        say(f"training {st.steps} steps of {st.batch}x{mc.context_length} tokens, compile={st.compile}, in train()")
        figures = loop_run(mc, cfg, shards, Path(tmp) / "runs", device)
    say(f"{figures['tokens_per_s']:.0f} tok/s, attention backend {figures['sdpa_backend']}")
    result = {
        "device": name,
        "torch": torch.__version__,
        "preset": "tiny" if args.cpu_smoke else "gpt2_124m",
        "context_length": mc.context_length,
        "batch_size": st.batch,
        "dtype": "bfloat16",
        "compile": st.compile,
        "steps": st.steps,
        **figures,
        "mfu": figures["flops_per_token"] * figures["tokens_per_s"] / st.peak,
        "goal_mfu": GOAL_MFU,
        "peak_flops": st.peak,
        "peak_flops_source": st.peak_source,
        "sdpa_flash_accepts": accepts,
        "sdpa_flash_error": why,
        "ln_vocab": math.log(mc.vocab_size),
        **ddp,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
