"""The Dagster code location: assets, checks, resources, jobs and the automation sensor.

The active profile (``$LMPIPE_PROFILE``: a name, default ``demo``, or a YAML file; ``lmpipe ui --profile NAME``
or ``--config FILE`` sets it) is part of
the definitions: every asset's config defaults are its values and its code version includes their digest
(``pipelines.configured``), so the UI's Materialize, a backfill, the Launchpad, a job, an automation tick,
``dg launch`` and ``lmpipe run`` all run the same config.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import dagster as dg

import assets.data
import assets.evaluation
import assets.export
import assets.finetune
import assets.pretrain
from assets.io_manager import BLOCKING_KEY, ArtifactIOManager
from assets.launch import SubprocessLauncher
from assets.resources import ArtifactStore, FsspecArtifactStore, LocalArtifactStore
from assets.tracking import TrackerResource
from lmcore.cpu import pin_cpu_dispatch
from lmcore.train.tracking import DEFAULT_EXPERIMENT
from pipelines.automation import automation_sensor, condition, corpus_source_asset
from pipelines.configured import with_profile
from pipelines.home import lmpipe_home
from pipelines.profile import Profile, load_profile, validate_profile

warnings.filterwarnings("ignore", category=dg.BetaWarning)
# Every process that loads the code location (the CLI, a run's step process, the daemon) computes on the same
# CPU kernels, whatever the CPU: the same config trains the same weights (lmcore.cpu). No torch kernel runs above.
pin_cpu_dispatch()
# `dagster dev` started by hand gets the same default home as the CLI.
os.environ.setdefault("LMPIPE_HOME", str(lmpipe_home()))

_PACKAGES = [assets.data, assets.pretrain, assets.finetune, assets.evaluation, assets.export]
ALL_ASSETS = [a for p in _PACKAGES for a in dg.load_assets_from_package_module(p)]
ALL_CHECKS = [c for p in _PACKAGES for c in dg.load_asset_checks_from_package_module(p)]


def left_out(profile: Profile) -> list[str]:
    """Optional assets (tag ``lmpipe/optional``: they train several extra models) that ``profile`` does not
    configure: the jobs leave them out, and ``lmpipe run`` unless its ``--select`` names them."""
    optional = (a.key.to_user_string() for a in ALL_ASSETS if a.tags_by_key[a.key].get("lmpipe/optional") == "true")
    return sorted(name for name in optional if name not in profile.assets)


def build_definitions(profile: Profile) -> dg.Definitions:
    """The code location of ``profile``; raises ValueError naming every invalid value of it, by path."""
    validate_profile(profile, ALL_ASSETS)
    skipped = left_out(profile)
    assets = [_with_blocking_checks(a) for a in with_profile(ALL_ASSETS, profile.assets, profile.name)]
    assets = [_automated(a, profile) if a.key.to_user_string() not in skipped else a for a in assets]
    skipped_sel = dg.AssetSelection.assets(*skipped)
    everything = dg.AssetSelection.all() - dg.AssetSelection.assets("corpus_source") - skipped_sel
    groups = dg.AssetSelection.groups
    jobs = [
        dg.define_asset_job("full_pipeline", selection=everything),
        dg.define_asset_job("data_prep", selection=groups("data") - dg.AssetSelection.assets("corpus_source")),
        dg.define_asset_job("pretrain", selection=groups("pretrain") - skipped_sel),
        dg.define_asset_job("finetune_and_evaluate", selection=groups("finetune", "evaluation")),
        dg.define_asset_job("retrain", selection=everything, description="Full retrain."),
    ]
    return dg.Definitions(
        assets=[corpus_source_asset(profile), *assets],
        asset_checks=ALL_CHECKS,
        jobs=jobs,
        sensors=[automation_sensor(profile)],
        resources=resources(),
    )


def _with_blocking_checks(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """The names of the asset's blocking checks in its metadata: the IO manager refuses a version one failed."""
    names = sorted(s.name for c in ALL_CHECKS for s in c.check_specs if s.asset_key == asset.key and s.blocking)
    if not names:
        return asset
    return asset.map_asset_specs(lambda s: s.replace_attributes(metadata={**s.metadata, BLOCKING_KEY: ",".join(names)}))


def _automated(asset: dg.AssetsDefinition, profile: Profile) -> dg.AssetsDefinition:
    parents = {dep.asset_key for spec in asset.specs for dep in spec.deps}
    cond = condition(profile, asset.key, parents)
    return asset if cond is None else asset.map_asset_specs(lambda s: s.replace_attributes(automation_condition=cond))


def resources() -> dict[str, Any]:
    """The artifact store, the IO manager that hands assets typed handles out of it, the launcher that starts
    torchrun for training assets with more than one process (this machine's subprocess; a cluster swaps it here),
    and the experiment tracker every training run logs to."""
    store = artifact_store()
    return {
        "store": store,
        "io_manager": ArtifactIOManager(store=store),
        "launcher": SubprocessLauncher(),
        "tracker": tracker(),
    }


def tracker() -> TrackerResource:
    """TensorBoard event files in each run's directory by default; ``$LMPIPE_TRACKER`` = mlflow | none picks
    another (MLflow at ``$MLFLOW_TRACKING_URI``, experiment ``$MLFLOW_EXPERIMENT_NAME``, default lmpipe)."""
    return TrackerResource(
        kind=os.environ.get("LMPIPE_TRACKER", "tensorboard"),
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
        experiment=os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT),
    )


def artifact_store() -> ArtifactStore:
    """Local artifacts by default; object storage when ``$LMPIPE_ARTIFACTS_URL`` is set (s3://..., gs://...)."""
    if url := os.environ.get("LMPIPE_ARTIFACTS_URL"):
        return FsspecArtifactStore(url=url, home=dg.EnvVar("LMPIPE_HOME"))
    return LocalArtifactStore(home=dg.EnvVar("LMPIPE_HOME"))


def active_profile() -> Profile:
    """``$LMPIPE_PROFILE``: a packaged profile's name (default ``demo``) or the path of a profile YAML file."""
    chosen = os.environ.get("LMPIPE_PROFILE", "") or "demo"
    if chosen.endswith((".yaml", ".yml")) or os.sep in chosen:
        return load_profile(config_file=chosen)
    return load_profile(chosen)


PROFILE = active_profile()
defs = build_definitions(PROFILE)
