"""``tokenizer``: byte-level BPE trained on a deterministic sample of the train split (or kept, see the policy), or
the base model's own tokenizer when ``base_model`` names one."""

import dataclasses
import itertools
import shutil
from pathlib import Path

import dagster as dg

from assets.artifacts import TOKENIZER_FILE, BaseModel, Splits, TokenizerFile, open_ref
from assets.config import config_from
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.splits import split_texts, tokenizer_sample
from lmcore.data.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    roundtrip_failures,
    tokenizer_stats,
    train_tokenizer,
)
from lmcore.io import write_json
from lmcore.workers import run_in_child

TokenizerAssetConfig = config_from(TokenizerConfig, name="TokenizerAssetConfig")
_SAMPLE_DOCS = 200


def _val_sample(splits: Splits) -> list[str]:
    return list(itertools.islice(splits.texts("val"), _SAMPLE_DOCS))


def _trained_with(cfg: TokenizerConfig) -> dict:
    """The settings that decide what a tokenizer learns (not the policy about keeping it)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "when_corpus_grows"}


def _kept(store: ArtifactStore, cfg: TokenizerConfig) -> TokenizerFile | None:
    """The tokenizer materialized before with the same training settings, when the policy keeps it."""
    if cfg.when_corpus_grows != "keep":
        return None
    try:
        previous = open_ref(store, store.read_ref("tokenizer"))
        same = isinstance(previous, TokenizerFile) and previous.manifest.get("trained_with") == _trained_with(cfg)
    except (FileNotFoundError, ValueError, OSError, KeyError):
        return None
    return previous if same else None


def _adopted(store: ArtifactStore, base: BaseModel, cfg: TokenizerConfig, sample: list[str]) -> TokenizerFile:
    """The base model's tokenizer (the special tokens it lacked added), published as this asset's file."""

    def build(out):
        shutil.copyfile(base.tokenizer_file, out / TOKENIZER_FILE)
        stats = tokenizer_stats(load_tokenizer(out / TOKENIZER_FILE), out / TOKENIZER_FILE, sample)
        lineage = {k: base.lineage[k] for k in ("source", "revision", "weights_sha256", "added_tokens")}
        manifest = {"file": TOKENIZER_FILE, "config": cfg.__dict__, "adopted_from": lineage, **stats}
        manifest["chat_template"] = base.lineage["chat_template"]
        write_json(out / "manifest.json", manifest)

    return TokenizerFile.publish(store, "tokenizer", build)


def _train_on(cfg: TokenizerConfig, root: Path, manifest: dict, ids: set[str], out: Path) -> None:
    train_tokenizer(cfg, split_texts(root, manifest, "train", ids=ids), out)


@dg.asset(group_name="data", kinds={"huggingface"}, code_version=code_version_of(__name__))
def tokenizer(
    context: dg.AssetExecutionContext,
    config: TokenizerAssetConfig,
    splits: Splits,
    base_model: BaseModel,
    store: ArtifactStore,
) -> TokenizerFile:
    """HF tokenizer.json; the same sample and config give a byte-identical file. With ``when_corpus_grows: keep``
    a tokenizer trained before with the same settings is kept, so unchanged partitions keep their shards. With a
    base model, its own tokenizer is adopted instead (vocab_size and the training settings are then unused)."""
    cfg, sample = config.to_lmcore(), _val_sample(splits)
    tok = _adopted(store, base_model, cfg, sample) if base_model.lineage else _kept(store, cfg)
    if tok is None:
        chosen = tokenizer_sample(splits.path, cfg.sample_bytes)

        def build(out):
            # in a child process: HF's trainer holds the interpreter for minutes, and SIGTERM or Ctrl-C must stop it
            run_in_child(_train_on, cfg, splits.path, splits.manifest, chosen, out / TOKENIZER_FILE)
            trained = load_tokenizer(out / TOKENIZER_FILE)
            stats = tokenizer_stats(trained, out / TOKENIZER_FILE, sample)
            sampled = {"documents": len(chosen), "splits_version": splits.data_version}
            manifest = {
                "file": TOKENIZER_FILE,
                "config": cfg.__dict__,
                "trained_with": _trained_with(cfg),
                "sample": sampled,
                **stats,
            }
            write_json(out / "manifest.json", manifest)

        tok = TokenizerFile.publish(store, "tokenizer", build)
    manifest = tok.manifest
    metadata = {
        "vocab_size": manifest["vocab_size"],
        "bytes_per_token_val": round(manifest["bytes_per_token"], 4),
        "sample": dg.MetadataValue.md(
            f"**text**\n\n```\n{manifest['sample_text']}\n```\n\n"
            f"**tokens**\n\n`{' | '.join(manifest['sample_tokens'])}`"
        ),
        "sha256": manifest["sha256"],
        "trained_on_documents": manifest.get("sample", {}).get("documents"),
        "kept": manifest.get("sample", {}).get("splits_version") != splits.data_version,
    }
    if adopted := manifest.get("adopted_from"):
        metadata["adopted_from"] = adopted["source"]
        metadata["added_tokens"] = ", ".join(adopted["added_tokens"]) or "none"
    elif manifest["vocab_size"] < cfg.vocab_size:  # BPE ran out of pairs seen min_frequency times
        metadata["warning"] = (
            f"the vocabulary reached {manifest['vocab_size']} of vocab_size={cfg.vocab_size} tokens: the train split "
            f"has too few distinct pairs occurring min_frequency={cfg.min_frequency} times; add text, or set "
            f"tokenizer.vocab_size to about {manifest['vocab_size']}"
        )
        context.log.warning(metadata["warning"])
    return result(context, tok, metadata, config=config, inputs={"splits": splits, "base_model": base_model})


@dg.asset_check(
    asset=tokenizer,
    additional_ins={"splits": dg.AssetIn("splits")},
    blocking=True,
    description="decode(encode(text)) == text on validation documents.",
)
def tokenizer_roundtrip(tokenizer: TokenizerFile, splits: Splits) -> dg.AssetCheckResult:
    sample = _val_sample(splits)
    failures = roundtrip_failures(tokenizer.tokenizer, sample)
    why = None
    if not sample:
        why = "no validation documents to check the tokenizer on; give the val split documents (splits.val_fraction)"
    elif failures:
        why = f"{len(failures)} of {len(sample)} validation documents do not decode back to their text"
    return dg.AssetCheckResult(
        passed=why is None, description=why, metadata={"checked": len(sample), "failures": len(failures)}
    )
