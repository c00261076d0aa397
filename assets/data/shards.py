"""``token_shards``: every split tokenized into memory-mappable Arrow IPC shards."""

import dagster as dg

from assets.artifacts import Splits, TokenizerFile, TokenShards
from assets.plots import bar_chart
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.shards import tokenize_splits, verify_shards
from lmcore.data.splits import SPLITS


class TokenShardsConfig(dg.Config):
    shard_tokens: int = 1 << 24
    """Token ids per shard; also the writer's whole buffer, so it bounds memory."""


@dg.asset(group_name="data", kinds={"arrow"}, code_version=code_version_of(__name__))
def token_shards(
    context: dg.AssetExecutionContext,
    config: TokenShardsConfig,
    splits: Splits,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
) -> TokenShards:
    """uint16/uint32 token ids per split, <|endoftext|> after each document, manifest last."""
    tok, progress = tokenizer.tokenizer, reporter(context, "token_shards")
    shards = TokenShards.publish(
        store,
        "token_shards",
        lambda out: tokenize_splits(
            tok,
            {s: splits.paths(s) for s in SPLITS},
            out,
            shard_tokens=config.shard_tokens,
            progress=progress,
            tokenizer_sha256=tokenizer.sha256,
            split_bytes={s: splits.manifest["splits"][s]["bytes"] for s in SPLITS},
        ),  # fmt: skip
    )
    by_split = shards.manifest["splits"]
    tokens = {s: by_split[s]["tokens"] for s in SPLITS}
    metadata = {f"{s}_tokens": n for s, n in tokens.items()}
    metadata |= {
        "dtype": shards.manifest["dtype"],
        "shards": sum(len(by_split[s]["shards"]) for s in SPLITS),
        "tokens_per_split": bar_chart("Tokens per split", tokens),
    }
    return result(context, shards, metadata, config=config, inputs={"splits": splits, "tokenizer": tokenizer})


@dg.asset_check(asset=token_shards, blocking=True, description="Shards match the manifest's sha256 digests.")
def token_shards_digests(token_shards: TokenShards) -> dg.AssetCheckResult:
    problems = verify_shards(token_shards.path)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})


@dg.asset_check(
    asset=token_shards, blocking=True, description="Every split has tokens and no id is >= the vocabulary size."
)
def token_shards_ids_in_range(token_shards: TokenShards) -> dg.AssetCheckResult:
    vocab, max_id, empty = token_shards.vocab_size, -1, []
    for split in SPLITS:
        arrays = token_shards.split(split).arrays
        if not any(a.size for a in arrays):
            empty.append(split)
        max_id = max([max_id] + [int(a.max()) for a in arrays if a.size])
    return dg.AssetCheckResult(
        passed=max_id < vocab and not empty,
        metadata={"max_id": max_id, "vocab_size": vocab, "empty_splits": ", ".join(empty) or "none"},
    )
