"""The Dagster code location: assets, checks, resources and jobs (one per profile)."""

from __future__ import annotations

import os

import dagster as dg

import assets.clean
import assets.corpus
import assets.pretrain
import assets.shards
import assets.splits
import assets.tokenizer
from assets.resources import LocalArtifactStore
from pipelines.home import lmpipe_home

# `dagster dev` started by hand gets the same default home as the CLI.
os.environ.setdefault("LMPIPE_HOME", str(lmpipe_home()))
from pipelines.profile import available_profiles, load_profile

_MODULES = [assets.corpus, assets.clean, assets.splits, assets.tokenizer, assets.shards, assets.pretrain]
ALL_ASSETS = dg.load_assets_from_modules(_MODULES)
ALL_CHECKS = dg.load_asset_checks_from_modules(_MODULES)

data_prep = dg.define_asset_job("data_prep", selection=dg.AssetSelection.groups("data"))
pretrain = dg.define_asset_job("pretrain", selection=dg.AssetSelection.groups("pretrain"))
profile_jobs = [
    dg.define_asset_job(
        f"{name}_pipeline",
        selection=dg.AssetSelection.all(),
        config=load_profile(name).run_config(),
        description=load_profile(name).description,
    )
    for name in available_profiles()
]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[data_prep, pretrain, *profile_jobs],
    resources={"store": LocalArtifactStore(home=dg.EnvVar("LMPIPE_HOME"))},
)
