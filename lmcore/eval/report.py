"""The evaluation report: every number next to its baseline, and each evaluation set's overlap with the training data.

:func:`build_report` makes one table (perplexity and bits per byte: model vs n-gram; ROUGE:
fine-tuned vs base model on held-out instructions, under the configured decoding and greedily;
accuracy and macro-F1: best LM classifier vs bag of words; ``lmcore.eval.table``), the figures
around it, sample generations, and the Markdown of it all. Every evaluation set is checked for
word n-gram overlap with the training data that produced the model (``lmcore.eval.contamination``):
the test split against the train token shards, the held-out SFT instructions against the SFT
training rows and the train shards, the labeled test texts against the labeled train texts and
the train shards. The report's ``contamination`` gives, per set, the contaminated fraction, the
first contaminated examples and every metric again on the clean subset.

This module knows nothing of Dagster or of where the figures and texts are stored: the caller
reads them, and publishes :meth:`EvaluationReport.to_json` and :attr:`EvaluationReport.markdown`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lmcore.eval.baselines import evaluate_classifier
from lmcore.eval.contamination import (
    ContaminationConfig,
    NGramIndex,
    contamination_report,
    find_contamination,
    required_lengths,
)
from lmcore.eval.perplexity import subset_figures
from lmcore.eval.rouge import rouge_batch
from lmcore.eval.significance import SignificanceConfig
from lmcore.eval.table import DECODINGS, MetricRow, ReportInputs, metric_rows, rules

IndexedSets = dict[str, tuple[list[str], dict[str, NGramIndex]]]
"""Per evaluation set: its texts, and the training indexes (by name) it is checked against."""


@dataclass(kw_only=True, frozen=True)
class ReportSettings:
    """How the report judges and renders its figures."""

    significance: SignificanceConfig = SignificanceConfig()
    """How each row's interval and p-value are computed."""
    contamination: ContaminationConfig = ContaminationConfig()
    """The n-gram overlap check of every evaluation set."""
    must_beat: Sequence[str] | None = None
    """Metrics that must beat their baseline (None: every metric that ``must_not_lose`` does not name)."""
    must_not_lose: Sequence[str] = ()
    """Metrics that may trail their baseline, but not significantly."""
    max_new_tokens: int
    """Longest answer, in tokens (said in the Markdown)."""


@dataclass(kw_only=True, frozen=True)
class EvaluationSets:
    """The evaluation sets' texts, and the texts the model was trained on, for the contamination check."""

    test_docs: list[str]
    """The test split, document by document."""
    heldout: list[str]
    """The held-out SFT conversations (``contamination.conversation_text``)."""
    labeled_test: list[str]
    """The labeled test texts."""
    pretraining_train: Iterable[str]
    """The train token shards decoded document by document (read once)."""
    sft_train: Iterable[str]
    """The SFT training rows as rendered (``contamination.chatml_text``; read once)."""
    labeled_train: list[str]
    """The classifiers' labeled train texts."""


@dataclass(kw_only=True, frozen=True)
class EvaluationReport:
    """The table, the figures of ``evaluation.json`` around it, and the report's Markdown."""

    rows: list[MetricRow]
    figures: dict[str, Any]
    """Every section of ``evaluation.json`` but ``table``: perplexity, bits_per_byte, rouge, classification,
    samples, significance, contamination."""
    markdown: str

    def to_json(self) -> dict[str, Any]:
        """``evaluation.json``: the figures and the table."""
        return {**self.figures, "table": [r.to_dict() for r in self.rows]}

    def generation(self) -> dict[str, Any]:
        """How the answers were decoded, and the repetition in them under that decoding and greedily."""
        rouge = self.figures["rouge"]
        return {
            "decoding": rouge["decoding"],
            "repetition": rouge["repetition"],
            "greedy_repetition": rouge["greedy"]["repetition"],
        }

    def contaminated_fractions(self) -> dict[str, float]:
        """Per evaluation set, the fraction of its examples that overlap the training data."""
        return {name: s["fraction"] for name, s in self.figures["contamination"]["sets"].items()}


def build_report(inputs: ReportInputs, sets: EvaluationSets, settings: ReportSettings) -> EvaluationReport:
    """The report on ``inputs``, with the contamination of ``sets``."""
    rows = metric_rows(inputs, rules(settings.must_beat, settings.must_not_lose), settings.significance)
    cls = inputs.classifiers
    best, bow = cls.best, cls.baseline
    figures = {
        "perplexity": {
            "model": inputs.perplexity["model"]["perplexity"],
            "baseline": inputs.perplexity["ngram"]["perplexity"],
            "split": "test",
        },
        "bits_per_byte": {
            "model": inputs.perplexity["model"]["bits_per_byte"],
            "baseline": inputs.perplexity["ngram"]["bits_per_byte"],
        },
        "rouge": rouge_section(inputs.answers),
        "classification": {
            "model": {"method": best, **cls.scores(best)} if best else None,
            "baseline": {"method": bow, **cls.scores(bow)} if bow else None,
            "all": {m: cls.scores(m) for m in cls.methods},
        },
        "samples": inputs.answers["samples"],
        "significance": {
            **settings.significance.__dict__,
            "must_beat": settings.must_beat,
            "must_not_lose": settings.must_not_lose,
        },
    }
    figures["contamination"] = _contamination(settings.contamination, index_sets(sets, settings.contamination), inputs)
    markdown = _markdown(figures, rows, settings) + _contamination_markdown(figures["contamination"])
    return EvaluationReport(rows=rows, figures=figures, markdown=markdown)


def index_sets(sets: EvaluationSets, cfg: ContaminationConfig) -> IndexedSets:
    """Each evaluation set's texts with the indexes of the training texts it is checked against."""
    lengths = required_lengths([sets.test_docs, sets.heldout, sets.labeled_test], cfg)
    pretraining = NGramIndex.build(sets.pretraining_train, lengths=lengths)
    sft_train = NGramIndex.build(sets.sft_train, lengths=lengths)
    labeled_train = NGramIndex.build(sets.labeled_train, lengths=lengths)
    return {
        "test_split": (sets.test_docs, {"pretraining_train": pretraining}),
        "sft_heldout": (sets.heldout, {"sft_train": sft_train, "pretraining_train": pretraining}),
        "labeled_test": (sets.labeled_test, {"labeled_train": labeled_train, "pretraining_train": pretraining}),
    }


def rouge_section(answers: dict[str, Any]) -> dict[str, Any]:
    """The report's ``rouge``: ROUGE and repetition of the fine-tuned (``model``) and the base model
    (``baseline``) under the configured ``decoding``, and the same under ``greedy``."""

    def pair(decoding: str, what: str) -> dict[str, Any]:
        return _pair(answers[decoding][what]["fine_tuned"], answers[decoding][what]["base"])

    return {
        **pair("generation", "rouge"),
        "examples": answers["examples"],
        "decoding": answers["decoding"],
        "repetition": pair("generation", "repetition"),
        "greedy": {**pair("greedy", "rouge"), "repetition": pair("greedy", "repetition")},
    }


def _pair(model: Any, baseline: Any) -> dict[str, Any]:
    return {"model": model, "baseline": baseline}


def _clean_classification(inputs: ReportInputs, keep: list[bool]) -> dict[str, Any]:
    """Accuracy and macro-F1 of the best LM method and of bag of words on the clean labeled test texts."""
    cls, truth = inputs.classifiers, inputs.truth
    out: dict[str, Any] = {"examples": sum(keep), "model": None, "baseline": None}
    for side, method in (("model", cls.best), ("baseline", cls.baseline)):
        if method is None or not any(keep):
            continue
        predicted = cls.predictions(method, len(truth))
        kept = [i for i, k in enumerate(keep) if k]
        scores = evaluate_classifier([truth[i] for i in kept], [predicted[i] for i in kept], cls.labels)
        out[side] = {"method": method, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
    return out


def _clean_rouge(answers: dict[str, Any], refs: list[str], keep: list[bool]) -> dict[str, Any]:
    """ROUGE of the fine-tuned and the base model on the clean ones of the generated held-out instructions."""
    kept = [i for i, k in enumerate(keep[: answers["examples"]]) if k]
    out: dict[str, Any] = {"examples": len(kept)}
    for decoding, key in zip(DECODINGS, ("rouge", "greedy"), strict=True):
        if not kept:
            out[key] = _pair(None, None)
            continue
        gens = answers[decoding]["generations"]
        scores = {n: rouge_batch([g[i] for i in kept], [refs[i] for i in kept]) for n, g in gens.items()}
        out[key] = _pair(scores["fine_tuned"], scores["base"])
    return out


def _contamination(cfg: ContaminationConfig, sets: IndexedSets, inputs: ReportInputs) -> dict[str, Any]:
    """The report's ``contamination``: per set the overlap figures and the metrics on its clean subset."""
    out: dict[str, Any] = {"n": cfg.n, "min_words": cfg.min_words, "threshold": cfg.threshold, "sets": {}}
    keep: dict[str, list[bool]] = {}
    for name, (texts, indexes) in sets.items():
        matches = find_contamination(texts, indexes, cfg)
        keep[name] = [m is None for m in matches]
        out["sets"][name] = contamination_report(texts, matches, cfg, checked_against=list(indexes))
    test = subset_figures(inputs.perplexity["documents"], keep["test_split"])
    both = test["model"] is not None
    out["sets"]["test_split"]["clean"] = {
        "documents": test["documents"],
        "perplexity": _pair(*(test[w]["perplexity"] if both else None for w in ("model", "ngram"))),
        "bits_per_byte": _pair(*(test[w]["bits_per_byte"] if both else None for w in ("model", "ngram"))),
    }
    out["sets"]["sft_heldout"]["clean"] = _clean_rouge(inputs.answers, inputs.references, keep["sft_heldout"])
    out["sets"]["labeled_test"]["clean"] = _clean_classification(inputs, keep["labeled_test"])
    indexes = {n: i for _, by in sets.values() for n, i in by.items()}
    out["indexes"] = {name: index.summary() for name, index in indexes.items()}
    return out


def _markdown(figures: dict[str, Any], rows: list[MetricRow], settings: ReportSettings) -> str:
    sig = settings.significance
    lines = [
        "# Evaluation",
        "",
        f"Improvement: how much better the model is (> 0: better), with its {sig.confidence:.0%} interval "
        f"(paired bootstrap over the test items, {sig.resamples} resamples) and p-value. must_beat: the whole "
        "interval above 0; must_not_lose: not all of it below 0.",
        "",
        "| metric | model | value | baseline | baseline value | improvement [interval] p | items | rule | passes |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | --- | --- |",
    ]
    for r in rows:
        passes = "-" if r.passes is None else "yes" if r.passes else "**no**"
        lines.append(
            f"| {r.metric} | {r.model} | {r.value:.4f} | {r.baseline} | {r.baseline_value:.4f} | "
            f"{r.interval_text()} | {r.items} | {r.rule or 'not gated'} | {passes} |"
        )
    lines += generation_markdown(figures["rouge"], settings.max_new_tokens)
    lines += ["", "## Sample generations (held-out instructions)", ""]
    for s in figures["samples"]:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- reference: {s['reference']}"]
        for key, label in (("base", "base"), ("fine_tuned", "fine-tuned")):
            lines.append(f"- {label}: {s.get(key, '')}")
        for key, label in (("base (greedy)", "base, greedy"), ("fine_tuned (greedy)", "fine-tuned, greedy")):
            if s.get(key) not in (None, s.get(key.removesuffix(" (greedy)"))):
                lines.append(f"- {label}: {s[key]}")
        lines.append("")
    return "\n".join(lines)


def generation_markdown(rouge: dict[str, Any], max_new_tokens: int) -> list[str]:
    """The decoding settings, and ROUGE next to the repetition of each model's answers under both decodings."""
    used = rouge["decoding"]
    settings = ", ".join(f"{k} {v}" for k, v in used.items())
    seeds = " (answer i: seed + i)" if used["temperature"] > 0 and used["seed"] is not None else ""
    lines = [
        "",
        "## Generation",
        "",
        f"Answers decoded with {settings}{seeds}, at most {max_new_tokens} tokens; the rows (greedy) decode the same "
        "prompts greedily.",
        "",
        "| decoding | model | ROUGE-L F | ROUGE-1 F | distinct-2 | answers with a line said 3+ times |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for decoding, figures in (("configured", rouge), ("greedy", rouge["greedy"])):
        for side, label in (("model", "fine-tuned"), ("baseline", "base")):
            r, rep = figures[side], figures["repetition"][side]
            distinct = f"{rep['distinct_2']:.3f}" if rep["distinct_2"] is not None else "-"
            lines.append(
                f"| {decoding} | {label} | {r['rougeL']['fmeasure']:.4f} | {r['rouge1']['fmeasure']:.4f} | "
                f"{distinct} | {rep['repeated_line_share']:.2f} |"
            )
    return lines


def _contamination_markdown(c: dict[str, Any]) -> str:
    lines = [
        "",
        f"## Contamination ({c['n']}-gram overlap with the training data)",
        "",
        f"| set | examples | contaminated | fraction | over {c['threshold']} |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, s in c["sets"].items():
        over = "yes" if s["fraction"] > c["threshold"] else "no"
        lines.append(f"| {name} | {s['examples']} | {s['contaminated']} | {s['fraction']:.4f} | {over} |")
    for name, s in c["sets"].items():
        if s["listed"]:
            lines += ["", f"**{name}** (first {len(s['listed'])}):", ""]
            lines += [f"- #{x['index']} ({x['source']}): {x['text']} — matched `{x['ngram']}`" for x in s["listed"]]
    return "\n".join(lines) + "\n"
