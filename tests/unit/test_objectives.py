"""Masked LM, prefix LM and span corruption: the batch transforms, the attention they need, training and
exact resume through the one loop (one process and DDP), generation from a prefix LM. Tiny models, CPU."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmcore.data.shards import load_manifest
from lmcore.model.generate import generate, greedy
from lmcore.model.gpt import GPT, tiny
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train
from lmcore.train.objectives import (
    ATTENTION,
    MASK,
    Objective,
    corrupt_spans,
    extra_tokens,
    fill_spans,
    pseudo_perplexity,
    sentinel,
    span_layout,
)
from tests.unit.test_ddp import TORCHRUN, torchrun
from tests.unit.test_train import assert_resumed_exactly, config, crash_and_resume, write_synthetic_shards

BASE = 64  # the synthetic shards' vocabulary


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_synthetic_shards(tmp_path_factory.mktemp("shards"))
    assert load_manifest(root)["vocab_size"] == BASE
    return root


def model_for(objective: str, context_length: int = 32, **overrides):
    cfg = TrainConfig(objective=objective)
    vocab = BASE + len(extra_tokens(cfg, context_length))
    return tiny(vocab_size=vocab, context_length=context_length, attention=ATTENTION[objective], **overrides)


def test_masking_follows_80_10_10_and_scores_only_the_chosen():
    x = torch.randint(0, BASE, (64, 512))
    inputs, targets, _, prefix = Objective(TrainConfig(objective="masked"), BASE, 512).mask(x, np.random.default_rng(0))
    chosen = targets != -100
    assert prefix is None and chosen.float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(targets[chosen], x[chosen])
    masked = (inputs == BASE) & chosen
    kept = (inputs == x) & chosen
    n = chosen.sum().item()
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.01)
    # a random token equals the original 1/64 of the time, so "kept" is 10% + 10%/64
    assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / BASE, abs=0.01)
    assert (~masked & ~kept & chosen).sum().item() / n == pytest.approx(0.1 * (1 - 1 / BASE), abs=0.01)
    assert torch.equal(inputs[~chosen], x[~chosen]) and (inputs[~chosen] != BASE).all()


def test_every_masked_row_has_a_target_even_when_short():
    x = torch.randint(0, BASE, (200, 3))
    _, targets, _, _ = Objective(TrainConfig(objective="masked"), BASE, 3).mask(x, np.random.default_rng(1))
    assert ((targets != -100).sum(dim=1) >= 1).all()


@pytest.mark.parametrize("seed", range(5))
def test_span_corruption_round_trips(seed: int):
    tokens = list(range(100, 217))  # distinct, so a misplaced span shows
    n, noise, spans = span_layout(128, 0.15, 3.0)
    assert n == len(tokens) and n + 2 * spans <= 129
    sentinels = list(range(1000, 1000 + spans))
    source, target = corrupt_spans(tokens, noise, spans, sentinels, np.random.default_rng(seed))
    assert len(source) == n - noise + spans and len(target) == noise + spans
    assert [t for t in source if t >= 1000] == sentinels and target[0] == sentinels[0]
    assert fill_spans(source, target, sentinels) == tokens


def test_span_rows_are_prefix_then_target_and_round_trip():
    cfg = TrainConfig(objective="span")
    obj = Objective(cfg, BASE, 64)
    assert list(obj.extra_ids) == [sentinel(i) for i in range(obj.spans)] and obj.spans >= 2
    x = torch.randint(4, BASE, (4, 64))
    y = torch.cat((x[:, 1:], torch.randint(4, BASE, (4, 1))), dim=1)
    inputs, targets, _, prefix = obj.apply(x, y, np.random.default_rng(0))
    window = torch.cat((x, y[:, -1:]), dim=1)
    sentinels = list(obj.extra_ids.values())
    for b in range(4):
        p = int(prefix[b].sum())
        source = inputs[b, :p].tolist()
        scored = targets[b] != -100
        assert scored.nonzero().min().item() == p - 1  # the last prefix token predicts the first sentinel
        target = targets[b][scored].tolist()
        assert fill_spans(source, target, sentinels) == window[b, : obj.n].tolist()


def test_prefix_split_scores_the_suffix_only():
    x = torch.randint(0, BASE, (16, 32))
    y = torch.randint(0, BASE, (16, 32))
    _, targets, _, prefix = Objective(TrainConfig(objective="prefix"), BASE, 32).apply(x, y, np.random.default_rng(3))
    for b in range(16):
        p = int(prefix[b].sum())
        assert 1 <= p <= 31 and prefix[b, :p].all()
        assert (targets[b, : p - 1] == -100).all() and torch.equal(targets[b, p - 1 :], y[b, p - 1 :])


def test_prefix_attention_sees_both_ways_inside_the_prefix_only():
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=BASE, context_length=16, attention="prefix")).eval()
    x = torch.randint(0, BASE, (1, 16))
    prefix = (torch.arange(16) < 6)[None]
    base = model(x, prefix=prefix)[0]
    later = x.clone()
    later[0, 10] = (x[0, 10] + 1) % BASE  # a suffix token
    out = model(later, prefix=prefix)[0]
    torch.testing.assert_close(out[0, :10], base[0, :10], rtol=0, atol=1e-6)  # nothing before it moves
    assert not torch.allclose(out[0, 10:], base[0, 10:])
    early = x.clone()
    early[0, 4] = (x[0, 4] + 1) % BASE  # a prefix token moves every output, earlier prefix positions included
    out = model(early, prefix=prefix)[0]
    assert all(not torch.allclose(out[0, i], base[0, i]) for i in range(16))
    # without a prefix the same model is causal
    plain = model(x)[0]
    torch.testing.assert_close(model(later)[0][0, :10], plain[0, :10], rtol=0, atol=1e-6)


def test_prefix_stays_inside_packed_segments():
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=BASE, context_length=16, attention="prefix")).eval()
    x = torch.randint(0, BASE, (1, 16))
    segments = torch.tensor([[0] * 8 + [1] * 8])
    prefix = torch.tensor([[True] * 4 + [False] * 4 + [True] * 3 + [False] * 5])
    base = model(x, segment_ids=segments, prefix=prefix)[0]
    other = x.clone()
    other[0, 9] = (x[0, 9] + 1) % BASE  # second segment's prefix
    out = model(other, segment_ids=segments, prefix=prefix)[0]
    torch.testing.assert_close(out[0, :8], base[0, :8], rtol=0, atol=1e-6)
    assert not torch.allclose(out[0, 8], base[0, 8])


@pytest.mark.parametrize("position", ["auto", "alibi"])
def test_an_encoder_sees_the_whole_row_and_cannot_generate(position: str):
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=BASE + 1, context_length=16, attention="bidirectional", position=position)).eval()
    x = torch.randint(0, BASE, (1, 16))
    changed = x.clone()
    changed[0, 15] = (x[0, 15] + 1) % BASE
    assert not torch.allclose(model(x)[0][0, 0], model(changed)[0][0, 0])  # the first position sees the last
    with pytest.raises(ValueError, match="encoder"):
        model(x, kv_cache=model.new_kv_cache())
    with pytest.raises(ValueError, match="does not generate"):
        generate(model, [1, 2, 3], greedy(), max_new_tokens=2)
    rows = torch.randint(0, BASE, (2, 16))
    assert 1.0 < pseudo_perplexity(model, rows, mask_id=BASE) < 10 * BASE


def test_generation_from_a_prefix_lm_reads_the_prompt_both_ways():
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=BASE, context_length=16, attention="prefix")).eval()
    prompt = torch.randint(0, BASE, (6,)).tolist()
    out = generate(model, prompt, greedy(), max_new_tokens=14)  # slides past the context too
    ids = prompt + out
    first = model(torch.tensor([prompt]), prefix=torch.ones(1, 6, dtype=torch.bool))[0][0, -1].argmax().item()
    assert out[0] == first
    assert len(ids) == 20
    with pytest.raises(ValueError, match="attention='prefix'"):
        GPT(tiny(vocab_size=BASE)).eval()(torch.tensor([prompt]), prefix=torch.ones(1, 6, dtype=torch.bool))


@pytest.mark.parametrize(
    "objective, attention, vocab, named",
    [
        ("masked", "causal", BASE + 1, "set model.attention: bidirectional"),
        ("span", "causal", BASE + 4, "set model.attention: prefix"),
        ("causal", "prefix", BASE, "set model.attention: causal"),
        ("masked", "bidirectional", BASE, "must be at least 65"),
    ],
)
def test_a_model_that_cannot_train_the_objective_is_named(shards, tmp_path, objective, attention, vocab, named):
    mc = tiny(vocab_size=vocab, context_length=32, attention=attention)
    with pytest.raises(ValueError, match=named):
        train(mc, config(objective=objective), shards, tmp_path / "run")


@pytest.mark.parametrize("field, value", [("objective", "mlm"), ("mask_rate", 1.0), ("mean_span_length", 0.5)])
def test_bad_objective_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("objective", ["masked", "prefix", "span"])
def test_each_objective_learns_and_resumes_exactly_after_a_crash(shards: Path, tmp_path: Path, objective: str):
    mc, cfg = model_for(objective), config(objective=objective, max_steps=12)
    reference, resumed = crash_and_resume(lambda d, **kw: train(mc, cfg, shards, d, **kw), tmp_path, 8)
    assert_resumed_exactly(reference, resumed, 6)


@pytest.mark.parametrize("objective", ["masked", "prefix", "span"])
def test_each_objective_learns(shards: Path, tmp_path: Path, objective: str):
    mc = model_for(objective)
    run = train(mc, config(objective=objective, max_steps=60, checkpoint_every=0, eval_every=20), shards, tmp_path)
    (_, first), *_, (_, last) = run.val_history
    assert last < first - 0.1 and last < math.log(mc.vocab_size) - 0.2, run.val_history


def test_the_masked_objective_differs_from_causal_on_the_same_data(shards: Path, tmp_path: Path):
    """The objective is part of the run's identity: a masked run never resumes a causal one's checkpoint."""
    causal = train(tiny(vocab_size=BASE + 1, context_length=32), config(), shards, tmp_path / "runs")
    masked = train(model_for("masked"), config(objective="masked"), shards, tmp_path / "runs")
    assert masked.run_dir != causal.run_dir and masked.resumed_from is None


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_masked_lm_under_ddp_resumes_exactly(tmp_path: Path) -> None:
    shards = write_synthetic_shards(tmp_path / "shards")
    train_cfg = dict(max_steps=8, batch_size=4, lr=3e-3, checkpoint_every=4, eval_batches=1, log_every=1, device="cpu")
    train_cfg["objective"] = "masked"
    model = {"preset": "tiny", "vocab_size": BASE + 1, "context_length": 32, "attention": "bidirectional"}
    spec = {"model": model, "shard_root": str(shards), "train": train_cfg, "runs_dir": str(tmp_path / "ddp")}
    first = torchrun(spec, tmp_path, "first")[-1]
    assert first["world_size"] == 2 and first["step"] == 8
    shutil.rmtree(first["checkpoint"])
    again = torchrun(spec, tmp_path, "again")[-1]
    assert again["resumed_from"] == 4 and again["loss_history"] == first["loss_history"]
    assert again["checkpoint_sha256"] == first["checkpoint_sha256"]


def test_mask_token_id_follows_the_tokenizer_vocabulary():
    obj = Objective(TrainConfig(objective="masked"), 4096, 256)
    assert obj.extra_ids == {MASK: 4096}
