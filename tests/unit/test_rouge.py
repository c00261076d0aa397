"""ROUGE equals rouge-score's RougeScorer (no stemmer) float for float, on awkward pairs too."""

from __future__ import annotations

import random

import pytest

from lmcore.eval.rouge import ROUGE_TYPES, lcs_length, rouge_batch, rouge_pairs, rouge_tokenize

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

_WORDS = "the cat sat on a mat and dog ran far away to see it again".split()
_rng = random.Random(0)
_LONG_A = " ".join(_rng.choice(_WORDS) for _ in range(400))
_LONG_B = " ".join(_rng.choice(_WORDS) for _ in range(350))

PAIRS = [  # (prediction, reference)
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("", ""),
    ("", "the reference only"),
    ("the prediction only", ""),
    ("!!! ... ???", "only punctuation on the other side"),
    ("the the the the", "the the"),
    ("the cat the cat the cat", "cat the cat the"),
    ("naïve café résumé", "naive cafe resume"),  # non-ASCII letters split words
    ("日本語のテキスト", "日本語のテキスト"),  # no tokens at all
    ("\u212a is the Kelvin sign", "k is the kelvin sign"),  # lower() maps it into ASCII
    ("İstanbul", "istanbul"),  # lower() gives 'i' + combining dot
    ("Don't stop-believing, 2024!", "dont stop believing 2024"),
    ("UPPER case Words", "upper CASE words"),
    ("a b c d e f g", "g f e d c b a"),
    (_LONG_A, _LONG_B),
    (_LONG_B[:500], _LONG_A),
    ("line one\nline two\ttabbed", "line two line one"),
]


def test_matches_rouge_score_exactly():
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    ours = rouge_pairs([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for (pred, ref), mine in zip(PAIRS, ours, strict=True):
        theirs = scorer.score(ref, pred)
        for name in ROUGE_TYPES:
            expected = theirs[name]
            got = mine[name]
            assert (got["precision"], got["recall"], got["fmeasure"]) == (
                expected.precision,
                expected.recall,
                expected.fmeasure,
            ), (name, pred[:40], ref[:40])


def test_tokenizer_is_rouge_scores():
    assert rouge_tokenize("Héllo, World! x2") == ["h", "llo", "world", "x2"]
    assert rouge_tokenize("日本語") == []


def test_bit_parallel_lcs_equals_dynamic_programming():
    def dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                same = a[i - 1] == b[j - 1]
                table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
        return table[-1][-1]

    rng = random.Random(1)
    for _ in range(300):
        a = [rng.randrange(5) for _ in range(rng.randrange(0, 90))]
        b = [rng.randrange(5) for _ in range(rng.randrange(0, 90))]
        assert lcs_length(a, b) == dp(a, b)


def test_batch_averages_the_pairs_and_checks_lengths():
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    pairs = rouge_pairs(preds, refs)
    batch = rouge_batch(preds, refs)
    for name in ROUGE_TYPES:
        assert batch[name]["fmeasure"] == pytest.approx(sum(s[name]["fmeasure"] for s in pairs) / len(pairs))
    assert rouge_batch([], [])["rougeL"] == {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    with pytest.raises(ValueError, match="one reference per prediction"):
        rouge_batch(["a"], [])
    with pytest.raises(ValueError, match="must be strings"):
        rouge_pairs(["a", None], ["a", "b"])
