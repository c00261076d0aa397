"""``labeled_data``, ``classifier_report`` and ``evaluation_report``: every number next to its baseline.

The classifier is scored three ways on one test split (the LM fine-tuned to write the
label, the LM with a classification head, and a bag-of-words logistic regression); the
final report puts perplexity and bits per byte (model vs n-gram), ROUGE (fine-tuned vs
base model) and accuracy (best LM classifier vs bag of words) in one table.
"""

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import dagster as dg

import lmcore.adapt
import lmcore.baselines
import lmcore.classify
import lmcore.rouge
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage, train_config_of
from assets.tokenizer import TOKENIZER_FILE
from lmcore.baselines import confusion_plot, load_labeled
from lmcore.checkpoint import load_trained_model
from lmcore.classify import evaluate_all
from lmcore.io import digest_of, read_json, read_parquet_rows, write_json
from lmcore.lora import LoraConfig
from lmcore.rouge import rouge_batch
from lmcore.sft import chat_generate
from lmcore.sft_data import read_sft_dataset
from lmcore.splits import SPLITS, split_paths
from lmcore.tasks import classification_examples
from lmcore.tokenizer import load_tokenizer
from lmcore.train_config import TrainConfig

DERIVED = "derived:python-docs"
_PARTS = ("train", "validation", "test")


class LabeledDataConfig(dg.Config):
    train: str = DERIVED
    """JSONL file of {text, label}, or derived:python-docs (which stdlib family a docstring is from)."""
    validation: str = ""
    test: str = ""
    text_field: str = "text"
    label_field: str = "label"


def _derived_examples(store: ArtifactStore, splits: dict) -> dict[str, list[dict[str, str]]]:
    """Docstring -> module family examples, each in the split of the document it came from."""
    root, manifest = load_manifest(store, splits)
    split_of, rows = {}, []
    for split in SPLITS:
        for row in read_parquet_rows(split_paths(root, split, manifest)):
            split_of[row["doc_id"]] = split
            rows.append(row)
    examples, _ = classification_examples(rows)
    part = {"train": "train", "val": "validation", "test": "test"}
    out: dict[str, list[dict[str, str]]] = {p: [] for p in _PARTS}
    for ex in examples:
        out[part[split_of[ex["doc_id"]]]].append({"text": ex["text"], "label": ex["label"]})
    return out


@dg.asset(group_name="finetune", kinds={"json"}, code_version=code_version(lmcore.baselines, lmcore.classify))
def labeled_data(config: LabeledDataConfig, splits: dict, store: ArtifactStore) -> dg.Output:
    """Labeled texts for classification, as train/validation/test JSONL; bad lines counted and skipped."""

    def build(out: Path) -> None:
        if config.train == DERIVED:
            parts = _derived_examples(store, splits)
            for name in _PARTS:
                (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in parts[name]))
            stats = {name: {"rows": len(parts[name])} for name in _PARTS}
        else:
            stats = {}
            for name in _PARTS:
                path = getattr(config, name)
                if not path:
                    raise ValueError(f"labeled_data.{name}: no file given; set it to a JSONL file of text and label")
                texts, labels, stats[name] = load_labeled(path, config.text_field, config.label_field)
                rows = [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)]
                (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(out / "manifest.json", {"stats": stats, "files": [f"{n}.jsonl" for n in _PARTS]})

    ref = run_stage(store, "labeled_data", build)
    path, manifest = load_manifest(store, ref)
    counts = {n: _read(path, n)[1] for n in _PARTS}
    classes = sorted(set(counts["train"]))
    metadata = {f"{n}_rows": len(counts[n]) for n in _PARTS}
    metadata |= {
        "classes": len(classes),
        "labels": ", ".join(classes),
        "stats": dg.MetadataValue.json(manifest["stats"]),
    }
    return output(ref, metadata, config=config, inputs={"splits": splits})


def _read(path: Path, name: str) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (path / f"{name}.jsonl").read_text().splitlines() if line]
    return [r["text"] for r in rows], [r["label"] for r in rows]


class ClassifierConfig(dg.Config):
    methods: list[str] = ["label_lm", "head", "bow"]
    max_steps: int = 150
    batch_size: int = 16
    """label_lm: rows of packed examples (context_length tokens each)."""
    lr: float = 5e-4
    warmup_steps: int = 10
    eval_batches: int = 5
    head_max_steps: int = 0
    """0: max_steps. The head trains on one example per row, so it usually wants more steps."""
    head_batch_size: int = 0
    """Examples per head batch; 0: batch_size."""
    adapt_steps: int = 0
    """> 0: first train the LM this many steps on the train texts alone (task-adaptive pretraining, packed rows
    of batch_size), and start both LM methods from it."""
    lora_rank: int = 0
    """0: fine-tune every weight; > 0: LoRA adapters of this rank."""
    seed: int = 0

    def steps(self, method: str) -> int:
        return {"adapt": self.adapt_steps, "head": self.head_max_steps}.get(method) or self.max_steps

    def train_config(self, method: str = "label_lm") -> TrainConfig:
        """The run of ``method`` (label_lm, head or adapt): evaluated and checkpointed three times."""
        steps = self.steps(method)
        batch_size = (self.head_batch_size if method == "head" else 0) or self.batch_size
        every = max(steps // 3, 1)
        return dataclasses.replace(
            train_config_of(self), max_steps=steps, batch_size=batch_size, eval_every=every, checkpoint_every=every
        )

    def to_lmcore(self) -> TrainConfig:
        return self.train_config()


def _png(data: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(data).decode()})")


@dg.asset(
    group_name="finetune",
    kinds={"pytorch", "sklearn"},
    pool="gpu",
    code_version=code_version(lmcore.adapt, lmcore.classify),
)
def classifier_report(
    context: dg.AssetExecutionContext,
    config: ClassifierConfig,
    pretrained_model: dict,
    labeled_data: dict,
    tokenizer: dict,
    store: ArtifactStore,
) -> dg.Output:
    """Accuracy, macro-F1 and confusion of the three classifiers on the same test split."""
    data_path, _ = load_manifest(store, labeled_data)
    train, validation, test = (_read(data_path, n) for n in _PARTS)
    tok_path, _ = load_manifest(store, tokenizer)
    lora = LoraConfig(rank=config.lora_rank, alpha=2.0 * config.lora_rank) if config.lora_rank else None
    progress = reporter(context, "classifier_report")

    def on_event(event: dict[str, Any]) -> None:
        if event["stage"] == "train":
            progress(f"{event['method']} train steps", event["step"], config.steps(event["method"]))
        else:
            progress(f"{event['method']} {event['stage']}", event["done"], event["total"])

    # One folder per model and data; inside it each method's run is keyed by its own config (lmcore.classify).
    key = digest_of([pretrained_model["data_version"], labeled_data["data_version"]])[:16]
    results = evaluate_all(
        Path(pretrained_model["path"]), load_tokenizer(tok_path / TOKENIZER_FILE), train, validation, test,
        store.run_dir("classifier_report", key), label_config=config.train_config("label_lm"),
        head_config=config.train_config("head"),
        adapt_config=config.train_config("adapt") if config.adapt_steps else None,
        label_lora=lora, head_lora=lora, methods=config.methods, seed=config.seed, callback=on_event,
    )  # fmt: skip
    ref = run_stage(store, "classifier_report", lambda out: write_json(out / "manifest.json", results))
    metadata: dict[str, Any] = {"test_examples": len(test[0])}
    if "adaptation" in results:
        metadata["adapt_val_loss"] = round(results["adaptation"]["val_loss"], 4)
    for method in config.methods:
        r = results[method]
        metadata[f"{method}_accuracy"] = round(r["accuracy"], 4)
        metadata[f"{method}_macro_f1"] = round(r["macro_f1"], 4)
        plot = confusion_plot(r["confusion"], results["labels"], f"{method} confusion (test)")
        metadata[f"{method}_confusion"] = _png(plot, f"{method} confusion")
    if "label_lm" in results:
        metadata["label_lm_generation_exact_match"] = round(results["label_lm"]["generation_exact_match"], 4)
    return output(
        ref, metadata, config=config, inputs={"pretrained_model": pretrained_model, "labeled_data": labeled_data}
    )


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
    code_version=code_version(lmcore.rouge),
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
            "all": {m: {k: cls[m][k] for k in ("accuracy", "macro_f1")} for m in lmcore.classify.METHODS if m in cls},
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
