"""Token shards: Arrow IPC files of token ids, one directory per split, manifest last.

Layout under a shard root::

    manifest.json                 written last; counts and sha256 of every shard
    train/shard-00000.arrow       one record batch, column ``tokens`` (uint16 or uint32)
    val/...  test/...

Documents are concatenated with ``<|endoftext|>`` after each one. A shard holds at most ``shard_tokens`` ids and is
the only buffer the writer keeps, so memory does not grow with the corpus. Readers memory-map the files and verify
digests against the manifest. This module knows nothing of models or training loops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lmcore.data.fast_encoder import ENCODERS, IdEncoder, choose_encoder
from lmcore.data.tokenizer import MAX_WORD_CHARS, Tokenizer, cut_long_runs
from lmcore.io import ProgressFn, atomic_path, iter_texts, link_or_copy, read_json, sha256_file, write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(kw_only=True, frozen=True)
class EncodeConfig:
    """How the tokenized stage encodes documents into shards; only :meth:`memo`'s fields change the shards' bytes."""

    shard_tokens: int = 1 << 24
    """Token ids per shard; also the writer's whole buffer (per split and source), so it bounds memory."""
    batch_size: int = 512
    """Documents (or pieces of a cut one) per encode call."""
    max_word_chars: int = MAX_WORD_CHARS
    """Cut runs of more than this many non-space characters before encoding (0: never); the tokenized asset sets the
    tokenizer's own ``TokenizerConfig.max_word_chars``, so encoding sees the words training saw."""
    encoder: str = "hf"
    """``hf``, or ``tiktoken`` (``pip install 'lmpipe[fast]'``): built from the same vocabulary and merges and used in
    a partition only if its ids equal HF's on the partition's first ``check_chars`` characters; otherwise HF, with
    the reason in ``encoder.json`` and the asset's metadata. The shards are identical either way."""
    check_chars: int = 1 << 20
    """With ``encoder: tiktoken``: characters per partition encoded by both encoders to prove their ids equal (each
    costs an HF and a tiktoken encode)."""

    def __post_init__(self) -> None:
        for name in ("shard_tokens", "batch_size", "check_chars"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"EncodeConfig.{name}={getattr(self, name)!r}: must be a whole number >= 1")
        if not isinstance(self.max_word_chars, int) or self.max_word_chars < 0:
            raise ValueError(f"EncodeConfig.max_word_chars={self.max_word_chars!r}: must be >= 0 (0: no bound)")
        if self.encoder not in ENCODERS:
            raise ValueError(f"EncodeConfig.encoder={self.encoder!r}: choose one of {', '.join(ENCODERS)}")

    def memo(self) -> dict[str, int]:
        """The settings the shards' bytes depend on (a partition is tokenized again when one changes)."""
        return {"shard_tokens": self.shard_tokens, "max_word_chars": self.max_word_chars}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenShardWriter:
    """Append token ids; rotate to a new Arrow IPC shard every ``shard_tokens`` ids."""

    def __init__(
        self, out_dir: str | Path, dtype: np.dtype, *, shard_tokens: int = 1 << 24, prefix: str = "shard"
    ) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.prefix = prefix
        self.shards: list[dict[str, Any]] = []
        self.tokens = 0
        self._buf = np.empty(shard_tokens, dtype=self.dtype)
        self._fill = 0
        self._max_id = np.iinfo(self.dtype).max

    def __enter__(self) -> TokenShardWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def add(self, ids: np.ndarray) -> None:
        """Append a 1-D array of ids (any integer dtype); ids must fit the shard dtype."""
        if ids.size and int(ids.max()) > self._max_id:
            raise ValueError(f"token id {int(ids.max())} does not fit {self.dtype}; use a larger dtype")
        pos = 0
        while pos < ids.size:
            take = min(ids.size - pos, self.shard_tokens - self._fill)
            self._buf[self._fill : self._fill + take] = ids[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.shard_tokens:
                self._write_shard()

    def _write_shard(self) -> None:
        if self._fill == 0:
            return
        name = f"{self.prefix}-{len(self.shards):05d}.arrow"
        arr = pa.array(self._buf[: self._fill])
        batch = pa.record_batch([arr], names=["tokens"])
        with atomic_path(self.out_dir / name) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
                writer.write_batch(batch)
            digest = sha256_file(tmp)
        self.shards.append({"path": name, "tokens": int(self._fill), "sha256": digest})
        self.tokens += self._fill
        self._fill = 0

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._write_shard()


def encode_documents(
    encoder: IdEncoder, texts: Iterable[str], settings: EncodeConfig = EncodeConfig(), *, batch_chars: int = 1 << 20
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(ids, n_docs)`` per batch: each document's ids followed by ``<|endoftext|>`` (uint32), and how many
    documents end in the batch.

    ``encoder``: the :class:`~lmcore.data.tokenizer.Tokenizer`, or one proven to give its ids (:mod:`.fast_encoder`).
    A document's ids are ``tokenizer.encode(text, add_special_tokens=False).ids``, except inside a run of more than
    ``settings.max_word_chars`` non-space characters (0: no bound), cut into words of that length first as tokenizer
    training cuts them (:func:`~lmcore.data.tokenizer.cut_long_runs`), so that one 10 MB document without whitespace
    takes linear time. A batch closes at ``settings.batch_size`` pieces (documents, or parts of a cut one) or
    ``batch_chars`` characters, whichever comes first: HF ``Encoding`` objects cost ~100 bytes per token, so the
    character bound is what keeps memory flat, within one long document too.
    """
    batch: list[str] = []
    ends: list[bool] = []  # whether batch[i] is the last piece of its document
    chars = 0
    for text in texts:
        pieces = cut_long_runs(text, settings.max_word_chars)
        for i, piece in enumerate(pieces, 1):
            batch.append(piece)
            ends.append(i == len(pieces))
            chars += len(piece)
            if len(batch) >= settings.batch_size or chars >= batch_chars:
                yield _encode_batch(encoder, batch, ends)
                batch, ends, chars = [], [], 0
    if batch:
        yield _encode_batch(encoder, batch, ends)


def _encode_batch(encoder: IdEncoder, pieces: list[str], ends: list[bool]) -> tuple[np.ndarray, int]:
    ids, sizes = encoder.encode_ids(pieces)
    doc_ends = np.cumsum(sizes)[np.asarray(ends, dtype=bool)]
    return np.insert(ids, doc_ends, encoder.eot_id), int(doc_ends.size)


@dataclass(frozen=True)
class SplitTokens:
    """Memory-mapped token arrays of one split, one per shard (zero-copy views)."""

    split: str
    arrays: list[np.ndarray]

    @property
    def num_tokens(self) -> int:
        return sum(a.size for a in self.arrays)


def load_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no token-shard manifest; materialize the token_shards asset first")
    return read_json(path)


def verify_shards(root: str | Path) -> list[str]:
    """Return a list of problems (missing files, digest mismatches); empty when all is well."""
    root = Path(root)
    manifest = load_manifest(root)
    problems = []
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            path = root / split / shard["path"]
            if not path.exists():
                problems.append(f"{path}: missing")
            elif sha256_file(path) != shard["sha256"]:
                problems.append(f"{path}: sha256 does not match the manifest")
    return problems


def open_split(root: str | Path, split: str) -> SplitTokens:
    """Memory-map every shard of ``split``; raises if the split is not in the manifest."""
    root = Path(root)
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"{root}: split {split!r} not in manifest; have {sorted(manifest['splits'])}")
    arrays = []
    for shard in manifest["splits"][split]["shards"]:
        source = pa.memory_map(str(root / split / shard["path"]), "r")
        table = pa.ipc.open_file(source).read_all()
        arrays.append(table.column("tokens").chunk(0).to_numpy(zero_copy_only=True))
    return SplitTokens(split=split, arrays=arrays)


def write_manifest(root: str | Path, splits: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    manifest = {"format_version": FORMAT_VERSION, "splits": splits, **extra}
    write_json(Path(root) / MANIFEST, manifest)
    return manifest


def tokenize_splits(
    tokenizer: Tokenizer,
    split_files: dict[str, list[Path]],
    out_dir: str | Path,
    *,
    shard_tokens: int = 1 << 24,
    batch_size: int = 512,
    progress: ProgressFn | None = None,
    **manifest_extra: Any,
) -> dict[str, Any]:
    """Stream every split's documents through ``tokenizer`` into shards; manifest written last. Memory is one shard
    buffer (``shard_tokens`` ids) plus one encode batch, whatever the corpus size."""
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    splits: dict[str, dict[str, Any]] = {}
    done = 0
    for split, paths in split_files.items():
        docs = 0
        with TokenShardWriter(Path(out_dir) / split, dtype, shard_tokens=shard_tokens) as writer:
            for ids, n in encode_documents(tokenizer, iter_texts(paths), EncodeConfig(batch_size=batch_size)):
                writer.add(ids)
                docs += n
                done += n
                if progress:
                    progress("tokenize documents", done, None)
        splits[split] = {"documents": docs, "tokens": writer.tokens, "shards": writer.shards}
    return write_manifest(
        out_dir, splits, dtype=dtype.name, vocab_size=vocab_size, eot_id=tokenizer.eot_id, **manifest_extra
    )


def _group_name(spec: str) -> str:
    """A file-name-safe name of a source spec's shards."""
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()[:8]


def _kept_documents(doc_paths: list[Path], splits_of: dict[str, str]) -> Iterator[tuple[str, str, str, str]]:
    """``(doc_id, split, spec, text)`` of each document of ``doc_paths`` that ``splits_of`` keeps, in order."""
    import pyarrow.parquet as pq

    for path in doc_paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["doc_id", "spec", "text"]):
            for doc, spec, text in zip(*(batch.column(c).to_pylist() for c in ("doc_id", "spec", "text")), strict=True):
                if (split := splits_of.get(doc)) is not None:
                    yield doc, split, spec, text


def tokenize_partition(
    tokenizer: Tokenizer | str | Path,
    doc_paths: list[Path],
    splits_of: dict[str, str],
    out_dir: str | Path,
    *,
    settings: EncodeConfig = EncodeConfig(),
    progress: ProgressFn | None = None,
    **manifest_extra: Any,
) -> dict[str, Any]:
    """Tokenize one partition's cleaned documents (``doc_paths``) into ``out_dir/{split}/`` shards, one run of
    shards per source spec (so batches can be mixed by source); manifest last.

    ``tokenizer`` may be the path of a ``tokenizer.json``. ``splits_of`` maps each ``doc_id`` to keep to its
    split; other documents (duplicates) are passed over. Each shard entry carries its ``spec``; per split the
    manifest also counts ``bytes`` (UTF-8 of the kept texts). With ``encoder: tiktoken`` the first ``check_chars`` of
    documents decide the encoder (:func:`.fast_encoder.choose_encoder`); the choice is saved beside the manifest.
    """
    from lmcore.data.tokenizer import load_tokenizer

    if clash := sorted(set(manifest_extra) & {f.name for f in dataclasses.fields(EncodeConfig)}):
        raise TypeError(f"tokenize_partition: pass {clash} in settings=EncodeConfig(...), not as keywords")
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    docs = _kept_documents(doc_paths, splits_of)
    head = _head(docs, settings.check_chars) if settings.encoder != "hf" else []
    sample = [(doc, text) for doc, _, _, text in head]
    encoder, choice = choose_encoder(tokenizer, settings.encoder, sample, settings.max_word_chars, settings.check_chars)
    out = _SplitWriters(tokenizer, encoder, Path(out_dir), settings)
    for done, (_, split, spec, text) in enumerate(itertools.chain(head, docs), 1):
        out.add(split, spec, text)
        if progress and done % 256 == 0:
            progress("tokenize documents", done, len(splits_of))
    splits = out.finish()
    choice.save(out.out_dir)  # beside the manifest, not in it: the data version does not depend on the encoder
    ids = {"dtype": out.dtype.name, "vocab_size": tokenizer.get_vocab_size(), "eot_id": tokenizer.eot_id}
    return write_manifest(out.out_dir, splits, **ids, **manifest_extra)


def _head(docs: Iterator[tuple[str, str, str, str]], chars: int) -> list[tuple[str, str, str, str]]:
    head, total = [], 0  # the first documents up to ``chars`` characters (the last one whole)
    while total < chars and (row := next(docs, None)) is not None:
        head.append(row)
        total += len(row[3])
    return head


class _SplitWriters:
    """One run of token shards per ``(split, source spec)``; documents are encoded ``batch_size`` at a time."""

    def __init__(self, tokenizer: Tokenizer, encoder: IdEncoder, out_dir: Path, settings: EncodeConfig) -> None:
        self.encoder, self.out_dir, self.settings = encoder, out_dir, settings
        self.dtype = token_dtype(tokenizer.get_vocab_size())
        self.writers: dict[tuple[str, str], TokenShardWriter] = {}
        self.pending: dict[tuple[str, str], list[str]] = {}
        self.stats = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in ("train", "val", "test")}

    def add(self, split: str, spec: str, text: str) -> None:
        self.stats[split]["documents"] += 1
        self.stats[split]["bytes"] += len(text.encode("utf-8"))
        key = (split, spec)
        self.pending.setdefault(key, []).append(text)
        if len(self.pending[key]) >= self.settings.batch_size:
            self._flush(key)

    def _flush(self, key: tuple[str, str]) -> None:
        texts = self.pending.pop(key, [])
        if not texts:
            return
        if key not in self.writers:
            split, spec = key
            self.writers[key] = TokenShardWriter(
                self.out_dir / split,
                self.dtype,
                shard_tokens=self.settings.shard_tokens,
                prefix=f"shard-{_group_name(spec)}",
            ).__enter__()
        for ids, _ in encode_documents(self.encoder, texts, self.settings):
            self.writers[key].add(ids)

    def finish(self) -> dict[str, dict[str, Any]]:
        """Close every shard; per split its counts and shards (each carrying its ``spec``)."""
        for key in list(self.pending):
            self._flush(key)
        splits: dict[str, dict[str, Any]] = {}
        for split, info in self.stats.items():
            shards = []
            for (s, spec), writer in sorted(self.writers.items()):
                if s == split:
                    writer.__exit__(None, None, None)
                    shards += [{**shard, "spec": spec} for shard in writer.shards]
                    info["tokens"] += writer.tokens
            splits[split] = {**info, "shards": shards}
        return splits


def assemble_shards(parts: dict[str, Path], out_dir: str | Path, **manifest_extra: Any) -> dict[str, Any]:
    """Gather the partitions' shards (``tokenize_partition`` outputs) into one shard root, in partition order,
    linked rather than copied; the manifest keeps each shard's digest, spec and partition, and counts tokens
    per source spec (``sources``)."""
    out_dir = Path(out_dir)
    manifests = {p: load_manifest(parts[p]) for p in sorted(parts)}
    kinds = {(m["dtype"], m["vocab_size"], m["eot_id"]) for m in manifests.values()}
    if len(kinds) > 1:
        raise ValueError(
            f"the partitions were tokenized with different tokenizers ({sorted(kinds)}); "
            "re-materialize every partition of the tokenized asset"
        )
    splits: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        shards, docs, nbytes = [], 0, 0
        for p, manifest in manifests.items():
            info = manifest["splits"][split]
            docs += info["documents"]
            nbytes += info["bytes"]
            for shard in info["shards"]:
                name = f"shard-{len(shards):05d}.arrow"
                link_or_copy(Path(parts[p]) / split / shard["path"], out_dir / split / name)
                shards.append({**shard, "path": name, "partition": p})
                per = sources.setdefault(shard["spec"], {"train": 0, "val": 0, "test": 0})
                per[split] += shard["tokens"]
        splits[split] = {
            "documents": docs,
            "tokens": sum(s["tokens"] for s in shards),
            "bytes": nbytes,
            "shards": shards,
        }
    dtype, vocab, eot = next(iter(kinds)) if kinds else ("uint16", 0, 0)
    return write_manifest(out_dir, splits, dtype=dtype, vocab_size=vocab, eot_id=eot, sources=sources, **manifest_extra)


def split_groups(root: str | Path, split: str) -> list[str]:
    """The source spec of each shard of ``split`` (in shard order), for mixing batches by source."""
    return [shard.get("spec", "") for shard in load_manifest(root)["splits"][split]["shards"]]
