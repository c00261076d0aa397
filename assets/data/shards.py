"""``token_shards``: every split tokenized into memory-mappable Arrow IPC shards."""

import dagster as dg

import lmcore.data.shards
from assets.data.tokenizer import TOKENIZER_FILE
from assets.plots import bar_chart
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.shards import open_split, tokenize_splits, verify_shards
from lmcore.data.splits import SPLITS, split_paths
from lmcore.data.tokenizer import EOT, load_tokenizer


class TokenShardsConfig(dg.Config):
    shard_tokens: int = 1 << 24
    """Token ids per shard; also the writer's whole buffer, so it bounds memory."""


@dg.asset(group_name="data", kinds={"arrow"}, code_version=code_version(lmcore.data.shards))
def token_shards(
    context: dg.AssetExecutionContext, config: TokenShardsConfig, splits: dict, tokenizer: dict, store: ArtifactStore
) -> dg.Output:
    """uint16/uint32 token ids per split, <|endoftext|> after each document, manifest last."""
    split_root, split_manifest = load_manifest(store, splits)
    tok_path, tok_manifest = load_manifest(store, tokenizer)
    tok = load_tokenizer(tok_path / TOKENIZER_FILE)
    files = {s: split_paths(split_root, s, split_manifest) for s in SPLITS}
    progress = reporter(context, "token_shards")
    ref = run_stage(
        store,
        "token_shards",
        lambda out: tokenize_splits(
            tok,
            files,
            out,
            eot_id=tok.token_to_id(EOT),
            shard_tokens=config.shard_tokens,
            progress=progress,
            tokenizer_sha256=tok_manifest["sha256"],
            split_bytes={s: split_manifest["splits"][s]["bytes"] for s in SPLITS},
        ),
    )
    _, manifest = load_manifest(store, ref)
    tokens = {s: manifest["splits"][s]["tokens"] for s in SPLITS}
    metadata = {f"{s}_tokens": n for s, n in tokens.items()}
    metadata |= {
        "dtype": manifest["dtype"],
        "shards": sum(len(manifest["splits"][s]["shards"]) for s in SPLITS),
        "tokens_per_split": bar_chart("Tokens per split", tokens),
    }
    return output(ref, metadata, config=config, inputs={"splits": splits, "tokenizer": tokenizer})


@dg.asset_check(asset=token_shards, blocking=True, description="Shards match the manifest's sha256 digests.")
def token_shards_digests(token_shards: dict, store: ArtifactStore) -> dg.AssetCheckResult:
    root, _ = load_manifest(store, token_shards)
    problems = verify_shards(root)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})


@dg.asset_check(
    asset=token_shards, blocking=True, description="Every split has tokens and no id is >= the vocabulary size."
)
def token_shards_ids_in_range(token_shards: dict, store: ArtifactStore) -> dg.AssetCheckResult:
    root, manifest = load_manifest(store, token_shards)
    vocab, max_id, empty = manifest["vocab_size"], -1, []
    for split in SPLITS:
        arrays = open_split(root, split).arrays
        if not any(a.size for a in arrays):
            empty.append(split)
        max_id = max([max_id] + [int(a.max()) for a in arrays if a.size])
    return dg.AssetCheckResult(
        passed=max_id < vocab and not empty,
        metadata={"max_id": max_id, "vocab_size": vocab, "empty_splits": ", ".join(empty) or "none"},
    )
