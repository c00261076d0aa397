"""``sft_dataset`` and ``sft_model``: ChatML instruction tuning on the pretraining loop.

The demo derives instruction pairs from the embedded Python docs, following the document
splits (pairs from val/test documents are always held out, so no test example is seen in
training); other profiles read JSONL records (Alpaca, {instruction, solution}, {messages})
and hold out a seeded fraction.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg

import lmcore.chat
import lmcore.lora
import lmcore.sft
import lmcore.sft_data
import lmcore.tasks
from assets.plots import line_chart
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage, train_config_of
from assets.tokenizer import TOKENIZER_FILE
from lmcore.chat import check_example, render_chatml
from lmcore.io import digest_of, read_parquet_rows
from lmcore.lora import LoraConfig
from lmcore.sft import finetune, init_model_config
from lmcore.sft_data import build_sft_dataset, read_sft_dataset, write_sft_dataset
from lmcore.splits import SPLITS, split_paths
from lmcore.tasks import instruction_pairs
from lmcore.tokenizer import PAD, load_tokenizer
from lmcore.train_config import TrainConfig

DERIVED = "derived:python-docs"


class SftDatasetConfig(dg.Config):
    records: list[str] = [DERIVED]
    """JSONL records files, or derived:python-docs (instruction pairs from the corpus' own docs)."""
    holdout_fraction: float = 0.1
    """Seeded share of records held out for ROUGE (JSONL records; derived pairs follow the splits)."""
    seed: int = 0
    pack: bool = True
    """Pack several short examples into one window (attention stays inside each)."""
    system_prompt: str | None = None


def _derive(store: ArtifactStore, splits: dict, out: Path) -> tuple[list[Path], list[Path], dict[str, Any]]:
    """Instruction pairs per split as JSONL: train documents give training pairs, val/test held-out ones."""
    root, manifest = load_manifest(store, splits)
    files, stats = {}, {}
    for split in SPLITS:
        pairs, skipped = instruction_pairs(read_parquet_rows(split_paths(root, split, manifest)))
        files[split] = out / f"derived_{split}.jsonl"
        files[split].write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        stats[split] = {"pairs": len(pairs), "skipped": skipped}
    return [files["train"]], [files["val"], files["test"]], stats


@dg.asset(
    group_name="finetune",
    kinds={"parquet"},
    code_version=code_version(lmcore.chat, lmcore.sft_data, lmcore.tasks),
)
def sft_dataset(
    config: SftDatasetConfig, pretrained_model: dict, tokenizer: dict, splits: dict, store: ArtifactStore
) -> dg.Output:
    """ChatML-rendered instruction examples with assistant-only loss masks, and held-out prompts."""
    tok_path, _ = load_manifest(store, tokenizer)
    tok = load_tokenizer(tok_path / TOKENIZER_FILE)
    context_length = init_model_config(pretrained_model["path"])[0].context_length

    def build(out: Path) -> None:
        derived = {}
        if config.records == [DERIVED]:
            train_files, heldout_files, derived = _derive(store, splits, out)
            fraction = 0.0
        else:
            train_files, heldout_files, fraction = [Path(p) for p in config.records], [], config.holdout_fraction
        train, heldout, stats = build_sft_dataset(
            train_files, tok, context_length=context_length, holdout_fraction=fraction, seed=config.seed,
            pack=config.pack, system_prompt=config.system_prompt, heldout_paths=heldout_files,
        )  # fmt: skip
        write_sft_dataset(out, train, heldout, {**stats, "derived": derived})

    ref = run_stage(store, "sft_dataset", build)
    path, manifest = load_manifest(store, ref)
    stats = manifest["stats"]
    skipped = stats.get("skipped", {})
    _, heldout, _ = read_sft_dataset(path)
    sample = heldout[0] if heldout else None
    return output(
        ref,
        {
            "records": stats.get("records", 0),
            "kept": stats.get("kept", 0),
            "heldout": len(heldout),
            "skipped": dg.MetadataValue.json(skipped),
            "skipped_lines": dg.MetadataValue.json(stats.get("skipped_lines", {})),
            "truncated": stats.get("truncated", 0),
            "dropped_after_truncation": stats.get("dropped_after_truncation", 0),
            "sample": dg.MetadataValue.md(
                f"**prompt**\n\n{sample.prompt}\n\n**reference**\n\n{sample.reference}" if sample else "(none)"
            ),
        },
        config=config,
        inputs={"pretrained_model": pretrained_model, "tokenizer": tokenizer, "splits": splits},
    )


@dg.asset_check(
    asset=sft_dataset,
    additional_ins={"tokenizer": dg.AssetIn("tokenizer")},
    blocking=True,
    description="A rendered held-out sample decodes back to its messages; the mask covers exactly the assistant.",
)
def sft_sample_roundtrip(sft_dataset: dict, tokenizer: dict, store: ArtifactStore) -> dg.AssetCheckResult:
    path, _ = load_manifest(store, sft_dataset)
    tok_path, _ = load_manifest(store, tokenizer)
    tok = load_tokenizer(tok_path / TOKENIZER_FILE)
    train, heldout, _ = read_sft_dataset(path)
    problems = []
    for ex in heldout[:20]:
        messages = [*ex.prompt_messages, {"role": "assistant", "content": ex.reference}]
        problems += check_example(messages, render_chatml(messages, tok), tok)
    return dg.AssetCheckResult(
        passed=bool(train) and not problems,
        metadata={
            "train_rows": len(train),
            "checked": min(20, len(heldout)),
            "problems": dg.MetadataValue.json(problems[:10]),
        },
    )


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
    code_version=code_version(lmcore.sft, lmcore.lora),
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
