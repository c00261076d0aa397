"""Contamination of evaluation sets: which examples share a word 13-gram with the training data.

As in the GPT-3 paper and lm-evaluation-harness' decontamination, text is normalized to
words (lowercase, punctuation removed, split on whitespace; :func:`normalize_words`) and
an evaluation example is *contaminated* when one of its word 13-grams occurs anywhere in
the training texts. An example shorter than 13 words has no 13-gram; it is checked whole:
with ``min_words <= k < 13`` words, as one k-gram looked up among the training k-grams;
with fewer than ``min_words``, only an exact match with a whole (normalized) training text
counts, because a phrase of a few words occurs in any large corpus by chance.

The training side is an :class:`NGramIndex`: sorted unique 64-bit hashes of the training
texts' n-grams, 8 bytes per distinct n-gram and per length indexed (~20 MB for 2.5M words
of books at n = 13), about three times that while it is built. The texts themselves are
not kept. Hashes are deterministic (blake2b per word, a polynomial over the words of an
n-gram, a splitmix64 finalizer), so results do not depend on the process or the machine.

Also here: the texts of token shards (documents between ``<|endoftext|>`` ids) and of
rendered ChatML training rows, which are what a model was trained on. This module knows
nothing of Dagster and of how the sets are produced.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcore.data.tokenizer import Tokenizer

_NOT_WORD = re.compile(r"[^\w\s]|_")
_P = np.uint64(0x100000001B3)  # an odd 64-bit multiplier (the FNV prime)
_COMPACT = 1 << 22  # merge pending hashes into the sorted array every ~4M (32 MB)


@dataclass(kw_only=True, frozen=True)
class ContaminationConfig:
    """How evaluation examples are checked against the training data, and what is reported."""

    n: int = 13
    """Words per n-gram (13, as GPT-3 and lm-evaluation-harness)."""
    min_words: int = 8
    """Examples shorter than ``n`` words but with at least this many are checked whole, as one k-gram;
    shorter ones only by exact match with a whole training text (8 is GPT-3's smallest n)."""
    threshold: float = 0.05
    """The blocking check fails when a set's contaminated fraction exceeds this, in [0, 1]."""
    max_listed: int = 20
    """Contaminated examples listed per set in the report (the first ones)."""
    snippet_chars: int = 160
    """Characters of each listed example's text."""

    def __post_init__(self) -> None:
        problems = []
        if self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        if not 1 <= self.min_words <= self.n:
            problems.append(f"min_words must be in [1, n={self.n}], got {self.min_words}")
        if not 0.0 <= self.threshold <= 1.0:
            problems.append(f"threshold must be a fraction in [0, 1], got {self.threshold}")
        if self.max_listed < 0 or self.snippet_chars < 1:
            problems.append(
                f"max_listed must be >= 0 and snippet_chars >= 1, got {self.max_listed}, {self.snippet_chars}"
            )
        if problems:
            raise ValueError("invalid ContaminationConfig: " + "; ".join(problems))


# ---------------------------------------------------------------- words and hashes


def normalize_words(text: str) -> list[str]:
    """Lowercase, delete punctuation and symbols (``_`` too), split on whitespace."""
    return _NOT_WORD.sub("", text.lower()).split()


@functools.lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _word_hashes(words: Sequence[str]) -> np.ndarray:
    return np.fromiter((_word_hash(w) for w in words), dtype=np.uint64, count=len(words))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit reaches every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """The hash of every word n-gram, in order: ``len(word_hashes) - n + 1`` of them (none when shorter)."""
    count = word_hashes.size - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    for j in range(n):
        h = h * _P + word_hashes[j : j + count]  # wraps mod 2**64
    return _mix(h)


def _whole_hash(words: Sequence[str]) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(words).encode("utf-8"), digest_size=8).digest(), "little")


# ---------------------------------------------------------------- the training-side index


class NGramIndex:
    """Sorted unique hashes of the word n-grams of some training texts, for each indexed length.

    Build it with :meth:`build`; it also keeps one hash per whole training text (for the
    exact-match test of very short examples).
    """

    def __init__(self, hashes: dict[int, np.ndarray], whole: np.ndarray, texts: int, words: int) -> None:
        self.hashes, self.whole, self.texts, self.words = hashes, whole, texts, words

    @classmethod
    def build(cls, texts: Iterable[str], *, lengths: Collection[int] = (13,)) -> NGramIndex:
        """Index the n-grams of each length in ``lengths`` over ``texts`` (streamed; the texts are not kept)."""
        if not lengths or min(lengths) < 1:
            raise ValueError(f"lengths must be positive n-gram sizes, got {sorted(lengths)}")
        done = {n: np.empty(0, dtype=np.uint64) for n in lengths}
        pending: dict[int, list[np.ndarray]] = {n: [] for n in lengths}
        whole: list[int] = []
        n_texts = n_words = waiting = 0
        for text in texts:
            words = normalize_words(text)
            n_texts, n_words = n_texts + 1, n_words + len(words)
            if not words:
                continue
            whole.append(_whole_hash(words))
            wh = _word_hashes(words)
            for n in lengths:
                pending[n].append(ngram_hashes(wh, n))
            waiting += len(words) * len(lengths)
            if waiting >= _COMPACT:
                done, waiting = {n: np.unique(np.concatenate([done[n], *pending[n]])) for n in lengths}, 0
                pending = {n: [] for n in lengths}
        done = {n: np.unique(np.concatenate([done[n], *pending[n]])) for n in lengths}
        return cls(done, np.unique(np.asarray(whole, dtype=np.uint64)), n_texts, n_words)

    @property
    def nbytes(self) -> int:
        """Memory of the hashes."""
        return sum(a.nbytes for a in self.hashes.values()) + self.whole.nbytes

    def summary(self) -> dict[str, int]:
        return {
            "texts": self.texts,
            "words": self.words,
            "ngrams": int(sum(a.size for a in self.hashes.values())),
            "bytes": self.nbytes,
        }

    def contains(self, n: int, hashes: np.ndarray) -> np.ndarray:
        """Whether each hash of an n-gram is in the index (boolean array)."""
        if n not in self.hashes:
            raise ValueError(
                f"no {n}-grams indexed (have {sorted(self.hashes)}); build with lengths=required_lengths(...)"
            )
        table = self.hashes[n]
        if not table.size or not hashes.size:
            return np.zeros(hashes.size, dtype=bool)
        pos = np.minimum(np.searchsorted(table, hashes), table.size - 1)
        return table[pos] == hashes

    def has_text(self, words: Sequence[str]) -> bool:
        """Whether some indexed training text normalizes to exactly ``words``."""
        h = np.uint64(_whole_hash(words))
        pos = int(np.searchsorted(self.whole, h))
        return pos < self.whole.size and self.whole[pos] == h


def required_lengths(example_sets: Iterable[Iterable[str]], config: ContaminationConfig) -> set[int]:
    """The n-gram lengths an index must hold to check these examples: ``n`` and each short length used."""
    lengths = {config.n}
    for texts in example_sets:
        lengths.update(k for k in map(len, map(normalize_words, texts)) if config.min_words <= k < config.n)
    return lengths


# ---------------------------------------------------------------- checking examples


@dataclass(frozen=True)
class Match:
    """Why an evaluation example counts as contaminated."""

    ngram: str
    """The matched normalized words (an n-gram, the whole short example, or its whole text)."""
    source: str
    """Name of the training set it was found in."""


def _match(words: list[str], index: NGramIndex, config: ContaminationConfig) -> str | None:
    k = len(words)
    if k >= config.n:
        hit = index.contains(config.n, ngram_hashes(_word_hashes(words), config.n))
        pos = int(np.argmax(hit)) if hit.any() else -1
        return " ".join(words[pos : pos + config.n]) if pos >= 0 else None
    if k >= config.min_words:
        return " ".join(words) if index.contains(k, ngram_hashes(_word_hashes(words), k))[0] else None
    return " ".join(words) if k and index.has_text(words) else None


def find_contamination(
    texts: Sequence[str], indexes: Mapping[str, NGramIndex], config: ContaminationConfig
) -> list[Match | None]:
    """For each evaluation text, the first training set (in ``indexes`` order) it overlaps, or None (clean)."""
    out: list[Match | None] = []
    for text in texts:
        words = normalize_words(text)
        found = None
        for name, index in indexes.items():
            if (ngram := _match(words, index, config)) is not None:
                found = Match(ngram, name)
                break
        out.append(found)
    return out


def contamination_report(
    texts: Sequence[str],
    matches: Sequence[Match | None],
    config: ContaminationConfig,
    *,
    checked_against: Sequence[str],
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One set's figures: examples, contaminated count and fraction, short examples, the first contaminated ones."""
    if len(texts) != len(matches) or (ids is not None and len(ids) != len(texts)):
        raise ValueError(f"{len(texts)} texts, {len(matches)} matches and {len(ids or texts)} ids must be as many")
    bad = [i for i, m in enumerate(matches) if m is not None]
    listed = []
    for i in bad[: config.max_listed]:
        m = matches[i]
        assert m is not None
        text = " ".join(texts[i].split())
        snippet = text if len(text) <= config.snippet_chars else text[: config.snippet_chars - 1] + "…"
        listed.append(
            {
                "index": i,
                **({"id": ids[i]} if ids is not None else {}),
                "text": snippet,
                "ngram": m.ngram,
                "source": m.source,
            }
        )
    return {
        "examples": len(texts),
        "contaminated": len(bad),
        "fraction": len(bad) / len(texts) if texts else 0.0,
        "short_examples": sum(len(normalize_words(t)) < config.n for t in texts),
        "checked_against": list(checked_against),
        "listed": listed,
    }


# ---------------------------------------------------------------- what a model was trained on


def shard_documents(arrays: Iterable[np.ndarray], eot_id: int) -> Iterator[np.ndarray]:
    """The token ids of each document of a split's shards, in order: the runs before each ``eot_id``.

    A document may continue from one shard into the next; ids after the last ``eot_id`` form a last document.
    """
    carry: list[np.ndarray] = []
    for a in arrays:
        start = 0
        for end in np.flatnonzero(a == eot_id).tolist():
            yield np.concatenate([*carry, a[start:end]]) if carry else a[start:end]
            carry, start = [], end + 1
        if start < a.size:
            carry.append(a[start:])
    if carry:
        yield np.concatenate(carry)


def shard_texts(tokenizer: Tokenizer, arrays: Iterable[np.ndarray], eot_id: int, batch: int = 256) -> Iterator[str]:
    """The decoded text of each document of a split's token shards (what a model trained on them read)."""
    docs: list[list[int]] = []
    for ids in shard_documents(arrays, eot_id):
        docs.append(ids.tolist())
        if len(docs) == batch:
            yield from tokenizer.decode_batch(docs)
            docs = []
    if docs:
        yield from tokenizer.decode_batch(docs)


def chatml_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The message contents of a rendered (possibly packed) ChatML row, one per line, system messages left out.

    Each message is ``<|im_start|>role\\ncontent<|im_end|>``; the role line is dropped so that a
    training conversation reads like the ``prompt + reference`` of a held-out one.
    """
    contents, start = [], None
    for i, t in enumerate(ids):
        if t == tokenizer.im_start_id:
            start = i + 1
        elif t == tokenizer.im_end_id and start is not None:
            role, _, content = tokenizer.decode(list(ids[start:i])).partition("\n")
            if role.strip() != "system":
                contents.append(content)
            start = None
    return "\n".join(contents)


def conversation_text(messages: Sequence[Mapping[str, str]], reference: str = "") -> str:
    """The non-system message contents of a conversation, then ``reference``, one per line."""
    return "\n".join([*(m["content"] for m in messages if m["role"] != "system"), reference])
