"""Progress from lmcore callbacks to Dagster logs (throttled) and, in the CLI, a live bar.

The CLI runs materializations in its own process and installs a sink here; in the UI
there is no sink and progress goes to the run's log only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dagster as dg

from lmcore.io import ProgressFn

_sink: Callable[[str, str, int, int | None], None] | None = None


def set_sink(sink: Callable[[str, str, int, int | None], None] | None) -> None:
    """Install (or remove) a callback ``(asset, what, done, total)``; used by the CLI."""
    global _sink
    _sink = sink


def reporter(context: dg.AssetExecutionContext, asset: str, every_s: float = 10.0) -> ProgressFn:
    """A ``ProgressFn`` that logs at most every ``every_s`` seconds and feeds the CLI sink."""
    last = [0.0]

    def report(what: str, done: int, total: int | None) -> None:
        if _sink is not None:
            _sink(asset, what, done, total)
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            context.log.info(f"{what}: {done}" + (f"/{total}" if total else ""))

    return report


def training_reporter(
    context: dg.AssetExecutionContext, asset: str, what: str, max_steps: int
) -> Callable[[dict], None]:
    """A training-loop metrics callback: every record to the run log, the step count to the progress bar."""
    progress = reporter(context, asset)

    def on_metrics(record: dict) -> None:
        progress(what, record["step"], max_steps)
        context.log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    return on_metrics
