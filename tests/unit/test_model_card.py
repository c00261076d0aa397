"""The model card: built from a real evaluation report and a real checkpoint's meta.json, written as README.md and
read back by huggingface_hub's ModelCard (metadata, model-index results, the figures next to their baselines, the
contamination figures, the lineage and the training config)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from lmcore.eval.contamination import ContaminationConfig
from lmcore.eval.repetition import repetition_figures
from lmcore.eval.report import EvaluationSets, ReportSettings, build_report
from lmcore.eval.rouge import rouge_batch
from lmcore.eval.table import ClassifierResults, ReportInputs
from lmcore.finetune.classify import METHODS
from lmcore.io import read_json
from lmcore.model.card import CARD_FILE, CardConfig, CardInputs, Lineage, model_card
from lmcore.model.generate import GenerationConfig
from lmcore.model.gpt import tiny
from lmcore.train.loop import train
from tests.unit.test_train import config, write_synthetic_shards

BASE = {
    "source": "hf:openai-community/gpt2",
    "revision": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
    "weights_sha256": "c" * 64,
}
WORDS = "cat mat dog log sun rain hill river stone tree bird fish house road lamp door".split()
_RNG = random.Random(0)
DOCS = [" ".join(_RNG.choice(WORDS) for _ in range(24)) for _ in range(30)]
"""Thirty test documents of random words: no two share an 8-gram."""


@pytest.fixture(scope="module")
def evaluation() -> dict:
    """A real evaluation report (lmcore.eval.report.build_report) on small, made-up figures, as evaluation.json."""
    docs = {
        "tokens": [100] * 30,
        "bytes": [330] * 30,
        "model_nats": [300.0 + i % 7 for i in range(30)],
        "ngram_nats": [340.0 + i % 5 for i in range(30)],
    }
    ppl = {"model": {"perplexity": 20.1, "bits_per_byte": 1.31}, "ngram": {"perplexity": 29.9, "bits_per_byte": 1.48}}
    refs = [f"the answer number {i} is here" for i in range(20)]
    gens = {"fine_tuned": [f"the answer number {i}" for i in range(20)], "base": ["nothing at all"] * 20}
    decoded = {
        "generations": gens,
        "rouge": {n: rouge_batch(g, refs) for n, g in gens.items()},
        "repetition": {n: repetition_figures(g) for n, g in gens.items()},
    }
    decoding = dataclasses.asdict(GenerationConfig())
    answers = {"generation": decoded, "greedy": decoded, "examples": 20, "decoding": decoding, "samples": []}
    truth = ["a", "b"] * 30
    classifiers = {
        "labels": ["a", "b"],
        "head": {"accuracy": 0.9, "macro_f1": 0.9, "predictions": truth},
        "bow": {"accuracy": 0.5, "macro_f1": 0.5, "predictions": ["a"] * 60},
    }
    inputs = ReportInputs(
        perplexity={**ppl, "documents": docs},
        answers=answers,
        references=refs,
        classifiers=ClassifierResults.from_report(classifiers, METHODS),
        truth=truth,
    )
    sets = EvaluationSets(
        test_docs=DOCS,
        heldout=[f"user: question {i}\nassistant: {r}" for i, r in enumerate(refs)],
        labeled_test=[f"text {i}" for i in range(60)],
        pretraining_train=iter(DOCS[:3]),  # three test documents leaked into the training data
        sft_train=iter(["user: hello\nassistant: hi"]),
        labeled_train=["other text"],
    )
    settings = ReportSettings(contamination=ContaminationConfig(n=8, min_words=8), max_new_tokens=32)
    return json.loads(json.dumps(build_report(inputs, sets, settings).to_json()))  # as published


@pytest.fixture(scope="module")
def metas(tmp_path_factory) -> tuple[dict, dict]:
    """The meta.json of a real (2-step) pretraining run started from a hub model, and of an SFT-like run from it."""
    root = tmp_path_factory.mktemp("runs")
    shards = write_synthetic_shards(root / "shards")
    model = tiny(vocab_size=64, context_length=32)
    extra = {"tokenizer_sha256": "a" * 64, "data_versions": {"token_shards": "d" * 64, "tokenizer": "e" * 64}}
    done = train(model, config(max_steps=2, checkpoint_every=2), shards, root / "pre", meta_extra=extra)
    pretrained = read_json(Path(done.checkpoint) / "meta.json") | {"base_model": BASE}
    sft = {
        "config": {"model": pretrained["config"]["model"], "train": {"lr": 1e-4, "max_steps": 30}},
        "tokenizer_sha256": "a" * 64,
        "data": {"init_sha256": "f" * 64, "examples_sha256": "9" * 64},
    }
    return pretrained, sft


def card_at(tmp_path: Path, inputs: CardInputs, cfg: CardConfig | None = None) -> ModelCard:
    path = tmp_path / CARD_FILE
    path.write_text(model_card(inputs, cfg or CardConfig()), encoding="utf-8")
    return ModelCard.load(path)


def inputs(model: str, evaluation: dict, lineage: Lineage, training: dict) -> CardInputs:
    return CardInputs(
        model=model,
        name=f"lmpipe-{model}",
        architecture="llama",
        evaluation=evaluation,
        evaluation_version="7" * 64,
        lineage=lineage,
        training_config=training,
    )


def test_pretrained_card_loads_with_metadata_figures_contamination_lineage_and_config(
    tmp_path, monkeypatch, evaluation, metas
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pretrained, _ = metas
    lineage = Lineage.of(pretrained)
    card = card_at(
        tmp_path,
        inputs("pretrained", evaluation, lineage, pretrained["config"]),
        CardConfig(license="apache-2.0", tags=("demo",)),
    )
    data = card.data
    assert data.license == "apache-2.0" and data.base_model == "openai-community/gpt2"
    assert data.tags == ["lmpipe", "text-generation", "llama", "demo"] and data.pipeline_tag == "text-generation"
    assert data.model_name == "lmpipe-pretrained"
    rows = {r["metric"]: r for r in evaluation["table"]}
    results = {r.metric_name: r for r in data.eval_results}
    assert set(results) == {"perplexity (test)", "bits per byte (test)"}, "the rows that rate the pretrained model"
    assert results["perplexity (test)"].metric_value == rows["perplexity (test)"]["value"]
    assert (
        results["perplexity (test)"].metric_type == "perplexity"
        and results["perplexity (test)"].dataset_split == "test"
    )

    text = card.text
    ppl = rows["perplexity (test)"]
    assert (
        f"| perplexity (test) | **this model** (model) | {ppl['value']:.4f} | n-gram | {ppl['baseline_value']:.4f} |"
        in text
    )
    acc = rows["accuracy"]
    assert f"| accuracy | head | {acc['value']:.4f} | bag of words | {acc['baseline_value']:.4f} |" in text
    assert f"p={ppl['p_value']:.3g}" in text and "must_beat: passes" in text
    leak = evaluation["contamination"]["sets"]["test_split"]
    assert leak["contaminated"] == 3, "precondition: three test documents are in the training data"
    assert f"| test_split | pretraining_train | 30 | 3 | {leak['fraction']:.4f} | perplexity " in text
    assert "`" + "d" * 64 + "`" in text and "`" + "a" * 64 + "`" in text, "corpus version and tokenizer digest"
    assert f"`hf:openai-community/gpt2` at revision {BASE['revision']}, weights sha256 `{'c' * 64}`" in text
    config_json = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(config_json) == json.loads(json.dumps(pretrained["config"])), "the whole training config"


def test_sft_card_and_cards_without_a_hub_base_model(tmp_path, monkeypatch, evaluation, metas):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pretrained, sft = metas
    card = card_at(tmp_path, inputs("sft", evaluation, Lineage.of(pretrained, sft), sft["config"]))
    assert card.data.license == "other" and card.data.base_model == "openai-community/gpt2"
    names = {r.metric_name for r in card.data.eval_results}
    assert names == {"ROUGE-L F", "ROUGE-1 F", "ROUGE-L F (greedy)", "ROUGE-1 F (greedy)"}
    assert {r.metric_type for r in card.data.eval_results} == {"rouge"}
    assert "| ROUGE-L F | **this model** (fine-tuned) |" in card.text and "apply_chat_template" in card.text
    assert "| fine-tuned from (pretrained weights sha256) | `" + "f" * 64 + "` |" in card.text

    scratch = {k: v for k, v in pretrained.items() if k != "base_model"}
    card = card_at(tmp_path, inputs("pretrained", evaluation, Lineage.of(scratch), scratch["config"]))
    assert card.data.base_model is None and "| base model | none: trained from scratch |" in card.text
    local = pretrained | {"base_model": {**BASE, "source": "hf:/models/gpt2", "revision": None}}
    card = card_at(tmp_path, inputs("pretrained", evaluation, Lineage.of(local), local["config"]))
    assert card.data.base_model is None, "a local directory is no hub id"
    assert "`hf:/models/gpt2` (a local directory)" in card.text


def test_bad_card_settings_and_inputs_name_the_field(evaluation, metas):
    with pytest.raises(ValueError, match=r"license='Apache 2' is not a license id .*apache-2.0"):
        CardConfig(license="Apache 2")
    with pytest.raises(ValueError, match=r"tags \['two words'\] must be 1 to 64 characters"):
        CardConfig(tags=("ok", "two words"))
    lineage = Lineage.of(metas[0])
    with pytest.raises(ValueError, match=r"model='classifier'; valid: pretrained, sft"):
        inputs("classifier", evaluation, lineage, {})
    with pytest.raises(ValueError, match="re-materialize evaluation_report"):
        inputs("sft", {"table": []}, lineage, {})
