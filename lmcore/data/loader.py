"""Packed, shuffled, rank-sharded training windows over memory-mapped token shards.

A split is one logical concatenation of its shards. It is cut into non-overlapping
windows of ``context_length`` inputs; window ``i`` covers tokens
``[i*T, i*T + T + 1)`` (the extra token is the last target), so windows run across
document boundaries and across shard boundaries. Each epoch draws a permutation of
the window indices from a generator seeded by ``(seed, epoch)``; rank ``r`` of
``world_size`` takes every ``world_size``-th entry starting at ``r``, and the tail is
dropped so every rank has the same number of windows. ``state_dict`` holds
``(epoch, position)``, so a resumed run continues with exactly the next batch.

This module knows nothing of models, optimizers or process groups: ranks are plain ints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmcore.data.shards import open_split

STATE_VERSION = 1


class TokenLoader:
    """Infinite iterator of ``(x, y)`` int64 batches of shape ``(batch_size, context_length)``.

    Epochs roll over on their own; ``epoch`` and ``position`` (batches already drawn by
    this rank in the current epoch) say where the next batch comes from. ``last_batch``
    is the ``(epoch, position)`` of the batch most recently returned, for error messages.
    ``window_log`` (a test aid) appends one line ``epoch position idx idx ...`` per batch.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        *,
        context_length: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        window_log: str | Path | None = None,
    ) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
        self.arrays = [a for a in arrays if a.size > 0]
        self.context_length = context_length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.window_log = Path(window_log) if window_log is not None else None
        sizes = np.array([a.size for a in self.arrays], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # shard start offsets + total
        self.num_tokens = int(self._offsets[-1])
        self.num_windows = max(self.num_tokens - 1, 0) // context_length
        self.windows_per_rank = self.num_windows // world_size
        if drop_last:
            self.batches_per_epoch = self.windows_per_rank // batch_size
        else:
            self.batches_per_epoch = -(-self.windows_per_rank // batch_size)
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"split of {self.num_tokens} tokens gives {self.num_windows} windows of {context_length}+1 tokens, "
                f"{self.windows_per_rank} per rank; a batch needs {batch_size}: use more data, a smaller "
                f"batch_size or a smaller context_length"
            )
        self._span = np.arange(context_length + 1, dtype=np.int64)
        self.epoch = 0
        self.position = 0
        self.last_batch: tuple[int, int] | None = None
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @classmethod
    def from_split(cls, root: str | Path, split: str, **kwargs: Any) -> TokenLoader:
        """Memory-map ``split`` under a token-shard root (see ``lmcore.data.shards``)."""
        return cls(open_split(root, split).arrays, **kwargs)

    def window_order(self, epoch: int) -> np.ndarray:
        """This rank's window indices for ``epoch``, in the order they are drawn."""
        if epoch != self._order_epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._order = perm[self.rank :: self.world_size][: self.windows_per_rank]
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the next ``(x, y)`` and advance; ``y`` is ``x`` shifted left by one token."""
        order = self.window_order(self.epoch)
        lo = self.position * self.batch_size
        idx = order[lo : lo + self.batch_size]
        tokens = self.gather(idx)  # (B, T+1)
        if self.window_log is not None:
            with open(self.window_log, "a", encoding="utf-8") as f:
                f.write(f"{self.epoch} {self.position} {' '.join(map(str, idx.tolist()))}\n")
        self.last_batch = (self.epoch, self.position)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        x = torch.from_numpy(np.ascontiguousarray(tokens[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(tokens[:, 1:]))
        return x, y

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Tokens of windows ``idx`` as an int64 array (len(idx), T+1), by fancy indexing per shard."""
        starts = np.asarray(idx, dtype=np.int64) * self.context_length
        out = np.empty((starts.size, self.context_length + 1), dtype=np.int64)
        first = np.searchsorted(self._offsets, starts, side="right") - 1
        last = np.searchsorted(self._offsets, starts + self.context_length, side="right") - 1
        inside = first == last
        for shard in np.unique(first[inside]):
            rows = np.flatnonzero(inside & (first == shard))
            local = starts[rows] - self._offsets[shard]
            out[rows] = self.arrays[shard][local[:, None] + self._span]
        for row in np.flatnonzero(~inside):  # rare: the window runs across a shard boundary
            out[row] = self._slice(int(starts[row]), int(starts[row]) + self.context_length + 1)
        return out

    def _slice(self, lo: int, hi: int) -> np.ndarray:
        """Tokens ``[lo, hi)`` of the logical concatenation of all shards."""
        parts = []
        shard = int(np.searchsorted(self._offsets, lo, side="right")) - 1
        while lo < hi:
            base = int(self._offsets[shard])
            take = min(hi, int(self._offsets[shard + 1])) - lo
            parts.append(self.arrays[shard][lo - base : lo - base + take])
            lo += take
            shard += 1
        return np.concatenate(parts)

    def state_dict(self) -> dict[str, int]:
        """Plain ints only, so it round-trips through JSON and ``torch.load(weights_only=True)``."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_windows": self.num_windows,
            "context_length": self.context_length,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``; the data, seed, shapes and world size must be the same as when saved."""
        problems = [
            f"{key}={state.get(key)} in the saved state but {getattr(self, key)} now"
            for key in ("seed", "world_size", "num_windows", "context_length", "batch_size")
            if state.get(key) != getattr(self, key)
        ]
        if problems:
            raise ValueError(
                "loader state does not fit this loader: "
                + "; ".join(problems)
                + "; resume with the same data and config"
            )
        if not 0 <= state["position"] < self.batches_per_epoch or state["epoch"] < 0:
            raise ValueError(f"loader state epoch={state['epoch']}, position={state['position']} is out of range")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
