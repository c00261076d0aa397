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

import lmcore.finetune.chat
import lmcore.finetune.sft
import lmcore.finetune.sft_data
import lmcore.finetune.tasks
import lmcore.model.lora
from assets.data.tokenizer import TOKENIZER_FILE
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.splits import SPLITS, split_paths
from lmcore.data.tokenizer import load_tokenizer
from lmcore.finetune.chat import check_example, render_chatml
from lmcore.finetune.sft import init_model_config
from lmcore.finetune.sft_data import build_sft_dataset, read_sft_dataset, write_sft_dataset
from lmcore.finetune.tasks import instruction_pairs
from lmcore.io import read_parquet_rows

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
    code_version=code_version(lmcore.finetune.chat, lmcore.finetune.sft_data, lmcore.finetune.tasks),
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
