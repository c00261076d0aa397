"""Mixture of experts (lmcore.model.moe): one expert is the dense model, the Switch load-balancing loss,
capacity drops, expert-choice balance, active parameter counts, exact resume, learning, bad configs. CPU, tiny."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lmcore.data.loader import TokenLoader
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.gpt import GPT, MLP, tiny
from lmcore.model.moe import MoE, expert_report
from lmcore.train.loop import train
from tests.unit.test_ddp import TORCHRUN, torchrun
from tests.unit.test_train import assert_resumed_exactly, config, crash_and_resume, write_synthetic_shards

D = 64  # tiny's d_model


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"))


def moe_layer(**overrides) -> MoE:
    torch.manual_seed(0)
    config = tiny(**{"n_experts": 4, "expert_top_k": 1, **overrides})
    return MoE(config, lambda: MLP(config))


def tokens(n: int = 64, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(1, n, D, generator=torch.Generator().manual_seed(1)) + shift  # (1, N, d)


@pytest.mark.parametrize("routing", ["token", "expert"])
@pytest.mark.parametrize("arch", ["modern", "gpt2"])
def test_one_expert_top1_is_the_dense_model(routing, arch):
    torch.manual_seed(0)
    dense = GPT(tiny(arch=arch, n_experts=0)).eval()
    moe = GPT(tiny(arch=arch, n_experts=1, expert_top_k=1, capacity_factor=0, routing=routing)).eval()
    state = {k.replace(".mlp.", ".mlp.experts.0."): v for k, v in dense.state_dict().items()}
    state |= {k: v for k, v in moe.state_dict().items() if ".router." in k}
    moe.load_state_dict(state)
    x = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(moe(x)[0], dense(x)[0], atol=1e-6, rtol=1e-6)


def test_load_balancing_loss_is_one_at_uniform_routing_and_grows_with_skew():
    layer = moe_layer(expert_top_k=2)
    x = tokens(shift=1.0)  # every feature positive on average: a weight row of ones favours one expert everywhere
    with torch.no_grad():
        layer.router.weight.zero_()  # uniform router probabilities
    layer(x)
    assert layer.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    auxes = []
    for scale in (0.01, 0.03, 0.1, 1.0):
        with torch.no_grad():
            layer.router.weight.zero_()
            layer.router.weight[0] = scale
        layer.router.zero_grad()
        layer(x)
        layer.aux_loss.backward()
        assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
        auxes.append(layer.aux_loss.item())
    assert 1.0 < auxes[0] < auxes[1] < auxes[2] < auxes[3] <= 4.0 + 1e-6, auxes  # E = 4 at total collapse


def test_the_aux_loss_reaches_the_training_loss_with_its_coefficient():
    torch.manual_seed(0)
    model = GPT(tiny(n_experts=4, aux_loss_coef=0.5)).train()
    x = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    logits, loss = model(x, x)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, 512), x.view(-1))
    aux = sum(b.mlp.aux_loss for b in model.transformer.h)
    torch.testing.assert_close(loss, ce + 0.5 * aux)
    assert model.eval()(x, x)[1].item() == pytest.approx(ce.item(), abs=1e-5)  # no aux in evaluation


def test_capacity_drops_the_late_tokens_of_a_full_expert_and_their_output_is_zero():
    layer = moe_layer(capacity_factor=0.5)  # capacity ceil(0.5 * 1 * 64 / 4) = 8
    x = tokens()
    layer.track = True
    out = layer(x)[0]  # (N, d)
    choice = layer.router(x[0]).argmax(dim=-1).tolist()
    seen = {e: 0 for e in range(4)}
    dropped = []
    for i, e in enumerate(choice):  # first come, first served
        seen[e] += 1
        if seen[e] > layer.capacity(64):
            dropped.append(i)
    assert layer.capacity(64) == 8 and dropped
    assert out[dropped].abs().max() == 0
    kept = [i for i in range(64) if i not in dropped]
    assert (out[kept].abs().sum(dim=-1) > 0).all()
    stats = layer.stats()
    assert stats["dropped_fraction"] == pytest.approx(len(dropped) / 64) and len(dropped) > 0
    assert stats["routed"] == [min(seen[e], 8) for e in range(4)] and sum(stats["utilization"]) == pytest.approx(1)

    unlimited = moe_layer(capacity_factor=0)
    unlimited.track = True
    assert (unlimited(x)[0].abs().sum(dim=-1) > 0).all() and unlimited.stats()["dropped_fraction"] == 0.0


def test_an_expert_that_gets_no_token_still_gets_a_zero_gradient():
    layer = moe_layer()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = 1.0
    layer.track = True
    layer(tokens(shift=1.0)).sum().backward()
    assert layer.stats()["routed"][1:] == [0, 0, 0]
    for name, p in layer.named_parameters():
        assert p.grad is not None, name  # DDP needs every parameter in the graph
    assert layer.experts[1].c_fc.weight.grad.abs().max() == 0


def test_expert_choice_gives_every_expert_exactly_c_tokens():
    layer = moe_layer(routing="expert", expert_top_k=2)
    layer.track = True
    layer(tokens(n=30))
    C = math.ceil(2 * 30 / 4)
    stats = layer.stats()
    assert layer.capacity(30) == C == 15 and stats["routed"] == [C] * 4
    assert stats["utilization"] == [0.25] * 4 and layer.aux_loss.item() == 0.0
    layer.reset_stats()
    assert layer.stats()["utilization"] == [] and layer.stats()["tokens_seen"] == 0


def test_active_params_count_only_top_k_experts():
    dense = GPT(tiny())
    L, E = 2, 4
    top1 = GPT(tiny(n_experts=E, expert_top_k=1))
    top2 = GPT(tiny(n_experts=E, expert_top_k=2))
    expert = top1.transformer.h[0].mlp.expert_params()
    assert expert == 3 * D * tiny().hidden_dim  # SwiGLU: c_fc (2h x d) + c_proj (d x h), no biases
    router = E * D
    assert top1.num_params(active=True) == dense.num_params() + L * router  # one expert = the dense MLP
    assert top2.num_params(active=True) == dense.num_params() + L * (router + expert)
    assert top1.num_params(active=True) < top1.num_params() == dense.num_params() + L * (router + (E - 1) * expert)


@pytest.mark.parametrize("routing", ["token", "expert"])
def test_moe_training_resumes_exactly_after_a_crash(routing, shards: Path, tmp_path: Path):
    model = tiny(vocab_size=64, context_length=32, n_experts=4, expert_top_k=2, routing=routing)
    reference, resumed = crash_and_resume(lambda d, **kw: train(model, config(), shards, d, **kw), tmp_path, 8)
    assert_resumed_exactly(reference, resumed, 6)


def test_moe_learns_and_reports_its_experts(shards: Path, tmp_path: Path):
    model = tiny(vocab_size=64, context_length=32, n_experts=4, expert_top_k=2)
    summary = train(model, config(max_steps=40, checkpoint_every=0, log_every=5, eval_every=20), shards, tmp_path)
    history = summary.loss_history
    assert history[-1][1] < history[0][1] - 0.5, history
    trained, _ = load_trained_model(summary.checkpoint)
    trained.train()
    val = TokenLoader.from_split(shards, "val", context_length=32, batch_size=4)
    report = expert_report(trained, [val.next_batch() for _ in range(3)])
    assert trained.training and not any(m.track for m in trained.modules() if isinstance(m, MoE))
    assert len(report["layers"]) == 2 and report["routing"] == "token" and report["n_experts"] == 4
    for layer in report["layers"]:
        assert len(layer["utilization"]) == 4 and sum(layer["utilization"]) == pytest.approx(1.0)
        assert 0.0 <= layer["dropped_fraction"] < 1.0
    assert report["active_params"] < report["total_params"] == trained.num_params()
    with pytest.raises(ValueError, match="n_experts"):
        expert_report(GPT(tiny()), [])


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(n_experts=2, expert_top_k=3), "expert_top_k"),
        (dict(n_experts=2, routing="x"), "routing"),
        (dict(n_experts=-1), "n_experts"),
        (dict(n_experts=2, capacity_factor=-1.0), "capacity_factor"),
    ],
)
def test_bad_moe_configs_are_named(overrides, named):
    with pytest.raises(ValueError, match=named):
        tiny(**overrides)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_moe_trains_under_ddp(shards: Path, tmp_path: Path) -> None:
    """Two ranks: every expert parameter gets a gradient every step (no unused parameters), the loss falls."""
    train_cfg = dict(max_steps=6, batch_size=4, lr=3e-3, checkpoint_every=0, eval_batches=1, log_every=1, device="cpu")
    model = {
        "preset": "tiny",
        "vocab_size": 64,
        "context_length": 32,
        "n_experts": 4,
        "expert_top_k": 1,
        "capacity_factor": 1.0,
    }
    spec = {"model": model, "shard_root": str(shards), "train": train_cfg, "runs_dir": str(tmp_path / "ddp")}
    summary = torchrun(spec, tmp_path, "ddp")[-1]
    assert summary["world_size"] == 2 and summary["loss_history"][-1][1] < summary["loss_history"][0][1]
