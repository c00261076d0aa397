"""Checkpoints that travel: a run publishes every checkpoint to a mirror URL and a fresh machine resumes from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmcore.model.checkpoint import META_FILE, MODEL_FILE, list_checkpoints
from lmcore.train.job import Outlets
from lmcore.train.loop import METRICS_FILE, train
from lmcore.train.mirror import CheckpointMirror
from tests.unit.test_train import MODEL, Crash, config, only_run, write_synthetic_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"))


def crash_at(step: int):
    def callback(record: dict) -> None:
        if record["step"] == step:
            raise Crash

    return callback


def test_a_run_killed_on_one_machine_resumes_on_another_from_the_mirror(shards: Path, tmp_path: Path) -> None:
    reference = train(MODEL, config(), shards, tmp_path / "reference")
    bucket = f"file://{tmp_path / 'bucket'}"
    mirror = Outlets(mirror=bucket)
    with pytest.raises(Crash):
        train(MODEL, config(), shards, tmp_path / "machine-a", outlets=mirror, callback=crash_at(8))
    key = only_run(tmp_path / "machine-a").name
    remote = tmp_path / "bucket" / key
    assert sorted(p.name for p in remote.iterdir()) == [METRICS_FILE, "step-00000003", "step-00000006"]
    assert json.loads((remote / "step-00000006" / META_FILE).read_text())["step"] == 6

    # machine b: an empty runs directory and the same mirror
    resumed = train(MODEL, config(), shards, tmp_path / "machine-b", outlets=mirror)
    assert resumed.resumed_from == 6 and resumed.step == 12
    assert resumed.checkpoint_sha256 == reference.checkpoint_sha256, "same weights as the uninterrupted run"
    assert resumed.loss_history == reference.loss_history
    assert resumed.checkpoint_url == f"{bucket}/{key}/step-00000012"
    steps = [json.loads(line)["step"] for line in (only_run(tmp_path / "machine-b") / METRICS_FILE).open()]
    assert steps == list(range(1, 13)), "the metrics of machine a's steps came along"
    assert [s for s, _ in list_checkpoints(only_run(tmp_path / "machine-b"))] == [9, 12]
    assert sorted(p.name for p in remote.iterdir()) == [METRICS_FILE, "step-00000009", "step-00000012"], "keep=2"


def test_a_torn_or_corrupt_remote_checkpoint_is_passed_over(shards: Path, tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    mirror = Outlets(mirror=bucket)
    with pytest.raises(Crash):
        train(MODEL, config(keep_checkpoints=3), shards, tmp_path / "a", outlets=mirror, callback=crash_at(11))
    remote = tmp_path / "bucket" / only_run(tmp_path / "a").name
    (remote / "step-00000009" / MODEL_FILE).write_bytes(b"torn")  # corrupt: digest mismatch
    torn = remote / "step-00000012"
    torn.mkdir()
    (torn / MODEL_FILE).write_bytes(b"upload died before meta.json")
    assert CheckpointMirror(bucket, remote.name).steps() == [3, 6, 9], "a step without meta.json is not a checkpoint"

    resumed = train(MODEL, config(keep_checkpoints=3), shards, tmp_path / "b", outlets=mirror)
    assert resumed.resumed_from == 6, "the corrupt step 9 is skipped for step 6"
    assert not list((tmp_path / "b").glob("*/.step-*")), "nothing half-downloaded is left behind"


def test_a_newer_local_checkpoint_wins_over_the_mirror(shards: Path, tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    mirror = Outlets(mirror=bucket)
    with pytest.raises(Crash):
        train(MODEL, config(), shards, tmp_path / "a", callback=crash_at(8))  # no mirror: local steps 3 and 6
    with pytest.raises(Crash):
        train(MODEL, config(), shards, tmp_path / "other", outlets=mirror, callback=crash_at(5))  # the mirror has 3
    resumed = train(MODEL, config(), shards, tmp_path / "a", outlets=mirror)
    assert resumed.resumed_from == 6
