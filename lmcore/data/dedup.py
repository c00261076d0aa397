"""Document deduplication: exact (content digest) and near-duplicate (MinHash LSH).

Each deduper is a stateful filter: call it on documents in order and it returns
``(keep, reason)`` like the other filters in :mod:`lmcore.data.clean`, remembering every
document it keeps, so the first copy survives and later copies are dropped.

Across partitions, cleaning writes each kept document's *signature* (:func:`signature_row`:
content digest, and the MinHash when near dedup is on) and :func:`resolve_duplicates`
decides over all signatures at once, feeding them to the dedupers in ``doc_id`` order:
the copy with the smallest ``doc_id`` survives, whatever the partitioning, the order the
partitions ran in or the number of workers. Only signatures are read again when the corpus
grows, never the texts. State is the only memory that grows with the corpus: 16 bytes per
kept document for exact dedup; for near dedup one signature (``num_perm`` x 4 bytes) plus
the LSH band keys. This module knows nothing of files, shards or pipeline stages.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import deque
from collections.abc import Iterator

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

EXACT_REASON = "exact_duplicate"
NEAR_REASON = "near_duplicate"

_WORD = re.compile(r"\w+")
_BATCH = 4096  # shingles hashed per numpy step; bounds the (shingles x num_perm) temporary


class ExactDeduper:
    """Drop a document whose exact text was kept before (blake2b-128 digest of its UTF-8).

    A stable cryptographic digest, not Python's salted ``hash`` or polars' version-bound
    hash, so runs agree across processes and library versions and collisions are negligible.
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def __call__(self, text: str) -> tuple[bool, str | None]:
        return self.check(content_digest(text))

    def check(self, digest: bytes) -> tuple[bool, str | None]:
        """The filter on a precomputed :func:`content_digest`."""
        if digest in self._seen:
            return False, EXACT_REASON
        self._seen.add(digest)
        return True, None


def content_digest(text: str) -> bytes:
    """blake2b-128 of the UTF-8 text: what exact dedup compares."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def iter_shingles(text: str, n: int) -> Iterator[bytes]:
    """Lowercased word ``n``-grams of ``text`` as UTF-8 bytes (the whole text when shorter), one at a time: a
    document's words are never all held at once."""
    window: deque[str] = deque(maxlen=n)
    for match in _WORD.finditer(text.lower()):
        window.append(match.group())
        if len(window) == n:
            yield " ".join(window).encode("utf-8")
    if len(window) < n:
        yield " ".join(window).encode("utf-8")


def shingles(text: str, n: int) -> list[bytes]:
    """:func:`iter_shingles` as a list."""
    return list(iter_shingles(text, n))


class NearDeduper:
    """Drop a document whose word-shingle Jaccard similarity to a kept one is >= ``threshold``.

    MinHash signatures (datasketch, seeded, so deterministic) go into an LSH index; an LSH
    candidate only counts when the signatures' estimated Jaccard really reaches the
    threshold, which removes the index's false positives.
    """

    def __init__(self, *, threshold: float = 0.8, num_perm: int = 128, seed: int = 0, ngram: int = 5) -> None:
        problems = []
        if not 0.0 < threshold < 1.0:
            problems.append(f"threshold must be in (0, 1), got {threshold}")
        if num_perm < 2:
            problems.append(f"num_perm must be >= 2, got {num_perm}")
        if not 0 <= seed < 2**32:
            problems.append(f"seed must be in [0, 2**32), got {seed}")
        if ngram < 1:
            problems.append(f"ngram must be >= 1, got {ngram}")
        if problems:
            raise ValueError("; ".join(problems))
        self.threshold = threshold
        self.ngram = ngram
        self._template = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._signatures)

    def signature(self, text: str) -> MinHash:
        """The MinHash of ``text``'s shingles, hashed in bounded batches."""
        m = MinHash(
            num_perm=self._template.num_perm,
            seed=self._template.seed,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        grams = iter_shingles(text, self.ngram)
        while batch := list(itertools.islice(grams, _BATCH)):
            m.update_batch(batch)
        return m

    def __call__(self, text: str) -> tuple[bool, str | None]:
        return self.check(self.signature(text).hashvalues)

    def check(self, hashvalues: np.ndarray) -> tuple[bool, str | None]:
        """The filter on a precomputed signature (``signature(text).hashvalues``)."""
        m = LeanMinHash(seed=self._template.seed, hashvalues=np.asarray(hashvalues), scheme=self._template.scheme)
        for key in self._lsh.query(m):
            if float(np.mean(self._signatures[key] == m.hashvalues)) >= self.threshold:
                return False, NEAR_REASON
        key = len(self._signatures)
        self._signatures.append(m.hashvalues.copy())
        self._lsh.insert(key, m, check_duplication=False)
        return True, None


def resolve_duplicates(
    doc_ids: list[str],
    digests: list[bytes],
    signatures: list[np.ndarray] | None,
    *,
    exact: bool,
    near: NearDeduper | None,
) -> dict[str, str]:
    """``doc_id -> reason`` for every duplicate among the given documents; the rest are kept.

    Documents are judged in ``doc_id`` order (each against the kept ones before it), so the
    answer depends on the set of documents only. ``signatures`` are the MinHash hash values,
    needed when ``near`` is given.
    """
    exact_dedup = ExactDeduper() if exact else None
    dropped: dict[str, str] = {}
    for i in sorted(range(len(doc_ids)), key=doc_ids.__getitem__):
        if exact_dedup is not None:
            keep, reason = exact_dedup.check(digests[i])
            if not keep:
                dropped[doc_ids[i]] = reason  # type: ignore[assignment]
                continue
        if near is not None:
            assert signatures is not None, "near dedup needs the documents' signatures"
            keep, reason = near.check(signatures[i])
            if not keep:
                dropped[doc_ids[i]] = reason  # type: ignore[assignment]
    return dropped
