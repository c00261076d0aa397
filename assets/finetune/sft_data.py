"""``sft_dataset``: instruction records rendered as ChatML with assistant-only loss masks.

The demo derives instruction pairs from the embedded Python docs, following the document
splits (pairs from val/test documents are always held out, so no test example is seen in
training); other profiles read JSONL records (Alpaca, {instruction, solution}, {messages})
and hold out a seeded fraction.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

import dagster as dg

from assets.artifacts import Checkpoint, SftData, Splits, TokenizerFile
from assets.config import config_from
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.splits import SPLITS
from lmcore.finetune.chat import check_example, render_chatml
from lmcore.finetune.sft_data import SftDataConfig, build_sft_dataset, write_sft_dataset
from lmcore.finetune.tasks import DERIVED, instruction_pairs

SftDataSettings = config_from(SftDataConfig)


class SftDatasetConfig(SftDataSettings):
    """Every SftDataConfig field, and the records to read."""

    records: list[str] = [DERIVED]
    """JSONL records files, or derived:python-docs (instruction pairs from the corpus' own docs)."""

    def to_lmcore(self) -> SftDataConfig:
        """The SftDataConfig of every field but ``records`` (validated too)."""
        return SftDataSettings(**self.model_dump(exclude={"records"})).to_lmcore()


def _derive(splits: Splits, out: Path) -> tuple[list[Path], list[Path], dict[str, Any]]:
    """Instruction pairs per split as JSONL: train documents give training pairs, val/test held-out ones."""
    files, stats = {}, {}
    for split in SPLITS:
        pairs, skipped = instruction_pairs(splits.rows(split))
        files[split] = out / f"derived_{split}.jsonl"
        files[split].write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        stats[split] = {"pairs": len(pairs), "skipped": skipped}
    return [files["train"]], [files["val"], files["test"]], stats


@dg.asset(group_name="finetune", kinds={"parquet"}, code_version=code_version_of(__name__))
def sft_dataset(
    context: dg.AssetExecutionContext,
    config: SftDatasetConfig,
    pretrained_model: Checkpoint,
    tokenizer: TokenizerFile,
    splits: Splits,
    store: ArtifactStore,
) -> SftData:
    """ChatML-rendered instruction examples with assistant-only loss masks, and held-out prompts."""
    context_length = pretrained_model.model_config.context_length

    def build(out: Path) -> None:
        derived, cfg = {}, config.to_lmcore()
        if config.records == [DERIVED]:
            train_files, heldout_files, derived = _derive(splits, out)
            cfg = dataclasses.replace(cfg, holdout_fraction=0.0)
        else:
            train_files, heldout_files = [Path(p) for p in config.records], []
        train, heldout, stats = build_sft_dataset(
            train_files, tokenizer.tokenizer, cfg, context_length=context_length, heldout_paths=heldout_files
        )
        write_sft_dataset(out, train, heldout, {**stats, "derived": derived})

    data = SftData.publish(store, "sft_dataset", build)
    stats = data.manifest["stats"]
    _, heldout, _ = data.read()
    sample = heldout[0] if heldout else None
    metadata = {
        "records": stats.get("records", 0),
        "kept": stats.get("kept", 0),
        "heldout": len(heldout),
        "skipped": dg.MetadataValue.json(stats.get("skipped", {})),
        "skipped_lines": dg.MetadataValue.json(stats.get("skipped_lines", {})),
        "truncated": stats.get("truncated", 0),
        "dropped_after_truncation": stats.get("dropped_after_truncation", 0),
        "sample": dg.MetadataValue.md(
            f"**prompt**\n\n{sample.prompt}\n\n**reference**\n\n{sample.reference}" if sample else "(none)"
        ),
    }
    inputs = {"pretrained_model": pretrained_model, "tokenizer": tokenizer, "splits": splits}
    return result(context, data, metadata, config=config, inputs=inputs)


@dg.asset_check(
    asset=sft_dataset,
    additional_ins={"tokenizer": dg.AssetIn("tokenizer")},
    blocking=True,
    description="A rendered held-out sample decodes back to its messages; the mask covers exactly the assistant.",
)
def sft_sample_roundtrip(sft_dataset: SftData, tokenizer: TokenizerFile) -> dg.AssetCheckResult:
    tok = tokenizer.tokenizer
    train, heldout, _ = sft_dataset.read()
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
