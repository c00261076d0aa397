"""Atomic file writes, digests and the Parquet document-shard writer.

Every artifact is written under a temporary name in its final directory and renamed
into place, so a crash never leaves a half file that looks whole. Manifests are the
last thing a stage writes. This module must not know about any particular stage.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_CHUNK = 1 << 20
UMASK = os.umask(0o022)
"""The process umask, read once at import (mkstemp and mkdtemp ignore it): what published files get."""
os.umask(UMASK)

ProgressFn = Callable[[str, int, "int | None"], None]
"""Progress callback: ``(what, completed_so_far, total_or_None)``; completed is cumulative."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; it replaces ``path`` only if the block succeeds.

    A failed stage leaves the previous ``path`` exactly as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=path.parent))
    try:
        yield staging
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(staging, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


STAGING_PREFIX = ".staging-"


@contextlib.contextmanager
def staging_dir(parent: str | Path) -> Iterator[Path]:
    """Yield a fresh staging directory under ``parent``; whatever is left of it is removed on exit.

    The directory is flock-ed for as long as the block runs, so a process killed inside it
    (``kill -9``, out of memory) leaves a directory nobody holds, and the next ``staging_dir``
    on the same parent (or :func:`remove_stale_staging`) removes it. A live run's is never touched.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    staging, fd = _locked_staging(parent)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(fd)  # releases the lock; the directory, if published, lives on under its new name


def _locked_staging(parent: Path) -> tuple[Path, int]:
    """A new staging directory and the descriptor holding its exclusive lock."""
    import fcntl

    while True:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
        try:
            fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # a sweeper took it for stale before we could lock it
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(staging)):
                return staging, fd
        except FileNotFoundError:
            pass
        os.close(fd)  # removed between mkdtemp and flock: take another


def remove_stale_staging(parent: str | Path) -> list[Path]:
    """Remove the staging directories under ``parent`` whose process is gone (no one holds their lock).

    Returns what was removed. Safe while other processes stage there: a held directory is skipped.
    """
    import fcntl

    removed = []
    for path in sorted(Path(parent).glob(STAGING_PREFIX + "*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live run's
            continue
        try:
            shutil.rmtree(path)
            removed.append(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_A_DIR = (errno.ENOTDIR, errno.EEXIST)


def explain_disk_error(exc: BaseException, where: str | Path, elsewhere: str = "write somewhere else") -> str | None:
    """What to do about a write under ``where`` that failed for a full disk, a read-only place or a file
    where a directory belongs; None for any other error. The cause chain is searched, since SQLite's
    errors arrive wrapped. ``elsewhere`` is the alternative offered (e.g. how to choose another directory)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        code, text = getattr(e, "errno", None), str(e)
        path = getattr(e, "filename", None) or where
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        if code in _FULL or any(m in text for m in ("No space left", "database or disk is full", "disk I/O error")):
            return (
                f"{path}: the disk is full ({first}); free space on it (old artifact versions can go), or {elsewhere}"
            )
        if path != where and not str(path).startswith(f"{where}{os.sep}"):
            continue  # not a write under ``where`` (reading a source without permission, say)
        if code in _READ_ONLY or "readonly database" in text or "Read-only file system" in text:
            return f"{path}: cannot write there ({first}); make {where} writable, or {elsewhere}"
        if code in _NOT_A_DIR:
            return f"{path}: a file is where a directory must be ({first}); move it away, or {elsewhere}"
    return None


@contextlib.contextmanager
def disk_errors(where: str | Path, elsewhere: str = "write somewhere else") -> Iterator[None]:
    """Re-raise a write error of the block that :func:`explain_disk_error` explains as an OSError saying what to do."""
    try:
        yield
    except OSError as exc:
        message = explain_disk_error(exc, where, elsewhere)
        if message is None:
            raise
        raise OSError(exc.errno, message) from exc


@contextlib.contextmanager
def exclusive_lock(path: str | Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing); wait for a holder to finish.

    ``on_wait`` is called once if another process holds the lock, so callers can say why they wait.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def digest_of(obj: Any) -> str:
    """sha256 of an object's canonical JSON form (config hashes, manifest digests)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("spec", pa.string(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
    ]
)
LARGE_COLUMNS = frozenset({"text"})
"""Columns that hold whole documents: written without a dictionary or statistics (see ParquetShardWriter)."""


class ParquetShardWriter:
    """Buffered writer of row dicts into numbered zstd Parquet shards, rotated by size.

    Shards are named ``{prefix}-{index:05d}.parquet``; each is written atomically when it
    closes. ``shards`` lists ``{"path", "rows", "sha256"}`` for the manifest the caller
    writes last. Use as a context manager; on an exception nothing partial is renamed in.
    """

    def __init__(
        self,
        out_dir: str | Path,
        schema: pa.Schema = DOCUMENT_SCHEMA,
        *,
        prefix: str = "part",
        max_bytes: int = 64 << 20,
        batch_rows: int = 2048,
    ) -> None:
        if max_bytes <= 0 or batch_rows <= 0:
            raise ValueError(f"max_bytes and batch_rows must be positive, got {max_bytes}, {batch_rows}")
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.batch_rows = batch_rows
        self.shards: list[dict[str, Any]] = []
        self.rows = 0
        # Documents are unique and may be hundreds of MB: a dictionary page or min/max statistics of ``text``
        # would copy each one twice more and help no reader.
        self._small = [name for name in schema.names if name not in LARGE_COLUMNS]
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: contextlib.AbstractContextManager[Path] | None = None
        self._tmp_path: Path | None = None
        self._shard_rows = 0
        self._shard_bytes = 0

    def __enter__(self) -> ParquetShardWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self._buffer_bytes += sum(len(v) for v in row.values() if isinstance(v, str))
        if len(self._buffer) >= self.batch_rows or self._buffer_bytes >= (8 << 20):
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            name = f"{self.prefix}-{len(self.shards):05d}.parquet"
            self._tmp = atomic_path(self.out_dir / name)
            self._tmp_path = self._tmp.__enter__()
            small = self._small
            self._writer = pq.ParquetWriter(
                self._tmp_path, self.schema, compression="zstd", use_dictionary=small, write_statistics=small
            )
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        self._writer.write_table(table)
        self._shard_rows += len(self._buffer)
        self._shard_bytes += self._buffer_bytes
        self.rows += len(self._buffer)
        self._buffer, self._buffer_bytes = [], 0
        if self._shard_bytes >= self.max_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        assert self._tmp is not None and self._tmp_path is not None
        self._writer.close()
        digest = sha256_file(self._tmp_path)
        self._tmp.__exit__(None, None, None)
        name = f"{self.prefix}-{len(self.shards):05d}.parquet"
        self.shards.append({"path": name, "rows": self._shard_rows, "sha256": digest})
        self._writer, self._tmp, self._tmp_path = None, None, None
        self._shard_rows, self._shard_bytes = 0, 0

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
            self._close_shard()
        elif self._writer is not None:
            assert self._tmp is not None
            self._writer.close()
            self._tmp.__exit__(exc_type, exc, tb)


def read_parquet_rows(paths: list[Path], columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream rows of several Parquet files batch by batch (bounded memory)."""
    for path in paths:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(columns=columns, batch_size=1024):
            yield from batch.to_pylist()


def iter_texts(paths: list[Path], batch_rows: int = 256) -> Iterator[str]:
    """Stream the ``text`` column of Parquet document shards (bounded memory)."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=batch_rows):
            yield from batch.column(0).to_pylist()


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a hard link of ``src`` (no bytes copied), or a copy where links are impossible (another
    filesystem). Published artifacts are never modified, so sharing their files is safe."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
