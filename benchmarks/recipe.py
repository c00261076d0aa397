"""Training-recipe benchmark: the current recipe vs the speedrun recipe, on the Gutenberg books, same model size.

Both arms train through lmcore.train.loop.train on the same shards (the 19 books in
/work/shared/data/corpus/gutenberg: two whole books held out for validation, the rest tokenized with
lmcore's own BPE tokenizer and shard writer into a cache directory, built once), with the same model
width and depth, batch and token budget, and evaluate the validation loss every --eval-every steps.

Figures (final JSON line, measured in this one process run, one arm after the other):
  tokens_to_baseline_loss_ratio  tokens the new recipe needs to reach the current recipe's final validation
                                 loss (linear interpolation between evaluations) / the current recipe's tokens.
                                 Goal <= 0.6.
  step_time_ratio                CPU seconds per optimizer step (time.process_time over steady-state steps,
                                 no evaluation), new / current. Goal <= 1.15.
  leave_one_out                  with --leave-one-out: the recipe without each model option, minus the recipe.
  ablations                      with --ablations: each option alone on top of the current recipe, on a
                                 shorter budget: its final validation loss minus the current recipe's
                                 ("muon" includes the recipe's AdamW lr; "adamw_lr" is that lr alone).

    OMP_NUM_THREADS=1 python benchmarks/recipe.py [--steps 300] [--ablations] [--leave-one-out]
        [--only current|recipe|ablations] [--cache build/recipe-bench]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from books import VOCAB, build_shards, say

from lmcore.data.shards import load_manifest
from lmcore.model.gpt import SPEEDRUN as RECIPE_MODEL
from lmcore.model.gpt import ModelConfig
from lmcore.train.config import SPEEDRUN as RECIPE_TRAIN
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train

MODEL = dict(vocab_size=VOCAB, context_length=128, n_layer=4, n_head=4, d_model=128)
CURRENT = dict(lr=1e-3, warmup_fraction=0.1)  # the demo profile's pretraining recipe (lr 1e-3, 10% warmup)
TIMING_STEPS, TIMING_WARMUP = 30, 5
ABLATION_MODEL = dict(logit_softcap=15.0, tie_embeddings=False)  # tried, not in the recipe (see --ablations)


def configs(steps: int, model: dict, train_over: dict, args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    base = dict(
        max_steps=steps,
        batch_size=args.batch_size,
        lr=CURRENT["lr"],
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        log_every=steps,
        checkpoint_every=0,
        keep_checkpoints=1,
        dtype="float32",
        device="cpu",
        seed=0,
    )
    over = dict(train_over)
    warmup = over.pop("warmup_fraction", CURRENT["warmup_fraction"])
    base["warmup_steps"] = round(warmup * steps)
    return ModelConfig(**{**MODEL, **model}), TrainConfig(**{**base, **over})


def run_arm(name: str, shards: Path, tmp: Path, mc: ModelConfig, tc: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = train(mc, tc, shards, tmp / name)
    tokens_per_step = tc.batch_size * mc.context_length
    val = [(step * tokens_per_step, loss) for step, loss in s.val_history]
    say(
        f"{name}: val {s['val_loss']:.4f} after {s['step']} steps, {time.perf_counter() - t0:.0f}s; "
        + " ".join(f"{t // 1000}k:{v:.3f}" for t, v in val)
    )
    return {"val": val, "final": s.val_loss, "tokens": s.tokens_seen}


def tokens_to_reach(val: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which the validation curve first reaches ``target`` (interpolated), None if it never does."""
    prev = (0, float("inf"))
    for tokens, loss in val:
        if loss <= target:
            if not np.isfinite(prev[1]):
                return float(tokens)
            return prev[0] + (tokens - prev[0]) * (prev[1] - target) / (prev[1] - loss)
        prev = (tokens, loss)
    return None


def cpu_seconds_per_step(shards: Path, tmp: Path, name: str, mc: ModelConfig, tc: TrainConfig) -> float:
    """process_time per step over TIMING_STEPS steady-state steps (after TIMING_WARMUP), no evaluation."""
    marks: dict[int, float] = {}
    tc = TrainConfig(
        **{
            **tc.to_dict(),
            "max_steps": TIMING_WARMUP + TIMING_STEPS,
            "eval_batches": 0,
            "log_every": TIMING_WARMUP,
            "warmup_steps": 0,
        }
    )
    train(mc, tc, shards, tmp / name, callback=lambda r: marks.__setitem__(r["step"], time.process_time()))
    last = max(marks)
    return (marks[last] - marks[TIMING_WARMUP]) / (last - TIMING_WARMUP)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--ablations", action="store_true", help="also each option alone, at --ablation-steps")
    ap.add_argument("--ablation-steps", type=int, default=150)
    ap.add_argument("--leave-one-out", action="store_true", help="also the recipe without each of its model options")
    ap.add_argument("--cache", type=Path, default=Path("build/recipe-bench"))
    ap.add_argument("--only", choices=("current", "recipe", "ablations"), help="run one arm, or the ablations only")
    args = ap.parse_args()
    shards = build_shards(args.cache)
    manifest = load_manifest(shards)
    say(
        f"train {manifest['splits']['train']['tokens']} tokens, val {manifest['splits']['val']['tokens']} tokens, "
        f"{torch.get_num_threads()} thread(s)"
    )
    figures: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "model": MODEL,
        "recipe_train": RECIPE_TRAIN,
        "recipe_model": RECIPE_MODEL,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cur_cfg = configs(args.steps, {}, {}, args)
        new_cfg = configs(args.steps, RECIPE_MODEL, RECIPE_TRAIN, args)
        cur = run_arm("current", shards, tmp, *cur_cfg) if args.only in (None, "current") else None
        new = run_arm("recipe", shards, tmp, *new_cfg) if args.only in (None, "recipe") else None
        if cur and new:
            reach = tokens_to_reach(new["val"], cur["final"])
            ratio = None if reach is None else round(reach / cur["tokens"], 3)
            figures.update(
                current_val_loss=round(cur["final"], 4),
                recipe_val_loss=round(new["final"], 4),
                tokens=cur["tokens"],
                recipe_tokens_to_current_loss=reach,
                tokens_to_baseline_loss_ratio=ratio,
            )
            times = {"current": [], "recipe": []}
            for r in range(2):  # alternate, keep the best of each
                for name, cfg in (("current", cur_cfg), ("recipe", new_cfg)):
                    times[name].append(cpu_seconds_per_step(shards, tmp, f"t-{name}-{r}", *cfg))
            figures.update(
                current_cpu_s_per_step=round(min(times["current"]), 4),
                recipe_cpu_s_per_step=round(min(times["recipe"]), 4),
                step_time_ratio=round(min(times["recipe"]) / min(times["current"]), 3),
            )
        if args.ablations or args.only == "ablations":
            figures["ablations"] = ablations(shards, tmp, args)
        if args.leave_one_out:
            figures["leave_one_out"] = leave_one_out(shards, tmp, args)
    print(json.dumps(figures))


def ablations(shards: Path, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """Final validation loss of each recipe option alone on top of the current recipe, minus the current's."""
    steps = args.ablation_steps
    base = run_arm("abl-current", shards, tmp, *configs(steps, {}, {}, args))["final"]
    model_options = {**ABLATION_MODEL, **RECIPE_MODEL}
    options: dict[str, tuple[dict, dict]] = {name: ({name: v}, {}) for name, v in model_options.items()}
    schedule = {k: RECIPE_TRAIN[k] for k in ("schedule", "decay_fraction", "min_lr_ratio") if k in RECIPE_TRAIN}
    muon = {k: v for k, v in RECIPE_TRAIN.items() if k not in schedule}
    options.update(schedule=({}, schedule), muon=({}, muon), adamw_lr=({}, {"lr": RECIPE_TRAIN["lr"]}))
    out = {}
    for name, (model, train_over) in options.items():
        out[name] = round(
            run_arm(f"abl-{name}", shards, tmp, *configs(steps, model, train_over, args))["final"] - base, 4
        )
    return {"current_val_loss": round(base, 4), **out}


def leave_one_out(shards: Path, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """Final validation loss of the recipe without each of its model options, minus the whole recipe's."""
    steps = args.ablation_steps
    full = run_arm("loo-recipe", shards, tmp, *configs(steps, RECIPE_MODEL, RECIPE_TRAIN, args))["final"]
    out = {"recipe_val_loss": round(full, 4)}
    for name in RECIPE_MODEL:
        model = {k: v for k, v in RECIPE_MODEL.items() if k != name}
        final = run_arm(f"loo-{name}", shards, tmp, *configs(steps, model, RECIPE_TRAIN, args))["final"]
        out[f"without_{name}"] = round(final - full, 4)
    return out


if __name__ == "__main__":
    main()
