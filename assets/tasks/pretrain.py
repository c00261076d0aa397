"""Task ``pretrain``: ``lmcore.train.loop.train`` on token shards (the spec is ``lmcore.train.entry``'s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmcore.train.config import TrainConfig
from lmcore.train.entry import train_kwargs
from lmcore.train.loop import train


def train_configs(spec: dict[str, Any]) -> dict[str, TrainConfig]:
    return {"train": TrainConfig.from_dict(spec["train"])}


def run(
    spec: dict[str, Any],
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    on_wait: Callable[[Path], None] | None = None,
    where: str | Path = "pretrain spec",
) -> dict[str, Any]:
    """The training summary; ``on_wait`` is called if another process holds the run's directory."""
    kwargs = train_kwargs({k: v for k, v in spec.items() if k != "task"}, where=where)
    return train(**kwargs, callback=callback, on_wait=on_wait)
