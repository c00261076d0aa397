"""What every data asset does around its one lmcore call: stage, publish, version, report."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg

from assets.resources import ArtifactStore
from lmcore.io import read_json


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


def output(ref: dict[str, Any], metadata: dict[str, Any]) -> dg.Output:
    return dg.Output(
        ref,
        metadata={**metadata, "artifact_path": dg.MetadataValue.path(ref["path"]), "data_version": ref["data_version"]},
        data_version=dg.DataVersion(ref["data_version"]),
    )
