"""Instruction records: JSONL files in, ChatML message lists out, bad records counted, not fatal.

Record shapes (one JSON object per line of a ``.jsonl`` file):

* Alpaca ``{"instruction", "input", "output"}``: ``input`` is optional; Alpaca's placeholder
  inputs (``<noinput>``, ``No input.``, ``N/A`` …, see ``NO_INPUT``) count as no input; an
  empty ``output`` or a placeholder one (``<nooutput>``) skips the record, and a placeholder
  tag in front of a real answer is removed (counted in ``repaired``).
* ``{"instruction", "solution"}``.
* ``{"messages": [{"role", "content"}, ...]}`` ending with an assistant message.

The held-out split is decided by a seeded hash of the record's content (:func:`is_heldout`),
so a record keeps its split when files grow. This module knows nothing of tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmcore.finetune.chat import ROLES

NO_INPUT = {"noinput", "ninput", "noput", "noinputneeded", "noinputrequired", "na", "none"}
"""Alpaca ``input`` values (lowercased, letters only) that mean "no input"."""
NO_OUTPUT = {"nooutput", "noinput", "outputimage"}
"""Alpaca ``output`` values (lowercased, letters only) that are placeholders, not answers."""
_TAG = re.compile(r"^\s*(<[^<>\n]{1,40}>)\s*")


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def _field(record: dict[str, Any], name: str) -> tuple[str | None, str | None]:
    """(stripped value, skip reason) of a required string field."""
    value = record.get(name)
    if value is None:
        return None, f"missing_{name}"
    if not isinstance(value, str):
        return None, f"non_string_{name}"
    if not value.strip():
        return None, f"empty_{name}"
    return value.strip(), None


def _alpaca_output(output: str, repaired: Counter) -> tuple[str | None, str | None]:
    if _letters(output) in NO_OUTPUT:
        return None, "placeholder_output"
    tag = _TAG.match(output)
    if tag and _letters(tag.group(1)) in NO_OUTPUT:
        rest = output[tag.end() :].strip()
        if not rest or _letters(rest) in NO_OUTPUT:
            return None, "placeholder_output"
        repaired["placeholder_output_prefix"] += 1
        return rest, None
    return output, None


def _instruction_messages(record: dict[str, Any], repaired: Counter) -> tuple[list[dict] | None, str | None]:
    instruction, reason = _field(record, "instruction")
    if reason:
        return None, reason
    answer_field = "output" if "output" in record or "solution" not in record else "solution"
    answer, reason = _field(record, answer_field)
    if reason:
        return None, reason
    if answer_field == "output":
        answer, reason = _alpaca_output(answer, repaired)
        if reason:
            return None, reason
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        return None, "non_string_input"
    extra = (extra or "").strip()
    if extra and _letters(extra) in NO_INPUT:
        repaired["placeholder_input"] += 1
        extra = ""
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], None


def _chat_messages(messages: Any) -> tuple[list[dict] | None, str | None]:
    if not isinstance(messages, list) or not messages:
        return None, "bad_messages"
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return None, "bad_messages"
        if not m["content"].strip():
            return None, "empty_message"
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        return None, "last_message_not_assistant"
    if not any(m["role"] == "user" for m in out):
        return None, "no_user_message"
    return out, None


def record_to_messages(
    record: Any, *, system_prompt: str | None = None, repaired: Counter | None = None
) -> tuple[list[dict[str, str]] | None, str | None]:
    """``(messages, None)`` for a usable record, ``(None, reason)`` for one to skip.

    ``system_prompt`` is put first unless the record brings its own system message;
    ``repaired`` counts placeholder inputs and output prefixes that were cleaned up.
    """
    repaired = Counter() if repaired is None else repaired
    if not isinstance(record, dict):
        return None, "not_an_object"
    if "messages" in record:
        messages, reason = _chat_messages(record["messages"])
    elif "instruction" in record or "output" in record or "solution" in record:
        messages, reason = _instruction_messages(record, repaired)
    else:
        return None, "unknown_shape"
    if messages and system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages, reason


def iter_records(paths: Sequence[str | Path]) -> Iterator[tuple[str, Any, str | None]]:
    """Yield ``(file:line, record, None)`` or ``(file:line, None, reason)`` for every non-blank line."""
    for path in map(Path, paths):
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path.name}:{lineno}"
                try:
                    yield where, json.loads(raw.decode("utf-8")), None
                except UnicodeDecodeError:
                    yield where, None, "invalid_utf8"
                except json.JSONDecodeError:
                    yield where, None, "bad_json"


# ---------------------------------------------------------------- the dataset


def content_key(messages: Sequence[dict[str, str]]) -> str:
    """sha256 of the canonical JSON of ``messages``."""
    blob = json.dumps(list(messages), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def is_heldout(key: str, fraction: float, seed: int) -> bool:
    """Seeded, content-addressed split: the same record lands on the same side for a given seed."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction
