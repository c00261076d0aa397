"""``evaluation_report``: every number next to its baseline.

One table: perplexity and bits per byte (model vs n-gram), ROUGE (fine-tuned vs base model
on held-out instructions) and accuracy (best LM classifier vs bag of words), with sample
generations; also ``$LMPIPE_HOME/reports/evaluation.{json,md}``.

The answers are decoded with ``evaluation_report.generation`` (an
:class:`lmcore.model.generate.GenerationConfig`: by default deterministic, with a repetition
penalty and no 3-gram said twice, so a small model does not loop); the rows ``... (greedy)``
score plain greedy decoding of the same prompts, for comparison. Next to each: distinct-2 and
the share of answers with a line said three times or more.

Every evaluation set is checked for word 13-gram overlap with the training data that produced
the model (``lmcore.eval.contamination``): the test split against the train token shards, the
held-out SFT instructions against the SFT training rows and the train shards, the labeled test
texts against the labeled train texts and the train shards. ``contamination`` in the report
gives, per set, the contaminated fraction, the first contaminated examples and every metric
again on the clean subset; the blocking check ``evaluation_uncontaminated`` fails when a set's
fraction exceeds ``evaluation_report.contamination.threshold``.
"""

from typing import Any

import dagster as dg
import pydantic

from assets.artifacts import Checkpoint, LabeledData, Report, SftData, TokenizerFile, TokenShards
from assets.config import config_from
from assets.evaluation.answers import DECODINGS, generation_markdown, rouge_section, score_answers
from assets.evaluation.table import METRICS, best_method, interval_text, rules, table
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.baselines import evaluate_classifier
from lmcore.eval.contamination import (
    ContaminationConfig,
    NGramIndex,
    chatml_text,
    contamination_report,
    conversation_text,
    find_contamination,
    required_lengths,
    shard_texts,
)
from lmcore.eval.perplexity import subset_figures
from lmcore.eval.rouge import rouge_batch
from lmcore.eval.significance import SignificanceConfig
from lmcore.finetune.classify import METHODS
from lmcore.model.generate import GenerationConfig

_COLUMNS = [dg.TableColumn("metric"), dg.TableColumn("model"), dg.TableColumn("value", "float"),
            dg.TableColumn("baseline"), dg.TableColumn("baseline_value", "float"),
            dg.TableColumn("improvement", "float"), dg.TableColumn("low", "float"), dg.TableColumn("high", "float"),
            dg.TableColumn("p_value", "float"), dg.TableColumn("rule"), dg.TableColumn("passes", "bool")]  # fmt: skip


ContaminationSettings = config_from(ContaminationConfig)
GenerationSettings = config_from(GenerationConfig)
SignificanceSettings = config_from(SignificanceConfig)


class EvaluationConfig(dg.Config):
    rouge_examples: int = 48
    """Held-out instructions to generate answers for (base and fine-tuned model)."""
    max_new_tokens: int = 96
    """Longest answer, in tokens, for both decodings."""
    generation: GenerationSettings = GenerationSettings()
    """How the answers are decoded (lmcore.model.generate.GenerationConfig; when sampling, answer i uses seed + i):
    the ROUGE-1/L F rows, the samples. The rows "(greedy)" decode the same prompts greedily, for comparison."""
    contamination: ContaminationSettings = ContaminationSettings()
    """The 13-gram overlap check of every evaluation set; ``threshold`` is the blocking check's limit."""
    must_beat: list[str] | None = None
    """Table metrics on which the model must beat its baseline, with the whole interval of the improvement above 0,
    else the blocking gate check fails and the model is not exported (assets/evaluation/gate.py). None: every
    metric in the table that must_not_lose does not name; []: none."""
    must_not_lose: list[str] = []
    """Table metrics on which the model may trail its baseline, but not significantly: the gate fails only when the
    whole interval of the improvement is below 0."""
    significance: SignificanceSettings = SignificanceSettings()
    """How each row's interval and p-value are computed (paired bootstrap over the test items: confidence,
    resamples, seed; lmcore.eval.significance.SignificanceConfig)."""
    regression_tolerance: float = 0.02
    """How much worse than the previous evaluation a metric may get, as a fraction of the previous figure,
    before the (non-blocking) regression check warns."""

    @pydantic.field_validator("must_beat", "must_not_lose")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        unknown = [n for n in names or [] if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; valid: {', '.join(METRICS)}")
        return names

    @pydantic.model_validator(mode="after")
    def _one_rule_per_metric(self) -> "EvaluationConfig":
        both = sorted(set(self.must_beat or []) & set(self.must_not_lose))
        if both:
            raise ValueError(f"{', '.join(map(repr, both))} in both must_beat and must_not_lose; give each metric "
                             "one rule")  # fmt: skip
        return self

    def rules(self) -> dict[str, str | None]:
        """The gate's rule for each metric of the table (None: reported, not gated)."""
        return rules(self.must_beat, self.must_not_lose)

    @pydantic.field_validator("generation", "contamination", "significance")
    @classmethod
    def _valid_lmcore(cls, settings: Any) -> Any:
        settings.to_lmcore()  # the dataclass's __post_init__ names the bad field and what would be valid
        return settings

    @pydantic.field_validator("regression_tolerance")
    @classmethod
    def _non_negative(cls, tolerance: float) -> float:
        if tolerance < 0:
            raise ValueError(f"must be >= 0 (a fraction of the previous figure, e.g. 0.02), got {tolerance}")
        return tolerance


def _scores(cls: dict[str, Any], method: str) -> dict[str, Any]:
    return {k: cls[method][k] for k in ("accuracy", "macro_f1")}


def _report(ppl: dict[str, Any], rouge: dict[str, Any], refs: list[str], cls: dict[str, Any], truth: list[str],
            config: "EvaluationConfig") -> dict[str, Any]:  # fmt: skip
    """The figures of ``evaluation.json`` and the table rows, each metric next to its baseline, with its interval."""
    best = best_method(cls)
    significance = config.significance.to_lmcore()
    return {
        "perplexity": {"model": ppl["model"]["perplexity"], "baseline": ppl["ngram"]["perplexity"], "split": "test"},
        "bits_per_byte": {"model": ppl["model"]["bits_per_byte"], "baseline": ppl["ngram"]["bits_per_byte"]},
        "rouge": rouge_section(rouge),
        "classification": {
            "model": {"method": best, **_scores(cls, best)} if best else None,
            "baseline": {"method": "bow", **_scores(cls, "bow")} if "bow" in cls else None,
            "all": {m: _scores(cls, m) for m in METHODS if m in cls},
        },
        "samples": rouge["samples"],
        "significance": {**significance.__dict__, "must_beat": config.must_beat, "must_not_lose": config.must_not_lose},
        "table": table(ppl, rouge, refs, cls, truth, config.rules(), significance),
    }


def _indexed_sets(
    cfg: ContaminationConfig, tok: Tokenizer, shards: TokenShards, sft: SftData, labeled: LabeledData
) -> tuple[dict[str, tuple[list[str], dict[str, NGramIndex]]], list[str]]:
    """Each evaluation set's texts with the training indexes it is checked against, and the labeled test labels.

    The training side is what the model was trained on: the train token shards decoded
    document by document, the SFT rows as rendered (ChatML headers and system prompts left
    out), the classifiers' labeled train texts.
    """
    eot = shards.manifest["eot_id"]
    test_docs = list(shard_texts(tok, shards.split("test").arrays, eot))
    sft_train, heldout, _ = sft.read()
    held = [conversation_text(ex.prompt_messages, ex.reference) for ex in heldout]
    (labeled_train, _), (labeled_test, test_labels) = labeled.part("train"), labeled.part("test")
    lengths = required_lengths([test_docs, held, labeled_test], cfg)
    pretraining = NGramIndex.build(shard_texts(tok, shards.split("train").arrays, eot), lengths=lengths)
    sets = {
        "test_split": (test_docs, {"pretraining_train": pretraining}),
        "sft_heldout": (held, {"sft_train": NGramIndex.build((chatml_text(tok, ex.ids) for ex in sft_train),
                                                              lengths=lengths), "pretraining_train": pretraining}),
        "labeled_test": (labeled_test, {"labeled_train": NGramIndex.build(labeled_train, lengths=lengths),
                                        "pretraining_train": pretraining}),
    }  # fmt: skip
    return sets, test_labels


def _pair(model: Any, baseline: Any) -> dict[str, Any]:
    return {"model": model, "baseline": baseline}


def _clean_classification(cls: dict[str, Any], best: str | None, truth: list[str], keep: list[bool]) -> dict[str, Any]:
    """Accuracy and macro-F1 of the best LM method and of bag of words on the clean labeled test texts."""
    out: dict[str, Any] = {"examples": sum(keep), "model": None, "baseline": None}
    for side, method in (("model", best), ("baseline", "bow" if "bow" in cls else None)):
        if method is None or not any(keep):
            continue
        predicted = cls[method].get("predictions")
        if predicted is None or len(predicted) != len(truth):
            raise ValueError(f"classifier_report has no per-example {method} predictions for the {len(truth)} "
                             "labeled test texts; re-materialize classifier_report")  # fmt: skip
        kept = [i for i, k in enumerate(keep) if k]
        scores = evaluate_classifier([truth[i] for i in kept], [predicted[i] for i in kept], cls["labels"])
        out[side] = {"method": method, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
    return out


def _clean_rouge(rouge: dict[str, Any], refs: list[str], keep: list[bool]) -> dict[str, Any]:
    """ROUGE of the fine-tuned and the base model on the clean ones of the generated held-out instructions."""
    kept = [i for i, k in enumerate(keep[: rouge["examples"]]) if k]
    out: dict[str, Any] = {"examples": len(kept)}
    for decoding, key in zip(DECODINGS, ("rouge", "greedy"), strict=True):
        if not kept:
            out[key] = _pair(None, None)
            continue
        gens = rouge[decoding]["generations"]
        scores = {n: rouge_batch([g[i] for i in kept], [refs[i] for i in kept]) for n, g in gens.items()}
        out[key] = _pair(scores["fine_tuned"], scores["base"])
    return out


def _contamination(
    cfg: ContaminationConfig,
    sets: dict[str, tuple[list[str], dict[str, NGramIndex]]],
    figures: dict[str, Any],
    test_labels: list[str],
    refs: list[str],
) -> dict[str, Any]:
    """The report's ``contamination``: per set the overlap figures and the metrics on its clean subset."""
    out: dict[str, Any] = {"n": cfg.n, "min_words": cfg.min_words, "threshold": cfg.threshold, "sets": {}}
    keep: dict[str, list[bool]] = {}
    for name, (texts, indexes) in sets.items():
        matches = find_contamination(texts, indexes, cfg)
        keep[name] = [m is None for m in matches]
        out["sets"][name] = contamination_report(texts, matches, cfg, checked_against=list(indexes))
    ppl, rouge, cls = figures["perplexity"], figures["rouge"], figures["classification"]
    test = subset_figures(ppl["documents"], keep["test_split"])
    both = test["model"] is not None
    out["sets"]["test_split"]["clean"] = {
        "documents": test["documents"],
        "perplexity": _pair(*(test[w]["perplexity"] if both else None for w in ("model", "ngram"))),
        "bits_per_byte": _pair(*(test[w]["bits_per_byte"] if both else None for w in ("model", "ngram"))),
    }
    out["sets"]["sft_heldout"]["clean"] = _clean_rouge(rouge, refs, keep["sft_heldout"])
    out["sets"]["labeled_test"]["clean"] = _clean_classification(cls, figures["best"], test_labels,
                                                                 keep["labeled_test"])  # fmt: skip
    indexes = {n: i for _, by in sets.values() for n, i in by.items()}
    out["indexes"] = {name: index.summary() for name, index in indexes.items()}
    return out


@dg.asset(
    group_name="evaluation",
    kinds={"json"},
    code_version=code_version_of(__name__),
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    perplexity_report: Report,
    classifier_report: Report,
    pretrained_model: Checkpoint,
    sft_model: Checkpoint,
    sft_dataset: SftData,
    tokenizer: TokenizerFile,
    token_shards: TokenShards,
    labeled_data: LabeledData,
    store: ArtifactStore,
) -> Report:
    """One table: perplexity and bits per byte, ROUGE, accuracy, each next to the baseline it must beat;
    and each evaluation set's overlap with the training data, with the figures on its clean part."""
    if perplexity_report.manifest.get("token_shards") != token_shards.data_version:
        raise ValueError(f"perplexity_report {perplexity_report.location} was not computed on token_shards "
                         f"{token_shards.data_version}; re-materialize perplexity_report")  # fmt: skip
    _, heldout, _ = sft_dataset.read()
    models = {"base": pretrained_model.load(), "fine_tuned": sft_model.load()}
    progress = reporter(context, "evaluation_report")
    rouge = score_answers(models, tokenizer.tokenizer, heldout[: config.rouge_examples], config.generation.to_lmcore(),
                          config.max_new_tokens, progress)  # fmt: skip
    ppl, cls = perplexity_report.manifest["splits"]["test"], classifier_report.manifest
    cfg = config.contamination.to_lmcore()
    sets, test_labels = _indexed_sets(cfg, tokenizer.tokenizer, token_shards, sft_dataset, labeled_data)
    refs = [ex.reference for ex in heldout]
    report = _report(ppl, rouge, refs, cls, test_labels, config)
    best = report["classification"]["model"]["method"] if report["classification"]["model"] else None
    figures = {"perplexity": ppl, "rouge": rouge, "classification": cls, "best": best}
    report["contamination"] = _contamination(cfg, sets, figures, test_labels, refs)
    markdown = _markdown(report, config.max_new_tokens) + _contamination_markdown(report["contamination"])
    published = Report.write(store, "evaluation_report", report, name="evaluation", markdown=markdown)
    section = report["rouge"]
    generation = {"decoding": section["decoding"], "repetition": section["repetition"],
                  "greedy_repetition": section["greedy"]["repetition"]}  # fmt: skip
    metadata = {
        "report": dg.MetadataValue.table(
            [dg.TableRecord(r) for r in report["table"]], schema=dg.TableSchema(columns=_COLUMNS)
        ),
        "markdown": dg.MetadataValue.md(markdown),
        **{r["metric"]: r["value"] for r in report["table"]},
        **{f"{r['metric']} improvement": dg.MetadataValue.text(interval_text(r)) for r in report["table"]},
        "generation": dg.MetadataValue.json(generation),
        **{f"contaminated_fraction ({n})": round(c["fraction"], 4) for n, c in report["contamination"]["sets"].items()},
        "contamination": dg.MetadataValue.json(report["contamination"]),
    }
    inputs = {"perplexity_report": perplexity_report, "classifier_report": classifier_report, "sft_model": sft_model,
              "token_shards": token_shards, "labeled_data": labeled_data}  # fmt: skip
    return result(context, published, metadata, config=config, inputs=inputs)


def _markdown(report: dict[str, Any], max_new_tokens: int) -> str:
    sig = report["significance"]
    lines = ["# Evaluation", "", f"Improvement: how much better the model is (> 0: better), with its "
             f"{sig['confidence']:.0%} interval (paired bootstrap over the test items, {sig['resamples']} resamples) "
             "and p-value. must_beat: the whole interval above 0; must_not_lose: not all of it below 0.", "",
             "| metric | model | value | baseline | baseline value | improvement [interval] p | items | rule | passes "
             "|",
             "| --- | --- | ---: | --- | ---: | --- | ---: | --- | --- |"]  # fmt: skip
    for r in report["table"]:
        passes = "-" if r["passes"] is None else "yes" if r["passes"] else "**no**"
        lines.append(f"| {r['metric']} | {r['model']} | {r['value']:.4f} | {r['baseline']} | "
                     f"{r['baseline_value']:.4f} | {interval_text(r)} | {r['items']} | {r['rule'] or 'not gated'} | "
                     f"{passes} |")  # fmt: skip
    lines += generation_markdown(report["rouge"], max_new_tokens)
    lines += ["", "## Sample generations (held-out instructions)", ""]
    for s in report["samples"]:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- reference: {s['reference']}"]
        for key, label in (("base", "base"), ("fine_tuned", "fine-tuned")):
            lines.append(f"- {label}: {s.get(key, '')}")
        for key, label in (("base (greedy)", "base, greedy"), ("fine_tuned (greedy)", "fine-tuned, greedy")):
            if s.get(key) not in (None, s.get(key.removesuffix(" (greedy)"))):
                lines.append(f"- {label}: {s[key]}")
        lines.append("")
    return "\n".join(lines)


def _contamination_markdown(c: dict[str, Any]) -> str:
    lines = ["", f"## Contamination ({c['n']}-gram overlap with the training data)", "",
             f"| set | examples | contaminated | fraction | over {c['threshold']} |",
             "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for name, s in c["sets"].items():
        over = "yes" if s["fraction"] > c["threshold"] else "no"
        lines.append(f"| {name} | {s['examples']} | {s['contaminated']} | {s['fraction']:.4f} | {over} |")
    for name, s in c["sets"].items():
        if s["listed"]:
            lines += ["", f"**{name}** (first {len(s['listed'])}):", ""]
            lines += [f"- #{x['index']} ({x['source']}): {x['text']} — matched `{x['ngram']}`" for x in s["listed"]]
    return "\n".join(lines) + "\n"


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="No evaluation set shares n-grams with the training data in more than "
    "evaluation_report.contamination.threshold of its examples.",
)
def evaluation_uncontaminated(evaluation_report: Report) -> dg.AssetCheckResult:
    c = evaluation_report.manifest["contamination"]
    over = {name: s["fraction"] for name, s in c["sets"].items() if s["fraction"] > c["threshold"]}
    text = "; ".join(
        f"{name}: {fraction:.4f} of its examples > threshold {c['threshold']}" for name, fraction in over.items()
    )
    return dg.AssetCheckResult(
        passed=not over,
        description=(
            f"contaminated above evaluation_report.contamination.threshold: {text}; remove the overlapping "
            "examples or raise the threshold"
        )
        if over
        else None,  # fmt: skip
        metadata={
            "threshold": c["threshold"],
            "over_threshold": dg.MetadataValue.json(over),
            **{f"{name}_fraction": round(s["fraction"], 4) for name, s in c["sets"].items()},
        },
    )
