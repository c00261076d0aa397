"""Progress from lmcore callbacks to Dagster logs (throttled) and, in the CLI, its display.

The CLI runs materializations in its own process and installs a :class:`Sink` here (bars in a
terminal, plain lines in a log: ``pipelines/display.py``); in the UI there is no sink and progress
goes to the run's log only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import dagster as dg

from lmcore.io import ProgressFn

RECORD_KEYS = ("loss", "val_loss", "lr", "tokens_per_s", "grad_norm")
"""The fields of a training metrics record that a progress line shows, in this order."""


class Sink(Protocol):
    """Where the CLI's display takes progress from (called in the thread that runs the asset)."""

    def progress(self, asset: str, what: str, done: int, total: int | None) -> None:
        """``done`` of ``total`` (None: not known) of ``what`` in ``asset``; ``done`` is cumulative."""

    def metrics(self, asset: str, what: str, record: dict[str, Any], max_steps: int) -> None:
        """A training loop's metrics record (``step`` always; ``loss``, ``lr``... at the log interval)."""


_sink: Sink | None = None


def set_sink(sink: Sink | None) -> None:
    """Install (or remove) the display that progress and metrics records also go to; used by the CLI."""
    global _sink
    _sink = sink


def record_text(record: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    """``key=value`` for each field of a metrics record (``keys``: only those, in that order); floats to 4
    significant digits, or whole from 10,000 (``tokens_per_s=11060``, not ``1.106e+04``)."""
    items = record.items() if keys is None else ((k, record[k]) for k in keys if record.get(k) is not None)
    return " ".join(f"{k}={_number(v)}" for k, v in items)


def _number(v: Any) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def reporter(context: dg.AssetExecutionContext, asset: str, every_s: float = 10.0) -> ProgressFn:
    """A ``ProgressFn`` that logs at most every ``every_s`` seconds and feeds the CLI sink."""
    last = [0.0]

    def report(what: str, done: int, total: int | None) -> None:
        if _sink is not None:
            _sink.progress(asset, what, done, total)
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            context.log.info(f"{what}: {done}" + (f"/{total}" if total else ""))

    return report


def training_reporter(
    context: dg.AssetExecutionContext, asset: str, what: str, max_steps: int
) -> Callable[[dict], None]:
    """A training-loop metrics callback: every record to the run log and to the CLI sink."""

    def on_metrics(record: dict) -> None:
        if _sink is not None:
            _sink.metrics(asset, what, record, max_steps)
        context.log.info(record_text(record))

    return on_metrics
