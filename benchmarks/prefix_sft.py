"""Prefix-LM SFT benchmark: does reading the prompt as a two-way prefix beat causal SFT on ROUGE, same budget?

Two arms, identical but for the attention. Both pretrain a fresh model of the same shape (vocab 4096, context
256, 4 layers, 4 heads, d_model 128; same init seed, same windows in the same order) through
lmcore.train.loop.train on the Gutenberg shards of benchmarks/recipe.py (the same cache directory, built once
with lmcore's tokenizer and shard writer if absent), with the same TrainConfig (AdamW, --pretrain-lr, linear
warmup of --pretrain-warmup steps then cosine, --pretrain-batch rows of 256 tokens, --pretrain-steps steps):

  causal  objective "causal", attention "causal"; then SFT (plain causal attention over each conversation)
  prefix  objective "prefix" (random split point per row, loss on the suffix), attention "prefix"; then SFT,
          where lmcore.finetune.sft.finetune makes each packed conversation's prompt the two-way prefix
          (PromptPrefixSource), and chat_generate reads the prompt as the prefix when answering

Both then fine-tune (lmcore.finetune.sft.finetune, AdamW, --sft-lr, 10% warmup, --sft-batch packed rows,
--sft-steps steps) on the same examples: the Alpaca subset /work/shared/data/instruct/alpaca_5000.jsonl, turned
into ChatML conversations by lmcore.finetune.records and chat.render_chatml (no system prompt); a conversation
longer than context + 1 tokens is dropped (not truncated), for both arms alike. A record is held out when
records.is_heldout(its content key, --holdout-fraction, --seed) says so (the pipeline's seeded hash); the held-out
records, ordered by that same seeded hash, give the SFT validation set (the first --sft-val-examples) and the
ROUGE prompts (the first --rouge-examples). Train examples are packed (sft_data.pack_examples).

Figures (final JSON line; per arm under "arms"):
  pretrain_val_loss   final validation loss of pretraining (--pretrain-eval-batches batches of the held-out
                      books). NOT comparable across arms: the prefix arm's loss covers only the suffix tokens
                      of each row (which also see a two-way prefix), the causal arm's every token.
  sft_val_loss        final SFT validation loss on the held-out conversations' reply tokens (same tokens, same
                      batches for both arms: comparable)
  rouge               ROUGE-1/2/L F (lmcore.eval.rouge.rouge_batch) of the replies to the ROUGE prompts against
                      the references, "default" (GenerationConfig(): the evaluation's loop-free decoding, greedy
                      with CTRL repetition penalty 1.2 and no repeated 3-gram) and "greedy" (generate.greedy());
                      at most --max-new-tokens new tokens, stopped at <|im_end|>
  seconds             wall seconds of pretraining, SFT and generation, and their total
  rouge_l_delta       prefix minus causal ROUGE-L F, per decoding (positive: the prefix LM is better)

    OMP_NUM_THREADS=1 python benchmarks/prefix_sft.py [--pretrain-steps 300] [--sft-steps 150]
        [--rouge-examples 50] [--cache build/recipe-bench]
"""

import argparse
import dataclasses
import hashlib
import json
import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from books import VOCAB, build_shards, say

from lmcore.data.shards import load_manifest
from lmcore.data.tokenizer import Tokenizer, load_tokenizer
from lmcore.eval.rouge import rouge_batch
from lmcore.finetune.chat import render_chatml
from lmcore.finetune.records import content_key, is_heldout, iter_records, record_to_messages
from lmcore.finetune.sft import FinetuneRun, chat_generate, finetune
from lmcore.finetune.sft_data import SFTExample, pack_examples
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.generate import GenerationConfig, greedy
from lmcore.model.gpt import ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train

RECORDS = Path("/work/shared/data/instruct/alpaca_5000.jsonl")
MODEL = dict(vocab_size=VOCAB, context_length=256, n_layer=4, n_head=4, d_model=128)
ARMS = {"causal": "causal", "prefix": "prefix"}  # arm: pretraining objective = model attention
DECODINGS = {"default": GenerationConfig(), "greedy": greedy()}


def _rank(key: str, seed: int) -> int:
    """The seeded hash records.is_heldout compares with the fraction: orders the held-out records."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")


def sft_examples(tok: Tokenizer, args: argparse.Namespace) -> tuple[list[SFTExample], list[SFTExample], dict]:
    """(train, held-out in seeded-hash order, stats): whole ChatML conversations of at most context + 1 tokens."""
    limit = MODEL["context_length"] + 1
    seen: set[str] = set()
    train_ex: list[SFTExample] = []
    held: list[tuple[int, SFTExample]] = []
    skipped: Counter[str] = Counter()
    for _, record, reason in iter_records([args.records]):
        messages = None
        if reason is None:
            messages, reason = record_to_messages(record)
        key = content_key(messages) if messages else ""
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is not None or messages is None:
            skipped[reason or "unknown_shape"] += 1
            continue
        seen.add(key)
        rendered = render_chatml(messages, tok)  # no context_length: nothing is cut
        if len(rendered.ids) > limit:
            skipped["too_long"] += 1  # dropped for both arms alike
            continue
        if is_heldout(key, args.holdout_fraction, args.seed):
            users = [m["content"] for m in messages if m["role"] == "user"]
            ex = SFTExample(
                ids=rendered.ids,
                mask=rendered.mask,
                key=key,
                prompt=users[-1],
                prompt_messages=messages[:-1],
                reference=messages[-1]["content"],
            )
            held.append((_rank(key, args.seed), ex))
        else:
            train_ex.append(SFTExample(ids=rendered.ids, mask=rendered.mask, key=key))
    heldout = [ex for _, ex in sorted(held, key=lambda t: t[0])]
    stats = {
        "train": len(train_ex),
        "heldout": len(heldout),
        "skipped": dict(sorted(skipped.items())),
        "train_tokens": sum(len(e.ids) for e in train_ex),
        "train_loss_tokens": sum(sum(e.mask) for e in train_ex),
    }
    return train_ex, heldout, stats


def pretrain_config(args: argparse.Namespace, objective: str) -> TrainConfig:
    return TrainConfig(
        max_steps=args.pretrain_steps,
        batch_size=args.pretrain_batch,
        lr=args.pretrain_lr,
        warmup_steps=min(args.pretrain_warmup, args.pretrain_steps),
        optimizer="adamw",
        eval_every=args.pretrain_eval_every,
        eval_batches=args.pretrain_eval_batches,
        log_every=max(1, args.pretrain_steps // 10),
        checkpoint_every=0,
        keep_checkpoints=1,
        dtype="float32",
        device="cpu",
        seed=args.seed,
        objective=objective,
    )


def sft_config(args: argparse.Namespace, val_examples: int) -> TrainConfig:
    return TrainConfig(
        max_steps=args.sft_steps,
        batch_size=args.sft_batch,
        lr=args.sft_lr,
        warmup_steps=round(0.1 * args.sft_steps),
        optimizer="adamw",
        eval_every=0,
        eval_batches=math.ceil(val_examples / args.sft_batch),  # every val example once
        log_every=max(1, args.sft_steps // 10),
        checkpoint_every=0,
        keep_checkpoints=1,
        dtype="float32",
        device="cpu",
        seed=args.seed,
        objective="causal",
    )


def answer(
    model: torch.nn.Module, tok: Tokenizer, heldout: list[SFTExample], gen: GenerationConfig, max_new_tokens: int
) -> list[str]:
    """Each prompt's reply (as assets/evaluation/answers.py: answer i seeded gen.seed + i, <|im_end|> removed)."""
    out = []
    for i, ex in enumerate(heldout):
        settings = gen if gen.seed is None else dataclasses.replace(gen, seed=gen.seed + i)
        reply = chat_generate(model, tok, ex.prompt_messages, settings, max_new_tokens=max_new_tokens)
        out.append(reply.replace("<|im_end|>", "").strip())
    return out


def run_arm(
    name: str,
    attention: str,
    shards: Path,
    tok: Tokenizer,
    train_rows: list[SFTExample],
    val: list[SFTExample],
    rouge_set: list[SFTExample],
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    """Pretrain, fine-tune and answer with one arm; its figures."""
    mc = ModelConfig(**{**MODEL, "attention": attention})
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    pre = train(mc, pretrain_config(args, objective=attention), shards, tmp / name / "pretrain")
    seconds["pretrain"] = time.perf_counter() - t0
    say(
        f"{name}: pretrain val {pre.val_loss:.4f} after {pre.step} steps, {seconds['pretrain']:.0f}s; "
        + " ".join(f"{s}:{v:.3f}" for s, v in pre.val_history)
    )
    t1 = time.perf_counter()
    run = FinetuneRun(init_checkpoint=pre.checkpoint, train=sft_config(args, len(val)), runs_dir=tmp / name / "sft")
    sft = finetune(run, train_rows, val, pad_id=tok.pad_id)
    seconds["sft"] = time.perf_counter() - t1
    say(
        f"{name}: sft val {sft.val_loss:.4f} (train {sft.train_loss:.4f}) after {sft.step} steps, {seconds['sft']:.0f}s"
    )
    model, _ = load_trained_model(sft.checkpoint)
    assert model.config.attention == attention, (name, model.config.attention)
    t2 = time.perf_counter()
    refs = [ex.reference for ex in rouge_set]
    rouge: dict[str, dict[str, float]] = {}
    samples: list[dict[str, str]] = [{"prompt": ex.prompt, "reference": ex.reference} for ex in rouge_set[:2]]
    for decoding, gen in DECODINGS.items():
        preds = answer(model, tok, rouge_set, gen, args.max_new_tokens)
        scores = rouge_batch(preds, refs)
        rouge[decoding] = {k: round(v["fmeasure"], 4) for k, v in scores.items()}
        for s, p in zip(samples, preds, strict=False):
            s[decoding] = p
        say(f"{name}: {decoding} ROUGE-1/2/L F " + " / ".join(f"{v:.4f}" for v in rouge[decoding].values()))
    seconds["generate"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return {
        "pretrain_val_loss": round(pre.val_loss, 4),
        "pretrain_val_history": [[s, round(v, 4)] for s, v in pre.val_history],
        "sft_val_loss": round(sft.val_loss, 4),
        "sft_train_loss": round(sft.train_loss, 4),
        "rouge": rouge,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "samples": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--pretrain-batch", type=int, default=16)
    ap.add_argument("--pretrain-lr", type=float, default=2e-3)
    ap.add_argument("--pretrain-warmup", type=int, default=30)
    ap.add_argument("--pretrain-eval-every", type=int, default=100)
    ap.add_argument("--pretrain-eval-batches", type=int, default=10)
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-lr", type=float, default=5e-4)
    ap.add_argument("--sft-val-examples", type=int, default=200, help="held-out conversations for the SFT val loss")
    ap.add_argument("--rouge-examples", type=int, default=50, help="held-out prompts answered and scored")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--holdout-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--cache", type=Path, default=Path("build/recipe-bench"))
    args = ap.parse_args()
    shards = build_shards(args.cache)
    manifest = load_manifest(shards)
    tok = load_tokenizer(shards / "tokenizer.json")
    say(
        f"train {manifest['splits']['train']['tokens']} tokens, val {manifest['splits']['val']['tokens']} tokens, "
        f"{torch.get_num_threads()} thread(s)"
    )
    train_ex, heldout, stats = sft_examples(tok, args)
    val, rouge_set = heldout[: args.sft_val_examples], heldout[: args.rouge_examples]
    if len(rouge_set) < args.rouge_examples or not val:
        raise SystemExit(f"only {len(heldout)} held-out conversations; raise --holdout-fraction")
    rows = pack_examples(train_ex, MODEL["context_length"])
    fill = sum(len(r.ids) - len(r.segments) for r in rows) / (len(rows) * MODEL["context_length"])
    stats |= {
        "rows": len(rows),
        "fill": round(fill, 3),
        "sft_val_examples": len(val),
        "rouge_examples": len(rouge_set),
        "sft_epochs": round(args.sft_steps * args.sft_batch / len(rows), 2),
    }
    say(f"sft: {stats}")
    with tempfile.TemporaryDirectory() as tmp:
        arms = {
            name: run_arm(name, att, shards, tok, rows, val, rouge_set, args, Path(tmp)) for name, att in ARMS.items()
        }
    figures: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "model": MODEL,
        "pretrain": {
            "steps": args.pretrain_steps,
            "batch_size": args.pretrain_batch,
            "lr": args.pretrain_lr,
            "warmup_steps": args.pretrain_warmup,
            "tokens": args.pretrain_steps * args.pretrain_batch * MODEL["context_length"],
        },
        "sft": {"steps": args.sft_steps, "batch_size": args.sft_batch, "lr": args.sft_lr, "packed": True, **stats},
        "max_new_tokens": args.max_new_tokens,
        "decodings": {k: dataclasses.asdict(g) for k, g in DECODINGS.items()},
        "pretrain_val_loss_note": "not comparable across arms: the prefix arm's covers only suffix tokens",
        "arms": arms,
        "rouge_l_delta": {
            d: round(arms["prefix"]["rouge"][d]["rougeL"] - arms["causal"]["rouge"][d]["rougeL"], 4) for d in DECODINGS
        },
        "sft_val_loss_delta": round(arms["prefix"]["sft_val_loss"] - arms["causal"]["sft_val_loss"], 4),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
