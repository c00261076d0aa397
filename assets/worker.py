"""``python -m assets.worker --config spec.json``: a training asset's task, in every process of a torchrun job.

The spec (``assets.tasks``) names its task: ``pretrain``, ``sft`` or ``classify``, a module of
``assets.tasks``, imported by name so this module reaches no task's code. The worker creates
the process group once, before lmcore (the several training runs of ``classify`` share it),
and runs the task in every process; rank 0 alone opens the Dagster Pipes connection, streams
each training record (classify: each event) as a log line and reports the task's result as the
custom message ``{"result": ...}``. A crash of any rank makes torchrun exit non-zero, which fails
the asset's step. Only dagster_pipes is imported, not dagster, so every rank starts quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from dagster_pipes import open_dagster_pipes

from lmcore.cpu import pin_cpu_dispatch
from lmcore.io import read_json
from lmcore.train import distributed as D

TASKS = ("pretrain", "sft", "classify")


def task_module(spec: dict[str, Any], where: str | Path) -> ModuleType:
    """The ``assets.tasks`` module that runs ``spec``; ValueError naming ``where`` for an unknown task."""
    task = spec.get("task")
    if task not in TASKS:
        raise ValueError(f"{where}: task must be one of {list(TASKS)}, got {task!r}")
    return importlib.import_module(f"assets.tasks.{task}")


def device_type(module: ModuleType, spec: dict[str, Any], env: D.DistEnv) -> str:
    """The kind of device all of the spec's training runs use; the process group's backend follows it."""
    types = {name: D.resolve_device(cfg.device, env).type for name, cfg in module.train_configs(spec).items()}
    if len(set(types.values())) != 1:
        raise ValueError(f"the training runs of one torchrun job use one kind of device; got {types}: set them alike")
    return next(iter(types.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the spec (JSON) the asset wrote")
    args = parser.parse_args(argv)
    pin_cpu_dispatch()  # every rank on the kernels of the step that launched it (the level is inherited)
    spec = read_json(args.config)
    module, env = task_module(spec, args.config), D.dist_env()
    created = D.init_distributed(env, device_type(module, spec, env))
    try:
        with open_dagster_pipes() if env.is_main else contextlib.nullcontext() as pipes:
            log = (lambda record: pipes.log.info(json.dumps(record))) if env.is_main else None
            result = module.run(spec, callback=log, where=args.config)
            if env.is_main:
                pipes.report_custom_message({"result": result})
    finally:
        if created:
            D.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
