"""Remote sources against a real HTTP server on 127.0.0.1, and fsspec's in-memory filesystem."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest

from lmcore.data.corpus import CorpusConfig, build_raw_corpus, source_version
from lmcore.data.sources.fetch import Fetcher
from lmcore.io import read_parquet_rows

FAST = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5.0}
FETCH = {**FAST, "max_bytes": 1 << 30, "deadline_s": 60.0}  # Fetcher takes the download limits too


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, tuple[bytes, str | None]] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.fail_next = 0  # answer this many requests with 503
        self.truncate_next = 0  # cut this many GET bodies short
        self.head_allowed = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        srv = self.server
        srv.calls[(self.command, self.path)] += 1
        if srv.fail_next > 0:
            srv.fail_next -= 1
            self.send_error(503, "try later")
            return
        if not body and not srv.head_allowed:
            self.send_error(405)
            return
        if self.path not in srv.files:
            self.send_error(404)
            return
        data, etag = srv.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        if body and srv.truncate_next > 0:
            srv.truncate_next -= 1
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        elif body:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = f"/lmcore-test-{uuid.uuid4().hex[:8]}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _jsonl(*texts: str) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def _rows(out: Path, manifest: dict) -> list[dict]:
    return list(read_parquet_rows([out / s["path"] for s in manifest["shards"]]))


def _cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def test_etag_cache_reuses_the_download_and_refetches_when_the_etag_changes(server, tmp_path):
    server.files["/data/a.jsonl"] = (_jsonl("one"), '"v1"')
    url = server.url("/data/a.jsonl")
    with Fetcher(tmp_path, **FETCH) as fetcher:
        first = fetcher.fetch(url)
        second = fetcher.fetch(url)
        assert first == second and first.version == 'etag:"v1"' and first.path.read_bytes() == _jsonl("one")
        assert server.calls[("GET", "/data/a.jsonl")] == 1
        server.files["/data/a.jsonl"] = (_jsonl("two"), '"v2"')
        third = fetcher.fetch(url)
    assert third.version == 'etag:"v2"' and third.path.read_bytes() == _jsonl("two")
    assert server.calls[("GET", "/data/a.jsonl")] == 2
    assert _cached_files(tmp_path) == [third.path]  # the stale copy is gone


def test_503_twice_then_success_is_retried(server, tmp_path):
    server.files["/a.txt"] = (b"hello", '"e"')
    server.fail_next = 2
    with Fetcher(tmp_path, retries=3, backoff_s=0.01, timeout_s=5.0, max_bytes=1 << 30, deadline_s=60.0) as fetcher:
        got = fetcher.fetch(server.url("/a.txt"))
    assert got.path.read_bytes() == b"hello"
    assert server.calls[("HEAD", "/a.txt")] == 3


def test_persistent_503_fails_after_the_retries_naming_the_url(server, tmp_path):
    server.files["/a.txt"] = (b"hello", '"e"')
    server.fail_next = 100
    with pytest.raises(ConnectionError, match=r"/a\.txt after 3 attempt\(s\): HTTP 503.*retries"):
        Fetcher(tmp_path, **FETCH).fetch(server.url("/a.txt"))


def test_unreachable_url_is_a_quick_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    url = f"http://127.0.0.1:{port}/corpus.jsonl"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"could not reach {url} after 3 attempt"):
        build_raw_corpus(CorpusConfig(sources=(url,), **FAST), tmp_path / "out", tmp_path / "cache")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_remote_file_is_file_not_found_without_retries(server, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"/nope\.txt: HTTP 404"):
        Fetcher(tmp_path, **FETCH).fetch(server.url("/nope.txt"))
    assert server.calls[("HEAD", "/nope.txt")] == 1


def test_a_broken_download_is_retried_and_never_leaves_a_whole_looking_file(server, tmp_path):
    server.files["/big.txt"] = (b"x" * 100_000, '"big"')
    server.truncate_next = 1
    with Fetcher(tmp_path, **FETCH) as fetcher:
        assert fetcher.fetch(server.url("/big.txt")).path.read_bytes() == b"x" * 100_000
    server.files["/cut.txt"] = (b"y" * 100_000, '"cut"')
    server.truncate_next = 100
    with pytest.raises(ConnectionError, match=r"cut\.txt"):
        Fetcher(tmp_path, **FETCH).fetch(server.url("/cut.txt"))
    assert [p.name for p in _cached_files(tmp_path)] == [p.name for p in _cached_files(tmp_path) if "big" in p.name]


def test_without_validator_the_version_is_the_content_digest(server, tmp_path):
    server.files["/plain.txt"] = (b"same body", None)
    server.head_allowed = False  # also exercises the fallback when HEAD is refused
    with Fetcher(tmp_path, **FETCH) as fetcher:
        a, b = fetcher.fetch(server.url("/plain.txt")), fetcher.fetch(server.url("/plain.txt"))
    assert a.version == b.version and a.version.startswith("sha256:") and a.path == b.path
    assert server.calls[("GET", "/plain.txt")] == 2  # nothing to revalidate against


def test_build_reads_a_remote_file_and_source_version_needs_no_body(server, tmp_path):
    server.files["/corpus/chat.jsonl.gz"] = (gzip.compress(_jsonl("alpha", "beta"), mtime=0), '"abc"')
    url = server.url("/corpus/chat.jsonl.gz")
    config = CorpusConfig(sources=(url,), **FAST)
    manifest = build_raw_corpus(config, tmp_path / "out", tmp_path / "cache")
    rows = _rows(tmp_path / "out", manifest)
    assert [r["text"] for r in rows] == ["alpha", "beta"]
    assert {r["source"] for r in rows} == {f"127.0.0.1:{server.server_address[1]}/corpus/chat.jsonl.gz"}
    assert manifest["sources"][0]["version"] == 'etag:"abc"'
    gets = server.calls[("GET", "/corpus/chat.jsonl.gz")]
    assert source_version(url, config) == 'etag:"abc"'
    assert server.calls[("GET", "/corpus/chat.jsonl.gz")] == gets
    again = build_raw_corpus(config, tmp_path / "out2", tmp_path / "cache")
    assert server.calls[("GET", "/corpus/chat.jsonl.gz")] == gets  # served from the cache
    assert [r["doc_id"] for r in _rows(tmp_path / "out2", again)] == [r["doc_id"] for r in rows]


def test_remote_url_with_unknown_file_type_is_an_error(server, tmp_path):
    server.files["/download"] = (b"x", '"e"')
    with pytest.raises(ValueError, match=r"cannot tell how to read .*/download from its name"):
        build_raw_corpus(CorpusConfig(sources=(server.url("/download"),), **FAST), tmp_path / "o", tmp_path / "c")


def test_fsspec_directory_and_glob(memfs, tmp_path):
    fs, root = memfs
    fs.pipe(f"{root}/books/a.txt", b"book a")
    fs.pipe(f"{root}/books/sub/b.jsonl", _jsonl("b1", "b2"))
    fs.pipe(f"{root}/books/.hidden.txt", b"hidden")
    config = CorpusConfig(sources=(f"memory://{root}/books",), **FAST)
    manifest = build_raw_corpus(config, tmp_path / "out", tmp_path / "cache")
    rows = _rows(tmp_path / "out", manifest)
    assert [(r["source"], r["text"]) for r in rows] == [
        (f"{root[1:]}/books/a.txt", "book a"),
        (f"{root[1:]}/books/sub/b.jsonl", "b1"),
        (f"{root[1:]}/books/sub/b.jsonl", "b2"),
    ]
    version = manifest["sources"][0]["version"]
    assert version.startswith("sha256:") and source_version(config.sources[0], config) == version
    glob = CorpusConfig(sources=(f"memory://{root}/books/*.txt",), **FAST)
    assert [r["text"] for r in _rows(tmp_path / "g", build_raw_corpus(glob, tmp_path / "g", tmp_path / "cache"))] == [
        "book a"
    ]
    fs.pipe(f"{root}/books/a.txt", b"book a, revised")
    assert source_version(config.sources[0], config) != version


def test_fsspec_missing_path_is_file_not_found(memfs, tmp_path):
    _, root = memfs
    with pytest.raises(FileNotFoundError, match=rf"memory://{root}/nothing\.txt"):
        build_raw_corpus(CorpusConfig(sources=(f"memory://{root}/nothing.txt",), **FAST), tmp_path / "o", tmp_path)


def test_one_run_reaches_and_downloads_each_url_once_whatever_its_partitions(server, tmp_path):
    """raw_corpus asks for every URL's version in each of its 16 partitions, then reads it in the partition that
    holds it: a 5 KB file without validators used to cost 33 GETs and 50 HEADs a run, and a failing URL was
    retried in every partition. Within one run (scope) each URL is reached and downloaded once, and its error is
    given again at once."""
    from lmcore.data.corpus import corpus_version, partition_units
    from lmcore.data.partitions import PARTITIONS

    server.files["/plain.jsonl"] = (_jsonl("no etag, no last-modified, " * 40), None)
    config = CorpusConfig(sources=(server.url("/plain.jsonl"),), **FAST)
    cache = tmp_path / "cache"
    units = {p: partition_units(config, p, cache, "run-1") for p in PARTITIONS}
    (owner,) = [p for p, u in units.items() if u]
    manifest = build_raw_corpus(config, tmp_path / "raw", cache, partition=owner, scope="run-1")
    assert manifest["documents"] == 1 and corpus_version(config, cache, "run-1")[1]
    assert server.calls[("GET", "/plain.jsonl")] == 1 and server.calls[("HEAD", "/plain.jsonl")] == 1, server.calls

    partition_units(config, owner, cache, "run-2")  # another run asks again
    assert server.calls[("GET", "/plain.jsonl")] == 2

    server.fail_next = 10_000
    broken = CorpusConfig(sources=(server.url("/down.jsonl"),), **FAST)
    errors = set()
    for p in PARTITIONS:
        with pytest.raises(ConnectionError) as e:
            partition_units(broken, p, cache, "run-3")
        errors.add(str(e.value))
    assert len(errors) == 1 and "/down.jsonl" in errors.pop()
    assert server.calls[("HEAD", "/down.jsonl")] == FAST["retries"] + 1  # the retries of one partition, not 16
