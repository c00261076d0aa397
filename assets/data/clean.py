"""``clean_corpus``: normalization, Gutenberg stripping, re-flow, splitting, filters, dedup."""

import dagster as dg

import lmcore.data.clean
import lmcore.data.dedup
from assets.plots import bar_chart
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.clean import CleanConfig
from lmcore.data.clean import clean_corpus as clean_documents


class CleanCorpusConfig(dg.Config):
    max_doc_chars: int = 20_000
    """Split longer documents at paragraph boundaries into pieces of about this size (0: never)."""
    min_doc_chars: int = 200
    """Drop documents shorter than this after cleaning."""
    max_repetition: float = 0.3
    """Drop documents whose fraction of duplicated lines exceeds this."""
    dedup_near: bool = False
    """Also remove near-duplicates (MinHash LSH)."""
    near_threshold: float = 0.8
    """Estimated Jaccard similarity above which two documents are near-duplicates."""
    reflow: bool = True
    """Join hard-wrapped lines of prose paragraphs."""

    def to_lmcore(self) -> CleanConfig:
        return CleanConfig(
            max_doc_chars=self.max_doc_chars,
            min_doc_chars=self.min_doc_chars,
            max_repetition=self.max_repetition,
            dedup_near=self.dedup_near,
            near_threshold=self.near_threshold,
            reflow=self.reflow,
        )


@dg.asset(
    group_name="data", kinds={"polars", "parquet"}, code_version=code_version(lmcore.data.clean, lmcore.data.dedup)
)
def clean_corpus(
    context: dg.AssetExecutionContext, config: CleanCorpusConfig, raw_corpus: dict, store: ArtifactStore
) -> dg.Output:
    """Cleaned documents; dropped ones kept beside them with their reason."""
    cfg = config.to_lmcore()
    raw_path, raw_manifest = load_manifest(store, raw_corpus)
    in_paths = [raw_path / s["path"] for s in raw_manifest["shards"]]
    progress = reporter(context, "clean_corpus")
    ref = run_stage(store, "clean_corpus", lambda out: clean_documents(cfg, in_paths, out, progress=progress))
    _, manifest = load_manifest(store, ref)
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
    return output(ref, metadata, config=config, inputs={"raw_corpus": raw_corpus})


@dg.asset_check(asset=clean_corpus, blocking=True, description="Cleaning kept at least one document.")
def clean_corpus_not_empty(clean_corpus: dict, store: ArtifactStore) -> dg.AssetCheckResult:
    _, manifest = load_manifest(store, clean_corpus)
    return dg.AssetCheckResult(passed=manifest["documents"] > 0, metadata={"documents": manifest["documents"]})
