"""Run identity: which directory a training run uses, and so what it resumes.

A run's identity is the config the loop saves in every checkpoint: the model, the resolved
train config, the world size and the job's own fields (data version, init checkpoint, LoRA,
classifier head, ...). :func:`run_dir` names the directory by a digest of the identity
without the fields a resumed run may change (``RESUMABLE_CHANGES``), and
:func:`check_resumable` is the compatibility check with the same exclusions, so two runs
share a directory exactly when one may resume the other. Every training entry point
(pretraining, SFT, task adaptation, classifiers) goes through ``lmcore.train.loop.run_job``,
which calls both. This module knows nothing of Dagster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmcore.io import digest_of
from lmcore.model.checkpoint import check_compatible
from lmcore.model.gpt import ModelConfig
from lmcore.train.config import RESUMABLE_CHANGES, TrainConfig


def run_identity(model: ModelConfig, train: TrainConfig, world_size: int, job: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records as ``meta["config"]`` and a resumed run must match (``train`` resolved)."""
    clash = sorted({"model", "train", "world_size"} & set(job))
    if clash:
        raise ValueError(f"job config keys {clash} are the loop's own; rename them")
    return {"model": model.to_dict(), "train": train.to_dict(), "world_size": world_size, **job}


def run_key(identity: dict[str, Any]) -> str:
    """16 hex digits over the identity without the resumable fields (``train.log_every``, ...)."""
    stable = json.loads(json.dumps(identity))  # tuples -> lists, as check_compatible compares them
    for dotted in RESUMABLE_CHANGES:
        section, name = dotted.split(".", 1)
        stable.get(section, {}).pop(name, None)
    return digest_of(stable)[:16]


def run_dir(runs_dir: str | Path, identity: dict[str, Any]) -> Path:
    """``runs_dir/<run_key>``: the one directory of this run."""
    return Path(runs_dir) / run_key(identity)


def check_resumable(meta: dict[str, Any], identity: dict[str, Any], source: str | Path) -> None:
    """Raise ValueError naming every field where a checkpoint's config differs from ``identity``."""
    check_compatible(meta, identity, ignore=RESUMABLE_CHANGES, source=source)
