"""``splits``: document-level train/val/test assignment by a seeded hash of ``doc_id``."""

import dagster as dg
import pyarrow.parquet as pq

from assets.artifacts import Documents, Splits
from assets.config import config_from
from assets.plots import bar_chart
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.splits import SPLITS, SplitConfig, split_corpus

SplitsConfig = config_from(SplitConfig, name="SplitsConfig")


@dg.asset(group_name="data", kinds={"parquet"}, code_version=code_version_of(__name__))
def splits(
    context: dg.AssetExecutionContext, config: SplitsConfig, clean_corpus: Documents, store: ArtifactStore
) -> Splits:
    """The cleaned documents divided into train, val and test Parquet shards."""
    cfg, progress = config.to_lmcore(), reporter(context, "splits")
    out = Splits.publish(store, "splits", lambda d: split_corpus(cfg, clean_corpus.shard_paths, d, progress=progress))
    by_split = out.manifest["splits"]
    docs = {s: by_split[s]["documents"] for s in SPLITS}
    metadata = {f"{s}_documents": n for s, n in docs.items()}
    metadata |= {f"{s}_bytes": by_split[s]["bytes"] for s in SPLITS}
    metadata["documents_per_split"] = bar_chart("Documents per split", docs)
    return result(context, out, metadata, config=config, inputs={"clean_corpus": clean_corpus})


@dg.asset_check(asset=splits, blocking=True, description="Every split has documents and no doc_id is in two splits.")
def splits_disjoint_and_non_empty(splits: Splits) -> dg.AssetCheckResult:
    ids: dict[str, set[str]] = {}
    for split in SPLITS:
        ids[split] = set()
        for path in splits.paths(split):
            ids[split].update(pq.read_table(path, columns=["doc_id"]).column(0).to_pylist())
    overlap = sum(len(ids[a] & ids[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :])
    empty = [s for s in SPLITS if not ids[s]]
    return dg.AssetCheckResult(
        passed=overlap == 0 and not empty,
        description=_why_failed(splits.manifest["config"], sum(map(len, ids.values())), empty, overlap),
        metadata={"overlapping_doc_ids": overlap, "empty_splits": ", ".join(empty) or "none"},
    )


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
