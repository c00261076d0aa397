"""Training-loop benchmark: our loader + loop vs a minimal in-memory loop, and CPU FLOP/s use.

Figures (final JSON line, measured side by side in this one process run, alternating):
  loop_vs_reference    tokens/s of lmcore.train.loop.train (memory-mapped shards, seeded windows,
                       schedule, clipping, loss checks) / tokens/s of a minimal loop over random
                       batches already in memory (same model, batch, dtype, AdamW). Goal >= 0.95.
  cpu_matmul_fraction  achieved model FLOP/s of the demo preset (flops_per_token * tokens/s)
                       / FLOP/s of a large fp32 matmul measured in this run. Goal >= 0.5.

    python benchmarks/train.py [--steps 30] [--batch-size 8] [--repeats 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmcore.data.shards import TokenShardWriter, write_manifest
from lmcore.model.gpt import GPT, demo
from lmcore.train.config import TrainConfig
from lmcore.train.distributed import measure_matmul_flops
from lmcore.train.loop import train
from lmcore.train.optim import build_optimizer

VOCAB = 4096
WARMUP = 3


def make_shards(root: Path, tokens: int) -> None:
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", tokens), ("val", tokens // 20)):
        with TokenShardWriter(root / split, np.uint16, shard_tokens=1 << 20) as w:
            w.add(rng.integers(0, VOCAB, n, dtype=np.uint32))
        splits[split] = {"shards": w.shards, "tokens": w.tokens, "documents": 1}
    write_manifest(root, splits, dtype="uint16", vocab_size=VOCAB, eot_id=0)


def reference_tokens_per_s(steps: int, batch_size: int) -> float:
    """The minimal loop: random in-memory batches, forward, backward, AdamW step."""
    torch.manual_seed(0)
    cfg = demo(VOCAB)
    model = GPT(cfg)
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    T = cfg.context_length
    batches = [torch.randint(0, VOCAB, (batch_size, T + 1)) for _ in range(4)]
    for i in range(WARMUP + steps):
        if i == WARMUP:
            t0 = time.perf_counter()
        b = batches[i % len(batches)]
        _, loss = model(b[:, :-1], b[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return steps * batch_size * T / (time.perf_counter() - t0)


def ours_tokens_per_s(shards: Path, run_dir: Path, steps: int, batch_size: int) -> tuple[float, float]:
    """Our loop, timed over the same steady-state steps as the reference (after WARMUP steps)."""
    cfg = demo(VOCAB)
    marks: dict[int, float] = {}

    def on_metrics(record: dict) -> None:
        marks[record["step"]] = time.perf_counter()

    tc = TrainConfig(
        max_steps=WARMUP + steps,
        batch_size=batch_size,
        lr=1e-3,
        warmup_steps=0,
        eval_batches=0,
        checkpoint_every=0,
        log_every=WARMUP,
        dtype="float32",
        device="cpu",
        seed=0,
    )
    summary = train(cfg, tc, shards, run_dir, callback=on_metrics)
    # log_every=WARMUP gives a mark at step WARMUP; the last mark is taken before the final checkpoint.
    last = max(marks)
    seconds = marks[last] - marks[WARMUP]
    return (last - WARMUP) * batch_size * cfg.context_length / seconds, summary.flops_per_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_shards(tmp / "shards", 2_000_000)
        ref, ours, flops_per_token = [], [], 0.0
        for r in range(args.repeats):
            ref.append(reference_tokens_per_s(args.steps, args.batch_size))
            tps, flops_per_token = ours_tokens_per_s(tmp / "shards", tmp / f"run{r}", args.steps, args.batch_size)
            ours.append(tps)
        matmul = max(measure_matmul_flops.__wrapped__("cpu", "float32", 2048) for _ in range(2))
    best_ref, best_ours = max(ref), max(ours)
    figures = {
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "context_length": demo(VOCAB).context_length,
        "reference_tokens_per_s": round(best_ref, 1),
        "ours_tokens_per_s": round(best_ours, 1),
        "loop_vs_reference": round(best_ours / best_ref, 3),
        "model_flops_per_token": flops_per_token,
        "model_flop_per_s": round(flops_per_token * best_ours / 1e9, 2) * 1e9,
        "matmul_flop_per_s": round(matmul / 1e9, 2) * 1e9,
        "cpu_matmul_fraction": round(flops_per_token * best_ours / matmul, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
