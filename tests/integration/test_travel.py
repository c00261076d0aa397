"""Checkpoints that travel: pretraining killed on machine A resumes on machine B, which has an empty
local disk and the same artifact store (a ``file://`` bucket), and ends with the weights of an
uninterrupted run; downstream assets on B open the final checkpoint from the bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from lmcore.io import read_json
from tests.integration.conftest import write_profile

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"max_steps": 40, "batch_size": 4, "eval_batches": 1, "checkpoint_every": 4, "log_every": 4, "device": "cpu"}
MODEL = {"preset": "tiny", "model": {"context_length": 32}, "train": TRAIN}


def cli(home: Path, bucket: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LMPIPE_HOME": str(home), "LMPIPE_ARTIFACTS_URL": f"file://{bucket}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]


def materialization(home: Path, asset: str) -> dg.AssetMaterialization:
    event = dg.DagsterInstance.from_config(str(home / "dagster")).get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization


def test_pretraining_killed_on_one_machine_resumes_on_another(tmp_path: Path, corpus_dir: Path) -> None:
    bucket, a, b = tmp_path / "bucket", tmp_path / "machine-a", tmp_path / "machine-b"
    profile = str(write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=MODEL))
    finish(cli(a, bucket, "--config", profile, "--select", "group:data"))

    # machine A trains until its second checkpoint is in the bucket, and is killed
    runs = bucket / "pretrained_model" / "runs"
    proc = cli(a, bucket, "--config", profile, "--select", "pretrained_model")
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/step-00000008/meta.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "machine A ended before its second checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = runs.iterdir()
    pushed = sorted(int(p.parent.name[5:]) for p in run.glob("step-*/meta.json"))
    assert 8 <= pushed[-1] < 40

    # machine B: nothing local, the same bucket; it resumes where A's newest published checkpoint left off
    assert not b.exists()
    finish(cli(b, bucket, "--config", profile, "--select", "pretrained_model"))
    mat = materialization(b, "pretrained_model")
    assert mat.metadata["resumed_from"].value == str(pushed[-1])
    assert mat.metadata["steps"].value == 40
    location = mat.metadata["artifact_path"].value
    assert location == f"file://{run}/step-00000040", "the handle points into the bucket"

    # the uninterrupted run of the same config, from the same shards, in one process
    version = read_json(bucket / "token_shards" / "latest.json")["location"].rsplit("/", 1)[-1]
    shards = b / "artifacts" / "token_shards" / version
    model = {"preset": "tiny", "context_length": 32, "vocab_size": read_json(shards / "manifest.json")["vocab_size"]}
    spec = {"model": model, "train": TRAIN, "shard_root": str(shards), "runs_dir": str(tmp_path / "reference")}
    (tmp_path / "ref.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "lmcore.train.entry", "--config", str(tmp_path / "ref.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    reference = json.loads(out.splitlines()[-1])
    assert mat.metadata["checkpoint_sha256"].value == reference["checkpoint_sha256"], "same weights as uninterrupted"
    assert read_json(run / "step-00000040" / "meta.json")["progress"]["loss_history"] == reference["loss_history"]

    # a third machine evaluates the model without ever having trained it
    c = tmp_path / "machine-c"
    finish(cli(c, bucket, "--config", profile, "--select", "perplexity_report"))
    assert (c / "cache" / "checkpoints" / run.name / "step-00000040" / "model.safetensors").exists()
