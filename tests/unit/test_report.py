"""The evaluation report in lmcore: typed rows that read back as published, the best classifier, the clean subsets."""

import json
import math

import pytest

from lmcore.eval.contamination import ContaminationConfig
from lmcore.eval.repetition import repetition_figures
from lmcore.eval.report import EvaluationSets, ReportSettings, build_report
from lmcore.eval.rouge import rouge_batch
from lmcore.eval.significance import SignificanceConfig
from lmcore.eval.table import (
    ClassifierResults,
    MetricRow,
    ReportInputs,
    gate_failures,
    metric_rows,
    rows_of,
    rules,
)
from lmcore.finetune.classify import METHODS

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _text(i: int, n: int = 20) -> str:
    """A text of ``n`` words that shares no 13-gram with ``_text(j)`` for another ``j``."""
    return " ".join(f"{WORDS[(i + j) % len(WORDS)]}{i}x{j}" for j in range(n))


def _inputs(cls: dict | None = None) -> ReportInputs:
    docs = {
        "tokens": [100] * 10,
        "bytes": [330] * 10,
        "model_nats": [300.0 + i for i in range(10)],
        "ngram_nats": [340.0 + i % 3 for i in range(10)],
    }
    ppl = {
        "model": {"perplexity": 20.0, "bits_per_byte": 1.3},
        "ngram": {"perplexity": 30.0, "bits_per_byte": 1.5},
        "documents": docs,
    }
    refs = [f"the answer number {i} is here" for i in range(8)]
    gens = {"fine_tuned": [f"the answer number {i}" for i in range(6)], "base": ["nothing"] * 6}
    decoded = {
        "generations": gens,
        "rouge": {n: rouge_batch(g, refs[:6]) for n, g in gens.items()},
        "repetition": {n: repetition_figures(g) for n, g in gens.items()},
    }
    answers = {
        "generation": decoded,
        "greedy": decoded,
        "examples": 6,
        "samples": [],
        "decoding": {"temperature": 0.0, "seed": 0},
    }
    truth = ["a", "b"] * 6
    cls = cls or {
        "labels": ["a", "b"],
        "seconds": 1.0,
        "head": {"accuracy": 1.0, "macro_f1": 1.0, "predictions": truth},
        "bow": {"accuracy": 0.5, "macro_f1": 1 / 3, "predictions": ["a"] * 12},
    }
    return ReportInputs(
        perplexity=ppl,
        answers=answers,
        references=refs,
        classifiers=ClassifierResults.from_report(cls, METHODS),
        truth=truth,
    )


def test_a_row_reads_back_as_it_was_published():
    rows = metric_rows(_inputs(), rules(None, ["accuracy"]), SignificanceConfig(resamples=200))
    published = json.loads(json.dumps({"table": [r.to_dict() for r in rows]}))
    assert rows_of(published) == rows
    assert [r.rule for r in rows if r.metric in ("accuracy", "macro-F1")] == ["must_not_lose", "must_beat"]
    assert rows[0].interval_text().startswith("+") and rows[0].beats_baseline, "lower perplexity: better"
    old = {k: v for k, v in published["table"][0].items() if k != "items"}
    with pytest.raises(ValueError, match="'perplexity \\(test\\)' has no items.*re-materialize evaluation_report"):
        MetricRow.from_dict(old)


def test_a_tie_goes_to_the_first_method_and_no_baseline_means_no_accuracy_row():
    tied = {"labels": ["a"], "head": {"accuracy": 0.7}, "label_lm": {"accuracy": 0.7}, "bow": {"accuracy": 0.9}}
    results = ClassifierResults.from_report(tied, METHODS)
    assert results.best == "label_lm" and results.baseline == "bow", "METHODS order breaks the tie; bow is no LM"
    assert ClassifierResults.from_report(tied, ("head", "label_lm")).best == "head"
    truth = ["a", "b"] * 6
    alone = {"labels": ["a", "b"], "head": {"accuracy": 1.0, "macro_f1": 1.0, "predictions": truth}}
    rows = metric_rows(_inputs(alone), rules(None, []), SignificanceConfig(resamples=200))
    assert "accuracy" not in {r.metric for r in rows}
    assert "accuracy: not in the report (its inputs produced no such row)" in gate_failures(rows, ["accuracy"], [])


def test_each_set_is_scored_again_on_its_clean_part():
    inputs = _inputs()
    train = [_text(i) for i in range(100, 110)]
    sets = EvaluationSets(
        test_docs=[_text(i) for i in range(10)][:8] + train[:2],  # the last two test documents are train documents
        heldout=[_text(200 + i) for i in range(8)],
        labeled_test=[_text(300 + i) for i in range(12)],
        pretraining_train=iter(train),
        sft_train=iter([_text(200)]),  # the first held-out instruction was trained on
        labeled_train=[_text(300 + i) for i in (1, 3, 5)],
    )
    settings = ReportSettings(
        contamination=ContaminationConfig(threshold=0.1),
        max_new_tokens=8,
        significance=SignificanceConfig(resamples=200),
    )
    report = build_report(inputs, sets, settings)
    assert report.contaminated_fractions() == {"test_split": 0.2, "sft_heldout": 0.125, "labeled_test": 0.25}
    c = report.figures["contamination"]["sets"]
    assert [x["index"] for x in c["test_split"]["listed"]] == [8, 9]
    assert c["test_split"]["clean"]["documents"] == 8
    clean_ppl = c["test_split"]["clean"]["perplexity"]["model"]
    assert clean_ppl == pytest.approx(math.exp(sum(300.0 + i for i in range(8)) / 800))
    assert c["sft_heldout"]["clean"]["examples"] == 5, "6 answered, the first contaminated"
    labeled = c["labeled_test"]["clean"]
    assert labeled["examples"] == 9 and labeled["model"] == {"method": "head", "accuracy": 1.0, "macro_f1": 1.0}
    assert labeled["baseline"]["accuracy"] == pytest.approx(6 / 9), "bow says a: right on the clean 0, 2, 4, 6, 8, 10"
    published = report.to_json()
    assert published["table"] == [r.to_dict() for r in report.rows]
    assert published["classification"]["model"]["method"] == "head"
    assert "| accuracy | head | 1.0000 | bag of words | 0.5000 |" in report.markdown
    assert "| labeled_test | 12 | 3 | 0.2500 | yes |" in report.markdown
    assert report.generation()["decoding"] == {"temperature": 0.0, "seed": 0}
