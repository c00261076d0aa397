"""train() under torchrun with 2 CPU processes (gloo): sharded data, one writer, exact resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmcore.data.shards import TokenShardWriter, write_manifest
from lmcore.model.checkpoint import MODEL_FILE, list_checkpoints, read_meta, verify_checkpoint
from lmcore.train.job import WINDOW_LOG_ENV

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def write_shards(root: Path, train_tokens: int, val_tokens: int) -> Path:
    rng = np.random.default_rng(1)
    splits = {}
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        with TokenShardWriter(root / split, np.uint16, shard_tokens=1000) as w:
            w.add(rng.integers(0, 64, n))
        splits[split] = {"shards": w.shards, "tokens": w.tokens}
    write_manifest(root, splits, vocab_size=64)
    return root


def torchrun(spec: dict, tmp_path: Path, name: str, windows: Path | None = None) -> list[dict]:
    """The JSON lines rank 0 printed; with ``windows``, each rank logs the windows it draws there."""
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(spec))
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "lmcore.train.entry", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if windows is not None:
        env[WINDOW_LOG_ENV] = str(windows)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if line.startswith("[rank"))[
        -4000:
    ]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_two_ranks_split_each_epoch_and_resume_together(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", train_tokens=32 * 50 + 1, val_tokens=32 * 20)
    train = dict(max_steps=9, batch_size=4, lr=1e-3, checkpoint_every=3, eval_batches=1, log_every=1, device="cpu")
    spec = {"model": {"preset": "tiny", "vocab_size": 64, "context_length": 32}, "train": train}
    spec.update(shard_root=str(shards), runs_dir=str(tmp_path / "run"))
    events = torchrun(spec, tmp_path, "first", windows=tmp_path / "windows")

    # rank 0 alone reports: 9 metrics lines and one summary
    assert [e["event"] for e in events] == ["metrics"] * 9 + ["summary"]
    summary = events[-1]
    assert summary["world_size"] == 2 and summary["step"] == 9
    assert summary["tokens_seen"] == 9 * 4 * 32 * 2
    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == "step-00000009" and verify_checkpoint(ckpt) == []
    assert read_meta(ckpt)["config"]["world_size"] == 2

    # 50 windows, 25 per rank, 6 batches of 4 per rank per epoch: steps 1-6 are epoch 0, 7-9 epoch 1
    drawn: dict[int, list[list[int]]] = {0: [[], []], 1: [[], []]}
    for rank in (0, 1):
        for line in (tmp_path / "windows" / f"rank-{rank}.txt").read_text().splitlines():
            epoch, _, *idx = map(int, line.split())
            drawn[epoch][rank].extend(idx)
    for epoch, (r0, r1) in drawn.items():
        assert len(r0) == len(r1) == (24 if epoch == 0 else 12)
        assert not set(r0) & set(r1), f"epoch {epoch}: the ranks drew the same window"
        assert len(set(r0 + r1)) == len(r0 + r1), f"epoch {epoch}: a window was drawn twice"
    perm = np.random.default_rng([0, 0]).permutation(50)
    assert sorted(drawn[0][0] + drawn[0][1]) == sorted(perm[:48].tolist()), "epoch 0 covers every window once"

    # drop the last checkpoint: both ranks resume from step 6 and reach the same weights
    shutil.rmtree(ckpt)
    resumed = torchrun(spec, tmp_path, "again")[-1]
    assert resumed["resumed_from"] == 6 and resumed["step"] == 9
    assert resumed["checkpoint_sha256"] == summary["checkpoint_sha256"]
    assert resumed["loss_history"] == summary["loss_history"]
    run = Path(summary["run_dir"])
    assert resumed["run_dir"] == summary["run_dir"] and run.parent == tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run)] == [6, 9]
    assert read_meta(run / "step-00000009")["files"][MODEL_FILE] == summary["checkpoint_sha256"]
