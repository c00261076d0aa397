"""Same config, same numbers: does a training run give the same weights whatever the CPU dispatch and the threads,
what does pinning the dispatch cost, and does the demo's promotion gate decide the same across seeds and dispatch?

Part 1, weights. The demo's pretraining (its model and train config from pipelines/profiles/demo.yaml, --steps
steps) on the demo's token shards, each arm in a fresh process through `python -m lmcore.train.entry` (the
torchrun entry, which pins the dispatch like the CLI and the code location do), with the launching environment
changed:
  pinned                 nothing set: LMPIPE_CPU_DISPATCH defaults to avx2
  forced_avx512          ATEN_CPU_CAPABILITY=avx512 (what this CPU would choose; the pin overrides it)
  forced_default         ATEN_CPU_CAPABILITY=default (ATen's portable kernels; the pin overrides it)
  threads_1              OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  native                 LMPIPE_CPU_DISPATCH=native: torch's own choice (AVX512 where the CPU has it)
identical_across_dispatch: the forced arms' checkpoint digest equals the pinned arm's; identical_across_threads:
threads_1's does. native_differs says whether the pin changes anything on this CPU. pinned_slowdown: the native
arm's training tokens/s over the pinned arm's (median of --repeats alternating pairs; > 1: pinning costs).

Part 2, the gate (skip with --no-gate; about 9 minutes per arm on 2 cores). `lmpipe run --profile demo`, each arm
from an empty home: seed_0 (the profile as is), seed_1 and seed_2 (every training seed set to 1 or 2:
pretraining, SFT, task adaptation, both LM classifiers), forced_avx512 (ATEN_CPU_CAPABILITY=avx512 at seed 0), and
native (LMPIPE_CPU_DISPATCH=native at seed 0: what an unpinned AVX512 CPU computes). Per arm: each gated row's
figures, interval and decision; gate_flips counts the arms whose overall decision differs from seed_0's.

    OMP_NUM_THREADS=2 python benchmarks/determinism.py [--steps 100] [--repeats 2] [--no-gate] [--arms seed_0,...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from books import say

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LMPIPE = [sys.executable, "-m", "pipelines.cli"]
TRAINING = (
    "pretrained_model.train",
    "sft_model.train",
    "classifier_report.adapt",
    "classifier_report.label_lm",
    "classifier_report.head",
)
WEIGHT_ARMS = {
    "pinned": {},
    "forced_avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "forced_default": {"ATEN_CPU_CAPABILITY": "default"},
    "threads_1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "native": {"LMPIPE_CPU_DISPATCH": "native"},
}
GATE_ARMS = {
    "seed_0": ({}, 0),
    "seed_1": ({}, 1),
    "seed_2": ({}, 2),
    "forced_avx512": ({"ATEN_CPU_CAPABILITY": "avx512"}, 0),
    "native": ({"LMPIPE_CPU_DISPATCH": "native"}, 0),
}


def _env(changes: dict[str, str], home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "LMPIPE_CPU_DISPATCH")}
    env.setdefault("OMP_NUM_THREADS", "2")
    if home is not None:
        env["LMPIPE_HOME"] = str(home)
    return {**env, **changes}


def _lmpipe(args: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("w") as out:
        return subprocess.run([*LMPIPE, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def _latest(home: Path, asset: str) -> Path:
    return Path(json.loads((home / "artifacts" / asset / "latest.json").read_text())["location"])


def weight_arm(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Train ``spec`` in a fresh process with arm ``name``'s environment; its summary's digest and throughput."""
    spec = {**spec, "runs_dir": str(work / f"runs-{name}-{time.monotonic_ns()}")}
    path = work / f"{name}.json"
    path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", "lmcore.train.entry", "--config", str(path)]
    out = subprocess.run(argv, cwd=ROOT, env=_env(WEIGHT_ARMS[name]), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"arm {name} failed:\n{out.stderr[-3000:]}")
    summary = next(json.loads(line) for line in out.stdout.splitlines() if '"event": "summary"' in line)
    dispatch = [line for line in out.stderr.splitlines() if "dispatches CPU kernels" in line]
    return {
        "checkpoint_sha256": summary["checkpoint_sha256"],
        "tokens_per_s": summary["tokens_per_s"],
        "train_loss": summary["train_loss"],
        "warning": dispatch[0] if dispatch else None,
    }


def weights(work: Path, steps: int, repeats: int) -> dict[str, Any]:
    home = work / "data-home"
    say("building the demo's token shards")
    if _lmpipe(["run", "--profile", "demo", "--select", "*token_shards"], _env({}, home), work / "data.log"):
        raise RuntimeError(f"building the demo's shards failed; see {work / 'data.log'}")
    demo = yaml.safe_load((Path(ROOT) / "pipelines/profiles/demo.yaml").read_text())["assets"]["pretrained_model"]
    train = {**demo["train"], "max_steps": steps, "eval_every": 0, "checkpoint_every": 0, "device": "cpu"}
    spec = {
        "model": {"preset": demo["preset"], **demo["model"]},
        "train": train,
        "shard_root": str(_latest(home, "token_shards")),
    }
    arms: dict[str, Any] = {}
    speeds: dict[str, list[float]] = {"pinned": [], "native": []}
    for r in range(repeats):
        for name in ("native", "pinned") if r % 2 else ("pinned", "native"):
            arms[name] = weight_arm(name, spec, work)
            speeds[name].append(arms[name]["tokens_per_s"])
            say(f"{name}: {arms[name]}")
    for name in ("forced_avx512", "forced_default", "threads_1"):
        arms[name] = weight_arm(name, spec, work)
        say(f"{name}: {arms[name]}")
    digest = {name: a["checkpoint_sha256"] for name, a in arms.items()}
    return {
        "steps": steps,
        "arms": arms,
        "identical_across_dispatch": digest["forced_avx512"] == digest["pinned"] == digest["forced_default"],
        "identical_across_threads": digest["threads_1"] == digest["pinned"],
        "native_differs": digest["native"] != digest["pinned"],
        "pinned_slowdown": round(statistics.median(speeds["native"]) / statistics.median(speeds["pinned"]), 3),
        "tokens_per_s": {k: [round(v) for v in vs] for k, vs in speeds.items()},
    }


def gate_arm(name: str, work: Path) -> dict[str, Any]:
    changes, seed = GATE_ARMS[name]
    home = work / f"home-{name}"
    sets = [a for field in TRAINING for a in ("--set", f"{field}.seed={seed}")] if seed else []
    say(f"gate arm {name}: lmpipe run --profile demo {' '.join(sets)} ({changes or 'pinned'})")
    start = time.perf_counter()
    code = _lmpipe(["run", "--profile", "demo", *sets], _env(changes, home), work / f"{name}.log")
    report = json.loads((home / "reports" / "evaluation.json").read_text())
    rows = {
        r["metric"]: {
            k: r[k] for k in ("value", "baseline_value", "improvement", "low", "high", "p_value", "rule", "passes")
        }
        for r in report["table"]
    }
    gated = [r for r in rows.values() if r["rule"]]
    return {
        "exit_code": code,
        "wall_s": round(time.perf_counter() - start),
        "passes": all(r["passes"] for r in gated),
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="pretraining steps of each weight arm")
    p.add_argument("--repeats", type=int, default=2, help="alternating pinned/native pairs timed")
    p.add_argument("--no-gate", action="store_true", help="part 1 only")
    p.add_argument("--arms", default=",".join(GATE_ARMS), help="gate arms, comma-separated")
    p.add_argument("--work", type=Path, help="keep homes and logs here (default: a temporary folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {"weights": weights(work, args.steps, args.repeats)}
        if not args.no_gate:
            gate = {name: gate_arm(name, work) for name in args.arms.split(",")}
            for name, arm in gate.items():
                say(f"{name}: exit {arm['exit_code']}, gate passes {arm['passes']}, {arm['wall_s']} s")
            reference = gate.get("seed_0", next(iter(gate.values())))["passes"]
            out["gate"] = gate
            out["gate_flips"] = sum(arm["passes"] != reference for arm in gate.values())
        w = out["weights"]
        out["summary"] = {
            k: w[k]
            for k in ("identical_across_dispatch", "identical_across_threads", "native_differs", "pinned_slowdown")
        } | ({"gate_flips": out["gate_flips"]} if "gate_flips" in out else {})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
