"""finetune(): learns to answer and stop, loss only on the answers, exact resume (full and LoRA),
a plain-GPT final checkpoint, and refusal to resume on another init checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from lmcore.finetune.chat import render_chatml
from lmcore.finetune.sft import FinetuneRun, chat_generate, finetune
from lmcore.finetune.sft_data import SFTExample, pack_examples
from lmcore.model.checkpoint import MODEL_FILE, list_checkpoints, load_trained_model, save_checkpoint
from lmcore.model.generate import greedy
from lmcore.model.gpt import GPT, tiny
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig

PAIRS = [
    ("What color is the sky?", "blue"),
    ("Name a fruit.", "apple"),
    ("Two plus two?", "four"),
    ("Where do fish live?", "in the water"),
]
PAD = 1


def write_init(root: Path, seed: int = 0) -> Path:
    """A freshly initialised tiny GPT saved as a checkpoint (stands in for a pretrained model)."""
    torch.manual_seed(seed)
    config = tiny(vocab_size=300, context_length=64)
    return save_checkpoint(root, 0, GPT(config), {}, {"config": {"model": config.to_dict()}})


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> Path:
    return write_init(tmp_path_factory.mktemp("init"))


def examples(tok, pairs=PAIRS) -> list[SFTExample]:
    out = []
    for q, a in pairs:
        r = render_chatml([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tok)
        out.append(SFTExample(ids=r.ids, mask=r.mask))
    return out


def from_init(init: Path, cfg: TrainConfig, runs_dir: Path, **kw) -> FinetuneRun:
    """The fine-tuning run of ``cfg`` from ``init`` in ``runs_dir``."""
    return FinetuneRun(init_checkpoint=init, train=cfg, runs_dir=runs_dir, **kw)


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=12, batch_size=2, lr=3e-3, warmup_steps=2, eval_batches=1, eval_every=0, log_every=1)
    return TrainConfig(**{**base, "checkpoint_every": 3, "device": "cpu", "peak_flops": 1e12, **overrides})


def test_learns_to_answer_and_stop(tok, init: Path, tmp_path: Path) -> None:
    train = pack_examples(examples(tok), 64)  # 4 conversations in 2 packed rows: segment_ids on the way
    assert len(train) < len(PAIRS)
    cfg = config(max_steps=50, batch_size=4, lr=1e-2, checkpoint_every=0, log_every=5, weight_decay=0.0)
    summary = finetune(from_init(init, cfg, tmp_path / "run"), train, examples(tok)[:2], pad_id=PAD)
    history = summary.loss_history
    assert history[-1][1] < 0.1 * history[0][1], history
    assert summary.trainable_params == summary.params and summary.step == 50
    model, meta = load_trained_model(summary.checkpoint)
    assert meta["config"]["init_checkpoint"] == json.loads((init / "meta.json").read_text())["files"][MODEL_FILE]
    for question, answer in PAIRS:
        reply = chat_generate(model, tok, [{"role": "user", "content": question}], greedy(), max_new_tokens=20)
        assert reply == answer, "the exact answer, then <|im_end|> stopped generation (else 20 tokens came out)"


def _first_loss(tok, init: Path, run: Path, train: list[SFTExample]) -> float:
    summary = finetune(from_init(init, config(max_steps=1, warmup_steps=0, eval_batches=0), run), train, [], pad_id=PAD)
    return summary.loss_history[0][1]


def test_loss_is_taken_on_the_answers_only(tok, init: Path, tmp_path: Path) -> None:
    train = examples(tok)[:2]
    base = _first_loss(tok, init, tmp_path / "a", train)
    # the trailing "\n" after the last <|im_end|> is only ever a target, and outside the mask
    changed = [SFTExample(ids=e.ids[:-1] + [(e.ids[-1] + 1) % 300], mask=e.mask) for e in train]
    assert _first_loss(tok, init, tmp_path / "b", changed) == base
    # the same loss by hand: mean cross-entropy over the masked next tokens of both examples
    model, _ = load_trained_model(init)
    token_losses = []
    for e in train:
        logits, _ = model(torch.tensor([e.ids[:-1]]))
        ce = F.cross_entropy(logits[0], torch.tensor(e.ids[1:]), reduction="none")
        token_losses.append(ce[torch.tensor(e.mask[1:]) == 1])
    assert base == pytest.approx(torch.cat(token_losses).mean().item(), rel=1e-5)
    everything = [SFTExample(ids=e.ids, mask=[1] * len(e.ids)) for e in train]
    assert _first_loss(tok, init, tmp_path / "c", everything) != pytest.approx(base, rel=1e-3), "the test can fail"


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=2, alpha=4)], ids=["full", "lora"])
def test_resume_after_a_crash_continues_identically(tok, init: Path, tmp_path: Path, lora) -> None:
    train, val = examples(tok), examples(tok)[:2]
    reference = finetune(from_init(init, config(), tmp_path / "ref", lora=lora), train, val, pad_id=PAD)

    def crash_at_8(record: dict) -> None:
        if record["step"] == 8:
            raise Crash

    runs = tmp_path / "run"
    with pytest.raises(Crash):
        finetune(from_init(init, config(), runs, lora=lora), train, val, pad_id=PAD, callback=crash_at_8)
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert [s for s, _ in list_checkpoints(run)] == [3, 6]
    resumed = finetune(from_init(init, config(), runs, lora=lora), train, val, pad_id=PAD)
    assert Path(resumed.run_dir) == run
    assert resumed.resumed_from == 6
    assert resumed.loss_history == reference.loss_history and resumed.val_history == reference.val_history
    assert resumed.checkpoint_sha256 == reference.checkpoint_sha256
    model, _ = load_trained_model(resumed.checkpoint)  # LoRA merged: a plain GPT
    assert type(model) is GPT
    if lora is not None:
        c = model.config
        per_layer = 2 * (c.d_model + 3 * c.d_model) + 2 * (c.d_model + c.d_model)  # c_attn (d->3d), c_proj (d->d)
        assert resumed.trainable_params == c.n_layer * per_layer < resumed.params


def test_another_init_is_another_run(tok, init: Path, tmp_path: Path) -> None:
    runs = tmp_path / "run"
    first = finetune(from_init(init, config(max_steps=3), runs), examples(tok), examples(tok), pad_id=PAD)
    other = write_init(tmp_path / "other", seed=1)
    second = finetune(from_init(other, config(max_steps=3), runs), examples(tok), examples(tok), pad_id=PAD)
    assert second.run_dir != first.run_dir and second.resumed_from is None
    again = finetune(from_init(init, config(max_steps=3), runs), examples(tok), examples(tok), pad_id=PAD)
    assert again.run_dir == first.run_dir and again.resumed_from == 3


def test_bad_examples_are_named(tok, init: Path, tmp_path: Path) -> None:
    long = SFTExample(ids=[5] * 80, mask=[1] * 80)
    silent = SFTExample(ids=[5] * 10, mask=[0] * 10)
    with pytest.raises(ValueError, match=r"train_examples \[0\] exceed context_length=64.*\[1\] have no assistant"):
        finetune(from_init(init, config(), tmp_path / "run"), [long, silent], [], pad_id=PAD)
    with pytest.raises(ValueError, match="val_examples is empty"):
        finetune(from_init(init, config(), tmp_path / "run"), examples(tok), [], pad_id=PAD)


def test_prompt_prefix_is_each_segments_prompt_only() -> None:
    from lmcore.train.objectives import prompt_prefix

    I = -100  # noqa: E741
    # segment 0: prompt of 3, reply of 2, a second prompt turn, a reply; segment 1: prompt 2, reply 1; padding
    targets = torch.tensor([[I, I, 7, 8, I, I, 9, I, 5, 6, I, I]])
    segments = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2]])
    got = prompt_prefix(targets, segments)[0].tolist()
    assert got == [True, True, True, False, False, False, False, True, True, False, True, True]


def test_a_prefix_lm_fine_tunes_with_its_prompt_as_prefix_and_resumes(tok, tmp_path: Path) -> None:
    torch.manual_seed(0)
    mc = tiny(vocab_size=300, context_length=64, attention="prefix")
    init = save_checkpoint(tmp_path / "init", 0, GPT(mc), {}, {"config": {"model": mc.to_dict()}})
    train, val = pack_examples(examples(tok) * 3, 64), examples(tok)[:2]
    reference = finetune(from_init(init, config(), tmp_path / "ref"), train, val, pad_id=PAD)
    assert reference.loss_history[-1][1] < reference.loss_history[0][1]

    def crash_at_8(record: dict) -> None:
        if record["step"] == 8:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        finetune(from_init(init, config(), tmp_path / "run"), train, val, pad_id=PAD, callback=crash_at_8)
    resumed = finetune(from_init(init, config(), tmp_path / "run"), train, val, pad_id=PAD)
    assert resumed.resumed_from == 6 and resumed.loss_history == reference.loss_history
    model, _ = load_trained_model(Path(reference.checkpoint), "cpu")
    assert (
        model.config.attention == "prefix"
        and chat_generate(model, tok, [{"role": "user", "content": "hi"}], greedy(), max_new_tokens=4) is not None
    )


def test_fine_tuning_refuses_an_objective_or_an_encoder(tok, init: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leave it causal"):
        finetune(from_init(init, config(objective="prefix"), tmp_path / "a"), examples(tok), examples(tok), pad_id=PAD)
    mc = tiny(vocab_size=301, context_length=64, attention="bidirectional")
    encoder = save_checkpoint(tmp_path / "enc", 0, GPT(mc), {}, {"config": {"model": mc.to_dict()}})
    with pytest.raises(ValueError, match="encoder"):
        finetune(from_init(encoder, config(), tmp_path / "b"), examples(tok), examples(tok), pad_id=PAD)


def test_a_prefix_lms_multi_turn_prompt_is_two_way_up_to_the_first_reply_only(tok, monkeypatch) -> None:
    import lmcore.finetune.sft as sft_module
    from lmcore.finetune.chat import prompt_ids
    from lmcore.model.generate import generate

    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=300, context_length=64, attention="prefix")).eval()
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "more"},
    ]
    ids = prompt_ids(chat, tok)
    first = len(prompt_ids(chat[:1], tok))
    for length in (first, len(ids)):
        prefix = (torch.arange(len(ids)) < length)[None]
        logits = model(torch.tensor([ids]), prefix=prefix)[0][0, -1]
        out = generate(model, ids, greedy(), max_new_tokens=1, prefix_length=length)
        assert out == [logits.argmax().item()], length
    seen = {}
    monkeypatch.setattr(sft_module, "generate", lambda m, p, c, **kw: seen.update(kw) or [])
    chat_generate(model, tok, chat, greedy(), max_new_tokens=1)
    assert seen["prefix_length"] == first  # what fine-tuning's prompt_prefix makes two-way
    chat_generate(model, tok, chat[:1], greedy(), max_new_tokens=1)
    assert seen["prefix_length"] == first  # the whole single-turn prompt


def test_every_fine_tuning_run_refuses_a_pretraining_objective(tok, init: Path, tmp_path: Path) -> None:
    from lmcore.finetune.head import train_head

    with pytest.raises(ValueError, match="leave it causal"):
        train_head(
            from_init(init, config(objective="masked"), tmp_path / "head"), (["x"], ["a"]), (["y"], ["a"]), tok, ["a"]
        )
