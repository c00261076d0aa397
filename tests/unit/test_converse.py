"""A multi-turn conversation: the history each reply sees, the KV-cache reply against recomputation, and the
oldest exchanges dropped (the system message kept) when the history outgrows the context."""

from __future__ import annotations

import pytest
import torch

from lmcore.finetune.converse import ChatConfig, Conversation
from lmcore.finetune.sft import chat_generate
from lmcore.model.generate import GenerationConfig, greedy
from lmcore.model.gpt import GPT, tiny

SYSTEM = {"role": "system", "content": "be brief"}


def _model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(vocab_size=320, **{"context_length": 128, **overrides})).eval()


def test_each_reply_sees_the_whole_history(tok):
    model = _model()
    decoding = GenerationConfig()  # the evaluation's: greedy with the repetition controls
    conv = Conversation(model, tok, ChatConfig(system="be brief", max_new_tokens=6), decoding)
    first = conv.reply("where is the cat?")
    second = conv.reply("and the dog?")
    exchange = [{"role": "user", "content": "where is the cat?"}, {"role": "assistant", "content": first}]
    asked = {"role": "user", "content": "and the dog?"}
    assert conv.messages == [SYSTEM, *exchange, asked, {"role": "assistant", "content": second}]
    assert conv.dropped == 0
    rendered = tok.decode(conv.prompt(conv.messages[:-1]), skip_special_tokens=False)
    assert rendered == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhere is the cat?<|im_end|>\n"
        f"<|im_start|>assistant\n{first}<|im_end|>\n<|im_start|>user\nand the dog?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert second == chat_generate(model, tok, [SYSTEM, *exchange, asked], decoding, max_new_tokens=6)
    alone = chat_generate(model, tok, [SYSTEM, asked], decoding, max_new_tokens=6)
    assert second != alone, "the first exchange changes the second reply"


@torch.no_grad()
def test_reply_with_the_kv_cache_equals_recomputing_every_step(tok):
    model = _model(arch="modern", n_kv_head=2)
    conv = Conversation(model, tok, ChatConfig(max_new_tokens=20), greedy())
    conv.reply("the cat sat on the mat.")
    reply = conv.reply("what did the dog do?")
    ids = conv.prompt(conv.messages[:-1])
    for _ in range(20):  # no cache: the whole sequence through the model for every token
        logits, _ = model(torch.tensor([ids]))
        token = int(logits[0, -1].argmax())
        if token == tok.im_end_id:
            break
        ids.append(token)
    assert reply == tok.decode(ids[len(conv.prompt(conv.messages[:-1])) :], skip_special_tokens=False)


def test_oldest_exchanges_are_dropped_and_the_system_message_kept(tok):
    model = _model(context_length=160)
    conv = Conversation(model, tok, ChatConfig(system="be brief", max_new_tokens=8), greedy())
    assert (conv.room, conv.budget) == (8, 152)
    sent = [f"tell me about the {animal} please" for animal in ("cat", "dog", "fox", "owl", "cow", "pig")]
    for text in sent:
        conv.reply(text)
        assert len(conv.prompt(conv.messages[:-1])) <= conv.budget, "every prompt left room for the reply"
    assert conv.messages[0] == SYSTEM
    users = [m["content"] for m in conv.messages if m["role"] == "user"]
    assert len(users) > 1 and conv.dropped > 1
    assert users == sent[conv.dropped :], "the oldest exchanges went, the newest stay, in order"
    roles = [m["role"] for m in conv.messages[1:]]
    assert roles == ["user", "assistant"] * len(users), "whole exchanges are dropped, never half of one"


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on(tok):
    model = _model(context_length=64)
    conv = Conversation(model, tok, ChatConfig(system="be brief", max_new_tokens=8), greedy())
    conv.reply("hi")
    before = list(conv.messages)
    with pytest.raises(ValueError, match="write a shorter message"):
        conv.reply("the cat sat on the mat and the dog sat on the log " * 4)
    assert conv.messages == before and conv.dropped == 0
    conv.reply("and now?")
    assert conv.messages[-2] == {"role": "user", "content": "and now?"}


def test_settings_are_checked(tok):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        ChatConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="give a shorter one"):
        Conversation(_model(context_length=64), tok, ChatConfig(system="be brief " * 20))
    conv = Conversation(_model(), tok)  # no system message: the history starts with the user
    conv.reply("hi")
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
