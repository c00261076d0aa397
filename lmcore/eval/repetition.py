"""How much generated text repeats itself: distinct-2 and lines said three times or more.

A small model decoded greedily loops: the same line again and again, or one phrase within a
line. Two cheap figures show it next to ROUGE: distinct-2 (Li et al., 2016), the share of a
text's word bigrams that are distinct (1 = no bigram twice, near 0 = one phrase looped),
averaged over the texts; and the share of texts in which one non-empty line occurs
``line_repeats`` times or more. Words are ROUGE's tokens. This module knows nothing of models.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from lmcore.eval.rouge import rouge_tokenize


def distinct_n(text: str, n: int = 2) -> float | None:
    """Distinct word n-grams over all word n-grams of ``text``; None when it has fewer than ``n`` words."""
    words = rouge_tokenize(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def max_line_repeats(text: str) -> int:
    """How often the most frequent non-empty line (stripped) occurs in ``text``; 0 for no such line."""
    counts = Counter(line.strip() for line in text.splitlines() if line.strip())
    return max(counts.values(), default=0)


def repetition_figures(texts: Sequence[str], *, line_repeats: int = 3) -> dict[str, Any]:
    """``distinct_2`` (mean over the texts of two words or more; None if there is none) and
    ``repeated_line_share`` (texts with a line occurring ``line_repeats`` times or more, over all texts)."""
    if line_repeats < 2:
        raise ValueError(f"line_repeats must be >= 2 (a line said that often counts as looping), got {line_repeats}")
    distinct = [d for d in (distinct_n(t) for t in texts) if d is not None]
    looping = sum(max_line_repeats(t) >= line_repeats for t in texts)
    return {
        "texts": len(texts),
        "distinct_2": sum(distinct) / len(distinct) if distinct else None,
        "repeated_line_share": looping / len(texts) if texts else 0.0,
        "line_repeats": line_repeats,
    }
