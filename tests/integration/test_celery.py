"""Partition runs on the Celery executor: two local workers, RabbitMQ broker, Redis results, Postgres instance.

Uses the broker and Redis already running (``$LMPIPE_CELERY_BROKER`` / ``$LMPIPE_CELERY_BACKEND``, default
127.0.0.1), each test with a queue and result key prefix of its own, and the ``postgres`` fixture's cluster.
Without the broker or Redis it skips, except in CI (``CI`` set), where it fails naming what to start.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dagster as dg
import pytest

from pipelines.celery import CeleryConfig
from tests.integration import celery_toy
from tests.integration.celery_workers import check_services, execute_partitions, isolated, step_workers, workers
from tests.integration.conftest import use_postgres


@pytest.fixture()
def celery_config():
    """An isolated ``CeleryConfig`` (own queue and result keys, deleted afterwards) on reachable services."""
    config = CeleryConfig.from_env()
    problems = check_services(config)
    if problems:
        reason = "the Celery test needs " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}. CI must run it.")
        pytest.skip(reason)
    with isolated(config) as own:
        yield own


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.json"))}


@pytest.mark.timeout(240)
def test_partition_runs_share_two_workers_and_match_in_process(celery_config, home, tmp_path, monkeypatch, postgres):
    use_postgres(home, postgres)
    out, logs = tmp_path / "celery", tmp_path / "workers"
    monkeypatch.setenv("CELERY_TOY_DIR", str(out))  # the launching side validates the resource config too
    keys = celery_toy.PARTITIONS.get_partition_keys()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        with workers(celery_config, 2, log_dir=logs, env={"CELERY_TOY_DIR": str(out)}) as names:
            runs = execute_partitions(instance, celery_config, celery_toy.__name__, "toy", keys, timeout_s=120)
        failed = [(run.run_id, run.status.value) for run in runs if not run.is_success]
        assert not failed, f"runs failed: {failed}; worker logs in {logs}"
        ran_on = {key: step_workers(instance, run.run_id) for key, run in zip(keys, runs, strict=True)}
    assert all(set(steps) == {"letters", "counts"} for steps in ran_on.values()), ran_on
    assert {worker for steps in ran_on.values() for worker in steps.values()} == set(names), ran_on

    reference = tmp_path / "in_process"
    for key in keys:
        io = celery_toy.JsonIOManager(base_dir=str(reference))
        assert dg.materialize([celery_toy.letters, celery_toy.counts], partition_key=key, resources={"io_manager": io})
    assert len(digests(out)) == 2 * len(keys)
    assert digests(out) == digests(reference)


def _shard_digests(home: Path) -> dict[str, list[str]]:
    from lmcore.io import read_json

    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    mat = instance.get_latest_materialization_event(dg.AssetKey("token_shards")).asset_materialization
    manifest = read_json(mat.metadata["artifact_path"].value + "/manifest.json")
    return {split: [s["sha256"] for s in info["shards"]] for split, info in manifest["splits"].items()}


@pytest.mark.timeout(600)
def test_data_partitions_on_celery_workers_give_the_in_process_shards(
    celery_config, tmp_path, corpus_dir, monkeypatch, postgres
):
    """raw_corpus and clean_corpus, then tokenized, on the Celery executor (two workers, RabbitMQ, Redis, a Postgres
    instance), as a backfill of two runs of eight partitions each would run them; splits, tokenizer and token_shards
    in between, in this process. The shards equal those of a run of the whole data group in one process."""
    from lmcore.data.partitions import PARTITIONS
    from pipelines.cli import main
    from tests.integration.conftest import write_profile

    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    reference, home = tmp_path / "in-process", tmp_path / "celery-home"
    monkeypatch.setenv("LMPIPE_HOME", str(reference))
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0

    use_postgres(home, postgres)
    env = {"LMPIPE_HOME": str(home), "LMPIPE_CELERY_PROFILE": str(profile), "OMP_NUM_THREADS": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from tests.integration import celery_data  # reads $LMPIPE_CELERY_PROFILE, as the workers do

    module, logs = celery_data.__name__, tmp_path / "workers"
    HALVES = [(PARTITIONS[0], PARTITIONS[7]), (PARTITIONS[8], PARTITIONS[15])]  # noqa: N806
    profile_config = load_profile_config(profile)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        with workers(celery_config, 2, log_dir=logs, env=env) as names:
            front = execute_partitions(
                instance,
                celery_config,
                module,
                "partitions_front",
                HALVES,
                run_config=profile_config(celery_data.FRONT),
                timeout_s=400,
            )
            assert all(run.is_success for run in front), f"worker logs in {logs}"
            select = "key:splits or key:base_model or key:tokenizer"  # the tokenizer reads base_model (none here)
            assert main(["run", "--config", str(profile), "--select", select]) == 0
            back = execute_partitions(
                instance,
                celery_config,
                module,
                "partitions_back",
                HALVES,
                run_config=profile_config(celery_data.BACK),
                timeout_s=400,
            )
            assert all(run.is_success for run in back), f"worker logs in {logs}"
        ran_on = {w for run in front + back for w in step_workers(instance, run.run_id).values()}
    assert ran_on == set(names)  # both workers executed partition steps
    assert main(["run", "--config", str(profile), "--select", "token_shards"]) == 0
    assert _shard_digests(home) == _shard_digests(reference)


def load_profile_config(path: Path):
    """``names -> run config`` of those assets from the profile file (as the CLI would send it)."""
    from pipelines.profile import load_profile

    profile = load_profile(config_file=path)
    return lambda names: profile.run_config(set(names))
