"""The speedrun recipe: Muon, WSD, QK-norm, ReLU², soft-capping, zero-init projections; validation, exact
resume (one process, DDP and FSDP under torchrun), and export refusals. Tiny model, CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lmcore.finetune.head import SequenceClassifier
from lmcore.model import gpt as model_module
from lmcore.model.export import export_hf
from lmcore.model.gpt import GPT, ModelConfig, tiny
from lmcore.train.config import SPEEDRUN, TrainConfig, lr_at
from lmcore.train.loop import train
from lmcore.train.optim import MuonAdamW, build_optimizer, newton_schulz
from tests.unit.test_ddp import TORCHRUN, torchrun
from tests.unit.test_train import Crash, config, losses, write_synthetic_shards

RECIPE_MODEL = tiny(vocab_size=64, context_length=32, **model_module.SPEEDRUN)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.parametrize(
    "field, value",
    [("optimizer", "sgd"), ("muon_lr", 0.0), ("muon_momentum", 1.0), ("schedule", "linear"), ("decay_fraction", 0.0)],
)
def test_bad_recipe_train_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("activation", "swish"), ("logit_softcap", -1.0)])
def test_bad_recipe_model_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


def test_wsd_holds_the_peak_then_decays_linearly_to_min_lr():
    cfg = TrainConfig(max_steps=12, warmup_steps=2, schedule="wsd", decay_fraction=0.4, min_lr_ratio=0.0, lr=1.0)
    assert [lr_at(s, cfg) for s in range(12)] == [0.5, 1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0.0]


def test_newton_schulz_flattens_the_spectrum():
    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(0)) @ torch.diag(torch.logspace(0, 2, 16))
    s = torch.linalg.svdvals(newton_schulz(g))
    assert s.min() > 0.5 and s.max() < 1.3, s  # singular values spread over 100x come out near 1


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(tiny(vocab_size=64, tie_embeddings=False))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02))
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]]
    adamw = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    hidden = [n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2]
    assert sorted(muon) == sorted(hidden) and not adamw & set(hidden)
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.ln_f.weight"} <= adamw
    assert [g["lr_scale"] for g in opt.param_groups] == pytest.approx([20.0, 1.0, 1.0])


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_classifier_is_grouped_as_its_lm_and_its_head_follows_adamw(optimizer):
    clf = SequenceClassifier(GPT(tiny(vocab_size=64)), num_labels=3, pad_id=0)
    opt = build_optimizer(clf, TrainConfig(optimizer=optimizer, weight_decay=0.05, betas=(0.8, 0.9)))
    group = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert len(group) == len(list(clf.parameters()))  # every parameter once
    assert group[id(clf.head.weight)]["weight_decay"] == 0.05 and group[id(clf.head.bias)]["weight_decay"] == 0.0
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    block_matrix = clf.lm.transformer.h[0].attn.c_attn.weight
    assert group[id(block_matrix)].get("muon", False) == (optimizer == "muon")
    assert not any(group[id(p)].get("muon") for p in (clf.head.weight, clf.lm.transformer.wte.weight))


def test_model_options_change_the_model_as_documented():
    x = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    zero = GPT(tiny(vocab_size=64, zero_init_proj=True))
    blocks_off = zero.transformer.ln_f(zero.transformer.wte(x))  # every block starts as the identity
    torch.testing.assert_close(zero(x)[0], zero.lm_head(blocks_off))
    capped = GPT(tiny(vocab_size=64, logit_softcap=0.5))
    assert capped(x)[0].abs().max() < 0.5
    relu2 = GPT(tiny(vocab_size=64, activation="relu2"))
    assert relu2.transformer.h[0].mlp.c_fc.weight.shape == (4 * 64, 64)  # ungated, 4*d wide
    # QK-norm is active: scaling the q/k projection no longer changes the output
    qk = GPT(tiny(vocab_size=64, qk_norm=True, n_layer=1)).eval()
    before = qk(x)[0]
    with torch.no_grad():
        c_attn = qk.transformer.h[0].attn.c_attn.weight
        c_attn[: 2 * 64].mul_(3.0)  # the q and k rows
    torch.testing.assert_close(qk(x)[0], before, atol=1e-5, rtol=1e-5)


def test_the_recipe_learns_faster_than_adamw_on_the_same_steps(shards: Path, tmp_path: Path):
    base = train(tiny(vocab_size=64, context_length=32), config(checkpoint_every=0), shards, tmp_path / "base")
    recipe = train(RECIPE_MODEL, config(checkpoint_every=0, **SPEEDRUN), shards, tmp_path / "recipe")
    assert recipe.val_loss < base.val_loss, (recipe.val_history, base.val_history)


def test_the_recipe_resumes_exactly_after_a_crash(shards: Path, tmp_path: Path):
    cfg = config(**SPEEDRUN)
    reference = train(RECIPE_MODEL, cfg, shards, tmp_path / "ref")

    def crash_at_8(record: dict) -> None:
        if record["step"] == 8:
            raise Crash

    with pytest.raises(Crash):
        train(RECIPE_MODEL, cfg, shards, tmp_path / "run", callback=crash_at_8)
    resumed = train(RECIPE_MODEL, cfg, shards, tmp_path / "run")
    assert resumed.resumed_from == 6
    assert losses(resumed) == losses(reference) and resumed.val_history == reference.val_history
    assert resumed.checkpoint_sha256 == reference.checkpoint_sha256


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_the_recipe_under_ddp_matches_fsdp_which_resumes_exactly(tmp_path: Path) -> None:
    shards = write_synthetic_shards(tmp_path / "shards")
    train_cfg = dict(max_steps=8, batch_size=4, lr=3e-3, checkpoint_every=4, eval_batches=1, log_every=1, device="cpu")
    train_cfg |= SPEEDRUN
    model = {"preset": "tiny", "vocab_size": 64, "context_length": 32, **model_module.SPEEDRUN}
    spec = {"model": model, "shard_root": str(shards), "train": train_cfg, "runs_dir": str(tmp_path / "ddp")}
    ddp = torchrun(spec, tmp_path, "ddp")[-1]
    assert ddp["world_size"] == 2 and ddp["loss_history"][-1][1] < ddp["loss_history"][0][1]

    fsdp_spec = {**spec, "train": {**train_cfg, "data_parallel": "fsdp"}, "runs_dir": str(tmp_path / "fsdp")}
    fsdp = torchrun(fsdp_spec, tmp_path, "fsdp")[-1]
    for (step, a), (_, b) in zip(ddp["loss_history"], fsdp["loss_history"], strict=True):
        assert abs(a - b) <= 1e-3 * abs(a), f"step {step}: ddp {a} fsdp {b}"  # Muon orthogonalizes whole matrices
    shutil.rmtree(fsdp["checkpoint"])
    resumed = torchrun(fsdp_spec, tmp_path, "fsdp-again")[-1]
    assert resumed["resumed_from"] == 4 and resumed["loss_history"] == fsdp["loss_history"]
    assert resumed["checkpoint_sha256"] == fsdp["checkpoint_sha256"]


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(qk_norm=True), "qk_norm"),
        (dict(arch="gpt2", qk_norm=True), "qk_norm"),
        (dict(logit_softcap=30.0), "logit_softcap"),
        (dict(activation="relu2"), "activation='relu2'"),
    ],
)
def test_export_refuses_what_hf_cannot_express(tmp_path, tokenizer_path, overrides, named):
    with pytest.raises(ValueError, match=named):
        export_hf(GPT(tiny(vocab_size=320, **overrides)), tokenizer_path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_gpt2_relu2_exports_with_the_same_logits(tmp_path, tokenizer_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**tiny(vocab_size=320).to_dict(), "arch": "gpt2", "activation": "relu2"})).eval()
    out = export_hf(model, tokenizer_path, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 320, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=1e-4)
