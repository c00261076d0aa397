"""``classifier_report``: three classifiers (label_lm, head, bag of words) scored on the same test split."""

import base64
from typing import Any

import dagster as dg

from assets.artifacts import Checkpoint, LabeledData, Report, TokenizerFile
from assets.config import config_from
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.eval.baselines import confusion_plot
from lmcore.finetune.classify import ClassifyConfig, evaluate_all, steps

ClassifierConfig = config_from(ClassifyConfig, name="ClassifierConfig")


def _png(data: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(data).decode()})")


def _metadata(results: dict[str, Any], methods: tuple[str, ...], test_examples: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"test_examples": test_examples}
    if "adaptation" in results:
        metadata["adapt_val_loss"] = round(results["adaptation"]["val_loss"], 4)
    for method in methods:
        r = results[method]
        metadata[f"{method}_accuracy"] = round(r["accuracy"], 4)
        metadata[f"{method}_macro_f1"] = round(r["macro_f1"], 4)
        plot = confusion_plot(r["confusion"], results["labels"], f"{method} confusion (test)")
        metadata[f"{method}_confusion"] = _png(plot, f"{method} confusion")
    if "label_lm" in results:
        metadata["label_lm_generation_exact_match"] = round(results["label_lm"]["generation_exact_match"], 4)
    return metadata


@dg.asset(group_name="finetune", kinds={"pytorch", "sklearn"}, pool="gpu", code_version=code_version_of(__name__))
def classifier_report(
    context: dg.AssetExecutionContext,
    config: ClassifierConfig,
    pretrained_model: Checkpoint,
    labeled_data: LabeledData,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
) -> Report:
    """Accuracy, macro-F1 and confusion of the three classifiers on the same test split."""
    cfg = config.to_lmcore()
    train, validation, test = (labeled_data.part(n) for n in LabeledData.PARTS)
    progress, total = reporter(context, "classifier_report"), steps(cfg)

    def on_event(event: dict[str, Any]) -> None:
        if event["stage"] == "train":
            progress(f"{event['method']} train steps", event["step"], total[event["method"]])
        else:
            progress(f"{event['method']} {event['stage']}", event["done"], event["total"])

    results = evaluate_all(
        pretrained_model.path, tokenizer.tokenizer, train, validation, test, store.run_dir("classifier_report"), cfg,
        callback=on_event,
    )  # fmt: skip
    report = Report.write(store, "classifier_report", results)
    metadata = _metadata(results, cfg.methods, len(test[0]))
    inputs = {"pretrained_model": pretrained_model, "labeled_data": labeled_data, "tokenizer": tokenizer}
    return result(context, report, metadata, config=config, inputs=inputs)
