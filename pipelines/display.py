"""What ``lmpipe run`` shows while a run executes: live bars in a terminal, plain lines in a log.

Both take the run's events from the Dagster instance (each asset's step started; finished with
its duration; failed; skipped; each check's result) and the assets' progress and training
records from ``assets.progress``'s sink. In a terminal: a line per event above one bar per
(asset, what), each bar closed when its stage ends (a total that was not known becomes the
count reached). Elsewhere (a file, a pipe, CI): a timestamped line per event and per training
record at the log interval, and at most one progress line per stage every ``every_s`` seconds;
rich flushes each line as it prints it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dagster as dg
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from assets.progress import RECORD_KEYS, record_text, set_sink

_ENDS = {
    dg.DagsterEventType.STEP_SUCCESS: "finished",
    dg.DagsterEventType.STEP_FAILURE: "failed",
    dg.DagsterEventType.STEP_SKIPPED: "skipped",
}


def duration(seconds: float) -> str:
    """``4.2s`` under a minute, else ``14m03s``."""
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class _Display:
    """Stage lines from the run's events, and the sink protocol of ``assets.progress`` (installed on enter).

    ``stages``: the step keys of the assets; other steps (asset checks run on their own) get a line
    only when they fail, and every check a line with its result.
    """

    def __init__(self, console: Any, stages: set[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.stages, self.clock = console, stages, clock
        self.started: dict[str, float] = {}
        self.waiting: dict[str, tuple[float, str]] = {}

    def on_event(self, entry: Any) -> None:
        """An instance event listener: a line when an asset's step starts or ends, or a check has a result."""
        event, step = entry.dagster_event, entry.step_key
        if event is None or step is None:
            return
        kind = event.event_type
        if kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.event_specific_data
            result = "passed" if check.passed else f"FAILED ({check.severity.value.lower()})"
            self.say(f"{check.asset_key.to_user_string()}: check {check.check_name} {result}")
        elif kind == dg.DagsterEventType.ENGINE_EVENT and "blocked by limit for pool" in (event.message or ""):
            self.waits(step, event.message.rsplit(" ", 1)[-1])
        elif step not in self.stages:
            if kind == dg.DagsterEventType.STEP_FAILURE:
                self.say(f"{step} FAILED")
        elif kind == dg.DagsterEventType.STEP_START:
            self.stage_started(step)
        elif kind in _ENDS:
            self.stage_ended(step, _ENDS[kind])

    def waits(self, step: str, pool: str) -> None:
        """Dagster holds ``step`` until a slot of concurrency ``pool`` is free (it says so again every 5 minutes):
        what it waits for, for whom, and since when."""
        since = self.waiting.setdefault(step, (self.clock(), time.strftime("%H:%M:%S")))
        info = dg.DagsterInstance.get().event_log_storage.get_concurrency_info(pool)
        holders = ", ".join(f"{c.step_key} of run {c.run_id[:8]}" for c in info.claimed_slots) or "another run"
        self.say(
            f"{step} waits for a free slot of the '{pool}' concurrency pool ({info.slot_count} slot(s), held by "
            f"{holders}) since {since[1]}, {duration(self.clock() - since[0])} so far; the run goes on when that "
            "ends (lmpipe ui shows it; a killed run's slot is freed by the next lmpipe run)"
        )

    def stage_started(self, stage: str) -> None:
        self.started[stage] = self.clock()
        self.say(f"{stage} started")

    def stage_ended(self, stage: str, outcome: str) -> None:
        """``outcome``: finished, failed or skipped."""
        start = self.started.pop(stage, None)
        text = {"finished": "finished", "failed": "FAILED", "skipped": "skipped"}[outcome]
        if start is not None and outcome != "skipped":
            text += f" {'in' if outcome == 'finished' else 'after'} {duration(self.clock() - start)}"
        self.say(f"{stage} {text}")

    def say(self, text: str) -> None:
        """A timestamped line (in a terminal, above the live bars)."""
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)

    def progress(self, asset: str, what: str, done: int, total: int | None) -> None:
        raise NotImplementedError

    def metrics(self, asset: str, what: str, record: dict[str, Any], max_steps: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Display:
        set_sink(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        set_sink(None)


class Lines(_Display):
    """Plain lines for a log: stage events, training records at the log interval, throttled progress."""

    def __init__(
        self, console: Any, stages: set[str], every_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(console, stages, clock)
        self.every_s = every_s
        self.last: dict[str, float] = {}

    def stage_started(self, stage: str) -> None:
        super().stage_started(stage)
        self.last[stage] = self.started[stage]  # the first progress line comes every_s into the stage

    def progress(self, asset: str, what: str, done: int, total: int | None) -> None:
        now = self.clock()
        if now - self.last.setdefault(asset, now) >= self.every_s:
            self.last[asset] = now
            self.say(f"{asset}: {what} {done:,}" + (f"/{total:,}" if total is not None else ""))

    def metrics(self, asset: str, what: str, record: dict[str, Any], max_steps: int) -> None:
        if "loss" in record or "val_loss" in record:
            self.say(f"{asset}: {what} {record['step']}/{max_steps} {record_text(record, RECORD_KEYS)}")


class _Spinner(SpinnerColumn):
    """rich's spinner, but still once its task is stopped, not only once it is complete."""

    def render(self, task: Any) -> Any:
        return self.finished_text if task.stop_time is not None else super().render(task)


class Bars(_Display):
    """A rich progress bar per (asset, what) under the stage lines; a stage's bars close when it ends."""

    def __init__(self, console: Any, stages: set[str], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(console, stages, clock)
        self.bar = Progress(
            _Spinner(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[tuple[str, str], Any] = {}

    def progress(self, asset: str, what: str, done: int, total: int | None) -> None:
        key = (asset, what)
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(f"{asset}: {what}", total=total)
        self.bar.update(self.tasks[key], completed=done, total=total)

    def metrics(self, asset: str, what: str, record: dict[str, Any], max_steps: int) -> None:
        self.progress(asset, what, record["step"], max_steps)

    def stage_ended(self, stage: str, outcome: str) -> None:
        """Close the stage's bars: an unknown total becomes the count reached, and the clock and spinner stop."""
        tasks = {t.id: t for t in self.bar.tasks}
        for (asset, _), task_id in self.tasks.items():
            task = tasks[task_id]
            if asset != stage or task.stop_time is not None:
                continue
            if task.total is None:
                self.bar.update(task_id, total=task.completed)
            self.bar.stop_task(task_id)
        super().stage_ended(stage, outcome)

    def __enter__(self) -> Bars:
        super().__enter__()
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self.bar.__exit__(*exc)


def display(console: Any, keys: set[dg.AssetKey], every_s: float = 30.0) -> _Display:
    """For a run of ``keys``: bars when ``console`` is an interactive terminal, else lines (a progress line
    per stage at most every ``every_s`` seconds)."""
    stages = {key.to_python_identifier() for key in keys}  # an asset's op, and so its step, is named so
    if console.is_terminal and not console.is_dumb_terminal:
        return Bars(console, stages)
    return Lines(console, stages, every_s)
