"""Packed, shuffled, rank-sharded training windows over memory-mapped token shards, optionally mixed by group.

A split is one logical concatenation of its shards. It is cut into non-overlapping
windows of ``context_length`` inputs; window ``i`` covers tokens
``[i*T, i*T + T + 1)`` (the extra token is the last target), so windows run across
document boundaries and across shard boundaries. Each epoch draws a permutation of
the window indices from a generator seeded by ``(seed, epoch)``; rank ``r`` of
``world_size`` takes every ``world_size``-th entry starting at ``r``, and the tail is
dropped so every rank has the same number of windows. ``state_dict`` holds
``(epoch, position)``, so a resumed run continues with exactly the next batch.

Weighted mixing (a :class:`Mixture`: ``groups`` labels each array, ``weights`` maps group -> weight): each
group is its own concatenation of its arrays, cut into windows the same way, so no
window crosses a group. An epoch still has ``N`` = all groups' windows; group ``g``
gets ``n_g`` of them, the largest-remainder rounding of ``N * w_g / sum(w)`` (ties to
the smaller group name). They come from permutations of ``g``'s windows seeded by
``(seed, epoch, index of g among the sorted names)``, a fresh permutation per pass when
``n_g`` exceeds ``g``'s windows (upsampling); the ``N`` picks are then shuffled with
``(seed, epoch)`` and split over ranks as above.

This module knows nothing of models, optimizers, process groups or shard manifests: ranks are
plain ints and groups plain labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmcore.data.shards import open_split

STATE_VERSION = 1
UNGROUPED = "all"
"""The one key of ``realized_mixture`` when the loader was built without ``groups``."""


def largest_remainder(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` into integers proportional to ``weights`` that sum to exactly ``total``.

    Each name gets the floor of its exact quota ``total * w / sum(w)``; the units left go to
    the largest remainders, ties to the smaller name. Exact rational arithmetic, so the
    result does not depend on float rounding.
    """
    exact = {name: Fraction(w) for name, w in weights.items()}
    norm = sum(exact.values())
    quota = {name: total * w / norm for name, w in exact.items()}
    counts = {name: math.floor(q) for name, q in quota.items()}
    by_remainder = sorted(quota, key=lambda name: (-(quota[name] - counts[name]), name))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def check_weights(weights: Mapping[str, float], tokens: Mapping[str, int], context_length: int) -> None:
    """Raise one ``ValueError`` listing every problem with ``weights`` for groups holding ``tokens``."""
    problems = []
    missing = sorted(set(tokens) - set(weights))
    if missing:
        problems.append(f"no weight for group(s) {missing}: give every group a weight (0 to leave it out)")
    empty = sorted(set(weights) - set(tokens))
    if empty:
        problems.append(f"weight for group(s) {empty} that have no tokens: remove them or give them data")
    bad = {g: w for g, w in weights.items() if not (math.isfinite(w) and w >= 0)}
    if bad:
        problems.append(f"weights {bad} are not finite numbers >= 0")
    elif weights and not any(w > 0 for w in weights.values()):
        problems.append("all weights are 0: give at least one group a weight > 0")
    starved = sorted(g for g, n in tokens.items() if weights.get(g, 0) > 0 and n < context_length + 1)
    for g in starved:
        problems.append(
            f"group {g!r} has {tokens[g]} tokens, fewer than context_length+1={context_length + 1}, "
            f"so no window to draw: give it weight 0 or more data"
        )
    if problems:
        raise ValueError("bad mixing weights: " + "; ".join(problems))


def _check_layout(
    arrays: int, context_length: int, batch_size: int, rank: int, world_size: int, mixture: Mixture | None
) -> None:
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    if mixture is not None and len(mixture.groups) != arrays:
        raise ValueError(
            f"groups has {len(mixture.groups)} labels but there are {arrays} arrays: give one label per array"
        )


@dataclass(frozen=True)
class Mixture:
    """Groups of a split's arrays: ``groups[i]`` labels array ``i``; ``weights`` (group -> weight) mixes them.

    Without ``weights`` the groups only feed ``TokenLoader.realized_mixture`` and everything else is as if
    they were not given. With ``weights`` the arrays are regrouped (groups in sorted name order, each
    group's arrays in the given order) and window indices count through the groups in that order.
    """

    groups: Sequence[str]
    weights: Mapping[str, float] | None = None


class TokenLoader:
    """Infinite iterator of ``(x, y)`` int64 batches of shape ``(batch_size, context_length)``.

    Epochs roll over on their own; ``epoch`` and ``position`` (batches already drawn by
    this rank in the current epoch) say where the next batch comes from. ``mixture`` groups
    (and with weights, mixes) the arrays; :meth:`log_windows` (a test aid) logs each batch's windows.
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
        mixture: Mixture | None = None,
    ) -> None:
        _check_layout(len(arrays), context_length, batch_size, rank, world_size, mixture)
        labels = list(mixture.groups) if mixture is not None else [UNGROUPED] * len(arrays)
        weights = mixture.weights if mixture is not None else None
        kept = [(label, a) for label, a in zip(labels, arrays, strict=True) if a.size > 0]
        self.group_names = sorted({label for label, _ in kept})
        tokens = {g: sum(int(a.size) for label, a in kept if label == g) for g in self.group_names}
        self.weights = None if weights is None else {str(g): float(w) for g, w in sorted(weights.items())}
        if self.weights is not None:
            check_weights(self.weights, tokens, context_length)
            kept.sort(key=lambda pair: pair[0])  # stable: each group's arrays keep their order
        self.arrays = [a for _, a in kept]
        self.context_length = context_length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.window_log: Path | None = None
        self.num_windows = self._index_windows([label for label, _ in kept], tokens)
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
        self.draws = None if self.weights is None else largest_remainder(self.num_windows, self.weights)
        """Windows drawn from each group per epoch (all ranks together); None without weights."""
        self._span = np.arange(context_length + 1, dtype=np.int64)
        self.epoch = 0
        self.position = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)
        self._epoch_tokens: dict[int, np.ndarray] = {}  # epoch -> this rank's tokens per group over a whole epoch

    def _index_windows(self, labels: list[str], tokens: dict[str, int]) -> int:
        """Lay out window ids over ``self.arrays`` (labelled ``labels``) and return how many windows there are.

        Window ids run through segments: one segment over everything without weights, one per
        group (in sorted name order, its arrays adjacent) with them. A window's tokens start at
        ``_token_base[s] + (id - _window_base[s]) * T`` for its segment ``s``.
        """
        sizes = np.array([a.size for a in self.arrays], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # shard start offsets + total
        self._labels = np.array([self.group_names.index(label) for label in labels], dtype=np.int64)
        self.num_tokens = int(self._offsets[-1])
        before = np.zeros((len(self.arrays), len(self.group_names)), dtype=np.int64)
        before[np.arange(len(self.arrays)), self._labels] = sizes
        self._tokens_before = np.cumsum(before, axis=0) - before  # [k, g]: tokens of group g in arrays before k
        self.group_windows: dict[str, int] | None = None
        """Windows in each group's own concatenation (with weights; None without)."""
        if self.weights is None:  # windows run across every boundary
            segments = np.array([max(self.num_tokens - 1, 0) // self.context_length], dtype=np.int64)
            self._token_base = np.zeros(1, dtype=np.int64)
        else:
            self.group_windows = {g: max(tokens[g] - 1, 0) // self.context_length for g in self.group_names}
            segments = np.array(list(self.group_windows.values()), dtype=np.int64)
            self._token_base = self._offsets[np.searchsorted(self._labels, np.arange(segments.size))]
        self._window_base = np.concatenate([[0], np.cumsum(segments)[:-1]]).astype(np.int64)  # first ids
        return int(segments.sum())

    def log_windows(self, path: str | Path) -> None:
        """Append one line ``epoch position idx idx ...`` per batch drawn to ``path`` (a test aid)."""
        self.window_log = Path(path)

    @classmethod
    def from_split(cls, root: str | Path, split: str, **kwargs: Any) -> TokenLoader:
        """Memory-map ``split`` under a token-shard root (see ``lmcore.data.shards``)."""
        return cls(open_split(root, split).arrays, **kwargs)

    def window_order(self, epoch: int) -> np.ndarray:
        """This rank's window indices for ``epoch``, in the order they are drawn."""
        if epoch != self._order_epoch:
            self._order = self._rank_order(epoch)
            self._order_epoch = epoch
        return self._order

    def _rank_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.group_windows is None or self.draws is None:
            perm = rng.permutation(self.num_windows)
        else:
            picks = [np.empty(0, dtype=np.int64)]
            for index, (group, have) in enumerate(self.group_windows.items()):
                n = self.draws[group]
                if n > 0:
                    group_rng = np.random.default_rng([self.seed, epoch, index])
                    passes = [group_rng.permutation(have) for _ in range(-(-n // have))]  # cycles when upsampling
                    picks.append(self._window_base[index] + np.concatenate(passes)[:n])
            perm = rng.permutation(np.concatenate(picks))
        return perm[self.rank :: self.world_size][: self.windows_per_rank]

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
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        x = torch.from_numpy(np.ascontiguousarray(tokens[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(tokens[:, 1:]))
        return x, y

    def window_starts(self, idx: np.ndarray) -> np.ndarray:
        """Offset of each window's first token in the concatenation of ``arrays``."""
        idx = np.asarray(idx, dtype=np.int64)
        segment = np.searchsorted(self._window_base, idx, side="right") - 1
        return self._token_base[segment] + (idx - self._window_base[segment]) * self.context_length

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Tokens of windows ``idx`` as an int64 array (len(idx), T+1), by fancy indexing per shard."""
        starts = self.window_starts(idx)
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

    def realized_mixture(self) -> dict[str, int]:
        """Input tokens this rank has drawn per group, from epoch 0 position 0 up to ``(epoch, position)``.

        Recomputed from the deterministic window order, so it is right after a resume. Keys are
        the sorted group names, or ``"all"`` without ``groups``. With weights every window lies in
        one group and counts ``context_length`` tokens there; without weights a window that runs
        across a group boundary counts each input token for the group it came from.
        """
        total = np.zeros(len(self.group_names), dtype=np.int64)
        for epoch in range(self.epoch):
            if epoch not in self._epoch_tokens:
                self._epoch_tokens[epoch] = self._group_tokens(self._rank_order(epoch)[: self._drawn(None)])
            total += self._epoch_tokens[epoch]
        total += self._group_tokens(self.window_order(self.epoch)[: self._drawn(self.position)])
        return {g: int(n) for g, n in zip(self.group_names, total, strict=True)}

    def _drawn(self, position: int | None) -> int:
        """Windows this rank has drawn after ``position`` batches of an epoch (None: the whole epoch)."""
        batches = self.batches_per_epoch if position is None else position
        return min(batches * self.batch_size, self.windows_per_rank)

    def _group_tokens(self, idx: np.ndarray) -> np.ndarray:
        """Input tokens ``[start, start + T)`` of windows ``idx`` per group, summed over the windows."""
        starts = self.window_starts(idx)
        total = np.zeros(len(self.group_names), dtype=np.int64)
        for bound, sign in ((starts + self.context_length, 1), (starts, -1)):
            # tokens of each group before offset `bound`: whole arrays before its shard, plus its shard's part
            shard = np.clip(np.searchsorted(self._offsets, bound, side="right") - 1, 0, len(self.arrays) - 1)
            whole = np.bincount(shard, minlength=len(self.arrays)) @ self._tokens_before
            part = np.zeros_like(total)
            np.add.at(part, self._labels[shard], bound - self._offsets[shard])
            total += sign * (whole + part)
        return total

    def state_dict(self) -> dict[str, Any]:
        """Plain ints only (plus, with weights, name -> weight and name -> windows), so it round-trips through
        JSON and ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_windows": self.num_windows,
            "context_length": self.context_length,
            "batch_size": self.batch_size,
        }
        if self.weights is not None and self.group_windows is not None:
            state["weights"] = dict(self.weights)
            state["group_windows"] = dict(self.group_windows)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the data, groups, weights, seed, shapes and world size must be as when saved."""
        problems = [
            f"{key}={state.get(key)} in the saved state but {getattr(self, key)} now"
            for key in ("seed", "world_size", "num_windows", "context_length", "batch_size")
            if state.get(key) != getattr(self, key)
        ]
        for key, now in (("weights", self.weights), ("group_windows", self.group_windows)):
            if state.get(key) != now:
                problems.append(f"{key} {state.get(key)} in the saved state but {now} now")
        if problems:
            raise ValueError(
                "loader state does not fit this loader: "
                + "; ".join(problems)
                + "; resume with the same data and config"
            )
        if not 0 <= state["position"] < self.batches_per_epoch or state["epoch"] < 0:
            raise ValueError(f"loader state epoch={state['epoch']}, position={state['position']} is out of range")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
