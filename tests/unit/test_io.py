import pytest

from lmcore.io import ParquetShardWriter, atomic_path, publish_dir, read_parquet_rows, staging_dir, write_json


def test_atomic_path_leaves_nothing_on_failure_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_parquet_writer_reads_back_and_rotates(tmp_path):
    rows = [{"doc_id": str(i), "source": "s", "text": "x" * 100} for i in range(100)]
    with ParquetShardWriter(tmp_path, max_bytes=2000, batch_rows=10) as w:
        for r in rows:
            w.write(r)
    assert len(w.shards) > 1 and sum(s["rows"] for s in w.shards) == 100
    assert list(read_parquet_rows([tmp_path / s["path"] for s in w.shards])) == rows


def test_parquet_writer_failure_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError), ParquetShardWriter(tmp_path, batch_rows=1) as w:
        w.write({"doc_id": "1", "source": "s", "text": "t"})
        raise RuntimeError("crash")
    assert not list(tmp_path.glob("*.parquet"))


def test_publish_is_content_addressed_and_never_overwrites(tmp_path):
    paths = []
    for _ in range(2):
        with staging_dir(tmp_path) as stage:
            write_json(stage / "manifest.json", {"a": 1})
            paths.append(publish_dir(stage, tmp_path))
    assert paths[0] == paths[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths[0][0].name]


def test_publish_without_manifest_fails_and_cleans_up(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"), staging_dir(tmp_path) as stage:
        (stage / "half.parquet").write_text("x")
        publish_dir(stage, tmp_path)
    assert list(tmp_path.iterdir()) == []
