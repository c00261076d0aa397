"""The cleaning stage: raw document shards in, normalized, filtered, deduplicated shards out.

Per document, in order: normalize (NFC, no BOM, no control characters, LF line endings,
no trailing blanks), strip Project Gutenberg boilerplate, drop placeholder lines, re-flow
hard-wrapped prose, collapse blank-line runs, split long documents at paragraph
boundaries, then filter. Duplicates are not removed here: each kept document's signature goes
to ``signatures.parquet`` (:func:`signature_schema`), and the splits stage removes duplicates
across every partition at once (``lmcore.data.dedup.resolve_duplicates``). Each output row
keeps the raw document's id in ``source_doc_id``
(:data:`CLEAN_SCHEMA`), so all chunks of one document can be kept together downstream;
``doc_id`` stays unique per chunk. A filter returns ``(keep, reason)`` as in datatrove; every
dropped document is written with its reason and the reasons are counted in the manifest.
Each step is one pass of plain Python (mostly C: ``str`` methods, ``re``, ``unicodedata``) over one
document, and a document is held only as one step's input and output, so a single document of any
size costs a small multiple of its size (``benchmarks/document_memory.py`` measures it). Input is read
batch by batch, so memory is one batch plus the signatures (16 bytes per document, plus
``num_perm`` x 4 with near dedup). Output order follows input order,
so the same input and config give the same Parquet contents. This module knows nothing
of Dagster or of the stages before and after it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmcore.data.dedup import NearDeduper, content_digest
from lmcore.data.filters import Filter, filter_repetition, length_reason
from lmcore.data.reflow import reflow
from lmcore.io import DOCUMENT_SCHEMA, ParquetShardWriter, ProgressFn, atomic_dir, write_json

MANIFEST = "manifest.json"
DROPPED_DIR = "dropped"
SOURCE_DOC_ID = "source_doc_id"
CLEAN_SCHEMA = DOCUMENT_SCHEMA.append(pa.field(SOURCE_DOC_ID, pa.string(), nullable=False))
"""Cleaned documents: ``doc_id`` (unique per chunk), ``source``, ``text``, and ``source_doc_id``, the raw
document's ``doc_id`` that every chunk of it shares."""
DROPPED_SCHEMA = CLEAN_SCHEMA.append(pa.field("reason", pa.string(), nullable=False))
SIGNATURES = "signatures.parquet"
COLUMNS = ["doc_id", "source", "spec", "text"]
PARAGRAPH_SEP = "\n\n"
_READ_BATCH = 64  # documents per input batch; whole books are MBs each


@dataclass(kw_only=True, frozen=True)
class CleanConfig:
    strip_gutenberg: bool = True
    """Remove text before the ``*** START OF THE/THIS PROJECT GUTENBERG EBOOK ... ***`` line and
    from the ``*** END OF ...`` line on (case-insensitive); text without markers is unchanged."""
    drop_placeholder_lines: bool = True
    """Remove ``[Illustration ...]`` / ``[Image ...]`` blocks (may span lines), image-name lines
    such as ``0009m``, and a lone ``cover`` first line."""
    reflow: bool = True
    """Join hard-wrapped lines inside prose paragraphs (see :func:`reflow`); blank lines,
    headings, list items, verse, tables and indented or fenced code are kept as they are."""
    max_doc_chars: int = 20_000
    """Split longer documents at paragraph boundaries into chunks of about this many characters,
    with ids ``f"{doc_id}-{i:04d}"``; 0 never splits."""
    min_doc_chars: int = 200
    """Drop documents (chunks) shorter than this after cleaning (reason ``too_short``; ``empty``
    when nothing is left)."""
    max_repetition: float = 0.3
    """Drop documents whose :func:`repetition_fraction` exceeds this (reason ``repetition``)."""
    dedup_exact: bool = True
    """Keep one copy of an exactly identical cleaned text, the one with the smallest ``doc_id``, across the whole
    corpus (the others: reason ``exact_duplicate``, decided in the splits stage)."""
    dedup_near: bool = False
    """Drop documents whose MinHash-estimated word 5-gram Jaccard similarity to a kept one with a smaller
    ``doc_id`` is at least ``near_threshold`` (reason ``near_duplicate``)."""
    near_threshold: float = 0.8
    """Jaccard similarity at which two documents count as near duplicates, in (0, 1)."""
    num_perm: int = 128
    """MinHash permutations; more is more exact and slower."""
    seed: int = 0
    """Seed of the MinHash permutations."""
    shard_bytes: int = 64 << 20
    """Rotate output Parquet shards after about this many bytes of text."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_doc_chars < 0:
            problems.append(f"max_doc_chars must be >= 0 (0 = never split), got {self.max_doc_chars}")
        if self.min_doc_chars < 0:
            problems.append(f"min_doc_chars must be >= 0, got {self.min_doc_chars}")
        if 0 < self.max_doc_chars < 2 * self.min_doc_chars:
            problems.append(
                f"max_doc_chars ({self.max_doc_chars}) must be 0 or >= 2 * min_doc_chars ({self.min_doc_chars}), "
                "or split chunks would be dropped as too short"
            )
        if not 0.0 < self.max_repetition <= 1.0:
            problems.append(f"max_repetition must be in (0, 1], got {self.max_repetition}")
        if not 0.0 < self.near_threshold < 1.0:
            problems.append(f"near_threshold must be in (0, 1), got {self.near_threshold}")
        if self.num_perm < 2:
            problems.append(f"num_perm must be >= 2, got {self.num_perm}")
        if not 0 <= self.seed < 2**32:
            problems.append(f"seed must be in [0, 2**32), got {self.seed}")
        if self.shard_bytes <= 0:
            problems.append(f"shard_bytes must be positive, got {self.shard_bytes}")
        if problems:
            raise ValueError("invalid CleanConfig: " + "; ".join(problems))


# ---------------------------------------------------------------- per-document cleaning

_CONTROL = re.compile(r"[\x00-\x08\x0B-\x1F\x7F-\x9F\uFEFF]")  # C0 and C1 but \n and \t; every BOM
_TRAILING_BLANKS = re.compile(r"[ \t]+$", re.M)
_BLANK_RUN = re.compile(r"\n{3,}")
_GB_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b.*$", re.I | re.M)
_GB_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b.*$", re.I | re.M)
_ILLUSTRATION = re.compile(r"^[ \t]*\[(?:Illustration|Image)\b(?:[^\[\]]|\[[^\[\]]*\])*\][ \t]*$", re.I | re.M)
_IMAGE_NAME_LINE = re.compile(r"^[ \t]*\d{3,6}m[ \t]*$", re.M)
_COVER_LINE = re.compile(r"\A\s*cover[ \t]*(?:\n|\Z)", re.I)

Step = Callable[[str], str]


def _normalize_steps() -> list[Step]:
    """CRLF/CR to LF, drop NUL and other control characters (C0 and C1, keeping ``\\n`` and ``\\t``) and
    every BOM (U+FEFF), Unicode NFC, strip blanks at line ends: one pass over the text each."""
    return [
        lambda text: text.replace("\r\n", "\n"),
        lambda text: text.replace("\r", "\n"),
        partial(_CONTROL.sub, ""),
        partial(unicodedata.normalize, "NFC"),
        partial(_TRAILING_BLANKS.sub, ""),
    ]


def normalize(text: str) -> str:
    """The normalization every document gets first (see :func:`_normalize_steps`)."""
    return _apply(_normalize_steps(), text)


def _from_start_marker(text: str) -> str:
    start = _GB_START.search(text)
    return text[start.end() :] if start else text


def _to_end_marker(text: str) -> str:
    end = _GB_END.search(text)
    return text[: end.start()] if end else text


_GUTENBERG: list[Step] = [_from_start_marker, _to_end_marker]
_PLACEHOLDERS: list[Step] = [partial(pattern.sub, "") for pattern in (_ILLUSTRATION, _IMAGE_NAME_LINE, _COVER_LINE)]


def _apply(steps: list[Step], text: str) -> str:
    for step in steps:
        text = step(text)
    return text


def strip_gutenberg(text: str) -> str:
    """Keep only what lies between the Gutenberg START and END marker lines (each optional)."""
    return _apply(_GUTENBERG, text)


def drop_placeholders(text: str) -> str:
    """Blank out illustration blocks, ``0009m``-style image-name lines and a leading ``cover`` line."""
    return _apply(_PLACEHOLDERS, text)


def _steps(config: CleanConfig) -> list[Step]:
    """Every text-to-text step of cleaning, in order: normalize, the optional steps, then at most one
    blank line between paragraphs and none at either end."""
    steps = _normalize_steps()
    if config.strip_gutenberg:
        steps += _GUTENBERG
    if config.drop_placeholder_lines:
        steps += _PLACEHOLDERS
    if config.reflow:
        steps.append(reflow)
    return [*steps, partial(_BLANK_RUN.sub, PARAGRAPH_SEP), lambda text: text.strip("\n")]


def clean_documents(texts: Iterable[str | None], config: CleanConfig) -> Iterator[list[str]]:
    """Each text cleaned and split (:func:`split_document`); None counts as empty.

    A text is only ever held as input and output of one step, and the texts are not held beside the
    chunks while the caller uses them: pass an iterator that makes each text as it is asked for, and
    peak memory for one document is a small multiple of its size (see ``benchmarks/document_memory.py``).
    """
    steps = _steps(config)
    for text in texts:
        text = text or ""
        for step in steps:
            text = step(text)
        chunks = split_document(text, config.max_doc_chars)
        del text
        yield chunks


def _cut(text: str, start: int, goal: int, limit: int) -> tuple[int, int]:
    """(position, separator length) of the separator nearest ``goal`` in ``(start, limit]``."""
    for sep in (PARAGRAPH_SEP, "\n", " "):
        before = text.rfind(sep, start + 1, goal + len(sep))
        after = text.find(sep, goal, limit)
        found = [c for c in (before, after) if c > start]
        if found:
            return min(found, key=lambda c: abs(c - goal)), len(sep)
    return limit, 0  # one unbroken run longer than the limit: cut it hard


def split_document(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into about equal chunks of at most ``max_chars`` at paragraph breaks.

    Falls back to line breaks, then spaces, then a hard cut for runs without them. The
    separator at each cut is dropped: when every cut is at a paragraph break,
    ``PARAGRAPH_SEP.join(chunks) == text``. ``max_chars == 0`` never splits.
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return [text]
    chunks, start = [], 0
    while len(text) - start > max_chars:
        rest = len(text) - start
        goal = start + rest // math.ceil(rest / max_chars)
        cut, sep_len = _cut(text, start, goal, start + max_chars)
        chunks.append(text[start:cut])
        start = cut + sep_len
    chunks.append(text[start:])
    return chunks


# ---------------------------------------------------------------- filters


def build_filters(config: CleanConfig) -> list[Filter]:
    """The per-document filters after the length filters, in order (duplicates are judged later, over all
    partitions)."""
    return [partial(filter_repetition, max_fraction=config.max_repetition)]


def near_deduper(config: CleanConfig) -> NearDeduper | None:
    """The near-duplicate filter ``config`` asks for (it signs documents and judges signatures), or None."""
    if not config.dedup_near:
        return None
    return NearDeduper(threshold=config.near_threshold, num_perm=config.num_perm, seed=config.seed)


def signature_schema(config: CleanConfig) -> pa.Schema:
    """``signatures.parquet``: per kept document its ids, spec, UTF-8 bytes, content digest and, with near
    dedup, its MinHash values."""
    fields = [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field(SOURCE_DOC_ID, pa.string(), nullable=False),
        pa.field("spec", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("digest", pa.binary(16), nullable=False),
    ]
    if config.dedup_near:
        fields.append(pa.field("minhash", pa.list_(pa.uint32(), config.num_perm), nullable=False))
    return pa.schema(fields)


# ---------------------------------------------------------------- the stage


def _chunk_ids(doc_id: str, count: int) -> list[str]:
    return [doc_id] if count == 1 else [f"{doc_id}-{i:04d}" for i in range(count)]


def _cleaned_rows(batch: pa.RecordBatch, config: CleanConfig) -> Iterator[dict[str, Any]]:
    """Each chunk of each document of ``batch`` as a :data:`CLEAN_SCHEMA` row; ``source_doc_id`` is the
    input ``doc_id``. Texts become Python strings one at a time, as :func:`clean_documents` asks."""
    texts = (value.as_py() for value in batch.column("text"))
    metas = (batch.column(name).to_pylist() for name in ("doc_id", "source", "spec"))
    for doc_id, source, spec, chunks in zip(*metas, clean_documents(texts, config), strict=True):
        for chunk_id, text in zip(_chunk_ids(doc_id, len(chunks)), chunks, strict=True):
            yield {"doc_id": chunk_id, "source": source, "spec": spec, "text": text, SOURCE_DOC_ID: doc_id}


def _sign(out: dict[str, list[Any]], row: dict[str, Any], size: int, near: NearDeduper | None) -> None:
    """Append a kept document's signature (see :func:`signature_schema`) to the columns in ``out``."""
    for name in ("doc_id", SOURCE_DOC_ID, "spec"):
        out[name].append(row[name])
    out["bytes"].append(size)
    out["digest"].append(content_digest(row["text"]))
    if near is not None:
        out["minhash"].append(near.signature(row["text"]).hashvalues.astype("uint32"))


def _first_reason(filters: list[Filter], text: str) -> str | None:
    """The reason of the first filter that drops ``text``; later (stateful) filters do not see it."""
    for keep_fn in filters:
        keep, reason = keep_fn(text)
        if not keep:
            return reason
    return None


def _check_inputs(paths: list[Path]) -> int:
    """Total input rows; raises naming every missing file and every file lacking a column."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"clean_corpus input shards not found: {', '.join(missing)}")
    problems, total = [], 0
    for path in paths:
        pf = pq.ParquetFile(path)
        absent = [c for c in COLUMNS if c not in pf.schema_arrow.names]
        if absent:
            problems.append(f"{path}: missing column(s) {absent}; input shards need {COLUMNS}")
        total += pf.metadata.num_rows
    if problems:
        raise ValueError("; ".join(problems))
    return total


def clean_corpus(
    config: CleanConfig,
    in_paths: list[Path],
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    **manifest_extra: Any,
) -> dict[str, Any]:
    """Clean raw document shards into ``out_dir`` and return its manifest.

    Writes ``part-*.parquet`` (CLEAN_SCHEMA) for kept documents, ``dropped/part-*.parquet``
    (plus ``reason``) for dropped ones, ``signatures.parquet`` for the kept ones (duplicates
    are judged over all partitions from these), then ``manifest.json``. ``out_dir`` is
    replaced atomically: a failed run leaves the previous output as it was.
    """
    paths = [Path(p) for p in in_paths]
    total = _check_inputs(paths)
    filters, near = build_filters(config), near_deduper(config)
    signatures: dict[str, list[Any]] = {name: [] for name in signature_schema(config).names}
    dropped: Counter[str] = Counter()
    seen = in_bytes = out_bytes = 0
    with atomic_dir(out_dir) as staging:
        kept_w = ParquetShardWriter(staging, CLEAN_SCHEMA, max_bytes=config.shard_bytes)
        drop_w = ParquetShardWriter(staging / DROPPED_DIR, DROPPED_SCHEMA, max_bytes=config.shard_bytes)
        with kept_w, drop_w:
            for path in paths:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=_READ_BATCH, columns=COLUMNS):
                    in_bytes += pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0
                    for row in _cleaned_rows(batch, config):
                        text = row["text"]
                        reason = length_reason(text, config.min_doc_chars) or _first_reason(filters, text)
                        if reason is None:
                            kept_w.write(row)
                            size = len(text.encode("utf-8"))
                            out_bytes += size
                            _sign(signatures, row, size, near)
                        else:
                            drop_w.write({**row, "reason": reason})
                            dropped[reason] += 1
                    seen += batch.num_rows
                    if progress is not None:
                        progress("documents", seen, total)
        pq.write_table(pa.table(signatures, schema=signature_schema(config)), staging / SIGNATURES)
        manifest = {
            "documents": kept_w.rows,
            "bytes": out_bytes,
            "shards": kept_w.shards,
            "dropped": dict(sorted(dropped.items())),
            "dropped_shards": [{**s, "path": f"{DROPPED_DIR}/{s['path']}"} for s in drop_w.shards],
            "input_documents": seen,
            "input_bytes": in_bytes,
            "signatures": SIGNATURES,
            "config": dataclasses.asdict(config),
            **manifest_extra,
        }
        write_json(staging / MANIFEST, manifest)
    return manifest
