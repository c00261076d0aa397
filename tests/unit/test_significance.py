"""The gate's noise: paired intervals and p-values for every kind of row, and the decisions of its two rules."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lmcore.eval import significance as S
from lmcore.eval.perplexity import subset_figures

CFG = S.SignificanceConfig()


def _docs(seed: int, n: int, model_shift: float) -> dict[str, list]:
    """Per-document nats of a baseline and of a model ``model_shift`` nats per token away from it, with noise."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 400, n)
    base = tokens * rng.normal(3.0, 0.4, n)
    model = base + tokens * (model_shift + rng.normal(0, 0.3, n))
    return {
        "tokens": tokens.tolist(),
        "bytes": (tokens * 3.3).round().tolist(),
        "model_nats": model.tolist(),
        "ngram_nats": base.tolist(),
    }


@pytest.mark.parametrize(
    ("shift", "beats", "not_lose"),
    [(-0.3, True, True), (0.3, False, False), (0.0, False, True)],
    ids=["clearly better", "clearly worse", "tied"],
)
def test_bits_per_byte_decisions(shift, beats, not_lose):
    d = _docs(0, 200, shift)
    c = S.bits_per_byte(d["model_nats"], d["ngram_nats"], d["bytes"], CFG)
    assert c.passes("must_beat") is beats
    assert c.passes("must_not_lose") is not_lose
    assert c.low <= c.improvement <= c.high


def test_point_figures_are_the_reports_own():
    d = _docs(1, 40, -0.1)
    whole = subset_figures(d, [True] * 40)
    bpb = S.bits_per_byte(d["model_nats"], d["ngram_nats"], d["bytes"], CFG)
    ppl = S.perplexity(d["model_nats"], d["ngram_nats"], d["tokens"], CFG)
    assert bpb.model == pytest.approx(whole["model"]["bits_per_byte"], rel=1e-12)
    assert bpb.baseline == pytest.approx(whole["ngram"]["bits_per_byte"], rel=1e-12)
    assert ppl.model == pytest.approx(whole["model"]["perplexity"], rel=1e-12)
    assert bpb.improvement == pytest.approx(bpb.baseline - bpb.model), "lower is better: improvement > 0 when lower"


def _labels(seed: int, n: int, model_acc: float, base_acc: float) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    truth = [classes[i] for i in rng.integers(0, 4, n)]

    def predict(acc: float) -> list[str]:
        right = rng.random(n) < acc
        wrong = [classes[(classes.index(t) + 1 + rng.integers(0, 3)) % 4] for t in truth]
        return [t if r else w for t, r, w in zip(truth, right, wrong, strict=True)]

    return truth, predict(model_acc), predict(base_acc)


@pytest.mark.parametrize(
    ("model_acc", "base_acc", "beats", "not_lose"),
    [(0.8, 0.5, True, True), (0.5, 0.8, False, False), (0.6, 0.6, False, True)],
    ids=["clearly better", "clearly worse", "tied"],
)
def test_classifier_decisions(model_acc, base_acc, beats, not_lose):
    truth, model, base = _labels(2, 400, model_acc, base_acc)
    for c in (S.accuracy(truth, model, base, CFG), S.macro_f1(truth, model, base, ["a", "b", "c", "d"], CFG)):
        assert c.passes("must_beat") is beats, c
        assert c.passes("must_not_lose") is not_lose, c


def test_macro_f1_matches_sklearn_with_absent_classes_and_unknown_predictions():
    truth = ["a", "a", "b", "b", "c"]
    model = ["a", "b", "b", "zzz", "a"]  # "zzz": unparseable output, wrong and in no column
    labels = ["a", "b", "c", "d"]  # "d": no true and no predicted text
    c = S.macro_f1(truth, model, truth, labels, CFG)
    assert c.model == pytest.approx(f1_score(truth, model, labels=labels, average="macro", zero_division=0))
    assert c.baseline == pytest.approx(f1_score(truth, truth, labels=labels, average="macro", zero_division=0))


def test_mcnemar_exact_p_value():
    # 10 texts only the model gets right, 2 only the baseline: 2 * P(X <= 2), X ~ Binomial(12, 1/2)
    model = [True] * 10 + [False] * 2 + [True] * 5
    base = [False] * 10 + [True] * 2 + [True] * 5
    assert S.mcnemar_p(model, base) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert S.mcnemar_p([True, False], [True, False]) == 1.0, "no disagreement: no evidence either way"


def test_rouge_means_and_determinism():
    rng = np.random.default_rng(3)
    tuned, base = rng.uniform(0.1, 0.4, 48), rng.uniform(0.0, 0.2, 48)
    a = S.means(tuned, base, higher_is_better=True, cfg=CFG)
    b = S.means(tuned, base, higher_is_better=True, cfg=CFG)
    assert a == b, "the same figures give the same interval"
    assert a.model == pytest.approx(tuned.mean()) and a.passes("must_beat") and a.p_value < 0.01
    wider = S.means(tuned, base, higher_is_better=True, cfg=S.SignificanceConfig(confidence=0.99))
    assert wider.low < a.low and wider.high > a.high


def test_fewer_items_give_a_wider_interval():
    few, many = _docs(4, 20, -0.05), _docs(4, 500, -0.05)
    narrow = S.bits_per_byte(many["model_nats"], many["ngram_nats"], many["bytes"], CFG)
    wide = S.bits_per_byte(few["model_nats"], few["ngram_nats"], few["bytes"], CFG)
    assert (wide.high - wide.low) > 2 * (narrow.high - narrow.low)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"confidence must be in \[0.5, 1\)"):
        S.SignificanceConfig(confidence=95)
    with pytest.raises(ValueError, match="resamples must be >= 100"):
        S.SignificanceConfig(resamples=10)
    with pytest.raises(ValueError, match="model_nats has 2 entries for 3 items"):
        S.bits_per_byte([1.0, 2.0], [1.0, 2.0, 3.0], [10, 10, 10], CFG)
    with pytest.raises(ValueError, match="3 labels, 2 model and 3 baseline predictions"):
        S.accuracy(["a", "b", "c"], ["a", "b"], ["a", "b", "c"], CFG)
    with pytest.raises(ValueError, match="no test items"):
        S.means([], [], higher_is_better=True, cfg=CFG)
    with pytest.raises(ValueError, match="unknown gate rule 'must_win'"):
        S.means([1.0], [0.0], higher_is_better=True, cfg=CFG).passes("must_win")
    assert math.isfinite(S.means([1.0], [0.0], higher_is_better=True, cfg=CFG).p_value)
