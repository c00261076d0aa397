"""Hostile and unlucky inputs: a killed run does not wedge the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from pipelines.home import PROJECT_ROOT
from tests.integration.conftest import write_profile

TRAIN = {"max_steps": 40, "batch_size": 4, "eval_batches": 1, "checkpoint_every": 4, "log_every": 4, "device": "cpu"}
MODEL = {"preset": "tiny", "model": {"context_length": 32}, "train": TRAIN}


def _cli(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LMPIPE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", *args]
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout:.0f}s (wedged?):\n{out[-4000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    return out


def _checkpoint(home: Path) -> tuple[str, int, str]:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        mat = instance.get_latest_materialization_event(dg.AssetKey("pretrained_model")).asset_materialization
        slots = instance.event_log_storage.get_concurrency_info("gpu")
        assert slots.active_slot_count == 0 and slots.pending_step_count == 0, slots  # nothing held after the run
    meta = mat.metadata
    return meta["checkpoint_sha256"].value, meta["steps"].value, meta["resumed_from"].value


def test_kill_9_during_training_releases_its_gpu_slot_and_the_rerun_resumes_exactly(tmp_path, corpus_dir):
    """kill -9 of the whole process group while pretrained_model holds the ``gpu`` pool's slot: the next run of the
    same selection frees the dead run's slot (it used to wait for it forever at 100% CPU), resumes from the last
    checkpoint, and ends with the weights of an uninterrupted run in another home."""
    profile = str(write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=MODEL))
    home, reference = tmp_path / "home", tmp_path / "reference"
    _finish(_cli(home, "--config", profile, "--select", "group:data"))
    runs = home / "artifacts" / "pretrained_model" / "runs"
    proc = _cli(home, "--config", profile, "--select", "pretrained_model")
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/step-00000008/meta.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 1  # held by the dead run

    out = _finish(_cli(home, "--config", profile, "--select", "pretrained_model"), timeout=300)
    assert "marked run" in out and "failed" in out
    digest, steps, resumed = _checkpoint(home)
    assert steps == 40 and 8 <= int(resumed) < 40

    _finish(_cli(reference, "--config", profile, "--select", "group:data or key:pretrained_model"))
    assert _checkpoint(reference) == (digest, 40, "None")


def test_a_version_that_failed_a_blocking_check_is_not_used_by_a_later_run(home, tmp_path, corpus_dir, capsys):
    """splits fails splits_disjoint_and_non_empty (an empty test split): that run stops, and a later run of what is
    downstream refuses that splits version, naming the check and its reason, instead of publishing shards without a
    test split."""
    from pipelines.cli import main

    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], splits={"val_fraction": 0.2, "test_fraction": 1e-6})
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 1
    first = capsys.readouterr().out
    assert "check splits_disjoint_and_non_empty of splits failed: the test split is empty" in first, first
    assert main(["run", "--config", str(profile), "--select", "tokenizer+"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "failed its blocking check splits_disjoint_and_non_empty: the test split is empty" in out, out
    assert not (home / "artifacts" / "token_shards").exists()
