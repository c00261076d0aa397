"""Retraining triggers: the corpus source's version, the change sensor, the schedule."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import yaml

from pipelines.definitions import build_definitions
from pipelines.profile import DEFAULT_CRON, load_profile
from tests.integration.conftest import write_profile


def _defs(tmp_path, corpus_dir, **automation):
    path = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    if automation:
        data = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**data, "automation": automation}))
    return build_definitions(load_profile(config_file=path))


def _tick(defs, cursor):
    sensor = defs.resolve_sensor_def("corpus_changed")
    context = dg.build_sensor_context(cursor=cursor, definitions=defs, instance=dg.DagsterInstance.ephemeral())
    return sensor(context), context.cursor


def test_sensor_retrains_when_the_corpus_changes_and_only_then(tmp_path, corpus_dir):
    defs = _defs(tmp_path, corpus_dir)
    first, cursor = _tick(defs, None)
    assert isinstance(first, dg.SkipReason) and "first look" in first.skip_message
    again, same_cursor = _tick(defs, cursor)
    assert isinstance(again, dg.SkipReason) and same_cursor == cursor

    (corpus_dir / "new_book.txt").write_text("A new chapter arrives with fresh words. " * 20)
    request, new_cursor = _tick(defs, cursor)
    assert isinstance(request, dg.RunRequest) and new_cursor != cursor
    assert request.run_key == f"corpus-{new_cursor}"
    assert request.run_config["ops"]["raw_corpus"]["config"]["sources"] == [str(corpus_dir)]
    assert defs.resolve_sensor_def("corpus_changed").job_name == "retrain"

    settled, _ = _tick(defs, new_cursor)
    assert isinstance(settled, dg.SkipReason)

    (corpus_dir / "doc00.txt").write_text("edited in place")  # same file names, different content
    edited, _ = _tick(defs, new_cursor)
    assert isinstance(edited, dg.RunRequest)


def test_schedule_requests_a_retrain_with_the_profile_config(tmp_path, corpus_dir):
    defs = _defs(tmp_path, corpus_dir)
    schedule = defs.resolve_schedule_def("scheduled_retrain")
    assert schedule.cron_schedule == DEFAULT_CRON and schedule.job_name == "retrain"
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 23, 3, 0))
    requests = schedule.evaluate_tick(context).run_requests
    assert len(requests) == 1
    assert requests[0].run_config["ops"]["tokenizer"]["config"]["vocab_size"] == 300
    assert requests[0].tags["lmpipe/trigger"] == "schedule"


def test_triggers_are_off_by_default_and_switched_on_by_the_profile(tmp_path, corpus_dir):
    off = _defs(tmp_path, corpus_dir)
    assert off.resolve_sensor_def("corpus_changed").default_status == dg.DefaultSensorStatus.STOPPED
    assert off.resolve_schedule_def("scheduled_retrain").default_status == dg.DefaultScheduleStatus.STOPPED
    on = _defs(tmp_path, corpus_dir, sensor=True, schedule=True, cron="0 6 * * *")
    assert on.resolve_sensor_def("corpus_changed").default_status == dg.DefaultSensorStatus.RUNNING
    assert on.resolve_schedule_def("scheduled_retrain").cron_schedule == "0 6 * * *"


def test_observing_the_source_records_its_version(tmp_path, corpus_dir):
    defs = _defs(tmp_path, corpus_dir)
    source = next(a for a in defs.assets if getattr(a, "key", None) == dg.AssetKey("corpus_source"))
    assert source.is_observable

    def observed_version():
        return source.observe_fn().data_version

    before = observed_version()
    assert before == observed_version()
    (corpus_dir / "doc01.txt").write_text("changed")
    assert observed_version() != before


def test_only_the_sensor_and_schedule_start_runs_by_themselves(tmp_path, corpus_dir):
    """No asset declares an automation condition: Dagster's automation sensor would run it with the asset's
    default config instead of the profile's (the README says which runs start by themselves)."""
    defs = _defs(tmp_path, corpus_dir, sensor=True, schedule=True)
    graph = defs.resolve_asset_graph()
    declared = sorted(k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition)
    assert declared == []
    assert {s.name for s in defs.sensors} == {"corpus_changed"} and {s.name for s in defs.schedules} == {
        "scheduled_retrain"
    }
