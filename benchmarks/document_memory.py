"""Cost of one large document in the data stages: peak memory as a multiple of its size, and time at two sizes.

Each (shape, size, stage) runs in a fresh child process, so each peak RSS (``ru_maxrss``, less the child's RSS
after its imports) is that stage's own. Shapes, each one document:
- ``prose``: a Gutenberg book repeated (not ASCII: Python holds it at two bytes per character);
- ``paragraph``: one hard-wrapped paragraph without a blank line (the case re-flow used to take in quadratic time);
- ``unbroken``: one run of letters without any whitespace (the hard-cut fallback of the split).

Stages: ``raw`` (the file read into a raw shard), ``clean`` (default config: split into 20,000-character chunks),
``clean_whole`` (``max_doc_chars=0``: never split). The last line is JSON: per stage the largest memory
multiple over the shapes, and the largest ratio of CPU time (the child's own, so other processes on the machine
count little) at the doubled size to the base size (2.0 is linear).

Usage: python benchmarks/document_memory.py [--mib 16] [--shapes prose paragraph unbroken]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BOOK = Path("/work/shared/data/corpus/gutenberg/1342-0.txt")
STAGES = ("raw", "clean", "clean_whole")
SHAPES = ("prose", "paragraph", "unbroken")

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from lmcore.data.clean import CleanConfig, clean_corpus
from lmcore.data.corpus import CorpusConfig, build_raw_corpus

stage, work = sys.argv[1], Path(sys.argv[2])
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base, start = rss(), time.process_time()
if stage == "raw":
    build_raw_corpus(CorpusConfig(sources=(str(work / "corpus"),), max_document_bytes=1 << 30), work / "raw",
                     work / "cache")
else:
    config = CleanConfig(max_doc_chars=0 if stage == "clean_whole" else 20_000)
    clean_corpus(config, sorted((work / "raw").glob("part-*.parquet")), work / stage)
print(json.dumps({"seconds": time.process_time() - start, "extra_bytes": rss() - base}))
"""


def make_document(shape: str, size: int) -> str:
    """About ``size`` UTF-8 bytes of one document of ``shape``."""
    if shape == "prose":
        book = BOOK.read_text(encoding="utf-8")
        return (book * (size // len(book.encode("utf-8")) + 1))[:size]
    if shape == "paragraph":
        line = "the quick brown fox jumps over the lazy dog and then it runs far away from"
        return "\n".join([line] * (size // (len(line) + 1)))
    return "abcdefghij" * (size // 10)


def run_stage(stage: str, work: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, stage, str(work)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(shape: str, mib: int, root: Path) -> dict[str, dict[str, float]]:
    work = root / f"{shape}-{mib}"
    (work / "corpus").mkdir(parents=True)
    doc = make_document(shape, mib << 20)
    size = len(doc.encode("utf-8"))
    (work / "corpus" / "doc.txt").write_text(doc, encoding="utf-8")
    del doc
    results = {}
    for stage in STAGES:
        r = run_stage(stage, work)
        results[stage] = {"multiple": round(r["extra_bytes"] / size, 2), "seconds": round(r["seconds"], 2)}
        print(
            f"{shape:9s} {mib:4d} MiB {stage:11s} peak {results[stage]['multiple']:5.2f}x its size, "
            f"{results[stage]['seconds']:6.2f} s",
            file=sys.stderr,
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="base document size; it is measured at this and twice")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    args = parser.parse_args()
    summary: dict[str, dict[str, float]] = {s: {"max_multiple": 0.0, "max_time_ratio": 0.0} for s in STAGES}
    with tempfile.TemporaryDirectory(prefix="document-memory-") as tmp:
        for shape in args.shapes:
            small, large = measure(shape, args.mib, Path(tmp)), measure(shape, 2 * args.mib, Path(tmp))
            for stage in STAGES:
                entry = summary[stage]
                entry["max_multiple"] = max(entry["max_multiple"], small[stage]["multiple"], large[stage]["multiple"])
                ratio = large[stage]["seconds"] / max(small[stage]["seconds"], 1e-3)
                entry["max_time_ratio"] = round(max(entry["max_time_ratio"], ratio), 2)
    print(json.dumps({"document_mib": args.mib, **summary}))


if __name__ == "__main__":
    main()
