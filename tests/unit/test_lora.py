"""LoRA: a no-op at start, the right trainable count, only adapters train, merging is exact, bad configs."""

from __future__ import annotations

import copy

import pytest
import torch

from lmcore.model.gpt import GPT, tiny
from lmcore.model.lora import LoraConfig, LoRALinear, apply_lora, lora_layers, merge_lora, merged_copy
from lmcore.train.config import TrainConfig
from lmcore.train.optim import build_optimizer

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc")


def _model(arch: str = "modern") -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(vocab_size=97, context_length=16, arch=arch)).eval()


def _tokens() -> torch.Tensor:
    return torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(1))


def _train(model: GPT, steps: int = 3) -> None:
    opt = build_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    x = _tokens()
    model.train()
    for _ in range(steps):
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.parametrize("arch", ["modern", "gpt2"])
def test_fresh_adapters_change_nothing(arch: str) -> None:
    model = _model(arch)
    x = _tokens()
    before, _ = model(x)
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=TARGETS))
    after, _ = model(x)
    assert torch.equal(before, after), "B starts at zero, so the wrapped model computes the same logits"
    assert all(torch.count_nonzero(m.lora_A) > 0 for m in lora_layers(model).values()), "A is initialised"


def test_trainable_count_is_rank_times_in_plus_out() -> None:
    model = _model()
    expected = sum(
        4 * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(TARGETS)
    )
    n = apply_lora(model, LoraConfig(rank=4, alpha=8, targets=TARGETS))
    assert n == expected == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert len(lora_layers(model)) == 3 * model.config.n_layer


def test_training_moves_only_the_adapters() -> None:
    model = _model()
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    _train(model)
    for name, value in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(value, adapters[name]), f"{name} did not train"
        else:
            assert torch.equal(value, frozen[name]), f"{name} changed although it is frozen"


@pytest.mark.parametrize("arch", ["modern", "gpt2"])
def test_merged_model_is_a_plain_gpt_with_the_same_logits(arch: str) -> None:
    model = _model(arch)
    apply_lora(model, LoraConfig(rank=4, alpha=16, targets=TARGETS))
    _train(model)
    x = _tokens()
    unmerged, _ = model(x)
    copy_ = merged_copy(model)
    assert lora_layers(model), "merged_copy leaves the model being trained alone"
    merged, _ = copy_(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    plain = GPT(model.config)
    plain.load_state_dict(copy_.state_dict(), strict=True)  # the plain architecture's exact keys
    torch.testing.assert_close(plain.eval()(x)[0], unmerged, atol=1e-5, rtol=1e-5)
    in_place = merge_lora(copy.deepcopy(model))
    assert not lora_layers(in_place) and not any(isinstance(m, LoRALinear) for m in in_place.modules())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(rank=0, alpha=1), "rank"),
        (dict(rank=2, alpha=0), "alpha"),
        (dict(rank=2, alpha=1, targets=()), "targets"),
        (dict(rank=2, alpha=1, dropout=1.0), "dropout"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LoraConfig(**kwargs)


def test_targets_that_match_nothing_or_a_tied_head_are_refused() -> None:
    with pytest.raises(ValueError, match=r"targets: target 'attn\.q_proj' matches no Linear.*attn\.c_attn"):
        apply_lora(_model(), LoraConfig(rank=2, alpha=2, targets=("attn.c_attn", "attn.q_proj")))
    with pytest.raises(ValueError, match="lm_head shares its weight with an embedding"):
        apply_lora(_model(), LoraConfig(rank=2, alpha=2, targets=("lm_head",)))


def test_config_round_trips() -> None:
    cfg = LoraConfig(rank=8, alpha=16, targets=("attn.c_attn",), dropout=0.1)
    assert LoraConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LoraConfig fields"):
        LoraConfig.from_dict({**cfg.to_dict(), "r": 8})
