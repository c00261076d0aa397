"""An optional faster encoder for the pipeline's byte-level BPE: tiktoken, built from ``tokenizer.json``'s vocabulary
and merges, used only where a check proves its ids equal to the HF tokenizer's.

:func:`fast_encoder` builds it, or raises :class:`NotExpressible` saying why tiktoken cannot hold this tokenizer
(tiktoken not installed, a normalizer, a pre-tokenizer other than byte-level with a plain regex, merges whose order
is not the order of their ids, ...). :func:`choose_encoder` encodes a sample of documents, cut as the encode path
cuts them, with both, and hands back tiktoken only if every id list is equal; otherwise HF, with the reason (the
document and the first differing position). Equal ids on the sample are evidence, not proof, for the rest; what makes
equality likely is that tiktoken's ranks are the ids, which follow the merge order. tiktoken is imported only here and
only when asked for (``pip install 'lmpipe[fast]'``). This module knows nothing of shards or Dagster.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmcore.data.tokenizer import Tokenizer, cut_long_runs
from lmcore.io import read_json, write_json

ENCODERS = ("hf", "tiktoken")
ENCODER_FILE = "encoder.json"
INSTALL_HINT = "pip install 'lmpipe[fast]'"
BYTE_LEVEL_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
"""The split of HF's ``ByteLevel(use_regex=True)`` pre-tokenizer (GPT-2's), as in ``tokenizers``' byte_level.rs."""
_MODEL_DEFAULTS = {
    "dropout": None,
    "unk_token": None,
    "continuing_subword_prefix": None,
    "end_of_word_suffix": None,
    "byte_fallback": False,
}  # ignore_merges either way: true is tiktoken's own habit (a whole word in the vocabulary is that token)
_PLAIN_ADDED = {"single_word": False, "lstrip": False, "rstrip": False}  # "normalized" is moot without a normalizer


class IdEncoder(Protocol):
    """What the encode path needs: the ``<|endoftext|>`` id and ``encode_ids`` (as :meth:`Tokenizer.encode_ids`)."""

    eot_id: int

    def encode_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


class NotExpressible(ValueError):
    """tiktoken cannot reproduce this tokenizer (or is not installed); the message says why."""


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """HF's (GPT-2's) byte-level alphabet back to bytes: each of the 256 bytes is one printable character."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _token_bytes(token: str) -> bytes:
    table = byte_decoder()
    if any(c not in table for c in token):
        raise NotExpressible(f"vocabulary token {token!r} is not in the byte-level alphabet")
    return bytes(table[c] for c in token)


def _pattern(pre: dict[str, Any] | None) -> str:
    """tiktoken's ``pat_str`` for HF's pre-tokenizer: ``ByteLevel`` with its regex, or a regex ``Split``
    (isolated) followed by ``ByteLevel`` without one (the Llama 3 / Qwen 2 layout)."""
    if pre is None:
        raise NotExpressible("the tokenizer has no pre-tokenizer (not byte-level)")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    last = steps[-1]
    if kinds[-1] != "ByteLevel" or last.get("add_prefix_space"):
        raise NotExpressible(
            f"pre-tokenizer {kinds} is not expressible: it must end in ByteLevel(add_prefix_space=false)"
        )
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return BYTE_LEVEL_REGEX
    if len(steps) == 2 and kinds[0] == "Split" and not last.get("use_regex", True):
        split = steps[0]
        regex = split.get("pattern", {}).get("Regex")
        if regex is not None and split.get("behavior") == "Isolated" and not split.get("invert"):
            return regex
    raise NotExpressible(f"pre-tokenizer {json.dumps(pre)[:300]} is not expressible as one tiktoken regex")


def _ranks(model: dict[str, Any], specials: dict[str, int]) -> dict[bytes, int]:
    """The vocabulary as tiktoken's ``mergeable_ranks`` (rank = id), after checking that ranking merges by id is
    ranking them in HF's merge order and that every token but the 256 bytes is made by exactly one merge."""
    odd = {k: model.get(k) for k, v in _MODEL_DEFAULTS.items() if model.get(k, v) != v}
    if model.get("type") != "BPE" or odd:
        raise NotExpressible(f"model {model.get('type')} {odd or ''} is not a plain byte-level BPE")
    vocab = {t: i for t, i in model["vocab"].items() if t not in specials}
    alphabet = set(byte_decoder())
    if missing := sorted(alphabet - set(vocab)):
        raise NotExpressible(f"the vocabulary lacks {len(missing)} of the 256 byte tokens, e.g. {missing[:3]}")
    previous, made = -1, set()
    for rank, merge in enumerate(model["merges"]):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        new = vocab.get(left + right)
        if new is None or new <= previous:
            raise NotExpressible(
                f"merge #{rank} ({left!r}, {right!r}) makes {'no vocabulary token' if new is None else f'id {new}'}, "
                f"after id {previous}: tiktoken ranks merges by id, so ids must follow the merge order"
            )
        previous = new
        made.add(left + right)
    if stray := sorted(set(vocab) - made - alphabet):
        raise NotExpressible(f"{len(stray)} vocabulary token(s) are made by no merge, e.g. {stray[:3]}")
    return {_token_bytes(t): i for t, i in vocab.items()}


def _specials(added: list[dict[str, Any]]) -> dict[str, int]:
    """HF's added tokens as tiktoken special tokens: each must match its exact text, as HF's plain ones do."""
    odd = [t["content"] for t in added if any(t.get(k, v) != v for k, v in _PLAIN_ADDED.items())]
    if odd:
        raise NotExpressible(f"added tokens {odd[:3]} use lstrip/rstrip/single_word, which tiktoken lacks")
    return {t["content"]: t["id"] for t in added}


class FastEncoder:
    """tiktoken over the same vocabulary; ``encode_ids`` as :meth:`Tokenizer.encode_ids` (special tokens written in a
    text are those tokens, as HF has it), one text at a time into numpy, on this thread."""

    def __init__(self, encoding: Any, eot_id: int) -> None:
        self.encoding = encoding
        self.eot_id = eot_id
        self._special = frozenset(encoding.special_tokens_set)

    def encode_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encode = functools.partial(self.encoding.encode_to_numpy, allowed_special=self._special, disallowed_special=())
        arrays = [encode(t) for t in texts]
        sizes = np.fromiter((a.size for a in arrays), np.int64, count=len(arrays))
        return (np.concatenate(arrays) if arrays else np.empty(0, np.uint32)), sizes


def fast_encoder(tokenizer: Tokenizer) -> FastEncoder:
    """tiktoken built from ``tokenizer``'s ``tokenizer.json``; :class:`NotExpressible` naming why it cannot be."""
    try:
        import tiktoken
    except ImportError as e:
        raise NotExpressible(f"tiktoken is not installed; {INSTALL_HINT}") from e
    spec = json.loads(tokenizer.hf.to_str())
    if spec.get("normalizer") is not None:
        raise NotExpressible(f"the tokenizer has a normalizer ({spec['normalizer'].get('type')}), which tiktoken lacks")
    specials = _specials(spec.get("added_tokens", []))
    pattern = _pattern(spec.get("pre_tokenizer"))
    ranks = _ranks(spec["model"], specials)
    encoding = tiktoken.Encoding("lmpipe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    return FastEncoder(encoding, tokenizer.eot_id)


@dataclass(frozen=True)
class EncoderChoice:
    """Which encoder a tokenization used and why: ``reason`` is set when ``tiktoken`` was asked for but refused."""

    requested: str
    used: str
    reason: str | None = None
    checked_documents: int = 0
    checked_chars: int = 0

    def save(self, root: str | Path) -> None:
        """Write the record as ``root/encoder.json``."""
        write_json(Path(root) / ENCODER_FILE, asdict(self))

    @classmethod
    def load(cls, root: str | Path) -> EncoderChoice | None:
        """The record under ``root`` (None where there is none: shards written before it was kept)."""
        path = Path(root) / ENCODER_FILE
        return cls(**read_json(path)) if path.exists() else None


def first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    """The first index where two id arrays differ (the shorter one's length if one is a prefix), else None."""
    n = min(a.size, b.size)
    where = np.flatnonzero(a[:n] != b[:n])
    if where.size:
        return int(where[0])
    return n if a.size != b.size else None


def check_identity(
    tokenizer: Tokenizer, fast: IdEncoder, docs: Sequence[tuple[str, str]], max_word_chars: int
) -> str | None:
    """Encode each ``(doc_id, text)`` cut as the encode path cuts it (:func:`cut_long_runs`) with both encoders;
    None when every document's ids are equal, else the first difference: the document, the token position, the
    ids and the text around it."""
    for doc, text in docs:
        pieces = cut_long_runs(text, max_word_chars)
        want, got = tokenizer.encode_ids(pieces)[0], fast.encode_ids(pieces)[0]
        if (at := first_difference(want, got)) is not None:
            near = tokenizer.decode(want[max(0, at - 4) : at + 4].tolist(), skip_special_tokens=False)
            return (
                f"document {doc!r}: ids differ first at token {at} (hf {want[at : at + 3].tolist()}, tiktoken "
                f"{got[at : at + 3].tolist()}) near {near[:80]!r}"
            )
    return None


def choose_encoder(
    tokenizer: Tokenizer, requested: str, sample: Iterable[tuple[str, str]], max_word_chars: int, check_chars: int
) -> tuple[IdEncoder, EncoderChoice]:
    """The encoder to use, and the record of the choice. ``hf``: the tokenizer itself. ``tiktoken``: the fast
    encoder if it can be built and :func:`check_identity` finds no difference on the first ``check_chars``
    characters of ``sample`` (the last document checked up to there: one huge document is not encoded twice);
    otherwise the tokenizer, with the reason (the ids are the same either way: HF's are the reference)."""
    if requested not in ENCODERS:
        raise ValueError(f"encoder={requested!r}: choose one of {', '.join(ENCODERS)}")
    if requested == "hf":
        return tokenizer, EncoderChoice(requested=requested, used="hf")
    docs, left = [], check_chars
    for doc, text in sample:
        if left <= 0:
            break
        docs.append((doc, text[:left]))
        left -= len(docs[-1][1])
    count = {"checked_documents": len(docs), "checked_chars": check_chars - left}
    try:
        fast = fast_encoder(tokenizer)
    except NotExpressible as e:
        return tokenizer, EncoderChoice(requested=requested, used="hf", reason=str(e))
    if (reason := check_identity(tokenizer, fast, docs, max_word_chars)) is not None:
        return tokenizer, EncoderChoice(requested=requested, used="hf", reason=reason, **count)
    return fast, EncoderChoice(requested=requested, used="tiktoken", **count)
