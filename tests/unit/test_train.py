"""train(): learning, determinism, exact resume after a crash or SIGKILL, corrupt checkpoints,
NaN losses, config mismatches, the lr schedule and MFU arithmetic. Tiny model, CPU, a few KB."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lmcore.data.shards import TokenShardWriter, write_manifest
from lmcore.model import gpt as model_module
from lmcore.model.checkpoint import MODEL_FILE, latest_valid_checkpoint, list_checkpoints, verify_checkpoint
from lmcore.model.gpt import tiny
from lmcore.train.config import TrainConfig, lr_at
from lmcore.train.loop import METRICS_FILE, train
from lmcore.train.summary import TrainSummary

REPO = Path(__file__).resolve().parents[2]
MODEL = tiny(vocab_size=64, context_length=32)


def write_synthetic_shards(root: Path, *, train_tokens: int = 6000, val_tokens: int = 1500) -> Path:
    """Documents that follow noisy arithmetic progressions, so a tiny model can learn them."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        with TokenShardWriter(root / split, np.uint16, shard_tokens=2500) as w:
            while w.tokens + w._fill < n:
                length = int(rng.integers(20, 200))
                seq = (rng.integers(1, 60) + np.arange(length) * rng.integers(1, 4)) % 63 + 1
                noise = rng.random(length) < 0.1
                seq[noise] = rng.integers(1, 64, int(noise.sum()))
                w.add(np.append(seq, 0))  # 0 plays <|endoftext|>
        splits[split] = {"shards": w.shards, "tokens": w.tokens}
    write_manifest(root, splits, vocab_size=64)
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"))


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, eval_batches=2, eval_every=6, log_every=1)
    return TrainConfig(**{**base, "checkpoint_every": 3, "device": "cpu", **overrides})


def losses(summary: TrainSummary) -> list[list[float]]:
    return summary.loss_history


def only_run(runs: Path) -> Path:
    """The one run directory under ``runs`` (train() names it by the run's key)."""
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def test_learns_and_reports(shards: Path, tmp_path: Path) -> None:
    records: list[dict] = []
    cfg = config(max_steps=40, checkpoint_every=0, log_every=5, eval_every=20, peak_flops=1e9)
    summary = train(MODEL, cfg, shards, tmp_path / "run", callback=records.append, meta_extra={"tokenizer": "abc"})
    history = losses(summary)
    assert [s for s, _ in history] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert history[-1][1] < history[0][1] - 0.7, history
    assert summary.val_loss < 3.5 and summary.step == 40
    assert summary.tokens_seen == 40 * 4 * 32
    assert summary.tokens_per_s > 0 and summary.params > 0
    ckpt = Path(summary.checkpoint)
    assert ckpt.name == "step-00000040" and verify_checkpoint(ckpt) == []
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["files"][MODEL_FILE] == summary.checkpoint_sha256
    assert meta["tokenizer"] == "abc" and meta["config"]["model"]["n_layer"] == 2 and meta["seed"] == 0
    assert meta["progress"]["loss_history"] == history
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert "val_loss" in records[3] and "val_loss" not in records[2]
    r = records[-1]
    assert r["mfu"] == pytest.approx(summary.flops_per_token * r["tokens_per_s"] / 1e9)
    assert set(r) >= {"step", "loss", "lr", "tokens_per_s", "mfu", "val_loss", "checkpoint"}
    assert Path(summary.run_dir) == ckpt.parent == only_run(tmp_path / "run")
    on_disk = [json.loads(line) for line in (ckpt.parent / METRICS_FILE).read_text().splitlines()]
    assert on_disk == records


def test_same_config_twice_gives_identical_losses(shards: Path, tmp_path: Path) -> None:
    a = train(MODEL, config(), shards, tmp_path / "a")
    b = train(MODEL, config(), shards, tmp_path / "b")
    assert losses(a) == losses(b) and a.val_history == b.val_history
    assert a.checkpoint_sha256 == b.checkpoint_sha256
    c = train(MODEL, config(seed=1), shards, tmp_path / "c")
    assert losses(c) != losses(a)


def test_grad_accumulation_matches_a_bigger_batch(shards: Path, tmp_path: Path) -> None:
    big = train(MODEL, config(batch_size=4, max_steps=4), shards, tmp_path / "big")
    accum = train(MODEL, config(batch_size=2, grad_accum_steps=2, max_steps=4), shards, tmp_path / "acc")
    np.testing.assert_allclose(np.array(losses(big)), np.array(losses(accum)), rtol=1e-4)


class Crash(RuntimeError):
    pass


def crash_and_resume(run: Callable[..., TrainSummary], root: Path, crash_at: int) -> tuple[TrainSummary, TrainSummary]:
    """``run(runs_dir, callback=None)`` straight through in ``root/ref``, and in ``root/run`` crashed at step
    ``crash_at`` then run again: (the reference summary, the resumed one)."""
    reference = run(root / "ref")

    def crash(record: dict) -> None:
        if record["step"] == crash_at:
            raise Crash

    with pytest.raises(Crash):
        run(root / "run", callback=crash)
    return reference, run(root / "run")


def assert_resumed_exactly(reference: TrainSummary, resumed: TrainSummary, resumed_from: int) -> None:
    assert resumed.resumed_from == resumed_from
    assert resumed.loss_history == reference.loss_history and resumed.val_history == reference.val_history
    assert resumed.checkpoint_sha256 == reference.checkpoint_sha256


def test_resume_after_a_crash_continues_the_same_curve(shards: Path, tmp_path: Path) -> None:
    reference = train(MODEL, config(), shards, tmp_path / "ref")

    def crash_at_8(record: dict) -> None:
        if record["step"] == 8:
            raise Crash

    runs = tmp_path / "run"
    with pytest.raises(Crash):
        train(MODEL, config(), shards, runs, callback=crash_at_8)
    run = only_run(runs)
    assert [s for s, _ in list_checkpoints(run)] == [3, 6]
    resumed = train(MODEL, config(log_every=2, checkpoint_every=4, keep_checkpoints=3), shards, runs)
    assert resumed.resumed_from == 6 and Path(resumed.run_dir) == run, "reporting fields keep the run dir"
    ref_by_step = dict((s, v) for s, v in losses(reference))
    assert all(ref_by_step[s] == v for s, v in losses(resumed)), "no jump: the resumed curve is the reference curve"
    assert resumed.checkpoint_sha256 == reference.checkpoint_sha256
    steps = [json.loads(line)["step"] for line in (run / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 8, 10, 12], "metrics.jsonl drops the steps after the checkpoint and goes on"


def test_sigkill_and_rerun_matches_an_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    cfg = config(max_steps=100, checkpoint_every=4, eval_every=0, eval_batches=0)  # long enough not to finish
    reference = train(MODEL, cfg, shards, tmp_path / "ref")
    spec = {"model": {"preset": "tiny", "vocab_size": 64, "context_length": 32}, "train": cfg.to_dict()}
    spec.update(shard_root=str(shards), runs_dir=str(tmp_path / "run"))
    (tmp_path / "run.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "lmcore.train.entry", "--config", str(tmp_path / "run.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same math as in-process (tests/conftest.py sets one thread)
    kill_after = random.Random().randint(5, 20)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line).get("step", 0) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run finished before step {kill_after}; make it longer"
    killed_at = latest_valid_checkpoint(only_run(tmp_path / "run"))
    assert killed_at is not None and int(killed_at.name[5:]) < 100

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    events = [json.loads(line) for line in out]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["step"] == 100
    assert summary["resumed_from"] == int(killed_at.name[5:])
    assert events[0]["step"] == summary["resumed_from"] + 1
    assert summary["loss_history"] == losses(reference), f"killed after step {kill_after}; the curves must be identical"
    assert summary["checkpoint_sha256"] == reference.checkpoint_sha256


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(shards: Path, tmp_path: Path) -> None:
    cfg = config(max_steps=9)
    reference = train(MODEL, cfg, shards, tmp_path / "run")
    run = Path(reference.run_dir)
    weights = run / "step-00000009" / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:-1000])  # truncated
    resumed = train(MODEL, cfg, shards, tmp_path / "run")
    assert resumed.resumed_from == 6
    assert losses(resumed) == losses(reference) and resumed.checkpoint_sha256 == reference.checkpoint_sha256
    assert len(list(run.glob("step-00000009.corrupt-*"))) == 1, "the corrupt one is set aside, not deleted"


def test_all_checkpoints_corrupt_starts_clean(shards: Path, tmp_path: Path) -> None:
    cfg = config(max_steps=6)
    reference = train(MODEL, cfg, shards, tmp_path / "run")
    for _, path in list_checkpoints(reference.run_dir):
        (path / "optimizer.pt").write_bytes(b"garbage")
    again = train(MODEL, cfg, shards, tmp_path / "run")
    assert again.resumed_from is None and losses(again) == losses(reference)


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = model_module.GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] == 8:  # the 8th training step
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(model_module.GPT, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 8 \(train batch epoch=0, position=7"):
        train(MODEL, config(log_every=4), shards, tmp_path / "run")
    run = only_run(tmp_path / "run")
    assert [s for s, _ in list_checkpoints(run)] == [3, 6]
    assert latest_valid_checkpoint(run) == run / "step-00000006"


def test_run_dir_is_decided_by_what_the_compatibility_check_compares(shards: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = train(MODEL, config(max_steps=3), shards, runs)
    done = train(MODEL, config(max_steps=3, log_every=3, eval_every=0), shards, runs)  # reporting may change
    assert done.run_dir == first.run_dir and done.resumed_from == 3 and done.step == 3
    other_lr = train(MODEL, config(max_steps=3, lr=1e-3), shards, runs)
    other_shape = train(replace(MODEL, n_layer=3), config(max_steps=3), shards, runs)
    dirs = {first.run_dir, other_lr.run_dir, other_shape.run_dir}
    assert len(dirs) == 3 and other_lr.resumed_from is None, "a loss-relevant change is a new run, not a refusal"
    # A checkpoint of another config under this run's key (copied by hand) is refused, naming the fields.
    planted = Path(other_lr.run_dir)
    shutil.rmtree(planted)
    shutil.copytree(first.run_dir, planted)
    with pytest.raises(ValueError, match=r"train.lr=0.003.*this run asks.*train.lr=0.001.*new run dir"):
        train(MODEL, config(max_steps=3, lr=1e-3), shards, runs)


def test_run_key_ignores_exactly_the_resumable_fields() -> None:
    from lmcore.train.config import RESUMABLE_CHANGES
    from lmcore.train.runs import run_identity, run_key

    base = run_identity(MODEL, config(), 1, {"data_version": "abc"})
    key = run_key(base)
    for dotted in RESUMABLE_CHANGES:
        field = dotted.split(".", 1)[1]
        changed = {**base, "train": {**base["train"], field: "changed"}}
        assert run_key(changed) == key, dotted
    for field in set(base["train"]) - {f.split(".", 1)[1] for f in RESUMABLE_CHANGES}:
        changed = {**base, "train": {**base["train"], field: "changed"}}
        assert run_key(changed) != key, field
    assert run_key({**base, "world_size": 2}) != key and run_key({**base, "data_version": "x"}) != key


def test_lr_schedule_warms_up_then_decays_to_min() -> None:
    cfg = TrainConfig(max_steps=110, batch_size=1, lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(0.1) and lrs[59] == pytest.approx(0.55, abs=0.01)


@pytest.mark.parametrize(
    "field, value",
    [("max_steps", -1), ("warmup_steps", 1000), ("dtype", "fp8"), ("device", "tpu"), ("min_lr_ratio", 2.0)],
)
def test_bad_train_config_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{"max_steps": 10, "batch_size": 2, field: value})


def test_train_config_round_trips_through_json() -> None:
    cfg = config(betas=(0.8, 0.9))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1})
