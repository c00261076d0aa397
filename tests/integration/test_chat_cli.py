"""``lmpipe chat`` through a pipe and in a pseudo-terminal, and ``--model`` naming a checkpoint directory, a Hugging
Face directory, or something that is neither, on ``generate``, ``chat`` and ``export``."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.finetune.sft import chat_generate
from lmcore.io import sha256_file
from lmcore.model.checkpoint import save_checkpoint
from lmcore.model.generate import GenerationConfig
from lmcore.model.gpt import GPT, tiny
from pipelines.cli import main
from tests.hub_models import save_gpt2

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = {"role": "system", "content": "be brief"}
ASK = [{"role": "user", "content": "where is the cat?"}, {"role": "user", "content": "and the dog?"}]
FLAGS = ["--system", "be brief", "--max-new-tokens", "6"]  # the evaluation's decoding: deterministic


@pytest.fixture()
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(vocab_size=320, context_length=128)).eval()


@pytest.fixture()
def checkpoint(tmp_path, model, small_tokenizer) -> Path:
    """A chat model's checkpoint as training writes it, naming the tokenizer it was trained with (as sft_model's)."""
    _, tokenizer = small_tokenizer
    meta = {
        "config": {"model": model.config.to_dict()},
        "data": {"train_examples": 1},  # what chat fine-tuning records
        "tokenizer_path": str(tokenizer),
        "tokenizer_sha256": sha256_file(tokenizer),
    }
    return save_checkpoint(tmp_path / "run", 1, model, {}, meta)


def _replies(model: GPT, tok) -> tuple[str, str]:
    """What the model answers to the two user turns, the second after the first exchange."""
    first = chat_generate(model, tok, [SYSTEM, ASK[0]], GenerationConfig(), max_new_tokens=6)
    history = [SYSTEM, ASK[0], {"role": "assistant", "content": first}, ASK[1]]
    return first, chat_generate(model, tok, history, GenerationConfig(), max_new_tokens=6)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "LMPIPE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return env | {"PYTHONIOENCODING": "utf-8", "TERM": "dumb"}


def test_chat_through_a_pipe_keeps_the_history(tmp_path, checkpoint, model, tok):
    cmd = [sys.executable, "-m", "pipelines.cli", "chat", "--model", str(checkpoint), *FLAGS]
    stdin = "".join(f"{m['content']}\n" for m in ASK).encode()
    done = subprocess.run(cmd, input=stdin, capture_output=True, cwd=ROOT, env=_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    first, second = _replies(model, tok)
    assert done.stdout.decode() == f"{first}\n{second}\n", "two replies, the second to the whole history"
    alone = chat_generate(model, tok, [SYSTEM, ASK[1]], GenerationConfig(), max_new_tokens=6)
    assert second != alone, "the first exchange was in the second turn's prompt"


def test_chat_in_a_terminal(tmp_path, checkpoint, model, tok):
    """Typed as a person types: the message after the prompt, Enter, then Ctrl-D at the next prompt."""
    master, slave = os.openpty()
    cmd = [sys.executable, "-m", "pipelines.cli", "chat", "--model", str(checkpoint), *FLAGS]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=_env(tmp_path))
    os.close(slave)
    typed = [f"{ASK[0]['content']}\r".encode(), b"\x04"]  # Enter is a carriage return; Ctrl-D ends the input
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if typed and out.count(b"you> ") == 3 - len(typed):
                os.write(master, typed.pop(0))
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0, out.decode(errors="replace")
    text = out.replace(b"\r\n", b"\n").decode()
    first, _ = _replies(model, tok)
    assert "an empty line, /exit or Ctrl-D ends" in text
    assert f"you> {ASK[0]['content']}\nassistant> {first}\nyou> " in text, "prompted, echoed, answered, prompted"
    assert not typed and text.count("assistant> ") == 1, "Ctrl-D ended the chat"


def test_model_from_a_checkpoint_and_from_its_hugging_face_export(tmp_path, home, checkpoint, model, tok, capsys):
    hf = tmp_path / "hf"
    assert main(["export", str(hf), "--model", str(checkpoint)]) == 0, capsys.readouterr().err
    assert "generation ends at <|im_end|>" in capsys.readouterr().err, "a chat model's export stops at <|im_end|>"
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == tok.im_end_id

    first, second = _replies(model, tok)
    for source in (checkpoint, hf):
        stdin = io.StringIO("".join(f"{m['content']}\n" for m in ASK) + "/exit\nnot read\n")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdin", stdin)
            assert main(["chat", "--model", str(source), *FLAGS]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out == f"{first}\n{second}\n", source  # nothing after /exit

    generated = []
    for source in (checkpoint, hf):
        assert main(["generate", "--model", str(source), "--prompt", "the cat", "--max-new-tokens", "5"]) == 0
        generated.append(capsys.readouterr().out)
    assert generated[0].startswith("the cat") and generated[0] == generated[1]


def test_a_published_base_model_directory(tmp_path, home, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # transformers builds the GPT-2 below; nothing is downloaded
    gpt2 = save_gpt2(tmp_path / "gpt2")  # as published: <|endoftext|> its only special token
    greedy = ["--prompt", "the cat", "--max-new-tokens", "5", "--temperature", "0"]
    assert main(["generate", "--model", str(gpt2), *greedy]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("the cat")
    assert "lacks ['<|pad|>', '<|im_start|>', '<|im_end|>']: added to its tokenizer" in err

    assert main(["export", str(tmp_path / "hf"), "--model", str(gpt2)]) == 0, capsys.readouterr().err
    assert "generation ends at <|endoftext|>" in capsys.readouterr().err, "a base model, not a chat model"
    assert "<|im_end|>" in (tmp_path / "hf" / "tokenizer.json").read_text(), "the export carries the added tokens"
    assert main(["generate", "--model", str(tmp_path / "hf"), *greedy]) == 0
    again, err = capsys.readouterr()
    assert again == out and "lacks" not in err, "the export is the same model, its tokenizer complete"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdin", io.StringIO("hello\n"))
        assert main(["chat", "--model", str(gpt2), "--max-new-tokens", "3"]) == 0
    assert "was not fine-tuned on conversations" in capsys.readouterr().err


def test_bad_model_values_exit_2_naming_the_fix(tmp_path, home, checkpoint, small_texts, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other-tokenizer"
    shutil.copytree(checkpoint, other)
    train_tokenizer(TokenizerConfig(vocab_size=280), small_texts, other / "tokenizer.json")
    classifier = tmp_path / "classifier"
    shutil.copytree(checkpoint, classifier)
    meta = json.loads((classifier / "meta.json").read_text())
    meta["config"]["head"] = {"labels": ["a", "b"], "pad_id": 1}
    (classifier / "meta.json").write_text(json.dumps(meta))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    cases = [
        (["chat", "--model", "nosuch"], "--model nosuch: no such directory"),
        (["chat"], "sft_model was never materialized in this store"),
        (["generate", "--prompt", "x", "--model", "sft"], "lmpipe run --select '*sft_model'"),
        (["export", str(tmp_path / "out")], "pretrained_model was never materialized"),
        (["generate", "--prompt", "x", "--model", str(empty)], "neither meta.json (a checkpoint) nor config.json"),
        (["chat", "--model", str(other)], "is not the tokenizer"),
        (["chat", "--model", str(classifier)], "is a classifier checkpoint"),
        (["export", str(tmp_path / "out"), "--model", str(no_tokenizer)], "no tokenizer.json"),
        (["chat", "--model", str(checkpoint), "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "out").exists()
