"""``raw_corpus``: configured sources → Parquet document shards with a stable ``doc_id``."""

import dagster as dg

import lmcore.data.corpus
import lmcore.data.sources
import lmcore.data.sources.builtin
import lmcore.data.sources.fetch
import lmcore.data.sources.formats
import lmcore.data.sources.policy
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.corpus import CorpusConfig, build_raw_corpus


class RawCorpusConfig(dg.Config):
    sources: list[str] = ["builtin:python-docs"]
    """Source specs: builtin:python-docs, paths/globs/directories, fsspec URLs, or hf:NAME."""
    text_field: str = "text"
    """Field holding the text in .jsonl/.json/.csv/.parquet files and HF datasets."""
    hf_split: str = "train"
    """Split to read from hf:NAME datasets."""
    invalid_utf8: str = "error"
    """What to do with text that is not UTF-8: error, replace or skip (counted in metadata)."""
    on_bad_record: str = "error"
    """A broken JSON line or a record without the text field: error, or skip (counted in metadata)."""

    def to_lmcore(self) -> CorpusConfig:
        return CorpusConfig(
            sources=tuple(self.sources),
            text_field=self.text_field,
            hf_split=self.hf_split,
            invalid_utf8=self.invalid_utf8,
            on_bad_record=self.on_bad_record,
        )


@dg.asset(
    group_name="data",
    kinds={"parquet"},
    deps=["corpus_source"],
    code_version=code_version(
        lmcore.data.corpus,
        lmcore.data.sources,
        lmcore.data.sources.builtin,
        lmcore.data.sources.fetch,
        lmcore.data.sources.formats,
        lmcore.data.sources.policy,
    ),
)
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, store: ArtifactStore) -> dg.Output:
    """Every configured source read into zstd Parquet shards (doc_id, source, text)."""
    cfg = config.to_lmcore()
    progress = reporter(context, "raw_corpus")
    ref = run_stage(store, "raw_corpus", lambda out: build_raw_corpus(cfg, out, store.cache_dir(), progress=progress))
    _, manifest = load_manifest(store, ref)
    sources = [
        dg.TableRecord({"spec": s["spec"], "documents": s["documents"], "version": s["version"]})
        for s in manifest["sources"]
    ]
    metadata = {
        "documents": manifest["documents"],
        "bytes": manifest["bytes"],
        "skipped": dg.MetadataValue.json(manifest.get("skipped", {})),
        "sources": dg.MetadataValue.table(
            sources,
            schema=dg.TableSchema(
                columns=[dg.TableColumn("spec"), dg.TableColumn("documents", "int"), dg.TableColumn("version")]
            ),
        ),
    }
    if "python_version" in manifest:
        metadata["python_version"] = manifest["python_version"]
    return output(ref, metadata, config=config)


@dg.asset_check(asset=raw_corpus, blocking=True, description="The corpus has at least one document.")
def raw_corpus_not_empty(raw_corpus: dict, store: ArtifactStore) -> dg.AssetCheckResult:
    _, manifest = load_manifest(store, raw_corpus)
    return dg.AssetCheckResult(passed=manifest["documents"] > 0, metadata={"documents": manifest["documents"]})
