"""The team setting: Dagster run/event/schedule storage in PostgreSQL instead of SQLite.

Starts a throwaway PostgreSQL cluster on 127.0.0.1 (Debian's server binaries; run as the
``postgres`` user when the tests run as root) and skips when no server is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from pipelines.cli import main
from tests.integration.conftest import write_profile

pytest.importorskip("dagster_postgres")


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres():
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="lmpipe-pg-"))  # pytest's tmp root is private to root
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    run = lambda cmd: subprocess.run(_as_postgres(cmd), check=True, capture_output=True, text=True)  # noqa: E731
    run(["initdb", "-D", str(data), "-U", "postgres", "-A", "trust"])
    opts = f"-h 127.0.0.1 -p {port} -k {data}"
    run(["pg_ctl", "-D", str(data), "-o", opts, "-l", str(data / "server.log"), "-w", "start"])
    try:
        run(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "lmpipe"])
        yield port
    finally:
        run(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_runs_are_recorded_in_postgres(home, tmp_path, corpus_dir, postgres):
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        # +psycopg2: SQLAlchemy 2.1 defaults postgresql:// to psycopg 3, which dagster-postgres' NOTIFY breaks on.
        f"storage:\n  postgres:\n    postgres_url: postgresql+psycopg2://postgres@127.0.0.1:{postgres}/lmpipe\n"
    )
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "raw_corpus+"]) == 0
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].is_success
    assert instance.get_latest_materialization_event(dg.AssetKey("clean_corpus")) is not None
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(postgres), "-U", "postgres", "-d", "lmpipe", "-tAc",
         "select count(*) from runs"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert out.strip() == "1"
    assert not Path(home / "dagster" / "storage" / "runs.db").exists()
