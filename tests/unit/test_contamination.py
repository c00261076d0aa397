"""13-gram contamination: normalization, n-gram hashes, the training index, short examples, shard and ChatML texts."""

from __future__ import annotations

import numpy as np
import pytest

from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.eval.contamination import (
    ContaminationConfig,
    NGramIndex,
    chatml_text,
    contamination_report,
    conversation_text,
    find_contamination,
    ngram_hashes,
    normalize_words,
    required_lengths,
    shard_documents,
    shard_texts,
)

CFG = ContaminationConfig()
BOOK = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light."
)


def test_normalization_lowercases_and_drops_punctuation():
    assert normalize_words("Hello,  WORLD! It's _fine_ -- (really)\n\tok.") == [
        "hello",
        "world",
        "its",
        "fine",
        "really",
        "ok",
    ]
    assert normalize_words("Ça va? Très bien.") == ["ça", "va", "très", "bien"]
    assert normalize_words(" ,.; ") == []


def test_ngram_hashes_are_positional_deterministic_and_distinct():
    words = normalize_words(BOOK)
    wh = np.array([hash(w) % 2**63 for w in words], dtype=np.uint64)
    h13 = ngram_hashes(wh, 13)
    assert h13.size == len(words) - 12 and ngram_hashes(wh[:12], 13).size == 0
    assert np.array_equal(h13, ngram_hashes(wh, 13))
    assert np.array_equal(ngram_hashes(wh[5:], 13), h13[5:])  # the same 13 words hash alike wherever they are
    assert len(set(h13.tolist())) == h13.size  # "it was the ... of" repeats but no two 13-grams are equal here
    assert ngram_hashes(wh[::-1].copy(), 13)[0] not in set(h13.tolist())  # order matters


def test_a_copied_13_gram_is_found_and_a_paraphrase_is_not():
    index = NGramIndex.build([BOOK, "Another training document about something else entirely."])
    contaminated = "Quiz: " + BOOK[60:160].upper() + " -- what novel?"  # 13+ words copied, case and punctuation changed
    clean = "It was a fine time and a bad time, an age of wisdom and of folly, when people believed and doubted."
    got = find_contamination([contaminated, clean], {"train": index}, CFG)
    assert got[0] is not None and got[0].source == "train" and len(got[0].ngram.split()) == 13
    assert got[0].ngram in " ".join(normalize_words(BOOK))
    assert got[1] is None


def test_the_index_counts_its_memory_and_merges_in_batches(monkeypatch):
    import lmcore.eval.contamination as c

    texts = [f"{BOOK} number {i}" for i in range(5)]
    at_once = NGramIndex.build(texts)
    monkeypatch.setattr(c, "_COMPACT", 10)  # merge after every text: the result must not change
    assert np.array_equal(NGramIndex.build(texts).hashes[13], at_once.hashes[13])
    # shared 13-grams once; then "... light number" (shared) and "... light number i" (one per text)
    distinct = len(normalize_words(BOOK)) - 12 + 1 + 5
    assert at_once.hashes[13].size == distinct and at_once.nbytes == 8 * (distinct + 5)  # + one hash per text
    assert at_once.summary() == {
        "texts": 5,
        "words": 5 * (len(normalize_words(BOOK)) + 2),
        "ngrams": distinct,
        "bytes": at_once.nbytes,
    }


def test_short_examples_are_checked_whole():
    train = ["the quick brown fox jumps over the lazy dog near the river bank today", "i feel happy"]
    lengths = required_lengths([["The quick brown fox jumps over the lazy dog!", "i feel happy", "dog near"]], CFG)
    assert lengths == {13, 9}
    index = NGramIndex.build(train, lengths=lengths)
    got = find_contamination(
        ["The quick brown fox jumps over the lazy dog!", "I feel HAPPY.", "dog near", "the lazy dog jumps over"],
        {"train": index},
        CFG,
    )
    assert got[0] is not None and got[0].ngram == "the quick brown fox jumps over the lazy dog"  # 9 words inside a text
    assert got[1] is not None  # 3 words, equal to a whole training text
    assert got[2] is None  # 2 words inside a text: too short to mean anything
    assert got[3] is None
    with pytest.raises(ValueError, match="required_lengths"):
        find_contamination(["one two three four five six seven eight"], {"train": NGramIndex.build(train)}, CFG)


def test_report_lists_contaminated_examples_capped():
    index = NGramIndex.build([BOOK])
    texts = [BOOK] * 3 + ["nothing to see here"]
    cfg = ContaminationConfig(max_listed=2, snippet_chars=30)
    report = contamination_report(
        texts,
        find_contamination(texts, {"pretraining": index}, cfg),
        cfg,
        checked_against=["pretraining"],
        ids=["a", "b", "c", "d"],
    )
    assert report["examples"] == 4 and report["contaminated"] == 3 and report["fraction"] == 0.75
    assert [x["id"] for x in report["listed"]] == ["a", "b"] and len(report["listed"][0]["text"]) == 30
    assert report["listed"][0]["source"] == "pretraining" and report["short_examples"] == 1


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="threshold"):
        ContaminationConfig(threshold=1.5)
    with pytest.raises(ValueError, match="min_words"):
        ContaminationConfig(min_words=14)


def test_shard_documents_follow_eot_across_shards():
    eot = 0
    arrays = [np.array([5, 6, 0, 7], np.uint16), np.array([8, 0, 9, 0], np.uint16), np.array([4], np.uint16)]
    assert [d.tolist() for d in shard_documents(arrays, eot)] == [[5, 6], [7, 8], [9], [4]]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [BOOK, "Explain what json.dumps does.", "Serialize obj to a JSON formatted str."] * 20
    return train_tokenizer(TokenizerConfig(vocab_size=300), texts, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_shard_texts_and_chatml_text_give_back_what_was_trained_on(tok):
    docs = [BOOK, "Explain what json.dumps does."]
    ids = np.concatenate([np.array(tok.encode(d, add_special_tokens=False).ids + [tok.eot_id]) for d in docs])
    assert list(shard_texts(tok, [ids[:7].astype(np.uint16), ids[7:].astype(np.uint16)], tok.eot_id)) == docs

    def turn(role: str, content: str) -> list[int]:
        return [tok.im_start_id, *tok.encode(f"{role}\n{content}", add_special_tokens=False).ids, tok.im_end_id]

    row = turn("system", "Be brief.") + turn("user", "Say hi") + turn("assistant", "hi there") + turn("user", "Again")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    assert chatml_text(tok, row) == "Say hi\nhi there\nAgain"
    assert conversation_text(messages, "hi there") == "Say hi\nhi there"
