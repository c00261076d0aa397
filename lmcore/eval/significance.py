"""How sure a "model beats baseline" row is: paired bootstrap intervals, p-values and the gate's rules.

Every comparison here is *paired*: the model and its baseline are scored on the same test
items (documents for perplexity and bits per byte, held-out instructions for ROUGE, labeled
texts for accuracy and macro-F1), and the bootstrap resamples those items, recomputing both
figures on each resample exactly as the point figure is computed (a ratio of sums for bits
per byte, a mean for ROUGE, per-class counts for macro-F1). The interval is the percentile
interval of the *improvement* (model minus baseline, sign-flipped where lower is better, so
> 0 always means the model is better); the p-value is the two-sided bootstrap p-value of "no
difference". Accuracy also gets McNemar's exact test on the items the two disagree on.

A gate rule reads the interval:

- ``must_beat``: the model is better and the whole interval is above 0;
- ``must_not_lose``: the model is not significantly worse (the interval reaches 0 or above).

Resamples are drawn once per item count from a seeded generator, so the same figures give the
same interval on any machine. This module knows nothing of Dagster, models or files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RULES = ("must_beat", "must_not_lose")
Statistic = Callable[[np.ndarray], np.ndarray]
"""Figures of one side from item weights: ``(B, n)`` resample counts -> ``(B,)`` figures."""


@dataclass(kw_only=True, frozen=True)
class SignificanceConfig:
    """How the gate's intervals are computed."""

    confidence: float = 0.95
    """Coverage of each interval (two-sided); the rules judge its ends."""
    resamples: int = 2000
    """Bootstrap resamples of the test items per comparison."""
    seed: int = 0
    """Seed of the resampling: the same figures give the same interval anywhere."""

    def __post_init__(self) -> None:
        problems = []
        if not 0.5 <= self.confidence < 1:
            problems.append(f"confidence must be in [0.5, 1), e.g. 0.95, got {self.confidence}")
        if self.resamples < 100:
            problems.append(f"resamples must be >= 100 (2000 gives stable 95% intervals), got {self.resamples}")
        if problems:
            raise ValueError("invalid SignificanceConfig: " + "; ".join(problems))


@dataclass(kw_only=True, frozen=True)
class Comparison:
    """A paired comparison of the model and its baseline on the same ``items``."""

    model: float
    baseline: float
    improvement: float
    """model - baseline where higher is better, baseline - model where lower is: > 0 means the model is better."""
    low: float
    """Lower end of the improvement's interval."""
    high: float
    """Upper end of the improvement's interval."""
    p_value: float
    """Two-sided p-value of "no difference" (bootstrap; McNemar's exact test for accuracy)."""
    confidence: float
    items: int
    method: str

    def passes(self, rule: str) -> bool:
        """Whether the comparison meets ``rule`` (one of :data:`RULES`)."""
        if rule == "must_beat":
            return self.improvement > 0 and self.low > 0
        if rule == "must_not_lose":
            return self.high >= 0
        raise ValueError(f"unknown gate rule {rule!r}; valid: {', '.join(RULES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resample_counts(n: int, cfg: SignificanceConfig) -> np.ndarray:
    """``(resamples, n)`` counts: how often each of ``n`` items is drawn in each bootstrap resample."""
    if n < 1:
        raise ValueError("no test items to resample")
    rng = np.random.default_rng(cfg.seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=cfg.resamples).astype(np.float64)


def paired_bootstrap(
    n: int,
    model: Statistic,
    baseline: Statistic,
    *,
    higher_is_better: bool,
    cfg: SignificanceConfig,
    method: str,
) -> Comparison:
    """The :class:`Comparison` of two statistics of the same ``n`` items."""
    counts = resample_counts(n, cfg)  # raises for no items
    ones = np.ones((1, n))
    point_model, point_base = float(model(ones)[0]), float(baseline(ones)[0])
    sign = 1.0 if higher_is_better else -1.0
    diffs = sign * (model(counts) - baseline(counts))
    alpha = 1.0 - cfg.confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    tail = min(int((diffs <= 0).sum()), int((diffs >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (len(diffs) + 1))
    return Comparison(
        model=point_model,
        baseline=point_base,
        improvement=sign * (point_model - point_base),
        low=float(low),
        high=float(high),
        p_value=p,
        confidence=cfg.confidence,
        items=n,
        method=method,
    )


def _array(values: Sequence[float], n: int, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} has {a.size} entries for {n} items; pass one per item")
    return a


def ratio_of_sums(
    model_nats: Sequence[float],
    baseline_nats: Sequence[float],
    units: Sequence[float],
    *,
    transform: Callable[[np.ndarray], np.ndarray],
    cfg: SignificanceConfig,
) -> Comparison:
    """Per-document nats of the model and the baseline over the same ``units`` (tokens or bytes) per document:
    ``transform(sum nats / sum units)`` for each side (lower is better), documents resampled."""
    n = len(units)
    u, m, b = _array(units, n, "units"), _array(model_nats, n, "model_nats"), _array(baseline_nats, n, "baseline_nats")
    if not u.sum() > 0:
        raise ValueError("no scored tokens in the test documents")

    def side(nats: np.ndarray) -> Statistic:
        return lambda w: transform((w @ nats) / np.maximum(w @ u, 1e-300))

    return paired_bootstrap(n, side(m), side(b), higher_is_better=False, cfg=cfg, method="paired bootstrap, documents")


def bits_per_byte(
    model_nats: Sequence[float], baseline_nats: Sequence[float], n_bytes: Sequence[float], cfg: SignificanceConfig
) -> Comparison:
    return ratio_of_sums(model_nats, baseline_nats, n_bytes, transform=lambda x: x / math.log(2), cfg=cfg)


def perplexity(
    model_nats: Sequence[float], baseline_nats: Sequence[float], tokens: Sequence[float], cfg: SignificanceConfig
) -> Comparison:
    return ratio_of_sums(model_nats, baseline_nats, tokens, transform=np.exp, cfg=cfg)


def means(
    model: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool, cfg: SignificanceConfig
) -> Comparison:
    """Per-item scores (e.g. ROUGE F of each answer): the mean of each side, items resampled."""
    n = len(model)
    m, b = _array(model, n, "model"), _array(baseline, n, "baseline")

    def side(x: np.ndarray) -> Statistic:
        return lambda w: (w @ x) / n

    return paired_bootstrap(
        n, side(m), side(b), higher_is_better=higher_is_better, cfg=cfg, method="paired bootstrap, examples"
    )


def mcnemar_p(model_right: Sequence[bool], baseline_right: Sequence[bool]) -> float:
    """McNemar's exact (binomial) two-sided p-value: of the items only one side gets right, is either side
    right on more of them than a fair coin would give?"""
    m, b = np.asarray(model_right, dtype=bool), np.asarray(baseline_right, dtype=bool)
    only_model, only_base = int((m & ~b).sum()), int((~m & b).sum())
    k, total = min(only_model, only_base), only_model + only_base
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, i) for i in range(k + 1)) / 2**total
    return min(1.0, 2 * tail)


def accuracy(
    truth: Sequence[str], model: Sequence[str], baseline: Sequence[str], cfg: SignificanceConfig
) -> Comparison:
    """Accuracy of two classifiers on the same texts: bootstrap interval, McNemar's exact p-value."""
    n = len(truth)
    if not len(model) == len(baseline) == n:
        raise ValueError(f"{len(truth)} labels, {len(model)} model and {len(baseline)} baseline predictions")
    m = np.array([p == t for p, t in zip(model, truth, strict=True)], dtype=np.float64)
    b = np.array([p == t for p, t in zip(baseline, truth, strict=True)], dtype=np.float64)
    c = means(m, b, higher_is_better=True, cfg=cfg)
    return Comparison(
        **{**c.to_dict(), "p_value": mcnemar_p(m > 0, b > 0), "method": "paired bootstrap, texts; McNemar exact p"}
    )


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> Statistic:
    """Macro-F1 over the columns of one-hot ``truth`` (n, C); ``predicted`` (n, C) may have an all-zero row
    (a prediction outside the labels: wrong, and in no class's column), as in sklearn's ``labels=``."""
    hits, pred_cols = truth * predicted, predicted

    def f1(w: np.ndarray) -> np.ndarray:
        tp, n_pred, n_true = w @ hits, w @ pred_cols, w @ truth  # (B, C)
        denom = n_pred + n_true
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0).mean(axis=1)

    return f1


def macro_f1(
    truth: Sequence[str], model: Sequence[str], baseline: Sequence[str], labels: Sequence[str], cfg: SignificanceConfig
) -> Comparison:
    """Macro-F1 over ``labels`` of two classifiers on the same texts (zero for a class with no true or predicted
    text, as sklearn's ``zero_division=0``), texts resampled."""
    n = len(truth)
    if not len(model) == len(baseline) == n:
        raise ValueError(f"{len(truth)} labels, {len(model)} model and {len(baseline)} baseline predictions")
    column = {label: i for i, label in enumerate(labels)}

    def one_hot(values: Sequence[str]) -> np.ndarray:
        out = np.zeros((n, len(labels)))
        for i, v in enumerate(values):
            if v in column:
                out[i, column[v]] = 1.0
        return out

    t = one_hot(truth)
    return paired_bootstrap(
        n,
        _macro_f1(t, one_hot(model)),
        _macro_f1(t, one_hot(baseline)),
        higher_is_better=True,
        cfg=cfg,
        method="paired bootstrap, texts",
    )
