"""Single-file benchmark: the data group on ONE large JSON Lines file, cut into units, with 1 and with 2 workers.

The file is built from the Gutenberg books in /work/shared/data/corpus/gutenberg: their paragraphs in groups of 8
per line (one document), copy 0 as they are, copy k > 0 with the words of every paragraph permuted by an RNG seeded
with k, until the file holds ``--mb`` MB (10**6 bytes), so exact and near dedup keep the copies. Each configuration
is a fresh ``lmpipe run --select group:data`` subprocess in its own empty home (vocabulary 8192, default clean
settings), one after the other, never two at once; ``raw_corpus.unit_bytes`` is ``--unit-mb`` MiB. Stage seconds
are the STEP_START -> STEP_SUCCESS timestamps of the run's events in the Dagster instance.

Figures (final JSON line):
  single_file_speedup        seconds of the partitioned stages (raw_corpus + clean_corpus + tokenized) with
                             LMPIPE_DATA_WORKERS=1 / with 2. Goal >= 1.7. ``single_file_speedup_group``: the same for
                             the whole run (RUN_START -> RUN_SUCCESS), which includes the tokenizer's training and
                             the other whole-corpus steps.
  identical_across_workers   the token_shards manifests' shard sha256 lists (per split, in order) of the two runs are
                             equal. Must be true.
  units, partitions_with_units   how the file was cut, and over how many of the 16 partitions its parts fell.
  mb_per_s_1, mb_per_s_2     file MB / partitioned-stage seconds, per run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_units.py [--mb 64] [--unit-mb 4] [--out DIR]
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from data_scale import run_events, shard_digests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BOOKS = ROOT.parent / "shared" / "data" / "corpus" / "gutenberg"  # ../shared beside the repository
PARTITIONED = ("raw_corpus", "clean_corpus", "tokenized")
GOALS = {"single_file_speedup": 1.7}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_corpus(path: Path, mb: float) -> int:
    """One JSON Lines file of about ``mb`` MB (see the module docstring); returns its size in bytes."""
    paragraphs = []
    for book in sorted(BOOKS.glob("*.txt")):
        text = book.read_text(encoding="utf-8", errors="replace")
        paragraphs += [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 40]
    if not paragraphs:
        raise FileNotFoundError(f"no books in {BOOKS}; the benchmark reads the shared Gutenberg corpus")
    target, size, copy = int(mb * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            rng = random.Random(copy)
            for i in range(0, len(paragraphs), 8):
                group = paragraphs[i : i + 8]
                if copy:
                    group = [" ".join(rng.sample(words := p.split(), len(words))) for p in group]
                line = json.dumps({"text": "\n\n".join(group)}) + "\n"
                f.write(line)
                size += len(line)
                if size >= target:
                    break
            copy += 1
    return path.stat().st_size


def group_run(work: Path, corpus: Path, unit_bytes: int, workers: int) -> dict[str, Any]:
    """One ``lmpipe run --select group:data`` in a fresh home with ``workers`` worker processes."""
    home = work / f"home-{workers}"
    shutil.rmtree(home, ignore_errors=True)
    profile = work / "profile.yaml"
    assets = {"raw_corpus": {"sources": [str(corpus)], "unit_bytes": unit_bytes}, "tokenizer": {"vocab_size": 8192}}
    profile.write_text(yaml.safe_dump({"description": "data_units benchmark", "assets": assets}))
    env = {**os.environ, "LMPIPE_HOME": str(home), "LMPIPE_DATA_WORKERS": str(workers), "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).with_name("lmpipe")
    log = work / f"run-{workers}.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        cmd = [str(exe), "run", "--config", str(profile), "--select", "group:data"]
        rc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"lmpipe run exited {rc}; log {log}:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    run = {"process_s": time.perf_counter() - t0, **run_events(home)}
    run["partitioned_s"] = sum(run["steps"][s] for s in PARTITIONED)
    steps = ", ".join(f"{s} {t:.1f}s" for s, t in run["steps"].items())
    say(f"  {workers} worker(s): run {run['run_s']:.1f}s (process {run['process_s']:.1f}s): {steps}")
    return run


def unit_spread(corpus: Path, unit_bytes: int) -> tuple[int, int]:
    """The file's units and the number of partitions they fall in."""
    from lmcore.data.partitions import partition_of
    from lmcore.data.sources.ranges import plan_parts

    parts = plan_parts(corpus, corpus.name, unit_bytes) or (None,)
    keys = [f"{corpus.parent.name}/{corpus.name}" + (f"@{p.index}" if p else "") for p in parts]
    return len(keys), len({partition_of(k) for k in keys})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=64.0, help="size of the one JSON Lines file, in MB")
    parser.add_argument("--unit-mb", type=float, default=4.0, help="raw_corpus.unit_bytes, in MiB")
    parser.add_argument("--out", type=Path, help="work directory (kept); default: a temporary one, removed")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="lmpipe-data-units-"))
    (work / "big").mkdir(parents=True, exist_ok=True)
    corpus = work / "big" / "corpus.jsonl"
    size = write_corpus(corpus, args.mb)
    unit_bytes = int(args.unit_mb * (1 << 20))
    units, spread = unit_spread(corpus, unit_bytes)
    say(f"one file of {size / 1e6:.1f} MB: {units} units of about {args.unit_mb} MiB in {spread} partitions")
    try:
        runs = {w: group_run(work, corpus, unit_bytes, w) for w in (1, 2)}
        identical = shard_digests(runs[1]) == shard_digests(runs[2])
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    figures = {
        "mb": round(size / 1e6, 1),
        "unit_mb": args.unit_mb,
        "units": units,
        "partitions_with_units": spread,
        "single_file_speedup": round(runs[1]["partitioned_s"] / runs[2]["partitioned_s"], 3),
        "single_file_speedup_group": round(runs[1]["run_s"] / runs[2]["run_s"], 3),
        "identical_across_workers": identical,
        **{f"mb_per_s_{w}": round(size / 1e6 / r["partitioned_s"], 3) for w, r in runs.items()},
        **{f"seconds_{w}": {s: round(t, 1) for s, t in r["steps"].items()} for w, r in runs.items()},
        "goals": GOALS,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
