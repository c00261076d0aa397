"""Running asset selections in-process for the CLI: progress, summary table, staleness, reproduce.

Runs execute in this process against the project's instance, so they appear in the UI
afterwards exactly like runs launched there.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg

from lmcore.io import digest_of, read_json
from pipelines.profile import Profile, config_classes

_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_INPUT_TAG = "dagster/input_data_version/"


def execute(console: Any, defs: dg.Definitions, keys: set[dg.AssetKey], run_config: dict, tags: dict) -> Any:
    """Materialize ``keys`` with a live progress bar; print the summary table; return the result."""
    job = defs.resolve_implicit_global_asset_job_def()
    start = time.monotonic()
    with _Progress(console):
        result = job.execute_in_process(
            run_config={**run_config, **_QUIET},
            instance=dg.DagsterInstance.get(),
            asset_selection=sorted(keys),
            raise_on_error=False,
            tags=tags,
        )
    summary(console, result, time.monotonic() - start)
    return result


def stale_keys(
    instance: dg.DagsterInstance, defs: dg.Definitions, keys: set[dg.AssetKey], profile: Profile
) -> dict[dg.AssetKey, str]:
    """The selected assets that need a run, each with why: missing, code, config, source or upstream changed.

    Downstream of anything that will run is included too, since its input is about to change.
    """
    from pipelines.automation import corpus_version  # hashes the sources; only needed here

    graph = defs.resolve_asset_graph()
    classes = config_classes(list(defs.assets or []))
    reasons: dict[dg.AssetKey, str] = {}
    for key in graph.toposorted_asset_keys:
        if key not in keys:
            continue
        node = graph.get(key)
        event = instance.get_latest_materialization_event(key)
        mat = event.asset_materialization if event else None
        name = key.to_user_string()
        if mat is None:
            reasons[key] = "never materialized"
        elif mat.tags.get("dagster/code_version") != node.code_version:
            reasons[key] = "code changed"
        elif name in classes and _config_hash(classes[name], profile, name) != _meta(mat, "config_sha256"):
            reasons[key] = "config changed"
        elif name == "raw_corpus" and _source_version(mat) != corpus_version(profile.sources)[0]:
            reasons[key] = "corpus source changed"
        elif rerun := [p for p in node.parent_keys if p in reasons]:
            reasons[key] = f"upstream {rerun[0].to_user_string()} will re-run"
        elif changed := [p for p in node.parent_keys if _upstream_changed(instance, mat, p)]:
            reasons[key] = f"upstream {changed[0].to_user_string()} changed"
    return reasons


def _meta(mat: dg.AssetMaterialization, key: str) -> Any:
    value = mat.metadata.get(key)
    return value.value if value is not None else None


def _config_hash(cls: type[dg.Config], profile: Profile, name: str) -> str:
    return digest_of(cls(**profile.assets.get(name, {})).model_dump())


def _source_version(mat: dg.AssetMaterialization) -> str | None:
    path = _meta(mat, "artifact_path")
    sources = read_json(f"{path}/manifest.json")["sources"]
    return digest_of({s["spec"]: s["version"] for s in sources})[:16]


def _upstream_changed(instance: dg.DagsterInstance, mat: dg.AssetMaterialization, parent: dg.AssetKey) -> bool:
    recorded = mat.tags.get(_INPUT_TAG + parent.to_user_string())
    latest = instance.get_latest_materialization_event(parent)
    if recorded is None or latest is None or latest.asset_materialization is None:
        return False  # an unobserved source, or nothing recorded to compare with
    return latest.asset_materialization.tags.get("dagster/data_version") != recorded


def data_versions(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Asset name -> data version of each materialization in a run."""
    out = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        mat = record.event_log_entry.asset_materialization
        out[mat.asset_key.to_user_string()] = mat.tags.get("dagster/data_version")
    return out


class _Progress:
    """A rich progress bar per asset, fed by assets.progress while the run executes in-process."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[tuple[str, str], Any] = {}

    def update(self, asset: str, what: str, done: int, total: int | None) -> None:
        key = (asset, what)
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(f"{asset}: {what}", total=total)
        self.bar.update(self.tasks[key], completed=done, total=total)

    def __enter__(self) -> _Progress:
        from assets.progress import set_sink

        set_sink(self.update)
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        from assets.progress import set_sink

        set_sink(None)
        self.bar.__exit__(*exc)


def summary(console: Any, result: Any, seconds: float) -> None:
    from rich.table import Table

    checks: dict[str, list[str]] = {}
    for check in result.get_asset_check_evaluations():
        mark = "[green]ok[/green]" if check.passed else "[red]FAILED[/red]"
        checks.setdefault(check.asset_key.to_user_string(), []).append(f"{check.check_name} {mark}")
    table = Table(title=f"run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'} in {seconds:.1f}s")
    table.add_column("asset", no_wrap=True)
    table.add_column("figures")
    table.add_column("checks")
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        name = mat.asset_key.to_user_string()
        figures = ", ".join(
            f"{k}={v.value:,}" if isinstance(v.value, int) else f"{k}={v.value:.4g}"
            for k, v in mat.metadata.items()
            if isinstance(v.value, (int, float)) and not isinstance(v.value, bool)
        )
        table.add_row(name, figures, "\n".join(checks.get(name, [])))
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            message = error.cause.message if error and error.cause else (error.message if error else "")
            failures.append((event.step_key, message.strip()))
            table.add_row(f"[red]{event.step_key}[/red]", "[red]failed[/red] (below)", "")
    console.print(table)
    _print_evaluation(console, result)
    for step, message in failures:  # unwrapped, so paths and fixes can be copied
        console.print(f"{step} failed: {message}", soft_wrap=True, markup=False, highlight=False)
    if not result.success:
        console.print("[red]run failed[/red]; the full log is in the Dagster UI (lmpipe ui).")


def _print_evaluation(console: Any, result: Any) -> None:
    """The evaluation report's table, when this run produced one: each figure next to its baseline."""
    from rich.table import Table

    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key.to_user_string() != "evaluation_report":
            continue
        table = Table(title="evaluation report (also $LMPIPE_HOME/reports/evaluation.{json,md})")
        for column in ("metric", "model", "value", "baseline", "baseline value", "beats baseline"):
            table.add_column(column)
        for record in mat.metadata["report"].value.records:
            r = record.data
            beats = "[green]yes[/green]" if r["beats_baseline"] else "[red]no[/red]"
            table.add_row(
                r["metric"], r["model"], f"{r['value']:.4f}", r["baseline"], f"{r['baseline_value']:.4f}", beats
            )
        console.print(table)
