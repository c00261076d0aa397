"""``sft_model``: the pretraining loop on ChatML examples, from ``pretrained_model``, optionally with LoRA."""

from pathlib import Path

import dagster as dg

import lmcore.finetune.chat
import lmcore.finetune.sft
import lmcore.finetune.sft_data
import lmcore.finetune.tasks
import lmcore.model.lora
from assets.data.tokenizer import TOKENIZER_FILE
from assets.plots import line_chart
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, train_config_of
from lmcore.data.tokenizer import PAD, load_tokenizer
from lmcore.finetune.sft import finetune
from lmcore.finetune.sft_data import read_sft_dataset
from lmcore.io import digest_of
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig


class SftModelConfig(dg.Config):
    max_steps: int = 150
    batch_size: int = 8
    lr: float = 3e-4
    """Lower than pretraining: the model already knows the language."""
    warmup_steps: int = 10
    eval_every: int = 50
    eval_batches: int = 5
    checkpoint_every: int = 50
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    lora_rank: int = 0
    """0: fine-tune every weight; > 0: LoRA adapters of this rank (merged into the final checkpoint)."""
    lora_alpha: float = 16.0
    lora_targets: list[str] = ["attn.c_attn", "attn.c_proj"]

    def to_train_config(self) -> TrainConfig:
        return train_config_of(self)

    def to_lora(self) -> LoraConfig | None:
        if self.lora_rank == 0:
            return None
        return LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=tuple(self.lora_targets))

    def to_lmcore(self) -> TrainConfig:
        self.to_lora()
        return self.to_train_config()


@dg.asset(
    group_name="finetune",
    kinds={"pytorch"},
    pool="gpu",
    code_version=code_version(lmcore.finetune.sft, lmcore.model.lora),
)
def sft_model(
    context: dg.AssetExecutionContext,
    config: SftModelConfig,
    pretrained_model: dict,
    sft_dataset: dict,
    tokenizer: dict,
    store: ArtifactStore,
) -> dg.Output:
    """The pretrained model fine-tuned on ChatML examples (loss on assistant tokens only)."""
    data_path, _ = load_manifest(store, sft_dataset)
    train, heldout, _ = read_sft_dataset(data_path)
    tok_path, tok_manifest = load_manifest(store, tokenizer)
    train_cfg, lora = config.to_train_config(), config.to_lora()
    # The run dir's key holds all of the LoRA config (0 without LoRA, the key such runs always had): with only the
    # rank, a changed alpha or target list landed on the finished run and was refused there as a config mismatch.
    key = digest_of({"train": train_cfg.to_dict(), "lora": lora.to_dict() if lora else 0,
                     "init": pretrained_model["data_version"], "data": sft_dataset["data_version"]})[:16]  # fmt: skip
    on_metrics = training_reporter(context, "sft_model", "sft steps", train_cfg.max_steps)

    summary = finetune(
        Path(pretrained_model["path"]), train_cfg, train, heldout[: max(1, len(heldout) // 2)],
        store.run_dir("sft_model", key), pad_id=load_tokenizer(tok_path / TOKENIZER_FILE).token_to_id(PAD),
        lora=lora, callback=on_metrics,
        meta_extra={"tokenizer_path": str(tok_path / TOKENIZER_FILE), "tokenizer_sha256": tok_manifest["sha256"]},
    )  # fmt: skip
    ref = {"path": summary["checkpoint"], "data_version": summary["checkpoint_sha256"]}
    return output(
        ref,
        {
            "trainable_parameters": summary["trainable_params"],
            "parameters": summary["params"],
            "steps": summary["step"],
            "train_loss": summary["train_loss"],
            "val_loss": summary["val_loss"],
            "tokens_per_s": round(summary["tokens_per_s"], 1),
            "loss_curve": line_chart(
                "SFT loss (assistant tokens)",
                {"train": summary["loss_history"], "val": summary["val_history"]},
                xlabel="step",
                ylabel="cross-entropy (nats/token)",
            ),
        },  # fmt: skip
        config=config,
        inputs={"pretrained_model": pretrained_model, "sft_dataset": sft_dataset, "tokenizer": tokenizer},
    )
