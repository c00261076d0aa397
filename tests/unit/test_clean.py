"""Tests of the cleaning stage: normalization, Gutenberg stripping, placeholders, reflow,
splitting, filters, and clean_corpus end to end (manifest, dropped shards, signatures, determinism)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcore.data.clean import (
    CLEAN_SCHEMA,
    PARAGRAPH_SEP,
    SIGNATURES,
    CleanConfig,
    clean_corpus,
    clean_documents,
    drop_placeholders,
    normalize,
    signature_schema,
    split_document,
    strip_gutenberg,
)
from lmcore.data.dedup import NearDeduper, content_digest, resolve_duplicates
from lmcore.data.filters import filter_repetition, length_reason, repetition_fraction
from lmcore.data.reflow import reflow
from lmcore.io import DOCUMENT_SCHEMA, read_json, read_parquet_rows, sha256_file

FIXTURES = Path(__file__).parent.parent / "fixtures" / "clean"
BOOK = (FIXTURES / "gutenberg_sample.txt").read_text(encoding="utf-8")
PYDOCS = (FIXTURES / "python_docs.txt").read_text(encoding="utf-8")
PROSE_PARAGRAPH = "Buck did not read the newspapers, or he would have known that trouble was brewing"


def clean_one(text: str, **kw) -> list[str]:
    return next(clean_documents(iter([text]), CleanConfig(**kw)))


def write_docs(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), path)
    return path


def doc(doc_id: str, text: str, spec: str = "test-spec") -> dict:
    return {"doc_id": doc_id, "source": "test", "spec": spec, "text": text}


def read_rows(out: Path, key: str) -> list[dict]:
    manifest = read_json(out / "manifest.json")
    return list(read_parquet_rows([out / s["path"] for s in manifest[key]]))


# ---------------------------------------------------------------- config


def test_config_errors_name_every_bad_field():
    with pytest.raises(ValueError) as err:
        CleanConfig(max_doc_chars=-1, near_threshold=1.5, shard_bytes=0)
    msg = str(err.value)
    assert "max_doc_chars" in msg and "near_threshold" in msg and "shard_bytes" in msg
    with pytest.raises(ValueError, match="min_doc_chars"):
        CleanConfig(max_doc_chars=300, min_doc_chars=200)


# ---------------------------------------------------------------- normalization


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("a\r\nb\rc\n", "a\nb\nc\n"),  # CRLF and lone CR to LF
        ("\ufeffhello\ufeff", "hello"),  # BOM at the start and stray ones
        ("nu\x00ll\x07 bell\x1b esc\x85nel", "null bell escnel"),  # NUL, C0 and C1 controls
        ("keep\ttab\nand newline", "keep\ttab\nand newline"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFC composes e + combining acute
        ("trailing  \t\nblanks \n", "trailing\nblanks\n"),
    ],
)
def test_normalization(raw, want):
    assert normalize(raw) == want


# ---------------------------------------------------------------- Gutenberg and placeholders


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("*** START OF THE PROJECT GUTENBERG EBOOK 55 ***", "*** END OF THE PROJECT GUTENBERG EBOOK 55 ***"),
        ("***START OF THIS PROJECT GUTENBERG EBOOK OZ***", "*** end of this project gutenberg ebook oz ***"),
    ],
)
def test_strip_gutenberg_markers(start, end):
    text = f"Produced by someone\n{start}\nThe book.\n{end}\nLicense text.\n"
    assert strip_gutenberg(text).strip() == "The book."


def test_strip_gutenberg_without_markers_is_unchanged():
    text = "Chapter 1\n\nNo markers *** here ***, and the Project Gutenberg name mid-line.\n"
    assert strip_gutenberg(text) == text
    assert strip_gutenberg("*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody") == "\nbody"


def test_drop_placeholders():
    text = (
        "cover\n\nTitle\n\n[Illustration]\n\n    [Illustration: “He came down”\n\n"
        "    [_Copyright 1894 by George Allen._]]\n\n0009m\n50025m\n\n"
        "A [bracketed] remark and 2000m of road.\n"
    )
    out = drop_placeholders(text)
    assert [line for line in out.split("\n") if line] == ["Title", "A [bracketed] remark and 2000m of road."]
    assert drop_placeholders("Title\n\ncover\n") == "Title\n\ncover\n"  # only a leading cover line goes


def test_gutenberg_book_cleans_end_to_end():
    raw = "\ufeff" + BOOK.replace("\n", "\r\n")
    (out,) = clean_one(raw, max_doc_chars=0)
    assert out.startswith("The Call of the Wild\n\nby Jack London\n\nChapter I. Into the Primitive\n\n")
    for gone in ("\r", "\ufeff", "cover", "0009m", "Illustration", "Copyright 1894", "GUTENBERG", "trailing line"):
        assert gone not in out
    assert "\n\n\n" not in out
    lines = out.split("\n")
    assert "Chapter II. The Law of Club and Fang" in lines
    assert "Chafing at custom’s chain;" in lines  # verse keeps its lines
    para = next(line for line in lines if line.startswith(PROSE_PARAGRAPH))
    assert para.endswith("furry coats to protect them from the frost.")  # nine wrapped lines, now one


# ---------------------------------------------------------------- reflow


def test_reflow_joins_prose_but_keeps_structure():
    text = (
        "CHAPTER I\n"
        "It was a bright cold day in April, and the clocks were striking thirteen\n"
        "and the wind was blowing hard down the long street past the houses —\n"
        "nobody noticed, and the paragraph went on like this until its very end\n"
        "CHAPTER II\n"
        "\n"
        "Things to buy at the market on the way home from the office this evening:\n"
        "- apples\n"
        "- bread\n"
        "\n"
        "The wrapper breaks lines like this one when the next word will not fit—\n"
        "closed dashes join without a space.\n"
    )
    assert reflow(text).split("\n") == [
        "CHAPTER I",
        "It was a bright cold day in April, and the clocks were striking thirteen and the wind was blowing hard "
        "down the long street past the houses — nobody noticed, and the paragraph went on like this until its very end",
        "CHAPTER II",
        "",
        "Things to buy at the market on the way home from the office this evening:",
        "- apples",
        "- bread",
        "",
        "The wrapper breaks lines like this one when the next word will not fit—closed dashes join without a space.",
        "",
    ]


def test_reflow_keeps_aligned_columns():
    toc = (
        "Preface to the new edition, with a note on the text of this book      ix\n"
        "List of the illustrations drawn for this edition of the novel         xv\n"
    )
    assert reflow(toc) == toc


def test_reflow_keeps_full_width_verse():
    verse = (
        "First Citizen:\n"
        "Before we proceed any further, hear me speak now.\n"
        "Speak, speak, and let the people hear you all.\n"
        "You are all resolved rather to die than famish.\n"
    )
    assert reflow(verse) == verse


def test_reflow_leaves_code_alone():
    out = reflow(PYDOCS)
    indented = [line for line in PYDOCS.split("\n") if line[:1].isspace()]
    assert indented and all(line in out.split("\n") for line in indented)
    for kept in (
        ">>> unflattened = list(batched(flattened_data, 2))\n>>> unflattened\n[('roses'",
        "```\nresult = combine_the_two_iterables(first_argument_iterable, second_one,\nfill_value=None)\n",
        "line of prose would\nbe, and the second output line",
        '"itertools" --- Functions creating iterators for efficient looping\n*****',
        "- batched() groups the input into tuples of a fixed length, the last\n  one possibly",
    ):
        assert kept in out
    assert "\nChanged in version 3.13: Added the *strict* option. This paragraph is hard-wrapped like the others" in out
    assert out.endswith("once the cleaning stage has re-flowed it.\n")


def test_reflow_leaves_unwrapped_text_alone():
    text = ("A paragraph written as one long line without any hard wrapping at all. " * 3 + "\n") * 3
    assert reflow(text) == text


# ---------------------------------------------------------------- splitting


def test_split_at_paragraphs_is_lossless_and_even():
    paragraphs = [("word " * (10 + (i * 7) % 50)).strip() + "." for i in range(60)]
    text = PARAGRAPH_SEP.join(paragraphs)
    chunks = split_document(text, 1000)
    assert PARAGRAPH_SEP.join(chunks) == text
    assert len(chunks) >= -(-len(text) // 1000)
    assert all(300 <= len(c) <= 1000 for c in chunks)
    assert not any(c.startswith("\n") or c.endswith("\n") for c in chunks)


def test_split_falls_back_to_lines_words_and_hard_cuts():
    words = " ".join(f"w{i}" for i in range(800))
    chunks = split_document(words, 500)
    assert all(len(c) <= 500 for c in chunks) and " ".join(chunks).split() == words.split()
    blob = "x" * 1200
    assert split_document(blob, 500) == ["x" * 500, "x" * 500, "x" * 200]
    assert split_document(blob, 0) == [blob] and split_document("short", 500) == ["short"]


def test_split_ids_are_stable(tmp_path):
    text = PARAGRAPH_SEP.join(["Some sentence of prose in a paragraph."] * 40)
    raw = write_docs(tmp_path / "raw.parquet", [doc("book", text), doc("small", "A small document.")])
    config = CleanConfig(max_doc_chars=500, min_doc_chars=0, max_repetition=1.0)
    clean_corpus(config, [raw], tmp_path / "first")
    first = read_rows(tmp_path / "first", "shards")
    ids = [row["doc_id"] for row in first]
    assert ids[:2] == ["book-0000", "book-0001"] and ids[-1] == "small" and len(set(ids)) == len(ids)
    assert [row["source_doc_id"] for row in first] == ["book"] * (len(ids) - 1) + ["small"]  # chunks know their doc
    clean_corpus(config, [raw], tmp_path / "second")
    assert read_rows(tmp_path / "second", "shards") == first


# ---------------------------------------------------------------- filters


def test_length_filters():
    assert [length_reason(t, 200) for t in ["", "too short", "x" * 200]] == ["empty", "too_short", None]


def test_repetition_filter():
    unique = "\n".join(f"line number {i} says something new" for i in range(10))
    assert filter_repetition(unique, 0.3) == (True, None)
    spammy = unique + "\n" + "\n".join(["buy now"] * 6)
    assert repetition_fraction(spammy) == pytest.approx(5 / 16)
    assert filter_repetition(spammy, 0.3) == (False, "repetition")
    # the character measure catches one long repeated line among many short unique ones
    long_line = "a long boilerplate sentence repeated across the page " * 4
    mixed = "\n".join([long_line, *[f"u{i}" for i in range(8)], long_line])
    assert repetition_fraction(mixed) > 0.4 and filter_repetition(mixed, 0.3)[0] is False


# ---------------------------------------------------------------- clean_corpus


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    prose = PARAGRAPH_SEP.join(f"Paragraph {i} of the essay talks about subject {i} at some length." for i in range(40))
    shard1 = write_docs(
        tmp_path / "raw-0.parquet",
        [
            doc("book", "\ufeff" + BOOK.replace("\n", "\r\n")),
            doc("essay", prose),
            doc("tiny", "Too short to keep."),
            doc("spam", "\n".join(["Click here to win a prize today!"] * 20)),
        ],
    )
    empty = write_docs(tmp_path / "raw-1.parquet", [])
    only_boilerplate = (
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n[Illustration]\n*** END OF THE PROJECT GUTENBERG EBOOK X ***"
    )
    shard3 = write_docs(
        tmp_path / "raw-2.parquet", [doc("essay-copy", prose, spec="other-spec"), doc("hollow", only_boilerplate)]
    )
    return [shard1, empty, shard3]


def test_clean_corpus_outputs_and_manifest(corpus, tmp_path):
    out = tmp_path / "clean"
    calls = []
    config = CleanConfig(max_doc_chars=1500, min_doc_chars=100)
    manifest = clean_corpus(config, corpus, out, progress=lambda *a: calls.append(a))
    assert manifest == read_json(out / "manifest.json")
    assert set(manifest) >= {"documents", "bytes", "shards", "dropped", "dropped_shards", "input_documents", "config"}
    assert manifest["config"]["max_doc_chars"] == 1500 and manifest["input_documents"] == 6
    assert manifest["signatures"] == SIGNATURES
    assert calls[-1] == ("documents", 6, 6)

    kept, dropped = read_rows(out, "shards"), read_rows(out, "dropped_shards")
    assert manifest["documents"] == len(kept) and manifest["bytes"] == sum(len(r["text"].encode()) for r in kept)
    assert manifest["dropped"] == dict(Counter(r["reason"] for r in dropped))
    # duplicates are judged later, over every partition: the copy of the essay is still here
    assert manifest["dropped"] == {"empty": 1, "too_short": 1, "repetition": 1}
    assert {r["doc_id"] for r in dropped} == {"tiny", "spam", "hollow"}
    assert [r["doc_id"] for r in kept] == [
        "book-0000",
        "book-0001",
        "essay-0000",
        "essay-0001",
        "essay-copy-0000",
        "essay-copy-0001",
    ]
    assert all(r["source"] == "test" and "\r" not in r["text"] for r in kept)
    assert [r["spec"] for r in kept] == ["test-spec"] * 4 + ["other-spec"] * 2  # each row keeps its source spec
    for s in manifest["shards"] + manifest["dropped_shards"]:
        assert sha256_file(out / s["path"]) == s["sha256"]
    assert pq.read_schema(out / manifest["shards"][0]["path"]).equals(CLEAN_SCHEMA)
    assert pq.read_schema(out / manifest["dropped_shards"][0]["path"]).names == [
        "doc_id",
        "source",
        "spec",
        "text",
        "source_doc_id",
        "reason",
    ]
    assert [r["source_doc_id"] for r in kept] == ["book", "book", "essay", "essay", "essay-copy", "essay-copy"]


def test_clean_corpus_signs_every_kept_document(corpus, tmp_path):
    config = CleanConfig(max_doc_chars=1500, min_doc_chars=100)
    clean_corpus(config, corpus, tmp_path / "clean")
    kept = read_rows(tmp_path / "clean", "shards")
    table = pq.read_table(tmp_path / "clean" / SIGNATURES)
    assert table.schema.equals(signature_schema(config)) and "minhash" not in table.schema.names
    signatures = table.to_pylist()
    assert [(s["doc_id"], s["source_doc_id"], s["spec"]) for s in signatures] == [
        (r["doc_id"], r["source_doc_id"], r["spec"]) for r in kept
    ]
    assert [s["bytes"] for s in signatures] == [len(r["text"].encode("utf-8")) for r in kept]
    assert [s["digest"] for s in signatures] == [content_digest(r["text"]) for r in kept]
    # what the old in-clean dedup did, now decided from the signatures: the copy's chunks go, the essay stays
    dropped = resolve_duplicates(
        table.column("doc_id").to_pylist(), table.column("digest").to_pylist(), None, exact=True, near=None
    )
    assert dropped == {"essay-copy-0000": "exact_duplicate", "essay-copy-0001": "exact_duplicate"}


def test_clean_corpus_is_deterministic_and_replaces_output(corpus, tmp_path):
    config = CleanConfig(max_doc_chars=1500, min_doc_chars=100, dedup_near=True)
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    (b / "part-00009.parquet").write_text("stale output of an earlier run")
    ma, mb = clean_corpus(config, corpus, a), clean_corpus(config, corpus, b)
    assert ma == mb
    assert sorted(p.name for p in b.rglob("*")) == sorted(p.name for p in a.rglob("*"))
    for s in ma["shards"] + ma["dropped_shards"]:
        assert pq.read_table(a / s["path"]).equals(pq.read_table(b / s["path"]))
    signatures = pq.read_table(a / SIGNATURES)
    assert signatures.equals(pq.read_table(b / SIGNATURES))
    # with near dedup each signature carries the document's MinHash, the same one NearDeduper computes
    near = NearDeduper(threshold=config.near_threshold, num_perm=config.num_perm, seed=config.seed)
    texts = [r["text"] for r in read_rows(a, "shards")]
    minhashes = signatures.column("minhash").to_pylist()
    assert len(minhashes) == len(texts) == ma["documents"] and all(len(m) == config.num_perm for m in minhashes)
    assert minhashes == [near.signature(t).hashvalues.tolist() for t in texts]


def test_clean_corpus_with_only_empty_input(tmp_path):
    manifest = clean_corpus(CleanConfig(), [write_docs(tmp_path / "raw.parquet", [])], tmp_path / "out")
    assert manifest["documents"] == 0 and manifest["shards"] == [] and manifest["dropped"] == {}
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_clean_corpus_rejects_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.parquet"))):
        clean_corpus(CleanConfig(), [tmp_path / "nope.parquet"], tmp_path / "out")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"doc_id": ["a"], "body": ["b"]}), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet.*source.*text"):
        clean_corpus(CleanConfig(), [bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_clean_corpus_names_a_shard_without_the_spec_column(tmp_path):
    """A raw shard written before the ``spec`` column existed: the error names the file, the column and the fix."""
    old = tmp_path / "old-raw.parquet"
    pq.write_table(pa.table({"doc_id": ["a"], "source": ["s"], "text": ["x" * 300]}), old)
    good = write_docs(tmp_path / "new-raw.parquet", [doc("b", "y" * 300)])
    with pytest.raises(ValueError) as err:
        clean_corpus(CleanConfig(), [good, old], tmp_path / "out")
    msg = str(err.value)
    assert str(old) in msg and "['spec']" in msg and "['doc_id', 'source', 'spec', 'text']" in msg
    assert str(good) not in msg
    assert not (tmp_path / "out").exists()
