"""Integration fixtures: a fresh LMPIPE_HOME per test and a tiny profile over fixture text."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LMPIPE_HOME", str(h))
    return h


def write_profile(path: Path, sources: list[str], **overrides) -> Path:
    """A small, fast profile: a vocabulary of 300 and large val/test fractions so every split has text."""
    assets = {
        "raw_corpus": {"sources": sources},
        "clean_corpus": {"min_doc_chars": 20, "max_doc_chars": 2000},
        "splits": {"val_fraction": 0.2, "test_fraction": 0.2},
        "tokenizer": {"vocab_size": 300},
        "tokenized": {"shard_tokens": 4096},
    }
    for asset, fields in overrides.items():
        assets.setdefault(asset, {}).update(fields)
    path.write_text(yaml.safe_dump({"description": "test profile", "assets": assets}))
    return path


@pytest.fixture()
def corpus_dir(tmp_path) -> Path:
    """Fixture text as a directory of .txt and .jsonl files (about 40 documents)."""
    return make_corpus(tmp_path / "corpus")


def make_corpus(d: Path) -> Path:
    """Write the fixture corpus (about 40 documents in .txt and .jsonl files) into a new directory ``d``."""
    d.mkdir()
    text = (FIXTURES / "small_corpus.txt").read_text(encoding="utf-8")
    docs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    for i, doc in enumerate(docs[:20]):
        (d / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    with open(d / "more.jsonl", "w", encoding="utf-8") as f:
        for doc in docs[20:]:
            f.write(json.dumps({"text": doc}) + "\n")
    return d


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else in Debian's versioned directory (not on PATH there)."""
    found = shutil.which(name)
    if found is None:
        candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
        found = str(candidates[-1]) if candidates else None
    return found


@pytest.fixture()
def postgres():
    """A throwaway PostgreSQL cluster on a free port with a database ``lmpipe``; yields the port.

    Without the server programs this skips, except in CI (``CI`` set, as ``.ci/run`` does), where the
    Postgres tests must run: there it fails.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        reason = "PostgreSQL server programs (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the Postgres tests: install postgresql (apt-get install postgresql)")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="lmpipe-pg-"))  # pytest's tmp root is private to root
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    run = lambda cmd: subprocess.run(_as_postgres(cmd), check=True, capture_output=True, text=True)  # noqa: E731
    run([initdb, "-D", str(data), "-U", "postgres", "-A", "trust"])
    opts = f"-h 127.0.0.1 -p {port} -k {data}"
    run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "server.log"), "-w", "start"])
    try:
        run([_pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "lmpipe"])
        yield port
    finally:
        run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def use_postgres(home: Path, port: int) -> None:
    """Point ``home``'s Dagster instance at the ``postgres`` fixture's database (before the first run there)."""
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        # +psycopg2: SQLAlchemy 2.1 defaults postgresql:// to psycopg 3, which dagster-postgres' NOTIFY breaks on.
        f"storage:\n  postgres:\n    postgres_url: postgresql+psycopg2://postgres@127.0.0.1:{port}/lmpipe\n"
    )
