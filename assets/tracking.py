"""The tracker resource: where training assets send their metrics besides metrics.jsonl.

Training assets take ``tracker: TrackerResource`` and pass ``tracker.spec(asset)`` to the lmcore
training call, which opens the tracker on rank 0 (:mod:`lmcore.train.tracking`). TensorBoard
(event files under each run's directory) is the default; ``pipelines/definitions.py`` picks
MLflow, Weights & Biases or none from the environment. The resource's fields are those of
:class:`lmcore.train.tracking.TrackerSpec` (generated here: each setting is declared there once), less
``tags``, which the resource sets per asset. A bad setting fails when the resource is initialized,
before any training starts.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import dagster as dg
import pydantic

from assets.config import field_docs
from lmcore.train.tracking import KINDS, SETTINGS, TrackerSpec, check_spec

ASSET_TAG = "lmpipe.asset"
"""The tag (MLflow) or ``name=value`` tag (W&B) that names the training asset of a run."""


def _fields() -> dict[str, Any]:
    """TrackerSpec's fields (less tags) with their defaults and docs; ``kind`` a choice of lmcore's KINDS."""
    hints, docs = typing.get_type_hints(TrackerSpec), field_docs(TrackerSpec)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(TrackerSpec):
        if f.name == "tags":
            continue
        hint = Literal[KINDS] if f.name == "kind" else hints[f.name]  # a dropdown in the UI
        fields[f.name] = (hint, pydantic.Field(default=f.default, description=docs.get(f.name)))
    return fields


_TrackerFields = pydantic.create_model(
    "_TrackerFields", __base__=dg.ConfigurableResource, __module__=__name__, **_fields()
)


class TrackerResource(_TrackerFields):
    """Which experiment tracker training assets log to: ``TrackerResource(kind="wandb", project="lmpipe")``. Every
    field but ``kind`` applies to the kinds :data:`lmcore.train.tracking.SETTINGS` gives it.

    With MLflow or W&B every training asset logs into the one ``experiment`` or ``project``, and each run
    carries the asset's name as the tag ``lmpipe.asset`` (filter or group by it in the tracker's UI). A tag
    rather than an experiment per asset: the experiment name stays exactly as configured, which servers
    such as Databricks require to be a workspace path.
    """

    def spec(self, asset: str) -> dict[str, Any] | None:
        """The lmcore tracker spec for ``asset``'s training run; ValueError naming a bad field."""
        kind: str = self.kind
        if kind == "none":
            return None
        spec: dict[str, Any] = {"kind": kind}
        for name in SETTINGS[kind]:
            value = {ASSET_TAG: asset} if name == "tags" else getattr(self, name)
            if value is not None:
                spec[name] = value
        try:
            check_spec(spec)
        except ValueError as e:
            raise ValueError(f"resource 'tracker' ({type(self).__name__}): {e}") from e
        return spec

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Check the settings (and that the tracker's package is installed) before any asset body runs."""
        self.spec("(check)")
