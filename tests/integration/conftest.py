"""Integration fixtures: a fresh LMPIPE_HOME per test and a tiny profile over fixture text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LMPIPE_HOME", str(h))
    return h


def write_profile(path: Path, sources: list[str], **overrides) -> Path:
    """A small, fast profile: a vocabulary of 300 and large val/test fractions so every split has text."""
    assets = {
        "raw_corpus": {"sources": sources},
        "clean_corpus": {"min_doc_chars": 20, "max_doc_chars": 2000},
        "splits": {"val_fraction": 0.2, "test_fraction": 0.2},
        "tokenizer": {"vocab_size": 300},
        "token_shards": {"shard_tokens": 4096},
    }
    for asset, fields in overrides.items():
        assets.setdefault(asset, {}).update(fields)
    path.write_text(yaml.safe_dump({"description": "test profile", "assets": assets}))
    return path


@pytest.fixture()
def corpus_dir(tmp_path) -> Path:
    """Fixture text as a directory of .txt and .jsonl files (about 40 documents)."""
    d = tmp_path / "corpus"
    d.mkdir()
    text = (FIXTURES / "small_corpus.txt").read_text(encoding="utf-8")
    docs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    for i, doc in enumerate(docs[:20]):
        (d / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    with open(d / "more.jsonl", "w", encoding="utf-8") as f:
        for doc in docs[20:]:
            f.write(json.dumps({"text": doc}) + "\n")
    return d
