"""``classifier_report``: three classifiers (label_lm, head, bag of words) scored on the same test split."""

import base64
import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg

import lmcore.eval.baselines
import lmcore.eval.rouge
import lmcore.finetune.adapt
import lmcore.finetune.classify
from assets.data.tokenizer import TOKENIZER_FILE
from assets.finetune.labeled import _PARTS, _read
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage, train_config_of
from lmcore.data.tokenizer import load_tokenizer
from lmcore.eval.baselines import confusion_plot
from lmcore.finetune.classify import evaluate_all
from lmcore.io import digest_of, write_json
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig


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
    code_version=code_version(lmcore.finetune.adapt, lmcore.finetune.classify),
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

    # One folder per model and data; inside it each method's run is keyed by its own config (lmcore.finetune.classify).
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
