"""Corpus sources: spec strings become versioned streams of records with stable keys.

Spec grammar (one string per entry of ``CorpusConfig.sources``)::

    builtin:python-docs      the running Python's documentation (see lmcore.data.sources.builtin)
    hf:NAME  hf:NAME:CONFIG  a Hugging Face dataset via datasets.load_dataset (split hf_split)
    hf:/path/to/saved        a dataset saved with Dataset.save_to_disk (datasets.load_from_disk)
    hf:/path/to/repo         a local directory laid out like a Hub dataset repository (data/*.parquet ...)
    PATH  DIR  GLOB          local file, directory (recursive) or glob; file://PATH works too
    URL                      any fsspec URL; http(s):// is one file, s3:// gs:// memory:// ...
                             may also name a directory or a glob
    LABEL=SPEC               any file or hf spec with an explicit label (see below)

Files are read in sorted order of their path relative to the spec's *root* (the directory
named, the directory holding a named file, or a glob's fixed prefix); hidden entries (a
path part starting with ``.``) are passed over; in a directory or glob, files of an
unsupported type are skipped and counted (``unsupported_format``), a named file of one is
an error. Remote files are downloaded into the cache first (lmcore.data.sources.fetch).

Every record carries a *key* that is hashed into its ``doc_id``. It does not depend on
where the data lives on this machine: ``{label}\\0{relative path}[!member]\\0{index}`` where
the label is the root's base name (local) or host and path (URL), so naming a directory
or one of its files gives the same ids, and files added to a directory leave the ids of
the others alone. Builtin keys are ``python-docs\\0{topic|module}\\0{name}``, Hugging Face
keys ``hf:{label}\\0{split}\\0{row}`` (the same when streamed, ``hf_streaming``). Two sources that
would claim the same label and path are an error; ``LABEL=SPEC`` separates them. A source's
*version* is ``sha256:`` of a file's bytes, for many files the sha256 over sorted ``(relative
path, file version)``, a remote file's validator (see fetch), ``hf-revision:`` of a Hub
dataset, or builtin.version().
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from lmcore.data.sources import builtin
from lmcore.data.sources.fetch import Fetcher, url_name
from lmcore.data.sources.formats import SUPPORTED, is_supported, read_file
from lmcore.data.sources.policy import ReadContext
from lmcore.io import sha256_file

if TYPE_CHECKING:
    import datasets

    from lmcore.data.corpus import CorpusConfig

__all__ = ["Record", "ReadContext", "Source", "Spec", "open_sources", "parse_spec", "source_version"]

_LABEL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Spec:
    raw: str
    kind: str
    """``builtin``, ``hf``, ``local`` or ``remote``."""
    target: str
    """Builtin name, dataset name or path, local path or glob, or URL."""
    label: str | None = None
    hf_config: str | None = None


@dataclass(frozen=True)
class Record:
    key: str
    """Stable identity of the record within any corpus; hashed into ``doc_id``."""
    source: str
    """Human-readable origin for the ``source`` column, e.g. ``gutenberg/11-0.txt``."""
    text: str


def parse_spec(raw: str) -> Spec:
    """Parse one source spec (see the module docstring); raises ValueError on a malformed one."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"a source spec must be a non-empty string, got {raw!r}")
    label, rest = (m.group(1), m.group(2)) if (m := _LABEL.match(raw)) else (None, raw)
    if rest.startswith("builtin:"):
        if label is not None or rest[len("builtin:") :] != builtin.NAME:
            raise ValueError(f"unknown builtin source {raw!r}; the one builtin source is 'builtin:{builtin.NAME}'")
        return Spec(raw, "builtin", builtin.NAME)
    if rest.startswith("hf:"):
        body = rest[3:]
        if body.startswith(("/", ".", "~")) or re.match(r"^[A-Za-z]:[\\/]", body):
            name, config = body, ""
        else:
            name, _, config = body.partition(":")
        if not name:
            raise ValueError(f"source {raw!r} names no dataset; write hf:NAME, hf:NAME:CONFIG or hf:/path/to/saved")
        return Spec(raw, "hf", name, label, config or None)
    if rest.startswith("file://"):
        return Spec(raw, "local", unquote(rest[len("file://") :]), label)
    if _URL.match(rest):
        return Spec(raw, "remote", rest, label)
    return Spec(raw, "local", rest, label)


# --- sources --------------------------------------------------------------------------------


@dataclass
class _File:
    rel: str
    name: str
    where: str
    path: Path | None = None
    version: str | None = None


class Source:
    """One resolved spec, ready to yield records; ``claims`` are the names its keys start with."""

    def __init__(self, spec: Spec, label: str) -> None:
        self.spec = spec
        self.label = label

    @property
    def claims(self) -> list[str]:
        return [self.label]

    def version(self) -> str:
        raise NotImplementedError

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        raise NotImplementedError

    def units(self) -> list[tuple[str, str]]:
        """``(key, version)`` of each unit the source reads as a whole: a file of a file source, else the
        source itself. A unit's key is its claim, so it does not depend on where the data lives."""
        return [(self.claims[0], self.version())]

    def only(self, keys: set[str]) -> Source | None:
        """This source reading only the units named in ``keys`` (None when it has none of them)."""
        return self if self.claims[0] in keys else None


class _BuiltinSource(Source):
    def version(self) -> str:
        return builtin.version()

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        for kind, name, text in builtin.iter_documents():
            source = f"{builtin.NAME}:topics" if kind == "topic" else f"{builtin.NAME}:modules/{name}"
            if (kept := ctx.finish(text)) is not None:
                yield Record(f"{builtin.NAME}\x00{kind}\x00{name}", source, kept)


class _HFSource(Source):
    def __init__(self, spec: Spec, label: str, split: str, cache_dir: Path | None, streaming: bool) -> None:
        super().__init__(spec, label)
        self.split = split
        self.cache_dir = cache_dir
        self.streaming = streaming

    @property
    def claims(self) -> list[str]:
        return [f"hf:{self.label} split {self.split}"]

    def version(self) -> str:
        return _hf_version(self.spec)

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        for index, text in _hf_texts(self.spec, self.split, self.cache_dir, ctx, self.streaming):
            if (kept := ctx.finish(text)) is not None:
                yield Record(f"hf:{self.label}\x00{self.split}\x00{index}", f"hf:{self.label}", kept)


@dataclass
class _File:
    rel: str
    name: str
    where: str
    path: Path | None = None
    version: str | None = None


class _FileSource(Source):
    def __init__(self, spec: Spec, label: str, files: list[_File], single: bool) -> None:
        super().__init__(spec, label)
        self.files = files
        self.single = single

    @property
    def claims(self) -> list[str]:
        return [f"{self.label}/{f.rel}" for f in self.files]

    def version(self) -> str:
        versions = [(f.rel, self._file_version(f)) for f in self.files]
        return versions[0][1] if self.single else _listing_version(versions)

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        for f in self.files:
            assert f.path is not None
            self._file_version(f)  # digest the bytes that are read, not a later edit
            for member, index, text in read_file(f.path, f.name, f.where, ctx):
                rel = f"{f.rel}!{member}" if member else f.rel
                yield Record(f"{self.label}\x00{rel}\x00{index}", f"{self.label}/{rel}", text)

    def units(self) -> list[tuple[str, str]]:
        return [(f"{self.label}/{f.rel}", self._file_version(f)) for f in self.files]

    def only(self, keys: set[str]) -> Source | None:
        files = [f for f in self.files if f"{self.label}/{f.rel}" in keys]
        return _FileSource(self.spec, self.label, files, self.single) if files else None

    @staticmethod
    def _file_version(f: _File) -> str:
        if f.version is None:
            assert f.path is not None
            f.version = f"sha256:{sha256_file(f.path)}"
        return f.version


def open_sources(
    specs: Sequence[str],
    ctx: ReadContext,
    fetcher: Fetcher,
    *,
    hf_split: str = "train",
    cache_dir: Path | None = None,
    download: bool = True,
    hf_streaming: bool = False,
) -> list[Source]:
    """Resolve every spec: list files and fetch remote ones (``download=False``: only their
    versions). Problems of all specs are collected and raised together. ``hf_streaming`` reads
    Hugging Face datasets batch by batch instead of converting them to Arrow in the cache first."""
    sources = []
    for raw in specs:
        spec = parse_spec(raw)
        if spec.kind == "builtin":
            sources.append(_BuiltinSource(spec, builtin.NAME))
        elif spec.kind == "hf":
            local = _hf_local(spec)
            label = spec.label or (local.resolve().name if local else spec.target)
            if spec.hf_config and not spec.label:
                label += f":{spec.hf_config}"
            sources.append(_HFSource(spec, label, hf_split, cache_dir, hf_streaming))
        else:
            resolve = _resolve_local if spec.kind == "local" else _resolve_remote
            try:
                sources.append(resolve(spec, ctx, fetcher, download))
            except (ConnectionError, FileNotFoundError, ValueError) as e:  # collected, raised below
                if e is ctx.problems.raised:
                    raise
                ctx.problems.add(str(e), type(e))
    owner: dict[str, str] = {}
    for source in sources:
        for claim in source.claims:
            if (other := owner.setdefault(claim, source.spec.raw)) != source.spec.raw:
                ctx.problems.add(
                    f"sources {other!r} and {source.spec.raw!r} both contain {claim!r}, so its "
                    "documents would appear twice with the same doc_id; list it once, or label one: 'NAME=SPEC'"
                )
                break
    ctx.problems.raise_if_any()
    return sources


def fetcher_for(config: CorpusConfig, cache_dir: Path | None, scope: str | None = None) -> Fetcher:
    """A :class:`Fetcher` with ``config``'s retries, timeouts and download limits (``cache_dir=None``: a private
    temporary cache; ``scope``: a run's name, in which each URL is fetched once)."""
    return Fetcher(cache_dir, retries=config.retries, backoff_s=config.backoff_s, timeout_s=config.timeout_s,
                   max_bytes=config.max_download_bytes, deadline_s=config.download_deadline_s, scope=scope)  # fmt: skip


def source_version(spec: str, config: CorpusConfig, cache_dir: Path | None = None, scope: str | None = None) -> str:
    """The content version of one source, cheaply: no remote body is read when a validator exists."""
    with fetcher_for(config, cache_dir, scope) as fetcher:
        ctx = ReadContext(links_out=config.links_out)
        (source,) = open_sources([spec], ctx, fetcher, hf_split=config.hf_split, download=False)
        return source.version()


# --- files ----------------------------------------------------------------------------------


def _listing_version(files: list[tuple[str, str]]) -> str:
    """Version of many files: sha256 over their sorted ``(relative path, version)`` pairs."""
    return "sha256:" + hashlib.sha256("".join(f"{rel}\x00{v}\n" for rel, v in sorted(files)).encode()).hexdigest()


def _resolve_local(spec: Spec, ctx: ReadContext, fetcher: Fetcher, download: bool) -> Source:
    target = os.path.expanduser(spec.target)
    named = False
    if _MAGIC.search(target):
        prefix = target[: _MAGIC.search(target).start()]  # type: ignore[union-attr]
        root = Path(prefix.rsplit("/", 1)[0] or "/") if "/" in prefix else Path(".")
        matched = [Path(p) for p in sorted(glob.glob(target, recursive=True))]
        paths = [p for p in matched if _regular(p, root, spec, ctx)]
        if not paths:
            raise FileNotFoundError(f"source {spec.raw!r}: the pattern matches no files; check the path")
    elif os.path.isdir(target):
        root = Path(target)
        paths = [p for p in root.rglob("*") if _regular(p, root, spec, ctx)]
    elif os.path.isfile(target):
        root, paths, named = Path(target).parent, [Path(target)], True
    else:
        raise FileNotFoundError(
            f"source {spec.raw!r}: no such file or directory ({Path(target).absolute()}); check the path"
        )
    label = spec.label or root.resolve().name
    files = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if _keep(spec, path.name, str(path), named, ctx):
            files.append(_File(rel, path.name, str(path), path))
    return _FileSource(spec, label, sorted(files, key=lambda f: f.rel), single=named)


def _regular(path: Path, root: Path, spec: Spec, ctx: ReadContext) -> bool:
    """Whether a path listed under a source folder is a file to read: a regular file, or a symlink to one inside
    the folder (or outside, with ``links_out='follow'``). Folders are walked, not read; a symlinked folder and a
    special file (FIFO, socket, device) are passed over and counted; a link out of the folder is refused. Hidden
    entries are left out before any of that."""
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return False
    if path.is_symlink():
        target = path.resolve()
        if path.is_dir():
            ctx.skipped["symlinked_folder"] += 1
            return False
        if not target.is_relative_to(root.resolve()) and ctx.links_out != "follow":
            raise ValueError(
                f"source {spec.raw!r}: {path} is a symlink to {target}, outside the source folder {root}; remove "
                "the link, or set raw_corpus.links_out: follow to read what such links point to"
            )
        if not target.is_file():
            ctx.skipped["broken_or_special_link"] += 1
            return False
        return True
    if path.is_file():
        return True
    if not path.is_dir():
        ctx.skipped["special_file"] += 1
    return False


def _resolve_remote(spec: Spec, ctx: ReadContext, fetcher: Fetcher, download: bool) -> Source:
    url = spec.target
    parts = urlsplit(url)
    listing = fetcher.list_files(url)
    named = listing is None
    if listing is None:
        rel = url_name(url) + (f"?{parts.query}" if parts.query else "")
        root = parts.path.rstrip("/").rsplit("/", 1)[0]
        _keep(spec, url_name(url), url, True, ctx)
        listing = [(rel, url)]
    elif not listing:
        raise FileNotFoundError(f"source {spec.raw!r}: no files there; check the URL")
    else:
        path = parts.path
        root = path[: m.start()].rsplit("/", 1)[0] if (m := _MAGIC.search(path)) else path.rstrip("/")
        listing = [(rel, u) for rel, u in listing if _keep(spec, url_name(u), u, False, ctx)]
    label = spec.label or f"{parts.netloc}{root}".strip("/")
    files = []
    for rel, file_url in listing:
        if download:
            got = fetcher.fetch(file_url)
            files.append(_File(rel, url_name(file_url), file_url, got.path, got.version))
        else:
            files.append(_File(rel, url_name(file_url), file_url, None, fetcher.version(file_url)))
    return _FileSource(spec, label, files, single=named)


def _keep(spec: Spec, name: str, where: str, named: bool, ctx: ReadContext) -> bool:
    """Whether a listed file has a readable type; a file named by the spec itself must have one."""
    if is_supported(name):
        return True
    if named:
        raise ValueError(f"source {spec.raw!r}: cannot tell how to read {where} from its name; supported: {SUPPORTED}")
    ctx.skipped["unsupported_format"] += 1
    return False


# --- Hugging Face datasets ------------------------------------------------------------------


def _hf_local(spec: Spec) -> Path | None:
    """The local directory (a saved dataset or a repository) an hf: spec names, or None for a Hub name."""
    path = Path(spec.target).expanduser()
    return path if path.exists() else None


def _hf_saved(path: Path) -> bool:
    """Whether a local directory was written by ``save_to_disk`` (else it is laid out like a Hub repository)."""
    return any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _hf_version(spec: Spec) -> str:
    if (path := _hf_local(spec)) is not None:
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        return _listing_version([(rel, f"sha256:{sha256_file(p)}") for rel, p in files])
    from huggingface_hub import HfApi
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        info = HfApi().dataset_info(spec.target)
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"source {spec.raw!r}: no dataset {spec.target!r} on the Hugging Face Hub") from e
    return f"hf-revision:{info.sha}"


def _hf_load(
    spec: Spec, cache_dir: Path | None, streaming: bool
) -> datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict:
    """All splits of the dataset, lazily when streaming (nothing is written to the cache then).

    A saved dataset is memory-mapped, so it is read in batches as it is, streaming or not. The
    split is picked by the caller, so a missing one gives the same error in every case."""
    import datasets

    path = _hf_local(spec)
    if path is not None and _hf_saved(path):
        return datasets.load_from_disk(str(path))
    target, revision = (str(path), None) if path else (spec.target, _hf_version(spec).removeprefix("hf-revision:"))
    hf_cache = str(cache_dir / "hf") if cache_dir is not None else None
    return datasets.load_dataset(target, spec.hf_config, revision=revision, streaming=streaming, cache_dir=hf_cache)


def _hf_texts(
    spec: Spec, split: str, cache_dir: Path | None, ctx: ReadContext, streaming: bool
) -> Iterator[tuple[int, str]]:
    import datasets

    ds = _hf_load(spec, cache_dir, streaming)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in ds:
            ctx.problems.add(f"source {spec.raw!r} has no split {split!r} (splits: {', '.join(ds)}); set hf_split")
            return
        ds = ds[split]
    columns = ds.column_names
    if columns is None:  # a stream whose features show only in its rows
        if (first := next(iter(ds), None)) is None:
            return
        columns = list(first)
    if ctx.text_field not in columns:
        shown = ", ".join(repr(c) for c in columns[:20])
        ctx.problems.add(f"source {spec.raw!r} has no column {ctx.text_field!r} (columns: {shown}); set text_field")
        return
    index = 0
    for batch in ds.select_columns([ctx.text_field]).iter(batch_size=1000):
        for value in batch[ctx.text_field]:
            if value is None:
                ctx.skipped["null_text"] += 1
            elif not isinstance(value, str):
                ctx.bad_record("bad_text_type", f"source {spec.raw!r}, row {index}: {ctx.text_field!r} is not a string")
            else:
                yield index, value
            index += 1
