"""variants_report through the CLI: each variant trains on the shards and lands in one table beside the n-gram,
RNN and transformer rows, with the expert utilization plot; optional, so profiles that do not configure it
leave it out of ``lmpipe run`` and of the jobs."""

from __future__ import annotations

import dagster as dg

from lmcore.io import read_json
from pipelines.cli import main
from pipelines.definitions import build_definitions, left_out
from pipelines.profile import load_profile
from tests.integration.conftest import write_profile
from tests.integration.test_finetune_pipeline import TINY

RUN = {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1, "checkpoint_every": 4}


def test_variants_train_and_report_beside_the_baselines(home, tmp_path, corpus_dir, capsys):
    variants = {
        "preset": "tiny",
        "model": {"context_length": 64},
        "train": RUN,
        "pseudo_perplexity_rows": 1,
        "variants": ["dense", "moe_token", "moe_expert", "span", "masked"],
    }
    profile = write_profile(
        tmp_path / "p.yaml",
        [str(corpus_dir)],
        pretrained_model=TINY["pretrained_model"],
        perplexity_report={"rnn": {"steps": 5}},
        variants_report=variants,
    )
    assert main(["run", "--config", str(profile), "--select", "*variants_report"]) == 0
    out = capsys.readouterr().out
    assert "variants_report: moe_token train steps 4/4" in out  # progress per variant
    report = read_json(home / "reports" / "variants.json")
    figures = report["variants"]
    assert sorted(figures) == sorted(variants["variants"])
    assert figures["moe_token"]["active_params"] < figures["moe_token"]["params"]
    assert 0 <= figures["masked"]["masked_accuracy"] <= 1 and figures["masked"]["pseudo_perplexity"] > 1
    assert {"ngram", "rnn", "model"} <= set(report["reference"])
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    meta = instance.get_latest_materialization_event(dg.AssetKey("variants_report")).asset_materialization.metadata
    rows = [r.data["model"] for r in meta["report"].value.records]
    assert rows == ["3-gram", "rnn", "pretrained_model", *variants["variants"]]
    assert "expert_utilization" in meta and "moe_expert_minus_dense_val_loss" in meta
    assert meta["masked_accuracy"].value == round(figures["masked"]["masked_accuracy"], 4)


def test_an_optional_asset_runs_only_where_a_profile_configures_it():
    demo, seeds = load_profile("demo"), load_profile("seeds")
    assert left_out(demo) == ["variants_report"] and left_out(seeds) == []
    for profile, included in ((demo, False), (seeds, True)):
        defs = build_definitions(profile)
        for job in ("full_pipeline", "retrain", "pretrain"):
            keys = defs.resolve_job_def(job).asset_layer.executable_asset_keys
            assert (dg.AssetKey("variants_report") in keys) is included, (profile.name, job)
