"""``python -m assets.worker --config spec.json``: lmcore's torchrun entry (``lmcore.train.entry``) under Dagster Pipes.

The launcher resource runs this in every process of a training asset's torchrun job. It is the one entry
point's thin Pipes wrapper: ``lmcore.train.entry`` reads the spec and runs it (the process group created once
for all its training runs), and rank 0 alone opens the Dagster Pipes connection, streams each training record
(the classifiers: each event) as a log line and reports the result's dict as the custom message
``{"result": ...}``. lmcore stays free of Dagster; only dagster_pipes is imported here, not dagster, so every
rank starts quickly. A crash of any rank makes torchrun exit non-zero, which fails the asset's step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from dagster_pipes import open_dagster_pipes

from lmcore.cpu import pin_cpu_dispatch
from lmcore.train import distributed as D
from lmcore.train.entry import load_spec, run_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the spec (JSON) the asset wrote")
    args = parser.parse_args(argv)
    pin_cpu_dispatch()  # every rank on the kernels of the step that launched it (the level is inherited)
    spec, is_main = load_spec(args.config), D.dist_env().is_main
    with open_dagster_pipes() if is_main else contextlib.nullcontext() as pipes:
        log = (lambda record: pipes.log.info(json.dumps(record))) if is_main else None
        result = run_spec(spec, callback=log)
        if is_main:
            pipes.report_custom_message({"result": spec.result_to_dict(result)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
