"""``pretrained_model``: a decoder-only transformer trained on the token shards.

One process by default (GPU when present, CPU otherwise). With more (``launch``: processes per
node, nodes) the same training runs under ``torchrun`` (DDP or FSDP) through the ``launcher``
resource and Dagster Pipes (``assets.launch``), so logs stream into the run and a failed worker
fails the step. Training assets take the ``gpu`` pool so two runs never share one device.
"""

import dataclasses

import dagster as dg

from assets.artifacts import BaseModel, Checkpoint, TokenizerFile, TokenShards
from assets.config import LaunchSettings, ModelOverrides, TrainSettings, WarmStartSettings
from assets.launch import TrainingLauncher, outlets, run_training
from assets.plots import bar_chart
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import result, training_metadata
from assets.tracking import TrackerResource
from assets.versions import code_version_of
from lmcore.model.gpt import PRESETS, ModelConfig
from lmcore.train.config import TrainConfig, WarmStartConfig
from lmcore.train.job import WarmStart
from lmcore.train.objectives import extra_token_ids
from lmcore.train.spec import PretrainSpec
from lmcore.train.summary import TrainSummary


class PretrainConfig(dg.Config):
    preset: str = "demo"
    """Model preset: tiny (tests), demo (minutes on CPU) or gpt2_124m (GPU)."""
    model: ModelOverrides = ModelOverrides()
    """Fields of the preset's ModelConfig to replace (n_layer, d_model, arch, ...)."""
    train: TrainSettings = TrainSettings()
    """The training run: every TrainConfig field."""
    launch: LaunchSettings = LaunchSettings()
    """Processes per node and nodes: one trains in the step's process; more run torchrun (gloo on CPU, NCCL on GPU)."""
    warm_start: WarmStartSettings = WarmStartSettings()
    """From scratch, or continuing the last pretrained model on new plus replayed tokens (what ``retrain`` does when
    the profile says ``init: previous``)."""

    def to_model_config(self, vocab_size: int) -> ModelConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: choose one of {', '.join(sorted(PRESETS))}")
        return PRESETS[self.preset](vocab_size=vocab_size, **self.model.overrides())

    def to_lmcore(self) -> TrainConfig:
        """Validation before any run (the vocabulary comes from the tokenizer; shape errors do not depend on it)."""
        self.launch.to_lmcore()
        self.warm_start.to_lmcore()
        self.to_model_config(vocab_size=512)
        return self.train.to_lmcore()


@dg.asset(group_name="pretrain", kinds={"pytorch"}, pool="gpu", code_version=code_version_of(__name__))
def pretrained_model(
    context: dg.AssetExecutionContext,
    config: PretrainConfig,
    token_shards: TokenShards,
    tokenizer: TokenizerFile,
    base_model: BaseModel,
    store: ArtifactStore,
    launcher: TrainingLauncher,
    tracker: TrackerResource,
) -> Checkpoint:
    """A decoder-only transformer trained on the train shards (from new weights, the base model's or the previous
    model's); resumes from its last checkpoint."""
    train_cfg = config.train.to_lmcore()
    model_cfg, extras = _model_config(config, train_cfg, token_shards, base_model)
    runs_dir = store.run_dir("pretrained_model")
    meta_extra = {
        "tokenizer_path": str(tokenizer.file),
        "tokenizer_sha256": tokenizer.sha256,
        "extra_tokens": extras,
        "base_model": _lineage(base_model),
        "data_versions": {
            "token_shards": token_shards.data_version,
            "tokenizer": tokenizer.data_version,
            "base_model": base_model.data_version,
        },
    }
    context.log.info(f"runs in {runs_dir}; {model_cfg}")
    init, started_from = _warm_start(context, config.warm_start.to_lmcore(), store, base_model)
    spec = PretrainSpec(
        model=model_cfg,
        train=train_cfg,
        shard_root=token_shards.path,
        runs_dir=runs_dir,
        meta_extra=meta_extra,
        init=init,
        outlets=outlets("pretrained_model", store, tracker),
    )
    summary: TrainSummary = run_training(
        context,
        launcher,
        config.launch.to_lmcore(),
        spec,
        callback=training_reporter(context, "pretrained_model", "train steps", train_cfg.max_steps),
        on_wait=lambda d: context.log.warning(f"another run is training in {d}; waiting for it to finish"),
    )
    checkpoint = Checkpoint.of_run(summary)
    metadata = _metadata(summary, config.warm_start.init, init, started_from)
    return result(
        context,
        checkpoint,
        metadata,
        config=config,
        inputs={"token_shards": token_shards, "tokenizer": tokenizer, "base_model": base_model},
    )


def _metadata(summary: TrainSummary, init_setting: str, init: WarmStart | None, started_from: str) -> dict:
    """The asset's metadata: the run's figures and curves, where it started, the realized data mixture."""
    metadata = {
        **training_metadata(summary, "Loss"),
        "tokens_seen": summary.tokens_seen,
        "mfu": round(summary.mfu, 4) if summary.mfu is not None else None,
        "device": summary.device,
        "world_size": summary.world_size,
        "run_dir": dg.MetadataValue.path(str(summary.run_dir)),
        "init": init_setting,
        "started_from": started_from,
    }
    if init is not None and init_setting == "previous":
        metadata["replay_fraction"] = init.replay_fraction
    if summary.realized_mixture:
        mixture = summary.realized_mixture
        metadata["realized_mixture_tokens"] = dg.MetadataValue.json(mixture)
        metadata["realized_mixture"] = bar_chart("Training tokens drawn per group (rank 0)", mixture)
    return metadata


def _model_config(
    config: PretrainConfig, train_cfg: TrainConfig, token_shards: TokenShards, base_model: BaseModel
) -> tuple[ModelConfig, list[int]]:
    """The model to train (the preset's, or the base model's shape) and the extra token ids its objective adds."""
    if base_model.lineage is None:
        model_cfg = config.to_model_config(token_shards.vocab_size)
        extras = extra_token_ids(train_cfg, token_shards.vocab_size, model_cfg.context_length)  # <|mask|>, sentinels
        return dataclasses.replace(model_cfg, vocab_size=token_shards.vocab_size + len(extras)), extras
    source = base_model.lineage["source"]
    if overrides := config.model.overrides():
        raise ValueError(
            f"pretrained_model.model sets {sorted(overrides)}, but the model's shape comes from the base model "
            f"{source}; remove pretrained_model.model (or base_model.source to train a preset)"
        )
    model_cfg = base_model.model_config
    if extra_token_ids(train_cfg, token_shards.vocab_size, model_cfg.context_length):
        raise ValueError(
            f"pretrained_model.train.objective={train_cfg.objective!r} adds tokens, which a base model ({source}) "
            "was not trained with; continue its pretraining with objective: causal"
        )
    if token_shards.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"the token shards use {token_shards.vocab_size} ids but the base model {source} has {model_cfg.vocab_size}"
            "; materialize tokenizer and token_shards again, so that they adopt its tokenizer"
        )
    return model_cfg, []


def _lineage(base_model: BaseModel) -> dict | None:
    """What a checkpoint records of the base model it started from (None: none)."""
    lineage = base_model.lineage
    return None if lineage is None else {k: lineage[k] for k in ("source", "revision", "weights_sha256")}


def _fresh_start(base_model: BaseModel) -> tuple[WarmStart | None, str]:
    """The base model's step-0 checkpoint (all shards new) and its lineage line, or new weights."""
    base = _lineage(base_model)
    if base is None:
        return None, "scratch"
    revision = f"revision {base['revision']}, " if base["revision"] else ""
    init = WarmStart(checkpoint=base_model.checkpoint, replay_fraction=0.0, trained_shards=())
    return init, f"{base['source']} ({revision}weights sha256 {base['weights_sha256'][:16]})"


def _warm_start(
    context: dg.AssetExecutionContext, cfg: WarmStartConfig, store: ArtifactStore, base_model: BaseModel
) -> tuple[WarmStart | None, str]:
    """The weights to start from (None: new ones) and what the lineage says about the start: the previous model
    with ``init: previous``, else the base model's when there is one, else new ones."""
    fresh = _fresh_start(base_model)
    if cfg.init == "scratch":
        return fresh
    try:
        previous = Checkpoint.open(store, store.read_ref("pretrained_model"))
    except FileNotFoundError:
        context.log.warning(f"warm_start.init is previous but there is no previous pretrained_model; from {fresh[1]}")
        return fresh if fresh[0] is not None else (None, "scratch (no previous model)")
    trained = previous.manifest.get("data", {}).get("train_shards")
    if trained is None:
        context.log.warning(
            f"{previous.location} does not list the shards it was trained on; every shard counts as new"
        )
    init = WarmStart(checkpoint=previous.path, replay_fraction=cfg.replay_fraction, trained_shards=tuple(trained or ()))
    return init, f"{previous.location} (weights sha256 {previous.data_version[:16]})"
