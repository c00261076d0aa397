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

from lmcore.io import exclusive_lock

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


def prepare_home() -> Path:
    """Create the home and the Dagster instance config, and point ``DAGSTER_HOME`` at it."""
    home = lmpipe_home()
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
    return home
