"""Source specs, file formats, compression, archives and the builtin corpus, read back record by record."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import platform
import re
import socket
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmcore.data.sources import builtin, parse_spec
from lmcore.data.sources.formats import is_supported, read_file
from lmcore.data.sources.policy import ReadContext

TEXTS = ["First document.\nWith two lines.", 'Second — with ünïcode and a "quote", comma.', "Third."]


def _read(path: Path, ctx: ReadContext | None = None) -> list[tuple[str, int, str]]:
    ctx = ctx or ReadContext()
    items = list(read_file(path, path.name, str(path), ctx))
    ctx.problems.raise_if_any()
    return items


def _encode(name: str, texts: list[str]) -> bytes:
    """The bytes of a file of format ``name`` holding ``texts`` in field 'text'."""
    if name.endswith(".jsonl"):
        return "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()
    if name.endswith(".json"):
        return json.dumps([{"text": t} for t in texts], indent=1).encode()
    if name.endswith(".csv"):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["id", "text"])
        writer.writerows([i, t] for i, t in enumerate(texts))
        return buf.getvalue().encode()
    if name.endswith(".parquet"):
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), buf)
        return buf.getvalue()
    assert name.endswith(".txt") and len(texts) == 1
    return texts[0].encode()


def _compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data, mtime=0)
    if suffix == ".zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


# --- specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind", "target", "label", "config"),
    [
        ("builtin:python-docs", "builtin", "python-docs", None, None),
        ("hf:wikitext:wikitext-2-raw-v1", "hf", "wikitext", None, "wikitext-2-raw-v1"),
        ("hf:org/name", "hf", "org/name", None, None),
        ("hf:/data/saved:x", "hf", "/data/saved:x", None, None),
        ("data/books", "local", "data/books", None, None),
        ("file:///data/my%20books", "local", "/data/my books", None, None),
        ("https://example.com/a.jsonl.gz", "remote", "https://example.com/a.jsonl.gz", None, None),
        ("books2=s3://bucket/books/", "remote", "s3://bucket/books/", "books2", None),
        ("./a=b", "local", "./a=b", None, None),
    ],
)
def test_parse_spec(raw, kind, target, label, config):
    spec = parse_spec(raw)
    assert (spec.kind, spec.target, spec.label, spec.hf_config) == (kind, target, label, config)


@pytest.mark.parametrize("raw", ["builtin:nope", "", "hf:", "x=builtin:python-docs"])
def test_parse_spec_rejects_malformed_specs(raw):
    with pytest.raises(ValueError, match="builtin:python-docs|non-empty|names no dataset"):
        parse_spec(raw)


# --- formats and compression --------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
@pytest.mark.parametrize("fmt", [".jsonl", ".json", ".csv", ".parquet"])
def test_record_formats_read_back(tmp_path, fmt, compression):
    path = tmp_path / f"data{fmt}{compression}"
    path.write_bytes(_compress(_encode(fmt, TEXTS), compression))
    assert [text for _, _, text in _read(path)] == TEXTS
    assert [index for _, index, _ in _read(path)] == [0, 1, 2]


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_text_file_is_one_document(tmp_path, compression):
    path = tmp_path / f"book.txt{compression}"
    path.write_bytes(_compress(("\ufeff" + TEXTS[0]).encode(), compression))
    assert _read(path) == [("", 0, TEXTS[0])]


def test_json_lines_in_a_json_file_and_blank_lines_keep_line_indices(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('\n{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert _read(path) == [("", 1, "a"), ("", 3, "b")]


def test_fixture_csv_with_a_multiline_field(tmp_path):
    fixture = Path(__file__).parents[1] / "fixtures" / "sources" / "quotes.csv"
    texts = [t for _, _, t in _read(fixture)]
    assert texts[1] == "Simplicity is prerequisite for reliability,\nand it spans two lines."


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tgz", "tar.zst"])
def test_archive_members_are_read_by_their_own_extension(tmp_path, kind):
    members = {
        "docs/a.txt": _encode(".txt", ["alpha text"]),
        "docs/b.jsonl.gz": _compress(_encode(".jsonl", ["beta", "gamma"]), ".gz"),
        "c.parquet": _encode(".parquet", ["delta"]),
        "notes.bin": b"\x00\x01",  # unsupported: skipped and counted
        ".hidden.txt": b"passed over",
    }
    path = tmp_path / f"bundle.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        path.write_bytes(_compress(buf.getvalue(), ".zst" if kind.endswith("zst") else ".gz" if "g" in kind else ""))
    ctx = ReadContext()
    items = _read(path, ctx)
    assert items == [
        ("docs/a.txt", 0, "alpha text"),
        ("docs/b.jsonl.gz", 0, "beta"),
        ("docs/b.jsonl.gz", 1, "gamma"),
        ("c.parquet", 0, "delta"),
    ]
    assert ctx.skipped == {"unsupported_format": 1}


def test_is_supported():
    assert is_supported("a.jsonl.gz") and is_supported("b.TXT") and is_supported("c.tgz") and is_supported("d.tar.zst")
    assert not is_supported("README") and not is_supported("x.bin.gz")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "ok/../../evil.txt"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_member_escaping_its_folder_is_refused(tmp_path, member, kind):
    path = tmp_path / f"evil.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("fine.txt", "fine")
            zf.writestr(zipfile.ZipInfo(member), "evil")
    else:
        with tarfile.open(path, "w") as tf:
            info = tarfile.TarInfo(member)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(ValueError, match=re.escape(repr(member))) as err:
        _read(path)
    assert "evil." + kind in str(err.value) and "outside" in str(err.value)


def test_tar_links_are_skipped_and_counted(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("real.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"real"))
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    ctx = ReadContext()
    assert _read(path, ctx) == [("real.txt", 0, "real")]
    assert ctx.skipped == {"archive_link": 1}


def test_invalid_utf8_policies(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match=r"bad\.txt: not valid UTF-8 \(byte 3.*invalid_utf8='replace'"):
        _read(bad)
    ctx = ReadContext(invalid_utf8="replace")
    assert _read(bad, ctx) == [("", 0, "caf\ufffd au lait")] and ctx.repaired == {"invalid_utf8_replaced": 1}
    ctx = ReadContext(invalid_utf8="skip")
    assert _read(bad, ctx) == [] and ctx.skipped == {"invalid_utf8": 1}


def test_invalid_utf8_in_jsonl_names_the_line_and_skip_drops_only_that_record(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "good"}\n{"text": "caf\xe9"}\n{"text": "also good"}\n')
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: not valid UTF-8"):
        _read(path)
    assert [t for _, _, t in _read(path, ReadContext(invalid_utf8="skip"))] == ["good", "also good"]


def test_nul_bytes_are_stripped_and_counted(tmp_path):
    path = tmp_path / "nul.jsonl"
    path.write_text('{"text": "a\\u0000b"}\n{"text": "\\u0000"}\n', encoding="utf-8")
    ctx = ReadContext()
    assert _read(path, ctx) == [("", 0, "ab")]
    assert ctx.repaired == {"nul_stripped": 2} and ctx.skipped == {"empty_text": 1}


def test_broken_json_line_is_an_error_naming_file_and_line_or_a_counted_skip(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "unterminated\n{"text": "fine"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON.*on_bad_record='skip'"):
        _read(path)
    ctx = ReadContext(on_bad_record="skip")
    assert [t for _, _, t in _read(path, ctx)] == ["ok", "fine"] and ctx.skipped == {"bad_json": 1}


def test_many_problems_are_collected_into_one_error(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join("not json\n" for _ in range(3)) + '{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="4 problems") as err:
        _read(path)
    for line in ("many.jsonl:1:", "many.jsonl:3:", "many.jsonl:4: the record has no field 'text'"):
        assert line in str(err.value)


def test_missing_text_field_names_field_file_line_and_the_fields_that_exist(tmp_path):
    path = tmp_path / "fields.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "x", "title": "y"}\n', encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"fields\.jsonl:2: the record has no field 'text' \(its fields: 'body', 'title'"
    ):
        _read(path)
    ctx = ReadContext(text_field="body")
    with pytest.raises(ValueError, match=r"fields\.jsonl:1: .*no field 'body'"):
        _read(path, ctx)
    ctx = ReadContext(on_bad_record="skip")
    assert [t for _, _, t in _read(path, ctx)] == ["ok"] and ctx.skipped == {"missing_text_field": 1}


@pytest.mark.parametrize("fmt", [".csv", ".parquet"])
def test_missing_text_column_lists_the_columns(tmp_path, fmt):
    path = tmp_path / f"table{fmt}"
    path.write_bytes(_encode(fmt, TEXTS))
    with pytest.raises(ValueError, match=rf"table\{fmt}: no column 'body' \(columns: 'id', 'text'\); set text_field"):
        _read(path, ReadContext(text_field="body"))


def test_null_and_non_string_text_values(tmp_path):
    path = tmp_path / "types.jsonl"
    path.write_text('{"text": null}\n{"text": 3}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"types\.jsonl:2: field 'text' is a int, not a string"):
        _read(path)
    ctx = ReadContext(on_bad_record="skip")
    assert [t for _, _, t in _read(path, ctx)] == ["x"]
    assert ctx.skipped == {"null_text": 1, "bad_text_type": 1}


def test_oversized_line_is_drained_and_skipped_without_losing_the_next_lines(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(
        json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "x" * 5000}) + "\n" + json.dumps({"text": "b"}) + "\n",
        encoding="utf-8",
    )
    ctx = ReadContext(max_document_bytes=100)
    assert _read(path, ctx) == [("", 0, "a"), ("", 2, "b")]
    assert ctx.skipped == {"too_large": 1}


def test_corrupt_gzip_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(_encode(".jsonl", TEXTS))[:20])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.gz: truncated/corrupt archive"):
        _read(path)


# --- builtin ----------------------------------------------------------------------------------


def test_builtin_python_docs_is_deterministic_and_names_qualified_entries():
    first = list(builtin.iter_documents())
    assert first == list(builtin.iter_documents())
    size = sum(len(text.encode()) for _, _, text in first)
    assert size > 500_000 and len(first) > 100
    modules = {name: text for kind, name, text in first if kind == "module"}
    assert {"json", "collections", "os"} <= set(modules) and not {"tkinter", "antigravity", "this"} & set(modules)
    assert not any(name.split(".")[0].startswith("_") or ".test" in name for name in modules)
    assert re.search(r"^## json\.dumps\(obj, \*, skipkeys=False", modules["json"], re.M)
    assert re.search(r"^### json\.JSONEncoder\.encode\(self, o\)", modules["json"], re.M)
    assert not re.search(r" at 0x[0-9a-f]+", "".join(modules.values()))
    assert "## platform.architecture(executable=<sys.executable>, bits=''" in modules["platform"]
    assert "sysconfig.get_paths(scheme=<sysconfig.get_default_scheme()>" in modules["sysconfig"]
    assert not any(path in text for path in (sys.executable, sys.prefix, str(Path.cwd())) for text in modules.values())
    topics = [name for kind, name, _ in first if kind == "topic"]
    assert topics == sorted(topics) and "assert" in topics
    assert builtin.version().endswith(f"/python-{platform.python_version()}/{sys.platform}")


def test_builtin_defaults_from_the_install_are_rendered_by_name_and_others_as_written():
    """What the child renders for a default: paths of this install, user and host by name."""
    assert builtin._signature(platform.architecture) == "(executable=<sys.executable>, bits='', linkage='')"
    in_tmp = os.path.join(tempfile.gettempdir(), "data", "x.txt")
    assert builtin._stable_repr((in_tmp,)) == repr((os.path.join("<tempfile.gettempdir()>", "data", "x.txt"),))
    for path in (sys.prefix, os.getcwd(), os.path.expanduser("~"), os.path.dirname(builtin.__file__)):
        assert re.fullmatch(r"<[\w.() ]+>|'<[\w.() ]+>[^<>]*'", builtin._stable_repr(path)), path
    assert builtin._stable_repr(sysconfig.get_default_scheme()) == "<sysconfig.get_default_scheme()>"
    if socket.gethostname() not in builtin.GENERIC_NAMES:
        assert builtin._stable_repr(socket.gethostname()) == "<host>"
    for static in ("/dev/null", "localhost", "/", "utf-8", tempfile.gettempdir() + "-other"):
        assert builtin._stable_repr(static) == repr(static)
    assert builtin._stable_repr({"b": 1, "a": {2, 1}}) == "{'a': {1, 2}, 'b': 1}"


# --- Hugging Face datasets (offline: a dataset saved to disk) ----------------------------------


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from lmcore.data.corpus import CorpusConfig, build_raw_corpus
    from lmcore.io import read_parquet_rows

    saved = tmp_path / "tiny_ds"
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["one", None, "three"], "n": [1, 2, 3]}),
            "test": datasets.Dataset.from_dict({"text": ["held out"], "n": [4]}),
        }
    )
    dd.save_to_disk(str(saved))
    manifest = build_raw_corpus(CorpusConfig(sources=(f"hf:{saved}",)), tmp_path / "out", tmp_path / "cache")
    rows = list(read_parquet_rows([tmp_path / "out" / s["path"] for s in manifest["shards"]]))
    assert [r["text"] for r in rows] == ["one", "three"] and {r["source"] for r in rows} == {"hf:tiny_ds"}
    assert manifest["skipped"] == {"null_text": 1} and manifest["sources"][0]["version"].startswith("sha256:")
    with pytest.raises(ValueError, match=r"no split 'validation' \(splits: train, test\); set hf_split"):
        build_raw_corpus(CorpusConfig(sources=(f"hf:{saved}",), hf_split="validation"), tmp_path / "o2", tmp_path / "c")
    with pytest.raises(ValueError, match=r"no column 'body' \(columns: 'text', 'n'\)"):
        build_raw_corpus(CorpusConfig(sources=(f"hf:{saved}",), text_field="body"), tmp_path / "o3", tmp_path / "c")
