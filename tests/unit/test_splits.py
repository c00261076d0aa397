"""Split assignment, and split_corpus over cleaned partitions: the index, linked documents, reading splits back."""

import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmcore.data.clean import CleanConfig, clean_corpus
from lmcore.data.splits import (
    DOCS_DIR,
    INDEX,
    SplitConfig,
    assign_split,
    split_corpus,
    split_index,
    split_rows,
)
from lmcore.io import DOCUMENT_SCHEMA, ParquetShardWriter, digest_of, read_json


def test_assignment_is_stable_and_near_configured_fractions():
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=3)
    ids = [f"doc-{i}" for i in range(20_000)]
    first = [assign_split(d, cfg) for d in ids]
    assert first == [assign_split(d, cfg) for d in ids]
    counts = Counter(first)
    assert abs(counts["test"] / len(ids) - 0.2) < 0.015
    assert abs(counts["val"] / len(ids) - 0.1) < 0.015


def test_documents_keep_their_split_when_the_corpus_grows_or_val_grows():
    cfg = SplitConfig(val_fraction=0.05, test_fraction=0.05)
    old = {d: assign_split(d, cfg) for d in (f"a{i}" for i in range(5000))}
    bigger_val = SplitConfig(val_fraction=0.2, test_fraction=0.05)
    assert all(assign_split(d, cfg) == s for d, s in old.items())  # independent of other documents
    assert all(assign_split(d, bigger_val) == "test" for d, s in old.items() if s == "test")


def test_seed_changes_assignment():
    ids = [f"d{i}" for i in range(2000)]
    a = [assign_split(d, SplitConfig(seed=0)) for d in ids]
    b = [assign_split(d, SplitConfig(seed=1)) for d in ids]
    assert a != b


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction + test_fraction"),
    ],
)
def test_bad_fractions_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("+", r"\+")):
        SplitConfig(**kwargs)


def _raw(path: Path, docs: dict[str, str], spec: str = "s") -> list[Path]:
    with ParquetShardWriter(path, DOCUMENT_SCHEMA, max_bytes=1000, batch_rows=16) as w:
        for doc_id, text in docs.items():
            w.write({"doc_id": doc_id, "source": "s", "spec": spec, "text": text})
    return [path / s["path"] for s in w.shards]


def _clean(tmp_path: Path, name: str, docs: dict[str, str], config: CleanConfig | None = None, **kw) -> Path:
    """A cleaned partition directory (clean_corpus's output) of ``docs``."""
    config = config or CleanConfig(min_doc_chars=0, max_doc_chars=0)
    clean_corpus(config, _raw(tmp_path / f"raw-{name}", docs, **kw), tmp_path / name)
    return tmp_path / name


def test_split_corpus_writes_disjoint_complete_splits(tmp_path):
    ids = [f"id{i}" for i in range(500)]
    parts = {f"{k:02d}": _clean(tmp_path, f"clean-{k}", {d: f"text {d}" for d in ids[k::3]}) for k in range(3)}
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.1)
    manifest = split_corpus(cfg, parts, tmp_path / "out")
    root = tmp_path / "out"
    assert manifest == read_json(root / "manifest.json") and manifest["documents"] == 500 and manifest["dropped"] == {}
    seen = {}
    for split in ("train", "val", "test"):
        got = list(split_rows(root, manifest, split))
        assert len(got) == manifest["splits"][split]["documents"] > 0
        assert manifest["splits"][split]["bytes"] == sum(len(r["text"].encode()) for r in got)
        assert all(assign_split(r["source_doc_id"], cfg) == split for r in got)
        seen[split] = {r["doc_id"] for r in got}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert set().union(*seen.values()) == set(ids)
    index = split_index(root)
    assert index.column_names == ["partition", "doc_id", "spec", "bytes", "split", "reason"]
    assert index.num_rows == 500 and set(index.column("reason").to_pylist()) == {None}
    assert split_index(root, "01").column("doc_id").to_pylist() == ids[1::3]  # cleaning order within a partition
    for p, clean in parts.items():
        shards = read_json(clean / "manifest.json")["shards"]
        assert [s["path"] for s in manifest["partitions"][p]["shards"]] == [f"{p}/{s['path']}" for s in shards]
        for s in shards:  # linked, not copied
            assert os.stat(root / DOCS_DIR / p / s["path"]).st_ino == os.stat(clean / s["path"]).st_ino
        rows = split_index(root, p).to_pylist()
        assert manifest["partitions"][p]["index_sha256"] == digest_of(sorted([r["doc_id"], r["split"]] for r in rows))


def test_split_rows_selects_columns_and_ids(tmp_path):
    docs = {f"d{i}": f"document number {i}" for i in range(40)}
    root = tmp_path / "out"
    manifest = split_corpus(SplitConfig(), {"00": _clean(tmp_path, "clean", docs)}, root)
    train = [r["doc_id"] for r in split_rows(root, manifest, "train")]
    wanted = set(train[::3])
    rows = list(split_rows(root, manifest, "train", columns=["text"], ids=wanted))
    assert rows == [{"text": docs[d]} for d in train if d in wanted]
    assert [r["doc_id"] for r in split_rows(root, manifest, "train", columns=["doc_id", "spec"])] == train
    with pytest.raises(ValueError, match="no split 'dev'.*train, val, test"):
        next(split_rows(root, manifest, "dev"))


def _split_of_chunks(tmp_path, name: str, docs: dict[str, str], cfg: SplitConfig) -> dict[str, dict[str, str]]:
    """{source_doc_id: {chunk doc_id: split}} after clean_corpus (which chunks long documents) and split_corpus."""
    clean = _clean(tmp_path, f"clean-{name}", docs, CleanConfig(max_doc_chars=400, min_doc_chars=10))
    manifest = split_corpus(cfg, {"00": clean}, tmp_path / name)
    out: dict[str, dict[str, str]] = {}
    for split in ("train", "val", "test"):
        for row in split_rows(tmp_path / name, manifest, split):
            out.setdefault(row["source_doc_id"], {})[row["doc_id"]] = split
    return out


def _book(i: int) -> str:
    return "\n\n".join(f"Book {i}, paragraph {p}: a sentence of prose that is long enough to count." for p in range(30))


def test_all_chunks_of_a_document_share_its_split_and_keep_it_when_the_corpus_grows(tmp_path):
    cfg = SplitConfig(val_fraction=0.3, test_fraction=0.3)
    docs = {f"book{i}": _book(i) for i in range(12)}
    before = _split_of_chunks(tmp_path, "before", docs, cfg)
    assert set(before) == set(docs) and all(len(chunks) >= 4 for chunks in before.values())  # really chunked
    for source, chunks in before.items():
        assert set(chunks.values()) == {assign_split(source, cfg)}, f"{source} is in several splits: {chunks}"
    assert {s for chunks in before.values() for s in chunks.values()} == {"train", "val", "test"}
    after = _split_of_chunks(tmp_path, "after", {**docs, "book-new": _book(99)}, cfg)
    assert {source: after[source] for source in docs} == before  # same chunks, same splits
    assert "book-new" in after


def test_split_corpus_refuses_partitions_of_an_older_clean_corpus_naming_each(tmp_path):
    no_source_id = _clean(tmp_path, "old", {"a": "text"})
    shard = no_source_id / read_json(no_source_id / "manifest.json")["shards"][0]["path"]
    pq.write_table(pq.read_table(shard).drop_columns(["source_doc_id"]), shard)  # as an older clean_corpus wrote it
    unsigned = _clean(tmp_path, "unsigned", {"b": "more text"})
    (unsigned / "signatures.parquet").unlink()  # cleaned before duplicates were judged across partitions
    no_spec = _clean(tmp_path, "no-spec", {"c": "other text"})
    spec_shard = no_spec / read_json(no_spec / "manifest.json")["shards"][0]["path"]
    pq.write_table(pq.read_table(spec_shard).drop_columns(["spec"]), spec_shard)
    good = _clean(tmp_path, "good", {"d": "fine text"})
    parts = {"00": no_source_id, "01": unsigned, "02": no_spec, "03": good}
    with pytest.raises(ValueError, match="source_doc_id.*re-materialize clean_corpus") as err:
        split_corpus(SplitConfig(), parts, tmp_path / "out")
    msg = str(err.value)
    assert f"{shard}: no 'source_doc_id' column" in msg and f"{spec_shard}: no 'spec' column" in msg
    assert f"partition 01: {unsigned} has no signatures.parquet" in msg and str(good) not in msg
    assert not (tmp_path / "out" / INDEX).exists()


def test_split_corpus_refuses_partitions_cleaned_with_different_dedup_settings(tmp_path):
    exact, near = CleanConfig(min_doc_chars=0), CleanConfig(min_doc_chars=0, dedup_near=True)
    parts = {
        "00": _clean(tmp_path, "c0", {"a": "one text"}, exact),
        "03": _clean(tmp_path, "c3", {"b": "two text"}, near),
        "07": _clean(tmp_path, "c7", {"c": "three text"}, exact),
    }
    with pytest.raises(ValueError, match="different settings") as err:
        split_corpus(SplitConfig(), parts, tmp_path / "out")
    msg = str(err.value)
    assert "partitions 00, 07: " in msg and "partitions 03: " in msg and "re-materialize every partition" in msg
    assert not (tmp_path / "out").exists()
    # settings that do not decide duplicates may differ
    other = CleanConfig(min_doc_chars=0, max_repetition=0.5)
    parts["03"] = _clean(tmp_path, "c3-ok", {"b": "two text"}, other)
    assert split_corpus(SplitConfig(), parts, tmp_path / "out")["documents"] == 3


def test_split_corpus_of_no_documents(tmp_path):
    manifest = split_corpus(SplitConfig(), {"00": _clean(tmp_path, "empty", {})}, tmp_path / "out")
    assert manifest["documents"] == 0 and manifest["splits"]["train"] == {"documents": 0, "bytes": 0}
    assert split_index(tmp_path / "out").num_rows == 0
