"""sft_model and classifier_report with two processes each: torchrun (gloo) through the launcher resource and Pipes.

Every rank trains on its share of the examples; rank 0 alone reports the summary, and for the classifiers
scores the test split once every training run is done (ranks never wait on each other there).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets.launch import SubprocessLauncher
from lmcore.io import read_json
from lmcore.model.checkpoint import read_meta
from lmcore.train.launch import LaunchConfig
from pipelines.cli import main
from tests.integration.conftest import write_profile
from tests.integration.test_finetune_pipeline import TINY, _tasks

TWO = {"launch": {"nproc_per_node": 2}}


def _materialization(home: Path, asset: str) -> dg.AssetMaterialization:
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization


def test_sft_and_the_classifiers_train_under_torchrun(home, tmp_path, corpus_dir):
    labels, sft = _tasks(tmp_path)
    assets = {
        **TINY,
        "sft_model": {**TINY["sft_model"], **TWO},
        "classifier_report": {**TINY["classifier_report"], **TWO},
    }
    profile = write_profile(
        tmp_path / "p.yaml",
        [str(corpus_dir)],
        **assets,
        labeled_data=labels,
        sft_dataset={"records": [sft], "holdout_fraction": 0.4},
    )
    selection = "group:data or key:pretrained_model or key:sft_dataset or key:labeled_data or key:sft_model"
    assert main(["run", "--config", str(profile), "--select", f"{selection} or key:classifier_report"]) == 0

    sft_model = _materialization(home, "sft_model").metadata
    assert sft_model["world_size"].value == 2 and sft_model["steps"].value == 4
    assert read_meta(Path(sft_model["artifact_path"].value))["config"]["world_size"] == 2

    classifiers = _materialization(home, "classifier_report").metadata
    assert classifiers["world_size"].value == 2
    report = read_json(Path(classifiers["artifact_path"].value) / "manifest.json")
    test_texts = classifiers["test_examples"].value
    for method in ("label_lm", "head", "bow"):
        assert 0 <= report[method]["accuracy"] <= 1 and len(report[method]["predictions"]) == test_texts
    for method in ("label_lm", "head"):
        assert report[method]["train"]["world_size"] == 2 and report[method]["train"]["step"] == 4


def test_the_local_launcher_says_several_machines_need_a_cluster_launcher():
    two_nodes = LaunchConfig(nnodes=2, rdzv_endpoint="127.0.0.1:29500")
    with pytest.raises(ValueError, match="nnodes=2: the local launcher .* register a cluster launcher"):
        SubprocessLauncher().launch(dg.build_asset_context(), two_nodes, ["-m", "assets.worker"])
