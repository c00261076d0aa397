"""Opening the tracker a spec names: TensorBoard and MLflow (:mod:`lmcore.train.tracking`), Weights & Biases
(:mod:`lmcore.train.tracking_wandb`). Each imports its package only when opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmcore.train.tracking import MlflowTracker, RunInfo, TensorBoardTracker, Tracker, check_spec
from lmcore.train.tracking_wandb import WandbTracker


def open_tracker(spec: dict[str, Any] | None, run: RunInfo) -> Tracker | None:
    """The tracker ``spec`` describes, opened for ``run``; None for no spec or kind 'none'."""
    parsed = check_spec(spec)
    if parsed is None:
        return None
    if parsed.kind == "tensorboard":
        log_dir = run.run_dir / "tensorboard" if parsed.log_dir is None else Path(parsed.log_dir) / run.run_key
        return TensorBoardTracker(log_dir, run)
    if parsed.kind == "wandb":
        return WandbTracker(parsed, run)
    return MlflowTracker(parsed, run)
