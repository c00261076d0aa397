"""``python -m lmcore.train.entry --config run.json``: run ``lmcore.train.loop.train`` from a JSON file.

Meant to be launched as is or under ``torchrun`` (one process per device), e.g. by a
Dagster asset through Pipes. The JSON file holds::

    {"model": {"preset": "tiny", ...overrides} | {ModelConfig fields},
     "train": {TrainConfig fields},
     "shard_root": "path/to/token_shards", "runs_dir": "path/to/runs",
     "meta_extra": {...}            optional, stored in every checkpoint's meta.json
     "outlets": {"tracker": {...}, "mirror": "s3://..."}   optional (lmcore.train.job.Outlets)
     "window_log_dir": "path"}      optional test aid: per-rank logs of drawn windows

:func:`train_kwargs` turns such a spec into the arguments of ``train``, for this entry and
for any other that runs pretraining specs. Rank 0 prints one JSON object per
line on stdout: ``{"event": "metrics", ...}`` per report and ``{"event": "summary", ...}`` at
the end. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from lmcore.cpu import pin_cpu_dispatch
from lmcore.io import read_json
from lmcore.model.gpt import PRESETS, ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.distributed import dist_env
from lmcore.train.job import Outlets, WarmStart
from lmcore.train.loop import train

KEYS = {"model", "train", "shard_root", "runs_dir", "meta_extra", "window_log_dir", "outlets", "init"}
REQUIRED = {"model", "train", "shard_root", "runs_dir"}


def model_config_from(spec: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from ``{"preset": name, **overrides}`` or from its plain fields."""
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is None:
        return ModelConfig.from_dict(spec)
    if preset not in PRESETS:
        raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return PRESETS[preset](**spec)


def train_kwargs(spec: dict[str, Any], *, where: str | Path = "run spec") -> dict[str, Any]:
    """The keyword arguments of :func:`lmcore.train.loop.train` from a run spec (keys as in the module docstring).

    Raises ValueError naming ``where`` and every unknown or missing key.
    """
    problems = []
    if unknown := sorted(set(spec) - KEYS):
        problems.append(f"unknown keys {unknown}")
    if missing := sorted(REQUIRED - set(spec)):
        problems.append(f"missing keys {missing}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems) + f"; valid keys are {sorted(KEYS)}")
    window_log_dir = spec.get("window_log_dir")
    return {
        "model_config": model_config_from(spec["model"]),
        "train_config": TrainConfig.from_dict(spec["train"]),
        "shard_root": Path(spec["shard_root"]),
        "runs_dir": Path(spec["runs_dir"]),
        "meta_extra": spec.get("meta_extra"),
        "window_log_dir": Path(window_log_dir) if window_log_dir else None,
        "outlets": Outlets.from_dict(spec.get("outlets")),
        "init": WarmStart.from_dict(spec["init"]) if spec.get("init") else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmcore.train.entry", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="JSON file: model, train, shard_root, runs_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    pin_cpu_dispatch()
    kwargs = train_kwargs(read_json(args.config), where=args.config)

    def report(record: dict[str, Any]) -> None:
        print(json.dumps({"event": "metrics", **record}), flush=True)

    summary = train(**kwargs, callback=report)
    if dist_env().is_main:
        print(json.dumps({"event": "summary", **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
