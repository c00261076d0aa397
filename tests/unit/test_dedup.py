"""Tests of exact and MinHash-LSH near-duplicate removal: the filters, judging precomputed signatures in doc_id
order (resolve_duplicates), and clean_corpus + split_corpus removing them end to end."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcore.data.clean import SIGNATURES, CleanConfig, clean_corpus
from lmcore.data.dedup import ExactDeduper, NearDeduper, content_digest, resolve_duplicates, shingles
from lmcore.data.splits import SplitConfig, split_corpus, split_index
from lmcore.io import DOCUMENT_SCHEMA, read_parquet_rows

VOCAB = "the a river dog sled snow cold trail man gold north camp fire night wind ran fast slow old".split()


def words(seed: int, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) + str(rng.randrange(50)) for _ in range(n)]


BASE = words(0)
NEAR = " ".join(BASE[:150] + ["changed"] + BASE[151:])  # one word of 300 differs
FAR = " ".join(words(1))


def test_exact_dedup_keeps_first_copy_only():
    dedup = ExactDeduper()
    assert dedup("same text") == (True, None)
    assert dedup("same text") == (False, "exact_duplicate")
    assert dedup("same text ") == (True, None)  # exact means exact
    assert len(dedup) == 2


def test_near_dedup_drops_the_near_copy_only():
    dedup = NearDeduper(threshold=0.8, num_perm=128, seed=0)
    assert dedup(" ".join(BASE)) == (True, None)
    assert dedup(NEAR) == (False, "near_duplicate")
    assert dedup(FAR) == (True, None)
    assert len(dedup) == 2


def test_near_dedup_keeps_documents_below_threshold():
    rng = random.Random(2)
    edited = [w if rng.random() > 0.3 else "edit" for w in BASE]  # ~30% of words replaced
    dedup = NearDeduper(threshold=0.8)
    dedup(" ".join(BASE))
    assert dedup(" ".join(edited)) == (True, None)


def test_near_dedup_is_seeded():
    a, b, c = NearDeduper(seed=7), NearDeduper(seed=7), NearDeduper(seed=8)
    sig = a.signature(NEAR).hashvalues
    assert np.array_equal(sig, b.signature(NEAR).hashvalues)
    assert not np.array_equal(sig, c.signature(NEAR).hashvalues)


def test_shingles():
    assert shingles("One, two! three", 5) == [b"one two three"]
    assert shingles("A b C d", 3) == [b"a b c", b"b c d"]


def test_near_dedup_rejects_bad_arguments():
    with pytest.raises(ValueError) as err:
        NearDeduper(threshold=1.0, num_perm=1)
    assert "threshold" in str(err.value) and "num_perm" in str(err.value)


def test_exact_check_on_digests_matches_the_text_filter():
    assert content_digest("same text") == content_digest("same text") != content_digest("same text ")
    assert len(content_digest("déjà vu")) == 16
    dedup = ExactDeduper()
    assert dedup.check(content_digest("same text")) == (True, None)
    assert dedup("same text") == (False, "exact_duplicate")  # the text filter and the digest check share state
    assert dedup.check(content_digest("same text")) == (False, "exact_duplicate")


def test_near_check_on_stored_signatures_matches_the_text_filter():
    """Signatures stored as uint32 (as clean_corpus writes them) are judged like the texts themselves."""
    signer = NearDeduper(seed=3)
    stored = [signer.signature(t).hashvalues.astype("uint32") for t in (" ".join(BASE), NEAR, FAR)]
    by_text, by_signature = NearDeduper(seed=3), NearDeduper(seed=3)
    want = [by_text(t) for t in (" ".join(BASE), NEAR, FAR)]
    assert [by_signature.check(s) for s in stored] == want == [(True, None), (False, "near_duplicate"), (True, None)]


def _inputs(seed: int, docs: dict[str, str], near: bool) -> tuple[list[str], list[bytes], list[np.ndarray] | None]:
    ids = list(docs)
    random.Random(seed).shuffle(ids)
    signer = NearDeduper()
    signatures = [signer.signature(docs[d]).hashvalues for d in ids] if near else None
    return ids, [content_digest(docs[d]) for d in ids], signatures


def test_resolve_duplicates_keeps_the_smallest_doc_id_in_any_order():
    docs = {
        "m-copy": "same",
        "c-first": "same",
        "x-copy": "same",
        "b-near": NEAR,
        "z-base": " ".join(BASE),
        "f-far": FAR,
        "a-alone": "alone",
    }
    want = {"m-copy": "exact_duplicate", "x-copy": "exact_duplicate", "z-base": "near_duplicate"}
    for seed in range(5):
        ids, digests, signatures = _inputs(seed, docs, near=True)
        assert resolve_duplicates(ids, digests, signatures, exact=True, near=NearDeduper()) == want
    ids, digests, _ = _inputs(0, docs, near=False)
    assert resolve_duplicates(ids, digests, None, exact=True, near=None) == {
        "m-copy": "exact_duplicate",
        "x-copy": "exact_duplicate",
    }
    assert resolve_duplicates(ids, digests, None, exact=False, near=None) == {}
    ids, digests, signatures = _inputs(1, docs, near=True)
    # without exact dedup identical texts are near duplicates of each other (similarity 1)
    assert resolve_duplicates(ids, digests, signatures, exact=False, near=NearDeduper()) == {
        "m-copy": "near_duplicate",
        "x-copy": "near_duplicate",
        "z-base": "near_duplicate",
    }


def test_clean_writes_near_signatures_and_split_corpus_drops_the_near_copy(tmp_path: Path):
    rows = [
        {"doc_id": "a-orig", "source": "t", "spec": "t", "text": " ".join(BASE)},
        {"doc_id": "b-near", "source": "t", "spec": "t", "text": NEAR},
        {"doc_id": "c-far", "source": "t", "spec": "t", "text": FAR},
    ]
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), raw)
    manifest = clean_corpus(CleanConfig(dedup_near=True), [raw], tmp_path / "clean")
    assert manifest["documents"] == 3 and manifest["dropped"] == {}  # cleaning keeps both; the splits decide
    kept = list(read_parquet_rows([tmp_path / "clean" / s["path"] for s in manifest["shards"]]))
    assert [r["doc_id"] for r in kept] == ["a-orig", "b-near", "c-far"]
    assert pq.read_table(tmp_path / "clean" / SIGNATURES).column("minhash").type.list_size == 128

    splits = split_corpus(SplitConfig(), {"00": tmp_path / "clean"}, tmp_path / "splits")
    assert splits["documents"] == 2 and splits["dropped"] == {"near_duplicate": 1}
    index = split_index(tmp_path / "splits").to_pylist()
    assert [(r["doc_id"], r["reason"]) for r in index if r["reason"]] == [("b-near", "near_duplicate")]
    assert next(r for r in index if r["doc_id"] == "b-near")["split"] is None
