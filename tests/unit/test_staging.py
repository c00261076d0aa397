"""Staging directories: a killed process's is removed by the next stager, a live process's never."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from lmcore.io import remove_stale_staging, staging_dir

_HOLD = """
import sys, time
from lmcore.io import staging_dir
with staging_dir(sys.argv[1]) as s:
    (s / "part-00000.parquet").write_text("half")
    print(s, flush=True)
    time.sleep(120)
"""


def _hold(parent: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(parent)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_live_runs_staging_is_kept_and_a_killed_ones_is_removed(tmp_path):
    proc, held = _hold(tmp_path)
    try:
        assert held.is_dir() and remove_stale_staging(tmp_path) == []
        with staging_dir(tmp_path) as mine:  # another stager on the same parent leaves it alone too
            assert held.is_dir() and mine.is_dir()
        assert held.is_dir() and not mine.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert held.is_dir()  # kill -9 ran no cleanup
    with staging_dir(tmp_path):
        assert not held.exists()


def test_staging_left_without_a_lock_by_an_older_version_is_removed(tmp_path):
    old = tmp_path / ".staging-abc123"
    old.mkdir()
    (old / "x").write_text("half")
    published = tmp_path / "0123456789abcdef"
    published.mkdir()
    assert remove_stale_staging(tmp_path) == [old]
    assert not old.exists() and published.is_dir()


def test_a_published_staging_dir_is_not_removed_while_its_lock_is_held(tmp_path):
    with staging_dir(tmp_path) as staging:
        (staging / "manifest.json").write_text("{}")
        final = tmp_path / "v1"
        staging.rename(final)  # what publish_dir does
        assert remove_stale_staging(tmp_path) == [] and final.is_dir()
    assert final.is_dir() and remove_stale_staging(tmp_path) == [] and final.is_dir()
