"""Kneser-Ney n-gram baseline: normalisation, smoothing, scoring, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lmcore.eval.ngram import NGramLM


def _random_tokens(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one_over_the_vocab(order):
    model = NGramLM.fit([_random_tokens(3000, 12)], vocab_size=12, order=order)
    for context in ([], [3], [3, 4], [4, 5, 6], [11, 11, 11]):
        probs = model.probs(context)
        assert probs.shape == (12,) and (probs > 0).all()
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_unseen_tokens_and_contexts_keep_probability():
    model = NGramLM.fit([np.array([0, 1, 2] * 50, dtype=np.uint16)], vocab_size=10, order=3)
    probs = model.probs([0, 1])
    assert probs.argmax() == 2 and probs[2] > 0.8
    assert 0 < probs[7] < 0.05  # never seen: smoothed, not zero
    assert model.probs([8, 9]).sum() == pytest.approx(1.0)  # unseen context falls back to lower orders


def test_kneser_ney_backs_off_to_continuation_counts():
    # "7" is frequent but only ever follows "6" ("San Francisco"); "5" is rarer but follows five tokens
    stream = [6, 7] * 40 + [t for prev in range(5) for t in (prev, 5)]
    tokens = np.array(stream, dtype=np.uint16)
    bigram = NGramLM.fit([tokens], vocab_size=9, order=2)
    unigram = NGramLM.fit([tokens], vocab_size=9, order=1)
    assert unigram.probs([])[7] > unigram.probs([])[5]  # raw frequency
    after_unseen = bigram.probs([8])  # "8" never occurred: the lower order decides
    assert after_unseen[5] > after_unseen[7]
    assert bigram.probs([6])[7] > 0.9


def test_log_prob_matches_probs_and_respects_history():
    tokens = _random_tokens(500, 9, seed=1)
    model = NGramLM.fit([tokens], vocab_size=9, order=3)
    seq = np.array([1, 2, 3, 4, 5], dtype=np.uint16)
    lp = model.log_prob(seq)
    assert lp.shape == (4,)
    expected = [np.log(model.probs(seq[:i])[seq[i]]) for i in range(1, 5)]
    np.testing.assert_allclose(lp, expected)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        NGramLM.fit([np.array([0, 1, 12])], vocab_size=10)
    with pytest.raises(ValueError, match="order"):
        NGramLM.fit([np.array([0, 1, 2])], vocab_size=10, order=0)
    with pytest.raises(ValueError, match="overflows"):
        NGramLM.fit([np.array([0, 1, 2])], vocab_size=50_000, order=5)


def test_fits_and_scores_a_million_tokens_quickly():
    rng = np.random.default_rng(0)
    tokens = np.minimum(rng.zipf(1.3, 1_200_000), 4095).astype(np.uint16)
    start = time.perf_counter()
    model = NGramLM.fit([tokens[:1_000_000]], vocab_size=4096, order=3)
    lp = model.log_prob(tokens)
    assert time.perf_counter() - start < 30  # ~2 s on an idle 2-core machine
    assert np.isfinite(lp).all() and lp.max() <= 0
