"""Data-group scaling benchmark: the real partitioned data assets, run through ``lmpipe run`` on synthetic corpora.

The corpus at scale s is s distinct texts of each Gutenberg book in /work/shared/data/corpus/gutenberg, one .txt
file each (``book-<id>-copy<k>.txt``): copy 0 is the book as it is, copy k > 0 the book with the words of every
paragraph permuted by an RNG seeded with (book, k), line lengths and Gutenberg marker / ``[Illustration]``
paragraphs kept, so exact and near dedup keep every copy and the files spread over the 16 hash partitions. Every
run is a fresh ``lmpipe run --select ...`` subprocess (default clean settings, vocabulary 8192, the default
tokenizer sample), started through a small wrapper that reports its descendants' peak RSS. Stage times are the
STEP_START -> STEP_SUCCESS timestamps of the run's events in the Dagster instance; MB = 10**6 bytes of source files.

Figures (final JSON line; one process run, one configuration after the other, never two at once):
  mb_per_s                  per scale and stage: corpus MB / stage seconds (group run, --workers workers).
  parallel_speedup          at the largest scale, from empty homes: seconds of the partitioned stages (raw_corpus
                            + clean_corpus + tokenized) with LMPIPE_DATA_WORKERS=1 / with --workers. Goal >= 1.7.
                            ``parallel_speedup_group``: the same for the whole run (RUN_START -> RUN_SUCCESS).
  rss_growth_<max>x         per stage: peak RSS at the largest scale / at the smallest, each stage in its own
                            ``--select <stage>`` run (in order, one home per scale) under a fresh wrapper process
                            (a child subreaper, so the orphaned forkserver and its workers count too). Goal <= 1.2.
  incremental_fraction      100 files (the books cut into 100 parts), a full run, then one file more (a permuted
                            copy of the first book) and a second run: its run wall / the first's. Goal <= 0.1.
                            ``incremental_fraction_process`` includes CLI start-up; ``incremental`` has the
                            partitions rebuilt and documents re-cleaned / re-tokenized in the second run.
  identical_across_workers  the token_shards manifests' shard sha256 lists (per split, in order) of the 1-worker
                            and the --workers runs at the largest scale are equal. Must be true.
  tokenize_vs_bare_hf       in this process, the books cut into 20,000-character documents, in ~2 MB parts: MB/s of
                            ``tokenize_partition`` (Parquet in, Arrow shards out) / MB/s of a bare ``encode_batch_fast``
                            call on the same texts, the median over parts of paired runs. Goal >= 0.9.
                            ``encode_vs_bare_hf``: the same for its encode path ``encode_documents`` alone; ``_cpu``: by
                            CPU seconds; ``tokenize_mb_per_s``: the three.
  fast_encoder_vs_hf        where tiktoken gives HF's ids on every one of those documents: MB/s of
                            ``tokenize_partition`` with ``encoder: tiktoken`` (its per-partition check included) /
                            with ``hf``, paired as above; else the reason it was refused. ``fast_encode_vs_hf``: the
                            same for ``encode_documents`` alone; ``fast_encoder_identical_shards``: manifests equal.
  long_word_seconds         seconds of ``tokenize_partition`` on one 10 MB document without whitespace (the books'
                            letters: one pre-token) and on 10 MB of the 20,000-character documents (``_tiktoken``:
                            with ``encoder: tiktoken``).
  time_profile              at the smallest scale, one group run with one worker under cProfile: per stage, its
                            step's seconds, its lmcore work per category (read/decompress/parse, filters, dedup
                            signatures, encode, write, digests, ...: each function's time charged to the lmcore code
                            that called it) and ``dagster_fixed_s`` = step seconds - lmcore seconds (printed as a
                            table too). Seconds under the profiler: Python code slows more than C code.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_scale.py [--scales 1,4,16] [--workers 2]
        [--fraction 1.0 | --max-mb MB] [--out DIR | --keep] [--skip-incremental | --tokenize-only]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from stage_profile import attribute
from tokenize_speed import tokenize_speed

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT.parent / "shared" / "data" / "corpus" / "gutenberg"  # ../shared beside the repository
STAGES = ("raw_corpus", "clean_corpus", "splits", "tokenizer", "tokenized", "token_shards")
PARTITIONED = ("raw_corpus", "clean_corpus", "tokenized")
UPSTREAM = {"tokenizer": "base_model"}  # an upstream outside STAGES, where the definitions have it: run alone first
INCREMENTAL_FILES = 100
GOALS = {"parallel_speedup": 1.7, "rss_growth": 1.2, "incremental_fraction": 0.1, "tokenize_vs_bare_hf": 0.9}

# Runs one command, then reaps every orphaned descendant (the multiprocessing forkserver outlives the CLI and is
# re-parented here, a child subreaper), so RUSAGE_CHILDREN's maxrss covers them all; a fresh one per measurement,
# since that maxrss is a max over every descendant ever waited for. "main" is the CLI process (and what it reaped),
# "workers" the largest of the rest (the forkserver with its worker processes).
_WRAPPER = r"""
import ctypes, json, os, resource, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
with open(sys.argv[1], "ab") as log:
    proc = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
workers, deadline = 0, time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        pid, _, rest = os.wait4(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        time.sleep(0.05)
    else:
        workers = max(workers, rest.ru_maxrss)
total = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": proc.returncode, "maxrss_kb": total, "main_kb": usage.ru_maxrss, "workers_kb": workers}))
"""


def say(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- synthetic corpus


def base_texts(fraction: float) -> dict[str, str]:
    """Each book (id -> text, universal newlines), cut after ``fraction`` of its characters at a paragraph end."""
    texts = {}
    for path in sorted(BOOKS.glob("*-0.txt"), key=lambda p: int(p.name.split("-")[0])):
        text = path.read_text(encoding="utf-8")
        if fraction < 1.0:
            cut = text.find("\n\n", int(len(text) * fraction))
            text = text[: cut if cut > 0 else len(text)] + "\n"
        texts[path.name.removesuffix("-0.txt")] = text
    return texts


def permuted(text: str, seed: str) -> str:
    """``text`` with the words of each paragraph shuffled (seeded), each line keeping its indent and word count."""
    rng = random.Random(seed)
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    out = []
    for para in text.removeprefix(bom).split("\n\n"):
        lines = para.split("\n")
        words = para.split()
        if para.lstrip().startswith(("***", "[")) or len(words) < 2:  # markers, placeholders: cleaning's business
            out.append(para)
            continue
        rng.shuffle(words)
        new, i = [], 0
        for line in lines:
            n = len(line.split())
            new.append(line[: len(line) - len(line.lstrip())] + " ".join(words[i : i + n]))
            i += n
        out.append("\n".join(new))
    return bom + "\n\n".join(out)


def write_copies(texts: dict[str, str], copies: int, pool: Path) -> None:
    """``pool/book-<id>-copy<k>.txt`` for k < ``copies`` (those already there are kept)."""
    pool.mkdir(parents=True, exist_ok=True)
    for book, text in texts.items():
        for k in range(copies):
            path = pool / f"book-{book}-copy{k:02d}.txt"
            if not path.exists():
                path.write_text(text if k == 0 else permuted(text, f"{book}:{k}"), encoding="utf-8")


def scale_corpus(pool: Path, scale: int, out: Path) -> tuple[Path, float, int]:
    """A directory named ``corpus`` (the source label, so doc_ids do not depend on the scale's path) of hard links
    to the copies below ``scale``; returns it, its MB and its file count."""
    corpus = out / "corpus"
    corpus.mkdir(parents=True)
    files = [p for p in sorted(pool.glob("book-*-copy*.txt")) if int(p.stem.rsplit("copy", 1)[1]) < scale]
    for path in files:
        os.link(path, corpus / path.name)
    return corpus, sum(p.stat().st_size for p in files) / 1e6, len(files)


def parts_corpus(texts: dict[str, str], count: int, out: Path) -> Path:
    """The books cut at paragraph ends into ``count`` files in all (parts per book by size), in ``out/corpus``."""
    corpus = out / "corpus"
    corpus.mkdir(parents=True)
    total = sum(map(len, texts.values()))
    shares = {b: count * len(t) / total for b, t in texts.items()}
    parts = {b: max(1, int(s)) for b, s in shares.items()}
    for b in sorted(shares, key=lambda b: parts[b] - shares[b])[: max(0, count - sum(parts.values()))]:
        parts[b] += 1  # largest remainders first
    for book, text in texts.items():
        n = parts[book]
        size, chunk, chars, j = len(text) / n, [], 0, 0
        for para in text.split("\n\n"):
            chunk.append(para)
            chars += len(para)
            if chars >= size and j < n - 1:
                (corpus / f"book-{book}-copy00-part{j:02d}.txt").write_text("\n\n".join(chunk), encoding="utf-8")
                chunk, chars, j = [], 0, j + 1
        (corpus / f"book-{book}-copy00-part{j:02d}.txt").write_text("\n\n".join(chunk), encoding="utf-8")
    return corpus


# ---------------------------------------------------------------- runs and their events


def write_profile(path: Path, corpus: Path) -> Path:
    assets = {"raw_corpus": {"sources": [str(corpus)]}, "tokenizer": {"vocab_size": 8192}}
    path.write_text(yaml.safe_dump({"description": "data_scale benchmark", "assets": assets}))
    return path


def lmpipe(
    home: Path, profile: Path, select: str, workers: int, log: Path, prefix: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run ``lmpipe run`` once in a fresh wrapper (``prefix``: before the script, e.g. ``python -m cProfile``); its
    exit status, process wall seconds and descendants' peak RSS."""
    exe = Path(sys.executable).with_name("lmpipe")
    env = {**os.environ, "LMPIPE_HOME": str(home), "LMPIPE_DATA_WORKERS": str(workers), "OMP_NUM_THREADS": "1"}
    run = [*prefix, str(exe), "run", "--config", str(profile), "--select", select]
    cmd = [sys.executable, "-c", _WRAPPER, str(log), *run]
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"the wrapper failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError(
            f"lmpipe run --select {select!r} exited {out['rc']} (home {home}); log {log}:\n" + "\n".join(tail)
        )
    return {"process_s": wall, **{k: out[k] for k in ("maxrss_kb", "main_kb", "workers_kb")}, **run_events(home)}


def run_events(home: Path) -> dict[str, Any]:
    """The newest run in ``home``'s instance: step seconds, run seconds, each asset's run-level metadata, and the
    token_shards artifact path when it was materialized."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_runs(limit=1)[0]
        if run.status != dg.DagsterRunStatus.SUCCESS:
            raise RuntimeError(f"run {run.run_id} in {home} ended {run.status.value}")
        starts, steps, bounds, metadata = {}, {}, [], {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type_value
            if kind in ("PIPELINE_START", "PIPELINE_SUCCESS", "RUN_START", "RUN_SUCCESS"):
                bounds.append(entry.timestamp)
            elif kind == "STEP_START":
                starts[entry.step_key] = entry.timestamp
            elif kind == "STEP_SUCCESS":
                steps[entry.step_key] = entry.timestamp - starts[entry.step_key]
            elif kind == "ASSET_MATERIALIZATION":
                name = event.asset_key.to_user_string()
                values = event.event_specific_data.materialization.metadata
                metadata.setdefault(name, {k: getattr(v, "value", v) for k, v in values.items()})
    if len(bounds) != 2:
        raise RuntimeError(f"run {run.run_id} in {home}: no start and success events ({len(bounds)} found)")
    run_s = max(bounds) - min(bounds)
    return {"steps": steps, "run_s": run_s, "metadata": metadata}


def shard_digests(run: dict[str, Any]) -> dict[str, list[str]]:
    """The token_shards manifest's shard sha256s per split, in order."""
    manifest = json.loads((Path(run["metadata"]["token_shards"]["artifact_path"]) / "manifest.json").read_text())
    return {split: [s["sha256"] for s in info["shards"]] for split, info in manifest["splits"].items()}


def partitioned_s(run: dict[str, Any]) -> float:
    return sum(run["steps"][s] for s in PARTITIONED)


def group_run(work: Path, corpus: Path, name: str, workers: int) -> dict[str, Any]:
    home = work / "homes" / name
    profile = write_profile(work / f"{name}.yaml", corpus)
    run = lmpipe(home, profile, "group:data", workers, work / "logs" / f"{name}.log")
    steps = ", ".join(f"{s} {run['steps'][s]:.1f}s" for s in STAGES)
    say(f"  {name}: run {run['run_s']:.1f}s (process {run['process_s']:.1f}s): {steps}")
    return run


def stage_rss(work: Path, corpus: Path, name: str, workers: int) -> dict[str, dict[str, int]]:
    """Peak RSS (kB: all, the CLI process, the worker processes) of each stage, each in its own
    ``--select <stage>`` run, in order, in one home."""
    home, profile = work / "homes" / name, write_profile(work / f"{name}.yaml", corpus)
    peaks = {}
    for stage in STAGES:
        upstream(home, profile, stage, work / "logs" / name)
        run = lmpipe(home, profile, stage, workers, work / "logs" / f"{name}-{stage}.log")
        peaks[stage] = {k: run[f"{k}_kb"] for k in ("maxrss", "main", "workers")}
        mib = {k: round(v / 1024) for k, v in peaks[stage].items()}
        say(
            f"  {name}: {stage} peak RSS {mib['maxrss']} MiB (CLI {mib['main']}, workers {mib['workers']}) "
            f"in {run['process_s']:.1f}s"
        )
    return peaks


def upstream(home: Path, profile: Path, stage: str, log: Path) -> None:
    """Materialize ``stage``'s upstream outside STAGES (``UPSTREAM``), if the definitions have it, so that a
    ``--select <stage>`` run finds its inputs."""
    import importlib.util

    name = UPSTREAM.get(stage)
    if name and importlib.util.find_spec(f"assets.data.{name}") is not None:
        lmpipe(home, profile, name, 1, log.with_name(f"{log.name}-{name}.log"))


def rss_figures(rss: dict[int, dict[str, dict[str, int]]], low: int, top: int) -> dict[str, Any]:
    """Peak RSS growth per stage from ``low`` to ``top`` (all processes; worker processes alone where there were
    any), and the peaks in MiB."""
    if len(rss) < 2:
        return {f"rss_growth_{top}x": {}}

    def ratio(stage: str, kind: str) -> float | None:
        return round(rss[top][stage][kind] / rss[low][stage][kind], 3) if rss[low][stage][kind] else None

    def mib(stages: tuple[str, ...], kind: str) -> dict[str, dict[str, int]]:
        return {f"{x}x": {s: round(rss[x][s][kind] / 1024) for s in stages} for x in (low, top)}

    return {
        f"rss_growth_{top}x": {s: ratio(s, "maxrss") for s in STAGES},
        f"rss_growth_workers_{top}x": {s: ratio(s, "workers") for s in PARTITIONED},
        "peak_rss_mib": mib(STAGES, "maxrss"),
        "peak_rss_workers_mib": mib(PARTITIONED, "workers"),
    }


# ---------------------------------------------------------------- where the time goes


def time_profile(work: Path, corpus: Path, name: str) -> dict[str, Any]:
    """One ``lmpipe run --select group:data`` with one worker process (so everything but BPE training's child runs
    in the profiled process) under cProfile: per stage, seconds of its lmcore work per category, and the fixed cost
    of its Dagster step: its STEP_START -> STEP_SUCCESS wall minus that work (input loads, memo checks, metadata,
    events, the asset's own code). Seconds under the profiler, which slows Python code more than C code."""
    sys.setrecursionlimit(20_000)
    prof = work / "profiles" / f"{name}.prof"
    prof.parent.mkdir(parents=True, exist_ok=True)
    profile = write_profile(work / f"{name}.yaml", corpus)
    run = lmpipe(
        work / "homes" / name,
        profile,
        "group:data",
        1,
        work / "logs" / f"{name}.log",
        (sys.executable, "-m", "cProfile", "-o", str(prof)),
    )
    stages = {}
    for stage, cats in attribute(prof, STAGES).items():
        lmcore = {k: round(v, 2) for k, v in sorted(cats.items()) if k != "asset, not lmcore" and v >= 0.005}
        step = run["steps"][stage]
        stages[stage] = {
            "step_s": round(step, 2),
            "lmcore_s": lmcore,
            "dagster_fixed_s": round(step - sum(lmcore.values()), 2),
            "of_which_asset_code_s": round(cats.get("asset, not lmcore", 0.0), 2),  # the rest: Dagster around it
        }
    print_profile(stages)
    outside = run["process_s"] - sum(run["steps"].values())
    return {
        "time_profile": {
            "corpus": name,
            "workers": 1,
            "under": "cProfile",
            "stages": stages,
            "run_s": round(run["run_s"], 2),
            "process_outside_steps_s": round(outside, 2),
        }
    }


def print_profile(stages: dict[str, dict[str, Any]]) -> None:
    cats = sorted({c for s in stages.values() for c in s["lmcore_s"]})
    head = ["stage", "step s", *cats, "dagster fixed"]
    rows = [
        [n, s["step_s"], *(s["lmcore_s"].get(c, "") for c in cats), s["dagster_fixed_s"]] for n, s in stages.items()
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in [head, *rows]:
        say("  " + "  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


# ---------------------------------------------------------------- the measurements


def scaling(work: Path, texts: dict[str, str], scales: list[int], workers: int) -> dict[str, Any]:
    """MB/s per stage and scale, the speed-up over one worker and the RSS growth at the largest scale."""
    pool, top, low = work / "pool", max(scales), min(scales)
    say(f"writing {top} copies of {len(texts)} books")
    write_copies(texts, top, pool)
    mb_per_s, corpus_mb, rss, runs = {}, {}, {}, {}
    for scale in scales:
        corpus, mb, files = scale_corpus(pool, scale, work / f"corpus{scale:02d}x")
        corpus_mb[f"{scale}x"] = round(mb, 2)
        say(f"scale {scale}x: {files} files, {mb:.1f} MB")
        runs[scale] = run = group_run(work, corpus, f"group{scale:02d}x-w{workers}", workers)
        mb_per_s[f"{scale}x"] = {s: round(mb / run["steps"][s], 3) for s in STAGES}
        mb_per_s[f"{scale}x"]["group"] = round(mb / run["run_s"], 3)
        dropped = run["metadata"]["splits"].get("duplicates_total")
        if dropped:
            say(f"  warning: splits dropped {dropped} duplicates at {scale}x; the copies were meant to be distinct")
        if scale == top:
            one = group_run(work, corpus, f"group{scale:02d}x-w1", 1)
        if scale in (low, top) and low != top:
            rss[scale] = stage_rss(work, corpus, f"rss{scale:02d}x-w{workers}", workers)
        if scale == low:
            say(f"  time profile at {scale}x (one worker, under cProfile):")
            profile = time_profile(work, corpus, f"profile{scale:02d}x")
    fast = runs[top]
    return {
        "corpus_mb": corpus_mb,
        "mb_per_s": mb_per_s,
        "parallel_speedup": round(partitioned_s(one) / partitioned_s(fast), 3),
        "parallel_speedup_group": round(one["run_s"] / fast["run_s"], 3),
        "parallel_speedup_process": round(one["process_s"] / fast["process_s"], 3),
        **rss_figures(rss, low, top),
        "identical_across_workers": shard_digests(one) == shard_digests(fast),
        **profile,
    }


def incremental(work: Path, texts: dict[str, str], workers: int) -> dict[str, Any]:
    """A full run over 100 files, then one file more and a second run in the same home."""
    say(f"incremental: {INCREMENTAL_FILES} files, then one more")
    corpus = parts_corpus(texts, INCREMENTAL_FILES, work / "incremental")
    first = group_run(work, corpus, "incremental", workers)
    book, text = next(iter(texts.items()))
    (corpus / f"book-{book}-copy01.txt").write_text(permuted(text, f"{book}:1"), encoding="utf-8")
    second = group_run(work, corpus, "incremental", workers)
    meta = second["metadata"]
    rebuilt = {s: meta[s].get("partitions_rebuilt") for s in PARTITIONED}
    return {
        "incremental_fraction": round(second["run_s"] / first["run_s"], 3),
        "incremental_fraction_process": round(second["process_s"] / first["process_s"], 3),
        "incremental_fraction_partitioned": round(partitioned_s(second) / partitioned_s(first), 3),
        "incremental": {
            "partitions_rebuilt": rebuilt,
            "documents_cleaned_in_run": meta["clean_corpus"].get("documents_cleaned_in_run"),
            "documents_tokenized_in_run": meta["tokenized"].get("documents_tokenized_in_run"),
            "documents_tokenized_first_run": first["metadata"]["tokenized"].get("documents_tokenized_in_run"),
            "tokenizer_kept": meta["tokenizer"].get("kept"),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,4,16", help="copies of each book per corpus, comma-separated")
    ap.add_argument("--workers", type=int, default=2, help="LMPIPE_DATA_WORKERS compared against 1")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=float, default=1.0, help="keep this fraction of each book (smoke runs)")
    size.add_argument("--max-mb", type=float, default=None, help="cut the books to about this many MB at 1x")
    ap.add_argument("--out", type=Path, default=None, help="work directory (kept); default a temporary one")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    ap.add_argument("--skip-incremental", action="store_true")
    ap.add_argument("--tokenize-only", action="store_true", help="only tokenize_vs_bare_hf and long_word_seconds")
    args = ap.parse_args()
    scales = sorted({int(s) for s in args.scales.split(",")})
    if scales[0] < 1 or not 0.0 < args.fraction <= 1.0 or args.workers < 2:
        ap.error("--scales must be >= 1, --fraction in (0, 1], --workers >= 2")
    fraction = args.fraction
    if args.max_mb is not None:
        total = sum(p.stat().st_size for p in BOOKS.glob("*-0.txt")) / 1e6
        fraction = min(1.0, args.max_mb / total)
    work = args.out or Path(tempfile.mkdtemp(prefix="lmpipe-data-scale-"))
    say(f"work directory {work}")
    texts = base_texts(fraction)
    figures: dict[str, Any] = {
        "benchmark": "data_scale",
        "scales": scales,
        "workers": args.workers,
        "fraction": round(fraction, 4),
        "books": len(texts),
    }
    try:
        figures |= tokenize_speed(work, texts)
        if not args.tokenize_only:
            figures |= scaling(work, texts, scales, args.workers)
        if not (args.skip_incremental or args.tokenize_only):
            figures |= incremental(work, texts, args.workers)
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    growth, incr = figures.get(f"rss_growth_{scales[-1]}x"), figures.get("incremental_fraction")
    speedup = figures.get("parallel_speedup")
    figures["goals_met"] = {  # None: not measured in this run (one scale, --skip-incremental, --tokenize-only)
        "parallel_speedup": speedup >= GOALS["parallel_speedup"] if speedup is not None else None,
        "rss_growth": max(growth.values()) <= GOALS["rss_growth"] if growth else None,
        "incremental_fraction": incr <= GOALS["incremental_fraction"] if incr is not None else None,
        "identical_across_workers": figures.get("identical_across_workers"),
        "tokenize_vs_bare_hf": figures["tokenize_vs_bare_hf"] >= GOALS["tokenize_vs_bare_hf"],
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
