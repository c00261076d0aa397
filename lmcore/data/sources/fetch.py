"""Remote files: versions, listings and downloads into a local cache, with retries.

A remote file's *version* is its validator: the ETag, else Last-Modified (HTTP), else
what the fsspec backend reports (``ETag``/``etag``/``md5Hash``/``LastModified``/
``last_modified``/``updated``/``mtime``); only when there is none is it the sha256 of the
body, which costs a download. ``version`` is cheap whenever a validator exists (one HEAD
or ``info`` call), so a sensor can poll it.

Downloads land in ``cache_dir/remote/<sha256(url)>/<sha256(version)>-<name>``, written
through :func:`lmcore.io.atomic_path`, so a broken download never leaves a file that looks
whole. A cached copy whose validator still matches is reused without a GET; older copies
of the same URL are deleted after a successful download. Connection errors, timeouts,
HTTP 5xx and 429 are retried with exponential backoff (``backoff_s * 2**attempt``); after
the last attempt a :class:`ConnectionError` names the URL. HTTP(S) goes through
``requests``; every other protocol through fsspec. This module knows nothing of formats.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from lmcore.io import atomic_path, exclusive_lock, read_json, write_json

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_FS_VALIDATORS = ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "updated", "mtime")
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
T = TypeVar("T")


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 5xx, truncated body)."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    path: Path
    """The cached local copy."""
    version: str
    """``etag:…``, ``last-modified:…``, ``<fsspec key>:…`` or ``sha256:…`` of the body."""


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def url_name(url: str) -> str:
    """The last path component of a URL, unquoted (it decides the file format)."""
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


class Fetcher:
    """Downloads and versions remote files; ``cache_dir=None`` uses a private temporary cache."""

    def __init__(
        self,
        cache_dir: Path | None,
        *,
        retries: int,
        backoff_s: float,
        timeout_s: float,
        max_bytes: int,
        deadline_s: float,
        scope: str | None = None,
    ) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        """A body larger than this is refused (``max_download_bytes``)."""
        self.deadline_s = deadline_s
        """One download may take this long, in seconds, however slowly its bytes come (``download_deadline_s``)."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lmcore-fetch-")
            cache_dir = Path(self._tmp.name)
        self.cache_dir = Path(cache_dir) / "remote"
        self.scope = scope
        """One run's name (its id): within it each URL is reached and downloaded once, by whichever process of the
        run asks first, and its failure is reported once; the others get the same answer (:meth:`_once`)."""
        self._session = None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public -------------------------------------------------------------------------------

    def version(self, url: str) -> str:
        """The validator of ``url``; downloads the body only when the server gives none."""
        return self._validator(url) or self.fetch(url).version

    def fetch(self, url: str) -> RemoteFile:
        """A local copy of ``url``, from the cache when its validator still matches."""
        path, version = self._once(url, "fetch", lambda: self._fetch(url))
        if not Path(path).exists():  # removed since (another URL's download cleans its own folder only)
            path, version = self._fetch(url)
        return RemoteFile(url, Path(path), version)

    def _fetch(self, url: str) -> tuple[str, str]:
        validator = self._validator(url)
        if validator is not None:
            cached = self._cache_path(url, validator)
            if cached.exists():
                log.debug("cache hit for %s (%s)", url, validator)
                return str(cached), validator
        got = self._retry(url, "download", lambda: self._download(url))
        return str(got.path), got.version

    def list_files(self, url: str) -> list[tuple[str, str]] | None:
        """``(relative_path, file_url)`` under a remote directory or glob, sorted; None for a single file.

        HTTP has no listing: an http(s) URL is always a single file.
        """
        if is_http(url):
            return None
        fs, path = _url_to_fs(url)
        if any(c in path for c in "*?["):
            root = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
            found = self._retry(url, "list", lambda: _fs_call(url, lambda: [p for p in fs.glob(path) if fs.isfile(p)]))
        elif self._retry(url, "reach", lambda: _fs_call(url, lambda: fs.isdir(path))):
            root = path.rstrip("/")
            found = self._retry(url, "list", lambda: _fs_call(url, lambda: fs.find(path)))
        else:
            return None
        rels = [(p[len(root) :].lstrip("/"), fs.unstrip_protocol(p)) for p in found]
        return sorted((rel, u) for rel, u in rels if not any(part.startswith(".") for part in rel.split("/")))

    # --- internals ----------------------------------------------------------------------------

    def _once(self, url: str, what: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per URL and :attr:`scope`, across processes (a lock per URL); its JSON result, or
        its error, is kept in a dot file beside the URL's downloads and given to every later call of the scope."""
        if self.scope is None:
            return compute()
        folder = self.cache_dir / _short(url, 24)
        memo = folder / f".{what}-{_short(self.scope, 16)}.json"
        with exclusive_lock(folder / f".{what}.lock"):
            if memo.exists():
                kept = read_json(memo)
                if "error" in kept:
                    raise _ERRORS.get(kept["type"], ConnectionError)(kept["error"])
                return kept["value"]
            try:
                value = compute()
            except tuple(_ERRORS.values()) as e:
                write_json(memo, {"error": str(e), "type": type(e).__name__})
                raise
            write_json(memo, {"value": value})
        for old in folder.glob(f".{what}-*.json"):  # other runs' answers, a day on
            if time.time() - old.stat().st_mtime > 86400:
                old.unlink(missing_ok=True)
        return value

    def _validator(self, url: str) -> str | None:
        return self._once(url, "validator", lambda: self._reach(url))

    def _reach(self, url: str) -> str | None:
        if is_http(url):
            return self._retry(url, "reach", lambda: self._http_head_validator(url))
        fs, path = _url_to_fs(url)
        return _fs_validator(self._retry(url, "reach", lambda: _fs_call(url, lambda: fs.info(path))))

    def _download(self, url: str) -> RemoteFile:
        if is_http(url):
            with self._http(url, "GET") as resp:
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and not resp.headers.get("Content-Encoding") else None
                return self._store(url, _http_validator(resp.headers), _http_chunks(url, resp), expected)
        fs, path = _url_to_fs(url)
        info = _fs_call(url, lambda: fs.info(path))
        with _fs_call(url, lambda: fs.open(path, "rb")) as src:
            chunks = iter(lambda: _fs_call(url, lambda: src.read(_CHUNK)), b"")
            return self._store(url, _fs_validator(info), chunks, info.get("size"))

    def _store(self, url: str, validator: str | None, chunks: Iterable[bytes], expected: int | None) -> RemoteFile:
        url_dir = self.cache_dir / _short(url, 24)
        staging = self._cache_path(url, validator) if validator else url_dir / f".download-{uuid.uuid4().hex[:12]}"
        if expected is not None and expected > self.max_bytes:
            raise ValueError(
                f"{url}: {expected:,} bytes, over max_download_bytes={self.max_bytes:,}; raise it to read this file"
            )
        digest, size, deadline = hashlib.sha256(), 0, time.monotonic() + self.deadline_s
        with atomic_path(staging) as tmp, open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if size > self.max_bytes:
                    raise ValueError(
                        f"{url}: more than max_download_bytes={self.max_bytes:,} bytes; stopped there. "
                        "Raise it to read this file"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{url}: the download took over download_deadline_s={self.deadline_s:g} s "
                        f"({size:,} bytes so far); raise it for a slow server"
                    )
            if expected is not None and size != expected:
                raise _Transient(f"the download stopped after {size} of {expected} bytes")
        version = validator or f"sha256:{digest.hexdigest()}"
        final = self._cache_path(url, version)
        if staging != final:
            os.replace(staging, final)
        for old in url_dir.iterdir():
            if old != final and not old.name.startswith("."):
                old.unlink(missing_ok=True)
        return RemoteFile(url, final, version)

    def _cache_path(self, url: str, version: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", url_name(url))[-100:] or "file"
        return self.cache_dir / _short(url, 24) / f"{_short(version, 16)}-{name}"

    def _http_head_validator(self, url: str) -> str | None:
        resp = self._http(url, "HEAD")
        if resp is None:
            return None
        with contextlib.closing(resp):
            return _http_validator(resp.headers)

    def _http(self, url: str, method: str):
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers["User-Agent"] = "lmpipe-lmcore/0.1"
        try:
            resp = self._session.request(method, url, stream=True, timeout=self.timeout_s, allow_redirects=True)
        except requests.RequestException as e:
            raise _Transient(f"{type(e).__name__}: {e}") from e
        if method == "HEAD" and resp.status_code in (405, 501):
            resp.close()
            return None  # no HEAD support: the version comes from the body
        if resp.status_code >= 500 or resp.status_code == 429:
            resp.close()
            raise _Transient(f"HTTP {resp.status_code} {resp.reason}")
        if resp.status_code in (404, 410):
            resp.close()
            raise FileNotFoundError(f"{url}: HTTP {resp.status_code} {resp.reason}; check the URL")
        if resp.status_code >= 400:
            resp.close()
            raise ValueError(f"{url}: HTTP {resp.status_code} {resp.reason}; check the URL and its access rights")
        return resp

    def _retry(self, url: str, what: str, fn: Callable[[], T]) -> T:
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return fn()
            except _Transient as e:
                last = e
                log.warning("%s %s: attempt %d/%d failed: %s", what, url, attempt + 1, attempts, e)
        raise ConnectionError(
            f"could not {what} {url} after {attempts} attempt(s): {last}. Check the URL and the network, "
            "or raise `retries`/`timeout_s` for a slow or flaky server."
        ) from last


_ERRORS: dict[str, type[Exception]] = {
    e.__name__: e for e in (ConnectionError, TimeoutError, ValueError, FileNotFoundError, PermissionError, OSError)
}
"""The errors a fetch reports, by name: what :meth:`Fetcher._once` keeps and raises again."""


def _short(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _url_to_fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def _fs_call(url: str, fn: Callable[[], T]) -> T:
    """Run an fsspec call; transient OS errors become retryable, 'not found' names the URL."""
    try:
        return fn()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{url}: no such file or directory; check the URL") from e
    except _PERMANENT_OS_ERRORS:
        raise
    except (OSError, TimeoutError) as e:
        raise _Transient(f"{type(e).__name__}: {e}") from e


def _fs_validator(info: dict) -> str | None:
    return next((f"{key.lower()}:{info[key]}" for key in _FS_VALIDATORS if info.get(key)), None)


def _http_validator(headers) -> str | None:
    if etag := headers.get("ETag"):
        return f"etag:{etag}"
    if modified := headers.get("Last-Modified"):
        return f"last-modified:{modified}"
    return None


def _http_chunks(url: str, resp) -> Iterator[bytes]:
    """The body as it arrives, at most ``_CHUNK`` bytes a piece (``read1``): a body that trickles in still reaches
    the size and deadline checks between pieces, and one that never ends is never held whole."""
    import requests
    import urllib3

    try:
        while chunk := resp.raw.read1(_CHUNK, decode_content=True):
            yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        raise _Transient(f"the connection broke during the download of {url}: {e}") from e
