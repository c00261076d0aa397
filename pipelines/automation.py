"""Retraining triggers: the corpus as an observable source asset, a change sensor and a cron schedule.

The source's version is what ``lmcore.data.corpus.source_version`` says (content digest for
local files, ETag/Last-Modified for HTTP and object storage). The sensor launches the
``retrain`` job only when that version differs from the one it last saw; the schedule
launches it on a timetable. Both start stopped unless the profile turns them on.
"""

from __future__ import annotations

import dagster as dg

from assets.data.partitions import ALL_PARTITIONS
from lmcore.data.corpus import CorpusConfig, corpus_version
from pipelines.profile import Profile

SOURCE_KEY = "corpus_source"


def corpus_source_asset(profile: Profile) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=SOURCE_KEY, group_name="data", description=f"The corpus sources of profile {profile.name!r}."
    )
    def corpus_source() -> dg.ObserveResult:
        version, per_source = corpus_version(CorpusConfig(sources=tuple(profile.sources)))
        return dg.ObserveResult(data_version=dg.DataVersion(version), metadata={"sources": per_source})

    return corpus_source


def retrain_triggers(profile: Profile, job: dg.UnresolvedAssetJobDefinition) -> tuple[dg.SensorDefinition, ...]:
    """The change sensor and the schedule for ``job`` with the profile's run config."""
    run_config = profile.run_config()
    tags = {"lmpipe/profile": profile.name, "lmpipe/trigger": "", **ALL_PARTITIONS}

    @dg.sensor(
        name="corpus_changed",
        job=job,
        minimum_interval_seconds=profile.automation.sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING if profile.automation.sensor else dg.DefaultSensorStatus.STOPPED,
        description="Retrains when the corpus source's version changes (not on the first look).",
    )
    def corpus_changed(context: dg.SensorEvaluationContext):
        version, _ = corpus_version(CorpusConfig(sources=tuple(profile.sources)))
        previous = context.cursor
        context.update_cursor(version)
        if previous is None:
            return dg.SkipReason(f"first look at the corpus (version {version}); retrains on the next change")
        if previous == version:
            return dg.SkipReason(f"corpus unchanged (version {version})")
        return dg.RunRequest(
            run_key=f"corpus-{version}", run_config=run_config, tags={**tags, "lmpipe/trigger": f"corpus {version}"}
        )

    @dg.schedule(
        name="scheduled_retrain",
        cron_schedule=profile.automation.cron,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING
        if profile.automation.schedule
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrains on '{profile.automation.cron}'.",
    )
    def schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest(run_config=run_config, tags={**tags, "lmpipe/trigger": "schedule"})

    return corpus_changed, schedule
