"""The Weights & Biases tracker: one W&B run per lmcore run, continued when the run resumes.

:func:`lmcore.train.trackers.open_tracker` opens it for ``{"kind": "wandb", ...}``. The W&B run's id
is the run key with a random suffix (``<run key>-<8 hex digits>``: two homes that train the same
config into one project get two runs), kept in ``<run dir>/wandb-run.json`` with the last step it
logged. A resumed run continues that W&B run (``resume="allow"``); a fresh one (nothing to resume)
starts a new one. W&B history cannot be rewritten, so, as with MLflow, a resumed run skips the steps
an earlier session already logged (those past the checkpoint it resumed from): each step is logged
once, by the session that reached it first. Online, the server's own next step counts too.

The config is the W&B run config (and ``lmpipe.run_key``, ``lmpipe.run_dir``, ``lmpipe.resumed_from``);
the summary's figures are the run summary as ``final/*``. Offline, each session writes its own
``<dir>/wandb/offline-run-*-<id>`` folder with the same run id; ``wandb sync`` uploads them, in
order, into the one run. This module knows nothing of Dagster; it imports ``wandb`` only when opened.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from lmcore.io import read_json, write_json
from lmcore.train.summary import TrainSummary
from lmcore.train.tracking import DEFAULT_EXPERIMENT, RunInfo, TrackerSpec, final_figures, scalars

STATE_FILE = "wandb-run.json"
"""In the run's directory: ``{"id": W&B run id, "last_step": the last step logged to it}``."""
TAG_CHARS = 64
"""Longest W&B tag; longer ``name=value`` tags are cut."""


class WandbTracker:
    """Sends the loop's records to one W&B run (see the module's docstring for ids, resume and offline runs)."""

    def __init__(self, spec: TrackerSpec, run: RunInfo) -> None:
        import wandb

        self.state_path = Path(run.run_dir) / STATE_FILE
        state = read_json(self.state_path) if run.resumed_from is not None and self.state_path.exists() else {}
        self.run_id: str = state.get("id") or f"{run.run_key}-{secrets.token_hex(4)}"
        tags = [f"{k}={v}"[:TAG_CHARS] for k, v in spec.tags.items()]
        self.run = wandb.init(
            id=self.run_id,
            resume="allow",
            project=spec.project or os.environ.get("WANDB_PROJECT") or DEFAULT_EXPERIMENT,
            entity=spec.entity,
            mode=spec.mode,
            dir=spec.dir or os.environ.get("WANDB_DIR") or str(run.run_dir),
            name=run.run_key,
            tags=tags or None,
            settings=wandb.Settings(console="off"),  # the training process's own output stays as it is
        )
        lmpipe = {"run_key": run.run_key, "run_dir": str(run.run_dir), "resumed_from": run.resumed_from}
        self.run.config.update({**run.config, "lmpipe": lmpipe}, allow_val_change=True)  # a resume may change some
        self.logged = max(int(state.get("last_step", -1)), self.run.starting_step - 1)
        self._save()

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if step <= self.logged:
            return
        values = scalars(record)
        if values:
            self.run.log(values, step=step)
        self.logged = step
        self._save()

    def finish(self, summary: TrainSummary | None) -> None:
        if summary is not None:
            self.run.summary.update(final_figures(summary))
        self.run.finish(exit_code=0 if summary is not None else 1)

    def _save(self) -> None:
        write_json(self.state_path, {"id": self.run_id, "last_step": self.logged})
