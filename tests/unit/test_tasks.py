"""Tasks derived from python-docs documents: instruction pairs and docstring classification."""

from __future__ import annotations

import json
import re

import pytest

from lmcore.finetune.tasks import FAMILIES, classification_examples, instruction_pairs, iter_entries
from tests.conftest import FIXTURES

DOCS = FIXTURES / "sft" / "python_docs.jsonl"


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in DOCS.read_text().splitlines()]


def test_entries_are_split_at_headings(rows):
    entries = list(iter_entries(rows))
    names = [e.qualname for e in entries]
    assert names[:3] == ["json.dumps", "json.loads", "json.JSONDecoder.decode"]
    assert "json.JSONEncoder.copy" in names and "colorsys.rgb_to_hsv" in names
    dumps = entries[0]
    assert dumps.signature == "(obj, *, skipkeys=False, indent=None)" and dumps.doc_id == "doc00"
    assert dumps.doc.startswith("Serialize") and "## json.loads" not in dumps.doc


def test_instruction_pairs(rows):
    pairs, skipped = instruction_pairs(rows)
    by_name = {re.search(r"`(.+?)`", p["instruction"])[1]: p for p in pairs}
    assert by_name["json.dumps"]["output"] == (
        "Serialize ``obj`` to a JSON formatted ``str``. If ``skipkeys`` is true then dict keys that are not "
        "basic types are skipped."
    )
    assert by_name["json.dumps"]["doc_id"] == "doc00" and by_name["json.dumps"]["input"] == ""
    assert by_name["json.loads"]["output"].startswith("Deserialize")  # the signature line is not an answer
    # a re-exported object keeps one copy; short docstrings are trivial
    assert "asyncio.Future.done" in by_name and "asyncio.futures.Future.done" not in by_name
    assert "os.getcwd" not in by_name and "json.JSONEncoder.copy" not in by_name
    assert skipped == {"duplicate": 1, "trivial_docstring": 3}
    assert len(pairs) == 13 and len({p["instruction"] for p in pairs}) == 13


def test_instruction_answers_are_capped_at_a_sentence(rows):
    pairs, skipped = instruction_pairs(rows, max_answer_chars=80)
    for p in pairs:
        assert len(p["output"]) <= 80 and p["output"].endswith((".", "!", "?"))
    assert skipped["answer_too_long"] > 0


def test_boilerplate_shared_by_different_objects_is_dropped():
    doc = "Return self==value, compared field by field."
    text = f"## a.one()\n\n{doc}\n\n## a.two()\n\n{doc}\n"
    pairs, skipped = instruction_pairs([("d1", "s", text)])
    assert pairs == [] and skipped == {"boilerplate": 2}


def test_classification_labels_masking_and_doc_ids(rows):
    examples, stats = classification_examples(rows)
    labels = {e["label"] for e in examples}
    assert labels == {"markup", "concurrency", "filesystem", "testing"}
    assert stats["labels"]["email"] == 0 and stats["skipped"]["other_module"] == 1  # colorsys
    modules = {m for mods in FAMILIES.values() for m in mods}
    for e in examples:
        words = set(re.findall(r"[A-Za-z]+", e["text"].lower()))
        assert not words & modules, e["text"]
        assert e["doc_id"].startswith("doc")
    texts = {e["text"] for e in examples}
    assert "Return a list containing the names of the files in the directory." in " ".join(texts)
    wrap = next(e for e in examples if "Wrap" in e["text"])
    assert wrap["text"].startswith("Wrap <module> object into an <module> Future object") and wrap["doc_id"] == "doc02"


def test_classification_cap_and_bad_families(rows):
    examples, stats = classification_examples(rows, max_per_class=1, seed=0)
    assert sorted(e["label"] for e in examples) == ["concurrency", "filesystem", "markup", "testing"]
    again, _ = classification_examples(rows, max_per_class=1, seed=0)
    assert again == examples and stats["skipped"]["over_class_cap"] > 0
    with pytest.raises(ValueError, match="at least two classes"):
        classification_examples(rows, families={"only": ("json",)})
