"""What every asset returns around its one lmcore call: the handle, metadata, data version, reproducibility."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg

from assets.artifacts import Artifact
from assets.io_manager import config_digest
from assets.plots import line_chart
from lmcore.cpu import dispatch_level
from lmcore.train.summary import TrainSummary

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("torch", "tokenizers", "pyarrow", "polars", "dagster", "numpy")
SET_TAG = "lmpipe/set"
"""Run tag holding the ``lmpipe run --set`` overrides (a JSON list of ``asset.field=value``)."""


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
    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain")),
        "versions": versions,
        "cpu_dispatch": dispatch_level(),
    }


def reproducibility(
    context: dg.AssetExecutionContext, config: dg.Config | None, inputs: dict[str, Artifact]
) -> dict[str, Any]:
    """What it takes to reproduce a materialization: config and the digest of the step's resolved config (what the
    definition metadata ``lmpipe/config_sha256`` gives for the code location's own config), ``--set`` overrides,
    code, inputs."""
    return {
        "config": config.model_dump() if config is not None else {},
        "config_sha256": config_digest(context.op_execution_context.op_config),
        "overrides": json.loads(context.run.tags.get(SET_TAG, "[]")),
        **_environment(),
        "inputs": {name: artifact.data_version for name, artifact in inputs.items()},
    }


def result(
    context: dg.AssetExecutionContext,
    artifact: Artifact,
    metadata: dict[str, Any],
    *,
    config: dg.Config | None = None,
    inputs: dict[str, Artifact] | None = None,
) -> dg.MaterializeResult:
    """The asset's handle (stored by the IO manager) with its metadata, data version and reproducibility manifest."""
    manifest = reproducibility(context, config, inputs or {})
    return dg.MaterializeResult(
        value=artifact,
        metadata={
            **metadata,
            "artifact_path": dg.MetadataValue.path(artifact.location),
            "data_version": artifact.data_version,
            "config_sha256": manifest["config_sha256"],
            "reproducibility": dg.MetadataValue.json(manifest),
        },
        data_version=dg.DataVersion(artifact.data_version),
    )


def training_metadata(summary: TrainSummary, title: str) -> dict[str, Any]:
    """What every training asset reports: size, steps, losses, throughput, the loss curve."""
    curves = {"train": summary.loss_history, "val": summary.val_history}
    trainable = summary.trainable_params if summary.trainable_params is not None else summary.params
    return {
        "parameters": summary.params,
        "trainable_parameters": trainable,
        "steps": summary.step,
        "train_loss": summary.train_loss,
        "val_loss": summary.val_loss,
        "tokens_per_s": round(summary.tokens_per_s, 1) if summary.tokens_per_s else None,
        "checkpoint_sha256": summary.checkpoint_sha256,
        "resumed_from": str(summary.resumed_from),  # the checkpoint step a killed run carried on from, or None
        "loss_curve": line_chart(title, curves, xlabel="step", ylabel="cross-entropy (nats/token)"),
    }


def upstream_ins(upstream: type) -> dict[str, dg.AssetIn]:
    """One input per field of the dataclass ``upstream``, typed as the field is, for an asset that takes its many
    inputs as ``**upstream`` and reads them as ``upstream(**upstream)``."""
    return {f.name: dg.AssetIn(dagster_type=f.type) for f in dataclasses.fields(upstream)}
