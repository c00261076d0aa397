"""``clean_corpus``: per partition, normalization, Gutenberg stripping, re-flow, splitting, filters, signatures."""

import functools

import dagster as dg

from assets.artifacts import Documents
from assets.config import config_from
from assets.data.partitions import BACKFILL, DATA_PARTITIONS, PartitionWork, build_partitions, partition_result
from assets.plots import bar_chart
from assets.resources import ArtifactStore
from assets.versions import code_version_of
from lmcore.data.clean import CleanConfig
from lmcore.data.clean import clean_corpus as clean_documents

CleanCorpusConfig = config_from(CleanConfig, name="CleanCorpusConfig")
CODE_VERSION = code_version_of(__name__)


def _per_partition(docs: Documents) -> dict:
    manifest = docs.manifest
    dropped = manifest["dropped"]
    metadata = {
        "documents": manifest["documents"],
        "input_documents": manifest["input_documents"],
        "bytes": manifest["bytes"],
        "dropped": dg.MetadataValue.json(dropped),
        "dropped_total": sum(dropped.values()),
    }
    if dropped:
        metadata["dropped_by_reason"] = bar_chart("Dropped documents by reason", dropped)
    return metadata


@dg.asset(
    group_name="data",
    kinds={"polars", "parquet"},
    code_version=CODE_VERSION,
    partitions_def=DATA_PARTITIONS,
    backfill_policy=BACKFILL,
)
def clean_corpus(
    context: dg.AssetExecutionContext, config: CleanCorpusConfig, raw_corpus: dict[str, Documents], store: ArtifactStore
) -> dg.MaterializeResult:
    """Cleaned documents of each partition, dropped ones beside them with their reason, and the signatures that
    the splits stage removes duplicates with across all partitions."""
    cfg = config.to_lmcore()
    work = {
        key: PartitionWork(
            build=functools.partial(clean_documents, cfg, raw.shard_paths, upstream=_upstream(raw)),
            inputs={"config": config.model_dump(), "raw_corpus": raw.data_version},
        )
        for key, raw in raw_corpus.items()
    }
    handles, built = build_partitions(context, store, "clean_corpus", Documents, work, CODE_VERSION)
    cleaned = sum(h.manifest["input_documents"] for k, h in handles.items() if k in built)
    return partition_result(context, handles, built, _per_partition, {"documents_cleaned_in_run": cleaned}, config)


def _upstream(raw: Documents) -> dict:
    """What the splits stage needs of the raw partition: the corpus's source entries and this partition's
    per-source counts (to name a source that gave no documents anywhere)."""
    return {"corpus_sources": raw.manifest["config"]["sources"], "sources": raw.manifest["sources"]}


_FIXES = {
    "too_short": "lower min_doc_chars (now {min_doc_chars}) or add longer documents",
    "empty": "the text is empty after cleaning; check the sources (or strip_gutenberg, drop_placeholder_lines)",
    "repetition": "raise max_repetition (now {max_repetition}) or add less repetitive documents",
    "exact_duplicate": "add distinct documents (or set dedup_exact: false)",
    "near_duplicate": "add distinct documents (or raise near_threshold, now {near_threshold})",
}


def why_empty(input_documents: int, dropped: dict[str, int], config: dict) -> str:
    """Why cleaning kept nothing: each drop reason with its count, and what to change for the commonest."""
    n = input_documents
    if n == 0 or not dropped:
        return "raw_corpus has no documents; add text to the sources"
    reasons = sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))
    fix = _FIXES.get(reasons[0][0], "add documents").format(**config)
    counts = ", ".join(f"{reason} {count}" for reason, count in reasons)
    return f"all {n} document{'s' * (n != 1)} were dropped: {counts}; {fix}"
