"""The project home: ``$LMPIPE_HOME`` (default ``./.lmpipe``) with the Dagster instance and artifacts.

Layout::

    $LMPIPE_HOME/dagster/dagster.yaml   instance settings (SQLite storage, telemetry off)
    $LMPIPE_HOME/artifacts/<asset>/     content-addressed artifact versions
    $LMPIPE_HOME/cache/                 download cache
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from lmcore.io import exclusive_lock, explain_disk_error, remove_stale_staging

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_DAGSTER_YAML = """\
# Written by lmpipe. SQLite storage lives in this directory by default.
# For a team, point run/event/schedule storage at Postgres instead (see README).
telemetry:
  enabled: false
nux:
  enabled: false
# Assets that hold a GPU (pool "gpu") run one at a time across all runs.
concurrency:
  pools:
    default_limit: 1
"""


def lmpipe_home() -> Path:
    return Path(os.environ.get("LMPIPE_HOME", ".lmpipe")).resolve()


ELSEWHERE = "point LMPIPE_HOME at another directory (e.g. LMPIPE_HOME=/data/lmpipe)"
"""The alternative every error about writing the home offers."""


class HomeError(OSError):
    """The project home cannot be created or written; the message names the path and what to do."""


def home_error(exc: BaseException, home: Path) -> HomeError | None:
    """``exc`` as a HomeError when it is a full disk, a read-only home or a file in a directory's place."""
    message = explain_disk_error(exc, home, ELSEWHERE)
    return HomeError(message) if message is not None else None


def prepare_home() -> Path:
    """Create the home and the Dagster instance config, and point ``DAGSTER_HOME`` at it.

    Raises HomeError naming the path when the home cannot be written (read-only, full, not a directory).
    """
    home = lmpipe_home()
    try:
        _prepare(home)
    except Exception as exc:
        if (error := home_error(exc, home)) is not None:
            raise error from exc
        raise
    return home


def _prepare(home: Path) -> None:
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    os.environ["LMPIPE_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    # Two processes starting on a new home would both create the SQLite storage and race on its
    # schema stamp (UNIQUE constraint failed: alembic_version); the first creates it, others wait.
    with exclusive_lock(dagster_home / ".init.lock"):
        if not config.exists():
            config.write_text(_DAGSTER_YAML)
        dg.DagsterInstance.get().dispose()


def remove_stale_staging_dirs(home: Path) -> list[Path]:
    """Remove the staging directories under ``home/artifacts`` left by killed runs (live runs' are kept)."""
    root = home / "artifacts"
    if not root.is_dir():
        return []
    return [p for d in sorted(root.iterdir()) if d.is_dir() for p in remove_stale_staging(d)]
