"""``raw_corpus``: configured sources → Parquet document shards with a stable ``doc_id``."""

import dagster as dg

from assets.artifacts import Documents
from assets.config import config_from
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.corpus import CorpusConfig, build_raw_corpus

RawCorpusConfig = config_from(CorpusConfig, name="RawCorpusConfig")


@dg.asset(group_name="data", kinds={"parquet"}, deps=["corpus_source"], code_version=code_version_of(__name__))
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, store: ArtifactStore) -> Documents:
    """Every configured source read into zstd Parquet shards (doc_id, source, text)."""
    cfg, progress = config.to_lmcore(), reporter(context, "raw_corpus")
    docs = Documents.publish(
        store, "raw_corpus", lambda out: build_raw_corpus(cfg, out, store.cache_dir(), progress=progress)
    )
    manifest = docs.manifest
    sources = [
        dg.TableRecord({"spec": s["spec"], "documents": s["documents"], "version": s["version"]})
        for s in manifest["sources"]
    ]
    columns = [dg.TableColumn("spec"), dg.TableColumn("documents", "int"), dg.TableColumn("version")]
    metadata = {
        "documents": manifest["documents"],
        "bytes": manifest["bytes"],
        "skipped": dg.MetadataValue.json(manifest.get("skipped", {})),
        "sources": dg.MetadataValue.table(sources, schema=dg.TableSchema(columns=columns)),
    }
    if "python_version" in manifest:
        metadata["python_version"] = manifest["python_version"]
    return result(context, docs, metadata, config=config)


@dg.asset_check(asset=raw_corpus, blocking=True, description="The corpus has at least one document.")
def raw_corpus_not_empty(raw_corpus: Documents) -> dg.AssetCheckResult:
    n = raw_corpus.manifest["documents"]
    return dg.AssetCheckResult(passed=n > 0, metadata={"documents": n})
