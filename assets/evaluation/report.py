"""``evaluation_report``: every number next to its baseline.

The classifier is scored three ways on one test split (the LM fine-tuned to write the
label, the LM with a classification head, and a bag-of-words logistic regression); the
final report puts perplexity and bits per byte (model vs n-gram), ROUGE (fine-tuned vs
base model) and accuracy (best LM classifier vs bag of words) in one table.
"""

from pathlib import Path
from typing import Any

import dagster as dg

import lmcore.eval.baselines
import lmcore.eval.rouge
import lmcore.finetune.adapt
import lmcore.finetune.classify
from assets.data.tokenizer import TOKENIZER_FILE
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.tokenizer import load_tokenizer
from lmcore.eval.rouge import rouge_batch
from lmcore.finetune.sft import chat_generate
from lmcore.finetune.sft_data import read_sft_dataset
from lmcore.io import read_json, write_json
from lmcore.model.checkpoint import load_trained_model


class EvaluationConfig(dg.Config):
    rouge_examples: int = 48
    """Held-out instructions to generate answers for (base and fine-tuned model)."""
    max_new_tokens: int = 96


def _rouge(models: dict[str, Any], tok: Any, heldout: list, config: EvaluationConfig, progress) -> dict[str, Any]:
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


@dg.asset(
    group_name="evaluation",
    kinds={"json"},
    code_version=code_version(lmcore.eval.rouge),
    automation_condition=dg.AutomationCondition.eager(),
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    perplexity_report: dict,
    classifier_report: dict,
    pretrained_model: dict,
    sft_model: dict,
    sft_dataset: dict,
    tokenizer: dict,
    store: ArtifactStore,
) -> dg.Output:
    """One table: perplexity and bits per byte, ROUGE, accuracy, each next to the baseline it must beat."""
    tok_path, _ = load_manifest(store, tokenizer)
    tok = load_tokenizer(tok_path / TOKENIZER_FILE)
    _, heldout, _ = read_sft_dataset(load_manifest(store, sft_dataset)[0])
    models = {
        "base": load_trained_model(pretrained_model["path"])[0],
        "fine_tuned": load_trained_model(sft_model["path"])[0],
    }
    rouge = _rouge(models, tok, heldout[: config.rouge_examples], config, reporter(context, "evaluation_report"))
    ppl = read_json(Path(store.local_path(perplexity_report["path"])) / "manifest.json")["splits"]["test"]
    cls = read_json(Path(store.local_path(classifier_report["path"])) / "manifest.json")
    lm_methods = [m for m in ("label_lm", "head") if m in cls]
    best = max(lm_methods, key=lambda m: cls[m]["accuracy"]) if lm_methods else None
    report = {
        "perplexity": {"model": ppl["model"]["perplexity"], "baseline": ppl["ngram"]["perplexity"], "split": "test"},
        "bits_per_byte": {"model": ppl["model"]["bits_per_byte"], "baseline": ppl["ngram"]["bits_per_byte"]},
        "rouge": {"model": rouge["fine_tuned"], "baseline": rouge["base"], "examples": rouge["examples"]},
        "classification": {
            "model": {"method": best, **{k: cls[best][k] for k in ("accuracy", "macro_f1")}} if best else None,
            "baseline": {"method": "bow", **{k: cls["bow"][k] for k in ("accuracy", "macro_f1")}}
            if "bow" in cls
            else None,
            "all": {
                m: {k: cls[m][k] for k in ("accuracy", "macro_f1")}
                for m in lmcore.finetune.classify.METHODS
                if m in cls
            },
        },
        "samples": rouge["samples"],
    }
    rows = [
        _row("perplexity (test)", report["perplexity"]["model"], report["perplexity"]["baseline"], False,
             "model", "n-gram"),
        _row("bits per byte (test)", report["bits_per_byte"]["model"], report["bits_per_byte"]["baseline"], False,
             "model", "n-gram"),
        _row("ROUGE-L F", rouge["fine_tuned"]["rougeL"]["fmeasure"], rouge["base"]["rougeL"]["fmeasure"], True,
             "fine-tuned", "base"),
        _row("ROUGE-1 F", rouge["fine_tuned"]["rouge1"]["fmeasure"], rouge["base"]["rouge1"]["fmeasure"], True,
             "fine-tuned", "base"),
    ]  # fmt: skip
    if best and "bow" in cls:
        rows.append(_row("accuracy", cls[best]["accuracy"], cls["bow"]["accuracy"], True, best, "bag of words"))
        rows.append(_row("macro-F1", cls[best]["macro_f1"], cls["bow"]["macro_f1"], True, best, "bag of words"))
    report["table"] = rows
    markdown = _markdown(rows, report["samples"])

    def build(out: Path) -> None:
        write_json(out / "manifest.json", report)
        (out / "evaluation.md").write_text(markdown)

    ref = run_stage(store, "evaluation_report", build)
    write_json(store.reports_dir() / "evaluation.json", report)
    (store.reports_dir() / "evaluation.md").write_text(markdown)
    columns = [dg.TableColumn("metric"), dg.TableColumn("model"), dg.TableColumn("value", "float"),
               dg.TableColumn("baseline"), dg.TableColumn("baseline_value", "float"),
               dg.TableColumn("beats_baseline", "bool")]  # fmt: skip
    return output(
        ref,
        {
            "report": dg.MetadataValue.table([dg.TableRecord(r) for r in rows], schema=dg.TableSchema(columns=columns)),
            "markdown": dg.MetadataValue.md(markdown),
            **{r["metric"]: r["value"] for r in rows},
        },
        config=config,
        inputs={"perplexity_report": perplexity_report, "classifier_report": classifier_report, "sft_model": sft_model},
    )


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
