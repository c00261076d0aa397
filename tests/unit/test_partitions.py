"""The partitioned data stages: hash buckets of units, per-partition raw corpus, duplicates removed across
partitions, the tokenizer's sample, tokenized partitions gathered into one shard root, and the worker pool.

The corpus is a directory of small one-line books plus a JSON Lines file (two source specs). Copies of
one text, and a near copy of another, sit in files of different partitions; every result below must be
the same however the documents are grouped into partitions and in whatever order the partitions come.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcore.data.clean import CleanConfig, clean_corpus
from lmcore.data.corpus import CorpusConfig, build_raw_corpus, check_sources, partition_units
from lmcore.data.partitions import PARTITION_COUNT, PARTITIONS, partition_of
from lmcore.data.shards import (
    EncodeConfig,
    assemble_shards,
    open_split,
    split_groups,
    tokenize_partition,
    tokenize_splits,
    verify_shards,
)
from lmcore.data.splits import DOCS_DIR, SPLITS, SplitConfig, split_corpus, split_index, split_rows, tokenizer_sample
from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.io import DOCUMENT_SCHEMA, read_parquet_rows, sha256_file
from lmcore.workers import default_workers, run_parallel

CLEAN = CleanConfig(min_doc_chars=50, dedup_near=True)
SPLIT = SplitConfig(val_fraction=0.2, test_fraction=0.2)
VOCAB = "the a river dog sled snow cold trail man gold north camp fire night wind ran fast slow old".split()


def _text(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) + str(rng.randrange(40)) for _ in range(n))


def _names_in_distinct_partitions(prefix: str, count: int) -> list[str]:
    """``count`` file names under ``books/`` whose units fall in ``count`` different partitions, none of them
    that of ``src/notes.jsonl``."""
    names, used = [], {partition_of("src/notes.jsonl")}
    for i in range(1000):
        name = f"{prefix}-{i}.txt"
        if (p := partition_of(f"books/{name}")) not in used:
            names.append(name)
            used.add(p)
        if len(names) == count:
            return names
    raise AssertionError("partition_of puts everything in a few buckets")


DUP = _text(1000)
"""The text of three files in three partitions, and of one JSON Lines record."""
NEAR_BASE = _text(2000, 300)
NEAR_COPY = " ".join(w if i != 150 else "changed" for i, w in enumerate(NEAR_BASE.split()))  # 1 word of 300


def _write_corpus(root: Path) -> CorpusConfig:
    books = root / "books"
    books.mkdir(parents=True)
    for i in range(30):
        (books / f"book-{i:02d}.txt").write_text(_text(i), encoding="utf-8")
    for name in _names_in_distinct_partitions("dup", 3):
        (books / name).write_text(DUP, encoding="utf-8")
    base, copy = _names_in_distinct_partitions("near", 2)
    (books / base).write_text(NEAR_BASE, encoding="utf-8")
    (books / copy).write_text(NEAR_COPY, encoding="utf-8")
    records = [{"text": _text(100 + i)} for i in range(8)] + [{"text": DUP}]
    (root / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return CorpusConfig(sources=(str(books), str(root / "notes.jsonl")))


def _rows(out: Path, manifest: dict) -> list[dict]:
    return list(read_parquet_rows([out / s["path"] for s in manifest["shards"]]))


def _build_partitions(config: CorpusConfig, out: Path, cache: Path) -> dict[str, dict]:
    return {p: build_raw_corpus(config, out / p, cache, partition=p) for p in PARTITIONS}


def _clean_groups(groups: dict[str, list[dict]], out: Path) -> dict[str, Path]:
    """Cleaned partition directories of raw rows grouped as given."""
    dirs = {}
    out.mkdir(parents=True, exist_ok=True)
    for key, rows in groups.items():
        raw = out / f"raw-{key}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), raw)
        clean_corpus(CLEAN, [raw], out / f"clean-{key}")
        dirs[key] = out / f"clean-{key}"
    return dirs


def _judged(root: Path) -> list[dict]:
    """The index without its partition column, by doc_id: what must not depend on the partitioning."""
    rows = split_index(root).drop_columns(["partition"]).to_pylist()
    return sorted(rows, key=lambda r: r["doc_id"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The corpus built whole and per partition, cleaned per partition and split."""
    tmp = tmp_path_factory.mktemp("partitions")
    config = _write_corpus(tmp / "src")
    whole = build_raw_corpus(config, tmp / "whole", tmp / "cache")
    raw = _build_partitions(config, tmp / "raw", tmp / "cache")
    clean = {}
    for p, manifest in raw.items():
        clean_corpus(CLEAN, [tmp / "raw" / p / s["path"] for s in manifest["shards"]], tmp / "clean" / p)
        clean[p] = tmp / "clean" / p
    splits = split_corpus(SPLIT, clean, tmp / "splits")
    return {
        "tmp": tmp,
        "config": config,
        "whole": whole,
        "raw": raw,
        "clean": clean,
        "splits": splits,
        "root": tmp / "splits",
        "rows": _rows(tmp / "whole", whole),
    }


# ---------------------------------------------------------------- buckets


def test_partition_of_is_stable_and_spreads_keys_over_every_bucket():
    assert PARTITIONS == tuple(f"{i:02d}" for i in range(16)) and PARTITION_COUNT == 16
    # fixed forever: a unit that moved bucket would rebuild two partitions and orphan its old outputs
    assert [partition_of(k) for k in ("books/f00.txt", "gutenberg/11-0.txt", "python-docs", "src/notes.jsonl")] == [
        "02",
        "06",
        "04",
        "08",
    ]
    keys = [f"corpus/file-{i}.txt" for i in range(1600)]
    counts = Counter(partition_of(k) for k in keys)
    assert set(counts) == set(PARTITIONS)
    assert all(60 <= n <= 140 for n in counts.values()), counts  # ~100 each


# ---------------------------------------------------------------- raw corpus per partition


def test_partitioned_build_gives_exactly_the_documents_of_the_whole_build(corpus):
    whole, raw, tmp = corpus["whole"], corpus["raw"], corpus["tmp"]
    columns = ("doc_id", "source", "spec", "text")
    everything = [tuple(r[c] for c in columns) for r in corpus["rows"]]
    parts = {p: [tuple(r[c] for c in columns) for r in _rows(tmp / "raw" / p, m)] for p, m in raw.items()}
    assert sorted(d for rows in parts.values() for d in rows) == sorted(everything)
    assert len({r[0] for r in everything}) == len(everything) == whole["documents"] == 44
    assert {r[2] for r in everything} == set(corpus["config"].specs)
    assert sum(m["documents"] for m in raw.values()) == whole["documents"]
    assert sum(m["bytes"] for m in raw.values()) == whole["bytes"]
    # each unit in exactly one partition, the one its key hashes to, and each partition reads in source order
    units = [(p, u["spec"], u["key"], u["version"]) for p, m in raw.items() for u in m["units"]]
    assert sorted(u[1:] for u in units) == sorted((u["spec"], u["key"], u["version"]) for u in whole["units"])
    assert len({u[2] for u in units}) == len(units) == 36
    assert all(partition_of(key) == p for p, _, key, _ in units)
    for p, rows in parts.items():
        source = {u["key"] for u in raw[p]["units"]}
        assert rows == [r for r in everything if r[1] in source]  # a row's source names its unit
        assert raw[p]["partition"] == p
    assert sum(1 for m in raw.values() if m["documents"]) > 8  # the corpus really is spread out
    check_sources(list(corpus["config"].sources), list(raw.values()))  # every source gave documents somewhere


def test_partition_units_lists_what_each_partition_is_built_from(corpus):
    for p, manifest in corpus["raw"].items():
        assert partition_units(corpus["config"], p) == manifest["units"]
    builtin = {p: partition_units(CorpusConfig(), p) for p in PARTITIONS}  # a non-file source is one unit
    (unit,) = [u for units in builtin.values() for u in units]
    assert unit["spec"] == "builtin:python-docs" and builtin[partition_of(unit["key"])] == [unit]


def test_adding_a_file_changes_only_its_partition(tmp_path):
    config = _write_corpus(tmp_path / "src")
    before = _build_partitions(config, tmp_path / "before", tmp_path / "cache")
    (tmp_path / "src" / "books" / "new.txt").write_text(_text(777), encoding="utf-8")
    after = _build_partitions(config, tmp_path / "after", tmp_path / "cache")
    changed = {p for p in PARTITIONS if before[p] != after[p]}
    assert changed == {partition_of("books/new.txt")}
    (p,) = changed
    assert after[p]["documents"] == before[p]["documents"] + 1
    for q in set(PARTITIONS) - changed:
        for s in before[q]["shards"]:
            assert sha256_file(tmp_path / "after" / q / s["path"]) == sha256_file(tmp_path / "before" / q / s["path"])


def test_a_source_without_documents_is_found_over_all_partitions(tmp_path):
    config = _write_corpus(tmp_path / "src")
    blank = tmp_path / "src" / "blank.txt"
    blank.write_text(" \n", encoding="utf-8")
    config = CorpusConfig(sources=(*config.sources, str(blank)))
    manifests = _build_partitions(config, tmp_path / "raw", tmp_path / "cache")  # per partition: no error
    with pytest.raises(
        ValueError, match=re.escape(f"source '{blank}' produced no documents (skipped: {{'empty_text': 1}})")
    ):
        check_sources(list(config.sources), list(manifests.values()))


# ---------------------------------------------------------------- duplicates across partitions


def test_duplicates_in_different_partitions_are_dropped_once_keeping_the_smallest_doc_id(corpus):
    rows, index = corpus["rows"], split_index(corpus["root"]).to_pylist()
    partition = {r["doc_id"]: r["partition"] for r in index}
    reason = {r["doc_id"]: r["reason"] for r in index}
    split = {r["doc_id"]: r["split"] for r in index}
    copies = sorted(r["doc_id"] for r in rows if r["text"] == DUP)
    assert len(copies) == 4 and len({partition[d] for d in copies}) == 4  # all in different partitions
    assert len({r["spec"] for r in rows if r["text"] == DUP}) == 2  # and in both sources
    assert reason[copies[0]] is None and split[copies[0]] in SPLITS
    assert all(reason[d] == "exact_duplicate" and split[d] is None for d in copies[1:])
    near = sorted(r["doc_id"] for r in rows if r["text"] in (NEAR_BASE, NEAR_COPY))
    assert len(near) == 2 and partition[near[0]] != partition[near[1]]
    assert reason[near[0]] is None and reason[near[1]] == "near_duplicate" and split[near[1]] is None
    assert corpus["splits"]["dropped"] == {"exact_duplicate": 3, "near_duplicate": 1}
    kept = sum(s["documents"] for s in corpus["splits"]["splits"].values())
    assert corpus["splits"]["documents"] == len(rows) - 4 == kept
    assert {d for d, r in reason.items() if r} == set(copies[1:]) | {near[1]}


def test_the_index_does_not_depend_on_partitioning_or_partition_order(corpus):
    rows, tmp, base = corpus["rows"], corpus["tmp"], _judged(corpus["root"])
    by_hash = {}
    for r in rows:  # another grouping: 3 buckets by a different hash, and each bucket in reverse order
        by_hash.setdefault(f"g{hashlib.md5(r['doc_id'].encode()).digest()[0] % 3}", []).insert(0, r)
    for name, groups in (("three", by_hash), ("one", {"all": rows[::-1]})):
        dirs = _clean_groups(groups, tmp / name)
        manifest = split_corpus(SPLIT, dirs, tmp / name / "splits")
        assert _judged(tmp / name / "splits") == base, name
        for key in ("splits", "dropped", "documents", "dedup", "config"):
            assert manifest[key] == corpus["splits"][key]
    # the same partitions given in another order: the very same index and manifest
    shuffled = dict(sorted(corpus["clean"].items(), reverse=True))
    manifest = split_corpus(SPLIT, shuffled, tmp / "reordered")
    assert pq.read_table(tmp / "reordered" / "index.parquet").equals(pq.read_table(corpus["root"] / "index.parquet"))
    assert manifest == corpus["splits"]


def test_an_unchanged_partition_keeps_its_index_digest_when_another_grows(corpus, tmp_path):
    clean = dict(corpus["clean"])
    grown = max(clean, key=lambda p: corpus["raw"][p]["documents"])
    rows = [r for r in corpus["rows"] if partition_of(r["source"]) == grown]
    extra = {"doc_id": "f" * 16, "source": "books/extra.txt", "spec": rows[0]["spec"], "text": _text(4242)}
    clean[grown] = _clean_groups({grown: [*rows, extra]}, tmp_path)[grown]
    manifest = split_corpus(SPLIT, clean, tmp_path / "splits")
    before = corpus["splits"]["partitions"]
    assert {p for p in PARTITIONS if manifest["partitions"][p]["index_sha256"] != before[p]["index_sha256"]} == {grown}


# ---------------------------------------------------------------- the tokenizer's sample


def test_tokenizer_sample_is_deterministic_bounded_and_independent_of_the_layout(corpus, tmp_path):
    root = corpus["root"]
    train = [r for r in split_index(root).to_pylist() if r["split"] == "train"]
    order = sorted(train, key=lambda r: hashlib.sha256(r["doc_id"].encode()).digest())
    assert len(train) > 10
    one = tokenizer_sample(root, 1)  # smaller than any document: still one, the first in hash order
    assert one == {order[0]["doc_id"]}
    assert tokenizer_sample(root, 10**9) == {r["doc_id"] for r in train}  # never val, test or a duplicate
    budget = sum(r["bytes"] for r in order[:5]) + 1
    chosen = tokenizer_sample(root, budget)
    assert chosen == {r["doc_id"] for r in order[:5]} == tokenizer_sample(root, budget)
    assert sum(r["bytes"] for r in train if r["doc_id"] in chosen) <= budget
    # another partitioning of the same documents samples the same ones and trains the same tokenizer
    groups = {"x": corpus["rows"][::2], "y": corpus["rows"][1::2]}
    other = split_corpus(SPLIT, _clean_groups(groups, tmp_path), tmp_path / "splits")
    assert tokenizer_sample(tmp_path / "splits", budget) == chosen
    cfg = TokenizerConfig(vocab_size=300, min_frequency=2)
    for name, where, manifest in (("a", root, corpus["splits"]), ("b", tmp_path / "splits", other)):
        texts = [r["text"] for r in split_rows(where, manifest, "train", columns=["text"], ids=chosen)]
        assert len(texts) == 5
        train_tokenizer(cfg, texts, tmp_path / f"{name}.json")
    assert sha256_file(tmp_path / "a.json") == sha256_file(tmp_path / "b.json")


# ---------------------------------------------------------------- tokenized partitions, assembled


def _docs_of(tok, tokens: np.ndarray) -> list[tuple[int, ...]]:
    """Each document's ids in a token stream (without the <|endoftext|> after it)."""
    ends = np.flatnonzero(tokens == tok.eot_id)
    return [tuple(d[:-1].tolist()) for d in np.split(tokens, ends + 1)[:-1]]


def test_assembled_partitions_equal_tokenizing_the_kept_documents_at_once(corpus, tok, tmp_path):
    root, manifest = corpus["root"], corpus["splits"]
    parts = {}
    for p in PARTITIONS:
        index = split_index(root, p).to_pylist()
        splits_of = {r["doc_id"]: r["split"] for r in index if r["split"] is not None}
        doc_paths = [root / DOCS_DIR / s["path"] for s in manifest["partitions"][p]["shards"]]
        settings = EncodeConfig(shard_tokens=64, batch_size=2)
        part = tokenize_partition(tok, doc_paths, splits_of, tmp_path / "tok" / p, settings=settings)
        assert sum(part["splits"][s]["documents"] for s in SPLITS) == len(splits_of)  # duplicates passed over
        parts[p] = tmp_path / "tok" / p
    out = tmp_path / "assembled"
    assembled = assemble_shards(dict(reversed(parts.items())), out)
    assert verify_shards(out) == []
    partition = {r["doc_id"]: r["partition"] for r in split_index(root).to_pylist()}
    for split in SPLITS:
        kept = list(split_rows(root, manifest, split))
        assert len(kept) == manifest["splits"][split]["documents"] == assembled["splits"][split]["documents"] > 0
        # partition by partition, each partition's sources in spec order, documents in cleaning order
        ordered = sorted(kept, key=lambda r: (partition[r["doc_id"]], r["spec"]))
        by_hash = sorted(kept, key=lambda r: hashlib.sha256(r["doc_id"].encode()).digest())
        want = {}
        for name, docs in (("ordered", ordered), ("by_hash", by_hash)):
            path = tmp_path / f"{split}-{name}.parquet"
            pq.write_table(pa.Table.from_pylist([{c: r[c] for c in DOCUMENT_SCHEMA.names} for r in docs]), path)
            tokenize_splits(tok, {split: [path]}, tmp_path / name)
            want[name] = np.concatenate(open_split(tmp_path / name, split).arrays)
        got = np.concatenate(open_split(out, split).arrays)
        assert np.array_equal(got, want["ordered"])
        assert Counter(_docs_of(tok, got)) == Counter(_docs_of(tok, want["by_hash"]))  # same documents, any order
        assert assembled["splits"][split]["bytes"] == manifest["splits"][split]["bytes"]
        # shards grouped per spec: each shard's tokens come from documents of its spec only
        specs = split_groups(out, split)
        assert set(specs) <= set(corpus["config"].specs)
        for spec in set(specs):
            mine = [a for a, s in zip(open_split(out, split).arrays, specs, strict=True) if s == spec]
            texts = [r["text"] for r in ordered if r["spec"] == spec]
            assert _docs_of(tok, np.concatenate(mine)) == [tuple(tok.encode(t).ids) for t in texts]
            assert assembled["sources"][spec][split] == sum(len(tok.encode(t).ids) + 1 for t in texts)
    texts = [tok.decode(list(d)) for s in SPLITS for d in _docs_of(tok, np.concatenate(open_split(out, s).arrays))]
    assert texts.count(DUP) == 1 and texts.count(NEAR_BASE) + texts.count(NEAR_COPY) == 1  # duplicates skipped
    assert len(texts) == manifest["documents"]
    assert sum(n for per in assembled["sources"].values() for n in per.values()) == sum(
        assembled["splits"][s]["tokens"] for s in SPLITS
    )


# ---------------------------------------------------------------- worker processes


def _square(x: int, delay: float) -> tuple[int, int, str | None]:
    """A job for run_parallel: fails on negative input; later jobs are made to finish first."""
    time.sleep(delay)
    if x < 0:
        raise ValueError(f"job input {x} is negative")
    return x * x, os.getpid(), os.environ.get("OMP_NUM_THREADS")


def test_run_parallel_keeps_job_order_and_reports_a_failure_with_the_other_results():
    jobs = [(1, 0.6), (2, 0.4), (-3, 0.0), (4, 0.2), (5, 0.0)]
    done = []
    out = run_parallel(_square, jobs, 2, on_done=done.append)
    assert [r[0] if r is not None else None for r, _ in out] == [1, 4, None, 16, 25]
    error = out[2][1]
    assert isinstance(error, ValueError) and "job input -3 is negative" in str(error)
    assert all(e is None for i, (_, e) in enumerate(out) if i != 2)
    pids = {r[1] for r, _ in out if r is not None}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # in worker processes, at most two of them
    assert {r[2] for r, _ in out if r is not None} == {"1"}  # one math thread per worker
    assert sorted(done) == list(range(5))


def test_run_parallel_runs_inline_with_one_worker():
    done = []
    out = run_parallel(_square, [(3, 0.0), (-1, 0.0), (2, 0.0)], 1, on_done=done.append)
    assert [r[:2] if r else None for r, _ in out] == [(9, os.getpid()), None, (4, os.getpid())]
    assert isinstance(out[1][1], ValueError) and done == [0, 1, 2]
    assert run_parallel(_square, [], 4) == []
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        run_parallel(_square, [(1, 0.0)], 0)
    assert default_workers() >= 1


def test_copying_the_corpus_elsewhere_keeps_every_partition(tmp_path, corpus):
    """Units are named under their source's label, so the same files in another place fall in the same buckets."""
    moved = Path(shutil.copytree(corpus["tmp"] / "src", tmp_path / "elsewhere" / "src"))
    config = CorpusConfig(sources=(str(moved / "books"), str(moved / "notes.jsonl")))
    for p in PARTITIONS:
        assert [(u["key"], u["version"]) for u in partition_units(config, p)] == [
            (u["key"], u["version"]) for u in corpus["raw"][p]["units"]
        ]
