"""Units smaller than a file: a large local file cut into *parts* of about ``unit_bytes``, each read on its own.

Which files are cut (:func:`plan_parts`), only when larger than ``unit_bytes`` and only where a part can be read
without the rest of the file:

* JSON Lines (``.jsonl``, ``.ndjson``, and a ``.json`` file holding JSON lines rather than an array): byte ranges
  cut forward from every multiple of ``unit_bytes`` to the next line start, so no record is split. A line longer
  than ``unit_bytes`` stays whole in one part; a file with no final newline ends its last part with its last line.
* Parquet: consecutive row groups, a part closed once it holds ``unit_bytes`` of row-group bytes. A file of one
  row group is one unit.
* Everything else is one unit: a plain-text file (``.txt`` ...) is one document; CSV rows may hold quoted
  newlines, so a byte cut could split one; compressed files and archives cannot be entered in the middle.

A part's records keep the keys they have when the whole file is read: the line number of a JSON line is its
line number in the file (the newlines before the part are counted), a Parquet row's index its row in the file.
So the documents of a corpus are the same for every ``unit_bytes``. A part's version (:func:`part_version`) is
the sha256 of its own bytes and its first record's index (which can move while the part's bytes stay the same).
The plan of a file is kept in this process for as long as the file's size, mtime and inode stay the same, so the
16 partitions' look-ups cost one pass over the file. This module knows nothing of sources or partitions.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20
LINE_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Part:
    """One unit of a cut file: the bytes ``[lo, hi)``, and for Parquet the row groups ``[groups[0], groups[1])``."""

    index: int
    """Its place in the file (0, 1, ...); the unit key is ``<file key>@<index>``."""
    lo: int
    hi: int
    first: int
    """Index of its first record in the whole file: the 0-based line number, or the row number for Parquet."""
    groups: tuple[int, int] | None = None


def plan_parts(path: Path, name: str, unit_bytes: int) -> tuple[Part, ...]:
    """The parts of a local file, or ``()`` when it is read as one unit (small, of a kind never cut, or one that
    cannot be opened or parsed: reading it whole then reports the problem as for any file)."""
    import pyarrow as pa

    try:
        st = os.stat(path)
        if st.st_size <= unit_bytes:
            return ()
        return _plan(str(path), name.lower(), unit_bytes, st.st_size, st.st_mtime_ns, st.st_ino)
    except (OSError, pa.ArrowException):
        return ()


@functools.lru_cache(maxsize=256)
def _plan(path: str, name: str, unit_bytes: int, size: int, mtime_ns: int, inode: int) -> tuple[Part, ...]:
    """The plan of one file version (its identity is in the arguments, so an edited file is planned again)."""
    if name.endswith(".parquet"):
        return _parquet_parts(path, unit_bytes)
    if not name.endswith(LINE_SUFFIXES):
        return ()
    with open(path, "rb") as f:
        if name.endswith(".json") and f.read(1 << 16).lstrip().startswith(b"["):
            return ()  # a JSON array: one document list, one unit
        return _line_parts(f, unit_bytes, size)


def line_cuts(f: BinaryIO, unit_bytes: int, size: int) -> list[int]:
    """Start offsets of the byte ranges: 0, then each multiple of ``unit_bytes`` moved forward to a line start
    (just after a ``\\n``); offsets that fall at or past the end, or at an earlier cut, are dropped."""
    cuts = [0]
    for target in range(unit_bytes, size, unit_bytes):
        if target <= cuts[-1]:
            continue  # still inside a line longer than unit_bytes
        f.seek(target - 1)
        pos = target - 1
        while chunk := f.read(1 << 16):
            if (i := chunk.find(b"\n")) >= 0:
                pos += i + 1
                break
            pos += len(chunk)
        if cuts[-1] < pos < size:
            cuts.append(pos)
    return cuts


def _line_parts(f: BinaryIO, unit_bytes: int, size: int) -> tuple[Part, ...]:
    cuts = line_cuts(f, unit_bytes, size)
    if len(cuts) < 2:
        return ()
    bounds = list(zip(cuts, [*cuts[1:], size], strict=True))
    firsts, lines = [], 0
    f.seek(0)
    for lo, hi in bounds:  # the lines before each part, so its records keep their line numbers in the file
        firsts.append(lines)
        for chunk in _chunks(f, hi - lo):
            lines += chunk.count(b"\n")
    return tuple(Part(i, lo, hi, first) for i, ((lo, hi), first) in enumerate(zip(bounds, firsts, strict=True)))


def _parquet_parts(path: str, unit_bytes: int) -> tuple[Part, ...]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    spans, rows = [], []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        starts, ends = [], []
        for c in range(group.num_columns):
            col = group.column(c)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            starts.append(start)
            ends.append(start + col.total_compressed_size)
        spans.append((min(starts), max(ends)))
        rows.append(group.num_rows)
    parts: list[Part] = []
    begin = first = 0
    for g in range(len(spans)):
        if spans[g][1] - spans[begin][0] >= unit_bytes or g == len(spans) - 1:
            lo, hi = spans[begin][0], spans[g][1]
            parts.append(Part(len(parts), lo, hi, first, (begin, g + 1)))
            first += sum(rows[begin : g + 1])
            begin = g + 1
    return tuple(parts) if len(parts) > 1 else ()


def _chunks(f: BinaryIO, n: int) -> Iterator[bytes]:
    """The next ``n`` bytes of ``f`` in chunks."""
    while n > 0 and (chunk := f.read(min(_CHUNK, n))):
        n -= len(chunk)
        yield chunk


def part_version(path: Path, part: Part) -> str:
    """``sha256:`` of the part's first record index and its bytes: a part is read again when either changes."""
    h = hashlib.sha256(f"{part.first}\n".encode())
    with open(path, "rb") as f:
        f.seek(part.lo)
        for chunk in _chunks(f, part.hi - part.lo):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


class _Window(io.RawIOBase):
    """The bytes ``[lo, hi)`` of an open file as a stream of their own."""

    def __init__(self, f: BinaryIO, lo: int, hi: int) -> None:
        self._f, self._left = f, hi - lo
        f.seek(lo)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = self._f.readinto(memoryview(buffer)[: min(len(buffer), self._left)])  # type: ignore[attr-defined]
        self._left -= n
        return n


def window(f: BinaryIO, part: Part) -> BinaryIO:
    """A buffered stream of the part's bytes of ``f``."""
    return io.BufferedReader(_Window(f, part.lo, part.hi), _CHUNK)  # type: ignore[return-value]
