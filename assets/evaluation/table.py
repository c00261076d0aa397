"""The evaluation table: every metric next to its baseline, with the interval of the difference and the gate's rule.

Each row compares the model and its baseline on the same test items (``lmcore.eval.significance``):
perplexity and bits per byte over the test documents, ROUGE over the held-out instructions,
accuracy and macro-F1 over the labeled test texts. ``improvement`` is > 0 when the model is
better; ``low``/``high`` bound it at ``significance.confidence``; ``rule`` is what the gate
requires of the row (``must_beat``, ``must_not_lose`` or None: reported, not gated) and
``passes`` whether the row meets it.
"""

from collections.abc import Sequence
from typing import Any

from assets.evaluation.answers import DECODINGS
from lmcore.eval import significance as S
from lmcore.eval.rouge import rouge_pairs
from lmcore.finetune.classify import METHODS

METRICS = {"perplexity (test)": False, "bits per byte (test)": False, "ROUGE-L F": True, "ROUGE-1 F": True,
           "ROUGE-L F (greedy)": True, "ROUGE-1 F (greedy)": True, "accuracy": True, "macro-F1": True}  # fmt: skip
"""The table's metrics, each with whether higher is better: the names ``must_beat`` and ``must_not_lose`` accept.
``ROUGE-* F`` score the answers decoded with ``evaluation_report.generation``, ``ROUGE-* F (greedy)`` plain greedy
answers."""


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


def _row(metric: str, c: S.Comparison, model_name: str, baseline_name: str, rule: str | None) -> dict[str, Any]:
    return {"metric": metric, "model": model_name, "value": round(c.model, 4), "baseline": baseline_name,
            "baseline_value": round(c.baseline, 4), "beats_baseline": c.improvement > 0,
            "improvement": round(c.improvement, 4), "low": round(c.low, 4), "high": round(c.high, 4),
            "p_value": round(c.p_value, 4), "items": c.items, "rule": rule,
            "passes": None if rule is None else c.passes(rule)}  # fmt: skip


def best_method(cls: dict[str, Any]) -> str | None:
    """The LM classifier (label_lm, head, encoder) with the highest test accuracy; None when none ran."""
    lm_methods = [m for m in METHODS if m != "bow" and m in cls]
    return max(lm_methods, key=lambda m: cls[m]["accuracy"]) if lm_methods else None


def table(
    ppl: dict[str, Any],
    rouge: dict[str, Any],
    refs: Sequence[str],
    cls: dict[str, Any],
    truth: Sequence[str],
    rule_of: dict[str, str | None],
    cfg: S.SignificanceConfig,
) -> list[dict[str, Any]]:
    """The rows: ``ppl`` is perplexity_report's test split (with its per-document figures), ``rouge`` the scored
    answers (``answers.score_answers``) to the held-out instructions whose references are ``refs``, ``cls``
    classifier_report's results (with per-text predictions) on the labeled test texts labeled ``truth``."""
    docs = ppl.get("documents")
    if docs is None:
        raise ValueError("perplexity_report has no per-document figures for the test split; re-materialize "
                         "perplexity_report")  # fmt: skip
    rows = []
    for metric, compare, units in (("perplexity (test)", S.perplexity, "tokens"),
                                   ("bits per byte (test)", S.bits_per_byte, "bytes")):  # fmt: skip
        c = compare(docs["model_nats"], docs["ngram_nats"], docs[units], cfg)
        rows.append(_row(metric, c, "model", "n-gram", rule_of[metric]))
    for decoding, suffix in zip(DECODINGS, ("", " (greedy)"), strict=True):
        gens = rouge[decoding]["generations"]
        n = len(gens["fine_tuned"])
        scored = {name: rouge_pairs(g, refs[:n]) for name, g in gens.items()}
        for kind, name in (("rougeL", "ROUGE-L F"), ("rouge1", "ROUGE-1 F")):
            tuned, base = ([s[kind]["fmeasure"] for s in scored[who]] for who in ("fine_tuned", "base"))
            c = S.means(tuned, base, higher_is_better=True, cfg=cfg)
            rows.append(_row(name + suffix, c, "fine-tuned", "base", rule_of[name + suffix]))
    best = best_method(cls)
    if best and "bow" in cls:
        model, bow = (_predictions(cls, m, len(truth)) for m in (best, "bow"))
        rows.append(_row("accuracy", S.accuracy(truth, model, bow, cfg), best, "bag of words", rule_of["accuracy"]))
        c = S.macro_f1(truth, model, bow, cls["labels"], cfg)
        rows.append(_row("macro-F1", c, best, "bag of words", rule_of["macro-F1"]))
    return rows


def _predictions(cls: dict[str, Any], method: str, n: int) -> list[str]:
    predicted = cls[method].get("predictions")
    if predicted is None or len(predicted) != n:
        raise ValueError(f"classifier_report has no per-example {method} predictions for the {n} labeled test texts; "
                         "re-materialize classifier_report")  # fmt: skip
    return predicted


def gate_failures(
    rows: list[dict[str, Any]], must_beat: Sequence[str] | None, must_not_lose: Sequence[str]
) -> list[str]:
    """One line per gated row that does not meet its rule, and per metric the gate names that the table lacks;
    empty when all pass. (``must_beat`` None gates every row the table has.)"""
    present = {r["metric"] for r in rows}
    named = [*(must_beat or []), *must_not_lose]
    failed = [f"{name}: not in the report (its inputs produced no such row)" for name in named if name not in present]
    for r in rows:
        if r["rule"] is None or r["passes"]:
            continue
        why = ("needs the whole interval above 0" if r["rule"] == "must_beat"
               else "the model is significantly worse: the whole interval is below 0")  # fmt: skip
        failed.append(f"{r['metric']} ({r['rule']}): {r['model']} {r['value']} vs {r['baseline']} "
                      f"{r['baseline_value']}, improvement {interval_text(r)}; {why}")  # fmt: skip
    return failed


def interval_text(r: dict[str, Any]) -> str:
    """``+0.0270 [+0.0101, +0.0436] p=0.001``: a row's improvement, its interval and p-value."""
    return f"{r['improvement']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] p={r['p_value']:.3g}"
