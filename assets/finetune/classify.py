"""``classifier_report``: four classifiers (label_lm, head, encoder, bag of words) scored on the same test split.

``encoder`` (not in the default methods) pretrains a masked-LM encoder on ``token_shards`` first.

One process by default; with more (``launch``) every training run goes under torchrun through the
``launcher`` resource and rank 0 scores (``assets.launch``, ``lmcore.finetune.classify``).
"""

import base64
import dataclasses
from typing import Any

import dagster as dg

from assets.artifacts import Artifact, Checkpoint, LabeledData, Report, TokenizerFile, TokenShards
from assets.config import LaunchSettings, config_from
from assets.launch import TrainingLauncher, outlets, run_training
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result, upstream_ins
from assets.tracking import TrackerResource
from assets.versions import code_version_of
from lmcore.eval.baselines import confusion_plot
from lmcore.finetune.classify import ClassifyConfig, steps
from lmcore.finetune.specs import ClassifySpec

ClassifySettings = config_from(ClassifyConfig)


class ClassifierConfig(ClassifySettings):
    """Every ClassifyConfig field, and how many processes train."""

    launch: LaunchSettings = LaunchSettings()
    """Processes per node and nodes of each training run: one trains in the step's process; more run torchrun."""

    def to_lmcore(self) -> ClassifyConfig:
        """The ClassifyConfig of every field but ``launch`` (validated too)."""
        self.launch.to_lmcore()
        return ClassifySettings(**self.model_dump(exclude={"launch"})).to_lmcore()


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
    if "encoder" in results:
        metadata["encoder_masked_accuracy"] = round(results["encoder"]["masked_accuracy"], 4)
        if (ppl := results["encoder"]["pseudo_perplexity"]) is not None:
            metadata["encoder_pseudo_perplexity"] = round(ppl, 4)
    return metadata


@dataclasses.dataclass(frozen=True)
class _Upstream:
    """classifier_report's upstream artifacts, as the IO manager loads them."""

    pretrained_model: Checkpoint
    labeled_data: LabeledData
    tokenizer: TokenizerFile
    token_shards: TokenShards


@dg.asset(
    group_name="finetune",
    kinds={"pytorch", "sklearn"},
    pool="gpu",
    code_version=code_version_of(__name__),
    ins=upstream_ins(_Upstream),
)
def classifier_report(
    context: dg.AssetExecutionContext,
    config: ClassifierConfig,
    store: ArtifactStore,
    launcher: TrainingLauncher,
    tracker: TrackerResource,
    **upstream: Artifact,
) -> Report:
    """Accuracy, macro-F1 and confusion of the classifiers (label_lm, head, encoder, bow: ``methods``) on the same
    test split; the encoder's masked-token accuracy and pseudo-perplexity on the shards' test split too."""
    up = _Upstream(**upstream)
    cfg = config.to_lmcore()
    progress, total = reporter(context, "classifier_report"), steps(cfg)

    def on_event(event: dict[str, Any]) -> None:
        if event["stage"] == "train":
            progress(f"{event['method']} train steps", event["step"], total[event["method"]])
        else:
            progress(f"{event['method']} {event['stage']}", event["done"], event["total"])

    spec = ClassifySpec(
        init_checkpoint=up.pretrained_model.path,
        config=cfg,
        labeled={n: up.labeled_data.path / f"{n}.jsonl" for n in LabeledData.PARTS},
        tokenizer=up.tokenizer.file,
        runs_dir=store.run_dir("classifier_report"),
        outlets=outlets("classifier_report", store, tracker),
        shard_root=up.token_shards.path,
    )
    launch = config.launch.to_lmcore()
    results = run_training(context, launcher, launch, spec, callback=on_event)
    report = Report.write(store, "classifier_report", results)
    test_examples = len(up.labeled_data.part("test")[0])
    metadata = {**_metadata(results, cfg.methods, test_examples), "world_size": launch.world_size}
    return result(context, report, metadata, config=config, inputs=vars(up))
