"""Tokenization benchmark on the Gutenberg corpus: our asset code paths vs bare HF tokenizers.

Figures (final JSON line, all ratios measured side by side in this one process run):
  shard_vs_encode_batch  tokens/s of lmcore.data.shards.tokenize_splits (Parquet in, Arrow shards
                         + digests + manifest out) / tokens/s of Tokenizer.encode_batch over the
                         same texts already in memory. Goal >= 0.8.
  bpe_train_overhead     seconds of lmcore.data.tokenizer.train_tokenizer (texts streamed from Parquet)
                         / seconds of a bare train_from_iterator over in-memory texts. Goal <= 1.10.
  shard_rss_growth       peak RSS of sharding 4x the corpus / peak RSS of sharding 1x, each in a
                         fresh subprocess. Goal <= 1.2.

    python benchmarks/tokenization.py [--corpus DIR] [--repeats 3]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmcore.data.shards import tokenize_splits
from lmcore.data.tokenizer import TokenizerConfig, _trainer, new_tokenizer, train_tokenizer
from lmcore.io import ParquetShardWriter, iter_texts

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "gutenberg"
CHUNK_CHARS = 20_000

_RSS_CHILD = """
import json, sys
from pathlib import Path
from lmcore.data.shards import tokenize_splits
from lmcore.data.tokenizer import load_tokenizer
tok = load_tokenizer(sys.argv[1])
paths = [Path(p) for p in json.loads(sys.argv[3])]
tokenize_splits(tok, {"train": paths}, sys.argv[2], shard_tokens=1 << 22)
# VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss across fork+exec.
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def load_documents(corpus: Path) -> list[str]:
    docs = []
    for path in sorted(corpus.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        docs.extend(text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS))
    return docs


def write_docs(docs: list[str], out: Path, copies: int = 1) -> list[Path]:
    with ParquetShardWriter(out, max_bytes=8 << 20) as w:
        for c in range(copies):
            for i, text in enumerate(docs):
                w.write({"doc_id": f"{c}-{i}", "source": "bench", "text": text})
    return [out / s["path"] for s in w.shards]


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_rss_kb(tok_path: Path, out: Path, paths: list[Path], runs: int = 3) -> int:
    """Median peak RSS of ``runs`` fresh processes sharding ``paths`` (allocator and thread-pool noise is +-20%)."""
    cmd = [sys.executable, "-c", _RSS_CHILD, str(tok_path), str(out), json.dumps([str(p) for p in paths])]
    peaks = sorted(
        int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        for _ in range(runs)
    )
    return peaks[len(peaks) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args()
    docs = load_documents(args.corpus)
    n_bytes = sum(len(d.encode()) for d in docs)
    cfg = TokenizerConfig(vocab_size=args.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_docs(docs, tmp / "docs")

        def bare_train():
            new_tokenizer().train_from_iterator(docs, trainer=_trainer(cfg))

        def ours_train():
            train_tokenizer(cfg, iter_texts(paths), tmp / "tokenizer.json")

        t_bare_train, t_ours_train = best_of(args.repeats, bare_train), best_of(args.repeats, ours_train)
        from lmcore.data.tokenizer import load_tokenizer

        tok = load_tokenizer(tmp / "tokenizer.json")
        n_tokens = sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False)) + len(docs)
        t_bare_enc = best_of(args.repeats, lambda: tok.encode_batch(docs, add_special_tokens=False))
        t_ours_enc = best_of(args.repeats, lambda: tokenize_splits(tok, {"train": paths}, tmp / "shards"))
        rss1 = peak_rss_kb(tmp / "tokenizer.json", tmp / "rss1", paths)
        paths4 = write_docs(docs, tmp / "docs4", copies=4)
        rss4 = peak_rss_kb(tmp / "tokenizer.json", tmp / "rss4", paths4)
    figures = {
        "corpus_bytes": n_bytes,
        "documents": len(docs),
        "tokens": n_tokens,
        "encode_batch_tokens_per_s": round(n_tokens / t_bare_enc),
        "shard_tokens_per_s": round(n_tokens / t_ours_enc),
        "shard_vs_encode_batch": round(t_bare_enc / t_ours_enc, 3),
        "bpe_train_bare_s": round(t_bare_train, 2),
        "bpe_train_ours_s": round(t_ours_train, 2),
        "bpe_train_overhead": round(t_ours_train / t_bare_train, 3),
        "shard_peak_rss_mb_1x": round(rss1 / 1024, 1),
        "shard_peak_rss_mb_4x": round(rss4 / 1024, 1),
        "shard_rss_growth": round(rss4 / rss1, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
