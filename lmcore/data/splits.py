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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lmcore.data.clean import CLEAN_SCHEMA, SOURCE_DOC_ID
from lmcore.io import ParquetShardWriter, ProgressFn, read_parquet_rows, write_json

SPLITS = ("train", "val", "test")


@dataclass(kw_only=True, frozen=True)
class SplitConfig:
    val_fraction: float = 0.05
    """Fraction of documents in the validation split, in [0, 1)."""
    test_fraction: float = 0.05
    """Fraction of documents in the test split, in [0, 1)."""
    seed: int = 0
    """Salt of the hash; a different seed gives a different, equally stable assignment."""
    shard_bytes: int = 64 << 20
    """Rotate output Parquet shards at about this many bytes of text."""

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
        if self.shard_bytes <= 0:
            raise ValueError(f"SplitConfig.shard_bytes={self.shard_bytes}: must be positive")


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


def split_corpus(
    config: SplitConfig, in_paths: list[Path], out_dir: Path, *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Copy the cleaned documents into ``out_dir/{train,val,test}/part-*.parquet``; manifest last.

    Each row goes to the split of its ``source_doc_id`` (:func:`assign_split`) and keeps every
    column of :data:`~lmcore.data.clean.CLEAN_SCHEMA`.
    """
    out_dir = Path(out_dir)
    _check_inputs([Path(p) for p in in_paths])
    writers = {s: ParquetShardWriter(out_dir / s, CLEAN_SCHEMA, max_bytes=config.shard_bytes) for s in SPLITS}
    stats = {s: {"documents": 0, "bytes": 0} for s in SPLITS}
    for w in writers.values():
        w.__enter__()
    try:
        for n, row in enumerate(read_parquet_rows(in_paths), start=1):
            split = assign_split(row[SOURCE_DOC_ID], config)
            writers[split].write(row)
            stats[split]["documents"] += 1
            stats[split]["bytes"] += len(row["text"].encode("utf-8"))
            if progress and n % 1000 == 0:
                progress("split documents", n, None)
    except BaseException as exc:
        for w in writers.values():
            w.__exit__(type(exc), exc, None)
        raise
    for split, w in writers.items():
        w.__exit__(None, None, None)
        stats[split]["shards"] = w.shards
    manifest = {"splits": stats, "config": asdict(config)}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def _check_inputs(paths: list[Path]) -> None:
    """Raise naming every input shard that lacks ``source_doc_id`` (written by an older clean_corpus)."""
    old = [str(p) for p in paths if SOURCE_DOC_ID not in pq.read_schema(p).names]
    if old:
        raise ValueError(
            f"{', '.join(old)}: no {SOURCE_DOC_ID!r} column, so chunks cannot be kept with their source document; "
            "re-materialize clean_corpus (it writes the column) and then splits"
        )


def split_paths(split_root: Path, split: str, manifest: dict[str, Any]) -> list[Path]:
    """Parquet files of one split, from the splits manifest."""
    return [Path(split_root) / split / s["path"] for s in manifest["splits"][split]["shards"]]
