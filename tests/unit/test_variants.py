"""lmcore.finetune.variants: each textbook variant trains through the one loop on the same shards and is scored
on the same test tokens; the mixtures match the dense model's active parameters. Tiny models, CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmcore.data.shards import open_split
from lmcore.finetune.variants import VARIANTS, VariantsConfig, VariantsRun, compare_variants, variant_configs
from lmcore.model.gpt import GPT, tiny
from lmcore.train.config import TrainConfig
from tests.unit.test_train import config, write_synthetic_shards

BASE = 64


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"))


def test_mixtures_have_the_dense_models_active_parameters():
    base = tiny(vocab_size=BASE, context_length=32)
    dense = GPT(variant_configs("dense", base, config(), BASE)[0])
    for name in ("moe_token", "moe_expert"):
        mc, _ = variant_configs(name, base, config(), BASE)
        moe = GPT(mc)
        router = mc.n_layer * mc.d_model * mc.n_experts
        assert moe.num_params(active=True) == dense.num_params() + router
        assert moe.num_params() > moe.num_params(active=True)
        assert moe.flops_per_token() == pytest.approx(dense.flops_per_token() + 6 * router)


def test_objectives_get_their_tokens_and_attention():
    base = tiny(vocab_size=BASE, context_length=32)
    mc, tc = variant_configs("masked", base, config(), BASE)
    assert (mc.attention, tc.objective, mc.vocab_size) == ("bidirectional", "masked", BASE + 1)
    mc, tc = variant_configs("span", base, config(), BASE)
    assert (mc.attention, tc.objective) == ("prefix", "span") and mc.vocab_size > BASE
    with pytest.raises(ValueError, match="choose from"):
        variant_configs("rnn", base, config(), BASE)
    with pytest.raises(ValueError, match=r"variants \['rnn'\] are unknown; choose from"):
        VariantsConfig(variants=["dense", "rnn"])


def test_every_variant_trains_and_is_scored_on_the_same_test_tokens(shards: Path, tmp_path: Path):
    base = tiny(vocab_size=BASE, context_length=32)
    test = open_split(shards, "test" if (shards / "test").exists() else "val").arrays
    seen: dict[str, int] = {}
    cfg = VariantsConfig(train=config(max_steps=6, checkpoint_every=0), pseudo_perplexity_rows=1)
    run = VariantsRun(config=cfg, base_model=base, base_vocab=BASE, shard_root=shards, runs_dir=tmp_path / "runs")
    figures = compare_variants(
        run, test, np.ones(BASE, dtype=np.int64), callback=lambda name, record: seen.__setitem__(name, record["step"])
    )
    assert list(figures) == list(VARIANTS) and seen == dict.fromkeys(VARIANTS, 6)
    for name in ("dense", "moe_token", "moe_expert", "prefix"):
        assert 0 < figures[name]["test_bits_per_byte"] < 8, name  # one byte per token: bpb = nats / ln 2
    assert "test_bits_per_byte" not in figures["span"] and "test_bits_per_byte" not in figures["masked"]
    masked = figures["masked"]
    assert 0 <= masked["masked_accuracy"] <= 1 and masked["masked_tokens"] > 0
    assert 1 < masked["pseudo_perplexity"] < 10 * BASE
    for name in ("moe_token", "moe_expert"):
        layers = figures[name]["experts"]["layers"]
        assert len(layers) == base.n_layer
        assert all(sum(layer["utilization"]) == pytest.approx(1.0) for layer in layers)
    runs = {Path(f["checkpoint"]).parent for f in figures.values()}
    assert len(runs) == len(VARIANTS)  # each variant in its own run directory


def test_the_assets_config_is_the_lmcore_config_plus_the_base_model():
    from assets.pretrain.variants import VariantsReportConfig

    assert VariantsReportConfig().to_lmcore() == VariantsConfig(), "one set of defaults"
    config = VariantsReportConfig(variants=["dense", "masked"], preset="tiny", train={"max_steps": 3})
    assert config.to_lmcore() == VariantsConfig(variants=("dense", "masked"), train=TrainConfig(max_steps=3))
    with pytest.raises(ValueError, match="are unknown"):
        VariantsReportConfig(variants=["rnn"]).to_lmcore()
