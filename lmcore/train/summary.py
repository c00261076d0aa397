"""What a training run returns: :class:`TrainSummary`, one typed object for pretraining and fine-tuning alike.

Readers (the assets, the classifiers, the variants) use its attributes. :meth:`TrainSummary.to_dict` is the
one way to a JSON-able dict (a torchrun process's stdout and Pipes message, a report), with the keys the
summary has always had; :meth:`TrainSummary.from_dict` reads such a dict back. This module knows nothing of
how the figures are measured (:mod:`lmcore.train.meter`) or of Dagster.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PATHS = ("checkpoint", "run_dir", "init_checkpoint")
_OMITTED_WHEN_NONE = ("trainable_params", "init_checkpoint", "mask_id")
"""Fields only some runs have: :meth:`TrainSummary.to_dict` leaves them out when None."""


@dataclass(frozen=True, kw_only=True)
class TrainSummary:
    """The outcome of one training run (:func:`lmcore.train.loop.run_job`), as rank 0 saw it."""

    step: int
    """Optimizer steps taken in all (the final checkpoint's step)."""
    train_loss: float | None
    """The last logged training loss (rank-averaged); None when no step was logged."""
    val_loss: float | None
    """The last validation loss; None without validation."""
    tokens_seen: int
    """Tokens trained on, all ranks and sessions together."""
    tokens_per_s: float | None
    """This session's throughput (all ranks), or the whole run's when this session trained no step."""
    mfu: float | None
    """Model FLOPs utilization at that throughput; None without a peak (ranks other than 0) or a throughput."""
    params: int | None
    """Parameters of the saved weights; None where the final checkpoint is not on this node."""
    flops_per_token: float
    """Training FLOPs per token of the model (forward and backward)."""
    checkpoint: Path
    """The final checkpoint's directory."""
    checkpoint_url: str | None
    """Where the mirror published it; None without a mirror."""
    run_dir: Path
    """The run's directory, ``runs_dir/<run key>``."""
    checkpoint_sha256: str | None
    """sha256 of the final weights file (the model's data version); None where it is not on this node."""
    resumed_from: int | None
    """The step this session resumed from; None for a fresh start."""
    device: str
    dtype: str
    world_size: int
    loss_history: list[list[float]]
    """``[step, loss]`` at every logged step, across restarts."""
    val_history: list[list[float]]
    """``[step, val_loss]`` at every validation."""
    realized_mixture: dict[str, int] | None
    """Training tokens drawn per group by rank 0 when the sources are mixed; None otherwise."""
    data: dict[str, Any]
    """The job's data description (the checkpoints' ``meta["data"]``)."""
    trainable_params: int | None = None
    """Fine-tuning: parameters trained (LoRA adapters, a head); None for pretraining."""
    init_checkpoint: Path | None = None
    """Fine-tuning: the checkpoint the run started from."""
    mask_id: int | None = None
    """A masked-LM encoder's ``<|mask|>`` id (``lmcore.finetune.encoder.pretrain_encoder``)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: paths as strings, the fields only some runs have left out when None."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _PATHS:
            out[name] = None if out[name] is None else str(out[name])
        return {k: v for k, v in out.items() if not (k in _OMITTED_WHEN_NONE and v is None)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSummary:
        """The summary of :meth:`to_dict` (e.g. read back from JSON); ValueError naming unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown TrainSummary keys {unknown}; valid keys are {sorted(known)}")
        paths = {name: Path(d[name]) for name in _PATHS if d.get(name) is not None}
        return cls(**{**d, **paths})
