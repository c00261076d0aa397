"""build_raw_corpus end to end: read-back, manifest, stable doc ids, config checks and bad input."""

from __future__ import annotations

import gzip
import json
import platform
import shutil
from pathlib import Path

import pytest

from lmcore.data.corpus import MANIFEST, CorpusConfig, build_raw_corpus, doc_id, source_version
from lmcore.io import read_json, read_parquet_rows, sha256_file

FIXTURES = Path(__file__).parents[1] / "fixtures" / "sources"


def _build(tmp_path: Path, *sources: str, name: str = "out", **kw) -> tuple[dict, list[dict]]:
    out = tmp_path / name
    manifest = build_raw_corpus(CorpusConfig(sources=sources, **kw), out, tmp_path / "cache")
    return manifest, list(read_parquet_rows([out / s["path"] for s in manifest["shards"]]))


@pytest.fixture
def books(tmp_path) -> Path:
    """A writable copy of the fixture directory of plain-text books."""
    return Path(shutil.copytree(FIXTURES / "gutenberg", tmp_path / "src" / "gutenberg"))


def test_fixture_sources_read_back_with_manifest(tmp_path):
    specs = (str(FIXTURES / "gutenberg"), str(FIXTURES / "chat.jsonl"), str(FIXTURES / "quotes.csv"))
    manifest, rows = _build(tmp_path, *specs)
    assert [r["source"] for r in rows] == [
        "gutenberg/11-0.txt",
        "gutenberg/1342-0.txt",
        "gutenberg/more/84-0.txt",
        "sources/chat.jsonl",
        "sources/chat.jsonl",
        "sources/chat.jsonl",
        "sources/quotes.csv",
        "sources/quotes.csv",
    ]
    assert [r["spec"] for r in rows] == [specs[0]] * 3 + [specs[1]] * 3 + [specs[2]] * 2  # the spec each came from
    assert rows[0]["text"] == (FIXTURES / "gutenberg" / "11-0.txt").read_text(encoding="utf-8")
    assert rows[5]["text"] == "Sphinx of black quartz, judge my vow — déjà vu."
    assert rows[0]["doc_id"] == doc_id("gutenberg\x0011-0.txt\x000") and len(rows[0]["doc_id"]) == 16
    assert len({r["doc_id"] for r in rows}) == len(rows)
    assert manifest["documents"] == 8 and manifest["bytes"] == sum(len(r["text"].encode()) for r in rows)
    assert manifest["skipped"] == {"unsupported_format": 1}  # gutenberg/README
    assert [s["documents"] for s in manifest["sources"]] == [3, 3, 2]
    assert manifest["sources"][1]["version"] == f"sha256:{sha256_file(FIXTURES / 'chat.jsonl')}"
    assert "python_version" not in manifest and manifest["partition"] is None
    assert [u["key"] for u in manifest["units"]] == [
        "gutenberg/11-0.txt",
        "gutenberg/1342-0.txt",
        "gutenberg/more/84-0.txt",
        "sources/chat.jsonl",
        "sources/quotes.csv",
    ]
    assert manifest["units"][3] == {
        "spec": specs[1],
        "key": "sources/chat.jsonl",
        "version": manifest["sources"][1]["version"],
    }
    assert read_json(tmp_path / "out" / MANIFEST) == json.loads(json.dumps(manifest))
    for shard in manifest["shards"]:
        assert sha256_file(tmp_path / "out" / shard["path"]) == shard["sha256"]


def test_doc_ids_are_stable_across_runs_locations_and_a_growing_directory(tmp_path, books):
    _, first = _build(tmp_path, str(books), name="a")
    _, again = _build(tmp_path, str(books), name="b")
    assert first == again
    moved = Path(shutil.copytree(books, tmp_path / "elsewhere" / "gutenberg"))
    _, relocated = _build(tmp_path, str(moved), name="c")
    assert [r["doc_id"] for r in relocated] == [r["doc_id"] for r in first]
    (books / "0-new.txt").write_text("A new book sorts first.", encoding="utf-8")
    _, grown = _build(tmp_path, str(books), name="d")
    ids = {r["source"]: r["doc_id"] for r in grown}
    assert len(grown) == len(first) + 1 and all(ids[r["source"]] == r["doc_id"] for r in first)
    _, single = _build(tmp_path, str(books / "11-0.txt"), name="e")
    assert single[0]["doc_id"] == ids["gutenberg/11-0.txt"]  # naming the file or its directory: same id


def test_versions_follow_content(tmp_path, books):
    config = CorpusConfig(sources=(str(books),))
    manifest, _ = _build(tmp_path, str(books))
    assert source_version(str(books), config) == manifest["sources"][0]["version"]
    (books / "more" / "84-0.txt").write_text("changed", encoding="utf-8")
    assert source_version(str(books), config) != manifest["sources"][0]["version"]


def test_glob_with_compressed_files_and_shard_rotation(tmp_path, books):
    (books / "more" / "zipped.txt.gz").write_bytes(gzip.compress(b"compressed book", mtime=0))
    manifest, rows = _build(tmp_path, f"{books}/**/*.txt*", shard_bytes=200)
    assert rows[-1] == {
        "doc_id": doc_id("gutenberg\x00more/zipped.txt.gz\x000"),
        "source": "gutenberg/more/zipped.txt.gz",
        "spec": f"{books}/**/*.txt*",
        "text": "compressed book",
    }
    assert len(rows) == 4 and len(manifest["shards"]) > 1 and sum(s["rows"] for s in manifest["shards"]) == 4
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == [MANIFEST] + [
        s["path"] for s in manifest["shards"]
    ]


def test_builtin_default_corpus_is_deterministic(tmp_path):
    manifest, rows = _build(tmp_path, "builtin:python-docs", name="a")
    again, _ = _build(tmp_path, "builtin:python-docs", name="b")
    assert manifest == again
    assert manifest["bytes"] > 500_000 and manifest["python_version"] == platform.python_version()
    assert platform.python_version() in manifest["sources"][0]["version"]
    entry = next(r for r in rows if r["source"] == "python-docs:modules/json")
    assert "## json.dumps(" in entry["text"] and entry["doc_id"] == doc_id("python-docs\x00module\x00json")
    assert sum(r["source"] == "python-docs:topics" for r in rows) > 50


def test_progress_is_reported(tmp_path, books):
    calls = []
    build_raw_corpus(
        CorpusConfig(sources=(str(books),)), tmp_path / "out", tmp_path / "c", progress=lambda *a: calls.append(a)
    )
    assert ("sources", 1, 1) in calls and ("documents", 3, None) in calls


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"sources": ()}, "sources"),
        ({"sources": "data/"}, "sources"),
        ({"sources": ("builtin:wiki",)}, "sources"),
        ({"text_field": ""}, "text_field"),
        ({"hf_split": ""}, "hf_split"),
        ({"invalid_utf8": "ignore"}, "invalid_utf8"),
        ({"on_bad_record": "warn"}, "on_bad_record"),
        ({"retries": -1}, "retries"),
        ({"backoff_s": -0.1}, "backoff_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"shard_bytes": 0}, "shard_bytes"),
        ({"max_document_bytes": 0}, "max_document_bytes"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        CorpusConfig(**kw)


def test_config_accepts_a_list_of_sources():
    assert CorpusConfig(sources=["a", "b"]).sources == ("a", "b")


def test_config_entries_may_carry_a_mixing_weight():
    plain = CorpusConfig(sources=["a", "b"])
    assert plain.specs == ("a", "b") and plain.weights is None
    mixed = CorpusConfig(sources=[{"spec": "a", "weight": 3}, "b", {"spec": "c"}])
    assert mixed.specs == ("a", "b", "c")
    assert mixed.weights == {"a": 3.0, "b": 1.0, "c": 1.0}
    assert mixed.sources == ({"spec": "a", "weight": 3.0}, "b", {"spec": "c", "weight": 1.0})


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"spec": "a", "weight": -1}, r"sources\[1\]\.weight = -1"),
        ({"spec": "a", "weight": "heavy"}, r"sources\[1\]\.weight"),
        ({"spec": "a", "weight": True}, r"sources\[1\]\.weight"),
        ({"spec": "a", "weight": float("inf")}, r"sources\[1\]\.weight"),
        ({"weight": 2}, r"sources\[1\] = .*\{spec: SPEC, weight: W\}"),
        ({"spec": "a", "wieght": 2}, r"sources\[1\] = .*\{spec: SPEC, weight: W\}"),
        ({"spec": "builtin:wiki", "weight": 1}, r"sources\[1\]: .*builtin"),
    ],
)
def test_config_rejects_bad_weighted_entries_naming_the_entry(entry, match):
    with pytest.raises(ValueError, match=match):
        CorpusConfig(sources=["ok", entry])


# --- bad input and failure --------------------------------------------------------------------


def test_missing_files_are_reported_together(tmp_path):
    with pytest.raises(FileNotFoundError, match="2 problems") as err:
        _build(tmp_path, str(tmp_path / "nope.txt"), str(tmp_path / "absent"))
    assert "nope.txt" in str(err.value) and "absent" in str(err.value)


def test_an_empty_source_is_an_error_naming_the_spec(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="2 problems") as err:
        _build(tmp_path, str(empty), str(tmp_path / "blank.txt"), str(FIXTURES / "chat.jsonl"))
    assert f"source '{empty}' produced no documents" in str(err.value)
    assert "'empty_text': 1" in str(err.value)


def test_a_failure_leaves_no_shard_and_no_manifest(tmp_path, books):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        _build(tmp_path, str(books), str(broken), shard_bytes=100)  # tiny shards: some close before the error
    assert list((tmp_path / "out").iterdir()) == []
    manifest, rows = _build(tmp_path, str(books), str(broken), name="ok", on_bad_record="skip")
    assert len(rows) == 4 and manifest["skipped"]["bad_json"] == 1


def test_out_dir_must_be_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST).write_text("{}")
    with pytest.raises(ValueError, match="is not empty"):
        _build(tmp_path, str(FIXTURES / "chat.jsonl"))


def test_overlapping_sources_are_an_error_unless_labelled(tmp_path, books):
    with pytest.raises(ValueError, match=r"both contain 'gutenberg/11-0\.txt'.*'NAME=SPEC'"):
        _build(tmp_path, str(books), str(books / "11-0.txt"))
    _, rows = _build(tmp_path, str(books), f"again={books / '11-0.txt'}", name="ok")
    assert rows[-1]["source"] == "again/11-0.txt" and rows[-1]["doc_id"] != rows[0]["doc_id"]


def test_invalid_utf8_and_nul_bytes_are_counted_in_the_manifest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "latin1.txt").write_bytes("café".encode("latin-1"))
    (src / "nul.txt").write_bytes(b"a\x00b")
    with pytest.raises(ValueError, match=r"latin1\.txt: not valid UTF-8"):
        _build(tmp_path, str(src))
    manifest, rows = _build(tmp_path, str(src), name="ok", invalid_utf8="replace")
    assert [r["text"] for r in rows] == ["caf\ufffd", "ab"]
    assert manifest["repaired"] == {"invalid_utf8_replaced": 1, "nul_stripped": 1}


def test_a_50_mb_single_line_is_one_document(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    line = "lorem ipsum " * (50 * 1024 * 1024 // 12)
    (src / "huge.txt").write_text(line, encoding="utf-8")
    (src / "huge.jsonl").write_text(json.dumps({"text": line}) + "\n" + json.dumps({"text": "small"}) + "\n")
    manifest, rows = _build(tmp_path, str(src))
    assert [len(r["text"]) for r in rows] == [len(line), 5, len(line)]
    assert manifest["documents"] == 3
    manifest, rows = _build(tmp_path, str(src), name="capped", max_document_bytes=1 << 20)
    assert [r["text"] for r in rows] == ["small"] and manifest["skipped"] == {"too_large": 2}
