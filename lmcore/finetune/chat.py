"""ChatML rendering for supervised fine-tuning: messages → token ids and a loss mask, and back.

A conversation is rendered as one ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` block per
message. The markers are the tokenizer's special-token ids; the role header, the content
and the trailing newline are encoded separately as *plain text*: the HF tokenizer's
``encode_special_tokens`` switch is on while they are encoded, so a user who types the
literal string ``<|im_end|>`` gets byte tokens, never the control id (no prompt injection
of turn boundaries). The loss mask is 1 on each assistant message's content and its
``<|im_end|>`` (the model must learn to stop) and 0 on everything else.

This module knows nothing of record formats, files, batching or training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lmcore.data.tokenizer import IM_END, IM_START, Tokenizer

ROLES = ("system", "user", "assistant")
DROPPED_NO_ASSISTANT = "no_assistant_tokens_after_truncation"


@dataclass(frozen=True)
class ChatExample:
    """One rendered conversation."""

    ids: list[int]
    """Token ids of the whole conversation (empty when dropped)."""
    mask: list[int]
    """1 where the token is an assistant content token or its ``<|im_end|>``, else 0; same length as ``ids``."""
    truncated: int = 0
    """Tokens removed to fit ``context_length + 1``."""
    dropped: str | None = None
    """Why the conversation cannot be used (no assistant token survived truncation), else None."""


@dataclass(frozen=True)
class Turn:
    """Where one message sits in a rendered id list (see :func:`parse_chatml`)."""

    role: str
    start: int
    """Index of the first content token."""
    end: int
    """Index one past the last content token (the ``<|im_end|>`` position when closed)."""
    closed: bool
    """Whether the message ends with ``<|im_end|>`` (False for an open final turn, e.g. a prompt)."""


@contextlib.contextmanager
def plain_text(tokenizer: Tokenizer) -> Iterator[None]:
    """Encode special-token strings as ordinary text inside the block, then restore the setting.

    Not thread-safe for a tokenizer shared between threads: the switch lives on the tokenizer.
    """
    before = tokenizer.encode_special_tokens
    tokenizer.hf.encode_special_tokens = True
    try:
        yield
    finally:
        tokenizer.hf.encode_special_tokens = before


def encode_plain(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with special-token strings encoded as plain text."""
    with plain_text(tokenizer):
        return [e.ids for e in tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]


def _special(tokenizer: Tokenizer) -> tuple[int, int]:
    return tokenizer.im_start_id, tokenizer.im_end_id


def check_messages(messages: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError listing every message that is not ``{"role": one of ROLES, "content": str}``."""
    problems = []
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(f"message {i} is {type(m).__name__}, not a dict")
        elif m.get("role") not in ROLES:
            problems.append(f"message {i} has role {m.get('role')!r}; use one of {ROLES}")
        elif not isinstance(m.get("content"), str):
            problems.append(f"message {i} content must be a string, got {type(m.get('content')).__name__}")
    if problems:
        raise ValueError("bad chat messages: " + "; ".join(problems))


def _truncation_target(messages: Sequence[dict[str, Any]]) -> int | None:
    """Index of the last user message before the last assistant message (else the last user message)."""
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    before = [i for i in users if i < last_assistant]
    return (before or users or [None])[-1]


def render_chatml(
    messages: Sequence[dict[str, Any]], tokenizer: Tokenizer, *, context_length: int | None = None
) -> ChatExample:
    """Render ``messages`` as ChatML ids with the assistant loss mask.

    With ``context_length``, a conversation longer than ``context_length + 1`` tokens (one
    training window plus its shifted target) is cut from the left of the content of the
    last user turn before the last answer (the system prompt and all headers stay). When
    even that whole content is not enough, the prompt is kept and the end is cut off
    instead (the last answer loses its tail and its ``<|im_end|>``; the cut lands on an
    answer token, never inside a header). When no assistant token is left, the example
    comes back with ``dropped`` set and no ids. ``truncated`` counts the removed tokens.
    """
    check_messages(messages)
    if context_length is not None and context_length < 1:
        raise ValueError(f"context_length must be >= 1 or None, got {context_length}")
    start, end = _special(tokenizer)
    n = len(messages)
    encoded = encode_plain(tokenizer, [m["content"] for m in messages] + [f"{r}\n" for r in ROLES] + ["\n"])
    contents, headers, newline = encoded[:n], dict(zip(ROLES, encoded[n : n + 3], strict=True)), encoded[-1]
    total = sum(2 + len(headers[m["role"]]) + len(c) + len(newline) for m, c in zip(messages, contents, strict=True))
    excess = 0 if context_length is None else max(0, total - (context_length + 1))
    truncated = 0
    target = _truncation_target(messages)
    if excess and target is not None and excess <= len(contents[target]):
        contents[target] = contents[target][excess:]
        truncated, excess = excess, 0
    ids: list[int] = []
    mask: list[int] = []
    for m, content in zip(messages, contents, strict=True):
        on = int(m["role"] == "assistant")
        header = headers[m["role"]]
        ids += [start, *header, *content, end, *newline]
        mask += [0] * (1 + len(header)) + [on] * (len(content) + 1) + [0] * len(newline)
    if excess:
        keep = len(ids) - excess
        while keep and not mask[keep - 1]:  # end on an answer token, not inside a header
            keep -= 1
        truncated += len(ids) - keep
        del ids[keep:], mask[keep:]
    if truncated and not any(mask):
        return ChatExample(ids=[], mask=[], truncated=truncated, dropped=DROPPED_NO_ASSISTANT)
    return ChatExample(ids=ids, mask=mask, truncated=truncated)


def prompt_ids(messages: Sequence[dict[str, Any]], tokenizer: Tokenizer) -> list[int]:
    """Ids of ``messages`` (the conversation so far, without the answer) plus ``<|im_start|>assistant\\n``.

    Generation continues from here and should stop at the ``<|im_end|>`` id.
    """
    rendered = render_chatml(messages, tokenizer)
    start, _ = _special(tokenizer)
    return rendered.ids + [start] + encode_plain(tokenizer, ["assistant\n"])[0]


def parse_chatml(ids: Sequence[int], tokenizer: Tokenizer) -> list[Turn]:
    """Locate every message in rendered ``ids``; raise ValueError naming the position of anything else.

    Between messages only the rendered ``"\\n"`` is allowed. The last message may be open
    (no ``<|im_end|>``), as in a prompt or a conversation cut at the right.
    """
    start, end = _special(tokenizer)
    header_ids = dict(zip(ROLES, encode_plain(tokenizer, [f"{r}\n" for r in ROLES]), strict=True))
    newline = encode_plain(tokenizer, ["\n"])[0]
    turns: list[Turn] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] != start:
            if turns and turns[-1].closed and list(ids[i : i + len(newline)]) == newline:
                i += len(newline)
                continue
            raise ValueError(f"token {i} (id {ids[i]}) is outside any message; expected {IM_START}")
        role = next((r for r, h in header_ids.items() if list(ids[i + 1 : i + 1 + len(h)]) == h), None)
        if role is None:
            raise ValueError(f"message at token {i} has no valid role header; roles are {ROLES}")
        j = i + 1 + len(header_ids[role])
        k = j
        while k < n and ids[k] not in (start, end):
            k += 1
        closed = k < n and ids[k] == end
        if k < n and not closed:
            raise ValueError(f"message at token {i} is not closed by {IM_END} before the next {IM_START}")
        turns.append(Turn(role=role, start=j, end=k, closed=closed))
        i = k + 1 if closed else k
    return turns


def decode_chatml(ids: Sequence[int], tokenizer: Tokenizer) -> list[dict[str, str]]:
    """Messages ``[{"role", "content"}]`` of rendered ``ids``; inverse of :func:`render_chatml` (untruncated)."""
    turns = parse_chatml(ids, tokenizer)
    return [
        {"role": t.role, "content": tokenizer.decode(list(ids[t.start : t.end]), skip_special_tokens=False)}
        for t in turns
    ]


def assistant_mask(ids: Sequence[int], tokenizer: Tokenizer) -> list[int]:
    """The loss mask that ``ids`` should carry, derived from the ids alone (for checks)."""
    mask = [0] * len(ids)
    for t in parse_chatml(ids, tokenizer):
        if t.role == "assistant":
            stop = t.end + 1 if t.closed else t.end
            mask[t.start : stop] = [1] * (stop - t.start)
    return mask


def check_example(messages: Sequence[dict[str, Any]], example: ChatExample, tokenizer: Tokenizer) -> list[str]:
    """Problems with a rendered example: it must decode back to ``messages`` (when not truncated)
    and its mask must cover exactly the assistant spans. Empty list when all is well."""
    if example.dropped:
        return [f"example was dropped: {example.dropped}"]
    problems = []
    if len(example.ids) != len(example.mask):
        problems.append(f"{len(example.ids)} ids but {len(example.mask)} mask values")
    try:
        decoded = decode_chatml(example.ids, tokenizer)
        expected = assistant_mask(example.ids, tokenizer)
    except ValueError as e:
        return [*problems, f"ids do not parse as ChatML: {e}"]
    if not example.truncated and decoded != [{"role": m["role"], "content": m["content"]} for m in messages]:
        problems.append("decoded messages differ from the original messages")
    if list(example.mask) != expected:
        bad = [i for i, (a, b) in enumerate(zip(example.mask, expected, strict=False)) if a != b]
        problems.append(f"mask differs from the assistant spans at {len(bad)} positions, first {bad[:5]}")
    return problems
