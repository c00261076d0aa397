"""Training specs: one typed object per training task, holding its configs, data handles and run directory.

A spec is built once (by an asset, a test, a notebook) and run with ``spec.run(callback=, on_wait=)`` in
the same process, as an object. Only a torchrun job serializes it: :meth:`to_dict` writes it, tagged with
its ``task``, and every process reads it back with :meth:`from_dict` in :mod:`lmcore.train.entry`, the one
torchrun entry point; the result travels back the same way (``result_to_dict`` / ``result_from_dict``).
The specs of the tasks are :class:`PretrainSpec` (here) and ``lmcore.finetune.specs``' ``SftSpec`` and
``ClassifySpec``. This module knows nothing of Dagster or of fine-tuning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lmcore.model.gpt import PRESETS, ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.job import NO_OUTLETS, Callback, Outlets, WarmStart, shard_job
from lmcore.train.loop import run_job
from lmcore.train.summary import TrainSummary

OnWait = Callable[[Path], None]


class TrainingSpec(Protocol):
    """What every task's spec answers (:class:`PretrainSpec`, ``lmcore.finetune.specs``)."""

    task: ClassVar[str]
    runs_dir: Path

    def train_configs(self) -> dict[str, TrainConfig]:
        """The training runs it holds, by name (their devices pick a torchrun job's process group backend)."""
        ...

    def run(self, *, callback: Callback | None = None, on_wait: OnWait | None = None) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...

    def result_to_dict(self, result: Any) -> Any: ...

    def result_from_dict(self, data: Any) -> Any: ...


def check_keys(cls: type, d: dict[str, Any], where: str | Path) -> None:
    """ValueError naming ``where`` and every key of ``d`` (``task`` aside) that is not a field of dataclass
    ``cls``, and every field without a default that ``d`` lacks."""
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    known = {f.name for f in fields}
    problems = []
    if unknown := sorted(set(d) - known - {"task"}):
        problems.append(f"unknown keys {unknown}")
    if missing := sorted(required - set(d)):
        problems.append(f"missing keys {missing}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems) + f"; valid keys are {sorted(known)}")


def model_config_from(spec: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from ``{"preset": name, **overrides}`` or from its plain fields."""
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is None:
        return ModelConfig.from_dict(spec)
    if preset not in PRESETS:
        raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return PRESETS[preset](**spec)


class SummaryResult:
    """The result of a task that trains one run: a :class:`TrainSummary`, a dict on the way back from torchrun."""

    def result_to_dict(self, result: TrainSummary) -> dict[str, Any]:
        return result.to_dict()

    def result_from_dict(self, data: dict[str, Any]) -> TrainSummary:
        return TrainSummary.from_dict(data)


@dataclass(frozen=True, kw_only=True)
class PretrainSpec(SummaryResult):
    """Pretraining on token shards (:func:`lmcore.train.loop.train`), resumed from ``runs_dir/<run key>``."""

    task: ClassVar[str] = "pretrain"
    model: ModelConfig
    """The model; in a dict also ``{"preset": name, **overrides}``."""
    train: TrainConfig
    shard_root: Path
    """The token shards' directory (manifest and splits)."""
    runs_dir: Path
    """Where the run's directory (``<run key>``) is made."""
    meta_extra: dict[str, Any] | None = None
    """Stored in every checkpoint's meta.json (tokenizer digest, upstream data versions, ...)."""
    outlets: Outlets = NO_OUTLETS
    init: WarmStart | None = None
    """Continue a previous model on new and replayed shards; None: from scratch."""

    def train_configs(self) -> dict[str, TrainConfig]:
        return {"train": self.train}

    def run(self, *, callback: Callback | None = None, on_wait: OnWait | None = None) -> TrainSummary:
        """Train (or resume) the run; ``on_wait`` is called if another process holds the run's directory."""
        return run_job(
            lambda: shard_job(self.model, self.train, self.shard_root, init=self.init),
            self.train,
            self.runs_dir,
            callback=callback,
            meta_extra=self.meta_extra,
            on_wait=on_wait,
            outlets=self.outlets,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "shard_root": str(self.shard_root),
            "runs_dir": str(self.runs_dir),
            "meta_extra": self.meta_extra,
            "outlets": self.outlets.to_dict(),
            "init": self.init.to_dict() if self.init is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path = "pretrain spec") -> PretrainSpec:
        """The spec of :meth:`to_dict`; ValueError naming ``where`` and every unknown or missing key."""
        check_keys(cls, d, where)
        return cls(
            model=model_config_from(d["model"]),
            train=TrainConfig.from_dict(d["train"]),
            shard_root=Path(d["shard_root"]),
            runs_dir=Path(d["runs_dir"]),
            meta_extra=d.get("meta_extra"),
            outlets=Outlets.from_dict(d.get("outlets")),
            init=WarmStart.from_dict(d["init"]) if d.get("init") else None,
        )
