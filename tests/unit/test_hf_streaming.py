"""Hugging Face sources read with ``hf_streaming``: the records of a full load, nothing converted into the cache.

Offline: a local directory laid out like a Hub dataset repository, and a dataset saved with
``save_to_disk``, both read by the real ``datasets`` library.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcore.data.sources import ReadContext, open_sources
from lmcore.data.sources.fetch import Fetcher

datasets = pytest.importorskip("datasets")

FILES, ROWS = 3, 1000
"""The repository's train split: FILES parquet files of ROWS rows each."""


def _text(file: int, row: int) -> str | None:
    if row % 7 == 0:
        return None
    return "" if row % 11 == 0 else f"doc {file}-{row}"


def _repo(tmp_path: Path) -> Path:
    """A dataset repository as on the Hub: ``data/{split}-*.parquet``, several small row groups."""
    repo = tmp_path / "tiny_repo"
    (repo / "data").mkdir(parents=True)
    for i in range(FILES):
        table = pa.table({"text": [_text(i, j) for j in range(ROWS)], "n": list(range(i * ROWS, (i + 1) * ROWS))})
        pq.write_table(table, repo / "data" / f"train-{i:05d}-of-{FILES:05d}.parquet", row_group_size=300)
    pq.write_table(pa.table({"text": ["held out"], "n": [-1]}), repo / "data" / "test-00000-of-00001.parquet")
    return repo


def _saved(tmp_path: Path) -> Path:
    saved = tmp_path / "tiny_saved"
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["one", None, "three", ""], "n": [1, 2, 3, 4]}),
            "test": datasets.Dataset.from_dict({"text": ["held out"], "n": [5]}),
        }
    )
    dd.save_to_disk(str(saved))
    return saved


def _read(
    spec: str, cache_dir: Path, streaming: bool, hf_split: str = "train", **policy
) -> tuple[list[tuple[str, str, str]], ReadContext]:
    ctx = ReadContext(**policy)
    with Fetcher(cache_dir, retries=0, backoff_s=0.0, timeout_s=5.0, max_bytes=1 << 30, deadline_s=60.0) as fetcher:
        sources = open_sources([spec], ctx, fetcher, hf_split=hf_split, cache_dir=cache_dir, hf_streaming=streaming)
    records = [(r.key, r.source, r.text) for source in sources for r in source.records(ctx)]
    ctx.problems.raise_if_any()
    return records, ctx


def _arrow_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.arrow"))


def test_streamed_repository_gives_the_records_of_a_full_load_and_converts_nothing(tmp_path):
    spec = f"hf:{_repo(tmp_path)}"
    streamed, s_ctx = _read(spec, tmp_path / "c_stream", streaming=True)
    assert _arrow_files(tmp_path / "c_stream") == []
    full, f_ctx = _read(spec, tmp_path / "c_full", streaming=False)
    assert _arrow_files(tmp_path / "c_full" / "hf")  # the full load converts the dataset there
    assert streamed == full
    expected = [
        (f"hf:tiny_repo\x00train\x00{i * ROWS + j}", "hf:tiny_repo", text)
        for i in range(FILES)
        for j in range(ROWS)
        if (text := _text(i, j))
    ]
    assert streamed == expected
    nulls = sum(_text(0, j) is None for j in range(ROWS)) * FILES
    empty = sum(_text(0, j) == "" for j in range(ROWS)) * FILES
    assert s_ctx.skipped == f_ctx.skipped == {"null_text": nulls, "empty_text": empty}


def test_repository_version_lists_its_files(tmp_path):
    repo = _repo(tmp_path)
    ctx = ReadContext()
    with Fetcher(
        tmp_path / "c", retries=0, backoff_s=0.0, timeout_s=5.0, max_bytes=1 << 30, deadline_s=60.0
    ) as fetcher:
        (source,) = open_sources([f"hf:{repo}"], ctx, fetcher, hf_streaming=True)
        before = source.version()
        pq.write_table(pa.table({"text": ["more"], "n": [0]}), repo / "data" / "validation-00000-of-00001.parquet")
        assert before.startswith("sha256:") and source.version() != before


@pytest.mark.parametrize("streaming", [True, False])
def test_non_string_text_is_a_bad_record_streamed_or_not(tmp_path, streaming):
    spec = f"hf:{_repo(tmp_path)}"
    records, ctx = _read(spec, tmp_path / "c", streaming, text_field="n", on_bad_record="skip")
    assert records == [] and ctx.skipped == {"bad_text_type": FILES * ROWS}
    with pytest.raises(ValueError, match=r"row 0: 'n' is not a string; fix the record, or set on_bad_record='skip'"):
        _read(spec, tmp_path / "c", streaming, text_field="n")


def test_saved_dataset_streams_with_the_same_records(tmp_path):
    spec = f"hf:{_saved(tmp_path)}"
    streamed, s_ctx = _read(spec, tmp_path / "c_stream", streaming=True)
    full, f_ctx = _read(spec, tmp_path / "c_full", streaming=False)
    assert (
        streamed
        == full
        == [
            ("hf:tiny_saved\x00train\x000", "hf:tiny_saved", "one"),
            ("hf:tiny_saved\x00train\x002", "hf:tiny_saved", "three"),
        ]
    )
    assert s_ctx.skipped == f_ctx.skipped == {"null_text": 1, "empty_text": 1}
    assert _arrow_files(tmp_path / "c_stream") == []


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("make", [_repo, _saved])
def test_missing_split_and_column_name_the_spec_and_the_fix(tmp_path, make, streaming):
    spec = f"hf:{make(tmp_path)}"
    with pytest.raises(ValueError) as e:
        _read(spec, tmp_path / "c", streaming, hf_split="validation")
    assert str(e.value) == f"source {spec!r} has no split 'validation' (splits: train, test); set hf_split"
    with pytest.raises(ValueError) as e:
        _read(spec, tmp_path / "c", streaming, text_field="body")
    assert str(e.value) == f"source {spec!r} has no column 'body' (columns: 'text', 'n'); set text_field"
    if streaming:
        assert _arrow_files(tmp_path / "c") == []
