"""The project's real assets as the Celery workers load them: two jobs over the partitioned data stages.

``$LMPIPE_CELERY_PROFILE`` names the profile file (the test's), read when the workers import this module.
"""

import os

import dagster as dg

from pipelines.automation import corpus_source_asset
from pipelines.definitions import ALL_ASSETS, ALL_CHECKS, resources
from pipelines.profile import load_profile

PROFILE = load_profile(config_file=os.environ["LMPIPE_CELERY_PROFILE"])
FRONT = ("raw_corpus", "clean_corpus")
BACK = ("tokenized",)

defs = dg.Definitions(
    assets=[corpus_source_asset(PROFILE), *ALL_ASSETS],
    asset_checks=ALL_CHECKS,
    jobs=[
        dg.define_asset_job("partitions_front", selection=list(FRONT)),
        dg.define_asset_job("partitions_back", selection=list(BACK)),
    ],
    resources=resources(),
)
