"""Training specs and summaries across a process boundary: the torchrun JSON round trip of every task's spec, the
errors that name a bad key, one entry point for every task, and the summary's dict keeping its keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmcore.finetune.classify import ClassifyConfig
from lmcore.finetune.specs import ClassifySpec, SftSpec
from lmcore.model.gpt import tiny
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig
from lmcore.train.distributed import dist_env
from lmcore.train.entry import device_type, load_spec
from lmcore.train.job import Outlets, WarmStart
from lmcore.train.loop import train
from lmcore.train.spec import PretrainSpec
from lmcore.train.summary import TrainSummary
from tests.unit.test_train import config, write_synthetic_shards

OUTLETS = Outlets(tracker={"kind": "tensorboard"}, mirror="file:///tmp/mirror")
SUMMARY_KEYS = {
    "step",
    "train_loss",
    "val_loss",
    "tokens_seen",
    "tokens_per_s",
    "mfu",
    "params",
    "flops_per_token",
    "checkpoint",
    "checkpoint_url",
    "run_dir",
    "checkpoint_sha256",
    "resumed_from",
    "device",
    "dtype",
    "world_size",
    "loss_history",
    "val_history",
    "realized_mixture",
    "data",
}
"""The keys a training summary's dict has always had (the torchrun entry's stdout, a Pipes message)."""


def specs(tmp_path: Path) -> list:
    init = WarmStart(checkpoint=tmp_path / "prev", replay_fraction=0.25, trained_shards=("ab", "cd"))
    return [
        PretrainSpec(
            model=tiny(vocab_size=64),
            train=TrainConfig(lr=1e-3, device="cpu"),
            shard_root=tmp_path / "s",
            runs_dir=tmp_path / "r",
            meta_extra={"k": 1},
            outlets=OUTLETS,
            init=init,
        ),
        SftSpec(
            init_checkpoint=tmp_path / "init",
            train=TrainConfig(max_steps=5),
            lora=LoraConfig(rank=2, alpha=4),
            sft_dataset=tmp_path / "sft",
            tokenizer=tmp_path / "tok.json",
            runs_dir=tmp_path / "r",
        ),
        ClassifySpec(
            init_checkpoint=tmp_path / "init",
            config=ClassifyConfig(methods=["head", "encoder"]),
            labeled={p: tmp_path / f"{p}.jsonl" for p in ("train", "validation", "test")},
            tokenizer=tmp_path / "tok.json",
            runs_dir=tmp_path / "r",
            outlets=OUTLETS,
            shard_root=tmp_path / "shards",
        ),
    ]


def test_every_spec_survives_the_torchrun_file_and_loads_through_the_one_entry(tmp_path: Path) -> None:
    for spec in specs(tmp_path):
        path = tmp_path / f"{spec.task}.json"
        path.write_text(json.dumps(spec.to_dict()))
        again = load_spec(path)
        assert type(again) is type(spec) and again == spec


def test_bad_spec_files_name_the_file_and_every_bad_key(tmp_path: Path) -> None:
    d = specs(tmp_path)[0].to_dict()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**{k: v for k, v in d.items() if k != "runs_dir"}, "window_log_dir": "w"}))
    with pytest.raises(ValueError, match=r"bad\.json: unknown keys \['window_log_dir'\]; missing keys \['runs_dir'\]"):
        load_spec(path)
    path.write_text(json.dumps({**d, "task": "distill"}))
    with pytest.raises(ValueError, match="task must be one of"):
        load_spec(path)
    with pytest.raises(ValueError, match="labeled must name the files"):
        ClassifySpec.from_dict({**specs(tmp_path)[2].to_dict(), "labeled": {"train": "t.jsonl"}})


def test_a_spec_without_task_is_pretraining_with_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "plain.json"
    path.write_text(
        json.dumps(
            {"model": {"preset": "tiny", "vocab_size": 64}, "train": {"lr": 0.002}, "shard_root": "s", "runs_dir": "r"}
        )
    )
    spec = load_spec(path)
    assert isinstance(spec, PretrainSpec) and spec.model == tiny(vocab_size=64) and spec.train.lr == 0.002


def test_all_runs_of_a_spec_share_one_kind_of_device(tmp_path: Path) -> None:
    classify = specs(tmp_path)[2]
    assert set(classify.train_configs()) == {"label_lm", "head", "encoder_pretrain", "encoder"}
    assert device_type(classify, dist_env()) in ("cpu", "cuda")  # every run on "auto"
    mixed = ClassifySpec.from_dict({**classify.to_dict(), "config": {"head": {"device": "mps"}}})
    with pytest.raises(ValueError, match="one kind of device"):
        device_type(mixed, dist_env())


def test_the_summary_is_typed_and_its_dict_keeps_the_keys(tmp_path: Path) -> None:
    shards = write_synthetic_shards(tmp_path / "shards")
    summary = train(tiny(vocab_size=64, context_length=32), config(max_steps=3), shards, tmp_path / "runs")
    assert isinstance(summary, TrainSummary) and summary.step == 3 and summary.checkpoint.is_dir()
    d = summary.to_dict()
    assert set(d) == SUMMARY_KEYS and isinstance(d["checkpoint"], str) and isinstance(d["run_dir"], str)
    assert TrainSummary.from_dict(json.loads(json.dumps(d))) == summary
    tuned = TrainSummary.from_dict({**d, "trainable_params": 7, "init_checkpoint": "/x"})
    assert tuned.init_checkpoint == Path("/x") and set(tuned.to_dict()) == SUMMARY_KEYS | {
        "trainable_params",
        "init_checkpoint",
    }
    with pytest.raises(ValueError, match=r"unknown TrainSummary keys \['loss'\]"):
        TrainSummary.from_dict({**d, "loss": 1.0})
