"""Re-flow hard-wrapped prose: join the lines a line wrapper broke, keep the breaks an author made.

Two streaming passes over the text, one line at a time: the first measures the wrap width and what
each paragraph is (verse, doctest), the second joins lines. No list of all lines is ever built and
each output line is joined once, so memory stays about twice the text and time linear in its length,
whatever the shape of the text (one line of 50 MB, a million short lines, a paragraph of a book's
length).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

_LIST_ITEM = re.compile(r"^(?:[-*+•·]\s|\d{1,3}[.)]\s|\(\w{1,3}\)\s)")
_HEADING_WORD = re.compile(r"^(?:CHAPTER|Chapter|BOOK|Book|PART|Part|VOLUME|Volume|ACT|SCENE)\s+[IVXLCDM\d]+\b")
_STRUCTURE = re.compile(r"^\$ |\S {3,}\S|^([^\w\s])\1{2,}$")  # shell prompt, aligned columns, rule line
_LEAD_PUNCT = "“‘\"'([_—-"
_MAX_WRAP_WIDTH = 120  # a document whose long lines are wider than this is not hard-wrapped
_FIT = 0.85  # a wrapped line plus the next word must reach this fraction of the wrap width
_VERBATIM, _CAPS_OK = 1, 2  # a paragraph's kind: bit flags
_FLUSH_LINES = 4096  # output lines are joined into one string this many at a time


def lines(text: str) -> Iterator[str]:
    """The lines of ``text`` one at a time, as ``text.split("\\n")`` gives them."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


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


def _percentile_95(lengths: Counter[int]) -> int | None:
    """The 95th percentile (nearest rank below) of the counted lengths, or None when there are none."""
    rank = int(0.95 * (lengths.total() - 1))
    for length in sorted(lengths):
        rank -= lengths[length]
        if rank < 0:
            return length
    return None


def _kind(prompt: bool, size: int, caps: int) -> int:
    return _VERBATIM * prompt | _CAPS_OK * (size <= 2 or caps <= 0.75 * (size - 1))


def _survey(text: str) -> tuple[int | None, bytearray]:
    """The wrap width (95th percentile length of unindented lines; None when wider than 120, or no such line)
    and each paragraph's (run of non-blank lines') kind, one byte each: ``_VERBATIM`` for a ``>>>`` doctest,
    which stays line for line; ``_CAPS_OK`` unless it is verse, which starts most lines with a capital
    (wrapped prose rarely does). Two lines are too few to tell, and full-width two-line verse is rare, so they
    count as prose."""
    lengths: Counter[int] = Counter()
    kinds = bytearray()
    size = caps = 0
    prompt = False
    for line in lines(text):
        if line and not line[0].isspace():
            lengths[len(line)] += 1
        if line.strip():
            caps += size > 0 and _starts_upper(line)
            prompt = prompt or line.startswith(">>>")
            size += 1
        elif size:
            kinds.append(_kind(prompt, size, caps))
            size = caps = 0
            prompt = False
    if size:
        kinds.append(_kind(prompt, size, caps))
    width = _percentile_95(lengths)
    return (width if width is not None and width <= _MAX_WRAP_WIDTH else None), kinds


class _Output:
    """The output lines, joined into one string every ``_FLUSH_LINES`` lines (and a line being joined every
    ``_FLUSH_LINES`` parts), so that a text of many short lines does not hold a Python object per line."""

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._lines: list[str] = []
        self._pieces: list[str] = []  # the line being joined: pieces of parts
        self._parts: list[str] = []

    def add(self, *parts: str) -> None:
        self._parts.extend(parts)
        if len(self._parts) >= _FLUSH_LINES:
            self._pieces.append("".join(self._parts))
            self._parts = []

    def end_line(self) -> None:
        if not (self._parts or self._pieces):
            return
        self._pieces.append("".join(self._parts))
        self._lines.append("".join(self._pieces))
        self._pieces, self._parts = [], []
        if len(self._lines) == _FLUSH_LINES:
            self._blocks.append("\n".join(self._lines))
            self._lines = []

    def text(self) -> str:
        self.end_line()
        if self._lines or not self._blocks:
            self._blocks.append("\n".join(self._lines))
        return "\n".join(self._blocks)


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
    width, kinds = _survey(text)
    if width is None:
        return text
    out, paragraphs = _Output(), iter(kinds)
    kind = 0
    inside = prev_frozen = False
    prev: str | None = None  # the previous non-blank input line of this paragraph
    for line in lines(text):
        fence = line.lstrip().startswith("```")
        frozen, inside = inside or fence, inside ^ fence
        if not line.strip():
            out.end_line()
            out.add(line)
            out.end_line()
            prev = None
            continue
        if prev is None:
            kind = next(paragraphs)
        elif not (kind & _VERBATIM or prev_frozen or frozen) and _joins(prev, line, width, bool(kind & _CAPS_OK)):
            closed = prev[-1] in "—-" and prev[-2:-1].isalpha()  # "fit—" or "well-" broke inside a word
            out.add(*((line,) if closed else (" ", line)))
            prev, prev_frozen = line, frozen
            continue
        out.end_line()
        out.add(line)
        prev, prev_frozen = line, frozen
    return out.text()
