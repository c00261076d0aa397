"""Evaluation benchmark: our ROUGE vs rouge-score, and perplexity evaluation vs the training forward pass.

Figures (final JSON line, measured side by side in this one process run):
  rouge_vs_rouge_score   pairs/s of lmcore.eval.rouge.rouge_pairs / pairs/s of rouge-score's RougeScorer
                         called pair by pair, on Alpaca outputs paired with shuffled outputs
                         (same numbers, checked here). Goal >= 1.0.
  eval_vs_train_forward  tokens/s of lmcore.eval.perplexity.evaluate_lm (demo preset, no grad) / tokens/s of
                         the training forward+backward pass on the same batches.

    python benchmarks/eval.py [--pairs 2000]
"""

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from lmcore.eval.perplexity import evaluate_lm
from lmcore.eval.rouge import rouge_pairs
from lmcore.model.gpt import GPT, demo

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct" / "alpaca_5000.jsonl"
TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_figures(n: int) -> dict:
    from rouge_score import rouge_scorer

    outputs = [json.loads(line)["output"] for line in ALPACA.read_text().splitlines()][:n]
    refs = outputs[:]
    random.Random(0).shuffle(refs)
    t0 = time.perf_counter()
    ours = rouge_pairs(outputs, refs)
    t_ours = time.perf_counter() - t0
    scorer = rouge_scorer.RougeScorer(list(TYPES))
    t0 = time.perf_counter()
    theirs = [scorer.score(r, p) for p, r in zip(outputs, refs, strict=True)]
    t_theirs = time.perf_counter() - t0
    same = all(
        abs(o[t]["fmeasure"] - th[t].fmeasure) < 1e-12 for o, th in zip(ours, theirs, strict=True) for t in TYPES
    )
    return {"rouge_pairs": n, "rouge_identical": same, "rouge_vs_rouge_score": round(t_theirs / t_ours, 2)}


def eval_figures(tokens: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    cfg = demo(4096)
    model = GPT(cfg)
    T = cfg.context_length
    data = np.random.default_rng(0).integers(0, 4096, tokens).astype(np.uint16)
    t0 = time.perf_counter()
    result = evaluate_lm(model, [data], batch_size=batch_size)
    eval_tps = result["tokens"] / (time.perf_counter() - t0)
    model.train()
    x = torch.from_numpy(data[: (tokens // (T + 1)) * (T + 1)].astype(np.int64)).view(-1, T + 1)
    t0, seen = time.perf_counter(), 0
    for i in range(0, x.shape[0] - batch_size + 1, batch_size):
        b = x[i : i + batch_size]
        _, loss = model(b[:, :-1], b[:, 1:])
        loss.backward()
        seen += b[:, 1:].numel()
    train_tps = seen / (time.perf_counter() - t0)
    return {
        "eval_tokens_per_s": round(eval_tps),
        "train_fwd_bwd_tokens_per_s": round(train_tps),
        "eval_vs_train_forward": round(eval_tps / train_tps, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=60_000)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    print(json.dumps({**rouge_figures(args.pairs), **eval_figures(args.tokens, args.batch_size)}))


if __name__ == "__main__":
    main()
