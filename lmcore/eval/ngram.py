"""A count-based n-gram language model over token ids: the baseline a neural model must beat.

Smoothing is interpolated Kneser-Ney (Chen & Goodman 1998, section 3) with one absolute
discount per order, ``D_k = n1 / (n1 + 2 n2)`` from the counts-of-counts at that order,
clipped to [0.1, 0.9] so every context leaves some mass to the order below:

    P_k(w | h) = (max(c_k(h w) - D_k, 0) + D_k * N1+(h .) * P_{k-1}(w | h')) / c_k(h .)

where h' drops the oldest token of h. The highest order uses raw counts ``c``; lower
orders use continuation counts ``N1+(. h w)`` (the number of distinct tokens seen before
``h w``), which is what makes Kneser-Ney better than plain absolute discounting. The
recursion ends in the uniform distribution ``1 / vocab_size``, so unseen tokens keep
probability and every distribution sums to one. A context never seen at order k falls
through to order k-1 unchanged; the first tokens of a sequence use the history they have.

N-grams are packed into int64 keys (oldest token most significant) and looked up with
``np.searchsorted``, so fitting and scoring are a few sorts and vectorised passes. The
training stream is taken as is, ``<|endoftext|>`` separators included, like the model's.
This module knows nothing of torch, files or tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK = 1 << 20  # positions scored per vectorised pass (bounds memory)


@dataclass(frozen=True)
class _Table:
    """Counts of one order: sorted n-gram keys and their counts; sorted context keys and their totals."""

    keys: np.ndarray  # (G,) int64, sorted
    counts: np.ndarray  # (G,) float64: raw counts (highest order) or continuation counts
    ctx_keys: np.ndarray  # (H,) int64, sorted: key // vocab_size
    ctx_total: np.ndarray  # (H,) float64: sum of counts over the context's n-grams
    ctx_types: np.ndarray  # (H,) float64: distinct tokens seen after the context
    discount: float


def _table(keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Table:
    ctx = keys // vocab_size
    ctx_keys, starts = np.unique(ctx, return_index=True)  # keys are sorted, so each context is a run
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    discount = float(np.clip(n1 / (n1 + 2 * n2), 0.1, 0.9)) if n1 + n2 else 0.5
    return _Table(
        keys=keys,
        counts=counts.astype(np.float64),
        ctx_keys=ctx_keys,
        ctx_total=np.add.reduceat(counts, starts).astype(np.float64),
        ctx_types=np.diff(np.append(starts, keys.size)).astype(np.float64),
        discount=discount,
    )


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[key] for each query key, 0 where the key is absent."""
    if sorted_keys.size == 0:
        return np.zeros(query.shape, dtype=np.float64)
    idx = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return np.where(sorted_keys[idx] == query, values[idx], 0.0)


def _history(tokens: np.ndarray, positions: np.ndarray, depth: int) -> np.ndarray:
    """(N, depth) int64: the ``depth`` tokens before each position, oldest first, -1 before the start."""
    offsets = np.arange(-depth, 0)  # (depth,)
    idx = positions[:, None] + offsets[None, :]  # (N, depth)
    return np.where(idx >= 0, tokens[np.maximum(idx, 0)], -1)


class NGramLM:
    """Interpolated Kneser-Ney n-gram model; build it with :meth:`fit`."""

    def __init__(self, order: int, vocab_size: int, tables: list[_Table]) -> None:
        self.order = order
        self.vocab_size = vocab_size
        self.tables = tables  # tables[k - 1] holds order k

    @classmethod
    def fit(cls, arrays: Sequence[np.ndarray], vocab_size: int, order: int = 3) -> NGramLM:
        """Count n-grams of the concatenated ``arrays`` (e.g. the train split's shards)."""
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if float(vocab_size) ** order >= 2**63:
            raise ValueError(f"vocab_size**order = {vocab_size}**{order} overflows int64 keys; lower the order")
        tokens = np.concatenate([np.asarray(a) for a in arrays]).astype(np.int64)
        if tokens.size < order:
            raise ValueError(f"need at least order={order} training tokens, got {tokens.size}")
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}); got {tokens.min()}..{tokens.max()}")
        keys = np.zeros(tokens.size - order + 1, dtype=np.int64)
        for j in range(order):  # key = t0 * V^(n-1) + ... + t_{n-1}
            keys = keys * vocab_size + tokens[j : tokens.size - order + 1 + j]
        uniq, counts = np.unique(keys, return_counts=True)
        tables = [_table(uniq, counts, vocab_size)]
        for k in range(order - 1, 0, -1):
            # continuation count of a k-gram = number of distinct (k+1)-grams that end with it
            suffixes, cont = np.unique(tables[0].keys % vocab_size**k, return_counts=True)
            tables.insert(0, _table(suffixes, cont, vocab_size))
        return cls(order, vocab_size, tables)

    def _prob(self, history: np.ndarray, words: np.ndarray) -> np.ndarray:
        """P(word | history) for rows of ``history`` (N, order-1; -1 = none) and ``words`` (N,)."""
        V = self.vocab_size
        p = np.full(words.shape, 1.0 / V)
        key = words.astype(np.int64)  # key of the k-gram (history tail, word)
        valid = np.ones(words.shape, dtype=bool)
        for k, t in enumerate(self.tables, start=1):
            if k > 1:
                prev = history[:, self.order - k]  # the token k-1 places back
                valid &= prev >= 0
                key = key + np.maximum(prev, 0) * V ** (k - 1)
            total = _lookup(t.ctx_keys, t.ctx_total, key // V)
            types = _lookup(t.ctx_keys, t.ctx_types, key // V)
            count = _lookup(t.keys, t.counts, key)
            seen = valid & (total > 0)
            mixed = (np.maximum(count - t.discount, 0.0) + t.discount * types * p) / np.where(seen, total, 1.0)
            p = np.where(seen, mixed, p)
        return p

    def log_prob(self, tokens: np.ndarray) -> np.ndarray:
        """Natural-log P(tokens[i] | up to order-1 previous tokens) for i = 1 .. len-1; shape (len-1,)."""
        tokens = np.asarray(tokens).astype(np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size={self.vocab_size})")
        out = np.empty(max(tokens.size - 1, 0), dtype=np.float64)
        for start in range(1, tokens.size, _CHUNK):
            pos = np.arange(start, min(start + _CHUNK, tokens.size))
            out[start - 1 : pos[-1]] = np.log(self._prob(_history(tokens, pos, self.order - 1), tokens[pos]))
        return out

    def probs(self, context: Sequence[int]) -> np.ndarray:
        """The full next-token distribution (vocab_size,) after ``context`` (only its last order-1 ids matter)."""
        ctx = np.asarray(list(context)[-(self.order - 1) :] if self.order > 1 else [], dtype=np.int64)
        history = np.full((self.vocab_size, self.order - 1), -1, dtype=np.int64)
        if ctx.size:
            history[:, -ctx.size :] = ctx
        return self._prob(history, np.arange(self.vocab_size))
