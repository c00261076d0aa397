"""A partitioned toy for the Celery test: two assets (``letters`` -> ``counts``) over four static partitions.

Workers import this module by name (``pipelines.celery.celery_job("tests.integration.celery_toy", "toy")``),
so ``defs`` lives at module scope. Values are JSON files under ``$CELERY_TOY_DIR``, which every worker is given:
the workers are other processes, so nothing may stay in memory.
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

PARTITIONS = dg.StaticPartitionsDefinition(["p0", "p1", "p2", "p3"])


class JsonIOManager(dg.ConfigurableIOManager):
    """Each partition of each asset as ``<base_dir>/<asset>/<partition>.json``."""

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.base_dir) / context.asset_key.to_user_string() / f"{context.asset_partition_key}.json"

    def handle_output(self, context: dg.OutputContext, obj: dict) -> None:
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, sort_keys=True))
        tmp.rename(path)

    def load_input(self, context: dg.InputContext) -> dict:
        return json.loads(self._path(context).read_text())


@dg.asset(partitions_def=PARTITIONS)
def letters(context: dg.AssetExecutionContext) -> dict:
    seed = hashlib.sha256(context.partition_key.encode()).hexdigest()
    return {"partition": context.partition_key, "letters": seed * 4}


@dg.asset(partitions_def=PARTITIONS)
def counts(letters: dict) -> dict:
    text = letters["letters"]
    return {"partition": letters["partition"], "counts": {c: text.count(c) for c in sorted(set(text))}}


defs = dg.Definitions(
    assets=[letters, counts],
    jobs=[dg.define_asset_job("toy", selection=[letters, counts])],
    resources={"io_manager": JsonIOManager(base_dir=dg.EnvVar("CELERY_TOY_DIR"))},
)
