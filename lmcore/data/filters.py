"""Per-document filters of the cleaning stage. A filter returns ``(keep, reason)`` as in datatrove; the reason of
a dropped document is written beside it and counted in the manifest."""

from __future__ import annotations

from collections.abc import Callable

from lmcore.data.reflow import lines

Filter = Callable[[str], "tuple[bool, str | None]"]


def length_reason(text: str, min_chars: int) -> str | None:
    """The length filters' reason: ``empty``, ``too_short`` or None (keep)."""
    if not text:
        return "empty"
    return "too_short" if len(text) < min_chars else None


def repetition_fraction(text: str) -> float:
    """Gopher-style duplicate-line measure: the larger of the fraction of non-blank lines that
    repeat an earlier line and the fraction of their characters in such repeats (lines are
    compared stripped; after reflow a prose line is a whole paragraph)."""
    seen: set[str] = set()
    count = dup_lines = chars = dup_chars = 0
    for raw in lines(text):
        line = raw.strip()
        if not line:
            continue
        count += 1
        chars += len(line)
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        else:
            seen.add(line)
    return max(dup_lines / count, dup_chars / chars) if count else 0.0


def filter_repetition(text: str, max_fraction: float) -> tuple[bool, str | None]:
    """Drop (reason ``repetition``) when :func:`repetition_fraction` exceeds ``max_fraction``."""
    return (False, "repetition") if repetition_fraction(text) > max_fraction else (True, None)
