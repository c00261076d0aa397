"""``pretrained_model``: a decoder-only transformer trained on the token shards.

One process by default (GPU when present, CPU otherwise). With ``nproc_per_node > 1`` the
same entry point runs under ``torchrun`` (DDP) through Dagster Pipes, so logs stream into
the run and a failed worker fails the step. Training assets take the ``gpu`` pool so two
runs never share one device.
"""

import sys
from typing import Any

import dagster as dg

from assets.artifacts import Checkpoint, TokenizerFile, TokenShards
from assets.config import ModelOverrides, TrainSettings
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import result, training_metadata
from assets.versions import code_version_of
from lmcore.io import write_json
from lmcore.model.gpt import PRESETS, ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train


class PretrainConfig(dg.Config):
    preset: str = "demo"
    """Model preset: tiny (tests), demo (minutes on CPU) or gpt2_124m (GPU)."""
    model: ModelOverrides = ModelOverrides()
    """Fields of the preset's ModelConfig to replace (n_layer, d_model, arch, ...)."""
    train: TrainSettings = TrainSettings()
    """The training run: every TrainConfig field."""
    nproc_per_node: int = 1
    """Processes (devices) per node; > 1 launches torchrun (DDP; gloo on CPU, NCCL on GPU)."""

    def to_model_config(self, vocab_size: int) -> ModelConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: choose one of {', '.join(sorted(PRESETS))}")
        return PRESETS[self.preset](vocab_size=vocab_size, **self.model.overrides())

    def to_lmcore(self) -> TrainConfig:
        """Validation before any run (the vocabulary comes from the tokenizer; shape errors do not depend on it)."""
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node={self.nproc_per_node}: must be >= 1")
        self.to_model_config(vocab_size=512)
        return self.train.to_lmcore()


def _torchrun(context: dg.AssetExecutionContext, spec: dict[str, Any], nproc: int) -> dict[str, Any]:
    spec_path = f"{spec['runs_dir']}/launch-{context.run.run_id}.json"
    write_json(spec_path, spec)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "assets.pretrain.worker", "--config", spec_path]  # fmt: skip
    invocation = dg.PipesSubprocessClient().run(command=command, context=context)
    summaries = [m["summary"] for m in invocation.get_custom_messages() if "summary" in m]
    if not summaries:
        raise RuntimeError(f"torchrun finished without a training summary; see the run log ({spec_path})")
    return summaries[-1]


@dg.asset(group_name="pretrain", kinds={"pytorch"}, pool="gpu", code_version=code_version_of(__name__))
def pretrained_model(
    context: dg.AssetExecutionContext,
    config: PretrainConfig,
    token_shards: TokenShards,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
) -> Checkpoint:
    """A decoder-only transformer trained on the train shards; resumes from its last checkpoint."""
    model_cfg, train_cfg = config.to_model_config(token_shards.vocab_size), config.train.to_lmcore()
    runs_dir = store.run_dir("pretrained_model")
    meta_extra = {
        "tokenizer_path": str(tokenizer.file),
        "tokenizer_sha256": tokenizer.sha256,
        "data_versions": {"token_shards": token_shards.data_version, "tokenizer": tokenizer.data_version},
    }
    context.log.info(f"runs in {runs_dir}; {model_cfg}")
    if config.nproc_per_node > 1:
        spec = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "shard_root": str(token_shards.path),
                "runs_dir": str(runs_dir), "meta_extra": meta_extra}  # fmt: skip
        summary = _torchrun(context, spec, config.nproc_per_node)
    else:
        summary = train(
            model_cfg, train_cfg, token_shards.path, runs_dir, meta_extra=meta_extra,
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
