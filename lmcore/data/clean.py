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
Vectorized steps run in polars; per-document logic is plain Python. Input is read batch
by batch, so memory is one batch plus the signatures (16 bytes per document, plus
``num_perm`` x 4 with near dedup). Output order follows input order,
so the same input and config give the same Parquet contents. This module knows nothing
of Dagster or of the stages before and after it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lmcore.data.dedup import NearDeduper, content_digest
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

Filter = Callable[[str], "tuple[bool, str | None]"]


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


# ---------------------------------------------------------------- normalization (polars)


def normalize_expr(column: str = "text") -> pl.Expr:
    """CRLF/CR to LF, drop NUL and other control characters (C0 and C1, keeping ``\\n``
    and ``\\t``) and every BOM (U+FEFF), Unicode NFC, strip blanks at line ends."""
    return (
        pl.col(column)
        .str.replace_all("\r\n", "\n", literal=True)
        .str.replace_all("\r", "\n", literal=True)
        .str.replace_all(r"[\x00-\x08\x0B-\x1F\x7F-\x9F\x{FEFF}]", "")
        .str.normalize("NFC")
        .str.replace_all(r"(?m)[ \t]+$", "")
    )


def _tidy_expr(column: str = "text") -> pl.Expr:
    """At most one blank line between paragraphs; no blank lines at either end."""
    return pl.col(column).str.replace_all(r"\n{3,}", PARAGRAPH_SEP).str.strip_chars("\n")


# ---------------------------------------------------------------- per-document cleaning

_GB_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b.*$", re.I | re.M)
_GB_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b.*$", re.I | re.M)
_ILLUSTRATION = re.compile(r"^[ \t]*\[(?:Illustration|Image)\b(?:[^\[\]]|\[[^\[\]]*\])*\][ \t]*$", re.I | re.M)
_IMAGE_NAME_LINE = re.compile(r"^[ \t]*\d{3,6}m[ \t]*$", re.M)
_COVER_LINE = re.compile(r"\A\s*cover[ \t]*(?:\n|\Z)", re.I)


def strip_gutenberg(text: str) -> str:
    """Keep only what lies between the Gutenberg START and END marker lines (each optional)."""
    if start := _GB_START.search(text):
        text = text[start.end() :]
    if end := _GB_END.search(text):
        text = text[: end.start()]
    return text


def drop_placeholders(text: str) -> str:
    """Blank out illustration blocks, ``0009m``-style image-name lines and a leading ``cover`` line."""
    text = _ILLUSTRATION.sub("", text)
    text = _IMAGE_NAME_LINE.sub("", text)
    return _COVER_LINE.sub("", text)


_LIST_ITEM = re.compile(r"^(?:[-*+•·]\s|\d{1,3}[.)]\s|\(\w{1,3}\)\s)")
_HEADING_WORD = re.compile(r"^(?:CHAPTER|Chapter|BOOK|Book|PART|Part|VOLUME|Volume|ACT|SCENE)\s+[IVXLCDM\d]+\b")
_STRUCTURE = re.compile(r"^\$ |\S {3,}\S|^([^\w\s])\1{2,}$")  # shell prompt, aligned columns, rule line
_LEAD_PUNCT = "“‘\"'([_—-"
_MAX_WRAP_WIDTH = 120  # a document whose long lines are wider than this is not hard-wrapped
_FIT = 0.85  # a wrapped line plus the next word must reach this fraction of the wrap width


def _wrap_width(lines: list[str]) -> int | None:
    """95th percentile length of unindented lines, or None when the text is not hard-wrapped."""
    lengths = sorted(len(line) for line in lines if line and not line[0].isspace())
    if not lengths:
        return None
    width = lengths[int(0.95 * (len(lengths) - 1))]
    return width if width <= _MAX_WRAP_WIDTH else None


def _fenced(lines: list[str]) -> list[bool]:
    """True for lines of a ``` fenced block, fences included."""
    inside, out = False, []
    for line in lines:
        fence = line.lstrip().startswith("```")
        out.append(inside or fence)
        inside ^= fence
    return out


def _heading(line: str) -> bool:
    return line.isupper() or bool(_HEADING_WORD.match(line))


def _starts_upper(line: str) -> bool:
    return line.lstrip(_LEAD_PUNCT)[:1].isupper()


def _joins(a: str, b: str, width: int, caps_ok: bool) -> bool:
    """Was the break between non-blank lines ``a`` and ``b`` made by a line wrapper?"""
    if a[0].isspace() or b[0].isspace() or _LIST_ITEM.match(b):
        return False
    if _heading(b) or _STRUCTURE.search(a) or _STRUCTURE.search(b):
        return False
    if len(a) + 1 + len(b.split(maxsplit=1)[0]) < _FIT * width:
        return False  # the next word would have fit: a deliberate break (verse, address, heading)
    return caps_ok or not _starts_upper(b)


def _reflow_block(block: list[str], frozen: list[bool], width: int) -> list[str]:
    if any(line.startswith(">>>") for line in block):
        return block  # a doctest: prompts and their output stay line for line
    # Verse starts most lines with a capital; wrapped prose rarely does. Two lines are too
    # few to tell, and full-width two-line verse is rare, so they count as prose.
    caps_ok = len(block) <= 2 or sum(_starts_upper(line) for line in block[1:]) <= 0.75 * (len(block) - 1)
    out = [block[0]]
    for i in range(1, len(block)):
        a, b = block[i - 1], block[i]
        if not (frozen[i - 1] or frozen[i]) and _joins(a, b, width, caps_ok):
            closed = a[-1] in "—-" and a[-2:-1].isalpha()  # "fit—" or "well-" broke inside a word
            out[-1] += b if closed else " " + b
        else:
            out.append(b)
    return out


def reflow(text: str) -> str:
    """Join hard-wrapped lines of prose paragraphs into one line each.

    A line joins the previous one only when both are unindented and outside a ``` fence,
    neither is an aligned-columns or rule line, the new line is not a heading or list item,
    the paragraph holds no ``>>>`` prompt, and the previous line plus the next word would
    not have fit the document's wrap width (so the break was the wrapper's, not the
    author's). In a paragraph of three or more lines where over 3/4 start with a capital
    (verse), capitalized lines stay. Text that is not hard-wrapped (95th-percentile line
    wider than 120) is returned unchanged.
    """
    lines = text.split("\n")
    width = _wrap_width(lines)
    if width is None:
        return text
    frozen = _fenced(lines)
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            out.append(lines[i])
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip():
            j += 1
        out.extend(_reflow_block(lines[i:j], frozen[i:j], width))
        i = j
    return "\n".join(out)


def clean_text(text: str, config: CleanConfig) -> str:
    """The per-document Python steps (Gutenberg, placeholders, reflow) on normalized text."""
    if config.strip_gutenberg:
        text = strip_gutenberg(text)
    if config.drop_placeholder_lines:
        text = drop_placeholders(text)
    if config.reflow:
        text = reflow(text)
    return text


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


def length_reason_expr(min_chars: int, column: str = "text") -> pl.Expr:
    """Reason column for the length filters: ``empty``, ``too_short`` or null (keep)."""
    n = pl.col(column).str.len_chars()
    return (
        pl.when(n == 0)
        .then(pl.lit("empty"))
        .when(n < min_chars)
        .then(pl.lit("too_short"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("reason")
    )


def repetition_fraction(text: str) -> float:
    """Gopher-style duplicate-line measure: the larger of the fraction of non-blank lines that
    repeat an earlier line and the fraction of their characters in such repeats (lines are
    compared stripped; after reflow a prose line is a whole paragraph)."""
    seen: set[str] = set()
    lines = dup_lines = chars = dup_chars = 0
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        lines += 1
        chars += len(line)
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        else:
            seen.add(line)
    return max(dup_lines / lines, dup_chars / chars) if lines else 0.0


def filter_repetition(text: str, max_fraction: float) -> tuple[bool, str | None]:
    """Drop (reason ``repetition``) when :func:`repetition_fraction` exceeds ``max_fraction``."""
    return (False, "repetition") if repetition_fraction(text) > max_fraction else (True, None)


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
    fields = [pa.field("doc_id", pa.string(), nullable=False), pa.field(SOURCE_DOC_ID, pa.string(), nullable=False),
              pa.field("spec", pa.string(), nullable=False), pa.field("bytes", pa.int64(), nullable=False),
              pa.field("digest", pa.binary(16), nullable=False)]  # fmt: skip
    if config.dedup_near:
        fields.append(pa.field("minhash", pa.list_(pa.uint32(), config.num_perm), nullable=False))
    return pa.schema(fields)


# ---------------------------------------------------------------- the stage


def clean_frame(df: pl.DataFrame, config: CleanConfig) -> pl.DataFrame:
    """Clean and split a frame of documents; adds ``source_doc_id`` (the input ``doc_id``) and ``reason``
    from the length filters (null = keep)."""
    df = df.select(COLUMNS).with_columns(normalize_expr().fill_null(""), pl.col("doc_id").alias(SOURCE_DOC_ID))
    cleaned = [clean_text(t, config) for t in df["text"].to_list()]
    df = df.with_columns(text=pl.Series(cleaned, dtype=pl.String)).with_columns(_tidy_expr())
    chunks = [split_document(t, config.max_doc_chars) for t in df["text"].to_list()]
    ids = [
        [doc_id] if len(parts) == 1 else [f"{doc_id}-{i:04d}" for i in range(len(parts))]
        for doc_id, parts in zip(df["doc_id"].to_list(), chunks, strict=True)
    ]
    df = df.with_columns(
        doc_id=pl.Series(ids, dtype=pl.List(pl.String)), text=pl.Series(chunks, dtype=pl.List(pl.String))
    ).explode(["doc_id", "text"])  # source_doc_id repeats on every chunk
    return df.with_columns(length_reason_expr(config.min_doc_chars))


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
                    df = pl.from_arrow(batch)
                    assert isinstance(df, pl.DataFrame)
                    in_bytes += int(df["text"].str.len_bytes().sum() or 0)
                    for row in clean_frame(df, config).iter_rows(named=True):
                        text, length_reason = row["text"], row.pop("reason")
                        reason = length_reason or _first_reason(filters, text)
                        if reason is None:
                            kept_w.write(row)
                            size = len(text.encode("utf-8"))
                            out_bytes += size
                            _sign(signatures, row, size, near)
                        else:
                            drop_w.write({**row, "reason": reason})
                            dropped[reason] += 1
                    seen += df.height
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
