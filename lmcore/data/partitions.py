"""Hash buckets of the corpus: the partition each unit belongs to.

A unit is a source file, a part of a local file larger than ``CorpusConfig.unit_bytes`` (key
``<file key>@<index>``: byte ranges of JSON Lines, row groups of Parquet, see
``lmcore.data.sources.ranges``), or a whole non-file source. A unit's partition is a pure function of its key
(its name under its source's label, see ``lmcore.data.sources``), so it never moves when other files come or
go: adding a file touches only the partitions of its units, and every stage of the other partitions is left
alone. The parts of one large file fall in different partitions, so it is read, cleaned and tokenized on
several cores.
There are :data:`PARTITION_COUNT` buckets whatever the corpus size, so the number of
partitions (and of Dagster steps and small files per stage) stays bounded; a bucket's
size grows with the corpus, and each stage streams through it with fixed buffers.
Changing the count re-buckets every unit, so it is a constant, not a setting.
"""

from __future__ import annotations

import hashlib

PARTITION_COUNT = 16
PARTITIONS = tuple(f"{i:02d}" for i in range(PARTITION_COUNT))
"""Partition keys ``00`` .. ``15``."""


def partition_of(unit_key: str) -> str:
    """The partition of a unit: the first 8 bytes of sha256 of its key, modulo :data:`PARTITION_COUNT`."""
    value = int.from_bytes(hashlib.sha256(unit_key.encode("utf-8")).digest()[:8], "big")
    return PARTITIONS[value % PARTITION_COUNT]
