"""``sft_model``: the pretraining loop on ChatML examples, from ``pretrained_model``, optionally with LoRA."""

import dagster as dg

from assets.artifacts import Checkpoint, SftData, TokenizerFile
from assets.config import LoraSettings, TrainSettings
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import result, training_metadata
from assets.versions import code_version_of
from lmcore.finetune.sft import finetune
from lmcore.train.config import TrainConfig


class SftModelConfig(dg.Config):
    train: TrainSettings = TrainSettings()
    """The fine-tuning run (usually a lower lr than pretraining: the model already knows the language)."""
    lora: LoraSettings | None = None
    """None: fine-tune every weight; set: LoRA adapters (merged into the final checkpoint)."""

    def to_lmcore(self) -> TrainConfig:
        if self.lora is not None:
            self.lora.to_lmcore()
        return self.train.to_lmcore()


@dg.asset(group_name="finetune", kinds={"pytorch"}, pool="gpu", code_version=code_version_of(__name__))
def sft_model(
    context: dg.AssetExecutionContext,
    config: SftModelConfig,
    pretrained_model: Checkpoint,
    sft_dataset: SftData,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
) -> Checkpoint:
    """The pretrained model fine-tuned on ChatML examples (loss on assistant tokens only)."""
    train, heldout, _ = sft_dataset.read()
    train_cfg = config.train.to_lmcore()
    summary = finetune(
        pretrained_model.path, train_cfg, train, heldout[: max(1, len(heldout) // 2)], store.run_dir("sft_model"),
        pad_id=tokenizer.tokenizer.pad_id, lora=config.lora.to_lmcore() if config.lora else None,
        callback=training_reporter(context, "sft_model", "sft steps", train_cfg.max_steps),
        meta_extra={"tokenizer_path": str(tokenizer.file), "tokenizer_sha256": tokenizer.sha256},
    )  # fmt: skip
    model = Checkpoint.of_run(summary)
    metadata = {**training_metadata(summary, "SFT loss (assistant tokens)"), "run_dir": summary["run_dir"]}
    inputs = {"pretrained_model": pretrained_model, "sft_dataset": sft_dataset, "tokenizer": tokenizer}
    return result(context, model, metadata, config=config, inputs=inputs)
