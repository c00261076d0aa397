"""Byte-level BPE tokenizer training with HF ``tokenizers``, deterministic by construction.

The tokenizer is trained on a bounded, deterministic sample of the train split only. Special
tokens take the first ids in a fixed order, so ``<|endoftext|>`` is always 0 and ``<|pad|>`` 1. Same corpus and config
give a byte-identical ``tokenizer.json``. :class:`Tokenizer` is what the rest of lmcore
takes: the HF tokenizer with its special ids looked up once, a word cache sized for corpora,
and ``encode_ids`` into numpy. :func:`cut_long_runs` bounds words, for training and encoding
alike. This module knows nothing of shards or models.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmcore.io import atomic_path, sha256_file

EOT = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOT, PAD, IM_START, IM_END)
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
GROWTH_POLICIES = ("keep", "retrain")
MAX_VOCAB = 1 << 20
"""1,048,576: four times the largest vocabularies in use (~256k). Ids must fit the uint32 shards and
the trainer's u32 ids (at 2**32 it aborts the process in a Rust allocation), and long before that the
embedding table (vocab_size x n_embd) outweighs any model this pipeline trains."""
MAX_WORD_CHARS = 1000
"""The default bound on a run of non-space characters, in training (``TokenizerConfig.max_word_chars``); encoding
(``lmcore.data.shards.EncodeConfig.max_word_chars``) uses the value the tokenizer was trained with, which the
tokenized asset reads from its manifest: see :func:`cut_long_runs`."""
WORD_CACHE = 1 << 18
"""Entries of the BPE word cache (HF's default is 10,000). HF keeps the first words it meets and never evicts: on the
Gutenberg books with the Python docs (92k distinct pre-tokens) 85% of pre-tokens hit with 10,000 and 97.5% with this.
An entry costs about 300 bytes, so a full cache about 80 MB."""


@dataclass(kw_only=True, frozen=True)
class TokenizerConfig:
    vocab_size: int = 8192
    """Total vocabulary including the 256 byte tokens and the 4 special tokens."""
    min_frequency: int = 2
    """A pair must occur at least this often to be merged."""
    max_piece_chars: int = 0
    """Cut training text into pieces of at most this many characters (0: whole documents).

    Pre-tokenization splits on whitespace anyway, so this changes nothing in the counts
    except at piece borders; it keeps a single enormous document from being one string."""
    max_word_chars: int = MAX_WORD_CHARS
    """Cut a run of this many non-space characters (base64, minified code, a document without spaces) into pieces
    of this length before training (0: never). BPE training is quadratic in the length of a word: one 10 MB run of
    letters took hours; bounded, it is linear in the corpus. Text without such runs trains exactly as without it."""
    sample_bytes: int = 256 << 20
    """Train on at most this many bytes of the train split: documents in order of a hash of their id, so the
    sample does not depend on partitions or run order, and memory stays bounded however large the corpus."""
    when_corpus_grows: str = "keep"
    """``keep``: reuse the tokenizer trained earlier with this same config, so the token shards of unchanged
    partitions stay valid and a model can continue training; ``retrain``: train again on the current sample
    (every partition is then tokenized again)."""

    def __post_init__(self) -> None:
        if self.vocab_size < _MIN_VOCAB:
            raise ValueError(
                f"TokenizerConfig.vocab_size={self.vocab_size}: must be >= {_MIN_VOCAB} (256 bytes + 4 special tokens)"
            )
        if self.vocab_size > MAX_VOCAB:
            raise ValueError(
                f"TokenizerConfig.vocab_size={self.vocab_size}: must be <= {MAX_VOCAB} (2**20; real vocabularies "
                "are at most ~256k and the embedding table grows with it), e.g. 8192 or 32768"
            )
        if self.min_frequency < 1:
            raise ValueError(f"TokenizerConfig.min_frequency={self.min_frequency}: must be >= 1")
        if self.max_piece_chars < 0:
            raise ValueError(f"TokenizerConfig.max_piece_chars={self.max_piece_chars}: must be >= 0")
        if self.max_word_chars < 0:
            raise ValueError(f"TokenizerConfig.max_word_chars={self.max_word_chars}: must be >= 0 (0: no bound)")
        if not isinstance(self.sample_bytes, int) or self.sample_bytes < 1:
            raise ValueError(f"TokenizerConfig.sample_bytes={self.sample_bytes}: must be a positive number of bytes")
        if self.when_corpus_grows not in GROWTH_POLICIES:
            raise ValueError(
                f"TokenizerConfig.when_corpus_grows={self.when_corpus_grows!r}: "
                f"choose one of {', '.join(GROWTH_POLICIES)}"
            )


class Tokenizer:
    """A byte-level BPE tokenizer with the four special ids as attributes.

    Everything else (``encode``, ``encode_batch_fast``, ``decode``, ``token_to_id``,
    ``get_vocab_size``, ...) is the wrapped ``tokenizers.Tokenizer``'s, available as ``hf``.
    """

    def __init__(self, hf: HFTokenizer) -> None:
        ids = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        if missing := [t for t, i in ids.items() if i is None]:
            raise ValueError(f"the tokenizer has no {missing} tokens; train it with lmcore.data.tokenizer")
        model = hf.model
        if isinstance(model, models.BPE) and hasattr(model, "_resize_cache"):  # tokenizers >= 0.21
            model._resize_cache(WORD_CACHE)  # the tokenizer's own model (shared), not a copy; ids do not change
        self.hf = hf
        self.eot_id: int = ids[EOT]
        self.pad_id: int = ids[PAD]
        self.im_start_id: int = ids[IM_START]
        self.im_end_id: int = ids[IM_END]

    def __getattr__(self, name: str) -> Any:
        if name == "hf":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.hf, name)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ``encode(text, add_special_tokens=False).ids``, concatenated into one uint32 array, and the
        number of ids of each text.

        One ``encode_batch_fast`` call; each text's ids go from HF's list (its only way out) into the array in one
        pass, with no list of the whole batch. A special token written in a text (``<|endoftext|>``) is encoded as
        that token, as ``encode`` does. BPE time grows faster than a word's length: cut texts that may hold very
        long runs without whitespace with :func:`cut_long_runs` first.
        """
        lists = [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]
        sizes = np.fromiter(map(len, lists), np.int64, count=len(lists))
        return np.fromiter(itertools.chain.from_iterable(lists), np.uint32, count=int(sizes.sum())), sizes


def new_tokenizer() -> HFTokenizer:
    """An untrained byte-level BPE tokenizer (GPT-2 style pre-tokenization, no prefix space)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _trainer(config: TokenizerConfig) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


def cut_long_runs(text: str, max_word: int) -> list[str]:
    """``text`` cut inside each run of more than ``max_word`` non-space characters, every ``max_word`` characters
    from the run's start; ``[text]`` when it has no such run (or ``max_word`` is 0). The pieces join to ``text``.

    A text without such a run comes back whole, so it is tokenized exactly as without the bound. A cut falls between
    two non-space characters (the space before a run stays with it), so only the pre-tokens of that run change: they
    become words of at most ``max_word`` characters. BPE time grows faster than a word's length (training on one
    10 MB run of letters took hours); bounded, it is linear in the text.
    """
    if not max_word or len(text) <= max_word:
        return [text]
    at_start, after_space, run = _run_patterns(max_word)
    if at_start.match(text) is None and after_space.search(text) is None:
        return [text]
    pieces, start = [], 0
    for found in run.finditer(text):
        for end in range(found.start() + max_word, found.end(), max_word):
            pieces.append(text[start:end])
            start = end
    pieces.append(text[start:])
    return pieces


@functools.lru_cache(maxsize=4)
def _run_patterns(max_word: int) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """A run of more than ``max_word`` non-space characters at the start and after a space (only to find one: a
    search that begins with ``\\s`` runs at about 110 MB/s, one with a look-behind at 55), and every such run whole,
    matched from its start so that the scan is linear."""
    n = max_word + 1
    return re.compile(rf"\S{{{n}}}"), re.compile(rf"\s\S{{{n}}}"), re.compile(rf"(?<!\S)\S{{{n},}}")


def _pieces(texts: Iterable[str], max_chars: int, max_word: int) -> Iterator[str]:
    for text in texts:
        for piece in (text,) if not max_chars or len(text) <= max_chars else _cut(text, max_chars):
            yield from cut_long_runs(piece, max_word)


def _cut(text: str, n: int) -> Iterator[str]:
    return (text[i : i + n] for i in range(0, len(text), n))


def train_tokenizer(config: TokenizerConfig, texts: Iterable[str], out_path: Path) -> Tokenizer:
    """Train on ``texts`` and write ``tokenizer.json`` atomically to ``out_path``."""
    tok = new_tokenizer()
    tok.train_from_iterator(_pieces(texts, config.max_piece_chars, config.max_word_chars), trainer=_trainer(config))
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS))), f"special tokens got ids {ids}"
    with atomic_path(out_path) as tmp:
        tok.save(str(tmp), pretty=False)
    return Tokenizer(tok)


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer; materialize the tokenizer asset first")
    return Tokenizer(HFTokenizer.from_file(str(path)))


def tokenizer_stats(tok: Tokenizer, path: Path, sample_texts: list[str]) -> dict[str, Any]:
    """Vocabulary size, bytes per token over ``sample_texts``, a tokenized sample, the file digest."""
    n_bytes = sum(len(t.encode("utf-8")) for t in sample_texts)
    n_tokens = int(tok.encode_ids(sample_texts)[1].sum())
    sample = sample_texts[0][:200] if sample_texts else ""
    pieces = tok.encode(sample, add_special_tokens=False).tokens if sample else []
    return {
        "vocab_size": tok.get_vocab_size(),
        "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
        "sample_text": sample,
        "sample_tokens": pieces,
        "sha256": sha256_file(path),
    }


def roundtrip_failures(tok: Tokenizer, texts: list[str]) -> list[int]:
    """Indices of texts for which decode(encode(text)) != text."""
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    decoded = tok.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    return [i for i, (a, b) in enumerate(zip(texts, decoded, strict=True)) if a != b]
