"""Perplexity and bits per byte: uniform model, hand-computed arithmetic, model vs n-gram alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.eval.ngram import NGramLM
from lmcore.eval.perplexity import (
    count_target_bytes,
    eval_slices,
    evaluate_lm,
    evaluate_ngram,
    token_byte_lengths,
)
from lmcore.model.gpt import GPT, tiny


def _uniform_model(vocab_size: int = 512) -> GPT:
    model = GPT(tiny(vocab_size=vocab_size, tie_embeddings=False))
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: the uniform distribution
    return model


def _arrays(sizes: list[int], vocab: int = 512, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).astype(np.uint16) for n in sizes]


def test_uniform_model_perplexity_is_the_vocab_size():
    arrays = _arrays([300, 2, 150])  # windows of 64: full ones, a short tail, a two-token array
    result = evaluate_lm(_uniform_model(), arrays, batch_size=3)
    assert result["tokens"] == 299 + 1 + 149
    assert result["perplexity"] == pytest.approx(512, rel=1e-5)
    assert result["loss"] == pytest.approx(math.log(512), rel=1e-6)
    assert result["bits_per_byte"] is None


def test_bits_per_byte_on_a_hand_computed_case():
    # 100 targets at ln(512) nats each = 900 bits over 300 bytes: 3 bits per byte
    arrays = _arrays([101])
    by_total = evaluate_lm(_uniform_model(), arrays, total_bytes=300)
    by_rate = evaluate_lm(_uniform_model(), arrays, bytes_per_token=3.0)
    assert by_total["bits_per_byte"] == pytest.approx(3.0, rel=1e-6)
    assert by_rate["bits_per_byte"] == pytest.approx(3.0, rel=1e-6)
    with pytest.raises(ValueError, match="not both"):
        evaluate_lm(_uniform_model(), arrays, total_bytes=300, bytes_per_token=3.0)


def test_max_tokens_and_context_length_choose_what_is_scored():
    arrays = _arrays([50, 80])
    assert [s.size for s in eval_slices(arrays, max_tokens=60)] == [50, 12]
    model = GPT(tiny())
    short = evaluate_lm(model, arrays, context_length=16, max_tokens=60)
    assert short["tokens"] == 60
    assert short["loss"] != pytest.approx(evaluate_lm(model, arrays, max_tokens=60)["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="context_length"):
        evaluate_lm(model, arrays, context_length=65)


def test_model_loss_equals_its_own_forward_on_one_window():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    (array,) = _arrays([65])
    ids = torch.from_numpy(array.astype(np.int64))[None]  # (1, 65)
    _, loss = model(ids[:, :-1], ids[:, 1:])
    assert evaluate_lm(model, [array])["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_byte_counts_match_the_decoded_text(tmp_path):
    texts = ["héllo wörld, the cat sat on the mat. 猫 " * 3, "another document about dogs and logs"] * 10
    tok = train_tokenizer(TokenizerConfig(vocab_size=300), texts, tmp_path / "tokenizer.json")
    eot = tok.token_to_id("<|endoftext|>")
    ids = [i for t in texts[:2] for i in [*tok.encode(t).ids, eot]]
    arrays = [np.array(ids, dtype=np.uint16)]
    lengths = token_byte_lengths(tok)
    assert lengths[eot] == 0
    decoded = tok.decode(ids[1:], skip_special_tokens=True)
    assert count_target_bytes(arrays, lengths) == len(decoded.encode("utf-8"))


def test_ngram_beats_unigram_on_repetitive_text_with_the_same_denominator():
    rng = np.random.default_rng(0)
    phrases = [rng.integers(0, 64, 6) for _ in range(5)]
    stream = np.concatenate([phrases[i] for i in rng.integers(0, 5, 600)]).astype(np.uint16)
    train, val = stream[:3000], [stream[3000:]]
    lengths = np.full(64, 4)  # pretend every token is 4 bytes
    total_bytes = count_target_bytes(val, lengths)
    trigram = evaluate_ngram(NGramLM.fit([train], 64, order=3), val, total_bytes=total_bytes)
    unigram = evaluate_ngram(NGramLM.fit([train], 64, order=1), val, total_bytes=total_bytes)
    assert trigram["tokens"] == unigram["tokens"] == val[0].size - 1
    assert trigram["perplexity"] < 0.5 * unigram["perplexity"]
    assert trigram["bits_per_byte"] == pytest.approx(trigram["loss"] / math.log(2) / 4)


def test_per_document_figures_add_up_to_the_split_and_score_a_subset():
    from lmcore.eval.perplexity import document_of_tokens, lm_nats, ngram_nats, subset_figures, target_bytes

    eot, rng = 0, np.random.default_rng(1)
    docs = [rng.integers(1, 512, n) for n in (40, 90, 5, 70)]
    stream = np.concatenate([np.append(d, eot) for d in docs]).astype(np.uint16)
    arrays = [stream[:100], stream[100:]]  # the second document continues into the second shard
    groups = document_of_tokens(arrays, eot)
    assert groups[1] == 4 and groups[0][0][40] == 0 and groups[0][0][41] == 1 and groups[0][1][-1] == 3
    model = _uniform_model()
    nats, tokens = lm_nats(model, arrays, groups=groups, batch_size=2)
    # each target is scored once, in its own document; the first token of each shard is no target
    assert tokens.tolist() == [40, 90, 6, 71] and tokens.sum() == sum(a.size - 1 for a in arrays)
    assert nats == pytest.approx(tokens * math.log(512), rel=1e-5)
    whole = evaluate_lm(model, arrays, batch_size=2)
    assert float(nats.sum()) == pytest.approx(whole["loss"] * whole["tokens"], rel=1e-9)
    lengths = np.full(512, 2)
    lengths[eot] = 0
    documents = {
        "tokens": tokens.tolist(),
        "bytes": target_bytes(arrays, lengths, groups=groups).tolist(),
        "model_nats": nats.tolist(),
        "ngram_nats": ngram_nats(NGramLM.fit([stream], 512, order=2), arrays, groups=groups)[0].tolist(),
    }
    assert documents["bytes"] == [78, 178, 10, 140]  # 2 bytes a token, 0 for <|endoftext|>
    clean = subset_figures(documents, [True, False, True, False])
    assert clean["documents"] == 2 and clean["model"]["tokens"] == 46
    assert clean["model"]["bits_per_byte"] == pytest.approx(46 * math.log2(512) / 88, rel=1e-5)
    assert subset_figures(documents, [False] * 4)["model"] is None
