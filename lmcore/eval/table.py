"""The evaluation table: every metric next to its baseline, with the interval of the difference and the gate's rule.

Each :class:`MetricRow` compares the model and its baseline on the same test items
(``lmcore.eval.significance``): perplexity and bits per byte over the test documents, ROUGE over
the held-out instructions, accuracy and macro-F1 over the labeled test texts. ``improvement`` is
> 0 when the model is better; ``low``/``high`` bound it at ``significance.confidence``; ``rule`` is
what the gate requires of the row (``must_beat``, ``must_not_lose`` or None: reported, not gated)
and ``passes`` whether the row meets it. The gate (:func:`gate_failures`, :func:`changes_since`)
and every display read these rows; :meth:`MetricRow.to_dict` and :meth:`MetricRow.from_dict` are
the one place a row becomes JSON (``evaluation.json``, asset metadata) and back.

This module knows nothing of Dagster, models or files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from lmcore.eval import significance as S
from lmcore.eval.rouge import rouge_pairs

METRICS = {
    "perplexity (test)": False,
    "bits per byte (test)": False,
    "ROUGE-L F": True,
    "ROUGE-1 F": True,
    "ROUGE-L F (greedy)": True,
    "ROUGE-1 F (greedy)": True,
    "accuracy": True,
    "macro-F1": True,
}
"""The table's metrics, each with whether higher is better: the names ``must_beat`` and ``must_not_lose`` accept.
``ROUGE-* F`` score the answers decoded with the configured generation settings, ``ROUGE-* F (greedy)`` plain greedy
answers."""
DECODINGS = ("generation", "greedy")
"""The two decodings of the held-out answers, as keys of the answers' figures: the configured one, then greedy."""
BASELINE_METHOD = "bow"
"""The classifier every LM classifier is compared with: bag of words."""


@dataclass(kw_only=True, frozen=True)
class MetricRow:
    """One row of the table: the model's figure next to its baseline's on the same ``items`` (figures rounded to 4
    decimals, as published)."""

    metric: str
    """A name of :data:`METRICS`."""
    model: str
    """What is evaluated: ``model``, ``fine-tuned`` or the best LM classifier."""
    value: float
    baseline: str
    """What it is compared with: ``n-gram``, ``base`` or ``bag of words``."""
    baseline_value: float
    beats_baseline: bool
    """The unrounded improvement is > 0."""
    improvement: float
    """> 0: the model is better (the sign follows the metric's direction)."""
    low: float
    """Lower end of the improvement's interval."""
    high: float
    """Upper end of the improvement's interval."""
    p_value: float
    items: int
    """Test items compared (documents, instructions or texts)."""
    rule: str | None
    """What the gate requires of the row (``must_beat``, ``must_not_lose``); None: reported, not gated."""
    passes: bool | None
    """Whether the row meets its rule; None when it has none."""

    @classmethod
    def compare(cls, metric: str, c: S.Comparison, model: str, baseline: str, rule: str | None) -> MetricRow:
        """The row of comparison ``c`` of ``model`` with ``baseline`` on ``metric``, judged by ``rule``."""
        return cls(
            metric=metric,
            model=model,
            value=round(c.model, 4),
            baseline=baseline,
            baseline_value=round(c.baseline, 4),
            beats_baseline=c.improvement > 0,
            improvement=round(c.improvement, 4),
            low=round(c.low, 4),
            high=round(c.high, 4),
            p_value=round(c.p_value, 4),
            items=c.items,
            rule=rule,
            passes=None if rule is None else c.passes(rule),
        )

    def interval_text(self) -> str:
        """``+0.0270 [+0.0101, +0.0436] p=0.001``: the improvement, its interval and p-value."""
        return f"{self.improvement:+.4f} [{self.low:+.4f}, {self.high:+.4f}] p={self.p_value:.3g}"

    def to_dict(self) -> dict[str, Any]:
        """The row as published: a row of ``evaluation.json``'s ``table`` and of the asset's ``report`` metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> MetricRow:
        """A row read back from :meth:`to_dict`'s form (``evaluation.json``, the asset's metadata table)."""
        names = [f.name for f in fields(cls)]
        if missing := [n for n in names if n not in row]:
            raise ValueError(
                f"evaluation row {row.get('metric', '?')!r} has no {', '.join(missing)}: it was written by an older "
                "version; re-materialize evaluation_report"
            )
        return cls(**{n: row[n] for n in names})


def rows_of(report: Mapping[str, Any]) -> list[MetricRow]:
    """The rows of a published evaluation report (``evaluation.json``, the asset's manifest)."""
    return [MetricRow.from_dict(r) for r in report["table"]]


def rules(must_beat: Sequence[str] | None, must_not_lose: Sequence[str]) -> dict[str, str | None]:
    """The gate's rule for every metric: ``must_not_lose`` for those listed there, ``must_beat`` for those of
    ``must_beat`` (None: every other metric), None (not gated) for the rest."""
    out: dict[str, str | None] = {}
    for name in METRICS:
        if name in must_not_lose:
            out[name] = "must_not_lose"
        elif must_beat is None or name in must_beat:
            out[name] = "must_beat"
        else:
            out[name] = None
    return out


@dataclass(kw_only=True, frozen=True)
class ClassifierResults:
    """classifier_report's figures on the labeled test texts."""

    labels: list[str]
    """The classes, in the order of the per-class figures."""
    methods: dict[str, dict[str, Any]]
    """Per method (``accuracy``, ``macro_f1``, ``predictions``: one label per test text), in order of preference when
    two LM classifiers tie; :data:`BASELINE_METHOD` is the baseline."""

    @classmethod
    def from_report(cls, report: Mapping[str, Any], methods: Sequence[str]) -> ClassifierResults:
        """The results of ``methods`` (in that order) that classifier_report's manifest ``report`` has."""
        return cls(labels=report["labels"], methods={m: report[m] for m in methods if m in report})

    @property
    def best(self) -> str | None:
        """The LM classifier with the highest test accuracy (the first on a tie); None when none ran."""
        lm_methods = [m for m in self.methods if m != BASELINE_METHOD]
        return max(lm_methods, key=lambda m: self.methods[m]["accuracy"]) if lm_methods else None

    @property
    def baseline(self) -> str | None:
        return BASELINE_METHOD if BASELINE_METHOD in self.methods else None

    def scores(self, method: str) -> dict[str, Any]:
        """``{"accuracy", "macro_f1"}`` of ``method`` on the whole test set."""
        return {k: self.methods[method][k] for k in ("accuracy", "macro_f1")}

    def predictions(self, method: str, n: int) -> list[str]:
        """``method``'s label for each of the ``n`` test texts; ValueError when the report lacks them."""
        predicted = self.methods[method].get("predictions")
        if predicted is None or len(predicted) != n:
            raise ValueError(
                f"classifier_report has no per-example {method} predictions for the {n} labeled test texts; "
                "re-materialize classifier_report"
            )
        return predicted


@dataclass(kw_only=True, frozen=True)
class ReportInputs:
    """The figures the evaluation compares, each model with its baseline on the same test items."""

    perplexity: dict[str, Any]
    """perplexity_report's test split: ``model`` and ``ngram`` figures and per-document ``documents`` figures."""
    answers: dict[str, Any]
    """The held-out answers per decoding (:data:`DECODINGS`), with their ROUGE and repetition, ``examples``,
    ``decoding`` and ``samples`` (``assets.evaluation.answers.score_answers``)."""
    references: list[str]
    """The reference answer of each held-out instruction (the first ``answers["examples"]`` were answered)."""
    classifiers: ClassifierResults
    truth: list[str]
    """The label of each labeled test text."""


def metric_rows(inputs: ReportInputs, rule_of: Mapping[str, str | None], cfg: S.SignificanceConfig) -> list[MetricRow]:
    """The table: each metric that ``inputs`` has, in :data:`METRICS` order, judged by ``rule_of[metric]``."""
    docs = inputs.perplexity.get("documents")
    if docs is None:
        raise ValueError(
            "perplexity_report has no per-document figures for the test split; re-materialize perplexity_report"
        )
    rows = []
    for metric, compare, units in (
        ("perplexity (test)", S.perplexity, "tokens"),
        ("bits per byte (test)", S.bits_per_byte, "bytes"),
    ):
        c = compare(docs["model_nats"], docs["ngram_nats"], docs[units], cfg)
        rows.append(MetricRow.compare(metric, c, "model", "n-gram", rule_of[metric]))
    for decoding, suffix in zip(DECODINGS, ("", " (greedy)"), strict=True):
        gens = inputs.answers[decoding]["generations"]
        n = len(gens["fine_tuned"])
        scored = {name: rouge_pairs(g, inputs.references[:n]) for name, g in gens.items()}
        for kind, name in (("rougeL", "ROUGE-L F"), ("rouge1", "ROUGE-1 F")):
            tuned, base = ([s[kind]["fmeasure"] for s in scored[who]] for who in ("fine_tuned", "base"))
            c = S.means(tuned, base, higher_is_better=True, cfg=cfg)
            rows.append(MetricRow.compare(name + suffix, c, "fine-tuned", "base", rule_of[name + suffix]))
    cls, truth = inputs.classifiers, inputs.truth
    best, bow = cls.best, cls.baseline
    if best and bow:
        model, baseline = cls.predictions(best, len(truth)), cls.predictions(bow, len(truth))
        c = S.accuracy(truth, model, baseline, cfg)
        rows.append(MetricRow.compare("accuracy", c, best, "bag of words", rule_of["accuracy"]))
        c = S.macro_f1(truth, model, baseline, cls.labels, cfg)
        rows.append(MetricRow.compare("macro-F1", c, best, "bag of words", rule_of["macro-F1"]))
    return rows


def gate_failures(
    rows: Sequence[MetricRow], must_beat: Sequence[str] | None, must_not_lose: Sequence[str]
) -> list[str]:
    """One line per gated row that does not meet its rule, and per metric the gate names that the table lacks;
    empty when all pass. (``must_beat`` None gates every row the table has.)"""
    present = {r.metric for r in rows}
    named = [*(must_beat or []), *must_not_lose]
    failed = [f"{name}: not in the report (its inputs produced no such row)" for name in named if name not in present]
    for r in rows:
        if r.rule is None or r.passes:
            continue
        if r.rule == "must_beat":
            why = "needs the whole interval above 0"
        else:
            why = "the model is significantly worse: the whole interval is below 0"
        failed.append(
            f"{r.metric} ({r.rule}): {r.model} {r.value} vs {r.baseline} {r.baseline_value}, "
            f"improvement {r.interval_text()}; {why}"
        )
    return failed


@dataclass(kw_only=True, frozen=True)
class MetricChange:
    """A metric of the table next to its figure in the previous evaluation."""

    metric: str
    previous: float
    new: float
    worse_by: float
    """How much worse the new figure is, as a fraction of the previous one (> 0: worse), rounded to 4 decimals."""
    regressed: bool
    """``worse_by`` exceeds the tolerance."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def changes_since(rows: Sequence[MetricRow], previous: Mapping[str, float], tolerance: float) -> list[MetricChange]:
    """Each metric with a previous figure: how much worse it got, in the metric's direction, relative to the
    previous figure, and whether that exceeds ``tolerance``."""
    out = []
    for r in rows:
        name, new = r.metric, r.value
        if name not in METRICS or name not in previous:
            continue
        old = previous[name]
        worse = old - new if METRICS[name] else new - old  # > 0: the new model is worse
        worse_by = worse / abs(old) if old else worse
        regressed = worse_by > tolerance
        out.append(MetricChange(metric=name, previous=old, new=new, worse_by=round(worse_by, 4), regressed=regressed))
    return out
