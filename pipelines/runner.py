"""Running asset selections in-process for the CLI: progress, summary table, staleness, reproduce.

Runs execute in this process against the project's instance, so they appear in the UI
afterwards exactly like runs launched there. While one runs, ``pipelines.display`` shows its
stages: bars in a terminal, plain lines when the output goes to a file or a pipe.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg

from assets.data.partitions import ALL_PARTITIONS, RUN_FIGURES
from lmcore.eval.table import MetricRow
from lmcore.io import atomic_path
from pipelines.automation import SOURCE_KEY, SOURCES_KEY, observe_sources
from pipelines.configured import changed_parts
from pipelines.display import display
from pipelines.home import lmpipe_home

# Dagster's console logger prints every error with its stack trace before the summary; the summary
# says what failed and the full log goes to a file (and stays in the instance, for the UI).
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
PROFILE_TAG = "lmpipe/profile_config"
"""The profile's assets config (``--set`` applied) a CLI run's code location had, as JSON: what reproduce rebuilds."""
PROCESS_TAG = "lmpipe/process"
"""``host:pid:start_time`` of the process that executes a CLI run, so a later run can tell it was killed."""


def execute(console: Any, defs: dg.Definitions, keys: set[dg.AssetKey], run_config: dict, tags: dict) -> Any:
    """Materialize ``keys`` showing each stage as it starts and ends (with progress); print the summary table;
    return the result."""
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.get()
    graph = defs.resolve_asset_graph()
    if any(graph.get(key).partitions_def is not None for key in keys):
        tags = {**ALL_PARTITIONS, **tags}
    start = time.monotonic()
    run_id = str(uuid.uuid4())  # known before the run starts, to listen to its events
    with display(console, keys) as shown:
        instance.add_event_listener(run_id, shown.on_event)
        result = job.execute_in_process(
            run_config={**run_config, **_QUIET},
            instance=instance,
            asset_selection=sorted(keys),
            raise_on_error=False,
            run_id=run_id,
            tags={**tags, PROCESS_TAG: _process_identity(os.getpid())},
        )
    if stopped := interrupted(result):
        instance.report_run_canceled(
            instance.get_run_by_id(run_id), message=f"interrupted (Ctrl-C or SIGTERM) during {', '.join(stopped)}"
        )
    summary(console, result, time.monotonic() - start, write_run_log(console, instance, result.run_id))
    return result


_INTERRUPTS = {"DagsterExecutionInterruptedError", "KeyboardInterrupt"}


def interrupted(result: Any) -> list[str]:
    """The steps a signal stopped (Ctrl-C, or SIGTERM, which Dagster handles the same way): Dagster reports them
    as failed, raising its interrupt error in the step."""
    return [e.step_key for e in result.all_events if e.is_step_failure and _is_interrupt(e.step_failure_data.error)]


def _is_interrupt(error: Any) -> bool:
    return error is not None and (error.cls_name in _INTERRUPTS or _is_interrupt(error.cause))


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_identity(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def _is_alive(identity: str) -> bool:
    """Whether the process a PROCESS_TAG names still runs (a different process reusing its pid does not count)."""
    host, pid, started = identity.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's run (a shared instance): not ours to judge
    if started:
        return _start_time(int(pid)) == started
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Mark failed the CLI runs still STARTED whose process is gone (killed, out of memory), and release what they
    held in the instance: their concurrency-pool slots (the ``gpu`` pool of the training assets) and pending claims.
    Slots still held by a run that has already ended (killed before this release existed) are released too.
    Returns the runs marked failed.

    Only runs tagged with PROCESS_TAG by this machine are judged; runs launched from the UI are the
    daemon's to monitor.
    """
    statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    dead = [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=statuses))
        if PROCESS_TAG in run.tags and not _is_alive(run.tags[PROCESS_TAG])
    ]
    for run in dead:
        host, pid, _ = run.tags[PROCESS_TAG].rsplit(":", 2)
        instance.report_run_failed(
            run, message=f"process {pid} on {host} that ran it is gone (killed?); marked failed by a later lmpipe run"
        )
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids():
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
    return dead


def write_run_log(console: Any, instance: dg.DagsterInstance, run_id: str) -> Path | None:
    """Write the run's full event log, stack traces included, to ``$LMPIPE_HOME/logs/<run_id>.log``."""
    path = lmpipe_home() / "logs" / f"{run_id}.log"
    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        when = datetime.datetime.fromtimestamp(entry.timestamp).isoformat(sep=" ", timespec="seconds")
        kind = event.event_type_value if event else "LOG"
        lines.append(f"{when} {kind} {entry.step_key or '-'}: {entry.message}")
        error = _error_of(event)
        if error is not None:
            lines += ["    " + line for line in error.to_string().rstrip().splitlines()]
    try:
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as exc:
        console.print(f"[yellow]warning:[/yellow] could not write the run log {path}: {exc}", soft_wrap=True)
        return None
    return path


def _error_of(event: Any) -> Any:
    if event is None:
        return None
    if event.is_step_failure:
        return event.step_failure_data.error
    if event.is_run_failure:
        data = event.job_failure_data
        return data.error if data is not None else None
    return None


def observe_corpus(instance: dg.DagsterInstance, defs: dg.Definitions) -> str | None:
    """Observe ``corpus_source`` now (as the UI's "Observe sources" does) and record its version in the instance,
    so Dagster's staleness, and the next ``raw_corpus`` materialization, compare against the corpus as it is.
    None, recording nothing, when a source cannot be read now."""
    source = defs.resolve_asset_graph().get(dg.AssetKey(SOURCE_KEY))
    try:
        version, metadata = observe_sources(source.metadata[SOURCES_KEY].value)
    except Exception:  # a missing file, a server down: raw_corpus reads the sources and fails saying which, and how
        return None
    instance.report_runless_asset_event(
        dg.AssetObservation(source.key, metadata=metadata, tags={DATA_VERSION_TAG: version})
    )
    return version


def observe_for(instance: dg.DagsterInstance, defs: dg.Definitions, keys: set[dg.AssetKey]) -> None:
    """Observe the corpus before a run that builds raw_corpus, which then records the version it read."""
    if dg.AssetKey("raw_corpus") in keys:
        observe_corpus(instance, defs)


def stale_keys(instance: dg.DagsterInstance, defs: dg.Definitions, keys: set[dg.AssetKey]) -> dict[dg.AssetKey, str]:
    """The selected assets that need a run, each with why, as Dagster's own staleness (the UI's) says: missing, its
    code version changed (code or the profile's config), or an upstream's data changed (a new corpus version, an
    upstream materialized since). Downstream of anything that will run is included too. A partitioned asset needs a
    run when any of its partitions does."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    reasons: dict[dg.AssetKey, str] = {}
    for key in graph.toposorted_asset_keys:
        if key not in keys or not graph.get(key).is_materializable:
            continue
        node = graph.get(key)
        for partition in node.partitions_def.get_partition_keys() if node.partitions_def else [None]:
            where = f" (partition {partition})" if partition else ""
            status = resolver.get_status(key, partition)
            if status == StaleStatus.MISSING:
                reasons[key] = f"never materialized{where}"
            elif status == StaleStatus.STALE:
                reasons[key] = _why(instance, graph, key, resolver.get_stale_root_causes(key, partition)[0]) + where
            elif rerun := [p for p in node.parent_keys if p in reasons]:
                reasons[key] = f"upstream {rerun[0].to_user_string()} will re-run"
            if key in reasons:
                break
    return reasons


def _why(instance: dg.DagsterInstance, graph: Any, key: dg.AssetKey, cause: Any) -> str:
    """A stale cause in the words of this project: which of code, config, corpus or an upstream asset changed."""
    of = cause.key.asset_key
    if of == dg.AssetKey(SOURCE_KEY):
        return "corpus source changed"
    if cause.category.value != "CODE":
        return f"upstream {of.to_user_string()} changed"
    event = instance.get_latest_materialization_event(of)
    recorded = (event.asset_materialization.tags.get(CODE_VERSION_TAG) or "") if event else ""
    what = " and ".join(changed_parts(recorded, graph.get(of).code_version or "") or ["code"]) + " changed"
    return what if of == key else f"upstream {of.to_user_string()}: {what}"


def data_versions(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Asset name -> data version of each materialization in a run."""
    out = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        mat = record.event_log_entry.asset_materialization
        out[mat.asset_key.to_user_string()] = mat.tags.get("dagster/data_version")
    return out


def summary(console: Any, result: Any, seconds: float, log: Path | None = None) -> None:
    """The table of what was materialized, then, set apart at the end, what failed and what to change."""
    from rich.table import Table

    checks: dict[str, list[str]] = {}
    problems = []
    for check in result.get_asset_check_evaluations():
        mark = "[green]ok[/green]" if check.passed else "[red]FAILED[/red]"
        checks.setdefault(check.asset_key.to_user_string(), []).append(f"{check.check_name} {mark}")
        if not check.passed:
            why = check.description or _figures(check.metadata)
            problems.append(f"check {check.check_name} of {check.asset_key.to_user_string()} failed: {why}")
    status = "succeeded" if result.success else "STOPPED" if interrupted(result) else "FAILED"
    table = Table(title=f"run {result.run_id[:8]} {status} in {seconds:.1f}s")
    table.add_column("asset", no_wrap=True)
    table.add_column("figures")
    table.add_column("checks")
    warnings, shown = [], set()
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        name = mat.asset_key.to_user_string()
        if name in shown:
            continue  # a partitioned asset: one row, with the run's figures over its partitions
        shown.add(name)
        table.add_row(name, _row_figures(mat), "\n".join(checks.get(name, [])))
        if "warning" in mat.metadata:
            warnings.append(f"{name}: {mat.metadata['warning'].value}")
    _step_failures(result, table, problems)
    console.print(table)
    _print_evaluation(console, result)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True, highlight=False)
    if not result.success or problems:
        console.rule("[red]what failed[/red]" if not result.success else "[yellow]failed checks[/yellow]")
        for problem in problems:  # unwrapped, so paths and fixes can be copied
            console.print(problem, soft_wrap=True, markup=False, highlight=False)
        if not result.success and not problems:
            console.print("the run failed before any step ran; see the log", highlight=False)
        where = f"{log} and " if log is not None else ""
        console.print(
            f"full log: {where}the Dagster UI (lmpipe ui), run {result.run_id}", soft_wrap=True, highlight=False
        )


def _row_figures(mat: Any) -> str:
    """A materialization's numbers for its table row (a partition's: only the run's totals)."""
    return ", ".join(
        f"{k}={v.value:,}" if isinstance(v.value, int) else f"{k}={v.value:.4g}"
        for k, v in mat.metadata.items()
        if isinstance(v.value, (int, float))
        and not isinstance(v.value, bool)
        and (mat.partition is None or k in RUN_FIGURES or k.endswith("_in_run"))
    )


def _step_failures(result: Any, table: Any, problems: list[str]) -> None:
    """Each failed or stopped step: a row in ``table`` and its message first in ``problems`` (a failed blocking
    check's step is left out: the check's reason is listed already)."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = event.step_failure_data.error
        if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
            continue
        if _is_interrupt(error):
            problems.insert(
                0,
                f"{event.step_key} stopped: the run was interrupted (Ctrl-C or SIGTERM) and is "
                "marked canceled; what it had published is kept, and the same command carries on "
                "(a training asset from its last checkpoint)",
            )
            table.add_row(f"[yellow]{event.step_key}[/yellow]", "[yellow]stopped[/yellow] (below)", "")
            continue
        message = error.cause.message if error and error.cause else (error.message if error else "")
        problems.insert(0, f"{event.step_key} failed: {message.strip()}")
        table.add_row(f"[red]{event.step_key}[/red]", "[red]failed[/red] (below)", "")


def _figures(metadata: dict) -> str:
    """A failed check's reason when it gives no description: the figures it recorded (what failed, in numbers)."""
    shown = []
    for key, entry in metadata.items():
        value = getattr(entry, "value", entry)
        shown.append(f"{key}={value if isinstance(value, (int, float, str)) else json.dumps(value, default=str)}")
    return "; ".join(shown) or "the check recorded no figures"


def _print_evaluation(console: Any, result: Any) -> None:
    """The evaluation report's table, when this run produced one: each figure next to its baseline."""
    from rich.table import Table

    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key.to_user_string() != "evaluation_report":
            continue
        table = Table(title="evaluation report (also $LMPIPE_HOME/reports/evaluation.{json,md})")
        for column in ("metric", "model", "value", "baseline", "baseline value", r"improvement \[interval] p", "gate"):
            table.add_column(column)
        for r in (MetricRow.from_dict(record.data) for record in mat.metadata["report"].value.records):
            verdict = "[green]passes[/green]" if r.passes else "[red]fails[/red]"
            gate = "not gated" if r.rule is None else f"{r.rule}: {verdict}"
            value, baseline_value = f"{r.value:.4f}", f"{r.baseline_value:.4f}"
            table.add_row(r.metric, r.model, value, r.baseline, baseline_value, r.interval_text(), gate)
        console.print(table)
        if "generation" in mat.metadata:
            decoding = " ".join(f"{k}={v}" for k, v in mat.metadata["generation"].value["decoding"].items())
            console.print(
                f"answers decoded with {decoding}; the (greedy) rows decode greedily", highlight=False, soft_wrap=True
            )
