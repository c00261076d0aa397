"""Document-level train/val/test assignment by a seeded hash of the source document's id.

The split of a cleaned document is decided by its ``source_doc_id`` (the raw document's
``doc_id``, which cleaning keeps on every chunk of a long document), so all chunks of a
book go to the same split and the test split never measures a book the model has read
part of. A document's split depends only on that id and the seed, never on what else is
in the corpus, so when the corpus grows every existing document keeps its split and a
test document can never leak into training on a retrain. The test band is the lowest
part of the hash range and val the next, so enlarging ``val_fraction`` moves no test
document. This module knows nothing of tokenizers or models.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmcore.data.clean import SIGNATURES, SOURCE_DOC_ID, CleanConfig, near_deduper
from lmcore.data.dedup import resolve_duplicates
from lmcore.io import ProgressFn, digest_of, link_or_copy, read_json, write_json

SPLITS = ("train", "val", "test")


@dataclass(kw_only=True, frozen=True)
class SplitConfig:
    val_fraction: float = 0.05
    """Fraction of documents in the validation split, in [0, 1)."""
    test_fraction: float = 0.05
    """Fraction of documents in the test split, in [0, 1)."""
    seed: int = 0
    """Salt of the hash; a different seed gives a different, equally stable assignment."""

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SplitConfig.{name}={value}: must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"SplitConfig: val_fraction + test_fraction = {self.val_fraction + self.test_fraction}"
                " leaves no training data; keep their sum below 1"
            )


def assign_split(doc_id: str, config: SplitConfig) -> str:
    """The split of one source document: a pure function of its id and the seed.

    Pass the raw document's id (a cleaned row's ``source_doc_id``), so that every chunk of
    it gets the same split.
    """
    digest = hashlib.sha256(f"{config.seed}\x00{doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


INDEX = "index.parquet"
DOCS_DIR = "docs"
DEDUP_FIELDS = ("dedup_exact", "dedup_near", "near_threshold", "num_perm", "seed")


def split_corpus(
    config: SplitConfig,
    partitions: Mapping[str, Path],
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    **manifest_extra: Any,
) -> dict[str, Any]:
    """Remove duplicates across all cleaned partitions and assign every kept document its split.

    ``partitions`` maps each partition key to a cleaned directory (``lmcore.data.clean``'s output).
    Only the signatures are read. Writes ``index.parquet`` (partition, doc_id, spec, bytes, split,
    and the duplicate reason or null), links each partition's cleaned shards under
    ``docs/<partition>/`` (no copy on a local disk), then ``manifest.json``. Each row's split is
    that of its ``source_doc_id`` (:func:`assign_split`); the duplicate kept is the one with the
    smallest ``doc_id`` (:func:`~lmcore.data.dedup.resolve_duplicates`), so the result depends on
    the set of documents only, not on how they were partitioned or in which order the
    partitions ran.
    """
    out_dir = Path(out_dir)
    keys = sorted(partitions)
    manifests = {p: read_json(Path(partitions[p]) / "manifest.json") for p in keys}
    dedup = _dedup_config(manifests)
    _check_inputs({p: Path(partitions[p]) for p in keys}, manifests)
    signatures = _read_signatures({p: Path(partitions[p]) for p in keys}, manifests)
    doc_ids = signatures.column("doc_id").to_pylist()
    dropped = _judge(signatures, dedup)
    if progress:
        progress("judged documents", len(doc_ids), len(doc_ids))
    source_ids = signatures.column(SOURCE_DOC_ID).to_pylist()
    split_of = [None if d in dropped else assign_split(src, config) for d, src in zip(doc_ids, source_ids, strict=True)]
    index = pa.table(
        {
            "partition": signatures.column("partition"),
            "doc_id": pa.array(doc_ids, pa.string()),
            "spec": signatures.column("spec"),
            "bytes": signatures.column("bytes"),
            "split": pa.array(split_of, pa.string()),
            "reason": pa.array([dropped.get(d) for d in doc_ids], pa.string()),
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(index, out_dir / INDEX)
    manifest = {
        "splits": _split_sizes(index),
        "dropped": dict(sorted(Counter(dropped.values()).items())),
        "documents": len(doc_ids) - len(dropped),
        "partitions": _link_partitions(partitions, manifests, index, out_dir),
        "dedup": dedup,
        "config": asdict(config),
        **manifest_extra,
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def _read_signatures(partitions: Mapping[str, Path], manifests: Mapping[str, dict[str, Any]]) -> pa.Table:
    """Every partition's signatures, in partition order, with a ``partition`` column."""
    tables = []
    for p, directory in partitions.items():
        table = pq.read_table(directory / manifests[p].get("signatures", SIGNATURES))
        tables.append(table.append_column("partition", pa.array([p] * table.num_rows, pa.string())))
    if tables:
        return pa.concat_tables(tables)
    empty = {
        "doc_id": pa.string(),
        SOURCE_DOC_ID: pa.string(),
        "spec": pa.string(),
        "bytes": pa.int64(),
        "digest": pa.binary(16),
        "partition": pa.string(),
    }
    return pa.table({name: pa.array([], kind) for name, kind in empty.items()})


def _judge(signatures: pa.Table, dedup: dict[str, Any]) -> dict[str, str]:
    """The duplicates among ``signatures``: doc_id → reason."""
    doc_ids = signatures.column("doc_id").to_pylist()
    near = near_deduper(CleanConfig(**{**CleanConfig().__dict__, **dedup})) if dedup.get("dedup_near") else None
    return resolve_duplicates(
        doc_ids,
        signatures.column("digest").to_pylist(),
        signatures.column("minhash").to_numpy(zero_copy_only=False) if near is not None and doc_ids else None,
        exact=bool(dedup.get("dedup_exact")),
        near=near,
    )


def _link_partitions(
    partitions: Mapping[str, Path], manifests: Mapping[str, dict[str, Any]], index: pa.Table, out_dir: Path
) -> dict[str, Any]:
    """Link each partition's cleaned shards under ``docs/<partition>/``; per partition its shards and the digest
    of its sorted ``(doc_id, split)`` rows."""
    rows = zip(*(index.column(c).to_pylist() for c in ("doc_id", "split", "partition")), strict=True)
    mine: dict[str, list[tuple[str, str | None]]] = {p: [] for p in partitions}
    for doc_id, split, part in rows:
        mine[part].append((doc_id, split))
    per_partition = {}
    for p in sorted(partitions):
        shards = []
        for shard in manifests[p]["shards"]:
            link_or_copy(Path(partitions[p]) / shard["path"], out_dir / DOCS_DIR / p / shard["path"])
            shards.append({**shard, "path": f"{p}/{shard['path']}"})
        per_partition[p] = {"shards": shards, "index_sha256": digest_of(sorted(mine[p], key=lambda r: r[0]))}
    return per_partition


def _split_sizes(index: pa.Table) -> dict[str, dict[str, int]]:
    """Documents and UTF-8 bytes per split."""
    frame = pl.from_arrow(index)
    assert isinstance(frame, pl.DataFrame)
    sizes = {}
    for split in SPLITS:
        rows = frame.filter(pl.col("split") == split)
        sizes[split] = {"documents": rows.height, "bytes": int(rows["bytes"].sum() or 0)}
    return sizes


def _dedup_config(manifests: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The dedup settings every partition was cleaned with; ValueError naming the partitions when they differ."""
    seen: dict[str, list[str]] = {}
    for p, manifest in manifests.items():
        settings = {k: manifest["config"][k] for k in DEDUP_FIELDS}
        seen.setdefault(json.dumps(settings, sort_keys=True), []).append(p)
    if len(seen) > 1:
        groups = "; ".join(f"partitions {', '.join(ps)}: {s}" for s, ps in seen.items())
        raise ValueError(
            f"the cleaned partitions were deduplicated with different settings ({groups}); "
            "re-materialize every partition of clean_corpus with one config"
        )
    return json.loads(next(iter(seen))) if seen else {}


def _check_inputs(dirs: Mapping[str, Path], manifests: Mapping[str, dict[str, Any]]) -> None:
    """Raise naming every partition written by an older clean_corpus: shards lacking ``source_doc_id`` or ``spec``,
    or no signatures to judge duplicates by."""
    problems = []
    for p, root in dirs.items():
        if not (root / manifests[p].get("signatures", SIGNATURES)).is_file():
            problems.append(f"partition {p}: {root} has no {SIGNATURES}, so its duplicates cannot be judged")
        for shard in manifests[p]["shards"]:
            names = pq.read_schema(root / shard["path"]).names
            if absent := [c for c in (SOURCE_DOC_ID, "spec") if c not in names]:
                problems.append(f"{root / shard['path']}: no {', '.join(map(repr, absent))} column")
    if problems:
        raise ValueError(
            f"{'; '.join(problems)}: chunks need {SOURCE_DOC_ID!r} to stay with their source document, tokenizing "
            "needs 'spec'; re-materialize clean_corpus (every partition; it writes both and the signatures) and then "
            "splits"
        )


def split_rows(
    root: Path, manifest: dict[str, Any], split: str, columns: list[str] | None = None, ids: set[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The rows (every CLEAN_SCHEMA column, or ``columns``) of one split, partition by partition in cleaning
    order; with ``ids``, only those documents."""
    if split not in SPLITS:
        raise ValueError(f"no split {split!r}; the splits are {', '.join(SPLITS)}")
    root = Path(root)
    index = pq.read_table(root / INDEX, columns=["partition", "doc_id", "split"], filters=[("split", "=", split)])
    by_partition: dict[str, set[str]] = {}
    for p, d in zip(index.column("partition").to_pylist(), index.column("doc_id").to_pylist(), strict=True):
        if ids is None or d in ids:
            by_partition.setdefault(p, set()).add(d)
    wanted = None if columns is None else list(dict.fromkeys(["doc_id", *columns]))
    for p in sorted(by_partition):
        keep = pa.array(sorted(by_partition[p]), pa.string())
        for shard in manifest["partitions"][p]["shards"]:
            for batch in pq.ParquetFile(root / DOCS_DIR / shard["path"]).iter_batches(batch_size=256, columns=wanted):
                chosen = batch.filter(pc.is_in(batch.column("doc_id"), value_set=keep))
                for row in chosen.to_pylist():
                    yield row if columns is None or "doc_id" in columns else {c: row[c] for c in columns}


def split_texts(root: Path, manifest: dict[str, Any], split: str, ids: set[str] | None = None) -> Iterator[str]:
    """The texts of one split (or of the documents ``ids`` in it), in :func:`split_rows`' order."""
    return (row["text"] for row in split_rows(root, manifest, split, ["text"], ids=ids))


def split_index(root: Path, partition: str | None = None) -> pa.Table:
    """The index (partition, doc_id, spec, bytes, split, reason), or one partition's rows of it."""
    filters = [("partition", "=", partition)] if partition is not None else None
    return pq.read_table(Path(root) / INDEX, filters=filters)


def tokenizer_sample(root: Path, sample_bytes: int) -> set[str]:
    """The train documents a tokenizer learns from: in order of sha256 of their ``doc_id`` (so the choice does not
    depend on partitions or run order), as many as fit in ``sample_bytes`` (at least one)."""
    index = pq.read_table(Path(root) / INDEX, columns=["doc_id", "bytes", "split"], filters=[("split", "=", "train")])
    rows = sorted(
        zip(index.column("doc_id").to_pylist(), index.column("bytes").to_pylist(), strict=True),
        key=lambda r: hashlib.sha256(r[0].encode()).digest(),
    )
    chosen, total = set(), 0
    for doc, size in rows:
        if chosen and total + size > sample_bytes:
            break
        chosen.add(doc)
        total += size
    return chosen
