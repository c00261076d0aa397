"""What every data asset does around its one lmcore call: stage, publish, version, report."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg

from assets.resources import ArtifactStore
from lmcore.io import digest_of, read_json
from lmcore.train.config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("torch", "tokenizers", "pyarrow", "polars", "dagster", "numpy")


def code_version(*modules: ModuleType) -> str:
    """Digest of the source of the modules a stage runs: it changes when their logic changes."""
    h = hashlib.sha256()
    for module in modules:
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:12]


def run_stage(store: ArtifactStore, asset: str, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Call ``build(staging_dir)``, publish the directory, and return the artifact reference.

    The reference (``path``, ``data_version``) is the asset's value; the full manifest is on disk.
    """
    with store.stage(asset) as staging:
        build(staging)
        location, version = store.publish(staging, asset)
    return {"path": location, "data_version": version}


def load_manifest(store: ArtifactStore, ref: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Local path and manifest of an upstream artifact reference."""
    path = store.local_path(ref["path"])
    return path, read_json(path / "manifest.json")


def train_config_of(config: dg.Config) -> TrainConfig:
    """The lmcore TrainConfig from the fields an asset's config shares with it (one place for the mapping)."""
    fields = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in config.model_dump().items() if k in fields})


@functools.cache
def _environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain")),
            "versions": versions}  # fmt: skip


def reproducibility(config: dg.Config | None, inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What it takes to reproduce a materialization: config and hash, seed, code and library versions, inputs."""
    cfg = config.model_dump() if config is not None else {}
    return {
        "config": cfg,
        "config_sha256": digest_of(cfg),
        "seed": cfg.get("seed"),
        **_environment(),
        "inputs": {name: ref["data_version"] for name, ref in inputs.items()},
    }


def output(
    ref: dict[str, Any],
    metadata: dict[str, Any],
    *,
    config: dg.Config | None = None,
    inputs: dict[str, dict[str, Any]] | None = None,
) -> dg.Output:
    """The asset's value (artifact reference) with its metadata, data version and reproducibility manifest."""
    manifest = reproducibility(config, inputs or {})
    return dg.Output(
        ref,
        metadata={
            **metadata,
            "artifact_path": dg.MetadataValue.path(ref["path"]),
            "data_version": ref["data_version"],
            "config_sha256": manifest["config_sha256"],
            "reproducibility": dg.MetadataValue.json(manifest),
        },
        data_version=dg.DataVersion(ref["data_version"]),
    )
