import pytest

from lmcore.data.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerConfig,
    load_tokenizer,
    roundtrip_failures,
    tokenizer_stats,
    train_tokenizer,
)
from lmcore.io import sha256_file


def test_same_corpus_and_config_give_byte_identical_tokenizer(tmp_path, small_texts):
    cfg = TokenizerConfig(vocab_size=400)
    train_tokenizer(cfg, small_texts, tmp_path / "a.json")
    train_tokenizer(cfg, small_texts, tmp_path / "b.json")
    assert sha256_file(tmp_path / "a.json") == sha256_file(tmp_path / "b.json")


def test_special_tokens_take_the_first_ids_and_vocab_size_holds(small_tokenizer):
    tok, _ = small_tokenizer
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.get_vocab_size() == 300
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).ids
    assert ids[0] == 2 and 3 in ids


def test_roundtrip_on_unicode_code_and_whitespace(small_tokenizer):
    tok, _ = small_tokenizer
    texts = ["naïve café 東京 🙂", "  indented\n\tcode()\r\n", "", "x" * 5000, "\x00nul"]
    assert roundtrip_failures(tok, texts) == []


def test_stats_report_bytes_per_token_and_sample(small_tokenizer, small_texts):
    tok, path = small_tokenizer
    stats = tokenizer_stats(tok, path, small_texts[:3])
    assert stats["vocab_size"] == 300
    assert 1.0 < stats["bytes_per_token"] < 8.0
    assert stats["sample_tokens"] and stats["sha256"] == sha256_file(path)


def test_loads_in_transformers_as_a_fast_tokenizer(small_tokenizer):
    transformers = pytest.importorskip("transformers")
    tok, path = small_tokenizer
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>", pad_token="<|pad|>")
    assert hf.is_fast
    text = "Return a string containing a printable representation."
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False).ids
    assert hf.decode(hf(text)["input_ids"]) == text
    assert hf.pad_token_id == 1 and hf.eos_token_id == 0


def test_the_order_of_the_training_documents_does_not_matter(tmp_path, small_texts):
    """The sample reaches the trainer partition by partition, so a different partition layout must not change it."""
    cfg = TokenizerConfig(vocab_size=400)
    train_tokenizer(cfg, small_texts, tmp_path / "a.json")
    train_tokenizer(cfg, small_texts[::-1], tmp_path / "b.json")
    train_tokenizer(cfg, small_texts[1:] + small_texts[:1], tmp_path / "c.json")
    assert len({sha256_file(tmp_path / f"{n}.json") for n in "abc"}) == 1


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerConfig(vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        TokenizerConfig(min_frequency=0)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="sample_bytes"):
            TokenizerConfig(sample_bytes=bad)
    with pytest.raises(ValueError, match="when_corpus_grows='sometimes'.*keep, retrain"):
        TokenizerConfig(when_corpus_grows="sometimes")
    assert TokenizerConfig(when_corpus_grows="retrain", sample_bytes=1).when_corpus_grows == "retrain"


def test_missing_tokenizer_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize the tokenizer"):
        load_tokenizer(tmp_path / "nope.json")


def test_a_run_without_spaces_is_cut_into_words_of_max_word_chars_and_nothing_else_changes(tmp_path, small_texts):
    """BPE training is quadratic in a word's length (one 10 MB run of letters ran for hours): a run of more than
    max_word_chars non-space characters is cut into pieces of that length; text without one trains as before."""
    from lmcore.data.tokenizer import _pieces

    assert list(_pieces(small_texts, 0, 1000)) == list(small_texts)
    text = "head " + "a" * 25 + " mid " + "b" * 9 + " tail"
    assert list(_pieces([text], 0, 10)) == ["head " + "a" * 10, "a" * 10, "a" * 5 + " mid " + "b" * 9 + " tail"]
    assert "".join(_pieces([text], 7, 10)) == text  # with max_piece_chars too, nothing is lost
    bounded, unbounded = TokenizerConfig(vocab_size=400), TokenizerConfig(vocab_size=400, max_word_chars=0)
    train_tokenizer(bounded, small_texts, tmp_path / "a.json")
    train_tokenizer(unbounded, small_texts, tmp_path / "b.json")
    assert sha256_file(tmp_path / "a.json") == sha256_file(tmp_path / "b.json")
    # 2 MB without a space: about a second when bounded (unbounded, 200 KB took 8 s and 2 MB would take 13 min)
    letters = "".join("abcdefgh"[(i * i + i // 7) % 8] for i in range(2_000_000))
    tok = train_tokenizer(bounded, [*small_texts, letters], tmp_path / "c.json")
    assert tok.decode(tok.encode(letters[:5000]).ids) == letters[:5000]
    with pytest.raises(ValueError, match="max_word_chars"):
        TokenizerConfig(max_word_chars=-1)
