"""Bag-of-words baseline, labeled-file loading with bad lines, metrics and the confusion plot."""

from __future__ import annotations

import json

import pytest

from lmcore.eval.baselines import confusion_plot, evaluate_classifier, fit_bow_baseline, load_labeled, tune_bow_baseline
from tests.conftest import FIXTURES

LABELS = FIXTURES / "sft" / "labels.jsonl"

_VOCAB = {
    "joy": "happy glad delighted cheerful wonderful smile",
    "anger": "angry furious mad annoyed rage hate",
    "fear": "scared afraid nervous terrified worried panic",
}


def _texts(n: int, offset: int = 0) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for i in range(n):
        label = sorted(_VOCAB)[i % 3]
        words = _VOCAB[label].split()
        k = i // 3 + offset
        texts.append(f"i feel so {words[k % 6]} and {words[(k // 6 + k + 1) % 6]} today")
        labels.append(label)
    return texts, labels


def test_load_labeled_skips_bad_lines_with_their_numbers():
    texts, labels, stats = load_labeled(LABELS)
    assert texts == ["i feel so happy today", "this is awful and sad", "great news", "i am so angry"]
    assert labels == ["joy", "sadness", "joy", "anger"]
    assert stats["lines"] == 10 and stats["kept"] == 4
    assert stats["skipped"] == {
        "bad_json": 1,
        "empty_text": 1,
        "missing_label": 1,
        "missing_text": 1,
        "non_string_label": 1,
        "not_an_object": 1,
    }
    assert stats["skipped_lines"] == {
        "bad_json": [3],
        "empty_text": [4],
        "missing_text": [5],
        "missing_label": [6],
        "non_string_label": [7],
        "not_an_object": [9],
    }
    assert stats["labels"] == {"anger": 1, "joy": 2, "sadness": 1}


def test_load_labeled_other_field_names(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text("".join(json.dumps({"sentence": t, "y": y}) + "\n" for t, y in [("a b", "x"), ("c d", "z")]))
    texts, labels, _ = load_labeled(path, text_field="sentence", label_field="y")
    assert texts == ["a b", "c d"] and labels == ["x", "z"]


def test_load_labeled_refuses_unusable_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no usable rows"):
        load_labeled(empty)
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "a", "label": "joy"}) + "\n" + json.dumps({"text": "b", "label": "joy"}))
    with pytest.raises(ValueError, match=r"one\.jsonl: only 1 class.*at least two labels"):
        load_labeled(one)
    with pytest.raises(ValueError, match="no usable rows"):
        load_labeled(one, label_field="category")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_labeled(tmp_path / "missing.jsonl")


def test_baseline_learns_keywords_and_tuning_uses_validation():
    train, val, test = _texts(90), _texts(30, offset=2), _texts(30, offset=4)
    model = fit_bow_baseline(*train, seed=0)
    result = evaluate_classifier(test[1], list(model.predict(test[0])), labels=sorted(_VOCAB))
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0
    assert result["confusion"] == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    tuned, report = tune_bow_baseline(train, val, seed=0, C_grid=(0.01, 1.0), ngram_ranges=((1, 1),))
    assert len(report["validation"]) == 2 and report["C"] in (0.01, 1.0)
    best = max(report["validation"], key=lambda r: r["accuracy"])
    assert best["accuracy"] == max(r["accuracy"] for r in report["validation"]) and tuned.predict(["so furious"])[0]
    with pytest.raises(ValueError, match="features"):
        fit_bow_baseline(*train, seed=0, features="embeddings")


def test_evaluate_classifier_metrics():
    y_true = ["a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "b", "b", "b", "c", "a"]
    result = evaluate_classifier(y_true, y_pred, labels=["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # F1 per class: a = 0.5, b = 0.8, c = 2/3
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert evaluate_classifier(["a", "b"], ["a", "?"])["labels"] == ["?", "a", "b"]
    with pytest.raises(ValueError, match="predictions"):
        evaluate_classifier(["a"], [])


def test_confusion_plot_is_a_png():
    png = confusion_plot([[3, 1], [0, 4]], ["neg", "pos"], "test")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    with pytest.raises(ValueError, match="2x2"):
        confusion_plot([[1, 2, 3]], ["a", "b"], "bad")
