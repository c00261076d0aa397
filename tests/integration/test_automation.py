"""Retraining by declarative automation: the corpus source's version, the conditions, what a tick requests."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
import yaml

from assets.data.partitions import ALL_PARTITIONS
from assets.io_manager import CONFIG_SHA_KEY
from lmcore.data.partitions import PARTITIONS as ALL_PARTITIONS_KEYS
from pipelines.automation import SENSOR
from pipelines.cli import main
from pipelines.definitions import build_definitions
from pipelines.home import prepare_home
from pipelines.profile import load_profile
from pipelines.runner import observe_corpus
from tests.integration.conftest import write_profile

DATA = ["raw_corpus", "clean_corpus", "splits", "tokenizer", "tokenized", "token_shards"]


def _profile(tmp_path, corpus_dir, **automation):
    path = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    if automation:
        data = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**data, "automation": automation}))
    return path


def _defs(tmp_path, corpus_dir, **automation):
    return build_definitions(load_profile(config_file=_profile(tmp_path, corpus_dir, **automation)))


def _requested(result) -> dict[str, int]:
    """Asset name -> number of partitions (1 for an unpartitioned asset) a tick requests."""
    return {r.key.to_user_string(): r.true_subset.size for r in result.results if r.true_subset.size}


def test_automation_is_off_by_default_and_switched_on_by_the_profile(tmp_path, corpus_dir):
    off = _defs(tmp_path, corpus_dir)
    graph = off.resolve_asset_graph()
    assert [k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition] == []
    assert off.resolve_sensor_def(SENSOR).default_status == dg.DefaultSensorStatus.STOPPED
    on = _defs(tmp_path, corpus_dir, on_corpus_change=True, on_schedule=True, cron="0 6 * * *")
    assert on.resolve_sensor_def(SENSOR).default_status == dg.DefaultSensorStatus.RUNNING
    graph = on.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert {"corpus_source", *DATA, "pretrained_model", "evaluation_report", "hf_export"} <= automated
    assert "variants_report" not in automated  # optional, and this profile does not configure it
    assert "0 6 * * *" in str(graph.get(dg.AssetKey("pretrained_model")).automation_condition)
    assert {s.name for s in on.sensors} == {SENSOR} and not on.schedules


@pytest.mark.parametrize("bad", [{"observe_minutes": 0}, {"cron": "every monday"}, {"sensor": True}])
def test_bad_automation_settings_name_the_field(tmp_path, corpus_dir, bad):
    with pytest.raises(ValueError, match=f"automation.{next(iter(bad))}"):
        load_profile(config_file=_profile(tmp_path, corpus_dir, **bad))


def test_a_corpus_change_requests_the_data_group_which_then_runs_the_profile_config(home, tmp_path, corpus_dir):
    """A tick after a new corpus version requests raw_corpus's partitions and everything downstream; an
    observation of the same version requests nothing; the requested runs (no run config, as the sensor
    launches them) build with the profile's config."""
    profile = _profile(tmp_path, corpus_dir, on_corpus_change=True)
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    defs = build_definitions(load_profile(config_file=profile))
    prepare_home()
    instance = dg.DagsterInstance.get()
    data = dg.AssetSelection.groups("data")
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=data)
    assert set(_requested(settled)) <= {"corpus_source"}  # the source is due for an observation; nothing to build

    observe_corpus(instance, defs)  # the same corpus: no change
    same = dg.evaluate_automation_conditions(defs, instance, asset_selection=data, cursor=settled.cursor)
    assert set(_requested(same)) <= {"corpus_source"}

    (corpus_dir / "new_book.txt").write_text("A new chapter arrives with fresh words and gulls. " * 20)
    observe_corpus(instance, defs)  # what the requested observation of corpus_source records
    job, cursor, ticks = defs.resolve_implicit_global_asset_job_def(), same.cursor, []
    for _ in range(8):  # the sensor's ticks, each launching what it requests (no run config), until all is fresh
        tick = dg.evaluate_automation_conditions(defs, instance, asset_selection=data, cursor=cursor)
        cursor, requested = tick.cursor, {k: v for k, v in _requested(tick).items() if k != "corpus_source"}
        if not requested:
            break
        ticks.append(requested)
        keys = [dg.AssetKey(name) for name in requested]
        assert job.execute_in_process(instance=instance, asset_selection=keys, tags=ALL_PARTITIONS).success
    assert ticks[0] == {"raw_corpus": 16, "clean_corpus": 16, "tokenized": 16}  # Dagster runs a partitioned
    # stage with its partitioned parent in one run; an unpartitioned child (splits) waits for the next tick
    assert {name for tick in ticks for name in tick} == set(DATA) and len(ticks) <= 6, ticks
    graph = defs.resolve_asset_graph()
    for name in ("raw_corpus", "tokenizer"):
        mat = instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization
        assert mat.metadata["config_sha256"].value == graph.get(dg.AssetKey(name)).metadata[CONFIG_SHA_KEY]
    tokenizer = instance.get_latest_materialization_event(dg.AssetKey("tokenizer")).asset_materialization
    assert tokenizer.metadata["vocab_size"].value == 300  # the profile's, not TokenizerConfig's default


def test_the_schedule_requests_the_whole_pipeline_after_its_cron_tick(home, tmp_path, corpus_dir):
    defs = _defs(tmp_path, corpus_dir, on_schedule=True)
    prepare_home()
    instance = dg.DagsterInstance.get()
    before = dt.datetime(2026, 11, 23, 2, 59, tzinfo=dt.timezone.utc)  # a Monday; the default cron is Mon 03:00
    first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=before)
    assert _requested(first) == {}
    after = dg.evaluate_automation_conditions(
        defs, instance, evaluation_time=before + dt.timedelta(minutes=2), cursor=first.cursor
    )
    # the roots first (a partitioned stage with its partitioned parent in one run); each later asset once its
    # parents have run since the tick, on the ticks after
    assert _requested(after) == {"base_model": 1, "raw_corpus": 16, "clean_corpus": 16}
    again = dg.evaluate_automation_conditions(
        defs, instance, evaluation_time=before + dt.timedelta(minutes=3), cursor=after.cursor
    )
    assert _requested(again) == {}  # requested once per tick
    for key in ("raw_corpus", "clean_corpus"):  # as if those runs had materialized them
        for partition in ALL_PARTITIONS_KEYS:
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))
    instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))
    later = dg.evaluate_automation_conditions(
        defs, instance, evaluation_time=before + dt.timedelta(minutes=4), cursor=again.cursor
    )
    assert _requested(later) == {"splits": 1, "tokenizer": 1, "labeled_data": 1}  # those whose parents will be new
