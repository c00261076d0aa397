"""The pretrain group through the CLI: in-process and torchrun (2 gloo processes via Pipes)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmcore.io import read_json
from pipelines.cli import main
from tests.integration.conftest import write_profile

TRAIN = {"max_steps": 12, "batch_size": 4, "warmup_steps": 2, "eval_every": 6, "eval_batches": 2, "checkpoint_every": 6}
TINY = {"preset": "tiny", "model": {"context_length": 32}, "train": TRAIN}


def _materialization(home, asset):
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization


def test_whole_graph_trains_and_reports_perplexity_against_the_ngram(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=TINY)
    assert main(["run", "--config", str(profile), "--select", "group:data or group:pretrain"]) == 0
    mat = _materialization(home, "pretrained_model")
    assert mat.metadata["steps"].value == 12 and mat.metadata["world_size"].value == 1
    assert mat.metadata["tokens_seen"].value == 12 * 4 * 32
    assert "image/png;base64" in mat.metadata["loss_curve"].value
    # the default tracker: TensorBoard events in the run's directory, one loss point per logged step
    run_dir = mat.metadata["run_dir"].value
    accumulator = EventAccumulator(str(Path(run_dir) / "tensorboard")).Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == [10, 12]
    assert {"train/lr", "train/grad_norm", "perf/tokens_per_s", "val/loss"} <= set(accumulator.Tags()["scalars"])
    report = read_json(home / "reports" / "perplexity.json")
    for split in ("val", "test"):
        model, ngram = report["splits"][split]["model"], report["splits"][split]["ngram"]
        assert model["tokens"] == ngram["tokens"] > 0  # same targets, so comparable
        assert model["bits_per_byte"] > 0 and ngram["bits_per_byte"] > 0
        rnn = report["splits"][split]["rnn"]  # the RNN baseline, on by default, on the same targets
        assert rnn["tokens"] == model["tokens"] and rnn["bits_per_byte"] > 0
    assert "perplexity_report" in capsys.readouterr().out

    # The CLI samples from and exports the latest model.
    assert main(["generate", "--prompt", "The ", "--max-new-tokens", "8", "--seed", "1", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("The ")
    assert main(["generate", "--prompt", "The ", "--no-repeat-ngram-size", "2", "--top-k", "none"]) == 0
    assert capsys.readouterr().out.startswith("The ")
    assert main(["generate", "--prompt", "The ", "--temperature", "1", "--top-p", "0"]) == 2  # named, nothing runs
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists() and (tmp_path / "hf" / "model.safetensors").exists()

    # Materializing again with the same config resumes the finished run: no new training steps.
    assert main(["run", "--config", str(profile), "--select", "pretrained_model"]) == 0
    again = _materialization(home, "pretrained_model")
    assert again.metadata["resumed_from"].value == "12"  # the step it resumed from: nothing left to train
    assert again.metadata["checkpoint_sha256"].value == mat.metadata["checkpoint_sha256"].value


def test_generate_without_a_model_says_what_to_run(home, capsys):
    assert main(["generate", "--prompt", "x"]) == 2
    assert "lmpipe run" in capsys.readouterr().err


def test_two_process_torchrun_through_pipes(home, tmp_path, corpus_dir):
    profile = write_profile(
        tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model={**TINY, "launch": {"nproc_per_node": 2}}
    )
    assert main(["run", "--config", str(profile), "--select", "group:data or key:pretrained_model"]) == 0
    mat = _materialization(home, "pretrained_model")
    assert mat.metadata["world_size"].value == 2
    assert mat.metadata["tokens_seen"].value == 12 * 4 * 32 * 2
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    run = instance.get_runs(limit=1)[0]
    logs = [e.user_message for e in instance.all_logs(run.run_id) if e.user_message]
    assert any('"step": 12' in m for m in logs), "rank 0's metrics should stream into the run log"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model": {"context_length": 32, "n_head": 3}}, "n_head"),
        ({"preset": "huge"}, "preset='huge'"),
        ({"train": {**TRAIN, "warmup_steps": 50}}, "warmup_steps"),
        ({"launch": {"nproc_per_node": 0}}, "nproc_per_node"),
        ({"launch": {"nnodes": 2}}, "rdzv_endpoint"),
        ({"train": {**TRAIN, "weight_decay": -1.0}}, "weight_decay"),
        ({"train": {**TRAIN, "betas": [0.9, 1.5]}}, "betas"),
    ],
)
def test_bad_training_config_fails_before_the_run_with_the_field_named(
    home, tmp_path, corpus_dir, capsys, overrides, message
):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model={**TINY, **overrides})
    assert main(["run", "--config", str(profile)]) == 2
    assert message in capsys.readouterr().out
