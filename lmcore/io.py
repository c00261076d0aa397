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
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once; mkstemp/mkdtemp ignore it

ProgressFn = Callable[[str, int, "int | None"], None]
"""Progress callback: ``(what, completed_so_far, total_or_None)``; completed is cumulative."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
        os.chmod(tmp_path, 0o666 & ~_UMASK)
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


def publish_dir(staging: str | Path, parent: str | Path, manifest: str = "manifest.json") -> tuple[Path, str]:
    """Rename a finished staging directory to ``parent/<digest[:16]>``, content-addressed.

    The digest is the sha256 of its manifest, which lists the digest of every file, so
    the same content always lands at the same path and an existing version is never
    overwritten, unless it is damaged (:func:`verify_dir`): then this copy replaces it. Every file's sha256 goes in
    :data:`INVENTORY` first. Returns ``(final_path, digest)``.
    """
    staging, parent = Path(staging), Path(parent)
    manifest_path = staging / manifest
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: stage finished without writing its manifest")
    digest = sha256_file(manifest_path)
    write_inventory(staging)
    final = parent / digest[:16]
    os.chmod(staging, 0o777 & ~_UMASK)
    try:
        os.rename(staging, final)
    except OSError:
        if not (final / manifest).exists():
            raise
        try:
            verify_dir(final)
            shutil.rmtree(staging)  # identical content is already published (possibly by a concurrent run)
        except ValueError:  # published before, and damaged since: this copy takes its place
            damaged = final.with_name(f"{STAGING_PREFIX}{final.name}.damaged")
            os.rename(final, damaged)
            os.rename(staging, final)
            shutil.rmtree(damaged, ignore_errors=True)
    return final, digest


INVENTORY = "SHA256SUMS"
"""Every file of a published directory with its sha256, in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks
it by hand); readers check what they open against it (:func:`verify_dir`)."""
_VERIFIED: set[tuple[str, int, int, int]] = set()
"""Files this process has checked, by path, inode, size and mtime: each is read once, however often it is opened."""


def write_inventory(root: str | Path) -> None:
    root = Path(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != INVENTORY)
    with atomic_path(root / INVENTORY) as tmp:
        tmp.write_text("".join(f"{sha256_file(root / rel)}  {rel}\n" for rel in files), encoding="utf-8")


def verify_dir(root: str | Path) -> None:
    """ValueError naming the first file of a published directory that is missing or differs from its
    :data:`INVENTORY` (edited, truncated, a disk error), with what to do. A directory published before inventories
    existed passes unchecked."""
    root = Path(root)
    try:
        lines = (root / INVENTORY).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    asset = root.parent.name
    fix = (f"materialize {asset} again (lmpipe run --select '{asset}+'): a damaged version is rebuilt, not reused; "
           "if the message then names an upstream asset's file, materialize that one first")  # fmt: skip
    for line in lines:
        expected, rel = line.split("  ", 1)
        verify_file(root / rel, expected, f"{root / INVENTORY} lists every file. {fix}")


def verify_file(path: str | Path, expected: str, fix: str) -> None:
    """ValueError naming ``path`` when it is missing or its sha256 is not ``expected`` (with ``fix``: what to do);
    read once per process while its inode, size and mtime stay the same."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{path} is missing from a published artifact; {fix}") from None
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    if (actual := sha256_file(path)) != expected:
        shared = f" It is hard-linked into {st.st_nlink - 1} other published file(s), damaged too." * (st.st_nlink > 1)
        raise ValueError(
            f"{path} is damaged: its sha256 is {actual[:12]}, but it was {expected[:12]} when it was written (edited, "
            f"truncated or a disk error).{shared} {fix}"
        )
    _VERIFIED.add(key)


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
            self._writer = pq.ParquetWriter(self._tmp_path, self.schema, compression="zstd")
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
