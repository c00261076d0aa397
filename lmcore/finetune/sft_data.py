"""The SFT dataset: instruction records (``lmcore.finetune.records``) in, rendered ChatML
examples, packing and batches out.

A bad record is skipped and counted by reason, with its ``file:line`` (the first few per
reason) for the report; it never stops the build. The held-out split is decided by a
seeded hash of the record's content, so a record keeps its split when files grow, and
exact duplicate records are skipped. This module knows nothing of Dagster or training loops.
"""

from __future__ import annotations

import bisect
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from lmcore.data.tokenizer import Tokenizer
from lmcore.finetune.chat import render_chatml
from lmcore.finetune.records import content_key, is_heldout, iter_records, record_to_messages
from lmcore.io import atomic_path, read_json, sha256_file, write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "heldout")

SFT_SCHEMA = pa.schema(
    [
        pa.field("ids", pa.list_(pa.int32()), nullable=False),
        pa.field("mask", pa.list_(pa.int8()), nullable=False),
        pa.field("lengths", pa.list_(pa.int32()), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_messages", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class SFTExample:
    """One training row: a rendered conversation, or several packed back to back."""

    ids: list[int]
    mask: list[int]
    """1 on tokens the loss is taken on (assistant content and its ``<|im_end|>``)."""
    lengths: tuple[int, ...] = ()
    """Token count of each packed conversation, in order; ``()`` means one conversation."""
    key: str = ""
    """sha256 of the record's messages (empty for a packed row)."""
    prompt: str = ""
    """Last user message (held-out examples, for reports)."""
    prompt_messages: list[dict[str, str]] = field(default_factory=list)
    """Messages before the answer (held-out examples; render with ``chat.prompt_ids`` to generate)."""
    reference: str = ""
    """The answer (held-out examples, for ROUGE)."""

    @property
    def segments(self) -> tuple[int, ...]:
        return self.lengths or (len(self.ids),)


@dataclass(frozen=True, kw_only=True)
class SftDataConfig:
    """How :func:`build_sft_dataset` turns instruction records into a data set."""

    holdout_fraction: float = 0.1
    """Seeded share of records held out for ROUGE (JSONL records; derived pairs follow the splits)."""
    seed: int = 0
    """Seed of the hash that decides which records are held out."""
    pack: bool = True
    """Pack several short examples into one window (attention stays inside each)."""
    system_prompt: str | None = None
    """A system message for every record that brings none; None: no system message."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


def _check_build_args(paths: list[Path], forced: list[Path], context_length: int) -> None:
    problems = [f"{p}: no such file; give the path of a .jsonl records file" for p in paths + forced if not p.is_file()]
    if not paths:
        problems.append("records_paths is empty; give at least one .jsonl file")
    if context_length < 2:
        problems.append(f"context_length must be >= 2, got {context_length}")
    if problems:
        raise ValueError("; ".join(problems))


class _Tally:
    """Counts of a dataset build; keeps the first ``report_lines`` places of each skip reason."""

    def __init__(self, report_lines: int) -> None:
        self.report_lines = report_lines
        self.records = self.truncated = self.dropped = 0
        self.skipped: Counter[str] = Counter()
        self.skipped_lines: dict[str, list[str]] = {}
        self.repaired: Counter[str] = Counter()

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        lines = self.skipped_lines.setdefault(reason, [])
        if len(lines) < self.report_lines:
            lines.append(where)

    def stats(self, train: list[SFTExample], heldout: list[SFTExample]) -> dict[str, Any]:
        return {
            "records": self.records,
            "kept": len(train) + len(heldout),
            "train": len(train),
            "heldout": len(heldout),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_lines": dict(sorted(self.skipped_lines.items())),
            "repaired": dict(sorted(self.repaired.items())),
            "truncated": self.truncated,
            "dropped_after_truncation": self.dropped,
            "train_tokens": sum(len(e.ids) for e in train),
            "train_loss_tokens": sum(sum(e.mask) for e in train),
        }


def _example(messages: list[dict[str, str]], ids: list[int], mask: list[int], key: str, held: bool) -> SFTExample:
    if not held:
        return SFTExample(ids=ids, mask=mask, key=key)
    users = [m["content"] for m in messages if m["role"] == "user"]
    return SFTExample(
        ids=ids, mask=mask, key=key, prompt=users[-1], prompt_messages=messages[:-1], reference=messages[-1]["content"]
    )


def build_sft_dataset(
    records_paths: str | Path | Sequence[str | Path],
    tokenizer: Tokenizer,
    config: SftDataConfig,
    *,
    context_length: int,
    heldout_paths: Sequence[str | Path] = (),
    report_lines: int = 5,
) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any]]:
    """Read records, render them as ChatML and split them as ``config`` says; returns ``(train, heldout, stats)``.

    Conversations are cut to ``context_length + 1`` tokens (see ``chat.render_chatml``).
    ``config.pack`` packs the train examples into rows of at most ``context_length`` positions
    (:func:`pack_examples`); held-out examples stay one per row and carry their prompt and
    reference text. Every record of ``heldout_paths`` is held out (e.g. examples derived from
    the corpus's test documents); they are read first, so a train record repeating one is
    skipped as a duplicate. ``stats``: records, kept, train, heldout, skipped {reason: n},
    skipped_lines {reason: [first file:line]}, repaired, truncated, dropped_after_truncation,
    train_tokens, train_loss_tokens, and rows / fill when packed.
    """
    paths = [Path(p) for p in ([records_paths] if isinstance(records_paths, (str, Path)) else records_paths)]
    forced = [Path(p) for p in heldout_paths]
    _check_build_args(paths, forced, context_length)
    tally = _Tally(report_lines)
    seen: set[str] = set()
    splits: tuple[list[SFTExample], list[SFTExample]] = ([], [])
    for path in forced + paths:
        for where, record, reason in iter_records([path]):
            tally.records += 1
            messages = None
            if reason is None:
                messages, reason = record_to_messages(
                    record, system_prompt=config.system_prompt, repaired=tally.repaired
                )
            key = content_key(messages) if messages else ""
            if reason is None and key in seen:
                reason = "duplicate"
            if reason is not None or messages is None:
                tally.skip(reason or "unknown_shape", where)
                continue
            seen.add(key)
            rendered = render_chatml(messages, tokenizer, context_length=context_length)
            tally.truncated += bool(rendered.truncated)
            if rendered.dropped:
                tally.dropped += 1
                tally.skip(rendered.dropped, where)
                continue
            held = path in forced or is_heldout(key, config.holdout_fraction, config.seed)
            splits[held].append(_example(messages, rendered.ids, rendered.mask, key, held))
    train, heldout = splits
    stats = tally.stats(train, heldout)
    if config.pack:
        train = pack_examples(train, context_length)
        positions = sum(len(r.ids) - len(r.segments) for r in train)
        stats["rows"] = len(train)
        stats["fill"] = positions / (len(train) * context_length) if train else 0.0
    return train, heldout, stats


# ---------------------------------------------------------------- packing and batches


def _positions(example: SFTExample) -> int:
    """Input positions a row occupies: each conversation of n tokens gives n - 1 (input, target) pairs."""
    return len(example.ids) - len(example.segments)


def pack_examples(examples: Sequence[SFTExample], context_length: int) -> list[SFTExample]:
    """Pack conversations into rows of at most ``context_length`` positions (best fit, longest first).

    A row keeps each conversation whole and records their ``lengths``; :func:`row_tensors`
    turns it into inputs, targets and ``segment_ids`` so attention stays inside each one.
    Deterministic for a given input order.
    """
    free: list[tuple[int, int]] = []  # (positions left, row index), sorted
    rows: list[list[SFTExample]] = []
    order = sorted(range(len(examples)), key=lambda i: -_positions(examples[i]))
    for i in order:
        ex = examples[i]
        need = _positions(ex)
        if len(ex.segments) != 1 or need > context_length:
            raise ValueError(
                f"example {i} has {len(ex.ids)} tokens in {len(ex.segments)} segments; pack single "
                f"conversations of at most context_length + 1 = {context_length + 1} tokens"
            )
        slot = bisect.bisect_left(free, (need, -1))
        if slot < len(free):
            left, row = free.pop(slot)
        else:
            left, row = context_length, len(rows)
            rows.append([])
        rows[row].append(ex)
        if left - need > 0:
            bisect.insort(free, (left - need, row))
    return [
        SFTExample(
            ids=[t for e in row for t in e.ids],
            mask=[m for e in row for m in e.mask],
            lengths=tuple(len(e.ids) for e in row),
        )
        for row in rows
    ]


def row_tensors(row: SFTExample, length: int, pad_id: int) -> tuple[list[int], list[int], list[int]]:
    """(inputs, targets, segment ids) of one row, right-padded to ``length`` positions.

    Each conversation is shifted on its own, so no target crosses into the next one.
    Targets are -100 where the mask is 0 and on padding; padding is its own segment.
    """
    inputs: list[int] = []
    targets: list[int] = []
    segs: list[int] = []
    offset = 0
    for s, n in enumerate(row.segments):
        ids, mask = row.ids[offset : offset + n], row.mask[offset : offset + n]
        inputs += ids[:-1]
        targets += [t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=True)]
        segs += [s] * (n - 1)
        offset += n
    if len(inputs) > length:
        raise ValueError(f"row has {len(inputs)} positions; more than the {length} allowed")
    pad = length - len(inputs)
    return inputs + [pad_id] * pad, targets + [-100] * pad, segs + [len(row.segments)] * pad


def sft_batches(
    examples: Sequence[SFTExample], batch_size: int, context_length: int, seed: int, pad_id: int
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """One epoch of ``(inputs, targets, segment_ids)`` LongTensor batches (B, T) in a seeded order.

    Rows are right-padded to the longest in the batch (T <= context_length); targets are
    -100 on padding and on tokens outside the loss mask. ``segment_ids`` is None when no
    row in the batch is packed (plain causal attention already ignores right padding);
    pass it to ``GPT.forward`` otherwise.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for b in range(0, len(order), batch_size):
        rows = [examples[i] for i in order[b : b + batch_size]]
        too_long = [i for i, r in zip(order[b:], rows, strict=False) if _positions(r) > context_length]
        if too_long:
            raise ValueError(f"examples {too_long[:5]} exceed context_length={context_length}; render with it")
        width = max(_positions(r) for r in rows)
        cols = [row_tensors(r, width, pad_id) for r in rows]
        inputs, targets, segs = (torch.tensor([c[k] for c in cols], dtype=torch.long) for k in range(3))
        packed = any(len(r.segments) > 1 for r in rows)
        yield inputs, targets, segs if packed else None


# ---------------------------------------------------------------- on disk


def _table(examples: Sequence[SFTExample]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "ids": [e.ids for e in examples],
            "mask": [e.mask for e in examples],
            "lengths": [list(e.lengths) for e in examples],
            "key": [e.key for e in examples],
            "prompt": [e.prompt for e in examples],
            "prompt_messages": [json.dumps(e.prompt_messages, ensure_ascii=False) for e in examples],
            "reference": [e.reference for e in examples],
        },
        schema=SFT_SCHEMA,
    )


def write_sft_dataset(
    out_dir: str | Path, train: Sequence[SFTExample], heldout: Sequence[SFTExample], stats: dict[str, Any]
) -> dict[str, Any]:
    """Write ``train.parquet`` and ``heldout.parquet`` (zstd) and then ``manifest.json``; returns the manifest."""
    out_dir = Path(out_dir)
    files = {}
    for name, examples in zip(SPLITS, (train, heldout), strict=True):
        path = out_dir / f"{name}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(_table(examples), tmp, compression="zstd")
        files[name] = {"path": path.name, "rows": len(examples), "sha256": sha256_file(path)}
    manifest = {"files": files, "stats": stats}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def read_sft_dataset(out_dir: str | Path) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any]]:
    """Read back what :func:`write_sft_dataset` wrote, verifying each file's digest."""
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists():
        raise FileNotFoundError(f"{out_dir / MANIFEST}: no SFT dataset manifest; build the dataset first")
    manifest = read_json(out_dir / MANIFEST)
    splits = []
    for name in SPLITS:
        entry = manifest["files"][name]
        path = out_dir / entry["path"]
        if sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 differs from {out_dir / MANIFEST}; rebuild the SFT dataset")
        splits.append(
            [
                SFTExample(
                    ids=r["ids"],
                    mask=r["mask"],
                    lengths=tuple(r["lengths"]),
                    key=r["key"],
                    prompt=r["prompt"],
                    prompt_messages=json.loads(r["prompt_messages"]),
                    reference=r["reference"],
                )
                for r in pq.read_table(path, schema=SFT_SCHEMA).to_pylist()
            ]
        )
    return splits[0], splits[1], manifest
