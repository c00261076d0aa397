"""``evaluation_report``: every number next to its baseline.

One table: perplexity and bits per byte (model vs n-gram), ROUGE (fine-tuned vs base model
on held-out instructions) and accuracy (best LM classifier vs bag of words), with sample
generations; also ``$LMPIPE_HOME/reports/evaluation.{json,md}``.
"""

from typing import Any

import dagster as dg

from assets.artifacts import Checkpoint, Report, SftData, TokenizerFile
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.rouge import rouge_batch
from lmcore.finetune.classify import METHODS
from lmcore.finetune.sft import chat_generate

_COLUMNS = [dg.TableColumn("metric"), dg.TableColumn("model"), dg.TableColumn("value", "float"),
            dg.TableColumn("baseline"), dg.TableColumn("baseline_value", "float"),
            dg.TableColumn("beats_baseline", "bool")]  # fmt: skip


class EvaluationConfig(dg.Config):
    rouge_examples: int = 48
    """Held-out instructions to generate answers for (base and fine-tuned model)."""
    max_new_tokens: int = 96


def _rouge(models: dict[str, Any], tok: Tokenizer, heldout: list, config: EvaluationConfig, progress) -> dict[str, Any]:
    refs = [ex.reference for ex in heldout]
    out: dict[str, Any] = {"examples": len(heldout), "samples": []}
    generations = {}
    for name, model in models.items():
        preds = []
        for i, ex in enumerate(heldout):
            preds.append(chat_generate(model, tok, ex.prompt_messages, max_new_tokens=config.max_new_tokens,
                                       temperature=0.0).replace("<|im_end|>", "").strip())  # fmt: skip
            progress(f"generate ({name})", i + 1, len(heldout))
        generations[name] = preds
        out[name] = rouge_batch(preds, refs)
    for i, ex in enumerate(heldout[:4]):
        out["samples"].append(
            {"prompt": ex.prompt, "reference": ex.reference, **{n: g[i] for n, g in generations.items()}}
        )
    return out


def _row(metric: str, model: float, baseline: float, higher_is_better: bool, model_name: str, baseline_name: str):
    beats = model > baseline if higher_is_better else model < baseline
    return {"metric": metric, "model": model_name, "value": round(model, 4), "baseline": baseline_name,
            "baseline_value": round(baseline, 4), "beats_baseline": beats}  # fmt: skip


def _scores(cls: dict[str, Any], method: str) -> dict[str, Any]:
    return {k: cls[method][k] for k in ("accuracy", "macro_f1")}


def _report(ppl: dict[str, Any], rouge: dict[str, Any], cls: dict[str, Any]) -> dict[str, Any]:
    """The figures of ``evaluation.json`` and the table rows, each metric next to its baseline."""
    lm_methods = [m for m in ("label_lm", "head") if m in cls]
    best = max(lm_methods, key=lambda m: cls[m]["accuracy"]) if lm_methods else None
    report = {
        "perplexity": {"model": ppl["model"]["perplexity"], "baseline": ppl["ngram"]["perplexity"], "split": "test"},
        "bits_per_byte": {"model": ppl["model"]["bits_per_byte"], "baseline": ppl["ngram"]["bits_per_byte"]},
        "rouge": {"model": rouge["fine_tuned"], "baseline": rouge["base"], "examples": rouge["examples"]},
        "classification": {
            "model": {"method": best, **_scores(cls, best)} if best else None,
            "baseline": {"method": "bow", **_scores(cls, "bow")} if "bow" in cls else None,
            "all": {m: _scores(cls, m) for m in METHODS if m in cls},
        },
        "samples": rouge["samples"],
    }
    tuned, base = rouge["fine_tuned"], rouge["base"]
    rows = [
        _row("perplexity (test)", report["perplexity"]["model"], report["perplexity"]["baseline"], False,
             "model", "n-gram"),
        _row("bits per byte (test)", report["bits_per_byte"]["model"], report["bits_per_byte"]["baseline"], False,
             "model", "n-gram"),
        _row("ROUGE-L F", tuned["rougeL"]["fmeasure"], base["rougeL"]["fmeasure"], True, "fine-tuned", "base"),
        _row("ROUGE-1 F", tuned["rouge1"]["fmeasure"], base["rouge1"]["fmeasure"], True, "fine-tuned", "base"),
    ]  # fmt: skip
    if best and "bow" in cls:
        rows.append(_row("accuracy", cls[best]["accuracy"], cls["bow"]["accuracy"], True, best, "bag of words"))
        rows.append(_row("macro-F1", cls[best]["macro_f1"], cls["bow"]["macro_f1"], True, best, "bag of words"))
    report["table"] = rows
    return report


@dg.asset(
    group_name="evaluation",
    kinds={"json"},
    code_version=code_version_of(__name__),
    automation_condition=dg.AutomationCondition.eager(),
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
    store: ArtifactStore,
) -> Report:
    """One table: perplexity and bits per byte, ROUGE, accuracy, each next to the baseline it must beat."""
    _, heldout, _ = sft_dataset.read()
    models = {"base": pretrained_model.load(), "fine_tuned": sft_model.load()}
    progress = reporter(context, "evaluation_report")
    rouge = _rouge(models, tokenizer.tokenizer, heldout[: config.rouge_examples], config, progress)
    report = _report(perplexity_report.manifest["splits"]["test"], rouge, classifier_report.manifest)
    markdown = _markdown(report["table"], report["samples"])
    published = Report.write(store, "evaluation_report", report, name="evaluation", markdown=markdown)
    metadata = {
        "report": dg.MetadataValue.table(
            [dg.TableRecord(r) for r in report["table"]], schema=dg.TableSchema(columns=_COLUMNS)
        ),
        "markdown": dg.MetadataValue.md(markdown),
        **{r["metric"]: r["value"] for r in report["table"]},
    }
    inputs = {"perplexity_report": perplexity_report, "classifier_report": classifier_report, "sft_model": sft_model}
    return result(context, published, metadata, config=config, inputs=inputs)


def _markdown(rows: list[dict[str, Any]], samples: list[dict[str, str]]) -> str:
    lines = ["# Evaluation", "", "| metric | model | value | baseline | baseline value | beats baseline |",
             "| --- | --- | ---: | --- | ---: | --- |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['metric']} | {r['model']} | {r['value']:.4f} | {r['baseline']} | "
                     f"{r['baseline_value']:.4f} | {'yes' if r['beats_baseline'] else 'no'} |")  # fmt: skip
    lines += ["", "## Sample generations (held-out instructions)", ""]
    for s in samples:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- reference: {s['reference']}", f"- base: {s.get('base', '')}",
                  f"- fine-tuned: {s.get('fine_tuned', '')}", ""]  # fmt: skip
    return "\n".join(lines)
