"""The ``encoder`` classifier: a masked-LM encoder pretrained on the token shards, a [CLS] head on position 0 that
ignores padding, its evaluation (masked accuracy, pseudo-perplexity), evaluate_all end to end, exact resume, and
the configs it refuses. Tiny models, CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmcore.data.shards import TokenShardWriter, open_split, write_manifest
from lmcore.data.tokenizer import EOT
from lmcore.finetune.classify import DEFAULT_METHODS, METHODS, ClassifyConfig, evaluate_all, steps
from lmcore.finetune.encoder import encoder_config, evaluate_encoder, pretrain_encoder
from lmcore.finetune.head import SequenceClassifier, load_classifier, train_head
from lmcore.finetune.prompts import pad_right, prompts
from lmcore.model.checkpoint import load_trained_model, read_meta
from lmcore.model.gpt import GPT, tiny
from lmcore.train.config import TrainConfig
from tests.unit.test_classify import KEYS, PAD, classify, config, make
from tests.unit.test_sft import from_init, write_init
from tests.unit.test_train import assert_resumed_exactly, crash_and_resume


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> Path:
    return write_init(tmp_path_factory.mktemp("init"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tok) -> Path:
    """Token shards of the keyword texts, written with the classifier's tokenizer (train, val, test)."""
    root = tmp_path_factory.mktemp("shards")
    eot = tok.token_to_id(EOT)
    splits = {}
    for split, (n, seed) in {"train": (600, 10), "val": (120, 11), "test": (120, 12)}.items():
        with TokenShardWriter(root / split, np.uint16, shard_tokens=2000) as w:
            for text in make(n, seed)[0]:
                w.add(np.array([*tok.encode(text).ids, eot]))
        splits[split] = {"shards": w.shards, "tokens": w.tokens}
    write_manifest(root, splits, vocab_size=tok.vocab_size)
    return root


def pretrain_config(**overrides) -> TrainConfig:
    base = dict(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, eval_batches=1, eval_every=6, log_every=1)
    return TrainConfig(**{**base, "checkpoint_every": 3, "device": "cpu", "peak_flops": 1e12, **overrides})


def lm_config():
    return tiny(vocab_size=300, context_length=64)


def encoder_classifier(tok, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(GPT(encoder_config(lm_config(), tok.vocab_size)), 3, PAD).eval()


def test_the_encoder_head_reads_position_0_and_ignores_padding(tok) -> None:
    classifier = encoder_classifier(tok)
    assert not classifier.config.causal and classifier.config.vocab_size == tok.vocab_size + 1
    rows = prompts(["the apple", "a big quiet river near the old stone"], tok, 64)
    assert len(rows[0]) < len(rows[1]) and rows[0][0] == rows[1][0], "every prompt starts with the same token"
    alone = [classifier(torch.tensor([row]))[0][0] for row in rows]
    padded, _ = classifier(pad_right(rows, PAD))  # the first row is right-padded
    for i in range(2):
        torch.testing.assert_close(padded[i], alone[i], atol=1e-5, rtol=1e-5)
    for more in (1, 7, 20):  # more padding does not move a row's logits
        out, _ = classifier(torch.tensor([rows[0] + [PAD] * more]))
        torch.testing.assert_close(out[0], alone[0], atol=1e-5, rtol=1e-5)
    # the logits are the head on position 0, which attends to the whole (unpadded) row
    x = pad_right(rows, PAD)
    hidden, _ = classifier.lm(x, segment_ids=(x == PAD).long())
    torch.testing.assert_close(classifier.head(hidden[:, 0]), padded, atol=1e-6, rtol=1e-6)
    changed = list(rows[0])
    changed[-2] = (changed[-2] + 1) % tok.vocab_size  # a late real token
    assert not torch.allclose(classifier(torch.tensor([changed]))[0][0], alone[0], atol=1e-4), "position 0 sees it"
    # the test can fail: without the padding's own segment, position 0 would attend to the padding
    unmasked, _ = classifier.lm(torch.tensor([rows[0] + [PAD] * 7]))
    assert not torch.allclose(classifier.head(unmasked[:, 0])[0], alone[0], atol=1e-4)


def test_a_decoder_head_is_unchanged_by_the_encoder_branch(tok) -> None:
    torch.manual_seed(0)
    classifier = SequenceClassifier(GPT(lm_config()), 3, PAD).eval()
    rows = prompts(["the apple", "a big quiet river near the old stone"], tok, 64)
    x = pad_right(rows, PAD)
    hidden, _ = classifier.lm(x)  # no segment ids for a decoder
    last = torch.tensor([len(r) - 1 for r in rows])
    torch.testing.assert_close(classifier(x)[0], classifier.head(hidden[torch.arange(2), last]), rtol=0, atol=0)


def test_encoder_config_fields_round_trip_and_count_for_progress() -> None:
    cfg = ClassifyConfig(encoder_pretrain=TrainConfig(max_steps=5), encoder=TrainConfig(max_steps=7))
    assert cfg.methods == DEFAULT_METHODS == ("label_lm", "head", "bow") and "encoder" in METHODS
    assert cfg.encoder_pretrain.objective == "masked", "left at the default, the objective becomes masked"
    again = ClassifyConfig.from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again.encoder_pretrain, TrainConfig)
    assert steps(cfg)["encoder_pretrain"] == 5 and steps(cfg)["encoder"] == 7


@pytest.mark.parametrize("objective", ["prefix", "span"])
def test_a_wrong_encoder_pretrain_objective_is_named(shards: Path, tmp_path: Path, objective: str) -> None:
    with pytest.raises(ValueError, match="encoder_pretrain.objective"):
        ClassifyConfig(encoder_pretrain=TrainConfig(objective=objective))
    with pytest.raises(ValueError, match="encoder_pretrain.objective"):
        ClassifyConfig.from_dict({"encoder_pretrain": {"objective": objective}})
    with pytest.raises(ValueError, match="encoder_pretrain.objective"):
        pretrain_encoder(lm_config(), pretrain_config(objective=objective), shards, tmp_path)


def test_asking_for_the_encoder_without_shards_names_the_fix(tok, init: Path, tmp_path: Path) -> None:
    data = make(12, 0)
    cfg = ClassifyConfig(methods=["encoder", "bow"])
    with pytest.raises(ValueError, match="pass shard_root"):
        evaluate_all(classify(init, cfg, tmp_path), tok, data, data, data)
    assert not any(tmp_path.iterdir()), "refused before any run"


def test_pretraining_builds_an_encoder_and_resumes_exactly(shards: Path, tmp_path: Path) -> None:
    reference, resumed = crash_and_resume(
        lambda d, **kw: pretrain_encoder(lm_config(), pretrain_config(), shards, d, **kw), tmp_path, 8
    )
    meta = read_meta(reference.checkpoint)
    model = meta["config"]["model"]
    assert model["attention"] == "bidirectional" and model["vocab_size"] == reference.mask_id + 1
    assert meta["config"]["train"]["objective"] == "masked"
    assert_resumed_exactly(reference, resumed, 6)


def test_the_encoder_head_run_resumes_exactly_after_a_crash(tok, shards: Path, tmp_path: Path) -> None:
    encoder = pretrain_encoder(lm_config(), pretrain_config(max_steps=4), shards, tmp_path / "pretrain")
    init = Path(encoder.checkpoint)
    train, validation = make(64, 0), make(16, 1)
    labels = sorted(set(KEYS.values()))
    cfg = config(max_steps=8, checkpoint_every=3, log_every=1)
    reference, resumed = crash_and_resume(
        lambda d, **kw: train_head(from_init(init, cfg, d), train, validation, tok, labels, **kw), tmp_path, 5
    )
    assert_resumed_exactly(reference, resumed, 3)
    classifier, _ = load_classifier(resumed.checkpoint)
    assert not classifier.config.causal, "the classifier keeps the encoder's attention"


def test_evaluate_encoder_is_deterministic_and_bounded(shards: Path, tmp_path: Path) -> None:
    summary = pretrain_encoder(lm_config(), pretrain_config(max_steps=4), shards, tmp_path)
    model, _ = load_trained_model(summary.checkpoint)
    arrays = open_split(shards, "test").arrays
    first = evaluate_encoder(model, arrays, summary.mask_id, max_windows=8, pll_rows=1)
    again = evaluate_encoder(model, (shards, "test"), summary.mask_id, max_windows=8, pll_rows=1, batch_size=3)
    assert again["masked_tokens"] == first["masked_tokens"], "each window's mask is its own: batching changes none"
    assert again["masked_accuracy"] == pytest.approx(first["masked_accuracy"], abs=1e-9)
    assert first["windows"] == 8 and first["pll_rows"] == 1 and first["masked_tokens"] > 0
    assert 0 <= first["masked_accuracy"] <= 1 and 1 < first["pseudo_perplexity"] < 10 * model.config.vocab_size
    assert evaluate_encoder(model, arrays, summary.mask_id, max_windows=8, pll_rows=1) == first
    assert evaluate_encoder(model, arrays, summary.mask_id, max_windows=2, pll_rows=0)["pseudo_perplexity"] is None


def test_encoder_and_bow_end_to_end(tok, init: Path, shards: Path, tmp_path: Path) -> None:
    train, validation, test = make(120, 0), make(24, 1), make(60, 2)
    records: list[dict] = []
    cfg = ClassifyConfig(
        methods=["encoder", "bow"],
        # early masked-LM training collapses the hidden states (all rows alike), so the head needs more steps
        encoder_pretrain=pretrain_config(max_steps=80, checkpoint_every=40, eval_every=40, log_every=10),
        encoder=config(max_steps=60, batch_size=16),
        encoder_eval_windows=8,
        encoder_pll_rows=1,
    )
    run = classify(init, cfg, tmp_path, shard_root=shards)
    results = evaluate_all(run, tok, train, validation, test, callback=records.append)
    assert set(results) == {"labels", "encoder", "bow"}
    r = results["encoder"]
    assert r["accuracy"] > 0.7, f"encoder: {r['accuracy']} (chance is 1/3)"
    assert sum(map(sum, r["confusion"])) == 60 and 0 <= r["macro_f1"] <= 1 and len(r["predictions"]) == 60
    assert 0 < r["masked_accuracy"] <= 1 and r["pseudo_perplexity"] > 1 and r["encoder_val_loss"] > 0
    assert r["train"]["step"] == 60 and r["train"]["pretrain"]["step"] == 80
    assert read_meta(r["train"]["checkpoint"])["data"]["init_checkpoint"] == r["train"]["pretrain"]["checkpoint"]
    assert {(e["method"], e["stage"]) for e in records} >= {("encoder_pretrain", "train"), ("encoder", "train")}
    assert 0 <= results["bow"]["accuracy"] <= 1
