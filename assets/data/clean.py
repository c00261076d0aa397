"""``clean_corpus``: normalization, Gutenberg stripping, re-flow, splitting, filters, dedup."""

import dagster as dg

from assets.artifacts import Documents
from assets.config import config_from
from assets.plots import bar_chart
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.clean import CleanConfig
from lmcore.data.clean import clean_corpus as clean_documents

CleanCorpusConfig = config_from(CleanConfig, name="CleanCorpusConfig")


@dg.asset(group_name="data", kinds={"polars", "parquet"}, code_version=code_version_of(__name__))
def clean_corpus(
    context: dg.AssetExecutionContext, config: CleanCorpusConfig, raw_corpus: Documents, store: ArtifactStore
) -> Documents:
    """Cleaned documents; dropped ones kept beside them with their reason."""
    cfg, progress = config.to_lmcore(), reporter(context, "clean_corpus")
    docs = Documents.publish(
        store, "clean_corpus", lambda out: clean_documents(cfg, raw_corpus.shard_paths, out, progress=progress)
    )
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
    return result(context, docs, metadata, config=config, inputs={"raw_corpus": raw_corpus})


_FIXES = {
    "too_short": "lower min_doc_chars (now {min_doc_chars}) or add longer documents",
    "empty": "the text is empty after cleaning; check the sources (or strip_gutenberg, drop_placeholder_lines)",
    "repetition": "raise max_repetition (now {max_repetition}) or add less repetitive documents",
    "exact_duplicate": "add distinct documents (or set dedup_exact: false)",
    "near_duplicate": "add distinct documents (or raise near_threshold, now {near_threshold})",
}


def why_empty(manifest: dict) -> str:
    """Why cleaning kept nothing: each drop reason with its count, and what to change for the commonest."""
    dropped, n = manifest["dropped"], manifest["input_documents"]
    if n == 0 or not dropped:
        return "raw_corpus has no documents; add text to the sources"
    reasons = sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))
    fix = _FIXES.get(reasons[0][0], "add documents").format(**manifest.get("config", {}))
    counts = ", ".join(f"{reason} {count}" for reason, count in reasons)
    return f"all {n} document{'s' * (n != 1)} were dropped: {counts}; {fix}"


@dg.asset_check(asset=clean_corpus, blocking=True, description="Cleaning kept at least one document.")
def clean_corpus_not_empty(clean_corpus: Documents) -> dg.AssetCheckResult:
    manifest = clean_corpus.manifest
    n = manifest["documents"]
    return dg.AssetCheckResult(
        passed=n > 0,
        description=None if n else why_empty(manifest),
        metadata={"documents": n, "dropped": dg.MetadataValue.json(manifest["dropped"])},
    )
