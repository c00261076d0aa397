"""GPT model: config validation, parameter counts, KV cache, masks, optimizer groups."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmcore.model.gpt import GPT, PRESETS, ModelConfig, gpt2_124m, tiny
from lmcore.train.config import TrainConfig
from lmcore.train.optim import build_optimizer

ARCHES = [pytest.param(dict(arch="modern", n_kv_head=2), id="modern-gqa"), pytest.param(dict(arch="gpt2"), id="gpt2")]


def _model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**overrides)).eval()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(n_head=3), "n_head"),
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(arch="llama"), "arch"),
        (dict(d_model=0), "d_model"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(arch="gpt2", n_kv_head=2), "n_kv_head"),
        (dict(n_head=64), "RoPE"),  # head size 1 cannot be split into rotation pairs
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


def test_config_collects_all_problems():
    with pytest.raises(ValueError) as err:
        tiny(n_layer=0, context_length=0)
    assert "n_layer" in str(err.value) and "context_length" in str(err.value)


def test_config_round_trips_through_json():
    config = tiny(arch="gpt2", dropout=0.1, tie_embeddings=False)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="n_layers"):
        ModelConfig.from_dict({**config.to_dict(), "n_layers": 3})


def test_resolved_mlp_width():
    assert tiny().hidden_dim == 192  # 8/3 * 64 = 170.7, rounded up to a multiple of 64
    assert tiny(arch="gpt2").hidden_dim == 256
    assert tiny(mlp_hidden=100).hidden_dim == 100


def test_gpt2_124m_parameter_counts():
    with torch.device("meta"):  # no memory, no init cost
        tied = GPT(gpt2_124m(vocab_size=50257))
        untied = GPT(gpt2_124m(vocab_size=50257, tie_embeddings=False))
    assert tied.num_params() == 124_439_808
    assert untied.num_params() == 163_037_184
    assert tied.num_params(non_embedding=True) == 124_439_808 - 1024 * 768
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True)


def test_presets_build():
    with torch.device("meta"):
        sizes = {name: GPT(make()).num_params() for name, make in PRESETS.items()}
    assert sizes["tiny"] < sizes["demo"] < sizes["gpt2_124m"]


def test_flops_per_token_follows_palm_formula():
    model = _model()
    c = model.config
    expected = 6 * model.num_params(non_embedding=True) + 12 * c.n_layer * c.d_model * c.context_length
    assert model.flops_per_token() == expected


@pytest.mark.parametrize("overrides", ARCHES)
def test_initial_loss_is_near_uniform(overrides):
    model = _model(**overrides)
    idx, targets = torch.randint(0, 512, (2, 4, 32))  # targets unrelated to inputs (tied weights favour copying)
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 32, 512)
    assert abs(loss.item() - math.log(512)) < 0.1


def test_loss_ignores_minus_100_targets():
    model = _model()
    idx = torch.randint(0, 512, (2, 16))
    targets = idx.clone()
    targets[:, ::2] = -100
    logits, loss = model(idx, targets)
    kept = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[kept], targets[kept])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("overrides", ARCHES)
def test_future_tokens_do_not_change_past_logits(overrides):
    model = _model(**overrides)
    a = torch.randint(0, 512, (1, 20))
    b = a.clone()
    b[0, 10:] = torch.randint(0, 512, (10,))
    torch.testing.assert_close(model(a)[0][:, :10], model(b)[0][:, :10])
    assert not torch.allclose(model(a)[0][:, 10:], model(b)[0][:, 10:])


@pytest.mark.parametrize("overrides", ARCHES)
def test_kv_cache_chunks_match_full_forward(overrides):
    model = _model(**overrides)
    idx = torch.randint(0, 512, (2, 24))
    full, _ = model(idx)
    cache = model.new_kv_cache(batch_size=2)
    with torch.no_grad():
        # a prefill, a multi-token chunk after the prefill (needs the offset mask), single tokens
        parts = [model(chunk, kv_cache=cache)[0] for chunk in idx.split([9, 7, 1, 1, 6], dim=1)]
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_context_overflow_raises():
    model = _model()
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = model.new_kv_cache()
    model(torch.zeros(1, 60, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_segment_ids_keep_attention_inside_each_example():
    model = _model()
    a, b = torch.randint(0, 512, (1, 12)), torch.randint(0, 512, (1, 8))
    packed = torch.cat([a, b], dim=1)
    segments = torch.tensor([[0] * 12 + [1] * 8])
    logits, _ = model(packed, segment_ids=segments)
    torch.testing.assert_close(logits[:, :12], model(a)[0])
    # RoPE is relative, so the second example reads as if it stood alone
    torch.testing.assert_close(logits[:, 12:], model(b)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[:, 12:], model(packed)[0][:, 12:])


def test_optimizer_decays_matrices_only():
    model = _model(arch="gpt2", qkv_bias=True)
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied matrix appears once


def test_tied_embeddings_share_storage_and_untied_do_not():
    tied = _model()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = _model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight


@pytest.mark.parametrize("overrides", ARCHES)
def test_a_few_steps_overfit_one_batch(overrides):
    model = _model(**overrides).train()
    opt = build_optimizer(model, TrainConfig(lr=3e-3, weight_decay=0.0))
    idx = torch.randint(0, 512, (2, 32))
    first = None
    for _ in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
