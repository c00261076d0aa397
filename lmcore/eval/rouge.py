"""ROUGE-1, ROUGE-2 and ROUGE-L, equal to ``rouge_score.rouge_scorer.RougeScorer`` without a stemmer.

Same tokenizer as rouge-score's ``DefaultTokenizer(use_stemmer=False)``: ``text.lower()``,
then every run of characters outside ``[a-z0-9]`` is a separator. So non-ASCII words
vanish (``"naïve"`` → ``na``, ``ve``; Chinese text → no tokens), except where Python's
``lower()`` maps a character into ASCII (``"K"``, the Kelvin sign, → ``k``). No stemming,
no stopwords: the scores are those of ``RougeScorer(["rouge1", "rouge2", "rougeL"],
use_stemmer=False).score(reference, prediction)``, float for float, including the empty
cases (no tokens on either side: precision, recall and F are 0).

Faster than calling rouge-score pair by pair: each text is tokenized once with one regex,
n-grams are counted with ``Counter`` and clipped by a loop over the smaller one, and the LCS length is computed with the
bit-parallel algorithm of Allison & Dix (1986) / Hyyrö (2004) on Python integers, which
does one pass over the shorter text with a few big-integer operations per token instead of
filling an m×n table. This module knows nothing of models or files.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_TOKEN = re.compile(r"[a-z0-9]+")

Score = dict[str, float]
"""``{"precision", "recall", "fmeasure"}``."""


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenization (lowercase, split on anything outside ``[a-z0-9]``)."""
    return _TOKEN.findall(text.lower())


def _fmeasure(precision: float, recall: float) -> float:
    # the same expression as rouge_score.scoring.fmeasure, so results match bit for bit
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _score(hits: int, n_pred: int, n_ref: int) -> Score:
    precision = hits / max(n_pred, 1)
    recall = hits / max(n_ref, 1)
    return {"precision": precision, "recall": recall, "fmeasure": _fmeasure(precision, recall)}


def lcs_length(a: Sequence[object], b: Sequence[object]) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel)."""
    if len(a) < len(b):
        a, b = b, a  # bit vectors over the longer sequence, one step per token of the shorter
    if not b:
        return 0
    masks: dict[object, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # zero bits of v mark the positions of a that are matched in the current LCS
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _overlap(a: Counter, b: Counter) -> int:
    """Clipped n-gram matches: sum over n-grams of min(count in a, count in b)."""
    if len(a) > len(b):
        a, b = b, a
    hits = 0
    for gram, count in a.items():
        other = b.get(gram)
        if other:
            hits += count if count < other else other
    return hits


def _pair(pred: list[str], ref: list[str]) -> dict[str, Score]:
    scores = {"rouge1": _score(_overlap(Counter(pred), Counter(ref)), len(pred), len(ref))}
    bigrams = _overlap(Counter(zip(pred, pred[1:], strict=False)), Counter(zip(ref, ref[1:], strict=False)))
    scores["rouge2"] = _score(bigrams, max(len(pred) - 1, 0), max(len(ref) - 1, 0))
    if pred and ref:
        lcs = lcs_length(ref, pred)
        precision, recall = lcs / len(pred), lcs / len(ref)
        scores["rougeL"] = {"precision": precision, "recall": recall, "fmeasure": _fmeasure(precision, recall)}
    else:
        scores["rougeL"] = {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    return scores


def rouge_pairs(preds: Sequence[str], refs: Sequence[str]) -> list[dict[str, Score]]:
    """Scores of each (prediction, reference) pair: ``[{"rouge1": Score, "rouge2": ..., "rougeL": ...}]``."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references; pass one reference per prediction")
    bad = [i for i, t in enumerate([*preds, *refs]) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"predictions and references must be strings; items {bad[:5]} are not")
    return [_pair(rouge_tokenize(p), rouge_tokenize(r)) for p, r in zip(preds, refs, strict=True)]


def rouge_batch(preds: Sequence[str], refs: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean precision, recall and F of each ROUGE type over the pairs (0.0 for an empty batch)."""
    pairs = rouge_pairs(preds, refs)
    n = max(len(pairs), 1)
    return {
        name: {k: sum(s[name][k] for s in pairs) / n for k in ("precision", "recall", "fmeasure")}
        for name in ROUGE_TYPES
    }
