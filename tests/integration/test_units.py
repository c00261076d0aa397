"""Units smaller than a file, through the real data group: one JSON Lines file of about 0.7 MB cut into parts
spread over several partitions gives the documents, tokenizer and token ids of the file read whole, and 2 worker
processes give the token shards of 1, byte for byte."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np

from lmcore.data.corpus import CorpusConfig, partition_units
from lmcore.data.partitions import PARTITIONS, partition_of
from lmcore.data.shards import load_manifest, open_split
from lmcore.data.splits import SPLITS, split_rows
from lmcore.io import read_json
from pipelines.cli import main
from tests.integration.conftest import FIXTURES, make_corpus, write_profile

SMALL_UNITS = 96 << 10


def _big_jsonl(path: Path, target_bytes: int = 700_000) -> None:
    """JSON lines of the fixture corpus's sentences shuffled by a seeded RNG, with blank lines, a CRLF stretch, an
    exact copy of an earlier record (dedup across parts) and no final newline."""
    text = (FIXTURES / "small_corpus.txt").read_text(encoding="utf-8")
    sentences = [s.strip() + "." for s in text.replace("\n", " ").split(".") if len(s.strip()) > 20]
    rng, size, lines = random.Random(25), 0, []
    while size < target_bytes:
        doc = " ".join(rng.sample(sentences, rng.randint(3, 8)))
        line = json.dumps({"id": len(lines), "text": doc})
        line += "\r\n" if 500 <= len(lines) < 600 else "\n"
        lines.append(line + ("\n" if len(lines) % 97 == 0 else ""))
        size += len(line)
    lines.append(lines[10].strip())  # the same text as line 11, far away in another part; no final newline
    path.write_text("".join(lines), encoding="utf-8", newline="")


def _latest(home: Path, asset: str) -> dict:
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    filt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset))
    mat = instance.fetch_materializations(filt, limit=1).records[0].asset_materialization
    return {k: v.value for k, v in mat.metadata.items()}


def _run(tmp_path: Path, monkeypatch, sources: list[str], unit_bytes: int, workers: int) -> dict:
    home = tmp_path / f"home-{unit_bytes}-{workers}"
    monkeypatch.setenv("LMPIPE_HOME", str(home))
    monkeypatch.setenv("LMPIPE_DATA_WORKERS", str(workers))
    tokenizer = {"vocab_size": 300, "sample_bytes": 100_000}  # a sample of the train split, the same in every run
    profile = write_profile(
        tmp_path / f"p-{unit_bytes}.yaml", sources, raw_corpus={"unit_bytes": unit_bytes}, tokenizer=tokenizer
    )
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    splits_root = Path(_latest(home, "splits")["artifact_path"])
    splits_manifest = read_json(splits_root / "manifest.json")
    shards_root = Path(_latest(home, "token_shards")["artifact_path"])
    manifest = load_manifest(shards_root)
    return {
        "docs": {
            s: Counter((r["doc_id"], r["text"]) for r in split_rows(splits_root, splits_manifest, s)) for s in SPLITS
        },
        "tokenizer": (Path(_latest(home, "tokenizer")["artifact_path"]) / "tokenizer.json").read_bytes(),
        "token_docs": {s: _documents(open_split(shards_root, s).arrays) for s in manifest["splits"]},
        "shard_digests": {s: [x["sha256"] for x in info["shards"]] for s, info in manifest["splits"].items()},
    }


def _documents(arrays: list[np.ndarray]) -> Counter:
    """The documents' id sequences in a split's token stream (each ends with <|endoftext|>, id 0)."""
    ids = np.concatenate(arrays) if arrays else np.zeros(0, np.uint16)
    ends = np.flatnonzero(ids == 0)
    return Counter(ids[a + 1 : b].tobytes() for a, b in zip([-1, *ends[:-1]], ends, strict=True))


def test_one_file_cut_into_units_or_read_whole_and_one_or_two_workers_give_the_same_data(tmp_path, monkeypatch):
    big_dir = tmp_path / "big"
    big_dir.mkdir()
    _big_jsonl(big_dir / "stories.jsonl")
    sources = [str(make_corpus(tmp_path / "corpus")), str(big_dir)]
    units = [
        u["key"]
        for p in PARTITIONS
        for u in partition_units(CorpusConfig(sources=tuple(sources), unit_bytes=SMALL_UNITS), p)
    ]
    parts = {partition_of(key) for key in units if key.startswith("big/stories.jsonl@")}
    assert len(parts) >= 3  # the parts of the file are read, cleaned and tokenized in several partitions

    whole = _run(tmp_path, monkeypatch, sources, 64 << 20, 1)
    cut = _run(tmp_path, monkeypatch, sources, SMALL_UNITS, 1)
    cut2 = _run(tmp_path, monkeypatch, sources, SMALL_UNITS, 2)

    assert sum(whole["docs"]["train"].values()) > 500 and all(whole["docs"][s] for s in SPLITS)
    assert cut["docs"] == whole["docs"]  # the same doc_ids and texts in every split, duplicates removed alike
    assert cut["tokenizer"] == whole["tokenizer"]
    assert cut["token_docs"] == whole["token_docs"]  # every document's ids, in shards laid out by partition
    assert cut2["shard_digests"] == cut["shard_digests"] and sum(map(len, cut["shard_digests"].values())) > 6
