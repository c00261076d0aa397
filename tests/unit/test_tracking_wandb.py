"""The Weights & Biases tracker, offline (no network): its run files read back record by record, each step once
across a crash and resume into the same run id, from the tracker alone and from a real short training run."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2 as pb

from lmcore.model.gpt import tiny
from lmcore.train.job import Outlets
from lmcore.train.loop import METRICS_FILE, train
from lmcore.train.tracking_wandb import STATE_FILE
from tests.unit.test_tracking import CONFIG, session
from tests.unit.test_train import config, write_synthetic_shards

BLOCK = 32768
"""The .wandb file is a LevelDB-style log: 32 KiB blocks of records, each with a 7-byte header."""


@dataclass
class Session:
    """One offline session: the records of one ``offline-run-*/run-<id>.wandb`` file."""

    run_id: str = ""
    project: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    start: float = 0.0
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def _records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the rest of the block is padding
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_sessions(root: Path) -> list[Session]:
    """Every offline session under ``root`` (``<dir>/wandb/offline-run-*``), oldest first."""
    wandb.teardown()  # the W&B service writes the run files in the background: wait until it has written them all
    sessions = []
    for path in root.glob("wandb/offline-run-*/run-*.wandb"):
        s = Session()
        for r in _records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                s.run_id, s.project, s.name, s.tags = r.run.run_id, r.run.project, r.run.display_name, list(r.run.tags)
                s.start = r.run.start_time.seconds + r.run.start_time.nanos / 1e9
            elif kind == "config":
                s.config |= {_key(i): json.loads(i.value_json) for i in r.config.update}
            elif kind == "history":
                s.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                s.summary |= {_key(i): json.loads(i.value_json) for i in r.summary.update}
            elif kind == "exit":
                s.exit_code = r.exit.exit_code
        sessions.append(s)
    return sorted(sessions, key=lambda s: s.start)


def points(sessions: list[Session], key: str) -> list[tuple[int, float]]:
    return sorted((h["_step"], round(h[key], 4)) for s in sessions for h in s.history if key in h)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """W&B offline, its files under tmp_path/wb; the working directory is tmp_path/cwd (nothing may land there)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "wb"


def test_wandb_scalars_config_summary_and_resume_into_the_same_run(tmp_path, offline):
    spec = {"kind": "wandb", "project": "proj", "mode": "offline", "tags": {"lmpipe.asset": "pre"}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    session(spec, run_dir, range(1, 8), resumed_from=None, done=False)  # crashed after step 7
    (first,) = read_sessions(offline)
    assert first.run_id.startswith("0123456789abcdef-") and first.name == "0123456789abcdef"
    assert first.project == "proj" and first.tags == ["lmpipe.asset=pre"] and first.exit_code == 1
    assert first.config["model"] == {"n_layer": 2, "n_embd": 32}
    assert first.config["train"]["betas"] == [0.9, 0.95]
    assert first.config["lmpipe"]["resumed_from"] is None

    resumed = CONFIG | {"train": CONFIG["train"] | {"log_every": 2}}  # a resumable change
    session(spec, run_dir, range(5, 11), resumed_from=4, offset=100.0, config=resumed)
    sessions = read_sessions(offline)
    assert [s.run_id for s in sessions] == [first.run_id] * 2, "the resumed session continues the same run id"
    loss = points(sessions, "train/loss")
    assert [s for s, _ in loss] == list(range(1, 11)), "each step once: 5..7 from the first session"
    assert loss[6] == (7, 4.3) and loss[7] == (8, 104.2)
    assert [s for s, _ in points(sessions, "val/loss")] == [2, 4, 6, 8, 10]
    assert {k for s in sessions for h in s.history for k in h if not k.startswith("_")} == {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens",
        "perf/tokens_per_s",
        "val/loss",
    }, "None (mfu) and paths (checkpoint) are not scalars"
    last = sessions[1]
    assert last.exit_code == 0 and last.summary["final/train_loss"] == 4.2 and last.summary["final/params"] == 12345
    assert "final/mfu" not in last.summary
    assert last.config["train"]["log_every"] == 2 and last.config["lmpipe"]["resumed_from"] == 4
    assert json.loads((run_dir / STATE_FILE).read_text()) == {"id": first.run_id, "last_step": 10}

    session(spec, run_dir, range(1, 3), resumed_from=None)  # starting over is a new W&B run
    newest = read_sessions(offline)[-1]
    assert newest.run_id != first.run_id and newest.run_id.startswith("0123456789abcdef-")
    assert [h["_step"] for h in newest.history] == [1, 2]
    assert not any((tmp_path / "cwd").iterdir())


def test_a_real_training_run_crashed_and_resumed_logs_each_step_once(tmp_path, offline):
    shards = write_synthetic_shards(tmp_path / "shards")
    model = tiny(vocab_size=64, context_length=32)
    outlets = Outlets(tracker={"kind": "wandb", "dir": str(tmp_path / "own")})  # mode from $WANDB_MODE: offline

    class Crash(Exception):
        pass

    def crash_at_8(record: dict) -> None:
        if record["step"] == 8:
            raise Crash

    with pytest.raises(Crash):
        train(model, config(), shards, tmp_path / "runs", callback=crash_at_8, outlets=outlets)
    summary = train(model, config(), shards, tmp_path / "runs", outlets=outlets)
    assert summary.resumed_from == 6
    assert not offline.exists(), "the spec's dir wins over $WANDB_DIR"
    sessions = read_sessions(tmp_path / "own")
    assert len(sessions) == 2 and sessions[0].run_id == sessions[1].run_id
    assert sessions[0].project == "lmpipe" and [s.exit_code for s in sessions] == [1, 0]
    loss = points(sessions, "train/loss")
    assert [s for s, _ in loss] == list(range(1, 13)), "steps 7 and 8 once, though the resumed run trained them again"
    records = [json.loads(line) for line in (Path(summary.run_dir) / METRICS_FILE).read_text().splitlines()]
    assert [(r["step"], round(r["loss"], 4)) for r in records if r["step"] > 8] == loss[8:]
    assert [s for s, _ in points(sessions, "val/loss")] == [6, 12]
    assert sessions[1].summary["final/step"] == 12 and sessions[1].summary["final/params"] == summary.params
    assert sessions[0].config["train"]["max_steps"] == 12
