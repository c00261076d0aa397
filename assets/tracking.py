"""The tracker resource: where training assets send their metrics besides metrics.jsonl.

Training assets take ``tracker: TrackerResource`` and pass ``tracker.spec(asset)`` to the lmcore
training call, which opens the tracker on rank 0 (:mod:`lmcore.train.tracking`). TensorBoard
(event files under each run's directory) is the default; ``pipelines/definitions.py`` picks
MLflow or none from the environment. A bad setting fails when the resource is initialized,
before any training starts.
"""

from __future__ import annotations

from typing import Any, Literal

import dagster as dg

from lmcore.train.tracking import DEFAULT_EXPERIMENT, KINDS, check_spec


class TrackerResource(dg.ConfigurableResource):
    """Which experiment tracker training assets log to.

    With MLflow every training asset logs into the one ``experiment``, and each MLflow run carries
    the asset's name as the tag ``lmpipe.asset`` (filter or group by it in the MLflow UI). A tag
    rather than an experiment per asset: the experiment name stays exactly as configured, which
    servers such as Databricks require to be a workspace path.
    """

    kind: Literal[KINDS] = "tensorboard"  # the choices are lmcore's (a dropdown in the UI)
    """tensorboard: event files in each run's ``tensorboard/`` folder (``tensorboard --logdir $LMPIPE_HOME/artifacts``);
    mlflow: runs in ``experiment`` at ``tracking_uri``; none: metrics.jsonl only."""
    tracking_uri: str | None = None
    """MLflow only, required there: ``sqlite:///path/mlflow.db``, ``http(s)://server``, or ``file:///dir``
    (MLflow 3 takes a file store only with ``MLFLOW_ALLOW_FILE_STORE=true``)."""
    experiment: str = DEFAULT_EXPERIMENT
    """MLflow only: the experiment every training asset's runs go into (created if missing)."""

    def spec(self, asset: str) -> dict[str, Any] | None:
        """The lmcore tracker spec for ``asset``'s training run; ValueError naming a bad field."""
        if self.kind == "none":
            return None
        if self.kind == "tensorboard":
            spec: dict[str, Any] = {"kind": "tensorboard"}
        else:
            spec = {
                "kind": "mlflow",
                "tracking_uri": self.tracking_uri,
                "experiment": self.experiment,
                "tags": {"lmpipe.asset": asset},
            }
        try:
            check_spec(spec)
        except ValueError as e:
            raise ValueError(f"resource 'tracker' ({type(self).__name__}): {e}") from e
        return spec

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Check the settings (and that the tracker's package is installed) before any asset body runs."""
        self.spec("(check)")
