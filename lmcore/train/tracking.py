"""Experiment tracking: the training loop's metrics records, sent to TensorBoard, MLflow or Weights & Biases as well.

A tracker is described by a plain spec (JSON-able, so it travels to torchrun workers) and opened
by the loop on rank 0 once per run, when the run's directory and key are known::

    {"kind": "tensorboard"}                                  event files in <run dir>/tensorboard
    {"kind": "tensorboard", "log_dir": "/shared/tb"}         event files in /shared/tb/<run key>
    {"kind": "mlflow", "tracking_uri": "sqlite:///...", "experiment": "lmpipe", "tags": {...}}
    {"kind": "wandb", "project": "lmpipe", "entity": None, "mode": "offline", "dir": None, "tags": {...}}
    None or {"kind": "none"}                                 metrics.jsonl only

Every tracker names scalars the same way (``train/loss``, ``train/lr``, ``train/grad_norm``,
``train/tokens``, ``perf/tokens_per_s``, ``perf/mfu``, ``val/loss``) and keep one point per step
across a crash and resume. On finish, TensorBoard gets the config as hparams (the HPARAMS tab
compares runs) and the summary's figures as a text table; MLflow gets them as ``final/*``
metrics; W&B gets the config as the run config and the figures as the run summary
(:mod:`lmcore.train.tracking_wandb`); :func:`lmcore.train.trackers.open_tracker` opens the one a spec names.
metrics.jsonl stays the record of a run; a tracker is a view
of it. This module knows nothing of Dagster.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lmcore.train.summary import TrainSummary

KINDS = ("tensorboard", "mlflow", "wandb", "none")
DEFAULT_EXPERIMENT = "lmpipe"
RUN_KEY_TAG = "lmpipe.run_key"
"""The MLflow tag that finds a run's MLflow run again when it resumes."""
SCALAR_NAMES = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens": "train/tokens",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "val_loss": "val/loss",
}
"""Scalar name per metrics-record key; a numeric key not listed keeps its own name."""
FINAL_FIELDS = ("train_loss", "val_loss", "tokens_seen", "tokens_per_s", "mfu", "params", "step")
"""The summary's figures a tracker records on finish."""
PARAM_CHARS = 500
"""Longest MLflow param value written (older MLflow servers reject more); longer ones are cut."""
SETTINGS = {
    "tensorboard": ("log_dir",),
    "mlflow": ("tracking_uri", "experiment", "tags"),
    "wandb": ("project", "entity", "mode", "dir", "tags"),
    "none": (),
}
"""The :class:`TrackerSpec` fields each kind takes besides ``kind``."""
WANDB_MODES = ("online", "offline")
"""The W&B modes a spec may name (None leaves it to ``$WANDB_MODE``; ``disabled`` is kind ``none``)."""


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What a tracker is told when a run starts (or resumes)."""

    run_dir: Path
    """The run's directory (``runs_dir/<run_key>``)."""
    run_key: str
    """The run's key: the same for a run and every resumption of it."""
    config: dict[str, Any]
    """The run's identity (model, resolved train config, world size, job fields)."""
    resumed_from: int | None
    """The checkpoint step the run continues from; None for a fresh run."""


class Tracker(Protocol):
    """Receives what the loop appends to ``metrics.jsonl`` (rank 0 only)."""

    def log(self, record: dict[str, Any]) -> None:
        """One record: ``step`` and any of loss, lr, grad_norm, tokens_per_s, mfu, tokens, val_loss."""

    def finish(self, summary: TrainSummary | None) -> None:
        """The run ended: its summary, or None when it failed."""


@dataclass(frozen=True, kw_only=True)
class TrackerSpec:
    """A validated tracker spec; :meth:`parse` reads the plain-dict form the loop receives."""

    kind: str = "tensorboard"
    """One of ``KINDS``."""
    log_dir: str | None = None
    """TensorBoard: a directory all runs share, each writing to ``log_dir/<run key>``; None: each run's
    ``<run dir>/tensorboard``."""
    tracking_uri: str | None = None
    """MLflow (required): ``sqlite:///path/mlflow.db``, ``http(s)://server``, or ``file:///dir`` (MLflow 3
    refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE=true``)."""
    experiment: str = DEFAULT_EXPERIMENT
    """MLflow: the experiment the run goes into (created if missing)."""
    tags: dict[str, str] = field(default_factory=dict)
    """MLflow: tags set on the run (e.g. the asset that trains it); W&B: the run's tags, as ``name=value``."""
    project: str | None = None
    """W&B: the project the run goes into; None: ``$WANDB_PROJECT``, else ``lmpipe``."""
    entity: str | None = None
    """W&B: the user or team that owns the project; None: ``$WANDB_ENTITY``, else the API key's default entity."""
    mode: str | None = None
    """W&B: ``online`` (streamed to the server; needs ``wandb login`` or ``$WANDB_API_KEY``) or ``offline`` (files
    only, uploaded later with ``wandb sync``); None: ``$WANDB_MODE``, else online."""
    dir: str | None = None
    """W&B: the directory its files go under (``<dir>/wandb/``); None: ``$WANDB_DIR``, else the run's directory."""

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind={self.kind!r} is not a tracker; valid: {', '.join(KINDS)}")
        if self.kind == "mlflow" and not (isinstance(self.tracking_uri, str) and self.tracking_uri):
            problems.append("tracking_uri is required for kind 'mlflow' (e.g. sqlite:///path/mlflow.db)")
        if self.log_dir is not None and not (isinstance(self.log_dir, str) and self.log_dir):
            problems.append(f"log_dir={self.log_dir!r} must be a directory path or None")
        if not (isinstance(self.experiment, str) and self.experiment):
            problems.append(f"experiment={self.experiment!r} must be a non-empty string")
        if not isinstance(self.tags, dict) or not all(isinstance(v, str) for v in self.tags.values()):
            problems.append(f"tags={self.tags!r} must map names to strings")
        if self.mode is not None and self.mode not in WANDB_MODES:
            problems.append(f"mode={self.mode!r} is not a W&B mode; valid: {', '.join(WANDB_MODES)} (or None)")
        for name in ("project", "entity", "dir"):
            if (value := getattr(self, name)) is not None and not (isinstance(value, str) and value):
                problems.append(f"{name}={value!r} must be a non-empty string or None")
        if problems:
            raise ValueError("tracker spec: " + "; ".join(problems))

    @classmethod
    def parse(cls, spec: dict[str, Any] | None) -> TrackerSpec | None:
        """The spec, checked (ValueError naming each bad field); None when nothing is tracked."""
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise ValueError(f"tracker spec must be a dict with a 'kind' ({', '.join(KINDS)}) or None, not {spec!r}")
        kind = spec.get("kind")
        if kind not in SETTINGS:
            raise ValueError(f"tracker spec: kind={kind!r} is not a tracker; valid: {', '.join(KINDS)}")
        unknown = sorted(set(spec) - {"kind"} - set(SETTINGS[kind]))
        if unknown:
            valid = ", ".join(["kind", *sorted(SETTINGS[kind])])
            raise ValueError(f"tracker spec: {unknown} are not {kind} settings; valid: {valid}")
        parsed = cls(**spec)
        return None if parsed.kind == "none" else parsed


def check_spec(spec: dict[str, Any] | None) -> TrackerSpec | None:
    """Validate a spec and that the package its tracker needs is installed, without opening anything."""
    parsed = TrackerSpec.parse(spec)
    if parsed is not None:
        _require(*_PACKAGE[parsed.kind])
    return parsed


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers by scalar name (``SCALAR_NAMES``); step, None and non-numbers (paths) left out."""
    return {SCALAR_NAMES.get(k, k): float(v) for k, v in record.items() if k != "step" and _is_number(v)}


def final_figures(summary: TrainSummary) -> dict[str, float]:
    """The summary's ``FINAL_FIELDS`` that are numbers, as ``final/<field>``."""
    values = {k: getattr(summary, k) for k in FINAL_FIELDS}
    return {f"final/{k}": float(v) for k, v in values.items() if _is_number(v)}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists as JSON text; None dropped (TensorBoard's hparams and MLflow's params
    take none)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        elif value is not None:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class TensorBoardTracker:
    """Event files in ``log_dir`` (``tensorboard --logdir`` on it or any folder above it).

    The writer's ``purge_step`` is the first step this session logs (0 for a fresh run), so
    TensorBoard drops the points an earlier, crashed session wrote past the checkpoint it resumed
    from, and a restarted run's curve has each step once.
    """

    def __init__(self, log_dir: Path, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        first = 0 if run.resumed_from is None else run.resumed_from + 1
        self.writer = SummaryWriter(str(self.log_dir), purge_step=first, flush_secs=10)
        self.config = run.config
        self.step = first
        self.tags: set[str] = set()
        if run.resumed_from is None:  # a resumed run keeps the text its first session wrote at step 0
            self.writer.add_text("config", _as_code(json.dumps(run.config, indent=2, sort_keys=True)), 0)

    def log(self, record: dict[str, Any]) -> None:
        self.step = record["step"]
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, self.step)
            self.tags.add(tag)

    def finish(self, summary: TrainSummary | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        if summary is None:
            self.writer.add_text("status", f"failed after step {self.step}", self.step)
        else:
            self.step = summary.step
            live = [t for t in SCALAR_NAMES.values() if t in self.tags]  # the HPARAMS tab shows their last values
            for summary_proto in hparams(flatten(self.config), dict.fromkeys(live, 0.0)):
                self.writer.file_writer.add_summary(summary_proto, self.step)
            table = "\n".join(f"| {k} | {v:.6g} |" for k, v in final_figures(summary).items())
            self.writer.add_text("summary", "| figure | value |\n| --- | --- |\n" + table, self.step)
            self.writer.add_text("status", f"finished at step {self.step}", self.step)
        self.writer.close()  # flushes


class MlflowTracker:
    """One MLflow run per lmcore run, found again by its ``lmpipe.run_key`` tag when the run resumes.

    A fresh run (nothing to resume) always starts a new MLflow run; a resumed one continues the
    newest run with its key, or starts one if there is none. MLflow cannot delete metric points,
    so a resumed run skips the steps an earlier session already logged (those past the
    checkpoint it resumed from): each step is logged once, by the session that reached it first.
    """

    def __init__(self, spec: TrackerSpec, run: RunInfo) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=spec.tracking_uri)
        experiment_id = self._experiment(spec.experiment, spec.tracking_uri)
        found = self._find(experiment_id, run.run_key) if run.resumed_from is not None else None
        tags = {RUN_KEY_TAG: run.run_key, "lmpipe.run_dir": str(run.run_dir), **spec.tags}
        params = {k: _param(v) for k, v in flatten(run.config).items()}
        self.logged: dict[str, int] = {}
        if found is None:
            self.run_id = self.client.create_run(experiment_id, tags=tags, run_name=run.run_key).info.run_id
        else:
            self.run_id = found.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            tags |= {f"resumed.{k}": v for k, v in params.items() if found.data.params.get(k, v) != v}
            params = {k: v for k, v in params.items() if k not in found.data.params}  # params are write-once
            self.logged = {
                k: max(m.step for m in self.client.get_metric_history(self.run_id, k)) for k in found.data.metrics
            }
        if run.resumed_from is not None:
            tags["lmpipe.resumed_from"] = str(run.resumed_from)
        self._batch(params=params, tags=tags)

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        values = {k: v for k, v in scalars(record).items() if step > self.logged.get(k, -1)}
        self._metrics(values, step)

    def finish(self, summary: TrainSummary | None) -> None:
        if summary is not None:
            self._metrics(final_figures(summary), summary.step)
        self.client.set_terminated(self.run_id, "FAILED" if summary is None else "FINISHED")

    def _experiment(self, name: str, uri: str | None) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name)
            except MlflowException as e:  # another run created it first
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {name!r} at {uri} is deleted; restore it "
                f"(mlflow experiments restore) or set another experiment"
            )
        return experiment.experiment_id

    def _find(self, experiment_id: str, run_key: str) -> Any:
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batch(metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _batch(
        self,
        *,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        metrics: list[Any] | None = None,
    ) -> None:
        """log_batch in chunks MLflow accepts (100 params or tags, 1000 metrics per call)."""
        from mlflow.entities import Param, RunTag

        for chunk in _chunks([Param(k, v) for k, v in (params or {}).items()], 100):
            self.client.log_batch(self.run_id, params=chunk)
        for chunk in _chunks([RunTag(k, v) for k, v in (tags or {}).items()], 100):
            self.client.log_batch(self.run_id, tags=chunk)
        for chunk in _chunks(metrics or [], 1000):
            self.client.log_batch(self.run_id, metrics=chunk)


_PACKAGE = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "lmpipe[mlflow]"),
    "wandb": ("wandb", "lmpipe[wandb]"),
}
"""Per kind: (the module its tracker imports, what to pip install for it)."""


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"the {module} tracker needs the '{module}' package: pip install '{install}'")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PARAM_CHARS else text[: PARAM_CHARS - 3] + "..."


def _as_code(text: str) -> str:
    """Markdown code block (TensorBoard renders text as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))
