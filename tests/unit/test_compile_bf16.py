"""The GPU settings on CPU: train() with torch.compile and bfloat16 autocast learns, resumes onto the
uninterrupted curve, and leaves a checkpoint that loads and generates; benchmarks/gpu.py --cpu-smoke runs.

One compiled run costs one cold compile (40-80 s on 2 busy cores, most of it gcc building inductor's
kernels); every later compiled run in this process reuses it, so the compiled runs share one
module-scoped set. The model is the tiny preset cut to 1 layer, width 32, context 16.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from lmcore.data.shards import TokenShardWriter, encode_documents, token_dtype, write_manifest
from lmcore.model.checkpoint import list_checkpoints, load_trained_model
from lmcore.model.generate import generate, generate_text, greedy
from lmcore.model.gpt import GPT, tiny
from lmcore.train.config import TrainConfig
from lmcore.train.loop import train

REPO = Path(__file__).resolve().parents[2]
CRASH_AT = 15  # the callback raises at this step's record, before its checkpoint: the newest is step 10


def model_config(vocab_size: int):
    return tiny(vocab_size=vocab_size, context_length=16, n_layer=1, d_model=32, n_head=2)


def config(compile: bool, **overrides) -> TrainConfig:
    # peak_flops is given so that no run times a bf16 matmul to find the CPU's peak (this CPU has no native
    # bf16: a 256-wide probe and a few timings, a fraction of a second, but nothing these tests need).
    base = dict(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=2, eval_batches=0, log_every=1, checkpoint_every=10)
    return TrainConfig(
        **{**base, "dtype": "bfloat16", "compile": compile, "device": "cpu", "peak_flops": 1e12, **overrides}
    )


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory, small_texts, tok) -> Path:
    """The small corpus through the throwaway tokenizer, as one "train" split."""
    root = tmp_path_factory.mktemp("shards")
    with TokenShardWriter(root / "train", token_dtype(tok.get_vocab_size()), shard_tokens=4096) as w:
        for ids, _ in encode_documents(tok, small_texts):
            w.add(ids)
    write_manifest(root, {"train": {"shards": w.shards, "tokens": w.tokens}}, vocab_size=tok.get_vocab_size())
    return root


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def callback(record: dict) -> None:
        if record["step"] == step:
            raise Crash

    return callback


@dataclass
class Runs:
    reference: dict  # an uninterrupted run's summary
    resumed: dict  # the summary of a run that crashed at CRASH_AT and was started again
    resumed_from_steps: list[int]  # the checkpoints the crashed run left
    graphs: int  # graphs dynamo captured in the reference run
    graph_breaks: dict[str, int]  # why dynamo split a graph, in the reference run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_shards, tok):
    """``runs(compile)``: the reference and the crashed-and-resumed bf16 runs, trained once per module."""
    done: dict[bool, Runs] = {}

    def get(compile: bool) -> Runs:
        if compile not in done:
            mc, cfg = model_config(tok.get_vocab_size()), config(compile)
            root = tmp_path_factory.mktemp("compiled" if compile else "eager")
            torch._dynamo.reset()  # count this run's graphs, not those of an earlier test's
            counters.clear()
            reference = train(mc, cfg, text_shards, root / "reference")
            graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
            with pytest.raises(Crash):
                train(mc, cfg, text_shards, root / "crashed", callback=crash_at(CRASH_AT))
            (run,) = [p for p in (root / "crashed").iterdir() if p.is_dir()]
            left = [s for s, _ in list_checkpoints(run)]
            done[compile] = Runs(reference, train(mc, cfg, text_shards, root / "crashed"), left, graphs, breaks)
        return done[compile]

    return get


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_bf16_run_learns(runs, compile: bool, tok) -> None:
    summary = runs(compile).reference
    losses = [v for _, v in summary.loss_history]
    assert summary.dtype == "bfloat16" and summary.step == 30 and len(losses) == 30
    assert losses[0] == pytest.approx(math.log(tok.get_vocab_size()), abs=0.3), "starts near uniform"
    assert np.mean(losses[-5:]) < losses[0] - 0.8, losses  # measured: 5.72 -> 4.61


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_bf16_resume_gives_the_uninterrupted_curve(runs, compile: bool) -> None:
    r = runs(compile)
    assert r.resumed_from_steps == [10] and r.resumed.resumed_from == 10
    # bit for bit: on CPU with one thread every op, compiled or not, computes the same way each time
    assert r.resumed.loss_history == r.reference.loss_history
    assert r.resumed.checkpoint_sha256 == r.reference.checkpoint_sha256


def test_compile_captures_the_model_whole_and_follows_the_eager_curve(runs) -> None:
    r = runs(True)
    assert r.graphs >= 1 and r.graph_breaks == {}, "a graph break splits the GPU kernels and costs speed"
    eager = np.array(runs(False).reference.loss_history)
    compiled = np.array(r.reference.loss_history)
    # Not bit for bit: inductor fuses ops and keeps the fused intermediates in float32 where eager autocast
    # rounds each op's output to bf16 (~3 significant digits). Measured gap 6e-4 over these 30 steps (and
    # 5e-7 in float32, where only the order of float operations differs).
    np.testing.assert_allclose(compiled, eager, atol=5e-3)
    assert not np.array_equal(compiled, eager), "the compiled run ran inductor's kernels, not eager ops"


def test_compiled_bf16_checkpoint_loads_and_generates(runs, tok, text_shards) -> None:
    summary = runs(True).reference
    model, meta = load_trained_model(summary.checkpoint)  # strict: a compiled run saves plain GPT weights
    assert meta["config"]["train"]["compile"] and meta["config"]["train"]["dtype"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "bf16 is autocast: float32 master weights"
    ids = tok.encode("The model reads the text, and then it writes more of the same.", add_special_tokens=False).ids
    x = torch.tensor([ids[:17]])
    assert x.shape == (1, 17)
    torch.manual_seed(0)
    untrained = GPT(model.config).eval()
    with torch.no_grad():
        trained_loss, fresh_loss = (m(x[:, :-1], x[:, 1:])[1].item() for m in (model, untrained))
    assert trained_loss < fresh_loss - 0.5, "the checkpoint holds the trained weights"

    text = generate_text(model, tok, "The", greedy(), max_new_tokens=12)
    prompt = tok.encode("The", add_special_tokens=False).ids
    assert (
        text
        == tok.decode(
            generate(model, prompt, greedy(), max_new_tokens=12, stop_ids=[tok.eot_id]), skip_special_tokens=False
        )
        and text
    )
    seeded = replace(greedy(), temperature=1.0, seed=3)
    sampled = generate(model, prompt, seeded, max_new_tokens=12)
    assert sampled == generate(model, prompt, seeded, max_new_tokens=12), "a seed fixes the sample"

    half = model.to(torch.bfloat16)  # a bf16 copy decodes too (its KV cache follows the weights' dtype)
    out = generate(half, prompt, greedy(), max_new_tokens=20)
    assert len(out) == 20 and all(0 <= t < model.config.vocab_size for t in out)


UNAVAILABLE = ("dagster", "polars", "datasets", "datasketch", "zstandard")
"""Packages of this project that the GPU machine lacks (it has torch, numpy, pyarrow, safetensors, tokenizers)."""

BLOCKED_RUN = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {UNAVAILABLE!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, Block())
sys.argv = ["benchmarks/gpu.py", "--cpu-smoke"]
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


def test_gpu_check_runs_on_cpu_without_the_packages_the_gpu_machine_lacks() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", BLOCKED_RUN], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["preset"] == "tiny" and result["dtype"] == "bfloat16" and result["steps"] == 8
    assert result["tokens_per_s"] > 0 and result["mfu"] > 0 and result["goal_mfu"] == 0.45
    assert result["sdpa_flash_accepts"] and result["sdpa_backend"] == "flash", "CPU SDPA has a flash kernel"
    assert any("flash" in op for op in result["sdpa_ops"])
    assert result["ddp_backend"] == "gloo" and result["ddp_losses_equal"] and result["ddp_max_abs_diff"] == 0.0
    assert result["loss_last"] < result["ln_vocab"]


def test_gpu_check_refuses_to_run_without_cuda() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    assert "needs a CUDA GPU" in out.stderr and "--cpu-smoke" in out.stderr
