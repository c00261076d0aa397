"""The RNN baseline of the perplexity report: the same targets and bytes as the model and the n-gram, and it learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.eval.ngram import NGramLM
from lmcore.eval.perplexity import Scoring, evaluate_ngram, perplexity_comparison, subset_figures
from lmcore.eval.rnn import RnnConfig
from lmcore.model.gpt import GPT, tiny

FAST = dict(d_model=64, steps=120, batch_size=8, bptt=32, lr=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """A tokenizer and train/val/test token arrays of sentences drawn from a small grammar."""
    rng = np.random.default_rng(0)
    subjects, verbs, objects = ["the cat", "a dog", "my bird"], ["sees", "eats", "likes"], ["the fish.", "a bone."]
    docs = [
        " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}" for _ in range(n))
        for n in rng.integers(2, 12, 300)
    ]
    tok = train_tokenizer(TokenizerConfig(vocab_size=300), docs, tmp_path_factory.mktemp("tok") / "tokenizer.json")

    def arrays(texts: list[str]) -> list[np.ndarray]:
        ids = [i for t in texts for i in [*tok.encode(t).ids, tok.eot_id]]
        return [np.array(ids[: len(ids) // 2], dtype=np.uint16), np.array(ids[len(ids) // 2 :], dtype=np.uint16)]

    return tok, arrays(docs[:240]), {"val": arrays(docs[240:270]), "test": arrays(docs[270:])}


def _compare(data, **rnn):
    tok, train, splits = data
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=tok.get_vocab_size()))
    return perplexity_comparison(
        model, tok, splits, train, scoring=Scoring(per_document=("test",)), rnn=RnnConfig(**{**FAST, **rnn})
    )


@pytest.mark.parametrize("cell", ["lstm", "elman"])
def test_rnn_row_scores_the_same_targets_and_learns(data, cell):
    tok, train, splits = data
    figures = _compare(data, cell=cell)
    for split, by in figures.items():
        model, ngram, rnn = by["model"], by["ngram"], by["rnn"]
        assert rnn["tokens"] == model["tokens"] == ngram["tokens"] == sum(a.size - 1 for a in splits[split])
        # bits per byte = nats / ln 2 / bytes: the same byte count under all three
        byte_counts = {round(f["loss"] * f["tokens"] / math.log(2) / f["bits_per_byte"]) for f in (model, ngram, rnn)}
        assert len(byte_counts) == 1, byte_counts
        unigram = evaluate_ngram(NGramLM.fit(train, tok.get_vocab_size(), order=1), splits[split])
        assert rnn["perplexity"] < 0.7 * unigram["perplexity"], (rnn, unigram)
        assert rnn["perplexity"] < model["perplexity"]  # the transformer here is untrained
    documents = figures["test"]["documents"]
    test_rnn = figures["test"]["rnn"]
    assert sum(documents["rnn_nats"]) == pytest.approx(test_rnn["loss"] * test_rnn["tokens"])
    keep = [i % 2 == 0 for i in range(len(documents["tokens"]))]
    subset = subset_figures(documents, keep)
    assert subset["rnn"]["tokens"] == subset["model"]["tokens"] == subset["ngram"]["tokens"] > 0


def test_rnn_fit_is_deterministic_and_can_be_switched_off(data):
    first, second = _compare(data, steps=20), _compare(data, steps=20)
    assert first["val"]["rnn"] == second["val"]["rnn"]
    off = _compare(data, cell="none")
    assert "rnn" not in off["val"] and "rnn_nats" not in off["test"]["documents"]
    assert off["val"]["model"] == first["val"]["model"]


@pytest.mark.parametrize("field, value", [("cell", "gru"), ("steps", 0), ("lr", 0.0)])
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        RnnConfig(**{field: value})


def test_perplexity_report_config_exposes_every_rnn_field():
    from assets.pretrain.perplexity import PerplexityConfig

    config = PerplexityConfig(rnn={"cell": "elman", "steps": 5})
    assert config.rnn.to_lmcore() == RnnConfig(cell="elman", steps=5)
    assert PerplexityConfig().rnn.to_lmcore() == RnnConfig()
