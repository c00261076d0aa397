"""Downstream tasks derived from the python-docs corpus: instruction pairs and docstring classification.

Input rows are cleaned-corpus documents ``(doc_id, source, text)`` (tuples or dicts). Module
documents hold one entry per documented object, opened by a Markdown heading with its
qualified name (see lmcore.data.sources.builtin)::

    ## json.dumps(obj, *, skipkeys=False, ...)

    Serialize ``obj`` to a JSON formatted ``str``. ...

Two tasks come out, each example carrying the ``doc_id`` of its document so the caller
keeps it in that document's split (a test example is never seen in training):

* :func:`instruction_pairs`: "Explain what `json.dumps` does." → the first paragraph of
  the docstring, ``{"instruction", "input", "output", "doc_id"}``;
* :func:`classification_examples`: a docstring → the module family it belongs to,
  ``{"text", "label", "doc_id"}``, with the object's own name and every module name of
  every family masked in the text, so the label cannot be read off a name.

Boilerplate docstrings (the same text under several objects, e.g. "Return self==value.")
are skipped in both. Each function also returns counts of what it skipped and why.
This module knows nothing of Dagster, tokenizers or models.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_HEADING = re.compile(r"^#{2,3} (?P<qualname>[A-Za-z_][\w.]*)(?P<signature>\(.*\))?[ \t]*$", re.M)
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)( -> .*)?$|^[\w.]+ -> .+$")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")

TEMPLATES = ("Explain what `{name}` does.", "What does `{name}` do?", "Describe `{name}` in Python.")
"""Instruction phrasings; each entry gets one, chosen by a hash of its name (deterministic)."""

FAMILIES: dict[str, tuple[str, ...]] = {
    "concurrency": ("asyncio", "concurrent", "threading", "multiprocessing"),
    "filesystem": ("os", "pathlib", "shutil", "posixpath", "ntpath", "tarfile", "zipfile", "tempfile"),
    "email": ("email", "mailbox", "smtplib", "imaplib", "poplib", "mimetypes"),
    "testing": ("unittest", "doctest", "pdb", "bdb"),
    "networking": ("socket", "ssl", "http", "urllib", "ftplib", "socketserver", "xmlrpc", "wsgiref", "nntplib"),
    "markup": ("xml", "html", "json", "csv", "configparser", "plistlib"),
}
"""Default classes of the classification task: label → top-level modules, picked for size and
coherence; modules named like English words (``trace``, ``queue``, ``glob``) are left out
because their names are masked in every text."""


@dataclass(frozen=True)
class Entry:
    """One documented object of a module document."""

    qualname: str
    signature: str
    doc: str
    doc_id: str


DERIVED = "derived:python-docs"
"""The source name profiles use for these tasks (SFT records, labeled data) instead of a file."""


def _row(row: Sequence[Any] | Mapping[str, Any]) -> tuple[str, str, str]:
    if isinstance(row, Mapping):
        return row["doc_id"], row["source"], row["text"]
    doc_id, source, text = row
    return doc_id, source, text


def iter_entries(rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> Iterator[Entry]:
    """Every ``##``/``###`` entry of every document, with the docstring up to the next heading."""
    for row in rows:
        doc_id, _, text = _row(row)
        heads = list(_HEADING.finditer(text))
        for head, nxt in zip(heads, [*heads[1:], None], strict=False):
            body = text[head.end() : nxt.start() if nxt else len(text)].strip()
            yield Entry(head["qualname"], head["signature"] or "", body, doc_id)


def _paragraphs(doc: str) -> list[str]:
    """Paragraphs with their lines joined; a first line that only restates a signature is dropped."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc) if p.strip()]
    if paras and _SIGNATURE_LINE.match(paras[0]):
        paras = paras[1:]
    return paras


def _repeats(items: list[tuple[Entry, str, str]], skipped: Counter[str]) -> list[tuple[Entry, str, str]]:
    """Drop repeated texts of ``(entry, label, text)`` items.

    A text shared by objects of different short names or labels is boilerplate ("Return
    self==value.") and every copy goes; one shared by re-exports of the same object
    (``asyncio.Future.done`` and ``asyncio.futures.Future.done``) keeps its first copy.
    """
    groups: dict[str, list[tuple[Entry, str, str]]] = {}
    for item in items:
        groups.setdefault(item[2], []).append(item)
    kept = []
    for item in items:
        group = groups[item[2]]
        if len({(e.qualname.rsplit(".", 1)[-1], label) for e, label, _ in group}) > 1:
            skipped["boilerplate"] += 1
        elif item is not group[0]:
            skipped["duplicate"] += 1
        else:
            kept.append(item)
    return kept


def _choose(name: str, options: Sequence[str]) -> str:
    return options[int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % len(options)]


def instruction_pairs(
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    *,
    min_answer_chars: int = 40,
    max_answer_chars: int = 600,
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """``[{"instruction", "input", "output", "doc_id"}]`` and skip counts by reason.

    The answer is the docstring's first paragraph (a leading signature line skipped). An
    answer shorter than ``min_answer_chars`` is trivial; a longer one than
    ``max_answer_chars`` is cut after its last full sentence that fits, and skipped when
    no sentence fits.
    """
    skipped: Counter[str] = Counter()
    candidates = []
    for e in iter_entries(rows):
        answer = (_paragraphs(e.doc) or [""])[0]
        if len(answer) > max_answer_chars:
            ends = [m.end() for m in _SENTENCE_END.finditer(answer, 0, max_answer_chars)]
            if not ends:
                skipped["answer_too_long"] += 1
                continue
            answer = answer[: ends[-1]]
        if len(answer) < min_answer_chars:
            skipped["no_docstring" if not answer else "trivial_docstring"] += 1
            continue
        candidates.append((e, "", answer))
    pairs = [
        {"instruction": _choose(e.qualname, TEMPLATES).format(name=e.qualname), "input": "", "output": answer}
        | {"doc_id": e.doc_id}
        for e, _, answer in _repeats(candidates, skipped)
    ]
    return pairs, dict(sorted(skipped.items()))


def _masker(families: Mapping[str, Sequence[str]]) -> re.Pattern[str]:
    modules = sorted({m for mods in families.values() for m in mods}, key=len, reverse=True)
    return re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, modules)) + r")\b(?:\.\w+)*", re.IGNORECASE)


def mask_names(text: str, qualname: str, module_names: re.Pattern[str]) -> str:
    """Replace the object's qualified and short name with ``<name>`` and module names with ``<module>``."""
    short = qualname.rsplit(".", 1)[-1]
    text = re.sub(rf"(?<![\w.]){re.escape(qualname)}\b", "<name>", text)
    text = re.sub(rf"(?<![\w.]){re.escape(short)}\b", "<name>", text)
    return module_names.sub("<module>", text)


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > 0 else max_chars]


def classification_examples(
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    *,
    families: Mapping[str, Sequence[str]] = FAMILIES,
    min_text_chars: int = 40,
    max_text_chars: int = 500,
    max_per_class: int | None = 300,
    seed: int = 0,
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """``[{"text", "label", "doc_id"}]`` and stats (kept per label, skipped by reason).

    The label is the family whose modules include the entry's top-level package; entries
    of other modules are left out. Text is the whole docstring with names masked (see
    :func:`mask_names`), whitespace collapsed, cut at a word boundary to
    ``max_text_chars``. Each class keeps at most ``max_per_class`` examples, sampled by a
    seeded hash of the object's name (stable when the corpus grows).
    """
    if len(families) < 2:
        raise ValueError(f"families must name at least two classes, got {list(families)}")
    owner = {m: label for label, mods in families.items() for m in mods}
    pattern = _masker(families)
    skipped: Counter[str] = Counter()
    candidates: list[tuple[Entry, str, str]] = []
    for e in iter_entries(rows):
        label = owner.get(e.qualname.split(".", 1)[0])
        if label is None:
            skipped["other_module"] += 1
            continue
        text = " ".join(" ".join(_paragraphs(e.doc)).split())
        text = _clip(mask_names(text, e.qualname, pattern), max_text_chars)
        if len(text) < min_text_chars:
            skipped["trivial_docstring"] += 1
            continue
        candidates.append((e, label, text))
    by_label: dict[str, list[tuple[str, dict[str, str]]]] = {label: [] for label in families}
    for e, label, text in _repeats(candidates, skipped):
        rank = hashlib.sha256(f"{seed}\0{e.qualname}".encode()).hexdigest()
        by_label[label].append((rank, {"text": text, "label": label, "doc_id": e.doc_id}))
    examples = []
    for items in by_label.values():
        items.sort(key=lambda item: item[0])
        if max_per_class is not None and len(items) > max_per_class:
            skipped["over_class_cap"] += len(items) - max_per_class
            items = items[:max_per_class]
        examples += [ex for _, ex in items]
    counts = Counter(ex["label"] for ex in examples)
    stats = {"labels": {label: counts[label] for label in families}, "skipped": dict(sorted(skipped.items()))}
    return examples, stats
