"""The team setting: Dagster run/event/schedule storage in PostgreSQL instead of SQLite.

Uses the throwaway PostgreSQL cluster of the ``postgres`` fixture (tests/integration/conftest.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg
import dagster_postgres  # noqa: F401  (a dev dependency: fail loudly, never skip)

from pipelines.cli import main
from tests.integration.conftest import use_postgres, write_profile


def test_runs_are_recorded_in_postgres(home, tmp_path, corpus_dir, postgres):
    use_postgres(home, postgres)
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "raw_corpus+"]) == 0
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].is_success
    assert instance.get_latest_materialization_event(dg.AssetKey("clean_corpus")) is not None
    out = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(postgres),
            "-U",
            "postgres",
            "-d",
            "lmpipe",
            "-tAc",
            "select count(*) from runs",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == "1"
    assert not Path(home / "dagster" / "storage" / "runs.db").exists()
