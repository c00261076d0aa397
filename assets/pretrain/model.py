"""``pretrained_model``: a decoder-only transformer trained on the token shards.

One process by default (GPU when present, CPU otherwise). With more (``launch``: processes per
node, nodes) the same training runs under ``torchrun`` (DDP or FSDP) through the ``launcher``
resource and Dagster Pipes (``assets.launch``), so logs stream into the run and a failed worker
fails the step. Training assets take the ``gpu`` pool so two runs never share one device.
"""

import dataclasses

import dagster as dg

from assets.artifacts import Checkpoint, TokenizerFile, TokenShards
from assets.config import LaunchSettings, ModelOverrides, TrainSettings
from assets.launch import TrainingLauncher, outlets, run_training
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import result, training_metadata
from assets.tasks import pretrain as pretrain_task
from assets.tracking import TrackerResource
from assets.versions import code_version_of
from lmcore.model.gpt import PRESETS, ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.objectives import extra_token_ids


class PretrainConfig(dg.Config):
    preset: str = "demo"
    """Model preset: tiny (tests), demo (minutes on CPU) or gpt2_124m (GPU)."""
    model: ModelOverrides = ModelOverrides()
    """Fields of the preset's ModelConfig to replace (n_layer, d_model, arch, ...)."""
    train: TrainSettings = TrainSettings()
    """The training run: every TrainConfig field."""
    launch: LaunchSettings = LaunchSettings()
    """Processes per node and nodes: one trains in the step's process; more run torchrun (gloo on CPU, NCCL on GPU)."""

    def to_model_config(self, vocab_size: int) -> ModelConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: choose one of {', '.join(sorted(PRESETS))}")
        return PRESETS[self.preset](vocab_size=vocab_size, **self.model.overrides())

    def to_lmcore(self) -> TrainConfig:
        """Validation before any run (the vocabulary comes from the tokenizer; shape errors do not depend on it)."""
        self.launch.to_lmcore()
        self.to_model_config(vocab_size=512)
        return self.train.to_lmcore()


@dg.asset(group_name="pretrain", kinds={"pytorch"}, pool="gpu", code_version=code_version_of(__name__))
def pretrained_model(
    context: dg.AssetExecutionContext,
    config: PretrainConfig,
    token_shards: TokenShards,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
    launcher: TrainingLauncher,
    tracker: TrackerResource,
) -> Checkpoint:
    """A decoder-only transformer trained on the train shards; resumes from its last checkpoint."""
    model_cfg, train_cfg = config.to_model_config(token_shards.vocab_size), config.train.to_lmcore()
    extras = extra_token_ids(train_cfg, token_shards.vocab_size, model_cfg.context_length)  # <|mask|> or sentinels
    model_cfg = dataclasses.replace(model_cfg, vocab_size=token_shards.vocab_size + len(extras))
    runs_dir = store.run_dir("pretrained_model")
    meta_extra = {
        "tokenizer_path": str(tokenizer.file),
        "tokenizer_sha256": tokenizer.sha256,
        "extra_tokens": extras,
        "data_versions": {"token_shards": token_shards.data_version, "tokenizer": tokenizer.data_version},
    }
    context.log.info(f"runs in {runs_dir}; {model_cfg}")
    spec = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "shard_root": str(token_shards.path),
            "runs_dir": str(runs_dir), "meta_extra": meta_extra,
            "outlets": outlets("pretrained_model", store, tracker)}  # fmt: skip
    summary = run_training(
        context, launcher, config.launch.to_lmcore(), pretrain_task, spec,
        callback=training_reporter(context, "pretrained_model", "train steps", train_cfg.max_steps),
        on_wait=lambda d: context.log.warning(f"another run is training in {d}; waiting for it to finish"),
    )  # fmt: skip
    checkpoint = Checkpoint.of_run(summary)
    metadata = {
        **training_metadata(summary, "Loss"),
        "tokens_seen": summary["tokens_seen"],
        "mfu": round(summary["mfu"], 4) if summary["mfu"] is not None else None,
        "device": summary["device"],
        "world_size": summary["world_size"],
        "resumed_from": str(summary["resumed_from"]),
        "run_dir": dg.MetadataValue.path(summary["run_dir"]),
    }
    return result(
        context, checkpoint, metadata, config=config, inputs={"token_shards": token_shards, "tokenizer": tokenizer}
    )
