import pytest

from lmcore.io import ParquetShardWriter, atomic_path, read_parquet_rows, staging_dir, write_json
from lmcore.publish import publish_dir


def test_atomic_path_leaves_nothing_on_failure_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_parquet_writer_reads_back_and_rotates(tmp_path):
    rows = [{"doc_id": str(i), "source": "s", "spec": "s", "text": "x" * 100} for i in range(100)]
    with ParquetShardWriter(tmp_path, max_bytes=2000, batch_rows=10) as w:
        for r in rows:
            w.write(r)
    assert len(w.shards) > 1 and sum(s["rows"] for s in w.shards) == 100
    assert list(read_parquet_rows([tmp_path / s["path"] for s in w.shards])) == rows


def test_parquet_writer_failure_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError), ParquetShardWriter(tmp_path, batch_rows=1) as w:
        w.write({"doc_id": "1", "source": "s", "spec": "s", "text": "t"})
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


def _publish_same_content(parent, barrier):
    with staging_dir(parent) as stage:
        write_json(stage / "manifest.json", {"same": True})
        (stage / "data.bin").write_bytes(b"x" * 1000)
        barrier.wait()
        return publish_dir(stage, parent)


def test_concurrent_publishes_of_the_same_content_both_succeed(tmp_path):
    import threading

    barrier = threading.Barrier(4)
    results, errors = [], []

    def worker():
        try:
            results.append(_publish_same_content(tmp_path, barrier))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({r[0] for r in results}) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0][0].name]
    assert (results[0][0] / "data.bin").read_bytes() == b"x" * 1000


def test_exclusive_lock_makes_the_second_holder_wait(tmp_path):
    import multiprocessing as mp
    import time

    from lmcore.io import exclusive_lock

    ctx = mp.get_context("fork")
    started = ctx.Event()

    def holder():
        with exclusive_lock(tmp_path / "run.lock"):
            started.set()
            time.sleep(1.0)

    p = ctx.Process(target=holder)
    p.start()
    started.wait(10)
    waited = []
    t0 = time.monotonic()
    with exclusive_lock(tmp_path / "run.lock", on_wait=lambda: waited.append(True)):
        elapsed = time.monotonic() - t0
    p.join()
    assert waited == [True] and elapsed > 0.3
