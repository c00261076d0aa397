"""``tokenized`` (per partition) and ``token_shards`` (all of them): memory-mappable Arrow IPC token shards."""

import functools

import dagster as dg

from assets.artifacts import Documents, Splits, TokenizerFile, TokenShards
from assets.config import config_from
from assets.data.partitions import BACKFILL, DATA_PARTITIONS, PartitionWork, build_partitions, partition_result
from assets.plots import bar_chart
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.fast_encoder import EncoderChoice
from lmcore.data.shards import EncodeConfig, assemble_shards, tokenize_partition, verify_shards
from lmcore.data.splits import SPLITS
from lmcore.data.tokenizer import MAX_WORD_CHARS

CODE_VERSION = code_version_of(__name__)
TokenShardsConfig = config_from(EncodeConfig, name="TokenShardsConfig", exclude=("max_word_chars",))
"""The tokenized stage's settings; ``max_word_chars`` is not one of them: it is the tokenizer's own."""


def _encode_settings(config: TokenShardsConfig, tokenizer: TokenizerFile) -> EncodeConfig:
    """The config with the tokenizer's training bound on words (a tokenizer recorded before that setting existed:
    the default bound), so encoding cuts long runs where training cut them."""
    return config.to_lmcore(max_word_chars=tokenizer.manifest["config"].get("max_word_chars", MAX_WORD_CHARS))


def _per_partition(part: TokenShards) -> dict:
    by_split = part.manifest["splits"]
    choice = EncoderChoice.load(part.path)
    return {f"{s}_tokens": by_split[s]["tokens"] for s in SPLITS} | {
        "documents": sum(by_split[s]["documents"] for s in SPLITS),
        "encoder": choice.used if choice else "hf",
    }


def _refusals(handles: dict[str, TokenShards], built: set[str]) -> dict[str, str]:
    """Why tiktoken was refused, per partition built in this run where it was asked for and HF was used."""
    choices = {k: EncoderChoice.load(handles[k].path) for k in sorted(built)}
    return {k: c.reason for k, c in choices.items() if c is not None and c.reason}


@dg.asset(
    group_name="data",
    kinds={"arrow"},
    code_version=CODE_VERSION,
    partitions_def=DATA_PARTITIONS,
    backfill_policy=BACKFILL,
)
def tokenized(
    context: dg.AssetExecutionContext,
    config: TokenShardsConfig,
    clean_corpus: dict[str, Documents],
    splits: Splits,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
) -> dg.MaterializeResult:
    """Each partition's kept documents tokenized per split and source; a partition whose documents, splits,
    tokenizer and shard-shaping settings are unchanged keeps its shards. With ``encoder: tiktoken``, a partition
    whose check fails is tokenized by HF (the same shards) and the reason is a warning."""
    settings = _encode_settings(config, tokenizer)
    index = splits.index()  # read once; each partition takes its kept rows
    splits_of: dict[str, dict[str, str]] = {key: {} for key in clean_corpus}
    columns = (index.column(c).to_pylist() for c in ("partition", "doc_id", "split"))
    for partition, doc, split in zip(*columns, strict=True):
        if split is not None and partition in splits_of:
            splits_of[partition][doc] = split
    work = {}
    for key, docs in clean_corpus.items():
        inputs = {
            "encode": settings.memo(),
            "clean_corpus": docs.data_version,
            "tokenizer": tokenizer.sha256,
            "index": splits.manifest["partitions"][key]["index_sha256"],
        }
        build = functools.partial(
            tokenize_partition,
            tokenizer.file,
            docs.shard_paths,
            splits_of[key],
            settings=settings,
            tokenizer_sha256=tokenizer.sha256,
        )
        work[key] = PartitionWork(build=build, inputs=inputs)
    handles, built = build_partitions(context, store, "tokenized", TokenShards, work, CODE_VERSION)
    retokenized = sum(_per_partition(h)["documents"] for k, h in handles.items() if k in built)
    figures = {"documents_tokenized_in_run": retokenized}
    if refused := _refusals(handles, built):
        figures["encoder_refused"] = dg.MetadataValue.json(refused)
        context.log.warning(
            f"tokenized: tiktoken refused in {len(refused)} partition(s), HF used instead (same shards): "
            + "; ".join(f"{k}: {why}" for k, why in list(refused.items())[:3])
        )
    return partition_result(context, handles, built, _per_partition, figures, config)


@dg.asset(group_name="data", kinds={"arrow"}, code_version=CODE_VERSION)
def token_shards(
    context: dg.AssetExecutionContext,
    tokenized: dict[str, TokenShards],
    splits: Splits,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
) -> TokenShards:
    """Every partition's shards gathered (linked, not copied) into one shard root with one manifest:
    uint16/uint32 token ids per split, <|endoftext|> after each document, tokens per source."""
    weights = splits.manifest.get("weights")
    shards = TokenShards.publish(
        store,
        "token_shards",
        lambda out: assemble_shards(
            {k: t.path for k, t in tokenized.items()},
            out,
            tokenizer_sha256=tokenizer.sha256,
            weights=weights,
            partitions={k: t.data_version for k, t in tokenized.items()},
        ),
    )
    by_split = shards.manifest["splits"]
    tokens = {s: by_split[s]["tokens"] for s in SPLITS}
    metadata = {f"{s}_tokens": n for s, n in tokens.items()}
    metadata |= {
        "dtype": shards.manifest["dtype"],
        "shards": sum(len(by_split[s]["shards"]) for s in SPLITS),
        "tokens_per_split": bar_chart("Tokens per split", tokens),
        "train_tokens_per_source": dg.MetadataValue.json(
            {spec: n["train"] for spec, n in shards.manifest["sources"].items()}
        ),
    }
    if weights:
        metadata["mixing_weights"] = dg.MetadataValue.json(weights)
    inputs = {"splits": splits, "tokenizer": tokenizer} | {f"tokenized[{k}]": t for k, t in tokenized.items()}
    return result(context, shards, metadata, inputs=inputs)


@dg.asset_check(asset=token_shards, blocking=True, description="Shards match the manifest's sha256 digests.")
def token_shards_digests(token_shards: TokenShards) -> dg.AssetCheckResult:
    problems = verify_shards(token_shards.path)
    why = f"{len(problems)} shard file(s) differ from the manifest: {'; '.join(problems[:3])}; re-materialize them"
    return dg.AssetCheckResult(
        passed=not problems,
        description=why if problems else None,
        metadata={"problems": dg.MetadataValue.json(problems)},
    )


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
    problems = [f"no tokens in split(s) {', '.join(empty)}; give them documents (splits.val_fraction, ...)"] * bool(
        empty
    )
    if max_id >= vocab:
        problems.append(f"id {max_id} >= vocab_size {vocab}: shards and tokenizer disagree; re-materialize tokenized")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={"max_id": max_id, "vocab_size": vocab, "empty_splits": ", ".join(empty) or "none"},
    )
