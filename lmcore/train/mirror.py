"""Checkpoints that travel: every checkpoint of a run published to an fsspec URL, and pulled back to resume.

Layout under the mirror URL (``s3://bucket/lmpipe/pretrained_model/runs``, ``file:///...``)::

    <run_key>/step-00000200/{model.safetensors, optimizer.pt, meta.json}
    <run_key>/metrics.jsonl

A checkpoint is uploaded files first and ``meta.json`` last, so a remote step directory without
``meta.json`` is incomplete and is never resumed from (it is overwritten by the next push of that
step). A pulled checkpoint is written to a staging directory, verified against the digests in its
meta.json, and only then renamed into the local run directory: a torn or corrupted download never
looks like a checkpoint. The newest ``keep`` complete remote checkpoints are kept, as locally.

This module knows nothing of training loops or Dagster.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from lmcore.io import atomic_dir, atomic_path
from lmcore.model.checkpoint import META_FILE, checkpoint_dir, verify_checkpoint

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
_STEP = re.compile(r"^step-(\d{8})$")


class CheckpointMirror:
    """One run's remote copy: ``<url>/<run_key>/``."""

    def __init__(self, url: str, run_key: str) -> None:
        import fsspec

        self.url = f"{url.rstrip('/')}/{run_key}"
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = f"{root.rstrip('/')}/{run_key}"

    def step_url(self, step: int) -> str:
        return f"{self.url}/{checkpoint_dir('', step).name}"

    def push(self, path: Path, keep: int, metrics: Path | None = None) -> str:
        """Upload one local checkpoint directory (meta.json last), then the metrics file; prune old steps."""
        remote = f"{self.root}/{path.name}"
        self.fs.makedirs(remote, exist_ok=True)
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name != META_FILE)
        for file in [*files, path / META_FILE]:
            self.fs.put_file(str(file), f"{remote}/{file.name}")
        if metrics is not None and metrics.exists():
            self.fs.put_file(str(metrics), f"{self.root}/{METRICS_FILE}")
        self.prune(keep)
        return f"{self.url}/{path.name}"

    def steps(self) -> list[int]:
        """Steps of the complete remote checkpoints (those with meta.json), oldest first."""
        if not self.fs.exists(self.root):
            return []
        found = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if (m := _STEP.match(name)) and self.fs.exists(f"{self.root}/{name}/{META_FILE}"):
                found.append(int(m.group(1)))
        return sorted(found)

    def prune(self, keep: int) -> None:
        for step in self.steps()[:-keep]:
            self.fs.rm(f"{self.root}/{checkpoint_dir('', step).name}", recursive=True)

    def pull(self, step: int, run_dir: Path) -> Path:
        """Download remote ``step`` into ``run_dir`` (verified before it appears there); ValueError if corrupt."""
        path = checkpoint_dir(run_dir, step)
        remote = f"{self.root}/{path.name}"
        with atomic_dir(path) as staging:
            for entry in self.fs.ls(remote, detail=False):
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                self.fs.get_file(f"{remote}/{name}", str(staging / name))
            if problems := verify_checkpoint(staging):
                raise ValueError(f"{self.url}/{path.name} is corrupt: " + "; ".join(problems))
        log.info("pulled checkpoint %s/%s into %s", self.url, path.name, run_dir)
        return path

    def pull_metrics(self, run_dir: Path) -> None:
        """The remote metrics.jsonl into ``run_dir`` (the loop truncates it to the resumed step)."""
        remote = f"{self.root}/{METRICS_FILE}"
        if self.fs.exists(remote):
            with atomic_path(run_dir / METRICS_FILE) as tmp:
                self.fs.get_file(remote, str(tmp))

    def pull_newest(self, run_dir: Path, after: int) -> int | None:
        """Pull the newest complete remote checkpoint newer than local step ``after``; its step, or None.

        A remote checkpoint that fails verification is logged and passed over for the next older one.
        """
        for step in reversed(self.steps()):
            if step <= after:
                return None
            try:
                self.pull(step, run_dir)
            except (ValueError, OSError) as e:
                log.warning("skipping remote checkpoint: %s", e)
                continue
            self.pull_metrics(run_dir)
            return step
        return None
