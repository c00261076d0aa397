"""Local Celery workers and partition runs for the Celery tests (production needs neither: see ``pipelines.celery``).

Starts worker processes on a ``CeleryConfig``'s queue and stops them, gives each test session a queue and result
keys of its own, runs one job per partition key in processes of their own, and reads back which worker ran each
step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from pipelines.celery import BACKEND_ENV, BROKER_ENV, CeleryConfig, celery_job
from pipelines.home import PROJECT_ROOT

if TYPE_CHECKING:
    from dagster._core.instance.ref import InstanceRef


def execute_partitions(
    instance: dg.DagsterInstance,
    config: CeleryConfig,
    module: str,
    job_name: str,
    partition_keys: Sequence[str | tuple[str, str]],
    *,
    attr: str = "defs",
    timeout_s: float = 600.0,
    run_config: dict | None = None,
) -> list[dg.DagsterRun]:
    """Run ``celery_job(module, job_name, attr)`` once per partition key, all at once; the finished runs, in order.

    ``run_config`` (e.g. a profile's asset config) is sent with the executor's ``execution`` block.

    Each run is orchestrated in a process of its own, as a run launcher would (``execute_job`` in threads
    deadlocks: every run reconfigures ``logging`` while the others log), with this process's environment of now.
    Raises TimeoutError after ``timeout_s`` (the processes are terminated; their runs stay unfinished).
    """
    if instance.is_ephemeral:
        raise ValueError("execute_partitions: the instance is ephemeral; workers need one on disk or Postgres")
    if not partition_keys:
        raise ValueError("execute_partitions: partition_keys is empty; pass at least one key")
    environ = dict(os.environ)
    merged = {**(run_config or {}), **config.run_config()}  # the job's own config (ops) plus the executor's
    args = [(environ, instance.get_ref(), merged, module, job_name, attr, k) for k in partition_keys]
    # forkserver: a fresh single-threaded process imports Dagster once and forks each run from it. Not the job's
    # module: the server lives on, and what a module reads from the environment at import would go stale.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(len(args), maxtasksperchild=1) as pool:  # on leaving (a timeout too): terminate()
        try:
            run_ids = pool.starmap_async(_execute_partition, args).get(timeout=timeout_s)
        except multiprocessing.TimeoutError:
            late = f"{job_name} runs of partitions {list(partition_keys)} not done in {timeout_s:.0f} s"
            raise TimeoutError(f"{late}: do workers consume queue {config.queue!r}? See their logs") from None
        pool.close()  # a run leaves Dagster's SIGTERM handler behind: let them exit instead
        pool.join()
    return [instance.get_run_by_id(run_id) for run_id in run_ids]  # type: ignore[misc]  (just written)


def _execute_partition(
    environ: dict[str, str],
    ref: InstanceRef,
    run_config: dict,
    module: str,
    job_name: str,
    attr: str,
    key: str | tuple[str, str],
) -> str:
    os.environ.clear()
    os.environ.update(environ)
    # dagster-celery registers its task once per step on the same app; Celery 5.7 warns each time. Harmless.
    warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")
    with dg.DagsterInstance.from_ref(ref) as instance:
        job = celery_job(module, job_name, attr)
        return dg.execute_job(job, instance, run_config=run_config, tags=partition_tags(key)).run_id


def partition_tags(key: str | tuple[str, str]) -> dict[str, str]:
    """The run tags of one partition key, or of a ``(first, last)`` range of them (one run, one step per asset)."""
    if isinstance(key, tuple):
        return {"dagster/asset_partition_range_start": key[0], "dagster/asset_partition_range_end": key[1]}
    return {"dagster/partition": key}


def check_services(config: CeleryConfig) -> list[str]:
    """What is unreachable among the broker and the backend, each with how to start it; empty when both answer."""
    import redis

    problems = []
    try:
        with Connection(config.broker, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure to connect is reported, with its text
        problems.append(
            f"RabbitMQ at {maybe_sanitize_url(config.broker)} ({exc}): start it "
            f"(`service rabbitmq-server start`) or point ${BROKER_ENV} at a running broker"
        )
    try:
        redis.Redis.from_url(config.backend, socket_connect_timeout=3).ping()
    except Exception as exc:
        problems.append(
            f"Redis at {maybe_sanitize_url(config.backend)} ({exc}): start it "
            f"(`redis-server --daemonize yes`) or point ${BACKEND_ENV} at a running server"
        )
    return problems


@contextlib.contextmanager
def isolated(config: CeleryConfig) -> Iterator[CeleryConfig]:
    """``config`` with a queue and a result key prefix of its own; deletes both on exit.

    Runs and workers of another isolated config (a parallel test session, a stale worker) on the same broker and
    Redis never take its tasks or see its results.
    """
    import redis

    token = uuid.uuid4().hex[:10]
    own = dataclasses.replace(config, queue=f"lmpipe-{token}", key_prefix=f"lmpipe-{token}:")
    try:
        yield own
    finally:
        with Connection(own.broker, connect_timeout=3) as conn:  # both deletes succeed when nothing was declared
            conn.default_channel.queue_delete(own.queue)
            conn.default_channel.exchange_delete(own.queue)  # Celery's exchange for a queue outside task_queues
        client = redis.Redis.from_url(own.backend, socket_connect_timeout=3)
        keys = list(client.scan_iter(match=f"{own.key_prefix}*", count=1000))
        if keys:
            client.delete(*keys)


@contextlib.contextmanager
def workers(
    config: CeleryConfig,
    count: int,
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    pool: str = "solo",
    ready_timeout_s: float = 60.0,
) -> Iterator[list[str]]:
    """Start ``count`` local workers (one step at a time each) on ``config``'s queue; yields their node names.

    The default pool is ``solo``: a step runs in the worker's own process, which may start the data stages' worker
    processes (a ``prefork`` child is a daemon and may not, so its steps would run their partitions one by one).

    Each logs to ``log_dir/<name>.log`` and runs in the project root with ``os.environ`` plus ``env`` (what the
    job's resources read, e.g. ``LMPIPE_HOME``). Returns once every worker answers a ping; raises RuntimeError
    with the log's tail when one exits or stays silent. On exit (also on an error) each gets SIGTERM (warm
    shutdown), then SIGKILL for its process group; a worker also gets SIGTERM if the starting thread dies.
    """
    if count < 1:
        raise ValueError(f"count={count}: expected at least one worker")
    log_dir.mkdir(parents=True, exist_ok=True)
    config_dir = log_dir / f"config-{config.queue}"
    config_dir.mkdir(exist_ok=True)
    _write_config_module(config, config_dir / "dagster_celery_config.py")
    base = {**os.environ, **(env or {})}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(config_dir), base.get("PYTHONPATH")) if p)
    names = [f"{config.queue}-{i + 1}@{socket.gethostname()}" for i in range(count)]
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in names:
            procs[name] = _start_worker(name, config.queue, pool, base, log_dir / f"{name.split('@')[0]}.log")
        _wait_until_pinged(config, procs, log_dir, ready_timeout_s)
        yield names
    finally:
        _stop(list(procs.values()))


def worker_command(name: str, queue: str, pool: str = "solo") -> list[str]:
    """The worker command line; ``dagster_celery_config`` (broker, backend, settings) must be on PYTHONPATH.

    It is what ``dagster-celery worker start -A dagster_celery.app -q QUEUE -n NAME`` runs, without the wrapper
    process in between, so SIGTERM reaches the worker itself. No gossip or mingle: workers of other sessions on
    the broker stay out of it, and startup is a second faster.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "dagster_celery.app",
        "worker",
        "--hostname",
        name,
        "--queues",
        queue,
        "--concurrency",
        "1",
        "--pool",
        pool,
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def step_workers(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key -> node name of the Celery worker that ran it, from the engine events the workers record."""
    found = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if "Celery worker" in metadata and event.step_key:
            found[event.step_key] = metadata["Celery worker"].value
    return found


def _write_config_module(config: CeleryConfig, path: Path) -> None:
    # dagster_celery.app loads a module of this name when it is importable (as `dagster-celery worker start` does).
    lines = [f"broker_url = {config.broker!r}", f"result_backend = {config.backend!r}"]
    lines += [f"{key} = {value!r}" for key, value in config.settings().items()]
    path.write_text("\n".join(lines) + "\n")


def _start_worker(name: str, queue: str, pool: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            worker_command(name, queue, pool),
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_term_with_parent,
        )


def _term_with_parent() -> None:
    # Linux: SIGTERM to the worker when the thread that started it dies (a killed test run leaves no worker).
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_until_pinged(
    config: CeleryConfig, procs: dict[str, subprocess.Popen], log_dir: Path, timeout_s: float
) -> None:
    from celery import Celery

    with Celery("lmpipe-ping", broker=config.broker) as app:
        _ping_loop(app, procs, log_dir, time.monotonic() + timeout_s, timeout_s)


def _ping_loop(app: Any, procs: dict[str, subprocess.Popen], log_dir: Path, deadline: float, timeout_s: float) -> None:
    waiting = set(procs)
    while waiting:
        for name in waiting:
            if procs[name].poll() is not None:
                raise RuntimeError(
                    f"celery worker {name} exited with {procs[name].returncode}:\n{_tail(name, log_dir)}"
                )
        if time.monotonic() > deadline:
            tails = "\n".join(_tail(name, log_dir) for name in sorted(waiting))
            raise RuntimeError(f"celery workers {sorted(waiting)} did not answer a ping in {timeout_s:.0f} s:\n{tails}")
        for reply in app.control.ping(destination=sorted(waiting), timeout=1.0):
            waiting -= set(reply)


def _tail(name: str, log_dir: Path, lines: int = 30) -> str:
    log = log_dir / f"{name.split('@')[0]}.log"
    text = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
    return f"--- {log} (last {lines} lines)\n" + "\n".join(text[-lines:])


def _stop(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    for proc in procs:  # all at once: a warm shutdown takes a few seconds each
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):  # what is left: a stuck worker, its pool children
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
