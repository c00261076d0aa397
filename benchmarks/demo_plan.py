"""Demo re-plan: which pretraining fits the demo's budget and how close it comes to the trigram on test bits per byte.

The demo's own token shards (the python-docs corpus, tokenizer and document-level splits exactly as
`lmpipe run --profile demo` builds them; materialize them first with
`lmpipe run --profile demo --select '*token_shards'`) are read from an lmpipe home. Each arm pretrains through
lmcore.train.loop.train and is scored by lmcore.eval.perplexity.perplexity_comparison on the test split, against
the interpolated Kneser-Ney trigram fitted on the train split (the perplexity_report's own figures).

Arms (one after the other, in this one process):
  current         the demo profile's pretraining: the demo preset (4 x 256, context 256), 300 steps of 8 rows, AdamW
                  lr 1e-3, cosine
  speedrun        the same model and steps with the speedrun recipe (lmcore.model.gpt.SPEEDRUN,
                  lmcore.train.config.SPEEDRUN)
  small_speedrun  a 4 x 128 model at context 128 with the recipe, 16 rows per step, --small-steps steps (several
                  epochs of the 0.5M train tokens in about the same wall time)
  small_exportable, small_exportable_gpt2
                  the same without the model options hf_export cannot write (QK-norm; ReLU^2 on the modern arch):
                  the modern arch with SwiGLU, or the gpt2 arch with ReLU^2; Muon, WSD and zero-init kept

Figures (final JSON line): per arm wall seconds, tokens, validation loss, test perplexity and bits per byte;
the trigram's; and bpb_gap = model - trigram (negative: the model wins).

    OMP_NUM_THREADS=2 python benchmarks/demo_plan.py --home /tmp/demo-exp [--arms current,speedrun,small_speedrun]
        [--small-steps 1200]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from books import say

from lmcore.data.shards import load_manifest, open_split
from lmcore.data.tokenizer import load_tokenizer
from lmcore.eval.perplexity import perplexity_comparison
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.gpt import SPEEDRUN as RECIPE_MODEL
from lmcore.model.gpt import demo
from lmcore.train.config import SPEEDRUN as RECIPE_TRAIN
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train


def arms(small_steps: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    current = dict(max_steps=300, batch_size=8, lr=1e-3, warmup_steps=30)
    shape = dict(n_layer=4, n_head=4, d_model=128, context_length=128)
    long = dict(max_steps=small_steps, batch_size=16, warmup_steps=30, **RECIPE_TRAIN)
    return {
        "current": ({}, current),
        "speedrun": (dict(RECIPE_MODEL), {**current, **RECIPE_TRAIN}),
        "small_speedrun": ({**RECIPE_MODEL, **shape}, long),
        # what HF Llama / GPT-2 can express (hf_export): no QK-norm; ReLU^2 only on the gpt2 arch
        "small_exportable": ({**shape, "zero_init_proj": True}, long),
        "small_exportable_gpt2": ({**shape, "arch": "gpt2", "activation": "relu2", "zero_init_proj": True}, long),
    }


def latest(home: Path, asset: str, name: str) -> Path:
    """File ``name`` of the newest version of ``asset`` in an lmpipe home's local artifact store."""
    return Path(json.loads((home / "artifacts" / asset / "latest.json").read_text())["location"]) / name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, required=True, help="an lmpipe home holding the demo's token shards")
    p.add_argument("--arms", default="current,speedrun,small_speedrun")
    p.add_argument("--small-steps", type=int, default=1200)
    args = p.parse_args()
    shards = latest(args.home, "token_shards", "manifest.json").parent
    tokenizer = load_tokenizer(latest(args.home, "tokenizer", "tokenizer.json"))
    vocab = load_manifest(shards)["vocab_size"]
    test, train_arrays = open_split(shards, "test").arrays, open_split(shards, "train").arrays
    out: dict[str, Any] = {"threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "arms": {}}
    with tempfile.TemporaryDirectory() as runs:
        for name in args.arms.split(","):
            model_overrides, train_fields = arms(args.small_steps)[name]
            mc = demo(vocab_size=vocab, **model_overrides)
            cfg = TrainConfig(eval_every=0, eval_batches=10, checkpoint_every=0, device="cpu", **train_fields)
            say(f"{name}: {mc.n_layer}x{mc.d_model} context {mc.context_length}, {cfg.max_steps} steps")
            start = time.perf_counter()
            summary = train(mc, cfg, shards, Path(runs) / name)
            wall = time.perf_counter() - start
            model, _ = load_trained_model(Path(summary.checkpoint), "cpu")
            figures = perplexity_comparison(model, tokenizer, {"test": test}, train_arrays)["test"]
            m, ngram = figures["model"], figures["ngram"]
            out["ngram"] = {
                "perplexity": round(ngram["perplexity"], 2),
                "bits_per_byte": round(ngram["bits_per_byte"], 4),
            }
            out["arms"][name] = {
                "wall_s": round(wall, 1),
                "tokens": summary.tokens_seen,
                "val_loss": round(summary.val_loss, 4),
                "test_perplexity": round(m["perplexity"], 2),
                "test_bits_per_byte": round(m["bits_per_byte"], 4),
                "bpb_gap": round(m["bits_per_byte"] - ngram["bits_per_byte"], 4),
            }
            say(f"{name}: {out['arms'][name]} (trigram {out['ngram']})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
