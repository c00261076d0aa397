"""``splits``: duplicates removed across all partitions, then a train/val/test split by a seeded hash of each
source document's id."""

import dagster as dg

from assets.artifacts import Documents, Splits
from assets.config import config_from
from assets.data.clean import why_empty
from assets.plots import bar_chart
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.corpus import CorpusConfig, check_sources
from lmcore.data.splits import SPLITS, SplitConfig, split_corpus

SplitsConfig = config_from(SplitConfig, name="SplitsConfig")


@dg.asset(group_name="data", kinds={"parquet"}, code_version=code_version_of(__name__))
def splits(
    context: dg.AssetExecutionContext,
    config: SplitsConfig,
    clean_corpus: dict[str, Documents],
    store: ArtifactStore,
) -> Splits:
    """Every partition's cleaned documents, deduplicated together (the copy with the smallest doc_id stays), each
    with its split; reads the signatures only, and links the cleaned shards."""
    cfg, progress = config.to_lmcore(), reporter(context, "splits")
    upstream = [clean.manifest["upstream"] for clean in clean_corpus.values()]
    sources = upstream[0]["corpus_sources"] if upstream else []
    check_sources(sources, upstream)
    weights = CorpusConfig(sources=tuple(sources)).weights if sources else None
    out = Splits.publish(
        store,
        "splits",
        lambda d: split_corpus(
            cfg, {k: c.path for k, c in clean_corpus.items()}, d, progress=progress, weights=weights
        ),
    )
    by_split = out.manifest["splits"]
    docs = {s: by_split[s]["documents"] for s in SPLITS}
    dropped = out.manifest["dropped"]
    metadata = {f"{s}_documents": n for s, n in docs.items()}
    metadata |= {f"{s}_bytes": by_split[s]["bytes"] for s in SPLITS}
    metadata |= {
        "documents_per_split": bar_chart("Documents per split", docs),
        "duplicates": dg.MetadataValue.json(dropped),
        "duplicates_total": sum(dropped.values()),
        "partitions": len(clean_corpus),
    }
    inputs = {f"clean_corpus[{k}]": d for k, d in clean_corpus.items()}
    return result(context, out, metadata, config=config, inputs=inputs)


@dg.asset_check(
    asset=splits,
    additional_ins={"clean_corpus": dg.AssetIn("clean_corpus")},
    blocking=True,
    description="Cleaning kept documents, every split has some, and no doc_id is in two splits.",
)
def splits_disjoint_and_non_empty(splits: Splits, clean_corpus: dict[str, Documents]) -> dg.AssetCheckResult:
    index = splits.index()
    ids: dict[str, set[str]] = {s: set() for s in SPLITS}
    for doc, split in zip(index.column("doc_id").to_pylist(), index.column("split").to_pylist(), strict=True):
        if split is not None:
            ids[split].add(doc)
    overlap = sum(len(ids[a] & ids[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :])
    empty = [s for s in SPLITS if not ids[s]]
    kept = sum(map(len, ids.values()))
    description = _why_failed(splits.manifest["config"], kept, empty, overlap)
    if kept == 0:
        description = _nothing_kept(clean_corpus, splits.manifest["dropped"])
    return dg.AssetCheckResult(
        passed=overlap == 0 and not empty,
        description=description,
        metadata={"overlapping_doc_ids": overlap, "empty_splits": ", ".join(empty) or "none", "documents": kept},
    )


def _nothing_kept(clean_corpus: dict[str, Documents], duplicates: dict[str, int]) -> str:
    manifests = [d.manifest for d in clean_corpus.values()]
    dropped: dict[str, int] = dict(duplicates)
    for m in manifests:
        for reason, n in m["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    config = manifests[0]["config"] if manifests else {}
    return why_empty(sum(m["input_documents"] for m in manifests), dropped, config)


def _why_failed(config: dict, total: int, empty: list[str], overlap: int) -> str | None:
    problems = []
    if overlap:
        problems.append(f"{overlap} doc_ids are in two splits (a bug in split assignment); re-materialize splits")
    if empty:
        fractions = f"val_fraction={config.get('val_fraction')}, test_fraction={config.get('test_fraction')}"
        names = " and ".join(empty) + (" splits are" if len(empty) > 1 else " split is")
        held_out = [s for s in empty if s != "train"]
        if "train" in empty:
            fix = "add documents" + ("" if held_out else ", or lower val_fraction and test_fraction")
        else:
            fix = "add documents, or raise " + " and ".join(f"{s}_fraction" for s in held_out)
        problems.append(f"the {names} empty: {total} document{'s' * (total != 1)} in all ({fractions}); {fix}")
    return "; ".join(problems) or None
