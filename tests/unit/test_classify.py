"""Classifier fine-tuning three ways on a tiny keyword task; label scoring against brute force;
the head reads the last non-pad token."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lmcore.data.tokenizer import EOT, IM_END
from lmcore.finetune.adapt import adapt_lm, text_examples
from lmcore.finetune.chat import encode_plain, prompt_ids
from lmcore.finetune.classify import ClassifyConfig, ClassifyRun, evaluate_all
from lmcore.finetune.head import SequenceClassifier, load_classifier, predict_head, train_head
from lmcore.finetune.label_lm import score_labels
from lmcore.finetune.prompts import INSTRUCTION, pad_right, prompt_messages, prompts
from lmcore.model.checkpoint import load_trained_model, read_meta
from lmcore.model.gpt import GPT, tiny
from lmcore.model.lora import LoraConfig, lora_layers
from lmcore.train.config import TrainConfig
from tests.unit.test_sft import from_init, write_init

WORDS = "the a small big old new red quiet happy slow fast green near far".split()
KEYS = {"apple": "fruit", "river": "water", "stone": "rock"}
PAD = 1


def make(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Filler words around one keyword; the keyword decides the label."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        key = rng.choice(sorted(KEYS))
        words = rng.choices(WORDS, k=rng.randint(2, 6))
        words.insert(rng.randint(0, len(words)), key)
        texts.append(" ".join(words))
        labels.append(KEYS[key])
    return texts, labels


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> Path:
    return write_init(tmp_path_factory.mktemp("init"))


def classify(init: Path, cfg: ClassifyConfig, runs_dir: Path, **kw) -> ClassifyRun:
    """The classifiers of ``cfg`` from ``init`` in ``runs_dir``."""
    return ClassifyRun(init_checkpoint=init, config=cfg, runs_dir=runs_dir, **kw)


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=40, batch_size=8, lr=1e-2, warmup_steps=4, eval_batches=1, log_every=10, weight_decay=0.0)
    return TrainConfig(**{**base, "device": "cpu", "peak_flops": 1e12, **overrides})


def test_each_method_beats_chance(tok, init: Path, tmp_path: Path) -> None:
    train, validation, test = make(120, 0), make(24, 1), make(60, 2)
    records: list[dict] = []
    cfg = ClassifyConfig(label_lm=config(), head=config(max_steps=30, batch_size=16))
    results = evaluate_all(classify(init, cfg, tmp_path), tok, train, validation, test, callback=records.append)
    labels = sorted(set(KEYS.values()))
    assert results["labels"] == labels
    for method in ("label_lm", "head", "bow"):
        r = results[method]
        assert r["accuracy"] > 0.7, f"{method}: {r['accuracy']} (chance is 1/3)"
        assert r["labels"] == labels and sum(map(sum, r["confusion"])) == 60 and 0 <= r["macro_f1"] <= 1
        hits = [p == t for p, t in zip(r["predictions"], test[1], strict=True)]  # kept to score subsets again
        assert sum(hits) / 60 == r["accuracy"] and set(r["predictions"]) <= set(labels)
    assert results["label_lm"]["generation_exact_match"] > 0.5 and results["label_lm"]["generation_valid"] > 0.5
    assert {(r["method"], r["stage"]) for r in records} >= {
        ("label_lm", "train"),
        ("label_lm", "score"),
        ("head", "train"),
    }
    classifier, names = load_classifier(results["head"]["train"]["checkpoint"])
    predicted = predict_head(classifier, tok, test[0], names)
    assert names == labels
    assert sum(p == t for p, t in zip(predicted, test[1], strict=True)) / 60 == results["head"]["accuracy"]


def test_lora_trains_adapters_only_and_merges_them(tok, init: Path, tmp_path: Path) -> None:
    train, validation, test = make(40, 0), make(8, 1), make(8, 2)
    cfg = ClassifyConfig(label_lm=config(max_steps=4), head=config(max_steps=4), lora=LoraConfig(rank=4, alpha=8))
    results = evaluate_all(classify(init, cfg, tmp_path), tok, train, validation, test)
    for method in ("label_lm", "head"):
        trained = results[method]["train"]
        assert trained["trainable_params"] < trained["params"], f"{method} + LoRA: the LM itself stays frozen"
    classifier, _ = load_classifier(results["head"]["train"]["checkpoint"])  # LoRA merged into a plain classifier
    assert not lora_layers(classifier)


def text_loss(checkpoint: Path, tok, texts: list[str]) -> float:
    model, _ = load_trained_model(checkpoint)
    with torch.no_grad():
        losses = [
            model(torch.tensor([e.ids[:-1]]), torch.tensor([e.ids[1:]]))[1] for e in text_examples(texts, tok, 64)
        ]
    return float(torch.stack(losses).mean())


def test_text_examples_put_every_token_in_the_loss(tok) -> None:
    long = " ".join(["river"] * 200)
    short, trimmed = text_examples(["the apple", long], tok, context_length=16)
    eot = tok.token_to_id(EOT)
    assert short.ids == encode_plain(tok, ["the apple"])[0] + [eot] and all(short.mask)
    assert len(trimmed.ids) == 17 and trimmed.ids[-1] == eot, "first context_length tokens, then end of text"


def test_task_adaptation_lowers_text_loss_and_both_lm_methods_start_from_it(tok, init: Path, tmp_path: Path) -> None:
    train, validation, test = make(120, 0), make(24, 1), make(30, 2)
    adapted = adapt_lm(from_init(init, config(max_steps=30), tmp_path / "alone"), train[0], validation[0], tok)
    before, after = text_loss(init, tok, validation[0]), text_loss(Path(adapted.checkpoint), tok, validation[0])
    assert after < before - 1.0, f"validation text loss {before:.3f} -> {after:.3f}"
    records: list[dict] = []
    cfg = ClassifyConfig(label_lm=config(max_steps=5), head=config(max_steps=5), adapt=config(max_steps=30))
    results = evaluate_all(classify(init, cfg, tmp_path / "all"), tok, train, validation, test, callback=records.append)
    start = results["adaptation"]["checkpoint"]
    assert results["adaptation"]["val_loss"] == pytest.approx(adapted.val_loss), "same data, config and seed"
    for method in ("label_lm", "head"):
        assert read_meta(results[method]["train"]["checkpoint"])["data"]["init_checkpoint"] == start
    assert ("adapt", "train") in {(r["method"], r["stage"]) for r in records}
    bow = ClassifyConfig(adapt=config(max_steps=30), methods=["bow"])
    only_bow = evaluate_all(classify(init, bow, tmp_path / "bow"), tok, train, validation, test)
    assert "adaptation" not in only_bow, "no LM method, nothing to adapt"


def test_changing_one_methods_config_retrains_that_method_only(tok, init: Path, tmp_path: Path) -> None:
    train, validation, test = make(60, 0), make(12, 1), make(12, 2)
    runs = []
    for head_steps in (4, 6):
        records: list[dict] = []
        cfg = ClassifyConfig(
            label_lm=config(max_steps=4), head=config(max_steps=head_steps), methods=["label_lm", "head"]
        )
        results = evaluate_all(classify(init, cfg, tmp_path), tok, train, validation, test, callback=records.append)
        trained = {r["method"] for r in records if r["stage"] == "train" and "loss" in r}
        runs.append((results["label_lm"]["train"]["checkpoint"], results["head"]["train"]["checkpoint"], trained))
    assert runs[0][2] == {"label_lm", "head"} and runs[1][2] == {"head"}, "label_lm's finished run is reused"
    assert runs[0][0] == runs[1][0] and runs[0][1] != runs[1][1]


def test_other_data_trains_in_its_own_run_dir_and_leaves_the_first_alone(tok, init: Path, tmp_path: Path) -> None:
    cfg = ClassifyConfig(label_lm=config(max_steps=4), methods=["label_lm"])
    first = evaluate_all(classify(init, cfg, tmp_path), tok, make(40, 0), make(8, 1), make(8, 2))["label_lm"]["train"]
    before = read_meta(first["checkpoint"])
    other = evaluate_all(classify(init, cfg, tmp_path), tok, make(40, 5), make(8, 1), make(8, 2))["label_lm"]["train"]
    assert Path(other["checkpoint"]).parent != Path(first["checkpoint"]).parent
    assert read_meta(first["checkpoint"]) == before, "the first run's checkpoint is untouched"
    assert read_meta(other["checkpoint"])["config"]["data_version"] != before["config"]["data_version"]


def test_bad_classify_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="methods.*unknown"):
        ClassifyConfig(methods=["bow", "svm"])
    with pytest.raises(ValueError, match="methods is empty"):
        ClassifyConfig(methods=[])


def test_label_scores_are_the_summed_log_likelihoods(tok) -> None:
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=300, context_length=64)).eval()
    texts = ["the apple", "a big quiet river near the old stone", "fast"]
    labels = ["fruit", "water", "rock"]
    scores = score_labels(model, tok, texts, labels, batch_size=4)  # 1 text (3 sequences) per forward pass
    im_end = tok.token_to_id(IM_END)
    for i, text in enumerate(texts):
        brute = []
        for label_ids in encode_plain(tok, labels):
            prompt = prompt_ids(prompt_messages(text, INSTRUCTION), tok)
            ids = prompt + label_ids + [im_end]
            logp = model(torch.tensor([ids[:-1]]))[0][0].log_softmax(-1)  # (T, V)
            brute.append(sum(logp[k - 1, ids[k]].item() for k in range(len(prompt), len(ids))))
        torch.testing.assert_close(scores[i], torch.tensor(brute), atol=1e-4, rtol=1e-5)
        assert scores[i].argmax().item() == max(range(3), key=brute.__getitem__)
    batched = score_labels(model, tok, texts, labels, batch_size=64)  # all texts, padded, in one pass
    torch.testing.assert_close(batched, scores, atol=1e-4, rtol=1e-5)


def test_head_reads_the_last_non_pad_token(tok) -> None:
    torch.manual_seed(0)
    classifier = SequenceClassifier(GPT(tiny(vocab_size=300, context_length=64)), 3, PAD).eval()
    rows = prompts(["the apple", "a big quiet river near the old stone"], tok, 64)
    assert len(rows[0]) < len(rows[1])
    padded, _ = classifier(pad_right(rows, PAD))  # the first row is right-padded
    for i, row in enumerate(rows):
        alone, _ = classifier(torch.tensor([row]))
        torch.testing.assert_close(padded[i], alone[0], atol=1e-5, rtol=1e-5)
    at_the_end, _ = classifier(torch.tensor([rows[0] + [5] * 4]))  # a real token where the pads were
    assert not torch.allclose(at_the_end[0], padded[0], atol=1e-4), "the test can fail"


class Crash(RuntimeError):
    pass


def test_head_training_resumes_identically(tok, init: Path, tmp_path: Path) -> None:
    train, validation = make(64, 0), make(16, 1)
    labels = sorted(set(KEYS.values()))
    cfg = config(max_steps=8, checkpoint_every=3, log_every=1)
    reference = train_head(from_init(init, cfg, tmp_path / "ref"), train, validation, tok, labels)

    def crash_at_5(record: dict) -> None:
        if record["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        train_head(from_init(init, cfg, tmp_path / "run"), train, validation, tok, labels, callback=crash_at_5)
    resumed = train_head(from_init(init, cfg, tmp_path / "run"), train, validation, tok, labels)
    assert resumed.resumed_from == 3 and resumed.loss_history == reference.loss_history
    assert resumed.checkpoint_sha256 == reference.checkpoint_sha256
