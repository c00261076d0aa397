"""Generation that does not loop: the n-gram ban, the repetition penalty, GenerationConfig, repetition figures."""

from __future__ import annotations

import dataclasses
import inspect
import random
import time
from types import SimpleNamespace

import pytest
import torch

from lmcore.eval.repetition import distinct_n, max_line_repeats, repetition_figures
from lmcore.model.generate import GenerationConfig, NoRepeatNGram, generate, greedy, next_token_probs
from lmcore.model.gpt import GPT, tiny


def _banned_by_rescan(ids: list[int], n: int) -> set[int]:
    """transformers' rule, the slow way: every n-gram of ids whose first n-1 tokens are ids' last n-1."""
    if len(ids) < n - 1:
        return set()
    prefix = tuple(ids[len(ids) - n + 1 :])
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == prefix}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_the_ngram_table_bans_what_a_rescan_of_the_text_bans(n):
    rng = random.Random(n)
    ids = [rng.randrange(5) for _ in range(7)]  # a small alphabet, so n-grams recur
    ban = NoRepeatNGram(n, ids)
    for _ in range(200):
        assert ban.banned() == _banned_by_rescan(ids, n)
        token = rng.randrange(5)
        ids.append(token)
        ban.append(token)


def test_the_ngram_table_is_linear_in_the_text():
    ban, rng = NoRepeatNGram(3, []), random.Random(0)
    start = time.perf_counter()
    for _ in range(50_000):  # a rescan per step (transformers') would be ~1e9 tuple comparisons here
        ban.banned()
        ban.append(rng.randrange(300))
    assert time.perf_counter() - start < 5.0


def _greedy(**overrides) -> GenerationConfig:
    """:func:`greedy` (every control off), then ``overrides``."""
    return dataclasses.replace(greedy(), **overrides)


def _ngram_repeats(ids: list[int], n: int) -> int:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


def test_no_repeat_ngram_size_stops_a_greedy_loop():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    prompt = [1, 2, 3, 4, 5]
    plain = generate(model, prompt, greedy(), max_new_tokens=60)
    assert _ngram_repeats(prompt + plain, 3) > 10, "a random tiny model decoded greedily loops"
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}):
        out = generate(model, prompt, _greedy(no_repeat_ngram_size=3, **kw), max_new_tokens=60)
        assert len(out) == 60 and _ngram_repeats(prompt + out, 3) == 0


class _Bigram(torch.nn.Module):
    """A stand-in for GPT whose next-token logits depend on the last token only: ``table[last]``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.config = SimpleNamespace(context_length=64, vocab_size=table.shape[0], attention="causal", causal=True)

    def new_kv_cache(self, batch: int) -> SimpleNamespace:
        cache = SimpleNamespace(k=torch.zeros(1), pos=0)
        cache.reset = lambda: setattr(cache, "pos", 0)
        return cache

    def forward(self, ids: torch.Tensor, kv_cache: SimpleNamespace) -> tuple[torch.Tensor, None]:
        kv_cache.pos += ids.shape[1]
        return self.table[ids], None  # (1, T, V)


def _stop_after_b() -> _Bigram:
    a, b, stop, other = 0, 1, 2, 3
    table = torch.zeros(4, 4)
    table[a, b], table[b, stop], table[b, other] = 3.0, 2.0, 1.0  # a -> b -> stop (other is second best)
    table[other, a], table[stop, a] = 3.0, 3.0
    return _Bigram(table)


def test_a_stop_id_is_neither_banned_nor_penalised_for_being_in_the_prompt():
    model, a, b, stop, other = _stop_after_b(), 0, 1, 2, 3
    prompt = [b, stop, a]  # the bigram (b, stop) and the token stop are in the prompt
    assert generate(model, prompt, _greedy(no_repeat_ngram_size=2), max_new_tokens=5, stop_ids=[stop]) == [b]
    assert generate(model, prompt, _greedy(no_repeat_ngram_size=2), max_new_tokens=2) == [b, other]
    assert generate(model, prompt, _greedy(repetition_penalty=100.0), max_new_tokens=5, stop_ids=[stop]) == [b]


def test_generation_ends_when_the_ban_leaves_no_token():
    model = _stop_after_b()
    assert len(generate(model, [0, 1, 2, 3], _greedy(no_repeat_ngram_size=1), max_new_tokens=10)) == 0


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([2.0, -1.0, 1.0, 0.5])
    seen = torch.tensor([True, True, False, False])
    out = next_token_probs(logits, torch.zeros(4), _greedy(temperature=1.0, repetition_penalty=2.0), seen=seen)
    torch.testing.assert_close(out, torch.softmax(torch.tensor([1.0, -2.0, 1.0, 0.5]), -1))
    # without ``seen`` it applies to the generated tokens (counts > 0); banned tokens get no mass at all
    counts = torch.tensor([0.0, 0.0, 1.0, 0.0])
    out = next_token_probs(logits, counts, _greedy(temperature=1.0, repetition_penalty=2.0), banned={0})
    torch.testing.assert_close(out, torch.softmax(torch.tensor([float("-inf"), -1.0, 0.5, 0.5]), -1))


def test_generation_config_validates_each_field_by_name_and_holds_the_only_decoding_defaults():
    with pytest.raises(ValueError, match=r"temperature must be >= 0.*; repetition_penalty must be > 0"):
        GenerationConfig(temperature=-1.0, repetition_penalty=0.0)
    for field, value in (
        ("top_k", 0),
        ("top_p", 1.5),
        ("no_repeat_ngram_size", -1),
        ("frequency_penalty", float("inf")),
    ):
        with pytest.raises(ValueError, match=field):
            GenerationConfig(**{field: value})
    knobs = {f.name for f in dataclasses.fields(GenerationConfig)}
    for fn in (generate, next_token_probs):  # they take a GenerationConfig: no second set of keyword defaults
        assert not set(inspect.signature(fn).parameters) & knobs, fn.__name__
    assert greedy().is_greedy() and not GenerationConfig().is_greedy()
    assert GenerationConfig(
        temperature=0.0, top_p=0.5, seed=9, no_repeat_ngram_size=0, repetition_penalty=1.0
    ).is_greedy()


def test_default_and_sampled_generation_are_reproducible_and_do_not_repeat_a_3gram():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    for config in (GenerationConfig(), GenerationConfig(temperature=0.8)):
        a = generate(model, [1, 2, 3], config, max_new_tokens=60)
        assert a == generate(model, [1, 2, 3], config, max_new_tokens=60), "deterministic, or seed 0 by default"
        assert _ngram_repeats([1, 2, 3] + a, 3) == 0
    logits, _ = model(torch.tensor([[1, 2, 3]]))
    assert generate(model, [1, 2, 3], greedy(), max_new_tokens=1) == [int(logits[0, -1].argmax())]


def test_repetition_figures_flag_a_looping_answer():
    loop = "the cat sat.\nthe cat sat.\nthe cat sat.\nthe cat sat."
    fine = "the cat sat on the mat\nand then it slept"
    assert max_line_repeats(loop) == 4 and max_line_repeats(fine) == 1 and max_line_repeats("") == 0
    assert distinct_n(fine) == 1.0 and distinct_n(loop) == pytest.approx(3 / 11) and distinct_n("one") is None
    figures = repetition_figures([loop, fine, ""])
    assert figures["repeated_line_share"] == pytest.approx(1 / 3)
    assert figures["distinct_2"] == pytest.approx((3 / 11 + 1.0) / 2), "texts under two words are left out"
    with pytest.raises(ValueError, match="line_repeats"):
        repetition_figures([loop], line_repeats=1)
