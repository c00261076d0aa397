"""Sampling: KV-cache decoding equals recomputation, seeds, top-k/top-p, penalties, stops, text wrapper."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.model.generate import GenerationConfig, generate, generate_text, greedy, next_token_probs
from lmcore.model.gpt import GPT, tiny


def sampled(**overrides) -> GenerationConfig:
    """Plain sampling (temperature 1, no filter, no penalty, no ban, torch's global RNG), then ``overrides``."""
    return dataclasses.replace(greedy(), **{"temperature": 1.0, **overrides})


def _model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(**overrides)).eval()


@torch.no_grad()
def _greedy_without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.config.context_length :]]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("overrides", [dict(arch="modern", n_kv_head=2), dict(arch="gpt2")], ids=["modern", "gpt2"])
def test_greedy_with_cache_equals_recomputation_past_the_context(overrides):
    model = _model(**overrides)
    prompt = torch.randint(0, 512, (10,)).tolist()
    n = 70  # 10 + 70 > context 64: the window slides
    assert generate(model, prompt, greedy(), max_new_tokens=n) == _greedy_without_cache(model, prompt, n)


def test_long_prompt_is_cropped_to_the_context():
    model = _model()
    prompt = torch.randint(0, 512, (100,)).tolist()
    assert generate(model, prompt, greedy(), max_new_tokens=3) == _greedy_without_cache(model, prompt[-64:], 3)


def test_same_seed_same_sample_and_top_k_1_is_greedy():
    model = _model()
    a = generate(model, [1, 2, 3], sampled(seed=7), max_new_tokens=20)
    assert a == generate(model, [1, 2, 3], sampled(seed=7), max_new_tokens=20)
    assert a != generate(model, [1, 2, 3], sampled(seed=8), max_new_tokens=20)
    argmax = generate(model, [1, 2, 3], greedy(), max_new_tokens=20)
    assert generate(model, [1, 2, 3], sampled(top_k=1, seed=3), max_new_tokens=20) == argmax


def test_stop_id_and_stop_sequence_end_generation():
    model = _model()
    argmax = generate(model, [5], greedy(), max_new_tokens=30)
    stop = argmax[4]
    assert generate(model, [5], greedy(), max_new_tokens=30, stop_ids=[stop]) == argmax[: argmax.index(stop)]
    seq = argmax[6:8]
    end = next(i for i in range(2, 31) if argmax[i - 2 : i] == seq)
    out = generate(model, [5], greedy(), max_new_tokens=30, stop_sequences=[seq])
    assert out == argmax[: end - 2]


def test_generate_restores_training_mode_and_checks_arguments():
    model = _model().train()
    generate(model, [1], sampled(), max_new_tokens=2)
    assert model.training
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [1], sampled(top_p=0.0), max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate(model, [], sampled(), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], sampled(), max_new_tokens=-1)


def test_penalties_lower_the_probability_of_repeated_tokens():
    logits = torch.zeros(4)
    counts = torch.tensor([3.0, 1.0, 0.0, 0.0])
    base = next_token_probs(logits, counts, sampled())
    freq = next_token_probs(logits, counts, sampled(frequency_penalty=0.5))
    pres = next_token_probs(logits, counts, sampled(presence_penalty=0.5))
    torch.testing.assert_close(base, torch.full((4,), 0.25))
    assert freq[0] < freq[1] < base[1] < freq[2]  # frequency penalty grows with the count
    assert pres[0] == pres[1] < base[0] < pres[2]  # presence penalty only asks "seen at all?"
    argmax = next_token_probs(torch.tensor([1.0, 0.9, 0.0, 0.0]), counts, sampled(temperature=0, presence_penalty=2.0))
    assert argmax[2] == 1


def test_top_p_keeps_the_smallest_nucleus_and_renormalises():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = next_token_probs(probs.log(), torch.zeros(4), sampled(top_p=0.7))
    torch.testing.assert_close(out, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    out = next_token_probs(probs.log(), torch.zeros(4), sampled(top_k=3))
    torch.testing.assert_close(out, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)


def test_generate_text_decodes_the_continuation(tmp_path):
    texts = ["the cat sat on the mat. the dog sat on the log."] * 20
    tok = train_tokenizer(TokenizerConfig(vocab_size=300), texts, tmp_path / "tokenizer.json")
    model = _model(vocab_size=tok.get_vocab_size())
    text = generate_text(model, tok, "the cat", greedy(), max_new_tokens=8)
    ids = generate(model, tok.encode("the cat").ids, greedy(), max_new_tokens=8, stop_ids=[0])
    assert isinstance(text, str) and text == tok.decode(ids, skip_special_tokens=False)
