"""Where a data stage's time goes: a cProfile of one ``lmpipe run`` attributed to lmcore's work per category.

Each lmcore function's own time goes to its category (by module, then by name); other code's (C calls, regexes,
pyarrow) to its callers' (stage, category) in proportion to the time spent under each, the usual gprof assumption
for shared functions. ``benchmarks/data_scale.py`` runs the profile and prints the table.
"""

from pathlib import Path
from typing import Any

READ, FILTERS, SIGNATURES, ENCODE, WRITE = "read/decompress/parse", "filters", "dedup signatures", "encode", "write"
SPLIT, TRAIN, DIGESTS, OTHER = "split/dedup judge", "bpe training (child)", "digests", "other lmcore"
_MODULES = {  # lmcore module -> category of its functions (exceptions by function name in _NAMES)
    "sources": READ,
    "corpus": READ,
    "clean": FILTERS,
    "filters": FILTERS,
    "reflow": FILTERS,
    "dedup": SIGNATURES,
    "splits": SPLIT,
    "tokenizer": ENCODE,
    "fast_encoder": ENCODE,
    "shards": ENCODE,
    "publish": WRITE,
}
_NAMES = {
    "_sign": SIGNATURES,
    "signature_schema": SIGNATURES,
    "_kept_documents": READ,
    "run_in_child": TRAIN,
    "train_tokenizer": TRAIN,
    "_write_records": WRITE,
    "write_manifest": WRITE,
    "assemble_shards": WRITE,
    "_write_shard": WRITE,
    "__exit__": WRITE,
    "verify_dir": DIGESTS,
    "verify_file": DIGESTS,
}


_ENTRIES = {  # the lmcore call of each stage: shared code above it (build_partitions, publish) hides whose it is
    ("data/corpus.py", "build_raw_corpus"): "raw_corpus",
    ("data/clean.py", "clean_corpus"): "clean_corpus",
    ("data/splits.py", "split_corpus"): "splits",
    ("workers.py", "run_in_child"): "tokenizer",
    ("data/shards.py", "tokenize_partition"): "tokenized",
    ("data/shards.py", "assemble_shards"): "token_shards",
}


def _category(key: tuple[str, int, str]) -> str | None:
    """The category of an lmcore function (by module, then name); None for code outside lmcore and for imports."""
    path, _, name = key
    if "/lmcore/" not in path or name == "<module>":
        return None
    rel = path.split("/lmcore/", 1)[1].removesuffix(".py").split("/")
    if name in _NAMES:
        return _NAMES[name]
    if rel[-1] == "io":
        if "sha256" in name or "digest" in name:
            return DIGESTS
        return WRITE if any(w in name for w in ("write", "Writer", "atomic", "flush", "close", "link")) else READ
    return _MODULES.get(rel[-1]) or _MODULES.get(rel[-2] if len(rel) > 1 else "", OTHER)


def attribute(prof: Path, stages: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Seconds per stage and category in a cProfile file of one run: a stage is everything under its asset function
    or its lmcore call (``_ENTRIES``); an lmcore function's own time goes to its category, other code's to its
    callers' (stage, category) in proportion to the time spent under each, so a C call, a regex or pyarrow is charged
    to the lmcore work that called it (the usual gprof assumption for shared functions)."""
    import pstats

    stats = pstats.Stats(str(prof)).stats
    memo: dict[Any, dict[tuple[str | None, str], float]] = {}

    def share(key: Any, stack: frozenset) -> dict[tuple[str | None, str], float]:
        if key in memo:
            return memo[key]
        if "/assets/" in key[0] and key[2] in stages:
            return memo.setdefault(key, {(key[2], "asset, not lmcore"): 1.0})
        entry = next((st for (f, n), st in _ENTRIES.items() if key[2] == n and key[0].endswith(f"/lmcore/{f}")), None)
        if entry is not None:
            return memo.setdefault(key, {(entry, _category(key) or OTHER): 1.0})
        callers = {c: v[3] for c, v in stats[key][4].items() if c != key and c not in stack and c in stats}
        total, own = sum(callers.values()), _category(key)
        out: dict[tuple[str | None, str], float] = {} if total else {(None, "outside"): 1.0}
        for caller, ct in callers.items():
            for (stage, label), w in share(caller, stack | {key}).items():
                label = own if own is not None and stage is not None else label
                out[stage, label] = out.get((stage, label), 0.0) + w * ct / total
        return memo.setdefault(key, out) if len(callers) == len(stats[key][4]) - (key in stats[key][4]) else out

    seconds: dict[str, dict[str, float]] = {s: {} for s in stages}
    for key, (_, _, tt, _, _) in stats.items():
        for (stage, label), w in share(key, frozenset()).items():
            if stage is not None:
                seconds[stage][label] = seconds[stage].get(label, 0.0) + w * tt
    return seconds
