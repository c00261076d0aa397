"""Mixture-of-experts benchmark: a dense model vs MoE (token-choice and expert-choice) at equal active parameters.

All arms train through lmcore.train.loop.train on the Gutenberg shards of benchmarks/recipe.py (the same cache
directory, built once with lmcore's tokenizer and shard writer if absent), with the same TrainConfig (AdamW,
lr 1e-3, 10% warmup, batch 16) and the same tokens. The MoE arms have 4 experts of the dense MLP's width and one
active expert per token (top-1 token-choice with capacity factor 1.25 and the Switch loss at 0.01; expert-choice
with capacity 1 * N / 4), so their active parameters are the dense model's plus the router (4 * d_model per layer).

Figures (final JSON line):
  val_loss              final validation loss of each arm (eval_batches batches of the held-out books)
  val_loss_delta        MoE minus dense, per routing (negative: MoE is better at equal active params and tokens)
  step_time_ratio       CPU seconds per optimizer step (median time.process_time between consecutive steps,
                        evaluation steps left out), MoE / dense, per routing
  active_params, total_params   per arm (GPT.num_params(active=True) and num_params())
  utilization, dropped_fraction per MoE arm and layer: lmcore.model.moe.expert_report on the validation batches

    OMP_NUM_THREADS=1 python benchmarks/moe.py [--steps 300] [--cache build/recipe-bench]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from books import VOCAB, build_shards, say

from lmcore.data.loader import TokenLoader
from lmcore.data.shards import load_manifest
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.gpt import GPT, ModelConfig
from lmcore.model.moe import expert_report
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train

MODEL = dict(vocab_size=VOCAB, context_length=128, n_layer=4, n_head=4, d_model=128)
MOE = dict(n_experts=4, expert_top_k=1, aux_loss_coef=0.01)  # experts of the dense MLP's width (mlp_hidden None)
ARMS: dict[str, dict[str, Any]] = {
    "dense": {},
    "moe_token": {**MOE, "routing": "token", "capacity_factor": 1.25},
    "moe_expert": {**MOE, "routing": "expert"},
}


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-3,
        warmup_steps=round(0.1 * args.steps),
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        log_every=1,
        checkpoint_every=0,
        keep_checkpoints=1,
        dtype="float32",
        device="cpu",
        seed=0,
    )


def run_arm(name: str, mc: ModelConfig, tc: TrainConfig, shards: Path, tmp: Path) -> dict[str, Any]:
    """Train one arm; its final validation loss, CPU seconds per step and (MoE) expert report."""
    marks: dict[int, float] = {}
    t0 = time.perf_counter()
    s = train(mc, tc, shards, tmp / name, callback=lambda r: marks.__setitem__(r["step"], time.process_time()))
    # steady-state steps: skip the first 5 and any interval that may hold an evaluation
    evals = {e + d for e in range(0, tc.max_steps + 1, tc.eval_every) for d in (0, 1)} if tc.eval_every else set()
    deltas = [marks[i] - marks[i - 1] for i in sorted(marks) if i > 5 and i - 1 in marks and i not in evals]
    out: dict[str, Any] = {
        "val_loss": s.val_loss,
        "val_history": s.val_history,
        "cpu_s_per_step": statistics.median(deltas),
    }
    model, _ = load_trained_model(s.checkpoint)
    out |= {"active_params": model.num_params(active=True), "total_params": model.num_params()}
    if mc.n_experts:
        val = TokenLoader.from_split(shards, "val", context_length=mc.context_length, batch_size=tc.batch_size)
        out["report"] = expert_report(model, [val.next_batch() for _ in range(tc.eval_batches)])
    say(
        f"{name}: val {s['val_loss']:.4f} after {s['step']} steps, {time.perf_counter() - t0:.0f}s, "
        f"{out['cpu_s_per_step']:.4f} cpu s/step; " + " ".join(f"{step}:{v:.3f}" for step, v in s.val_history)
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path("build/recipe-bench"))
    args = ap.parse_args()
    shards = build_shards(args.cache)
    manifest = load_manifest(shards)
    say(
        f"train {manifest['splits']['train']['tokens']} tokens, val {manifest['splits']['val']['tokens']} tokens, "
        f"{torch.get_num_threads()} thread(s)"
    )
    configs = {name: ModelConfig(**{**MODEL, **over}) for name, over in ARMS.items()}
    # equal active parameters: each MoE arm is the dense model plus its router (n_experts * d_model per layer)
    dense_n = GPT(configs["dense"]).num_params()
    for name, mc in configs.items():
        active = GPT(mc).num_params(active=True)
        router = mc.n_layer * mc.n_experts * mc.d_model
        say(f"{name}: active params {active:,} (dense {dense_n:,} + router {router:,})")
        assert active == dense_n + router, (name, active, dense_n, router)
    tc = train_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        arms = {name: run_arm(name, mc, tc, shards, Path(tmp)) for name, mc in configs.items()}
    dense = arms["dense"]
    moe = {name: a for name, a in arms.items() if name != "dense"}
    figures: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens": args.steps * args.batch_size * MODEL["context_length"],
        "model": MODEL,
        "moe": MOE,
        "val_loss": {name: round(a["val_loss"], 4) for name, a in arms.items()},
        "val_loss_delta": {name: round(a["val_loss"] - dense["val_loss"], 4) for name, a in moe.items()},
        "cpu_s_per_step": {name: round(a["cpu_s_per_step"], 4) for name, a in arms.items()},
        "step_time_ratio": {name: round(a["cpu_s_per_step"] / dense["cpu_s_per_step"], 3) for name, a in moe.items()},
        "active_params": {name: a["active_params"] for name, a in arms.items()},
        "total_params": {name: a["total_params"] for name, a in arms.items()},
        "utilization": {
            name: [[round(u, 3) for u in layer["utilization"]] for layer in a["report"]["layers"]]
            for name, a in moe.items()
        },
        "dropped_fraction": {
            name: [round(layer["dropped_fraction"], 4) for layer in a["report"]["layers"]] for name, a in moe.items()
        },
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
