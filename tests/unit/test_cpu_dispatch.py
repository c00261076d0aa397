"""Same config, same weights on any CPU: torch's CPU kernels are pinned to one level in every process the pipeline
starts, whatever dispatch or thread settings the launching process has (lmcore.cpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmcore.cpu import DISPATCH_ENV, wanted_level
from tests.unit.test_train import config, write_synthetic_shards

REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("ATEN_CPU_CAPABILITY", DISPATCH_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**env, "OMP_NUM_THREADS": "2", **changes}


def _python(code: str, **changes: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(**changes), capture_output=True, text=True)


PIN = "from lmcore.cpu import pin_cpu_dispatch; print(pin_cpu_dispatch())"


def test_the_pin_overrides_what_the_launching_process_forced():
    assert _python(PIN).stdout.strip() == "AVX2", "the default level"
    assert _python(PIN, ATEN_CPU_CAPABILITY="avx512").stdout.strip() == "AVX2"
    assert _python(PIN, ATEN_CPU_CAPABILITY="default").stdout.strip() == "AVX2"
    assert _python(PIN, LMPIPE_CPU_DISPATCH="default").stdout.strip() == "DEFAULT", "the level is a setting"


def test_native_leaves_torch_its_choice_and_a_late_pin_says_so():
    native = _python("import torch; print(torch.backends.cpu.get_cpu_capability())").stdout.strip()
    assert _python(PIN, LMPIPE_CPU_DISPATCH="native").stdout.strip() == native
    late = _python("import torch; torch.ones(3).sum(); " + PIN, LMPIPE_CPU_DISPATCH="default")
    assert late.stdout.strip() == native, "a kernel ran first: torch keeps its level"
    assert f"torch dispatches CPU kernels to {native}, not default" in late.stderr
    assert "a torch kernel ran before pin_cpu_dispatch" in late.stderr


def test_a_bad_level_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match=r"LMPIPE_CPU_DISPATCH='avx9': must be one of avx2, avx512, default, native"):
        wanted_level({DISPATCH_ENV: "avx9"})
    assert wanted_level({}) == "avx2" and wanted_level({DISPATCH_ENV: " AVX512 "}) == "avx512"
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--select", "raw_corpus"],
        cwd=REPO,
        env=_env(LMPIPE_CPU_DISPATCH="avx9", LMPIPE_HOME="/nonexistent/never-made"),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "LMPIPE_CPU_DISPATCH='avx9'" in out.stdout + out.stderr
    assert not Path("/nonexistent/never-made").exists(), "nothing was created"


def _train(tmp: Path, name: str, shards: Path, **changes: str) -> dict:
    """A short training run through the torchrun entry, in a fresh process with ``changes`` in its environment."""
    spec = {
        "model": {"preset": "tiny", "vocab_size": 64, "context_length": 32},
        "shard_root": str(shards),
        "train": config(max_steps=12, eval_every=0, checkpoint_every=0).to_dict(),
        "runs_dir": str(tmp / f"runs-{name}"),
    }
    (tmp / f"{name}.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "lmcore.train.entry", "--config", str(tmp / f"{name}.json")]
    out = subprocess.run(cmd, cwd=REPO, env=_env(**changes), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_forced_dispatch_and_other_threads_train_the_same_weights(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards")
    pinned = _train(tmp_path, "pinned", shards)
    other_level = _train(tmp_path, "other_level", shards, LMPIPE_CPU_DISPATCH="default")
    assert other_level["checkpoint_sha256"] != pinned["checkpoint_sha256"], (
        "precondition: the kernel level changes this run's weights (else this test could not fail)"
    )
    for name, changes in {
        "forced_avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
        "forced_default": {"ATEN_CPU_CAPABILITY": "default"},
        "one_thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    }.items():
        run = _train(tmp_path, name, shards, **changes)
        assert run["checkpoint_sha256"] == pinned["checkpoint_sha256"], name
        assert run["loss_history"] == pinned["loss_history"], name
