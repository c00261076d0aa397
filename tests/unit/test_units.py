"""Units smaller than a file: byte ranges of JSON Lines cut at line starts, row groups of Parquet, and the corpus
they give, which must not depend on the unit size."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcore.data.corpus import CorpusConfig, build_raw_corpus, partition_units
from lmcore.data.partitions import PARTITIONS, partition_of
from lmcore.data.sources.formats import read_file
from lmcore.data.sources.policy import ReadContext
from lmcore.data.sources.ranges import plan_parts
from lmcore.io import read_parquet_rows


def _jsonl_bytes(n: int, seed: int, newline: str = "\n", final: bool = True) -> bytes:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        text = " ".join(rng.choice("alpha beta gamma delta river snow".split()) for _ in range(rng.randint(1, 40)))
        lines.append(json.dumps({"i": i, "text": f"{i}: {text}"}) + (newline * rng.choice((1, 1, 1, 2))))
    data = "".join(lines).encode()
    return data if final else data.rstrip(b"\r\n")


def _read(path: Path, part=None) -> list[tuple[str, int, str]]:
    ctx = ReadContext()
    items = list(read_file(path, path.name, str(path), ctx, part))
    ctx.problems.raise_if_any()
    return items


def _check_cover(data: bytes, parts) -> None:
    """The parts tile the file in order, each starts at a line start and says how many lines come before it."""
    assert parts[0].lo == 0 and parts[-1].hi == len(data)
    for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False)):
        assert a.index == i and a.hi == b.lo and a.lo < a.hi
        assert data[b.lo - 1 : b.lo] == b"\n"  # no line is split
        assert b.first == data[: b.lo].count(b"\n")


CASES = {
    "lf": _jsonl_bytes(400, 1),
    "crlf": _jsonl_bytes(400, 2, "\r\n"),
    "no final newline": _jsonl_bytes(400, 3, final=False),
    "a line longer than unit_bytes": _jsonl_bytes(150, 4)
    + json.dumps({"text": "long " * 3000}).encode()
    + b"\n"
    + _jsonl_bytes(150, 5),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("unit_bytes", [1000, 4096, 9999])
def test_ranges_cut_at_line_starts_cover_the_file_once_and_keep_every_record(tmp_path, name, unit_bytes):
    data = CASES[name]
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    parts = plan_parts(path, path.name, unit_bytes)
    assert len(parts) >= 3
    _check_cover(data, parts)
    assert all(p.hi - p.lo < unit_bytes + 16000 for p in parts)  # about unit_bytes, or one line longer than it
    whole = _read(path)
    assert [item for p in parts for item in _read(path, p)] == whole  # the same line numbers and texts
    assert len(whole) == (301 if "long" in name else 400)


def test_a_line_longer_than_unit_bytes_stays_whole_in_one_part(tmp_path):
    data = CASES["a line longer than unit_bytes"]
    path = tmp_path / "long.jsonl"
    path.write_bytes(data)
    start = data.index(b'{"text": "long')
    end = data.index(b"\n", start) + 1
    parts = plan_parts(path, path.name, 1000)
    assert end - start > 10 * 1000 and not [p.lo for p in parts if start < p.lo < end]
    assert [p.hi for p in parts if p.lo <= start < p.hi] == [end]  # cut right after it


def test_small_empty_and_uncuttable_files_are_one_unit(tmp_path):
    data = _jsonl_bytes(300, 6)
    files = {
        "empty.jsonl": b"",
        "small.jsonl": data[:999],
        "book.txt": data,  # one document
        "array.json": json.dumps([{"text": str(i)} for i in range(2000)]).encode(),
        "rows.csv": b"text\n" + b"\n".join(b"row %d" % i for i in range(3000)),
        "packed.jsonl.gz": gzip.compress(data),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        assert plan_parts(tmp_path / name, name, 1000) == (), name
    (tmp_path / "broken.parquet").write_bytes(data)  # read whole, so the reader names the problem as for any file
    assert plan_parts(tmp_path / "broken.parquet", "broken.parquet", 1000) == ()
    with pytest.raises(ValueError, match="broken.parquet: not a readable Parquet file"):
        _read(tmp_path / "broken.parquet")
    assert plan_parts(tmp_path / "gone.jsonl", "gone.jsonl", 1000) == ()
    (tmp_path / "lines.json").write_bytes(data)  # JSON lines in a .json file are cut like .jsonl
    assert len(plan_parts(tmp_path / "lines.json", "lines.json", 1000)) > 3


def test_parquet_is_cut_into_groups_of_row_groups_and_keeps_row_numbers(tmp_path):
    texts = [f"row {i} " + "word " * (i % 50) for i in range(3000)]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": list(range(3000)), "text": texts}), path, row_group_size=100)
    parts = plan_parts(path, path.name, 8000)
    assert 3 <= len(parts) < 30 and parts[0].groups == (0, parts[1].groups[0]) and parts[-1].groups[1] == 30
    assert all(
        a.groups[1] == b.groups[0] and b.first == 100 * b.groups[0] for a, b in zip(parts, parts[1:], strict=False)
    )
    assert [item for p in parts for item in _read(path, p)] == _read(path) == [("", i, t) for i, t in enumerate(texts)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "one.parquet")  # one row group: one unit
    assert plan_parts(tmp_path / "one.parquet", "one.parquet", 8000) == ()


def _corpus(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.jsonl").write_bytes(_jsonl_bytes(3000, 7))
    (src / "small.jsonl").write_bytes(_jsonl_bytes(5, 8))
    (src / "book.txt").write_text("A small book of one page.", encoding="utf-8")
    return src


def _documents(config: CorpusConfig, out: Path) -> tuple[set[tuple[str, str]], list[dict]]:
    docs, units = set(), []
    for p in PARTITIONS:
        manifest = build_raw_corpus(config, out / p, out / "cache", partition=p)
        assert manifest["units"] == partition_units(config, p)
        docs |= {(r["doc_id"], r["text"]) for r in read_parquet_rows([out / p / s["path"] for s in manifest["shards"]])}
        units += manifest["units"]
    return docs, units


def test_the_corpus_is_the_same_for_every_unit_size_and_small_files_keep_their_units(tmp_path):
    src = _corpus(tmp_path)
    whole_config = CorpusConfig(sources=(str(src),))
    whole, whole_units = _documents(whole_config, tmp_path / "whole")
    cut, cut_units = _documents(CorpusConfig(sources=(str(src),), unit_bytes=16 << 10), tmp_path / "cut")
    assert cut == whole and len(whole) == 3006
    full = build_raw_corpus(whole_config, tmp_path / "all", tmp_path / "cache")  # no partition: the whole corpus
    assert {
        (r["doc_id"], r["text"]) for r in read_parquet_rows([tmp_path / "all" / s["path"] for s in full["shards"]])
    } == whole
    keys = sorted(u["key"] for u in cut_units)
    big = [k for k in keys if k.startswith("src/big.jsonl@")]
    assert len(big) > 8 and len({partition_of(k) for k in big}) > 4  # the file is spread over many partitions
    small = [u for u in cut_units if "@" not in u["key"]]
    assert sorted(small, key=str) == sorted((u for u in whole_units if u["key"] != "src/big.jsonl"), key=str)


def test_a_part_is_read_again_when_its_bytes_or_the_lines_before_it_change(tmp_path):
    src = _corpus(tmp_path)
    config = CorpusConfig(sources=(str(src),), unit_bytes=16 << 10)
    before = {u["key"]: u["version"] for p in PARTITIONS for u in partition_units(config, p)}
    data = (src / "big.jsonl").read_bytes()
    old = plan_parts(src / "big.jsonl", "big.jsonl", 16 << 10)
    first_end = data.index(b"\n") + 1
    (src / "big.jsonl").write_bytes(data[:first_end] + b"\n" + data[first_end:])  # a blank line after line 1
    new = plan_parts(src / "big.jsonl", "big.jsonl", 16 << 10)
    same_bytes = [i for i in range(1, len(old)) if data[old[i].lo : old[i].hi] == data[new[i].lo - 1 : new[i].hi - 1]]
    assert same_bytes  # parts whose bytes did not change, but whose records' line numbers did
    after = {u["key"]: u["version"] for p in PARTITIONS for u in partition_units(config, p)}
    assert before.keys() == after.keys()
    assert all(before[k] != after[k] for k in before if k.startswith("src/big.jsonl@"))
    assert all(before[k] == after[k] for k in before if "@" not in k)


def test_unit_bytes_must_be_a_positive_number_of_bytes():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="unit_bytes"):
            CorpusConfig(unit_bytes=bad)


def test_a_local_hugging_face_dataset_is_read_in_shards_with_the_rows_of_the_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    rows = [f"row {i}: " + "word " * (i % 40) for i in range(3000)]
    rows[7] = None  # skipped wherever it falls
    saved = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})}).save_to_disk(str(saved))
    whole, whole_units = _documents(CorpusConfig(sources=(f"hf:{saved}",)), tmp_path / "whole")
    cut, cut_units = _documents(CorpusConfig(sources=(f"hf:{saved}",), unit_bytes=40 << 10), tmp_path / "cut")
    assert cut == whole and len(whole) == 2999
    assert [u["key"] for u in whole_units] == ["hf:ds split train"]
    keys = {u["key"] for u in cut_units}
    assert len(keys) > 3 and all(k.startswith("hf:ds split train@") for k in keys)
    assert len({partition_of(k) for k in keys}) > 2
    streamed = CorpusConfig(sources=(f"hf:{saved}",), unit_bytes=40 << 10, hf_streaming=True)
    assert sum(len(partition_units(streamed, p)) for p in PARTITIONS) == 1  # a stream has no length: one unit
