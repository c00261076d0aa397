"""The whole graph once, raw corpus to evaluation report, with tiny settings (and a planted contamination of the
labeled test set, which the blocking check catches); and bad label/SFT files."""

from __future__ import annotations

import dataclasses
import io
import json
import sys

import dagster as dg

from lmcore.io import read_json
from lmcore.model.generate import GenerationConfig
from pipelines.cli import main
from tests.integration.conftest import write_profile

TINY = {
    "pretrained_model": {
        "preset": "tiny",
        "model": {"context_length": 64},
        "train": {
            "max_steps": 8,
            "batch_size": 4,
            "warmup_steps": 1,
            "eval_every": 4,
            "eval_batches": 1,
            "checkpoint_every": 8,
        },
    },
    "sft_model": {
        "train": {
            "max_steps": 4,
            "batch_size": 2,
            "warmup_steps": 1,
            "eval_every": 2,
            "eval_batches": 1,
            "checkpoint_every": 4,
        },
        "lora": {"rank": 2},
    },
    "classifier_report": {
        "label_lm": {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1},
        "head": {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1},
    },
    "evaluation_report": {"rouge_examples": 2, "max_new_tokens": 8},
}


def _labels(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _tasks(tmp_path):
    """Labeled train/validation/test files (the same words, different texts: no test text is a train text) and SFT."""
    words = {"joy": "happy glad smile", "anger": "angry mad furious", "fear": "scared afraid dark"}
    paths = {}
    for offset, name in enumerate(("train", "validation", "test")):
        rows = [
            {"text": f"i feel {w.split()[i % 3]} today number {100 * offset + i}", "label": label}
            for label, w in words.items()
            for i in range(12)
        ]
        paths[name] = _labels(tmp_path / f"{name}.jsonl", rows)
    words = ("hello", "yes", "blue", "cat", "tree", "river", "stone", "cloud", "lamp", "road", "bird", "door")
    sft = [{"instruction": f"Say {w}", "input": "", "output": f"{w} indeed"} for w in words]
    sft += [{"instruction": "broken record"}, {"instruction": "", "output": "no instruction"}]
    return paths, _labels(tmp_path / "sft.jsonl", sft)


def _plant(labels: dict[str, str], corpus_dir) -> str:
    """Copy a long labeled train text and every corpus document (some are pretraining train documents) into test."""
    copied = "i feel happy today because the long walk by the river with my old friends was wonderful again"
    with open(labels["train"], "a") as f:
        f.write(json.dumps({"text": copied, "label": "joy"}) + "\n")
    docs = [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]
    with open(labels["test"], "a") as f:
        f.writelines(json.dumps({"text": t, "label": "joy"}) + "\n" for t in [copied, *docs])
    return copied


def _check(home, name: str) -> dg.AssetCheckEvaluation:
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    run_id = instance.get_runs(limit=1)[0].run_id
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return next(e for e in evaluations if e.check_name == name)


def test_raw_corpus_to_evaluation_report(home, tmp_path, corpus_dir, capsys, monkeypatch):
    labels, sft = _tasks(tmp_path)
    copied = _plant(labels, corpus_dir)
    profile = write_profile(
        tmp_path / "p.yaml",
        [str(corpus_dir)],
        **TINY,
        labeled_data=labels,
        sft_dataset={"records": [sft], "holdout_fraction": 0.4, "pack": True},
    )
    assert main(["run", "--config", str(profile)]) == 1, "the planted contamination fails the blocking check"
    contamination = read_json(home / "reports" / "evaluation.json")["contamination"]
    labeled = contamination["sets"]["labeled_test"]
    assert labeled["contaminated"] >= 2 and labeled["fraction"] > contamination["threshold"] == 0.05
    listed = {x["source"]: x for x in labeled["listed"]}
    assert listed["labeled_train"]["text"] == copied and len(listed["labeled_train"]["ngram"].split()) == 13
    assert "pretraining_train" in listed, "a corpus document of the train split is found in the train token shards"
    others = contamination["sets"]
    assert others["test_split"]["fraction"] == 0.0 and others["sft_heldout"]["fraction"] == 0.0
    clean = labeled["clean"]
    assert clean["examples"] == labeled["examples"] - labeled["contaminated"] >= 36  # the genuine test texts are clean
    assert 0 <= clean["model"]["accuracy"] <= 1 and clean["baseline"]["method"] == "bow"
    test_split = contamination["sets"]["test_split"]["clean"]
    assert test_split["documents"] > 0 and test_split["perplexity"]["model"] > 1
    check = _check(home, "evaluation_uncontaminated")
    assert not check.passed and check.metadata["over_threshold"].value == {"labeled_test": labeled["fraction"]}
    assert "labeled_test" in check.description and "threshold 0.05" in check.description

    # a high threshold passes; must_beat=[]: the tiny model loses to its baselines, which the promotion gate checks
    sets = [
        "--set",
        "evaluation_report.contamination.threshold=1.0",
        "--set",
        "evaluation_report.must_beat=[]",
        "--set",
        "evaluation_report.generation.top_k=5",
    ]
    assert main(["run", "--config", str(profile), "--select", "evaluation_report", *sets]) == 0
    assert _check(home, "evaluation_uncontaminated").passed
    out = capsys.readouterr().out
    assert "evaluation report" in out and "ROUGE-L F" in out and "bag of words" in out
    report = read_json(home / "reports" / "evaluation.json")
    for key in ("perplexity", "bits_per_byte", "rouge", "classification"):
        assert "model" in report[key] and "baseline" in report[key]
    assert set(report["classification"]["all"]) == {"label_lm", "head", "bow"}
    markdown = (home / "reports" / "evaluation.md").read_text()
    assert markdown.startswith("# Evaluation")

    # answers decoded as the profile says, and greedily beside them, each with its repetition figures
    rouge = report["rouge"]
    assert rouge["decoding"] == dataclasses.asdict(GenerationConfig(top_k=5)), "the defaults, with the --set"
    assert set(rouge["greedy"]) == {"model", "baseline", "repetition"} and "rougeL" in rouge["greedy"]["model"]
    assert set(rouge["repetition"]["baseline"]) >= {"distinct_2", "repeated_line_share"}
    assert {"ROUGE-L F", "ROUGE-L F (greedy)", "ROUGE-1 F (greedy)"} <= {r["metric"] for r in report["table"]}
    assert "## Generation" in markdown and "top_k 5" in markdown and "| greedy | base |" in markdown
    assert "base (greedy)" in report["samples"][0] and "answers decoded with temperature=0.0 " in out

    # the latest sft_model, from the store: a chat turn, and its export ends at <|im_end|>
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert main(["chat", "--max-new-tokens", "4"]) == 0
    assert main(["export", str(tmp_path / "sft"), "--model", "sft"]) == 0
    assert json.loads((tmp_path / "sft" / "generation_config.json").read_text())["eos_token_id"] == 3


def test_bad_label_file_names_the_file_and_line(home, tmp_path, corpus_dir, capsys):
    labels, _ = _tasks(tmp_path)
    with open(labels["train"], "a") as f:
        f.write('{"text": "no label here"}\n{not json\n')
    empty = _labels(tmp_path / "empty.jsonl", [])
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], labeled_data={**labels, "test": empty})
    assert main(["run", "--config", str(profile), "--select", "group:data or key:labeled_data"]) == 1
    assert "empty.jsonl" in capsys.readouterr().out
