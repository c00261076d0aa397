"""``tokenizer``: byte-level BPE trained on the train split only."""

import itertools

import dagster as dg

import lmcore.data.tokenizer
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.splits import split_paths
from lmcore.data.tokenizer import TokenizerConfig, load_tokenizer, roundtrip_failures, tokenizer_stats, train_tokenizer
from lmcore.io import iter_texts, write_json

TOKENIZER_FILE = "tokenizer.json"
_SAMPLE_DOCS = 200


class TokenizerAssetConfig(dg.Config):
    vocab_size: int = 8192
    """Vocabulary size including 256 byte tokens and 4 special tokens."""
    min_frequency: int = 2
    """Minimum pair count for a merge."""

    def to_lmcore(self) -> TokenizerConfig:
        return TokenizerConfig(vocab_size=self.vocab_size, min_frequency=self.min_frequency)


def _val_sample(store: ArtifactStore, splits: dict) -> list[str]:
    root, manifest = load_manifest(store, splits)
    return list(itertools.islice(iter_texts(split_paths(root, "val", manifest)), _SAMPLE_DOCS))


@dg.asset(group_name="data", kinds={"huggingface"}, code_version=code_version(lmcore.data.tokenizer))
def tokenizer(config: TokenizerAssetConfig, splits: dict, store: ArtifactStore) -> dg.Output:
    """HF tokenizer.json; the same train split and config give a byte-identical file."""
    cfg = config.to_lmcore()
    root, split_manifest = load_manifest(store, splits)
    sample = _val_sample(store, splits)

    def build(out):
        tok = train_tokenizer(cfg, iter_texts(split_paths(root, "train", split_manifest)), out / TOKENIZER_FILE)
        stats = tokenizer_stats(tok, out / TOKENIZER_FILE, sample)
        write_json(out / "manifest.json", {"file": TOKENIZER_FILE, "config": cfg.__dict__, **stats})

    ref = run_stage(store, "tokenizer", build)
    _, manifest = load_manifest(store, ref)
    return output(
        ref,
        {
            "vocab_size": manifest["vocab_size"],
            "bytes_per_token_val": round(manifest["bytes_per_token"], 4),
            "sample": dg.MetadataValue.md(
                f"**text**\n\n```\n{manifest['sample_text']}\n```\n\n"
                f"**tokens**\n\n`{' | '.join(manifest['sample_tokens'])}`"
            ),
            "sha256": manifest["sha256"],
        },
        config=config,
        inputs={"splits": splits},
    )


@dg.asset_check(
    asset=tokenizer,
    additional_ins={"splits": dg.AssetIn("splits")},
    blocking=True,
    description="decode(encode(text)) == text on validation documents.",
)
def tokenizer_roundtrip(tokenizer: dict, splits: dict, store: ArtifactStore) -> dg.AssetCheckResult:
    path, _ = load_manifest(store, tokenizer)
    sample = _val_sample(store, splits)
    failures = roundtrip_failures(load_tokenizer(path / TOKENIZER_FILE), sample)
    return dg.AssetCheckResult(
        passed=bool(sample) and not failures, metadata={"checked": len(sample), "failures": len(failures)}
    )
