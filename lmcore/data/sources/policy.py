"""Reading policies shared by every format, and the problems they collect.

:class:`ReadContext` holds the policies every reader applies and counts what it skipped or
repaired. Decisions, for every format:

* not UTF-8: ``invalid_utf8="error"`` collects an error naming file (and line), ``"replace"``
  decodes with U+FFFD and counts ``repaired["invalid_utf8_replaced"]``, ``"skip"`` drops the
  file (whole-file formats) or the line/record and counts ``skipped["invalid_utf8"]``;
  inside a compressed file or archive the error first suspects damage (a truncated/corrupt
  archive), since ``"replace"`` would then publish corrupted text;
* NUL characters are stripped and counted (``repaired["nul_stripped"]``, per document);
* empty or whitespace-only text is skipped (``empty_text``), a null text value too
  (``null_text``); text over ``max_document_bytes`` is skipped (``too_large``) without being
  held in memory beyond that bound;
* a broken JSON line, a record without the text field or with a non-string one: an error
  naming file:line, the field and the fields that exist, unless ``on_bad_record="skip"``
  (counted as ``bad_json``/``missing_text_field``/``bad_text_type``/``bad_csv``);
* a CSV/Parquet file without the text column is always an error (it is a config mistake).

Errors are collected in :class:`Problems` and raised together. This module knows nothing of
formats, sources or output shards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class Problems:
    """Input errors collected across files so one run reports many; raises at ``limit``.

    The error raised has the type all problems share (FileNotFoundError, ConnectionError,
    ValueError), else ValueError; its message lists every problem.
    """

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.messages: list[str] = []
        self.raised: Exception | None = None
        self._types: set[type[Exception]] = set()

    def add(self, message: str, error: type[Exception] = ValueError) -> None:
        self.messages.append(message)
        self._types.add(error)
        if len(self.messages) >= self.limit:
            self.raise_if_any(stopped=True)

    def raise_if_any(self, stopped: bool = False) -> None:
        if not self.messages:
            return
        error = next(iter(self._types)) if len(self._types) == 1 else ValueError
        if len(self.messages) == 1:
            self.raised = error(self.messages[0])
        else:
            more = f" (stopped after {self.limit})" if stopped else ""
            lines = "\n  - ".join(self.messages)
            self.raised = error(f"{len(self.messages)} problems in the corpus sources{more}:\n  - {lines}")
        raise self.raised


@dataclass
class ReadContext:
    """Reading policies (see the module docstring) plus the counters they fill."""

    text_field: str = "text"
    invalid_utf8: str = "error"
    on_bad_record: str = "error"
    max_document_bytes: int = 256 << 20
    links_out: str = "refuse"
    skipped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    problems: Problems = field(default_factory=Problems)
    compressed: str | None = None
    """The compressed file or archive being read, if any (set by the readers): bytes that are not
    UTF-8 there are more likely damage than encoding, and the error says so."""

    def bad_record(self, reason: str, message: str) -> None:
        if self.on_bad_record == "skip":
            self.skipped[reason] += 1
        else:
            self.problems.add(f"{message}; fix the record, or set on_bad_record='skip' to skip such records")

    def decode(self, data: bytes, where: str) -> str | None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.invalid_utf8 == "replace":
                self.repaired["invalid_utf8_replaced"] += 1
                return data.decode("utf-8", "replace")
            if self.invalid_utf8 == "skip":
                self.skipped["invalid_utf8"] += 1
                return None
            bad = data[e.start : e.start + 4]
            if self.compressed is not None:  # 'replace' would publish the damage as text
                self.problems.add(
                    f"{where}: not valid UTF-8 after decompression (byte {e.start}: {bad!r}); {self.compressed} "
                    "may be a truncated/corrupt archive (zstd without a checksum cannot detect damage): re-download "
                    "or re-create it. Only if it tests whole (zstd -t, gzip -t, unzip -t) is the text itself not "
                    "UTF-8; then convert it, or set invalid_utf8='replace' or 'skip'"
                )
                return None
            self.problems.add(
                f"{where}: not valid UTF-8 (byte {e.start}: {bad!r}); convert it to UTF-8, "
                "or set invalid_utf8='replace' or 'skip'"
            )
            return None

    def finish(self, text: str) -> str | None:
        """Apply the per-document rules every format shares: NULs, emptiness, size."""
        if "\x00" in text:
            text = text.replace("\x00", "")
            self.repaired["nul_stripped"] += 1
        if not text.strip():
            self.skipped["empty_text"] += 1
            return None
        limit = self.max_document_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8")) > limit):
            self.skipped["too_large"] += 1
            return None
        return text
