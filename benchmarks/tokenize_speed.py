"""Tokenization speed in one process: the ``tokenized`` stage's code against a bare HF encode loop and against the
tiktoken encoder, on the same texts, paired runs; and one 10 MB document without whitespace beside 10 MB of prose.
``benchmarks/data_scale.py --tokenize-only`` runs it (its docstring lists the figures).
"""

import functools
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from books import say


def _timed(fn: Any) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()`` (CPU: of this process, every thread)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _doc_shards(base: Path, name: str, rows: list[str]) -> tuple[list[Path], dict[str, str]]:
    """Cleaned-document shards of ``rows`` (spec ``name``) and the train split of each."""
    from lmcore.io import ParquetShardWriter

    with ParquetShardWriter(base / name) as w:
        for i, text in enumerate(rows):
            w.write({"doc_id": f"{name}-{i}", "source": name, "spec": name, "text": text})
    return [base / name / s["path"] for s in w.shards], {f"{name}-{i}": "train" for i in range(len(rows))}


def _fast_or_reason(tok_path: Path, docs: list[str]) -> tuple[Any, str | None]:
    """The tiktoken encoder, when it can be built and gives HF's ids on every one of ``docs`` (cut as the stage cuts
    them); else None and the reason."""
    from lmcore.data.fast_encoder import NotExpressible, check_identity, fast_encoder
    from lmcore.data.tokenizer import MAX_WORD_CHARS, load_tokenizer

    tok = load_tokenizer(tok_path)
    try:
        fast = fast_encoder(tok)
    except NotExpressible as e:
        return None, str(e)
    reason = check_identity(tok, fast, [(str(i), d) for i, d in enumerate(docs)], MAX_WORD_CHARS)
    return (None, reason) if reason else (fast, None)


def _paired_seconds(kinds: dict[str, Any], parts: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Each kind's (wall, CPU) seconds per part and round, the kinds one right after the other in a rotating order."""
    seconds: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(rounds):
        for j in range(parts):
            turn = (j + r) % len(kinds)
            for k in list(kinds)[turn:] + list(kinds)[:turn]:
                seconds[k].append(_timed(functools.partial(kinds[k], j)))
    return seconds


def tokenize_speed(work: Path, texts: dict[str, str], rounds: int = 2) -> dict[str, Any]:
    """In this process, the books cut into 20,000-character documents, in parts of 100 documents (~2 MB): per part,
    ``tokenize_partition`` (the tokenized stage's work: Parquet in, shards out), its encode path ``encode_documents``
    and a bare ``encode_batch_fast`` call on the part's texts, each with the tokenizer loaded afresh as a partition
    does, one right after the other in a rotating order, ``rounds`` times. A ratio is the median over the parts of
    bare seconds / seconds: paired runs seconds apart, so the load of other processes on a shared machine mostly
    cancels (``_cpu``: the same by CPU seconds). Where tiktoken gives HF's ids on every document, the same two with
    ``encoder: tiktoken`` (the stage's own check included) against HF's: ``fast_encoder_vs_hf``. Then one 10 MB
    document without whitespace (the books' letters only: a single pre-token) beside 10 MB of those documents, each
    through ``tokenize_partition``."""
    from tokenizers import Tokenizer as HFTokenizer

    from lmcore.data.fast_encoder import fast_encoder
    from lmcore.data.shards import EncodeConfig, encode_documents, tokenize_partition
    from lmcore.data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    base, tok_path = work / "tokenize", work / "tokenize" / "tokenizer.json"
    docs = [t[i : i + 20_000] for t in texts.values() for i in range(0, len(t), 20_000)]
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    train_tokenizer(TokenizerConfig(vocab_size=8192), docs, tok_path)
    parts = [docs[i : i + 100] for i in range(0, len(docs), 100)]
    shards = [_doc_shards(base, f"part{j}", part) for j, part in enumerate(parts)]
    fast, refused = _fast_or_reason(tok_path, docs)

    def stage(name: str, paths: list[Path], splits_of: dict[str, str], encoder: str = "hf") -> bytes:
        shutil.rmtree(base / f"shards-{name}", ignore_errors=True)
        tokenize_partition(tok_path, paths, splits_of, base / f"shards-{name}", settings=EncodeConfig(encoder=encoder))
        return (base / f"shards-{name}" / "manifest.json").read_bytes()

    kinds = {
        "bare": lambda j: HFTokenizer.from_file(str(tok_path)).encode_batch_fast(parts[j], add_special_tokens=False),
        "encode": lambda j: list(encode_documents(load_tokenizer(tok_path), parts[j])),
        "stage": lambda j: stage("part", *shards[j]),
    }
    if fast is not None:
        kinds["fast_encode"] = lambda j: list(encode_documents(fast_encoder(load_tokenizer(tok_path)), parts[j]))
        kinds["fast_stage"] = lambda j: stage("fast", *shards[j], encoder="tiktoken")
    seconds = _paired_seconds(kinds, len(parts), rounds)

    def ratio(k: str, i: int, over: str = "bare") -> float:
        pairs = zip(seconds[over], seconds[k], strict=True)
        return round(statistics.median(b[i] / x[i] for b, x in pairs), 3)

    say("  tokenize: " + ", ".join(f"{k} {rounds * mb / sum(w for w, _ in v):.2f} MB/s" for k, v in seconds.items()))
    figures = {
        "tokenize_mb_per_s": {k: round(rounds * mb / sum(w for w, _ in v), 3) for k, v in seconds.items()},
        "tokenize_vs_bare_hf": ratio("stage", 0),
        "encode_vs_bare_hf": ratio("encode", 0),
        "tokenize_vs_bare_hf_cpu": ratio("stage", 1),
        "encode_vs_bare_hf_cpu": ratio("encode", 1),
        "fast_encoder_vs_hf": refused or ratio("fast_stage", 0, over="stage"),
    }
    if fast is not None:
        figures["fast_encoder_vs_hf_cpu"] = ratio("fast_stage", 1, over="stage")
        figures["fast_encode_vs_hf"] = ratio("fast_encode", 0, over="encode")
        figures["fast_encode_vs_hf_cpu"] = ratio("fast_encode", 1, over="encode")
        figures["fast_encoder_identical_shards"] = all(
            stage("part", *shards[j]) == stage("fast", *shards[j], encoder="tiktoken") for j in range(len(parts))
        )
    return figures | long_words(base, texts, docs, stage, tiktoken=fast is not None)


def long_words(base: Path, texts: dict[str, str], docs: list[str], stage: Any, *, tiktoken: bool) -> dict[str, Any]:
    """Seconds of the stage on one 10 MB document without whitespace and on 10 MB of ``docs`` (and with tiktoken)."""
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    letters = "".join(c for c in "".join(texts.values()) if c.isalpha())
    long_doc = (letters * (10_000_000 // len(letters) + 1))[:10_000_000]
    prose = [docs[i % len(docs)] for i in range(round(len(docs) * 10 / mb))]
    cases = {
        "no_whitespace_10mb": _doc_shards(base, "long", [long_doc]),
        "prose_10mb": _doc_shards(base, "prose", prose),
    }
    out = {}
    for name, (paths, splits_of) in cases.items():
        for encoder in ("hf", "tiktoken") if tiktoken else ("hf",):
            key = name if encoder == "hf" else f"{name}_tiktoken"
            out[key] = round(_timed(functools.partial(stage, key, paths, splits_of, encoder))[0], 2)
    say(f"  tokenize: one 10 MB run of letters / 10 MB of prose: {out}")
    return {"long_word_seconds": out}
