"""The encode path of the tokenized stage: ids straight into numpy, identical to ``encode`` per document, with long
runs without whitespace cut into bounded words (``cut_long_runs``), and shards identical to the per-document path."""

import numpy as np

from lmcore.data.shards import (
    EncodeConfig,
    TokenShardWriter,
    encode_documents,
    open_split,
    token_dtype,
    tokenize_partition,
)
from lmcore.data.tokenizer import EOT, IM_START, Tokenizer, cut_long_runs
from lmcore.io import ParquetShardWriter

VARIED = [
    "Plain English prose, with punctuation; and numbers: 1234567.",
    "",
    "   \n\t  \n",
    "naïve café — 日本語のテキスト 🙂🚀 Ünïcödé ß",
    f"before{EOT}after and {IM_START}user\nhello",
    "def f(x):\n    return {'a': [x, x ** 2]}  # code\n",
    " leading space and trailing space ",
    "a" * 999 + " " + "b" * 1000,  # runs of up to max_word_chars: not cut
]


def _reference(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """The previous encode path: every document's ``encode`` ids, then <|endoftext|>, through a Python list."""
    parts: list[int] = []
    for text in texts:
        parts.extend(tok.encode(text, add_special_tokens=False).ids)
        parts.append(tok.eot_id)
    return np.asarray(parts, dtype=np.uint32)


def _stream(tok: Tokenizer, texts: list[str], batch_chars: int = 1 << 20, **kw) -> tuple[np.ndarray, int]:
    batches = list(encode_documents(tok, texts, EncodeConfig(**kw), batch_chars=batch_chars))
    return np.concatenate([ids for ids, _ in batches]), sum(n for _, n in batches)


def test_each_document_gets_exactly_its_encode_ids_then_eot(tok, small_texts):
    texts = [*VARIED, *small_texts]
    for kw in ({}, {"batch_size": 2}, {"batch_chars": 50}):
        ids, docs = _stream(tok, texts, **kw)
        assert ids.dtype == np.uint32 and docs == len(texts)
        assert np.array_equal(ids, _reference(tok, texts)), kw
    # a special token written in a text is that token, as encode has it; an empty document is <|endoftext|> alone
    assert tok.encode(VARIED[4], add_special_tokens=False).ids.count(tok.eot_id) == 1
    assert _stream(tok, [""])[0].tolist() == [tok.eot_id]


def test_encode_ids_is_encode_batch_fast_in_one_array(tok, small_texts):
    texts = [*VARIED, *small_texts]
    ids, sizes = tok.encode_ids(texts)
    lists = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    assert sizes.tolist() == [len(x) for x in lists]
    assert ids.dtype == np.uint32 and ids.tolist() == [i for x in lists for i in x]


def test_cut_long_runs_cuts_only_inside_runs_longer_than_the_bound():
    text = "head " + "a" * 25 + " mid " + "b" * 10 + "\u3000" + "c" * 11
    assert cut_long_runs(text, 10) == [
        "head " + "a" * 10,
        "a" * 10,
        "a" * 5 + " mid " + "b" * 10 + "\u3000" + "c" * 10,
        "c",
    ]
    assert cut_long_runs("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]  # a run at the very start
    for short in ("", "   ", "word " * 50, "b" * 10):
        assert cut_long_runs(short, 10) == [short]
    assert cut_long_runs(text, 0) == [text]  # 0: no bound


def test_a_1mb_run_without_whitespace_is_encoded_in_bounded_words_and_decodes_back(tok):
    run = "".join("abcdefgh"[(i * i + i // 7) % 8] for i in range(1_000_000))
    text = "head " + run + " tail"
    ids, docs = _stream(tok, [text, "after"])
    assert docs == 2 and ids[-1] == tok.eot_id
    first = ids[: np.flatnonzero(ids == tok.eot_id)[0]]
    assert tok.decode(first.tolist(), skip_special_tokens=False) == text
    pieces = cut_long_runs(text, 1000)
    assert len(pieces) == 1000 and max(map(len, pieces)) == 1005  # "head " + 1000 letters, 1000 + " tail"
    assert first.tolist() == [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids]
    short = "head " + run[:5000] + " tail"  # max_word_chars=0: no bound, encode's ids whatever the run
    assert np.array_equal(_stream(tok, [short], max_word_chars=0)[0], _reference(tok, [short]))


def test_partition_shards_are_byte_identical_to_the_previous_path(tmp_path, tok, small_texts):
    texts = [*VARIED, *small_texts] * 3
    with ParquetShardWriter(tmp_path / "docs", max_bytes=3000, batch_rows=4) as w:
        for i, text in enumerate(texts):
            w.write({"doc_id": str(i), "source": "t", "spec": "s", "text": text})
    paths = [tmp_path / "docs" / s["path"] for s in w.shards]
    manifest = tokenize_partition(
        tok,
        paths,
        dict.fromkeys(map(str, range(len(texts))), "train"),
        tmp_path / "new",
        settings=EncodeConfig(shard_tokens=700, batch_size=5),
    )
    with TokenShardWriter(tmp_path / "old", token_dtype(tok.vocab_size), shard_tokens=700, prefix="x") as old:
        old.add(_reference(tok, texts))
    assert [s["sha256"] for s in manifest["splits"]["train"]["shards"]] == [s["sha256"] for s in old.shards]
    assert np.array_equal(np.concatenate(open_split(tmp_path / "new", "train").arrays), _reference(tok, texts))


def test_wrapping_a_tokenizer_leaves_its_file_unchanged(small_tokenizer):
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(small_tokenizer[1]))
    before = hf.to_str()
    Tokenizer(hf)  # resizes the BPE word cache of this very tokenizer
    assert hf.to_str() == before == small_tokenizer[0].to_str()


def test_the_tokenized_stage_cuts_runs_where_the_tokenizer_training_cut_them(tmp_path, tok):
    """A 3,000-character run: with max_word_chars 1000 and 2500 each gives the ids of the pieces training's cut makes
    (``cut_long_runs``, as ``train_tokenizer`` applies it), and the asset takes the bound from the tokenizer."""
    from assets.artifacts import TokenizerFile
    from assets.data.shards import TokenShardsConfig, _encode_settings
    from lmcore.data.tokenizer import _pieces

    text = "head " + "the" * 1000 + " tail"  # cut inside "the" at 1000 and 2000, or at 2500: other words
    with ParquetShardWriter(tmp_path / "docs") as w:
        w.write({"doc_id": "0", "source": "t", "spec": "s", "text": text})
    got = {}
    for bound in (1000, 2500):
        out = tmp_path / f"bound{bound}"
        tokenize_partition(
            tok,
            [tmp_path / "docs" / w.shards[0]["path"]],
            {"0": "train"},
            out,
            settings=EncodeConfig(max_word_chars=bound),
        )
        got[bound] = np.concatenate(open_split(out, "train").arrays)
        pieces = list(_pieces([text], 0, bound))  # what tokenizer training with this max_word_chars sees
        assert [len(p) for p in pieces] == ([1005, 1000, 1005] if bound == 1000 else [2505, 505])
        want = [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] + [tok.eot_id]
        assert got[bound].tolist() == want
    assert not np.array_equal(got[1000], got[2500])
    # the asset: max_word_chars is the tokenizer manifest's, not a setting of its own, and part of the memo
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "manifest.json").write_text('{"config": {"max_word_chars": 2500}}')
    settings = _encode_settings(TokenShardsConfig(encoder="tiktoken"), TokenizerFile("loc", "v", tmp_path / "tok"))
    assert settings == EncodeConfig(max_word_chars=2500, encoder="tiktoken")
    assert "max_word_chars" not in TokenShardsConfig.model_fields and settings.memo()["max_word_chars"] == 2500
