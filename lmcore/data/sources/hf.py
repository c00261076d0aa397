"""Hugging Face datasets as a source: a Hub name (``datasets.load_dataset``), a dataset saved with
``save_to_disk``, or a local directory laid out like a Hub repository.

A local dataset (saved or a repository) read without streaming whose files hold more than ``unit_bytes`` is read
in *shards*, one unit each (key ``<claim>@<index>``): ``ceil(bytes on disk / unit_bytes)`` contiguous row ranges of
the split, each row keeping the key it has when the dataset is read whole. A shard's version is the dataset's
version and its place (``<version>@<index>/<count>``): which rows a changed file touches is not known without
reading it, so any change reads every shard again. A Hub dataset (its size is not known before the download,
and the unit keys are listed before it) and a streamed one (it has no length) are one unit."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lmcore.data.sources.policy import ReadContext
from lmcore.data.sources.source import Source, listing_version
from lmcore.data.sources.spec import Record, Spec
from lmcore.io import sha256_file

if TYPE_CHECKING:
    import datasets


class HFSource(Source):
    def __init__(self, spec: Spec, label: str, split: str, cache_dir: Path | None, streaming: bool) -> None:
        super().__init__(spec, label)
        self.split = split
        self.cache_dir = cache_dir
        self.streaming = streaming
        self.unit_bytes: int | None = None
        """Read a local, not streamed dataset larger than this in shards (None: never)."""
        self.shards: tuple[int, ...] | None = None
        """The shards read, when only some are (None: all)."""

    @property
    def claims(self) -> list[str]:
        return [f"hf:{self.label} split {self.split}"]

    def version(self) -> str:
        return hf_version(self.spec)

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        count = self._count()
        shards = None if count == 1 else (count, self.shards or tuple(range(count)))
        for index, text in hf_texts(self.spec, self.split, self.cache_dir, ctx, self.streaming, shards):
            if (kept := ctx.finish(text)) is not None:
                yield Record(f"hf:{self.label}\x00{self.split}\x00{index}", f"hf:{self.label}", kept)

    def _count(self) -> int:
        """The number of shards the dataset is read in (1: whole)."""
        path = hf_local(self.spec)
        if path is None or self.streaming or self.unit_bytes is None:
            return 1
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return max(1, -(-size // self.unit_bytes))

    def unit_keys(self) -> list[str]:
        count = self._count()
        if count == 1:
            return [self.claims[0]]
        return [f"{self.claims[0]}@{i}" for i in range(count) if self.shards is None or i in self.shards]

    def units(self) -> list[tuple[str, str]]:
        count = self._count()
        if count == 1:
            return [(self.claims[0], self.version())]
        version = self.version()
        return [(key, f"{version}@{key.rsplit('@', 1)[1]}/{count}") for key in self.unit_keys()]

    def only(self, keys: set[str]) -> Source | None:
        if self._count() == 1:
            return self if self.claims[0] in keys else None
        picked = tuple(int(key.rsplit("@", 1)[1]) for key in self.unit_keys() if key in keys)
        if not picked:
            return None
        narrowed = HFSource(self.spec, self.label, self.split, self.cache_dir, self.streaming)
        narrowed.unit_bytes, narrowed.shards = self.unit_bytes, picked
        return narrowed


def hf_local(spec: Spec) -> Path | None:
    """The local directory (a saved dataset or a repository) an hf: spec names, or None for a Hub name."""
    path = Path(spec.target).expanduser()
    return path if path.exists() else None


@functools.lru_cache(maxsize=64)
def _local_version(files: tuple[tuple[str, str, int, int], ...]) -> str:
    """The digest of a local dataset's files, computed once in a process while their sizes and mtimes stay the same
    (each partition's units ask for it)."""
    return listing_version([(rel, f"sha256:{sha256_file(Path(p))}") for rel, p, _, _ in files])


def _hf_saved(path: Path) -> bool:
    """Whether a local directory was written by ``save_to_disk`` (else it is laid out like a Hub repository)."""
    return any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def hf_version(spec: Spec) -> str:
    if (path := hf_local(spec)) is not None:
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        return _local_version(tuple((rel, str(p), p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files))
    from huggingface_hub import HfApi
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        info = HfApi().dataset_info(spec.target)
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"source {spec.raw!r}: no dataset {spec.target!r} on the Hugging Face Hub") from e
    return f"hf-revision:{info.sha}"


def _hf_load(
    spec: Spec, cache_dir: Path | None, streaming: bool
) -> datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict:
    """All splits of the dataset, lazily when streaming (nothing is written to the cache then).

    A saved dataset is memory-mapped, so it is read in batches as it is, streaming or not. The
    split is picked by the caller, so a missing one gives the same error in every case."""
    import datasets

    path = hf_local(spec)
    if path is not None and _hf_saved(path):
        return datasets.load_from_disk(str(path))
    target, revision = (str(path), None) if path else (spec.target, hf_version(spec).removeprefix("hf-revision:"))
    hf_cache = str(cache_dir / "hf") if cache_dir is not None else None
    return datasets.load_dataset(target, spec.hf_config, revision=revision, streaming=streaming, cache_dir=hf_cache)


def hf_texts(
    spec: Spec,
    split: str,
    cache_dir: Path | None,
    ctx: ReadContext,
    streaming: bool,
    shards: tuple[int, tuple[int, ...]] | None = None,
) -> Iterator[tuple[int, str]]:
    """``(row, text)`` of the split; with ``shards = (count, indices)`` only the rows of those contiguous shards
    (shard ``i`` of ``count``: rows ``i * n // count`` up to ``(i + 1) * n // count``), with their rows in the split."""
    import datasets

    ds = _hf_load(spec, cache_dir, streaming)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in ds:
            ctx.problems.add(f"source {spec.raw!r} has no split {split!r} (splits: {', '.join(ds)}); set hf_split")
            return
        ds = ds[split]
    columns = ds.column_names
    if columns is None:  # a stream whose features show only in its rows
        if (first := next(iter(ds), None)) is None:
            return
        columns = list(first)
    if ctx.text_field not in columns:
        shown = ", ".join(repr(c) for c in columns[:20])
        ctx.problems.add(f"source {spec.raw!r} has no column {ctx.text_field!r} (columns: {shown}); set text_field")
        return
    ds = ds.select_columns([ctx.text_field])
    if shards is None:
        pieces = [(0, ds)]
    else:
        count, n = shards[0], len(ds)
        pieces = [(i * n // count, ds.select(range(i * n // count, (i + 1) * n // count))) for i in shards[1]]
    for index, piece in pieces:
        for batch in piece.iter(batch_size=1000):
            for value in batch[ctx.text_field]:
                if value is None:
                    ctx.skipped["null_text"] += 1
                elif not isinstance(value, str):
                    ctx.bad_record(
                        "bad_text_type", f"source {spec.raw!r}, row {index}: {ctx.text_field!r} is not a string"
                    )
                else:
                    yield index, value
                index += 1
