"""``sft_model``: the pretraining loop on ChatML examples, from ``pretrained_model``, optionally with LoRA.

One process by default; with more (``launch``) it runs under torchrun through the ``launcher``
resource, each process on its share of the examples (``assets.launch``).
"""

import dagster as dg

from assets.artifacts import Checkpoint, SftData, TokenizerFile
from assets.config import LaunchSettings, LoraSettings, TrainSettings
from assets.launch import TrainingLauncher, outlets, run_training
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import result, training_metadata
from assets.tracking import TrackerResource
from assets.versions import code_version_of
from lmcore.finetune.specs import SftSpec
from lmcore.train.config import TrainConfig
from lmcore.train.summary import TrainSummary


class SftModelConfig(dg.Config):
    train: TrainSettings = TrainSettings()
    """The fine-tuning run (usually a lower lr than pretraining: the model already knows the language)."""
    lora: LoraSettings | None = None
    """None: fine-tune every weight; set: LoRA adapters (merged into the final checkpoint)."""
    launch: LaunchSettings = LaunchSettings()
    """Processes per node and nodes: one fine-tunes in the step's process; more run torchrun."""

    def to_lmcore(self) -> TrainConfig:
        self.launch.to_lmcore()
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
    launcher: TrainingLauncher,
    tracker: TrackerResource,
) -> Checkpoint:
    """The pretrained model fine-tuned on ChatML examples (loss on assistant tokens only)."""
    train_cfg = config.to_lmcore()
    spec = SftSpec(
        init_checkpoint=pretrained_model.path,
        train=train_cfg,
        lora=config.lora.to_lmcore() if config.lora else None,
        sft_dataset=sft_dataset.path,
        tokenizer=tokenizer.file,
        runs_dir=store.run_dir("sft_model"),
        meta_extra={"tokenizer_path": str(tokenizer.file), "tokenizer_sha256": tokenizer.sha256},
        outlets=outlets("sft_model", store, tracker),
    )
    summary: TrainSummary = run_training(
        context,
        launcher,
        config.launch.to_lmcore(),
        spec,
        callback=training_reporter(context, "sft_model", "sft steps", train_cfg.max_steps),
    )
    model = Checkpoint.of_run(summary)
    metadata = {
        **training_metadata(summary, "SFT loss (assistant tokens)"),
        "world_size": summary.world_size,
        "run_dir": str(summary.run_dir),
    }
    inputs = {"pretrained_model": pretrained_model, "sft_dataset": sft_dataset, "tokenizer": tokenizer}
    return result(context, model, metadata, config=config, inputs=inputs)
