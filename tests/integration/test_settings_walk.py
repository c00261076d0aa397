"""Every TrainConfig field, set in a profile, reaches the training loop of every training asset.

Each field gets a value different from its default; the loop's entry (``run_job``) is replaced
by a recorder that stops the run, so the test sees exactly the TrainConfig the loop would
train with. A field that an asset dropped or renamed would arrive at its default.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

import lmcore.finetune.sft
import lmcore.train.loop
import lmcore.train.spec
from lmcore.train.config import TrainConfig
from pipelines.cli import main
from tests.integration.conftest import make_corpus, write_profile
from tests.integration.test_finetune_pipeline import TINY, _tasks

WALK = {
    "max_steps": 7,
    "batch_size": 3,
    "grad_accum_steps": 2,
    "lr": 0.0123,
    "min_lr_ratio": 0.2,
    "warmup_steps": 2,
    "weight_decay": 0.05,
    "betas": [0.8, 0.9],
    "grad_clip": 0.5,
    "eval_every": 3,
    "eval_batches": 2,
    "checkpoint_every": 4,
    "keep_checkpoints": 3,
    "seed": 5,
    "dtype": "float32",
    "compile": True,
    "device": "cpu",
    "log_every": 2,
    "peak_flops": 1e12,
    "data_parallel": "fsdp",
    "schedule": "wsd",
    "decay_fraction": 0.5,
    "optimizer": "muon",
    "muon_lr": 0.01,
    "muon_momentum": 0.9,
    "objective": "masked",
    "mask_rate": 0.2,
    "corruption_rate": 0.25,
    "mean_span_length": 2.5,
}
CAUSAL = {**WALK, "objective": "causal"}  # fine-tuning runs learn replies or labels: they refuse another objective


class Reached(Exception):
    pass


def test_the_walk_covers_every_field_with_a_non_default_value():
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert set(WALK) == set(fields), "add the new TrainConfig field to WALK"
    assert [k for k, v in WALK.items() if json.dumps(v) == json.dumps(fields[k])] == []


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The data, a tiny pretrained model, SFT data and labels, materialized once (one home) for all walks."""
    tmp_path = tmp_path_factory.mktemp("walk")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LMPIPE_HOME", str(tmp_path / "home"))
        labels, sft = _tasks(tmp_path)
        extra = {"labeled_data": labels, "sft_dataset": {"records": [sft], "holdout_fraction": 0.4}}
        sources = [str(make_corpus(tmp_path / "corpus"))]
        profile = write_profile(tmp_path / "p.yaml", sources, **TINY, **extra)
        selection = "group:data or key:pretrained_model or key:sft_dataset or key:labeled_data"
        assert main(["run", "--config", str(profile), "--select", selection]) == 0
        yield tmp_path, sources, extra


def _reached(monkeypatch, tmp_path, sources, extra, asset, config, name) -> list[TrainConfig]:
    seen: list[TrainConfig] = []

    def recorder(make_job, train_config, runs_dir, **kw):
        seen.append(train_config)
        raise Reached

    for module in (lmcore.train.loop, lmcore.train.spec, lmcore.finetune.sft):  # each calls run_job by its name
        monkeypatch.setattr(module, "run_job", recorder)
    profile = write_profile(tmp_path / f"{name}.yaml", sources, **{**TINY, **extra, asset: config})
    assert main(["run", "--config", str(profile), "--select", asset]) == 1, "the recorder stops the run"
    return seen


@pytest.mark.parametrize(
    "name,asset,config",
    [
        (
            "pretrain",
            "pretrained_model",
            {"preset": "tiny", "model": {"context_length": 64, "attention": "bidirectional"}, "train": WALK},
        ),
        ("sft", "sft_model", {"train": CAUSAL}),
        ("label_lm", "classifier_report", {"label_lm": CAUSAL, "methods": ["label_lm"]}),
        ("head", "classifier_report", {"head": CAUSAL, "methods": ["head"]}),
        ("adapt", "classifier_report", {"adapt": CAUSAL, "methods": ["label_lm"]}),  # adaptation runs first
        ("encoder_pretrain", "classifier_report", {"encoder_pretrain": WALK, "methods": ["encoder"]}),  # on the shards
    ],
)
def test_every_field_reaches_the_loop(upstream, monkeypatch, name, asset, config):
    tmp_path, sources, extra = upstream
    seen = _reached(monkeypatch, tmp_path, sources, extra, asset, config, name)
    assert len(seen) == 1
    got = dataclasses.asdict(seen[0])
    walk = next(v for k, v in config.items() if k in ("train", name))
    expected = {**walk, "betas": tuple(walk["betas"])}
    assert {k: got[k] for k in walk} == expected
