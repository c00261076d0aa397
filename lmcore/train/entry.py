"""``python -m lmcore.train.entry --config spec.json``: the one program every process of a torchrun job runs.

The JSON file is a training spec's ``to_dict()`` (:mod:`lmcore.train.spec`): its ``task`` names the spec
class (:data:`TASKS`; a file without ``task`` is a pretraining spec, whose ``model`` may also be
``{"preset": name, **overrides}``). :func:`run_spec` creates the process group once, for all of the
spec's training runs (the classifiers train several), and runs the spec in every process. Standalone,
rank 0 prints one JSON object per line on stdout: ``{"event": "metrics", ...}`` per record and
``{"event": "summary", ...}`` (the result's dict) at the end; logs go to stderr. Dagster's launcher runs
``assets.worker``, a thin Dagster Pipes wrapper around :func:`load_spec` and :func:`run_spec`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from lmcore.cpu import pin_cpu_dispatch
from lmcore.io import read_json
from lmcore.train import distributed as D
from lmcore.train.job import Callback
from lmcore.train.spec import TrainingSpec

TASKS = {
    "pretrain": "lmcore.train.spec:PretrainSpec",
    "sft": "lmcore.finetune.specs:SftSpec",
    "classify": "lmcore.finetune.specs:ClassifySpec",
}
"""The spec class of each task, imported by name: a process imports its own task's code only, and
``lmcore.train`` does not depend on ``lmcore.finetune``."""


def load_spec(path: str | Path) -> TrainingSpec:
    """The spec a torchrun job's JSON file holds; ValueError naming ``path`` for an unknown task or key."""
    data = read_json(path)
    task = data.get("task", "pretrain")
    if task not in TASKS:
        raise ValueError(f"{path}: task must be one of {list(TASKS)}, got {task!r}")
    module, name = TASKS[task].split(":")
    return getattr(importlib.import_module(module), name).from_dict(data, where=path)


def device_type(spec: TrainingSpec, env: D.DistEnv) -> str:
    """The kind of device all of the spec's training runs use; the process group's backend follows it."""
    types = {name: D.resolve_device(cfg.device, env).type for name, cfg in spec.train_configs().items()}
    if len(set(types.values())) != 1:
        raise ValueError(f"the training runs of one torchrun job use one kind of device; got {types}: set them alike")
    return next(iter(types.values()))


def run_spec(spec: TrainingSpec, callback: Callback | None = None) -> Any:
    """Run ``spec`` in this process of a torchrun job, in a process group created once for all its runs."""
    env = D.dist_env()
    created = D.init_distributed(env, device_type(spec, env))
    try:
        return spec.run(callback=callback)
    finally:
        if created:
            D.shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmcore.train.entry", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="a training spec (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    pin_cpu_dispatch()  # every rank on the kernels of the process that launched it (the level is inherited)
    spec = load_spec(args.config)

    def report(record: dict[str, Any]) -> None:
        print(json.dumps({"event": "metrics", **record}), flush=True)

    result = run_spec(spec, report)
    if D.dist_env().is_main and result is not None:
        print(json.dumps({"event": "summary", **spec.result_to_dict(result)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
