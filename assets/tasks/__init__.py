"""What a training asset runs, as a spec: one module per task, free of Dagster, so torchrun's processes start fast.

A spec is a JSON-able dict with the task's settings and the paths of its inputs (artifacts on
disk), never the data; the file handed to torchrun adds ``"task"``, the module's name. Each
module here (``pretrain``, ``sft``, ``classify``) has ``run(spec, *, callback, on_wait)``, which
turns the spec into the arguments of one lmcore call and makes it, and ``train_configs(spec)``,
the training runs it holds (their devices pick the process group's backend). The asset imports
its task module and calls it through ``assets.launch.run_training``: in its own process for one
process, else in each process of a torchrun job (``assets.worker``). An asset importing its own
task module keeps its code version to the code it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_keys(spec: dict[str, Any], required: set[str], optional: set[str], where: str | Path) -> None:
    """ValueError naming ``where`` and every unknown or missing key of ``spec`` (``task`` aside)."""
    keys = set(spec) - {"task"}
    problems = []
    if unknown := sorted(keys - required - optional):
        problems.append(f"unknown keys {unknown}")
    if missing := sorted(required - keys):
        problems.append(f"missing keys {missing}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems) + f"; valid keys are {sorted(required | optional)}")
