"""``splits``: document-level train/val/test assignment by a seeded hash of ``doc_id``."""

import dagster as dg
import pyarrow.parquet as pq

import lmcore.data.splits
from assets.plots import bar_chart
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.splits import SPLITS, SplitConfig, split_corpus, split_paths


class SplitsConfig(dg.Config):
    val_fraction: float = 0.05
    """Fraction of documents for validation."""
    test_fraction: float = 0.05
    """Fraction of documents for test."""
    seed: int = 0
    """Hash salt; keep it fixed across retrains so documents keep their split."""

    def to_lmcore(self) -> SplitConfig:
        return SplitConfig(val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed)


@dg.asset(group_name="data", kinds={"parquet"}, code_version=code_version(lmcore.data.splits))
def splits(
    context: dg.AssetExecutionContext, config: SplitsConfig, clean_corpus: dict, store: ArtifactStore
) -> dg.Output:
    """The cleaned documents divided into train, val and test Parquet shards."""
    cfg = config.to_lmcore()
    clean_path, clean_manifest = load_manifest(store, clean_corpus)
    in_paths = [clean_path / s["path"] for s in clean_manifest["shards"]]
    progress = reporter(context, "splits")
    ref = run_stage(store, "splits", lambda out: split_corpus(cfg, in_paths, out, progress=progress))
    _, manifest = load_manifest(store, ref)
    docs = {s: manifest["splits"][s]["documents"] for s in SPLITS}
    metadata = {f"{s}_documents": n for s, n in docs.items()}
    metadata |= {f"{s}_bytes": manifest["splits"][s]["bytes"] for s in SPLITS}
    metadata["documents_per_split"] = bar_chart("Documents per split", docs)
    return output(ref, metadata, config=config, inputs={"clean_corpus": clean_corpus})


@dg.asset_check(asset=splits, blocking=True, description="Every split has documents and no doc_id is in two splits.")
def splits_disjoint_and_non_empty(splits: dict, store: ArtifactStore) -> dg.AssetCheckResult:
    root, manifest = load_manifest(store, splits)
    ids: dict[str, set[str]] = {}
    for split in SPLITS:
        ids[split] = set()
        for path in split_paths(root, split, manifest):
            ids[split].update(pq.read_table(path, columns=["doc_id"]).column(0).to_pylist())
    overlap = sum(len(ids[a] & ids[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :])
    empty = [s for s in SPLITS if not ids[s]]
    return dg.AssetCheckResult(
        passed=overlap == 0 and not empty,
        metadata={"overlapping_doc_ids": overlap, "empty_splits": ", ".join(empty) or "none"},
    )
