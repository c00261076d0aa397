"""The optional tiktoken encoder: built from the trained byte-level BPE, used only where its ids are proven equal to
HF's, and the shards identical whichever encoder made them; a tokenizer it cannot reproduce is refused with the
reason and HF is used."""

import json
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmcore.data.fast_encoder import (
    EncoderChoice,
    NotExpressible,
    byte_decoder,
    check_identity,
    choose_encoder,
    fast_encoder,
)
from lmcore.data.shards import EncodeConfig, open_split, tokenize_partition
from lmcore.data.tokenizer import EOT, IM_END, IM_START, SPECIAL_TOKENS, Tokenizer, TokenizerConfig, new_tokenizer
from lmcore.data.tokenizer import train_tokenizer as train
from lmcore.io import ParquetShardWriter

pytest.importorskip("tiktoken", reason="tiktoken is the optional encoder: pip install 'lmpipe[fast]'")

HARD = [
    "naïve café — 日本語のテキスト、中文文本 🙂🚀👩‍👩‍👧 Ünïcödé ß Ελληνικά русский",
    f"a document that writes {EOT} inside it, and {IM_START}user\nhi{IM_END} too",
    "<|endoftext|><|endoftext|>x<|endof",  # adjacent specials, and a cut-off one that is plain text
    "spaces:\u00a0nbsp\u3000ideographic\u2028line-sep\x85nel\x0bvt\x0cff \t\ttabs  \n\n\n  \r\n\r\n",
    "I'm can't you're we've he'd THEY'LL 'S 's'",
    "12345 3.14159 1e-9 ٣٤٥ ①②",
    "def f(x):\n    return {'a': [x, x ** 2]}  # code\n\n\n",
    "   leading and trailing   ",
    "",
    "\n",
    "base64:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=" * 90,  # a 3,000+ character run without whitespace
    "x" * 2500 + " " + "éé" * 700,  # long runs, one of multi-byte letters
    "ünïcödé" * 200,
]


@pytest.fixture(scope="module")
def corpus(small_texts) -> list[str]:
    return [*HARD, *small_texts] * 2


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, corpus) -> Tokenizer:
    """A byte-level BPE trained on the hard texts too, so it has merges inside multi-byte characters."""
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    return train(TokenizerConfig(vocab_size=700, min_frequency=2, max_word_chars=1000), corpus, path)


def _docs(tmp_path, texts: list[str]) -> tuple[list, dict[str, str]]:
    with ParquetShardWriter(tmp_path / "docs", max_bytes=4000, batch_rows=4) as w:
        for i, text in enumerate(texts):
            w.write({"doc_id": f"d{i}", "source": "t", "spec": "s", "text": text})
    splits = {f"d{i}": ("val" if i % 5 == 0 else "train") for i in range(len(texts))}
    return [tmp_path / "docs" / s["path"] for s in w.shards], splits


def _hand_made(merges: list[tuple[str, str]], normalizer=None) -> Tokenizer:
    """A byte-level BPE from explicit merges (ids in merge order after the special tokens and the 256 bytes)."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for char in sorted(byte_decoder(), key=byte_decoder().get):
        vocab[char] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    hf = new_tokenizer()
    hf.model = models.BPE(vocab=vocab, merges=merges)
    hf.add_special_tokens(list(SPECIAL_TOKENS))
    if normalizer is not None:
        hf.normalizer = normalizer
    return Tokenizer(hf)


def test_fast_encoder_gives_hf_ids_on_hard_text(bpe, corpus):
    fast = fast_encoder(bpe)
    for texts in (corpus, HARD, [t[:7] for t in HARD]):
        want, want_sizes = bpe.encode_ids(texts)
        got, got_sizes = fast.encode_ids(texts)
        assert got.dtype == np.uint32 and np.array_equal(got_sizes, want_sizes)
        assert np.array_equal(got, want)
    # "<|endoftext|>" written in a document is the special id, as HF has it; a cut-off one is plain text
    ids = fast.encode_ids([HARD[2]])[0].tolist()
    assert ids[:2] == [bpe.eot_id, bpe.eot_id] and ids.count(bpe.eot_id) == 2
    assert ids == bpe.encode(HARD[2], add_special_tokens=False).ids
    assert fast.encode_ids([])[0].size == 0


def test_shards_are_identical_whichever_encoder_made_them(tmp_path, bpe, corpus):
    paths, splits_of = _docs(tmp_path, corpus)
    made = {}
    for encoder in ("hf", "tiktoken"):
        out = tmp_path / encoder
        # check_chars 300: the first few documents prove the ids, tiktoken encodes the rest (long runs cut at 1000)
        manifest = tokenize_partition(
            bpe, paths, splits_of, out, settings=EncodeConfig(encoder=encoder, check_chars=300)
        )
        made[encoder] = (manifest, (out / "manifest.json").read_bytes(), EncoderChoice.load(out))
    hf, tt = made["hf"], made["tiktoken"]
    assert hf[2] == EncoderChoice(requested="hf", used="hf")
    assert tt[2].used == "tiktoken" and tt[2].reason is None and 0 < tt[2].checked_documents < len(corpus) // 2
    assert tt[2].checked_chars == 300  # the last document checked is checked up to the bound, not whole
    assert tt[1] == hf[1]  # the same manifest, so the same data version, with every shard's sha256
    assert all(hf[0]["splits"][split]["shards"] for split in ("train", "val"))
    train = np.concatenate(open_split(tmp_path / "tiktoken", "train").arrays)
    assert int((train == bpe.eot_id).sum()) > hf[0]["splits"]["train"]["documents"]  # the written <|endoftext|>s


def test_a_tokenizer_whose_merges_tiktoken_cannot_follow_is_refused_by_the_check_and_hf_used(tmp_path):
    # HF merges "b c" first, so "abc" is a + bc (no merge joins those); tiktoken takes the whole word "abc"
    tok = _hand_made([("b", "c"), ("a", "b"), ("ab", "c")])
    fast = fast_encoder(tok)  # expressible: ids follow the merge order
    texts = ["xyz ab", "one abc two"]
    assert check_identity(tok, fast, [("first", texts[0])], 1000) is None
    reason = check_identity(tok, fast, [("first", texts[0]), ("second", texts[1])], 1000)
    assert reason is not None and "document 'second'" in reason and "token 4" in reason
    paths, splits_of = _docs(tmp_path, texts)
    for encoder in ("hf", "tiktoken"):
        tokenize_partition(tok, paths, splits_of, tmp_path / encoder, settings=EncodeConfig(encoder=encoder))
    choice = EncoderChoice.load(tmp_path / "tiktoken")
    assert choice.used == "hf" and "document 'd1'" in choice.reason and choice.checked_documents == 2
    assert (tmp_path / "hf/manifest.json").read_bytes() == (tmp_path / "tiktoken/manifest.json").read_bytes()


def _edited(tok: Tokenizer, edit) -> Tokenizer:
    spec = json.loads(tok.hf.to_str())
    edit(spec)
    return Tokenizer(HFTokenizer.from_str(json.dumps(spec)))


def test_what_tiktoken_cannot_express_is_refused_naming_why(monkeypatch):
    tok = _hand_made([("a", "b"), ("c", "d")])
    refusals = {
        # "c d" (id 261) ranked before "a b" (id 260): tiktoken ranks by id
        "merge #1 .*ids must follow the merge order": lambda s: s["model"]["merges"].reverse(),
        "made by no merge": lambda s: s["model"]["vocab"].update(zz=len(s["model"]["vocab"])),
        "pre-tokenizer .* not expressible": lambda s: s["pre_tokenizer"].update(add_prefix_space=True),
        "normalizer": lambda s: s.update(normalizer={"type": "NFKC"}),
        "lstrip": lambda s: s["added_tokens"][0].update(lstrip=True),
        r"model BPE \{'byte_fallback': True\}": lambda s: s["model"].update(byte_fallback=True),
    }
    for why, edit in refusals.items():
        with pytest.raises(NotExpressible, match=why):
            fast_encoder(_edited(tok, edit))
        encoder, choice = choose_encoder(_edited(tok, edit), "tiktoken", [("d", "ab cd")], 1000, 100)
        assert isinstance(encoder, Tokenizer) and choice.used == "hf" and choice.reason
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if it were not installed
    encoder, choice = choose_encoder(tok, "tiktoken", [("d", "ab")], 1000, 100)
    assert encoder is tok and choice.used == "hf" and "pip install 'lmpipe[fast]'" in choice.reason


def test_encode_settings_are_validated_naming_the_field():
    with pytest.raises(ValueError, match=r"EncodeConfig.encoder='fast': choose one of hf, tiktoken"):
        EncodeConfig(encoder="fast")
    for field in ("shard_tokens", "batch_size", "check_chars"):
        with pytest.raises(ValueError, match=f"EncodeConfig.{field}=0"):
            EncodeConfig(**{field: 0})
    with pytest.raises(ValueError, match="max_word_chars"):
        EncodeConfig(max_word_chars=-1)
    assert EncodeConfig(encoder="tiktoken", batch_size=3).memo() == EncodeConfig().memo()
    assert EncodeConfig(max_word_chars=2500).memo() != EncodeConfig().memo()
