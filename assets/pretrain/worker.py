"""Training worker launched under ``torchrun`` by the ``pretrained_model`` asset through Dagster Pipes.

Rank 0 opens the Pipes connection and streams each metrics record as a log line and the
final summary as a custom message; other ranks train silently. A crash of any rank makes
torchrun exit non-zero, which fails the asset's step.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from dagster_pipes import open_dagster_pipes

from lmcore.train.config import TrainConfig
from lmcore.train.distributed import dist_env
from lmcore.train.entry import load_run_spec, model_config_from
from lmcore.train.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.pretrain.worker")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = load_run_spec(args.config)
    main_rank = dist_env().is_main
    with open_dagster_pipes() if main_rank else contextlib.nullcontext() as pipes:
        summary = train(
            model_config_from(spec["model"]),
            TrainConfig.from_dict(spec["train"]),
            Path(spec["shard_root"]),
            Path(spec["runs_dir"]),
            callback=(lambda record: pipes.log.info(json.dumps(record))) if main_rank else None,
            meta_extra=spec.get("meta_extra"),
        )
        if main_rank:
            pipes.report_custom_message({"summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
