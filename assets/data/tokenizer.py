"""``tokenizer``: byte-level BPE trained on the train split only."""

import itertools

import dagster as dg

from assets.artifacts import TOKENIZER_FILE, Splits, TokenizerFile
from assets.config import config_from
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.tokenizer import TokenizerConfig, roundtrip_failures, tokenizer_stats, train_tokenizer
from lmcore.io import write_json

TokenizerAssetConfig = config_from(TokenizerConfig, name="TokenizerAssetConfig")
_SAMPLE_DOCS = 200


def _val_sample(splits: Splits) -> list[str]:
    return list(itertools.islice(splits.texts("val"), _SAMPLE_DOCS))


@dg.asset(group_name="data", kinds={"huggingface"}, code_version=code_version_of(__name__))
def tokenizer(
    context: dg.AssetExecutionContext, config: TokenizerAssetConfig, splits: Splits, store: ArtifactStore
) -> TokenizerFile:
    """HF tokenizer.json; the same train split and config give a byte-identical file."""
    cfg, sample = config.to_lmcore(), _val_sample(splits)

    def build(out):
        tok = train_tokenizer(cfg, splits.texts("train"), out / TOKENIZER_FILE)
        stats = tokenizer_stats(tok, out / TOKENIZER_FILE, sample)
        write_json(out / "manifest.json", {"file": TOKENIZER_FILE, "config": cfg.__dict__, **stats})

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
    }
    if manifest["vocab_size"] < cfg.vocab_size:  # BPE ran out of pairs seen min_frequency times
        metadata["warning"] = (
            f"the vocabulary reached {manifest['vocab_size']} of vocab_size={cfg.vocab_size} tokens: the train split "
            f"has too few distinct pairs occurring min_frequency={cfg.min_frequency} times; add text, or set "
            f"tokenizer.vocab_size to about {manifest['vocab_size']}"
        )
        context.log.warning(metadata["warning"])
    return result(context, tok, metadata, config=config, inputs={"splits": splits})


@dg.asset_check(
    asset=tokenizer,
    additional_ins={"splits": dg.AssetIn("splits")},
    blocking=True,
    description="decode(encode(text)) == text on validation documents.",
)
def tokenizer_roundtrip(tokenizer: TokenizerFile, splits: Splits) -> dg.AssetCheckResult:
    sample = _val_sample(splits)
    failures = roundtrip_failures(tokenizer.tokenizer, sample)
    return dg.AssetCheckResult(
        passed=bool(sample) and not failures, metadata={"checked": len(sample), "failures": len(failures)}
    )
