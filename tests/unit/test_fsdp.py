"""FSDP2 (``data_parallel="fsdp"``) under torchrun with 2 CPU processes (gloo): the same losses as DDP,
a checkpoint that loads into the plain model, and exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lmcore.model.checkpoint import list_checkpoints, load_trained_model
from tests.unit.test_ddp import TORCHRUN, torchrun
from tests.unit.test_train import write_synthetic_shards

TOLERANCE = 1e-4
"""Relative loss difference allowed between FSDP and DDP: the same arithmetic, but gradients are averaged by a
reduce-scatter instead of an all-reduce, so float sums may round differently."""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_fsdp_matches_ddp_loads_into_the_plain_model_and_resumes(tmp_path: Path) -> None:
    shards = write_synthetic_shards(tmp_path / "shards")
    train = dict(max_steps=8, batch_size=4, lr=3e-3, checkpoint_every=4, eval_batches=1, log_every=1, device="cpu")
    spec = {"model": {"preset": "tiny", "vocab_size": 64, "context_length": 32}, "shard_root": str(shards)}
    ddp = torchrun({**spec, "train": train, "runs_dir": str(tmp_path / "ddp")}, tmp_path, "ddp")[-1]
    fsdp_spec = {**spec, "train": {**train, "data_parallel": "fsdp"}, "runs_dir": str(tmp_path / "fsdp")}
    fsdp = torchrun(fsdp_spec, tmp_path, "fsdp")[-1]

    assert fsdp["world_size"] == 2 and fsdp["step"] == 8
    assert fsdp["loss_history"][-1][1] < fsdp["loss_history"][0][1]
    for (step, a), (_, b) in zip(ddp["loss_history"], fsdp["loss_history"], strict=True):
        assert abs(a - b) <= TOLERANCE * abs(a), f"step {step}: ddp {a} fsdp {b}"
    assert abs(ddp["val_loss"] - fsdp["val_loss"]) <= TOLERANCE * ddp["val_loss"]

    # the sharded run's checkpoint is a plain GPT's, close to the DDP run's weights
    model, meta = load_trained_model(fsdp["checkpoint"])
    reference, _ = load_trained_model(ddp["checkpoint"])
    assert meta["params"] == reference.num_params()
    x = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], reference(x)[0], rtol=1e-3, atol=1e-3)

    # drop the last checkpoint: both ranks resume from step 4 and reach the same weights and curve
    shutil.rmtree(fsdp["checkpoint"])
    resumed = torchrun(fsdp_spec, tmp_path, "fsdp-again")[-1]
    assert resumed["resumed_from"] == 4 and resumed["step"] == 8
    assert resumed["loss_history"] == fsdp["loss_history"]
    assert resumed["checkpoint_sha256"] == fsdp["checkpoint_sha256"]
    assert [s for s, _ in list_checkpoints(fsdp["run_dir"])] == [4, 8]
