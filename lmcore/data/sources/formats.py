"""File formats and compression: the bytes of one file become ``(member, index, text)`` records.

The format comes from the file name, outermost suffix first:

* compression ``.gz``, ``.zst``/``.zstd`` is peeled off and the rest of the name decides
  (``books.jsonl.gz`` is JSON lines, ``books.tar.zst`` a tar archive); ``.tgz`` means
  ``.tar.gz``;
* archives ``.zip``, ``.tar`` (plain or compressed): every member is read by its own name;
  directories, hidden members (``.x``, ``__MACOSX``) are passed over; links and devices are
  skipped and counted (``archive_link``); a member whose path is absolute or climbs out
  with ``..`` is refused (an error naming the archive and member);
* ``.txt``/``.md``/``.rst``/``.text``: the whole file is one document (index 0);
* ``.jsonl``/``.ndjson``: one JSON object per line, index = line number - 1; blank lines are
  passed over; ``.json``: a JSON array of objects (index = position) or else JSON lines;
* ``.csv``: a header row, then one record per row (index = row number);
* ``.parquet``: one record per row of the ``text_field`` column (string or binary).

Every reader applies the rules of :class:`lmcore.data.sources.policy.ReadContext` (invalid UTF-8,
NUL bytes, empty or oversized text, bad records). This module knows nothing of sources, URLs
or output shards.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lmcore.data.sources.policy import ReadContext
from lmcore.data.sources.ranges import Part, window
from lmcore.data.sources.zstd import ZstdReader

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
RECORD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
ARCHIVE_SUFFIXES = (".zip", ".tar")
SUPPORTED = (
    "text (.txt .md .rst .text), .jsonl/.ndjson, .json, .csv, .parquet; compressed with .gz/.zst; "
    ".zip/.tar/.tar.gz/.tgz"
)
_CHUNK = 1 << 20

Item = tuple[str, int, str]
"""``(member, index, text)``: member is ``""`` outside archives, else the path inside it."""


def inner_name(name: str) -> str:
    """The name with compression suffixes removed (``a.jsonl.gz`` → ``a.jsonl``)."""
    lower = name.lower()
    if lower.endswith(".tgz"):
        return name[:-4] + ".tar"
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return inner_name(name[: -len(suffix)])
    return name


def is_supported(name: str) -> bool:
    lower = inner_name(name).lower()
    return lower.endswith(TEXT_SUFFIXES + ARCHIVE_SUFFIXES + tuple(RECORD_SUFFIXES))


def read_file(path: Path, name: str, where: str, ctx: ReadContext, part: Part | None = None) -> Iterator[Item]:
    """Records of one local file, or of one ``part`` of it (:mod:`lmcore.data.sources.ranges`: the records keep
    their indices in the whole file); ``name`` decides the format, ``where`` names it in errors.

    A compressed stream or archive that ends early or fails its checks is one error naming the
    file as a truncated/corrupt archive; what its damaged bytes looked like (invalid UTF-8, broken
    JSON) is dropped from the problems, since it would give advice that publishes corrupted text.
    """
    import zstandard

    before = len(ctx.problems.messages)
    try:
        with open(path, "rb") as f:
            yield from read_stream(f, name, where, ctx) if part is None else _read_part(f, name, where, ctx, part)
    except (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile, tarfile.TarError, zstandard.ZstdError) as e:
        if e is ctx.problems.raised:
            raise
        del ctx.problems.messages[before:]
        ctx.problems.add(
            f"{where}: truncated/corrupt archive ({type(e).__name__}: {e}); nothing of it is used: "
            f"re-download or re-create the file (check it with {_checker(name)})"
        )
    except OSError as e:
        if e is ctx.problems.raised:
            raise
        ctx.problems.add(f"{where}: cannot read it ({type(e).__name__}: {e}); check that the file is whole")


def _checker(name: str) -> str:
    """The command that tests an archive of this name's kind."""
    lower = name.lower()
    for suffixes, command in (((".zst", ".zstd"), "zstd -t"), ((".gz", ".tgz"), "gzip -t"), ((".zip",), "unzip -t")):
        if lower.endswith(suffixes):
            return f"`{command} FILE`"
    return "`tar -tf FILE`"


@contextlib.contextmanager
def _decompressed(ctx: ReadContext, where: str) -> Iterator[None]:
    """Mark reads inside the block as reads of decompressed data, so decode errors can say so."""
    outer, ctx.compressed = ctx.compressed, where
    try:
        yield
    finally:
        ctx.compressed = outer


def read_stream(stream: BinaryIO, name: str, where: str, ctx: ReadContext) -> Iterator[Item]:
    lower = name.lower()
    if lower.endswith((".tgz", ".gz")):
        inner = name[:-4] + ".tar" if lower.endswith(".tgz") else name[:-3]
        with _decompressed(ctx, where):
            yield from read_stream(gzip.GzipFile(fileobj=stream), inner, where, ctx)
    elif lower.endswith((".zst", ".zstd")):
        with _decompressed(ctx, where):
            yield from read_stream(io.BufferedReader(ZstdReader(stream), _CHUNK), name.rsplit(".", 1)[0], where, ctx)
    elif lower.endswith(".zip"):
        yield from _read_zip(stream, where, ctx)
    elif lower.endswith(".tar"):
        yield from _read_tar(stream, where, ctx)
    elif lower.endswith(TEXT_SUFFIXES) or Path(lower).suffix in RECORD_SUFFIXES:
        reader = _read_text if lower.endswith(TEXT_SUFFIXES) else _READERS[RECORD_SUFFIXES[Path(lower).suffix]]
        if not hasattr(stream, "peek"):
            stream = io.BufferedReader(stream, _CHUNK)  # type: ignore[arg-type]
        for index, text in reader(stream, where, ctx):
            if (kept := ctx.finish(text)) is not None:
                yield "", index, kept
    else:
        ctx.skipped["unsupported_format"] += 1
        log.info("%s: unsupported file type, skipped (supported: %s)", where, SUPPORTED)


def _read_part(f: BinaryIO, name: str, where: str, ctx: ReadContext, part: Part) -> Iterator[Item]:
    """The records of one part of an uncompressed JSON Lines or Parquet file."""
    if part.groups is not None:
        items = _read_parquet(f, where, ctx, part)
    else:
        items = _read_jsonl(window(f, part), where, ctx, part.first)
    for index, text in items:
        if (kept := ctx.finish(text)) is not None:
            yield "", index, kept


# --- archives -------------------------------------------------------------------------------


def _unsafe_member(name: str) -> bool:
    path = name.replace("\\", "/")
    return path.startswith("/") or bool(re.match(r"^[A-Za-z]:", path)) or ".." in path.split("/")


def _passed_over(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/") if part)


def _member_items(items: Iterator[Item], member: str) -> Iterator[Item]:
    for sub, index, text in items:
        yield (f"{member}!{sub}" if sub else member), index, text


def _refuse(where: str, member: str, ctx: ReadContext) -> None:
    ctx.problems.add(
        f"{where}: archive member {member!r} has a path outside the archive's folder (absolute or '..'); "
        "refusing it: rebuild the archive with relative member paths"
    )


def _random_access(stream: BinaryIO) -> BinaryIO:
    """The stream itself if it can seek, else its bytes in memory (zip and Parquet need to seek)."""
    try:
        if stream.seekable():
            return stream
    except AttributeError:  # a member of a streamed tar reports seekable() through a stream that lacks it
        pass
    return io.BytesIO(stream.read())


def _read_zip(stream: BinaryIO, where: str, ctx: ReadContext) -> Iterator[Item]:
    with zipfile.ZipFile(_random_access(stream)) as zf:
        for info in zf.infolist():
            if _unsafe_member(info.filename):
                _refuse(where, info.filename, ctx)
            elif not info.is_dir() and not _passed_over(info.filename):
                with zf.open(info) as member, _decompressed(ctx, where):
                    items = read_stream(member, info.filename, f"{where}!{info.filename}", ctx)
                    yield from _member_items(items, info.filename)


def _read_tar(stream: BinaryIO, where: str, ctx: ReadContext) -> Iterator[Item]:
    with tarfile.open(fileobj=stream, mode="r|*") as tf:
        for info in tf:
            if _unsafe_member(info.name):
                _refuse(where, info.name, ctx)
            elif info.isdir() or _passed_over(info.name):
                continue
            elif not info.isfile():
                ctx.skipped["archive_link"] += 1
            else:
                member = tf.extractfile(info)
                assert member is not None
                items = read_stream(member, info.name, f"{where}!{info.name}", ctx)
                yield from _member_items(items, info.name)


# --- formats ---------------------------------------------------------------------------------


def _read_text(stream: BinaryIO, where: str, ctx: ReadContext) -> Iterator[tuple[int, str]]:
    data = stream.read(ctx.max_document_bytes + 1)
    if len(data) > ctx.max_document_bytes:
        ctx.skipped["too_large"] += 1
        log.warning("%s: larger than max_document_bytes=%d, skipped", where, ctx.max_document_bytes)
        return
    text = ctx.decode(data, where)
    del data  # a large document should not be held twice while it is written
    if text is not None:
        yield 0, text.removeprefix("\ufeff")


def _lines(stream: BinaryIO, where: str, ctx: ReadContext, first: int = 0) -> Iterator[tuple[int, str]]:
    """Decoded lines with their 1-based numbers (``first``: the lines before the stream's start in the file);
    a line over the bound is drained and skipped."""
    limit = 2 * ctx.max_document_bytes + 4096  # a JSON line escapes its text, so allow for growth
    line_no = first
    while line := stream.readline(limit + 1):
        line_no += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(_CHUNK)) and not rest.endswith(b"\n"):
                pass
            ctx.skipped["too_large"] += 1
            log.warning("%s:%d: line longer than %d bytes, skipped", where, line_no, limit)
            continue
        text = ctx.decode(line, f"{where}:{line_no}")
        del line
        if text is not None:
            yield line_no, text.removeprefix("\ufeff") if line_no == 1 else text


def _text_of(obj: object, where: str, ctx: ReadContext) -> str | None:
    name = ctx.text_field
    if not isinstance(obj, dict):
        ctx.bad_record("bad_record", f"{where}: expected a JSON object with a {name!r} field, got {type(obj).__name__}")
        return None
    if name not in obj:
        fields = ", ".join(repr(k) for k in list(obj)[:20]) or "none"
        ctx.bad_record(
            "missing_text_field",
            f"{where}: the record has no field {name!r} (its fields: {fields}); set text_field to the text's field",
        )
        return None
    value = obj[name]
    if value is None:
        ctx.skipped["null_text"] += 1
        return None
    if not isinstance(value, str):
        ctx.bad_record("bad_text_type", f"{where}: field {name!r} is a {type(value).__name__}, not a string")
        return None
    return value


def _read_jsonl(stream: BinaryIO, where: str, ctx: ReadContext, first: int = 0) -> Iterator[tuple[int, str]]:
    for line_no, line in _lines(stream, where, ctx, first):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            ctx.bad_record("bad_json", f"{where}:{line_no}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        text = _text_of(obj, f"{where}:{line_no}", ctx)
        del obj, line
        if text is not None:
            yield line_no - 1, text


def _read_json(stream: BinaryIO, where: str, ctx: ReadContext) -> Iterator[tuple[int, str]]:
    if not stream.peek(1 << 16).lstrip().startswith(b"["):  # type: ignore[attr-defined]
        yield from _read_jsonl(stream, where, ctx)
        return
    text = ctx.decode(stream.read(), where)
    if text is None:
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        ctx.bad_record("bad_json", f"{where}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})")
        return
    for index, obj in enumerate(items):
        if (value := _text_of(obj, f"{where}: element {index}", ctx)) is not None:
            yield index, value


def _read_csv(stream: BinaryIO, where: str, ctx: ReadContext) -> Iterator[tuple[int, str]]:
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, 2 * ctx.max_document_bytes))
    reader = csv.reader(text for _, text in _lines(stream, where, ctx))
    try:
        header = next(reader, None)
        if header is None:
            return
        if ctx.text_field not in header:
            columns = ", ".join(repr(c) for c in header[:20])
            ctx.problems.add(
                f"{where}: no column {ctx.text_field!r} (columns: {columns}); set text_field to one of them"
            )
            return
        col = header.index(ctx.text_field)
        for index, row in enumerate(reader):
            if not row:
                continue
            if len(row) <= col:
                ctx.bad_record(
                    "missing_text_field",
                    f"{where}:{reader.line_num}: the row has {len(row)} fields; {ctx.text_field!r} is column {col + 1}",
                )
            else:
                yield index, row[col]
    except csv.Error as e:
        ctx.bad_record("bad_csv", f"{where}:{reader.line_num}: not valid CSV ({e})")
    finally:
        csv.field_size_limit(old_limit)


def _read_parquet(
    stream: BinaryIO, where: str, ctx: ReadContext, part: Part | None = None
) -> Iterator[tuple[int, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(_random_access(stream))
    except (pa.ArrowException, OSError) as e:
        ctx.problems.add(f"{where}: not a readable Parquet file ({e})")
        return
    schema = pf.schema_arrow
    if ctx.text_field not in schema.names:
        columns = ", ".join(repr(c) for c in schema.names[:20])
        ctx.problems.add(f"{where}: no column {ctx.text_field!r} (columns: {columns}); set text_field to one of them")
        return
    kind = schema.field(ctx.text_field).type
    is_binary = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if not (is_binary or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        ctx.problems.add(f"{where}: column {ctx.text_field!r} has type {kind}; it must hold strings")
        return
    index, groups = (0, None) if part is None or part.groups is None else (part.first, range(*part.groups))
    for batch in pf.iter_batches(columns=[ctx.text_field], batch_size=256, row_groups=groups):
        for value in batch.column(0).to_pylist():
            text = ctx.decode(value, f"{where}: row {index}") if is_binary and value is not None else value
            if value is None:
                ctx.skipped["null_text"] += 1
            elif text is not None:
                yield index, text
            index += 1


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
