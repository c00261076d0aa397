from collections import Counter

import pytest

from lmcore.data.clean import CLEAN_SCHEMA, CleanConfig, clean_corpus
from lmcore.data.splits import SplitConfig, assign_split, split_corpus, split_paths
from lmcore.io import DOCUMENT_SCHEMA, ParquetShardWriter, read_parquet_rows


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


def test_split_corpus_writes_disjoint_complete_splits(tmp_path):
    rows = [{"doc_id": f"id{i}", "source": "s", "text": f"text {i}", "source_doc_id": f"id{i}"} for i in range(500)]
    with ParquetShardWriter(tmp_path / "in", CLEAN_SCHEMA, max_bytes=1000) as w:
        for r in rows:
            w.write(r)
    manifest = split_corpus(
        SplitConfig(val_fraction=0.1, test_fraction=0.1),
        [tmp_path / "in" / s["path"] for s in w.shards],
        tmp_path / "out",
    )
    seen = {}
    for split in ("train", "val", "test"):
        got = list(read_parquet_rows(split_paths(tmp_path / "out", split, manifest)))
        assert len(got) == manifest["splits"][split]["documents"] > 0
        seen[split] = {r["doc_id"] for r in got}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert set().union(*seen.values()) == {r["doc_id"] for r in rows}
    assert (tmp_path / "out" / "manifest.json").exists()


def _raw(path, docs: dict[str, str]) -> list:
    with ParquetShardWriter(path, DOCUMENT_SCHEMA) as w:
        for doc_id, text in docs.items():
            w.write({"doc_id": doc_id, "source": "s", "text": text})
    return [path / s["path"] for s in w.shards]


def _split_of_chunks(tmp_path, name: str, docs: dict[str, str], cfg: SplitConfig) -> dict[str, dict[str, str]]:
    """{source_doc_id: {chunk doc_id: split}} after clean_corpus (which chunks long documents) and split_corpus."""
    clean = clean_corpus(CleanConfig(max_doc_chars=400, min_doc_chars=10), _raw(tmp_path / f"raw-{name}", docs),
                         tmp_path / f"clean-{name}")  # fmt: skip
    manifest = split_corpus(cfg, [tmp_path / f"clean-{name}" / s["path"] for s in clean["shards"]], tmp_path / name)
    out: dict[str, dict[str, str]] = {}
    for split in ("train", "val", "test"):
        for row in read_parquet_rows(split_paths(tmp_path / name, split, manifest)):
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


def test_split_corpus_refuses_shards_without_source_doc_id(tmp_path):
    with pytest.raises(ValueError, match="source_doc_id.*re-materialize clean_corpus"):
        split_corpus(SplitConfig(), _raw(tmp_path / "old", {"a": "text"}), tmp_path / "out")
