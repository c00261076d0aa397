"""The whole chain from a published model: ``base_model.source: hf:<directory>`` adopts its tokenizer (ChatML tokens
added), continues its pretraining (or, with ``max_steps: 0``, keeps its weights), and SFT, the classifiers, the
evaluation, the gate and ``hf_export`` run on top unchanged; the lineage names the source and its weights' digest."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import torch

from assets.artifacts import Checkpoint, TokenizerFile
from lmcore.io import read_json
from pipelines.cli import main
from tests.hub_models import save_gpt2
from tests.integration.conftest import make_corpus, write_profile
from tests.integration.test_finetune_pipeline import TINY, _tasks

transformers = pytest.importorskip("transformers")
TRAIN = {**TINY["pretrained_model"]["train"], "max_steps": 4, "checkpoint_every": 4}


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def _meta(instance: dg.DagsterInstance, asset: str) -> dict:
    return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata


def _path(instance: dg.DagsterInstance, asset: str) -> Path:
    return Path(_meta(instance, asset)["artifact_path"].value)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LMPIPE_HOME", str(tmp / "home"))
        src = save_gpt2(tmp / "published-gpt2")
        labels, sft = _tasks(tmp)
        profile = write_profile(
            tmp / "p.yaml",
            [str(make_corpus(tmp / "corpus"))],
            **{k: v for k, v in TINY.items() if k not in ("pretrained_model", "evaluation_report")},
            base_model={"source": f"hf:{src}"},
            pretrained_model={"train": TRAIN},
            labeled_data=labels,
            sft_dataset={"records": [sft], "holdout_fraction": 0.4, "pack": True},
            evaluation_report={**TINY["evaluation_report"], "must_beat": []},
        )
        code = main(["run", "--config", str(profile)])
        yield {"code": code, "home": tmp / "home", "src": src, "profile": profile, "instance": _instance(tmp / "home")}


def test_the_chain_runs_on_a_published_model_and_records_its_lineage(chain):
    assert chain["code"] == 0
    instance = chain["instance"]
    tok = read_json(_path(instance, "tokenizer") / "manifest.json")
    digest = _meta(instance, "base_model")["weights_sha256"].value
    assert tok["adopted_from"] == {
        "source": f"hf:{chain['src']}",
        "revision": None,
        "weights_sha256": digest,
        "added_tokens": ["<|pad|>", "<|im_start|>", "<|im_end|>"],
    }
    assert (
        tok["vocab_size"] == 403 and read_json(_path(instance, "token_shards") / "manifest.json")["vocab_size"] == 403
    )
    pretrained = _meta(instance, "pretrained_model")
    assert pretrained["started_from"].value.startswith(f"hf:{chain['src']} (weights sha256 {digest[:16]}")
    meta = read_json(_path(instance, "pretrained_model") / "meta.json")
    assert meta["base_model"] == {"source": f"hf:{chain['src']}", "revision": None, "weights_sha256": digest}
    assert meta["config"]["model"]["vocab_size"] == 403 and meta["step"] == 4
    for asset in ("sft_model", "classifier_report", "evaluation_report", "hf_export"):
        assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
    exported = Path(_meta(instance, "hf_export")["sft_dir"].value)
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported)
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.vocab_size == 403
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert (
        hf_tok.convert_tokens_to_ids("<|im_end|>")
        == 402
        == json.loads((exported / "config.json").read_text())["eos_token_id"]
    )


def test_max_steps_0_keeps_the_published_weights(chain):
    sets = ["--set", "pretrained_model.train.max_steps=0", "--set", "pretrained_model.train.warmup_steps=0"]
    assert main(["run", "--config", str(chain["profile"]), "--select", "pretrained_model", *sets]) == 0
    instance = chain["instance"]
    model = Checkpoint(location="", data_version="", path=_path(instance, "pretrained_model")).load()
    hf = transformers.AutoModelForCausalLM.from_pretrained(chain["src"], attn_implementation="eager").eval()
    idx = torch.randint(0, 400, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(idx).logits - model(idx)[0][..., :400]).abs().max().item()
    assert diff < 1e-5
    assert read_json(_path(instance, "pretrained_model") / "meta.json")["step"] == 0
    metrics = _path(instance, "pretrained_model").parent / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records and records[0]["step"] == 0 and records[0]["val_loss"] > 0, "the kept weights are evaluated"
    tokenizer = TokenizerFile(location="", data_version="", path=_path(instance, "tokenizer"))
    assert tokenizer.tokenizer.im_end_id == 402
