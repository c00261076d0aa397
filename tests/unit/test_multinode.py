"""Launching: LaunchConfig's checks and torchrun commands, and two "nodes" on this machine (two torchrun agents
meeting at a c10d rendezvous on 127.0.0.1, gloo) training exactly as one node with two processes."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lmcore.finetune.sft import epoch_seed, rank_share
from lmcore.train.job import WINDOW_LOG_ENV
from lmcore.train.launch import LaunchConfig, torchrun_argv
from tests.unit.test_ddp import write_shards

REPO = Path(__file__).resolve().parents[2]
ENTRY = ["-m", "lmcore.train.entry"]
TIMEOUT_S = 240


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"nproc_per_node": 0}, "nproc_per_node must be >= 1"),
        ({"nnodes": 0}, "nnodes must be >= 1"),
        ({"nnodes": 2}, 'nnodes=2 needs rdzv_endpoint: "host:port"'),
        ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"}, "node_rank must be in [0, nnodes=2)"),
        ({"rdzv_endpoint": "node0"}, 'rdzv_endpoint must be "host:port"'),
        ({"rdzv_endpoint": "node0:70000"}, "port in 1..65535"),
        ({"rdzv_backend": "etcd"}, "rdzv_backend must be one of ('c10d', 'static')"),
        ({"rdzv_id": "a b"}, "rdzv_id must be letters"),
    ],
)
def test_a_bad_launch_names_the_field_and_the_fix(fields, message):
    with pytest.raises(ValueError, match="invalid LaunchConfig") as e:
        LaunchConfig(**fields)
    assert message in str(e.value)


def test_one_node_is_standalone_and_several_meet_at_the_endpoint():
    program = [*ENTRY, "--config", "spec.json"]
    one = LaunchConfig(nproc_per_node=4)
    assert not one.in_process and one.world_size == 4 and LaunchConfig().in_process
    assert torchrun_argv(one, program, python="py") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=4",
        "--standalone",
        *program,
    ]
    node = LaunchConfig(nproc_per_node=8, nnodes=4, node_rank=3, rdzv_endpoint="trainer-0.trainer:29500")
    assert node.world_size == 32
    assert torchrun_argv(node, program, job_id="run-1", python="py") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=8",
        "--nnodes=4",
        "--node-rank=3",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=trainer-0.trainer:29500",
        "--rdzv-id=run-1",
        *program,
    ]
    fixed = LaunchConfig(nnodes=2, rdzv_endpoint="[::1]:29500", rdzv_id="mine", rdzv_backend="static")
    assert "--rdzv-id=mine" in torchrun_argv(fixed, program, job_id="ignored")
    with pytest.raises(ValueError, match="rdzv_id"):
        torchrun_argv(LaunchConfig(nnodes=2, rdzv_endpoint="h:1"), program)


def test_example_shares_are_disjoint_equal_and_leave_out_other_examples_each_epoch():
    items = list(range(7))
    assert rank_share(items, 0, 1, seed=3) == items, "one process: every example, in order"
    left_out = set()
    for epoch in range(6):
        seed = epoch_seed(0, epoch)
        shares = [rank_share(items, r, 3, seed) for r in range(3)]
        assert [len(s) for s in shares] == [2, 2, 2] and len(set().union(*shares)) == 6
        left_out |= set(items) - set().union(*shares)
    assert len(left_out) > 1, "the example left out changes from epoch to epoch"
    with pytest.raises(ValueError, match="2 training examples cannot be shared by 3 processes"):
        rank_share(items[:2], 0, 3, seed=0)
    validation = [rank_share(items[:2], r, 3, seed=0, fill=True) for r in range(3)]
    assert [len(s) for s in validation] == [1, 1, 1] and set().union(*validation) == {0, 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _isolation() -> list[str]:
    """A prefix that runs a command in a network namespace of its own, loopback only, where that is allowed."""
    probe = ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", "ip link set lo up"]
    with contextlib.suppress(OSError):
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return probe[:-1]
    return ["sh", "-c"]


def _tagged(tag: str) -> list[int]:
    """Pids of processes whose environment holds ``LMCORE_TEST_TAG=tag`` (agents and their workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and f"LMCORE_TEST_TAG={tag}".encode() in (proc / "environ").read_bytes().split(
                b"\0"
            ):
                found.append(int(proc.name))
    return found


def _run_agents(argvs: list[list[str]], tmp_path: Path, windows: Path | None = None) -> list[str]:
    """Run torchrun agents side by side; their stdouts. With ``windows``, each rank logs the windows it draws there.

    They run in a network namespace with only loopback where the machine allows one (c10d's TCP stores listen on
    every interface; there, no other machine can reach them); gloo and the agents' addresses are 127.0.0.1 anyway.
    On a failure or timeout every agent and worker is killed: the agents' process group gets SIGTERM, which each
    agent passes on to its workers (sessions of their own), then anything left with this run's tag gets SIGKILL.
    """
    tag = uuid.uuid4().hex
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "PET_LOCAL_ADDR": "127.0.0.1",
        "LMCORE_TEST_TAG": tag,
    }
    if windows is not None:
        env[WINDOW_LOG_ENV] = str(windows)
    files = [
        (tmp_path / f"{tag}-{i}.out", tmp_path / f"{tag}-{i}.err", tmp_path / f"{tag}-{i}.rc")
        for i in range(len(argvs))
    ]
    isolation = _isolation()
    script = ["ip link set lo up || exit 97"] if isolation[0] == "unshare" else []
    script += [
        f"{shlex.join(argv)} >{out} 2>{err} & p{i}=$!"
        for i, (argv, (out, err, _)) in enumerate(zip(argvs, files, strict=True))
    ]
    script += [f"wait $p{i}; echo $? >{rc}" for i, (_, _, rc) in enumerate(files)]
    driver = subprocess.Popen([*isolation, "\n".join(script)], cwd=REPO, env=env, start_new_session=True)
    try:
        driver.wait(timeout=TIMEOUT_S)
        for argv, (_, err, rc) in zip(argvs, files, strict=True):
            code = rc.read_text().strip() if rc.exists() else f"none (driver exited {driver.returncode})"
            errors = [line for line in err.read_text().splitlines() if "Error" in line or line.startswith("[rank")]
            assert code == "0", f"{shlex.join(argv)} exited {code}:\n" + "\n".join(errors[-40:])
        return [out.read_text() for out, _, _ in files]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _tagged(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        driver.wait()


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _windows(window_dir: Path) -> dict[int, dict[int, list[int]]]:
    """Windows drawn, by epoch and rank."""
    drawn: dict[int, dict[int, list[int]]] = {}
    for rank in (0, 1):
        for line in (window_dir / f"rank-{rank}.txt").read_text().splitlines():
            epoch, _, *idx = map(int, line.split())
            drawn.setdefault(epoch, {0: [], 1: []})[rank].extend(idx)
    return drawn


@pytest.mark.skipif(sys.platform != "linux", reason="kills leftover workers through /proc")
def test_two_nodes_train_each_window_once_per_epoch_and_match_one_node(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", train_tokens=32 * 50 + 1, val_tokens=32 * 20)
    train = dict(max_steps=9, batch_size=4, lr=1e-3, eval_batches=1, eval_every=3, log_every=1, device="cpu")
    model = {"preset": "tiny", "vocab_size": 64, "context_length": 32}

    def spec(name: str) -> list[str]:
        path = tmp_path / f"{name}.json"
        runs = {"runs_dir": str(tmp_path / name / "runs")}
        path.write_text(json.dumps({"model": model, "train": train, "shard_root": str(shards), **runs}))
        return [*ENTRY, "--config", str(path)]

    program = spec("two_nodes")
    endpoint, rdzv_id = f"127.0.0.1:{_free_port()}", f"test-{uuid.uuid4().hex[:12]}"
    nodes = [
        torchrun_argv(LaunchConfig(nnodes=2, node_rank=r, rdzv_endpoint=endpoint, rdzv_id=rdzv_id), program)
        for r in (0, 1)
    ]
    assert all("--nnodes=2" in argv and "--rdzv-backend=c10d" in argv for argv in nodes)
    two_nodes = [e for out in _run_agents(nodes, tmp_path, tmp_path / "two_nodes" / "windows") for e in _events(out)]
    one = [torchrun_argv(LaunchConfig(nproc_per_node=2), spec("one_node"))]
    (one_node,) = _run_agents(one, tmp_path, tmp_path / "one_node" / "windows")

    # rank 0 (on whichever node the rendezvous put it) alone reports: 9 metrics lines and one summary
    assert [e["event"] for e in two_nodes] == ["metrics"] * 9 + ["summary"]
    summary, reference = two_nodes[-1], _events(one_node)[-1]
    assert summary["world_size"] == reference["world_size"] == 2 and summary["step"] == 9

    # 50 windows, 25 per rank, 6 batches of 4 per rank per epoch: steps 1-6 are epoch 0, 7-9 epoch 1
    drawn = _windows(tmp_path / "two_nodes" / "windows")
    for epoch, by_rank in drawn.items():
        r0, r1 = by_rank[0], by_rank[1]
        assert len(r0) == len(r1) == (24 if epoch == 0 else 12)
        assert len(set(r0 + r1)) == len(r0 + r1), f"epoch {epoch}: a window was drawn twice"
    assert len(drawn[0][0] + drawn[0][1]) == 48, "epoch 0 draws 48 of the 50 windows, each once"
    assert drawn == _windows(tmp_path / "one_node" / "windows"), "each rank draws what it draws on one node"

    # The same global batch and the same arithmetic (each all-reduce sums two numbers): equal, not merely close.
    assert summary["loss_history"] == reference["loss_history"]
    assert summary["val_history"] == reference["val_history"]
    assert summary["checkpoint_sha256"] == reference["checkpoint_sha256"]
