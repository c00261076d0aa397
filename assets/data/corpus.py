"""``raw_corpus``: each partition's source units → Parquet document shards with a stable ``doc_id``."""

import functools

import dagster as dg

from assets.artifacts import Documents
from assets.config import config_from
from assets.data.partitions import BACKFILL, DATA_PARTITIONS, PartitionWork, build_partitions, partition_result
from assets.resources import ArtifactStore
from assets.versions import code_version_of
from lmcore.data.corpus import CorpusConfig, build_raw_corpus, corpus_version, partition_units

RawCorpusConfig = config_from(CorpusConfig, name="RawCorpusConfig")
CODE_VERSION = code_version_of(__name__)


def _per_partition(docs: Documents) -> dict:
    manifest = docs.manifest
    units = [dg.TableRecord({"spec": u["spec"], "unit": u["key"], "version": u["version"]}) for u in manifest["units"]]
    columns = [dg.TableColumn("spec"), dg.TableColumn("unit"), dg.TableColumn("version")]
    return {
        "documents": manifest["documents"],
        "bytes": manifest["bytes"],
        "skipped": dg.MetadataValue.json(manifest.get("skipped", {})),
        "units": dg.MetadataValue.table(units, schema=dg.TableSchema(columns=columns)),
    }


@dg.asset(
    group_name="data",
    kinds={"parquet"},
    deps=["corpus_source"],
    code_version=CODE_VERSION,
    partitions_def=DATA_PARTITIONS,
    backfill_policy=BACKFILL,
)
def raw_corpus(
    context: dg.AssetExecutionContext, config: RawCorpusConfig, store: ArtifactStore
) -> dg.MaterializeResult:
    """The units of each hash bucket (source files, parts of large local files) read into zstd Parquet shards
    (doc_id, source, spec, text); an unchanged bucket (same units, same versions, same config) is not read again."""
    cfg, cache, run = config.to_lmcore(), store.cache_dir(), context.run_id  # each URL is fetched once in a run
    work = {
        key: PartitionWork(
            build=functools.partial(build_raw_corpus, cfg, cache_dir=cache, partition=key, scope=run),
            inputs={"config": config.model_dump(), "units": partition_units(cfg, key, cache, run)},
        )
        for key in context.partition_keys
    }
    handles, built = build_partitions(context, store, "raw_corpus", Documents, work, CODE_VERSION)
    total = sum(h.manifest["documents"] for h in handles.values())
    version = corpus_version(cfg, cache, run)[0]
    return partition_result(
        context, handles, built, _per_partition, {"documents_in_run": total, "corpus_version": version}, config
    )
