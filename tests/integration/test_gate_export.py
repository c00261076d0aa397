"""The promotion gate: a model that loses to its baseline is not exported; one that passes is exported in
transformers format, answers like lmcore, and lm-evaluation-harness scores it. Plus the gate's own rules."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.artifacts import Splits
from assets.evaluation.report import EvaluationConfig
from lmcore.eval.rouge import rouge_batch
from lmcore.eval.significance import SignificanceConfig
from lmcore.eval.table import (
    METRICS,
    ClassifierResults,
    MetricRow,
    ReportInputs,
    changes_since,
    gate_failures,
    metric_rows,
)
from lmcore.finetune.classify import METHODS
from lmcore.io import read_json
from pipelines.cli import main
from tests.integration.conftest import make_corpus, write_profile
from tests.integration.test_finetune_pipeline import TINY, _tasks

ROWS = [
    MetricRow(
        metric="perplexity (test)",
        model="model",
        value=90.0,
        baseline="n-gram",
        baseline_value=100.0,
        beats_baseline=True,
        improvement=10.0,
        low=4.0,
        high=16.0,
        p_value=0.001,
        items=30,
        rule="must_beat",
        passes=True,
    ),
    MetricRow(
        metric="ROUGE-L F",
        model="fine-tuned",
        value=0.07,
        baseline="base",
        baseline_value=0.06,
        beats_baseline=True,
        improvement=0.01,
        low=-0.01,
        high=0.03,
        p_value=0.3,
        items=20,
        rule="must_beat",
        passes=False,
    ),
    MetricRow(
        metric="accuracy",
        model="head",
        value=0.5,
        baseline="bag of words",
        baseline_value=0.52,
        beats_baseline=False,
        improvement=-0.02,
        low=-0.06,
        high=0.02,
        p_value=0.4,
        items=60,
        rule="must_not_lose",
        passes=True,
    ),
]


def test_the_gate_names_each_row_that_misses_its_rule():
    config = EvaluationConfig()
    assert config.must_beat is None and config.must_not_lose == []
    assert set(config.rules().values()) == {"must_beat"}, "by default every metric must beat its baseline"
    rules = EvaluationConfig(must_beat=["ROUGE-L F"], must_not_lose=["accuracy"]).rules()
    assert rules["ROUGE-L F"] == "must_beat" and rules["accuracy"] == "must_not_lose" and rules["macro-F1"] is None
    assert EvaluationConfig(must_not_lose=["accuracy"]).rules()["macro-F1"] == "must_beat", "None: all the others"
    failed = gate_failures(ROWS, None, [])
    assert failed == [
        "ROUGE-L F (must_beat): fine-tuned 0.07 vs base 0.06, improvement +0.0100 [-0.0100, +0.0300] "
        "p=0.3; needs the whole interval above 0"
    ]
    assert gate_failures(ROWS, ["perplexity (test)", "macro-F1"], [])[0] == (
        "macro-F1: not in the report (its inputs produced no such row)"
    )
    with pytest.raises(ValueError, match=r"unknown metric 'ROUGE-L'; valid: perplexity \(test\), .*macro-F1"):
        EvaluationConfig(must_beat=["ROUGE-L"])
    with pytest.raises(ValueError, match=r"unknown metric 'acc'"):
        EvaluationConfig(must_not_lose=["acc"])
    with pytest.raises(ValueError, match="'accuracy' in both must_beat and must_not_lose; give each metric one rule"):
        EvaluationConfig(must_beat=["accuracy"], must_not_lose=["accuracy"])
    with pytest.raises(ValueError, match=r"significance\n.*confidence must be in"):
        EvaluationConfig(significance={"confidence": 95})
    with pytest.raises(ValueError, match="must be >= 0"):
        EvaluationConfig(regression_tolerance=-0.1)
    with pytest.raises(ValueError, match=r"generation\n.*top_p must be in \(0, 1\]"):
        EvaluationConfig(generation={"top_p": 0.0})


def test_a_regression_is_measured_in_the_direction_of_each_metric():
    previous = {"perplexity (test)": 85.0, "ROUGE-L F": 0.05}
    changes = {c.metric: c for c in changes_since(ROWS, previous, tolerance=0.02)}
    assert changes["perplexity (test)"].regressed and changes["perplexity (test)"].worse_by == 0.0588
    assert not changes["ROUGE-L F"].regressed and changes["ROUGE-L F"].worse_by == -0.4, "better than before"
    assert not changes_since(ROWS, previous, tolerance=0.1)[0].regressed


def test_every_table_metric_has_a_direction_and_an_interval():
    docs = {
        "tokens": [100] * 30,
        "bytes": [330] * 30,
        "model_nats": [300.0 + i % 7 for i in range(30)],
        "ngram_nats": [340.0 + i % 5 for i in range(30)],
    }
    ppl = {
        "model": {"perplexity": 9.0, "bits_per_byte": 1.1},
        "ngram": {"perplexity": 10.0, "bits_per_byte": 1.2},
        "documents": docs,
    }
    refs = [f"the answer number {i} is here" for i in range(20)]
    gens = {"fine_tuned": [f"the answer number {i}" for i in range(20)], "base": ["nothing"] * 20}
    decoded = {
        "generations": gens,
        "rouge": {n: rouge_batch(g, refs) for n, g in gens.items()},
        "repetition": {"fine_tuned": {}, "base": {}},
    }
    rouge = {"generation": decoded, "greedy": decoded, "examples": 20, "decoding": {}, "samples": []}
    truth = ["a", "b"] * 30
    cls = {
        "labels": ["a", "b"],
        "head": {"accuracy": 0.9, "macro_f1": 0.9, "predictions": truth},
        "bow": {"accuracy": 0.5, "macro_f1": 0.5, "predictions": ["a"] * 60},
    }

    def inputs(cls):
        return ReportInputs(
            perplexity=ppl,
            answers=rouge,
            references=refs,
            classifiers=ClassifierResults.from_report(cls, METHODS),
            truth=truth,
        )

    rules = EvaluationConfig(must_not_lose=["ROUGE-1 F"]).rules()
    rows = metric_rows(inputs(cls), rules, SignificanceConfig())
    assert [r.metric for r in rows] == list(METRICS)
    assert all(r.beats_baseline and r.improvement > 0 for r in rows), "every model here is better"
    assert all(r.low > 0 and r.passes for r in rows), "and clearly so"
    assert {r.rule for r in rows} == {"must_beat", "must_not_lose"}
    with pytest.raises(ValueError, match="no per-example head predictions for the 60 labeled test texts"):
        metric_rows(inputs({**cls, "head": {"accuracy": 0.9, "macro_f1": 0.9}}), rules, SignificanceConfig())


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def _checks(instance: dg.DagsterInstance, run_id: str) -> dict[str, dg.AssetCheckEvaluation]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return {e.check_name: e for e in evaluations}


def _materialized(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {r.event_log_entry.asset_materialization.asset_key.to_user_string() for r in records}


def _latest_run(instance: dg.DagsterInstance) -> str:
    return instance.get_runs(limit=1)[0].run_id


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """The whole tiny graph with the default gate (must_beat null: every metric): the model loses."""
    tmp = tmp_path_factory.mktemp("gate")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LMPIPE_HOME", str(tmp / "home"))
        labels, sft = _tasks(tmp)
        assets = {**TINY, "evaluation_report": {**TINY["evaluation_report"], "must_beat": None}}
        profile = write_profile(
            tmp / "p.yaml",
            [str(make_corpus(tmp / "corpus"))],
            **assets,
            labeled_data=labels,
            sft_dataset={"records": [sft], "holdout_fraction": 0.4, "pack": True},
        )
        code = main(["run", "--config", str(profile)])
        instance = _instance(tmp / "home")
        yield {
            "tmp": tmp,
            "home": tmp / "home",
            "profile": profile,
            "code": code,
            "instance": instance,
            "run_id": _latest_run(instance),
        }


@pytest.fixture(scope="module")
def promoted(gated):
    """The same home, evaluated again with an empty must_beat: the gate passes and the models are exported."""
    sets = ["--set", "evaluation_report.must_beat=[]"]
    code = main(["run", "--config", str(gated["profile"]), "--select", "evaluation_report+", *sets])
    return {**gated, "code": code, "run_id": _latest_run(gated["instance"])}


def test_a_model_that_loses_to_its_baseline_is_not_exported(gated, capsys):
    report = read_json(gated["home"] / "reports" / "evaluation.json")
    perplexity = next(r for r in report["table"] if r["metric"] == "perplexity (test)")
    assert not perplexity["beats_baseline"], "precondition: 8 training steps do not beat a Kneser-Ney trigram"
    assert perplexity["high"] < 0 and perplexity["rule"] == "must_beat" and not perplexity["passes"]
    assert gated["code"] == 1, "a failed blocking check fails the run"
    checks = _checks(gated["instance"], gated["run_id"])
    gate = checks["evaluation_beats_baselines"]
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    assert any(m.startswith("perplexity (test) (must_beat): model") for m in gate.metadata["failed"].value)
    assert "evaluation_report.must_beat / must_not_lose" in gate.description
    assert checks["evaluation_no_regression"].passed, "the first evaluation has nothing to regress from"
    done = _materialized(gated["instance"], gated["run_id"])
    assert "evaluation_report" in done and "hf_export" not in done
    assert gated["instance"].get_latest_materialization_event(dg.AssetKey("hf_export")) is None


def test_a_passing_gate_exports_an_sft_model_that_answers_like_lmcore(promoted):
    transformers = pytest.importorskip("transformers")
    import torch

    from lmcore.finetune.sft import chat_generate
    from lmcore.model.checkpoint import load_trained_model
    from lmcore.model.generate import greedy

    assert promoted["code"] == 0
    instance = promoted["instance"]
    assert _checks(instance, promoted["run_id"])["evaluation_beats_baselines"].passed
    assert "hf_export" in _materialized(instance, promoted["run_id"])
    meta = instance.get_latest_materialization_event(dg.AssetKey("hf_export")).asset_materialization.metadata
    sft_dir = Path(meta["sft_dir"].value)
    assert json.loads((sft_dir / "generation_config.json").read_text())["eos_token_id"] == 3  # <|im_end|>
    assert json.loads((Path(meta["pretrained_dir"].value) / "generation_config.json").read_text())["eos_token_id"] == 0
    from huggingface_hub import ModelCard

    for folder, rated in ((Path(meta["pretrained_dir"].value), "perplexity (test)"), (sft_dir, "ROUGE-L F")):
        card = ModelCard.load(folder / "README.md")  # each export's model card, as the Hub reads it
        assert card.data.license == "other" and rated in {r.metric_name for r in card.data.eval_results}
        assert "## Contamination" in card.text and "none: trained from scratch" in card.text

    sft_path = instance.get_latest_materialization_event(dg.AssetKey("sft_model")).asset_materialization
    model, ckpt_meta = load_trained_model(sft_path.metadata["artifact_path"].value)
    from lmcore.data.tokenizer import load_tokenizer

    tok = load_tokenizer(ckpt_meta["tokenizer_path"])
    messages = [{"role": "user", "content": "Say hello"}]
    ours = chat_generate(model, tok, messages, greedy(), max_new_tokens=12)
    hf_tok = transformers.AutoTokenizer.from_pretrained(sft_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = hf_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    new = gen[0, ids.size(1) :].tolist()
    new = new[:-1] if new[-1] == tok.im_end_id else new  # lmcore's reply leaves out the stop id
    assert hf_tok.decode(new, skip_special_tokens=False) == ours


def test_a_regression_warns_but_does_not_block_the_export(promoted):
    instance = promoted["instance"]
    latest = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report")).asset_materialization
    new = latest.metadata["perplexity (test)"].value
    # a previously published evaluation with a far better perplexity than the one about to be made
    instance.report_runless_asset_event(
        dg.AssetMaterialization("evaluation_report", metadata={"perplexity (test)": new / 2})
    )
    sets = ["--set", "evaluation_report.must_beat=[]"]
    assert main(["run", "--config", str(promoted["profile"]), "--select", "evaluation_report+", *sets]) == 0
    run_id = _latest_run(instance)
    check = _checks(instance, run_id)["evaluation_no_regression"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "perplexity (test)" in check.description
    assert check.metadata["perplexity (test) (previous)"].value == new / 2
    assert check.metadata["perplexity (test)"].value == new
    assert "hf_export" in _materialized(instance, run_id)


def test_lm_evaluation_harness_scores_the_export_offline(promoted, tmp_path):
    pytest.importorskip("lm_eval")
    instance = promoted["instance"]
    meta = instance.get_latest_materialization_event(dg.AssetKey("hf_export")).asset_materialization.metadata
    splits = instance.get_latest_materialization_event(dg.AssetKey("splits")).asset_materialization
    path = Path(splits.metadata["artifact_path"].value)
    texts = list(Splits(location=str(path), data_version="", path=path).texts("test"))
    assert texts
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "task.yaml").write_text(
        "task: lmpipe_test_split\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        'test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    offline = {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={meta['sft_dir'].value}",
        "--tasks",
        "lmpipe_test_split",
        "--include_path",
        str(tmp_path),
        "--device",
        "cpu",
        "--batch_size",
        "1",
        "--output_path",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(cmd, env={**os.environ, **offline}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    bpb = results["lmpipe_test_split"]["bits_per_byte,none"]
    assert math.isfinite(bpb) and 0 < bpb < 16
