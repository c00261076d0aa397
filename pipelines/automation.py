"""Retraining by Dagster's declarative automation: the corpus as an observable source, conditions on the assets.

The profile is part of the definitions (``pipelines.configured``), so a run the automation sensor launches
runs the profile's config like any other launch path; retraining is a property of the assets, not a hand-made
sensor that carries run config. A profile's ``automation:`` turns on either or both:

- ``on_corpus_change``: ``corpus_source`` is observed every ``observe_minutes`` (its version is what
  ``lmcore.data.corpus.corpus_version`` says: content digest for local files, ETag/Last-Modified for HTTP and
  object storage); ``raw_corpus`` runs when that version changes, and every asset downstream follows once its
  inputs have updated (``eager``). A missing asset is built too.
- ``on_schedule``: every asset of the pipeline runs on ``cron``, each once its upstream has run since the tick
  (``on_cron``; the corpus source is not waited for).

Both are off by default; the sensor ``lmpipe_automation`` that evaluates the conditions starts running when one
is on. Runs over several data partitions are launched as one backfill (one run, by the backfill policy).
"""

from __future__ import annotations

import dagster as dg

from lmcore.data.corpus import CorpusConfig, corpus_version
from pipelines.home import lmpipe_home
from pipelines.profile import Profile

SOURCE_KEY = "corpus_source"
SENSOR = "lmpipe_automation"


SOURCES_KEY = "lmpipe/sources"
"""Definition metadata of ``corpus_source``: the corpus sources it observes."""


def corpus_source_asset(profile: Profile) -> dg.AssetsDefinition:
    auto = profile.automation
    observe = dg.AutomationCondition.cron_tick_passed(f"*/{auto.observe_minutes} * * * *").since_last_handled()
    spec = dg.AssetSpec(
        SOURCE_KEY,
        group_name="data",
        description=f"The corpus sources of profile {profile.name!r}; its version is their content digest (local "
        "files) or ETag/Last-Modified (remote).",
        metadata={SOURCES_KEY: dg.MetadataValue.json(profile.sources)},
        automation_condition=observe if auto.on_corpus_change else None,
    )

    @dg.multi_observable_source_asset(specs=[spec], name=SOURCE_KEY)
    def corpus_source() -> dg.ObserveResult:
        version, per_source = observe_sources(profile.sources)
        return dg.ObserveResult(asset_key=SOURCE_KEY, data_version=dg.DataVersion(version), metadata=per_source)

    return corpus_source


def observe_sources(sources: list) -> tuple[str, dict]:
    """The corpus sources' version and what it is made of (``{"sources": per-source versions}``)."""
    # a body without validators is downloaded to be digested: into the home's download cache (no system temp folder)
    version, per_source = corpus_version(CorpusConfig(sources=tuple(sources)), lmpipe_home() / "cache")
    return version, {"sources": per_source}


def condition(profile: Profile, key: dg.AssetKey, parents: set[dg.AssetKey]) -> dg.AutomationCondition | None:
    """When the automation sensor runs asset ``key`` (with upstream ``parents``) under ``profile``, or None."""
    auto, source = profile.automation, dg.AssetKey(SOURCE_KEY)
    conditions = []
    if auto.on_corpus_change:
        eager = dg.AutomationCondition.eager()
        if source in parents:  # an observation of the same version is no change
            changed = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
            eager = eager.replace("any_deps_updated", changed.with_label("corpus_version_changed"))
        conditions.append(eager)
    if auto.on_schedule:
        conditions.append(dg.AutomationCondition.on_cron(auto.cron).ignore(dg.AssetSelection.assets(source)))
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else conditions[0] | conditions[1]


def automation_sensor(profile: Profile) -> dg.AutomationConditionSensorDefinition:
    auto = profile.automation
    on = auto.on_corpus_change or auto.on_schedule
    return dg.AutomationConditionSensorDefinition(
        SENSOR,
        target=dg.AssetSelection.all(include_sources=True),
        default_status=dg.DefaultSensorStatus.RUNNING if on else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
        description=f"Runs the assets whose automation condition profile {profile.name!r} turns on "
        "(retrain on a corpus change, on a schedule).",
    )
