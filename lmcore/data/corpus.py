"""The raw-corpus stage: read every configured source into Parquet document shards.

``build_raw_corpus`` resolves all sources first (local listings, remote downloads into the
cache), so missing files and unreachable URLs are reported together before any reading.
It then streams records into ``part-NNNNN.parquet`` shards (``DOCUMENT_SCHEMA``: doc_id,
source, spec, text) and writes ``manifest.json`` last, only if every source read cleanly. On
failure the shards it wrote are removed and no manifest exists, so nothing in ``out_dir``
looks complete. With ``partition``, only the units of that hash bucket are read
(lmcore.data.partitions): files, parts of large local files (``unit_bytes``), a non-file source
as a whole. ``doc_id`` is the first 16 hex digits of sha256 of the record's stable key (see
lmcore.data.sources), the same whatever the unit size. What each bad input does:
lmcore.data.sources.policy and .formats.
This module knows nothing of Dagster, cleaning or tokenization.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmcore.data.partitions import partition_of
from lmcore.data.sources import ReadContext, Source, open_sources, parse_spec
from lmcore.data.sources.fetch import Fetcher
from lmcore.io import ParquetShardWriter, ProgressFn, digest_of, write_json

__all__ = ["CorpusConfig", "build_raw_corpus", "check_sources", "doc_id", "partition_units", "source_version"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_UTF8_CHOICES = ("error", "replace", "skip")
_BAD_RECORD_CHOICES = ("error", "skip")
_LINKS_OUT_CHOICES = ("refuse", "follow")


@dataclass(kw_only=True, frozen=True)
class CorpusConfig:
    sources: tuple[Any, ...] = ("builtin:python-docs",)
    """Source specs, read in this order: ``builtin:python-docs``, paths, globs, URLs, ``hf:NAME[:CONFIG]``; an
    entry may be ``{spec: SPEC, weight: W}``: pretraining then draws that source's share of windows in
    proportion to W (weights of all sources, default 1.0; the mixture applies when any weight is given)."""
    hf_streaming: bool = False
    """Read Hugging Face datasets with ``streaming=True``: rows are read batch by batch and the dataset is
    never converted to Arrow files in the cache first."""
    text_field: str = "text"
    """Field holding the text in .jsonl/.json/.csv/.parquet files and Hugging Face datasets."""
    hf_split: str = "train"
    """Split read from Hugging Face datasets."""
    invalid_utf8: str = "error"
    """Text that is not UTF-8: ``error`` (report it), ``replace`` (U+FFFD, counted) or ``skip`` (counted)."""
    on_bad_record: str = "error"
    """A broken JSON line or a record without a string text field: ``error`` (report file:line) or ``skip``."""
    max_document_bytes: int = 256 << 20
    """Documents larger than this (UTF-8 bytes) are skipped and counted as ``too_large``."""
    retries: int = 4
    """Extra attempts for a remote call after a connection error, timeout, HTTP 5xx or 429."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubled for each further one."""
    timeout_s: float = 60.0
    """Connect and read timeout of each remote call, in seconds."""
    max_download_bytes: int = 16 << 30
    """A remote file larger than this (bytes) is refused, its download stopped there."""
    download_deadline_s: float = 3600.0
    """The longest one remote file's download may take, in seconds, however the bytes trickle in."""
    shard_bytes: int = 64 << 20
    """Rotate to a new Parquet shard after about this many bytes of text."""
    unit_bytes: int = 16 << 20
    """A local JSON Lines or Parquet file larger than this is cut into units (partitions' inputs) of about this
    many bytes, at line starts or row groups, so one large file is read, cleaned and tokenized on several cores
    (lmcore.data.sources.ranges); a local ``hf:`` dataset read without streaming into as many row ranges.
    Smaller files, plain-text files (one document each), CSV, compressed and remote files, Hub and streamed
    datasets are one unit each. The documents (doc_id and text) are the same for every value. 16 MiB: a 100 MB file
    is 7 units, a 1 GB file 64 spread over every partition."""
    links_out: str = "refuse"
    """A symlink in a source folder (or matched by a glob) whose target lies outside it: ``refuse`` (an error
    naming the link and its target) or ``follow`` (read the target). Links that stay inside are read; symlinked
    folders and special files (FIFOs, sockets, devices) are passed over and counted in ``skipped``."""

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            raise ValueError(f"sources must be a tuple of specs, not a string; write ({self.sources!r},)")
        entries = tuple(_entry(e, i) for i, e in enumerate(self.sources))  # lists from YAML/Dagster become tuples
        object.__setattr__(self, "sources", tuple(e if w is None else {"spec": e, "weight": w} for e, w in entries))
        if not self.sources:
            raise ValueError("sources is empty; name at least one source, e.g. ('builtin:python-docs',)")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"text_field must be a non-empty field name, got {self.text_field!r}")
        if not isinstance(self.hf_split, str) or not self.hf_split:
            raise ValueError(f"hf_split must be a non-empty split name such as 'train', got {self.hf_split!r}")
        if self.invalid_utf8 not in _UTF8_CHOICES:
            raise ValueError(f"invalid_utf8 must be one of {_UTF8_CHOICES}, got {self.invalid_utf8!r}")
        if self.on_bad_record not in _BAD_RECORD_CHOICES:
            raise ValueError(f"on_bad_record must be one of {_BAD_RECORD_CHOICES}, got {self.on_bad_record!r}")
        if self.links_out not in _LINKS_OUT_CHOICES:
            raise ValueError(f"links_out must be one of {_LINKS_OUT_CHOICES}, got {self.links_out!r}")
        for name in ("max_document_bytes", "shard_bytes", "max_download_bytes", "unit_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer number of bytes, got {value!r}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if not self.backoff_s >= 0:
            raise ValueError(f"backoff_s must be >= 0 seconds, got {self.backoff_s!r}")
        for name in ("timeout_s", "download_deadline_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")

    @property
    def specs(self) -> tuple[str, ...]:
        """The source spec strings, in order."""
        return tuple(e if isinstance(e, str) else e["spec"] for e in self.sources)

    @property
    def weights(self) -> dict[str, float] | None:
        """Mixing weight per spec (1.0 where an entry gives none), or None when no entry gives one."""
        if all(isinstance(e, str) for e in self.sources):
            return None
        return {e: 1.0 for e in self.sources if isinstance(e, str)} | {
            e["spec"]: e["weight"] for e in self.sources if isinstance(e, dict)
        }


def _entry(entry: Any, i: int) -> tuple[str, float | None]:
    """``(spec, weight or None)`` of one ``sources`` entry, checked."""
    where = f"sources[{i}]"
    if isinstance(entry, dict):
        if set(entry) - {"spec", "weight"} or "spec" not in entry:
            raise ValueError(f"{where} = {entry!r}: an entry is a spec string or {{spec: SPEC, weight: W}}")
        spec, weight = entry["spec"], entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
            raise ValueError(f"{where}.weight = {weight!r}: must be a number >= 0 (its share of training windows)")
        weight = float(weight)
    else:
        spec, weight = entry, None
    try:
        parse_spec(spec)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return spec, weight


def doc_id(key: str) -> str:
    """The stable document id of a record key: 16 hex digits of its sha256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def fetcher_for(config: CorpusConfig, cache_dir: Path | None, scope: str | None = None) -> Fetcher:
    """A :class:`Fetcher` with ``config``'s retries, timeouts and download limits (``cache_dir=None``: a private
    temporary cache; ``scope``: a run's name, in which each URL is fetched once)."""
    return Fetcher(
        cache_dir,
        retries=config.retries,
        backoff_s=config.backoff_s,
        timeout_s=config.timeout_s,
        max_bytes=config.max_download_bytes,
        deadline_s=config.download_deadline_s,
        scope=scope,
    )


def source_version(spec: str, config: CorpusConfig, cache_dir: Path | None = None, scope: str | None = None) -> str:
    """The content version of one source, cheaply: no remote body is read when a validator exists."""
    with fetcher_for(config, cache_dir, scope) as fetcher:
        ctx = ReadContext(links_out=config.links_out)
        (source,) = open_sources(
            [spec], ctx, fetcher, hf_split=config.hf_split, download=False, unit_bytes=config.unit_bytes
        )
        return source.version()


def read_context(config: CorpusConfig) -> ReadContext:
    return ReadContext(
        text_field=config.text_field,
        invalid_utf8=config.invalid_utf8,
        on_bad_record=config.on_bad_record,
        max_document_bytes=config.max_document_bytes,
        links_out=config.links_out,
    )


def partition_sources(
    config: CorpusConfig,
    cache_dir: Path | None,
    partition: str | None,
    ctx: ReadContext,
    *,
    download: bool = True,
    scope: str | None = None,
) -> list[Source]:
    """The sources of ``config`` narrowed to the units of ``partition`` (all of them when None); sources with
    no unit there are left out. ``download=False`` fetches no remote body (versions only); within ``scope`` (a run)
    each remote file is reached and downloaded once, whatever the partition."""
    with fetcher_for(config, Path(cache_dir) if download or scope else None, scope) as fetcher:
        sources = open_sources(
            config.specs,
            ctx,
            fetcher,
            hf_split=config.hf_split,
            cache_dir=Path(cache_dir) if cache_dir else None,
            download=download,
            hf_streaming=config.hf_streaming,
            unit_bytes=config.unit_bytes,
        )
    if partition is None:
        return sources
    narrowed = (s.only({k for k in s.unit_keys() if partition_of(k) == partition}) for s in sources)
    return [s for s in narrowed if s is not None]


def partition_units(
    config: CorpusConfig, partition: str, cache_dir: Path | None = None, scope: str | None = None
) -> list[dict[str, str]]:
    """``{spec, key, version}`` of every unit in ``partition``: what its raw corpus is built from. Local files
    are digested; remote ones give their validators; nothing is downloaded (but a file without a validator)."""
    sources = partition_sources(config, cache_dir, partition, read_context(config), download=False, scope=scope)
    return [{"spec": s.spec.raw, "key": key, "version": v} for s in sources for key, v in s.units()]


def _write_records(
    source: Source, writer: ParquetShardWriter, ctx: ReadContext, progress: ProgressFn | None, done: int
) -> tuple[int, int]:
    """Write every record of ``source`` as a row; returns ``(documents, UTF-8 bytes of text)``. ``done``: the
    documents written before, for the progress count."""
    count = nbytes = 0
    for record in source.records(ctx):
        writer.write(
            {"doc_id": doc_id(record.key), "source": record.source, "spec": source.spec.raw, "text": record.text}
        )
        count += 1
        nbytes += len(record.text) if record.text.isascii() else len(record.text.encode("utf-8"))
        if progress is not None and (done + count) % 1000 == 0:
            progress("documents", done + count, None)
    return count, nbytes


def _source_summary(
    source: Source, count: int, skipped: dict[str, int], partition: str | None, ctx: ReadContext
) -> dict[str, Any]:
    """A source's entry in the manifest; a whole corpus's source that gave nothing is a problem."""
    if count == 0 and partition is None:
        ctx.problems.add(
            f"source {source.spec.raw!r} produced no documents (skipped: {skipped or 'nothing'}); "
            "check the path, its file types and text_field"
        )
    log.info("source %s: %d documents, skipped %s", source.spec.raw, count, skipped)
    return {"spec": source.spec.raw, "version": source.version(), "documents": count, "skipped": skipped}


def build_raw_corpus(
    config: CorpusConfig,
    out_dir: Path,
    cache_dir: Path,
    *,
    partition: str | None = None,
    progress: ProgressFn | None = None,
    scope: str | None = None,
) -> dict[str, Any]:
    """Read every source of ``config`` (with ``partition``: its units in that hash bucket) into Parquet
    shards in ``out_dir`` (empty or new) and write its manifest last; returns the manifest.

    Manifest keys: ``documents``, ``bytes`` (UTF-8 bytes of text), ``shards`` (path, rows,
    sha256 each), ``skipped`` and ``repaired`` (reason → count), ``sources`` (spec, version,
    documents, skipped per source), ``units`` (spec, key, version), ``partition``, ``config``,
    and ``python_version`` when the builtin source is read. Raises
    ValueError/FileNotFoundError/ConnectionError listing the problems. A source that gives no
    documents is an error here only for the whole corpus; per partition, :func:`check_sources`
    judges the sources over all partitions.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"out_dir {out_dir} is not empty; pass a new or empty staging directory (see io.atomic_dir)")
    ctx = read_context(config)
    sources = partition_sources(config, cache_dir, partition, ctx, scope=scope)
    summaries: list[dict[str, Any]] = []
    documents = nbytes = 0
    # a buffered batch never spans much more than a shard, so small shard_bytes still rotate
    writer = ParquetShardWriter(
        out_dir, max_bytes=config.shard_bytes, batch_rows=max(1, min(2048, config.shard_bytes >> 12))
    )
    try:
        with writer:
            for i, source in enumerate(sources):
                before = Counter(ctx.skipped)
                count, size = _write_records(source, writer, ctx, progress, documents)
                documents, nbytes = documents + count, nbytes + size
                summaries.append(_source_summary(source, count, dict(ctx.skipped - before), partition, ctx))
                if progress is not None:
                    progress("documents", documents, None)
                    progress("sources", i + 1, len(sources))
            ctx.problems.raise_if_any()
    except BaseException:
        for shard in writer.shards:
            (out_dir / shard["path"]).unlink(missing_ok=True)
        raise
    manifest: dict[str, Any] = {
        "documents": documents,
        "bytes": nbytes,
        "shards": writer.shards,
        "skipped": dict(sorted(ctx.skipped.items())),
        "repaired": dict(sorted(ctx.repaired.items())),
        "sources": summaries,
        "units": [{"spec": s.spec.raw, "key": key, "version": v} for s in sources for key, v in s.units()],
        "partition": partition,
        "config": {**asdict(config), "sources": list(config.sources)},
    }
    manifest |= {"python_version": platform.python_version()} if any(s.spec.kind == "builtin" for s in sources) else {}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def corpus_version(
    config: CorpusConfig, cache_dir: Path | None = None, scope: str | None = None
) -> tuple[str, dict[str, str]]:
    """Combined version of all sources (16 hex digits) and the version of each, without downloading."""
    versions = {spec: source_version(spec, config, cache_dir, scope) for spec in config.specs}
    return digest_of(versions)[:16], versions


def check_sources(sources: list[Any], manifests: list[dict[str, Any]]) -> None:
    """Raise naming every entry of ``sources`` (a CorpusConfig's) that gave no documents in any of the
    partitions' manifests."""
    specs = CorpusConfig(sources=tuple(sources)).specs
    counts: Counter[str] = Counter()
    skipped: dict[str, Counter[str]] = {spec: Counter() for spec in specs}
    for manifest in manifests:
        for summary in manifest["sources"]:
            counts[summary["spec"]] += summary["documents"]
            skipped.setdefault(summary["spec"], Counter()).update(summary.get("skipped", {}))
    empty = [
        f"source {spec!r} produced no documents (skipped: {dict(skipped[spec]) or 'nothing'}); "
        "check the path, its file types and text_field"
        for spec in specs
        if counts[spec] == 0
    ]
    if empty:
        raise ValueError("; ".join(empty))
