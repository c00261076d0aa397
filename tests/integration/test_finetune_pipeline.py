"""The whole graph once, raw corpus to evaluation report, with tiny settings; and bad label/SFT files."""

from __future__ import annotations

import json

from lmcore.io import read_json
from pipelines.cli import main
from tests.integration.conftest import write_profile

TINY = {
    "pretrained_model": {"preset": "tiny", "model": {"context_length": 64},
                         "train": {"max_steps": 8, "batch_size": 4, "warmup_steps": 1, "eval_every": 4,
                                   "eval_batches": 1, "checkpoint_every": 8}},
    "sft_model": {"train": {"max_steps": 4, "batch_size": 2, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
                            "checkpoint_every": 4},
                  "lora": {"rank": 2}},
    "classifier_report": {"label_lm": {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1},
                          "head": {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1}},
    "evaluation_report": {"rouge_examples": 2, "max_new_tokens": 8},
}  # fmt: skip


def _labels(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _tasks(tmp_path):
    words = {"joy": "happy glad smile", "anger": "angry mad furious", "fear": "scared afraid dark"}
    rows = [{"text": f"i feel {w.split()[i % 3]} today number {i}", "label": label}
            for label, w in words.items() for i in range(12)]  # fmt: skip
    words = ("hello", "yes", "blue", "cat", "tree", "river", "stone", "cloud", "lamp", "road", "bird", "door")
    sft = [{"instruction": f"Say {w}", "input": "", "output": f"{w} indeed"} for w in words]
    sft += [{"instruction": "broken record"}, {"instruction": "", "output": "no instruction"}]
    paths = {n: _labels(tmp_path / f"{n}.jsonl", rows) for n in ("train", "validation", "test")}
    return paths, _labels(tmp_path / "sft.jsonl", sft)


def test_raw_corpus_to_evaluation_report(home, tmp_path, corpus_dir, capsys):
    labels, sft = _tasks(tmp_path)
    profile = write_profile(
        tmp_path / "p.yaml", [str(corpus_dir)], **TINY, labeled_data=labels,
        sft_dataset={"records": [sft], "holdout_fraction": 0.4, "pack": True},
    )  # fmt: skip
    assert main(["run", "--config", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "evaluation report" in out and "ROUGE-L F" in out and "bag of words" in out
    report = read_json(home / "reports" / "evaluation.json")
    for key in ("perplexity", "bits_per_byte", "rouge", "classification"):
        assert "model" in report[key] and "baseline" in report[key]
    assert set(report["classification"]["all"]) == {"label_lm", "head", "bow"}
    assert (home / "reports" / "evaluation.md").read_text().startswith("# Evaluation")


def test_bad_label_file_names_the_file_and_line(home, tmp_path, corpus_dir, capsys):
    labels, _ = _tasks(tmp_path)
    with open(labels["train"], "a") as f:
        f.write('{"text": "no label here"}\n{not json\n')
    empty = _labels(tmp_path / "empty.jsonl", [])
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], labeled_data={**labels, "test": empty})
    assert main(["run", "--config", str(profile), "--select", "group:data or key:labeled_data"]) == 1
    assert "empty.jsonl" in capsys.readouterr().out
