"""ALiBi positions: the paper's slopes, training, evaluation past the training length, KV cache, packing, export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmcore.model.attention import alibi_slopes
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.export import unexportable
from lmcore.model.gpt import GPT, tiny
from lmcore.train.loop import train
from tests.unit.test_train import assert_resumed_exactly, config, crash_and_resume, write_synthetic_shards

ARCHES = [dict(arch="modern"), dict(arch="gpt2"), dict(arch="modern", n_kv_head=2)]


def _model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(vocab_size=512, position="alibi", **overrides)).eval()


def test_slopes_are_the_papers():
    # Press et al. 2022, section 3: for 8 heads the geometric sequence 1/2, 1/4, ..., 1/256
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    # not a power of two: the 4-head slopes, then every other 8-head slope
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]))


def test_alibi_has_no_position_table_or_rope():
    assert "transformer.wpe.weight" not in GPT(tiny(arch="gpt2", position="alibi")).state_dict()
    assert not hasattr(GPT(tiny(position="alibi")), "rope_cos")
    with pytest.raises(ValueError, match="position must be one of"):
        tiny(position="sinusoidal")


def test_trains_then_evaluates_at_twice_the_context(tmp_path: Path):
    shards = write_synthetic_shards(tmp_path / "shards")
    model_config = tiny(vocab_size=64, context_length=32, position="alibi")
    summary = train(model_config, config(max_steps=30, checkpoint_every=0, log_every=5), shards, tmp_path / "run")
    history = summary.loss_history
    assert history[-1][1] < history[0][1] - 0.5, history
    model, _ = load_trained_model(summary.checkpoint)
    rng = np.random.default_rng(1)
    seq = torch.from_numpy((rng.integers(1, 60) + np.arange(65) * 2) % 63 + 1).long()[None]  # (1, 2T + 1)
    with torch.no_grad():
        logits, loss = model.eval()(seq[:, :-1], seq[:, 1:])
    assert logits.shape == (1, 64, 64) and torch.isfinite(logits).all()
    assert math.isfinite(loss.item()) and loss.item() < math.log(64)


@pytest.mark.parametrize("overrides", ARCHES)
def test_kv_cache_matches_the_full_forward_past_the_context(overrides):
    model = _model(**overrides)
    idx = torch.randint(0, 512, (2, 80))  # context_length is 64
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(batch_size=2, max_len=80)
        parts = [model(chunk, kv_cache=cache)[0] for chunk in idx.split([30, 20, 1, 1, 28], dim=1)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_distance_matters():
    model = _model()
    a = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        biased = model(a)[0]
        model.alibi_slopes.zero_()  # no bias at all: attention forgets the order of the past
        flat = model(a)[0]
    assert not torch.allclose(biased[:, 1:], flat[:, 1:], atol=1e-4)


@pytest.mark.parametrize("overrides", ARCHES)
def test_packing_keeps_attention_inside_each_segment(overrides):
    model = _model(**overrides)
    a, b = torch.randint(0, 512, (1, 12)), torch.randint(0, 512, (1, 8))
    packed = torch.cat([a, b], dim=1)
    with torch.no_grad():
        logits, _ = model(packed, segment_ids=torch.tensor([[0] * 12 + [1] * 8]))
        torch.testing.assert_close(logits[:, :12], model(a)[0], atol=1e-5, rtol=1e-5)
        # ALiBi depends on distances only, so the second example reads as if it stood alone
        torch.testing.assert_close(logits[:, 12:], model(b)[0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(logits[:, 12:], model(packed)[0][:, 12:])


@pytest.mark.parametrize("arch, target", [("modern", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")])
def test_export_refuses_alibi(arch, target):
    (problem,) = unexportable(tiny(arch=arch, position="alibi"))
    assert "position='alibi'" in problem and target in problem
    assert unexportable(tiny(arch=arch)) == []


def test_an_alibi_run_resumes_exactly_after_a_crash(tmp_path: Path):
    shards = write_synthetic_shards(tmp_path / "shards")
    mc = tiny(vocab_size=64, context_length=32, position="alibi")
    reference, resumed = crash_and_resume(lambda d, **kw: train(mc, config(), shards, d, **kw), tmp_path, 8)
    assert_resumed_exactly(reference, resumed, 6)
