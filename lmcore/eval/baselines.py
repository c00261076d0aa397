"""The bag-of-words classification baseline, labeled-file loading, metrics and the confusion plot.

The baseline is what the fine-tuned model has to beat: logistic regression on unigram and
bigram counts (or TF-IDF), class-balanced, with ``C`` picked on a validation split by
:func:`tune_bow_baseline` (never on test). The metrics and plot are shared with the model's
own classifier evaluation. This module knows nothing of Dagster, models or training.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.pipeline import Pipeline

FEATURES = ("counts", "tfidf")
DEFAULT_C_GRID = (0.3, 1.0, 3.0, 10.0)


def load_labeled(
    path: str | Path, text_field: str = "text", label_field: str = "label", *, report_lines: int = 5
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Read a ``.jsonl`` file of labeled texts; returns ``(texts, labels, stats)``.

    A bad line (broken JSON, not an object, missing or empty text, missing label, label
    not a string) is skipped and counted; ``stats``: lines, kept, skipped {reason: n},
    skipped_lines {reason: [first line numbers]}, labels {label: n}. Raises
    FileNotFoundError for a missing file and ValueError when nothing usable is left or
    fewer than two classes are.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give a .jsonl file with {text_field!r} and {label_field!r}")
    texts: list[str] = []
    labels: list[str] = []
    skipped: Counter[str] = Counter()
    skipped_lines: dict[str, list[int]] = {}
    lines = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            lines += 1
            reason = None
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                row, reason = None, "bad_json"
            if reason is None:
                reason = _bad_row(row, text_field, label_field)
            if reason is not None:
                skipped[reason] += 1
                kept_lines = skipped_lines.setdefault(reason, [])
                if len(kept_lines) < report_lines:
                    kept_lines.append(lineno)
                continue
            texts.append(row[text_field])
            labels.append(row[label_field])
    counts = Counter(labels)
    stats = {
        "lines": lines,
        "kept": len(texts),
        "skipped": dict(sorted(skipped.items())),
        "skipped_lines": dict(sorted(skipped_lines.items())),
        "labels": dict(sorted(counts.items())),
    }
    if not texts:
        raise ValueError(
            f"{path}: no usable rows ({lines} non-blank lines, skipped {stats['skipped'] or 'none'}); "
            f"each line must be a JSON object with a non-empty string {text_field!r} and a string {label_field!r}"
        )
    if len(counts) < 2:
        raise ValueError(
            f"{path}: only {len(counts)} class ({sorted(counts)}); a classifier needs at least two labels "
            f"in {label_field!r}; check label_field or add examples of other classes"
        )
    return texts, labels, stats


def _bad_row(row: Any, text_field: str, label_field: str) -> str | None:
    if not isinstance(row, dict):
        return "not_an_object"
    text = row.get(text_field)
    if text is None:
        return "missing_text"
    if not isinstance(text, str):
        return "non_string_text"
    if not text.strip():
        return "empty_text"
    label = row.get(label_field)
    if label is None:
        return "missing_label"
    if not isinstance(label, str):
        return "non_string_label"
    if not label.strip():
        return "empty_label"
    return None


def fit_bow_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    *,
    seed: int,
    C: float = 1.0,
    features: str = "counts",
    ngram_range: tuple[int, int] = (1, 2),
    min_df: int = 1,
) -> Pipeline:
    """Fit class-balanced logistic regression on uni+bigram ``counts`` or ``tfidf``; returns the pipeline.

    The pipeline's ``predict(texts)`` gives labels; ``classes_`` lists them.
    """
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if len(train_texts) != len(train_labels):
        raise ValueError(f"{len(train_texts)} texts but {len(train_labels)} labels")
    if len(set(train_labels)) < 2:
        raise ValueError(f"train_labels has {len(set(train_labels))} class; at least two are needed")
    vectorizer_cls = CountVectorizer if features == "counts" else TfidfVectorizer
    model = Pipeline(
        [
            ("features", vectorizer_cls(ngram_range=ngram_range, min_df=min_df)),
            ("clf", LogisticRegression(C=C, class_weight="balanced", max_iter=3000, random_state=seed)),
        ]
    )
    return model.fit(list(train_texts), list(train_labels))


def tune_bow_baseline(
    train: tuple[Sequence[str], Sequence[str]],
    validation: tuple[Sequence[str], Sequence[str]],
    *,
    seed: int,
    C_grid: Sequence[float] = DEFAULT_C_GRID,
    ngram_ranges: Sequence[tuple[int, int]] = ((1, 1), (1, 2)),
    features: str = "counts",
) -> tuple[Pipeline, dict[str, Any]]:
    """Fit one baseline per (``ngram_range``, ``C``) and keep the best validation accuracy.

    Ties go to the earlier candidate (smaller n-gram range, then smaller C). Returns the
    chosen model and ``{"C", "ngram_range", "features", "validation": [{"C", "ngram_range", "accuracy"}]}``.
    """
    if not C_grid or not ngram_ranges:
        raise ValueError("C_grid and ngram_ranges must each hold at least one value, e.g. (1.0,) and ((1, 2),)")
    tried: list[dict[str, Any]] = []
    best: tuple[float, Pipeline, dict[str, Any]] | None = None
    for ngram_range in ngram_ranges:
        for C in sorted(C_grid):
            model = fit_bow_baseline(*train, seed=seed, C=C, features=features, ngram_range=tuple(ngram_range))
            accuracy = float(accuracy_score(list(validation[1]), model.predict(list(validation[0]))))
            tried.append({"C": C, "ngram_range": list(ngram_range), "accuracy": accuracy})
            if best is None or accuracy > best[0]:
                best = (accuracy, model, tried[-1])
    assert best is not None
    chosen = best[2]
    return best[1], {"C": chosen["C"], "ngram_range": chosen["ngram_range"], "features": features, "validation": tried}


def evaluate_classifier(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro F1 and the confusion matrix (rows: true label, columns: predicted) in ``labels`` order.

    ``labels`` defaults to the sorted union of true and predicted labels; a prediction
    outside ``labels`` (e.g. unparseable model output) counts as wrong but has no column.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no examples to evaluate")
    labels = sorted(set(y_true) | set(y_pred)) if labels is None else list(labels)
    y_true, y_pred = list(y_true), list(y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": labels,
    }


def confusion_plot(confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """A confusion-matrix heat map with counts, as PNG bytes (matplotlib Agg, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    if len(confusion) != n or any(len(row) != n for row in confusion):
        raise ValueError(f"confusion must be {n}x{n} to match labels {list(labels)}")
    fig = Figure(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    peak = max((max(row) for row in confusion), default=0)
    for i, row in enumerate(confusion):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
