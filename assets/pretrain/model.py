"""``pretrained_model`` and ``perplexity_report``: train on the token shards, score against an n-gram.

One process by default (GPU when present, CPU otherwise). With ``nproc_per_node > 1`` the
same entry point runs under ``torchrun`` (DDP) through Dagster Pipes, so logs stream into
the run and a failed worker fails the step. Both assets take the ``gpu`` pool so two runs
never share one device.
"""

import sys
from typing import Any

import dagster as dg

import lmcore.data.loader
import lmcore.eval.perplexity
import lmcore.model.checkpoint
import lmcore.model.gpt
import lmcore.train.loop
from assets.data.tokenizer import TOKENIZER_FILE
from assets.plots import line_chart
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, train_config_of
from lmcore.io import digest_of, exclusive_lock, write_json
from lmcore.model.gpt import PRESETS, ModelConfig
from lmcore.train.config import RESUMABLE_CHANGES, TrainConfig
from lmcore.train.loop import train

_MODEL_FIELDS = ("arch", "n_layer", "n_head", "n_kv_head", "d_model", "context_length", "dropout")


class PretrainConfig(dg.Config):
    preset: str = "demo"
    """Model preset: tiny (tests), demo (minutes on CPU) or gpt2_124m (GPU)."""
    arch: str | None = None
    """Override the preset's block: modern or gpt2."""
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    d_model: int | None = None
    context_length: int | None = None
    dropout: float | None = None
    max_steps: int = 300
    """Optimizer steps; an interrupted run with the same config resumes to this step."""
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 1e-3
    warmup_steps: int = 30
    eval_every: int = 100
    eval_batches: int = 10
    checkpoint_every: int = 50
    dtype: str = "auto"
    """auto (bf16 on CUDA), float32 or bfloat16."""
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    nproc_per_node: int = 1
    """Processes (devices) per node; > 1 launches torchrun (DDP; gloo on CPU, NCCL on GPU)."""

    def to_model_config(self, vocab_size: int) -> ModelConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: choose one of {', '.join(sorted(PRESETS))}")
        overrides = {f: getattr(self, f) for f in _MODEL_FIELDS if getattr(self, f) is not None}
        return PRESETS[self.preset](vocab_size=vocab_size, **overrides)

    def to_train_config(self) -> TrainConfig:
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node={self.nproc_per_node}: must be >= 1")
        return train_config_of(self)

    def to_lmcore(self) -> TrainConfig:
        """Validation hook for profiles, before any run: model shape and training fields.

        The real vocabulary comes from the tokenizer at run time; shape errors (heads not
        dividing the width, ...) do not depend on it."""
        self.to_model_config(vocab_size=512)
        return self.to_train_config()


def _run_key(model_cfg: ModelConfig, train_cfg: TrainConfig, data_version: str) -> str:
    """Runs with the same model, loss-relevant training fields and data share a directory (and resume)."""
    resumable = {name.split(".", 1)[1] for name in RESUMABLE_CHANGES}
    train_fields = {k: v for k, v in train_cfg.to_dict().items() if k not in resumable}
    return digest_of({"model": model_cfg.to_dict(), "train": train_fields, "data": data_version})[:16]


def _torchrun(context: dg.AssetExecutionContext, spec: dict[str, Any], nproc: int) -> dict[str, Any]:
    spec_path = f"{spec['run_dir']}/launch.json"
    write_json(spec_path, spec)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "assets.pretrain.worker", "--config", spec_path]  # fmt: skip
    invocation = dg.PipesSubprocessClient().run(command=command, context=context)
    summaries = [m["summary"] for m in invocation.get_custom_messages() if "summary" in m]
    if not summaries:
        raise RuntimeError(f"torchrun finished without a training summary; see the run log ({spec_path})")
    return summaries[-1]


def _train(context, config, model_cfg, train_cfg, shard_root, run_dir, meta_extra) -> dict[str, Any]:
    """Train in this process, or under torchrun through Pipes when several processes are asked for."""
    if config.nproc_per_node > 1:
        spec = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "shard_root": str(shard_root),
                "run_dir": str(run_dir), "meta_extra": meta_extra}  # fmt: skip
        return _torchrun(context, spec, config.nproc_per_node)
    on_metrics = training_reporter(context, "pretrained_model", "train steps", train_cfg.max_steps)
    return train(model_cfg, train_cfg, shard_root, run_dir, callback=on_metrics, meta_extra=meta_extra)


@dg.asset(
    group_name="pretrain",
    kinds={"pytorch"},
    pool="gpu",
    code_version=code_version(lmcore.model.gpt, lmcore.train.loop, lmcore.data.loader, lmcore.model.checkpoint),
)
def pretrained_model(
    context: dg.AssetExecutionContext, config: PretrainConfig, token_shards: dict, tokenizer: dict, store: ArtifactStore
) -> dg.Output:
    """A decoder-only transformer trained on the train shards; resumes from its last checkpoint."""
    shard_root, shards = load_manifest(store, token_shards)
    tok_path, tok_manifest = load_manifest(store, tokenizer)
    model_cfg, train_cfg = config.to_model_config(shards["vocab_size"]), config.to_train_config()
    run_dir = store.run_dir("pretrained_model", _run_key(model_cfg, train_cfg, token_shards["data_version"]))
    meta_extra = {
        "tokenizer_path": str(tok_path / TOKENIZER_FILE),
        "tokenizer_sha256": tok_manifest["sha256"],
        "data_versions": {"token_shards": token_shards["data_version"], "tokenizer": tokenizer["data_version"]},
    }
    context.log.info(f"run dir {run_dir}; {model_cfg}")

    def waiting() -> None:
        context.log.warning(f"another run is training in {run_dir}; waiting for it to finish")

    with exclusive_lock(f"{run_dir}.lock", on_wait=waiting):
        summary = _train(context, config, model_cfg, train_cfg, shard_root, run_dir, meta_extra)
    ref = {"path": summary["checkpoint"], "run_dir": str(run_dir), "data_version": summary["checkpoint_sha256"]}

    curves = {"train": summary["loss_history"], "val": summary["val_history"]}
    return output(
        ref,
        {
            "parameters": summary["params"],
            "tokens_seen": summary["tokens_seen"],
            "steps": summary["step"],
            "train_loss": summary["train_loss"],
            "val_loss": summary["val_loss"],
            "tokens_per_s": round(summary["tokens_per_s"], 1),
            "mfu": round(summary["mfu"], 4) if summary["mfu"] is not None else None,
            "device": summary["device"],
            "world_size": summary["world_size"],
            "resumed_from": str(summary["resumed_from"]),
            "checkpoint_sha256": summary["checkpoint_sha256"],
            "loss_curve": line_chart("Loss", curves, xlabel="step", ylabel="cross-entropy (nats/token)"),
        },
        config=config,
        inputs={"token_shards": token_shards, "tokenizer": tokenizer},
    )
