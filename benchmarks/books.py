"""The Gutenberg books as token shards for the benchmarks: lmcore's own BPE tokenizer and shard writer, two whole
books held out for validation, built once into a cache directory and shared by every benchmark that uses it."""

import sys
from pathlib import Path
from typing import Any

import numpy as np

from lmcore.data.shards import TokenShardWriter, encode_documents, write_manifest
from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer

BOOKS = Path("/work/shared/data/corpus/gutenberg")
VAL_BOOKS = ("43-0.txt", "219-0.txt")  # Jekyll and Hyde, Heart of Darkness: whole books kept out of training
VOCAB = 4096


def say(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def _pieces(path: Path, chars: int = 20_000) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [text[i : i + chars] for i in range(0, len(text), chars)]


def build_shards(cache: Path) -> Path:
    """Tokenizer and shards of the books in ``cache`` (built once; reused when the manifest is there)."""
    if (cache / "manifest.json").exists():
        return cache
    say(f"building tokenizer (vocab {VOCAB}) and shards in {cache}")
    files = sorted(BOOKS.glob("*-0.txt"))
    docs = {"train": [p for p in files if p.name not in VAL_BOOKS], "val": [BOOKS / n for n in VAL_BOOKS]}
    train_texts = [t for p in docs["train"] for t in _pieces(p)]
    tok = train_tokenizer(TokenizerConfig(vocab_size=VOCAB), train_texts, cache / "tokenizer.json")
    splits = {}
    for split, paths in docs.items():
        with TokenShardWriter(cache / split, np.uint16, shard_tokens=1 << 22) as w:
            for ids, _ in encode_documents(tok, [t for p in paths for t in _pieces(p)]):
                w.add(ids)
        splits[split] = {"shards": w.shards, "tokens": w.tokens, "documents": len(paths)}
    write_manifest(cache, splits, dtype="uint16", vocab_size=VOCAB, eot_id=tok.eot_id)
    return cache
