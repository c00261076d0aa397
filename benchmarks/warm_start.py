"""Warm-start retraining against a from-scratch retrain on the same grown corpus, through the real assets.

One lmpipe home: the data group and ``pretrained_model`` on half of the Gutenberg books
(../shared/data/corpus/gutenberg, each cut into 8 files; the even-numbered parts); then the odd parts are added,
the data group runs again (the tokenizer is kept, so every arm reads the same shards), and
``pretrained_model`` trains twice on the grown shards with the same step budget: ``init: previous`` (the first
model's weights, ``--replay`` of the windows from shards it was trained on, the schedule restarted) and
``init: scratch``. A third arm, scratch with the first run's steps added (the compute of first run + warm start),
says what warm starting saves. Figures: each arm's last validation loss (nats per token on the grown corpus's
val split) and the ratios; the final JSON line.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/warm_start.py [--steps 300] [--replay 0.25] [--keep]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT.parent / "shared" / "data" / "corpus" / "gutenberg"


def profile(path: Path, corpus: Path, steps: int) -> Path:
    model = {"n_layer": 4, "n_head": 4, "d_model": 128, "context_length": 128, "zero_init_proj": True}
    train = {
        "max_steps": steps,
        "batch_size": 16,
        "warmup_steps": 30,
        "optimizer": "muon",
        "muon_lr": 0.02,
        "lr": 0.003,
        "schedule": "wsd",
        "decay_fraction": 0.4,
        "min_lr_ratio": 0.0,
        "eval_every": 100,
        "eval_batches": 20,
        "checkpoint_every": 100,
    }
    assets = {
        "raw_corpus": {"sources": [str(corpus)]},
        "tokenizer": {"vocab_size": 4096},
        "splits": {"val_fraction": 0.1, "test_fraction": 0.1},
        "pretrained_model": {"preset": "demo", "model": model, "train": train},
    }
    path.write_text(yaml.safe_dump({"description": "warm-start benchmark", "assets": assets}))
    return path


def _parts(books: list[Path], n: int) -> list[tuple[str, str]]:
    """Each book cut into ``n`` files at paragraph breaks: ``(name, text)``."""
    out = []
    for book in books:
        paragraphs = book.read_text(encoding="utf-8", errors="replace").split("\n\n")
        step = -(-len(paragraphs) // n)
        for i in range(n):
            out.append((f"{book.stem}-part{i}.txt", "\n\n".join(paragraphs[i * step : (i + 1) * step])))
    return [(name, text) for name, text in out if text.strip()]


def run(home: Path, prof: Path, select: str, *sets: str) -> None:
    cmd = [str(ROOT / ".venv/bin/lmpipe"), "run", "--config", str(prof), "--select", select]
    cmd += [x for s in sets for x in ("--set", s)]
    print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, env={**os.environ, "LMPIPE_HOME": str(home)}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def latest(home: Path, asset: str) -> dict:
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    mat = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization
    return {k: v.value for k, v in mat.metadata.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="pretraining steps of each run")
    ap.add_argument("--replay", type=float, default=0.25, help="replay fraction of the warm start")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warm-start-"))
    print(f"work directory {work}", file=sys.stderr)
    try:
        corpus, home = work / "corpus", work / "home"
        corpus.mkdir()
        parts = _parts(sorted(BOOKS.glob("*.txt")), 8)  # documents small enough for val/test to hold some
        first, second = parts[0::2], parts[1::2]  # every book in both halves: the added text is new, not new kinds
        for name, text in first:
            (corpus / name).write_text(text, encoding="utf-8")
        prof = profile(work / "p.yaml", corpus, args.steps)
        run(home, prof, "group:data or key:pretrained_model")
        base = latest(home, "pretrained_model")
        for name, text in second:
            (corpus / name).write_text(text, encoding="utf-8")
        run(home, prof, "group:data")
        rebuilt = latest(home, "clean_corpus")["partitions_rebuilt"]
        kept = latest(home, "tokenizer")["kept"]
        arms = {}
        for name, sets in {
            "warm": (
                "pretrained_model.warm_start.init=previous",
                f"pretrained_model.warm_start.replay_fraction={args.replay}",
            ),
            "scratch": ("pretrained_model.warm_start.init=scratch",),
            "scratch_same_compute": (
                "pretrained_model.warm_start.init=scratch",
                f"pretrained_model.train.max_steps={2 * args.steps}",
            ),
        }.items():  # warm first: it starts from the first model, the latest one until it runs
            run(home, prof, "key:pretrained_model", *sets)
            arms[name] = latest(home, "pretrained_model")
        figures = {
            name: {
                "val_loss": round(m["val_loss"], 4),
                "steps": m["steps"],
                "init": m["init"],
                "started_from": m["started_from"],
            }
            for name, m in arms.items()
        }
        result = {
            "benchmark": "warm_start",
            "books": {"first": len(first), "added": len(second)},
            "steps": args.steps,
            "replay_fraction": args.replay,
            "first_model_val_loss_on_its_corpus": round(base["val_loss"], 4),
            "partitions_rebuilt_after_adding": rebuilt,
            "tokenizer_kept": kept,
            "arms": figures,
            "warm_minus_scratch_val_loss": round(arms["warm"]["val_loss"] - arms["scratch"]["val_loss"], 4),
            "warm_minus_scratch_same_compute_val_loss": round(
                arms["warm"]["val_loss"] - arms["scratch_same_compute"]["val_loss"], 4
            ),
            "mixture": arms["warm"].get("realized_mixture_tokens"),
        }
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
