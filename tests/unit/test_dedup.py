"""Tests of exact and MinHash-LSH near-duplicate removal, alone and inside clean_corpus."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcore.data.clean import CleanConfig, clean_corpus
from lmcore.data.dedup import ExactDeduper, NearDeduper, shingles
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


def test_clean_corpus_near_dedup_writes_reason(tmp_path: Path):
    rows = [
        {"doc_id": "orig", "source": "t", "text": " ".join(BASE)},
        {"doc_id": "near", "source": "t", "text": NEAR},
        {"doc_id": "far", "source": "t", "text": FAR},
    ]
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), raw)
    manifest = clean_corpus(CleanConfig(dedup_near=True), [raw], tmp_path / "out")
    assert manifest["documents"] == 2 and manifest["dropped"] == {"near_duplicate": 1}
    dropped = list(read_parquet_rows([tmp_path / "out" / s["path"] for s in manifest["dropped_shards"]]))
    assert [(r["doc_id"], r["reason"]) for r in dropped] == [("near", "near_duplicate")]
