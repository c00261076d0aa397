"""SFT dataset: record adapters, bad records, holdout, packing, batches, Parquet read-back."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from lmcore.finetune.chat import ChatExample, check_example, decode_chatml, prompt_ids, render_chatml
from lmcore.finetune.records import is_heldout, record_to_messages
from lmcore.finetune.sft_data import (
    SftDataConfig,
    SFTExample,
    build_sft_dataset,
    pack_examples,
    read_sft_dataset,
    row_tensors,
    sft_batches,
    write_sft_dataset,
)
from lmcore.model.gpt import GPT, tiny
from tests.conftest import FIXTURES

RECORDS = FIXTURES / "sft" / "records.jsonl"
PAD = 1


def _build(tok, paths=RECORDS, *, context_length=64, heldout_paths=(), report_lines=5, **config):
    config = SftDataConfig(**{"holdout_fraction": 0.0, "seed": 0, "pack": False, **config})
    return build_sft_dataset(
        paths, tok, config, context_length=context_length, heldout_paths=heldout_paths, report_lines=report_lines
    )


def test_bad_records_are_counted_by_reason_with_their_lines(tok):
    train, heldout, stats = _build(tok)
    assert stats["records"] == 20 and stats["kept"] == len(train) == 8 and heldout == []
    assert stats["skipped"] == {
        "bad_json": 1,
        "bad_messages": 1,
        "duplicate": 1,
        "empty_instruction": 1,
        "empty_output": 2,
        "last_message_not_assistant": 1,
        "missing_instruction": 1,
        "non_string_input": 1,
        "not_an_object": 1,
        "placeholder_output": 1,
        "unknown_shape": 1,
    }
    assert stats["skipped_lines"]["empty_output"] == ["records.jsonl:6", "records.jsonl:21"]
    assert stats["skipped_lines"]["bad_json"] == ["records.jsonl:4"]
    assert stats["skipped_lines"]["duplicate"] == ["records.jsonl:18"]
    assert stats["repaired"] == {"placeholder_input": 2, "placeholder_output_prefix": 1}
    assert stats["truncated"] == 0 and stats["dropped_after_truncation"] == 0
    # every kept example decodes back to a well-formed conversation with the mask on the answers only
    for ex in train:
        assert check_example(decode_chatml(ex.ids, tok), ChatExample(ids=ex.ids, mask=ex.mask), tok) == []
    answers = {decode_chatml(ex.ids, tok)[-1]["content"] for ex in train}
    assert {"The sky turns orange and pink.", "[3, 2, 1]", "<|im_end|>"} <= answers


def test_report_lines_caps_the_kept_places(tok):
    _, _, stats = _build(tok, report_lines=1)
    assert stats["skipped_lines"]["empty_output"] == ["records.jsonl:6"] and stats["skipped"]["empty_output"] == 2


def test_record_adapters():
    msgs, reason = record_to_messages(
        {"instruction": "Add.", "input": "2 + 2", "output": "4"}, system_prompt="Be nice."
    )
    assert reason is None and msgs == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Add.\n\n2 + 2"},
        {"role": "assistant", "content": "4"},
    ]
    msgs, _ = record_to_messages({"instruction": "Add.", "input": "<No Input>", "output": "4"})
    assert msgs == [{"role": "user", "content": "Add."}, {"role": "assistant", "content": "4"}]
    own_system = {"messages": [{"role": "system", "content": "S"}, *msgs]}
    assert record_to_messages(own_system, system_prompt="other")[0][0]["content"] == "S"
    assert record_to_messages({"instruction": "Add.", "solution": ""}) == (None, "empty_solution")
    assert record_to_messages({"instruction": "Add.", "output": 4}) == (None, "non_string_output")
    assert record_to_messages({"messages": [{"role": "assistant", "content": "x"}]}) == (None, "no_user_message")


def test_invalid_utf8_and_missing_files(tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"instruction": "Say hi.", "output": "Hi."}).encode()
    path.write_bytes(good + b"\n" + b'{"instruction": "\xff\xfe", "output": "x"}\n')
    train, _, stats = _build(tok, path)
    assert len(train) == 1 and stats["skipped_lines"] == {"invalid_utf8": ["bad.jsonl:2"]}
    with pytest.raises(ValueError, match="nope.jsonl: no such file"):
        _build(tok, [path, tmp_path / "nope.jsonl"])
    with pytest.raises(ValueError, match="holdout_fraction"):
        _build(tok, path, holdout_fraction=1.0)


def test_truncation_and_drops_are_counted(tok, tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [
        {"instruction": "word " * 100 + "Summarize.", "output": "Done."},  # cut from the left of the question
        {"instruction": "Hi.", "output": "long answer " * 100},  # cut at the end
        {"instruction": "question " * 100, "output": "answer " * 100},  # nothing of the answer fits
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, _, stats = _build(tok, path, context_length=32)
    assert stats["truncated"] == 3 and stats["dropped_after_truncation"] == 1 and len(train) == 2
    assert stats["skipped_lines"] == {"no_assistant_tokens_after_truncation": ["long.jsonl:3"]}
    assert all(len(e.ids) <= 33 for e in train)


def test_holdout_is_seeded_content_hash(tok):
    keys = [f"{i:08d}" for i in range(4000)]
    share = sum(is_heldout(k, 0.2, seed=1) for k in keys) / len(keys)
    assert 0.17 < share < 0.23
    assert [is_heldout(k, 0.2, 1) for k in keys] != [is_heldout(k, 0.2, 2) for k in keys]
    train, heldout, _ = _build(tok, holdout_fraction=0.5, seed=3)
    train2, heldout2, _ = _build(tok, holdout_fraction=0.5, seed=3)
    assert [e.key for e in heldout] == [e.key for e in heldout2] and heldout and train
    for ex in heldout:  # held-out rows carry what generation and ROUGE need
        assert ex.reference and ex.prompt == ex.prompt_messages[-1]["content"]
        assert ex.ids[: len(prompt_ids(ex.prompt_messages, tok))] == prompt_ids(ex.prompt_messages, tok)


def test_heldout_paths_are_all_held_and_win_duplicates(tok, tmp_path):
    held = tmp_path / "test_records.jsonl"
    held.write_text(json.dumps({"instruction": "Name three primary colors.", "output": "Red, yellow and blue."}) + "\n")
    train, heldout, stats = _build(tok, heldout_paths=[held])
    assert len(heldout) == 1 and heldout[0].reference == "Red, yellow and blue."
    assert stats["skipped"]["duplicate"] == 2 and len(train) == 7  # both train copies of the held-out record


def test_write_and_read_back(tok, tmp_path):
    train, heldout, stats = _build(tok, holdout_fraction=0.4, seed=0, pack=True)
    manifest = write_sft_dataset(tmp_path / "sft", train, heldout, stats)
    assert manifest["files"]["train"]["rows"] == len(train) == stats["rows"]
    train2, heldout2, manifest2 = read_sft_dataset(tmp_path / "sft")
    assert train2 == train and heldout2 == heldout and manifest2 == json.loads(json.dumps(manifest))
    (tmp_path / "sft" / "train.parquet").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="sha256 differs"):
        read_sft_dataset(tmp_path / "sft")
    with pytest.raises(FileNotFoundError, match="build the dataset"):
        read_sft_dataset(tmp_path / "none")


def _examples(tok, n: int) -> list[SFTExample]:
    out = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"Q{i}" + "x" * (i % 3)},
            {"role": "assistant", "content": "A" + "y" * (3 * i % 5)},
        ]
        ex = render_chatml(messages, tok, context_length=64)
        out.append(SFTExample(ids=ex.ids, mask=ex.mask))
    return out


def test_packing_keeps_every_example_whole_and_fits_the_window(tok):
    examples = _examples(tok, 12)
    rows = pack_examples(examples, 64)
    assert len(rows) < len(examples)
    assert all(len(r.ids) - len(r.segments) <= 64 for r in rows)
    pieces = []
    for r in rows:
        offset = 0
        for n in r.segments:
            pieces.append((tuple(r.ids[offset : offset + n]), tuple(r.mask[offset : offset + n])))
            offset += n
    assert Counter(pieces) == Counter((tuple(e.ids), tuple(e.mask)) for e in examples)
    assert pack_examples(examples, 64) == rows  # deterministic
    with pytest.raises(ValueError, match="context_length"):
        pack_examples(examples, 8)


def test_batches_mask_targets_and_pad(tok):
    examples = _examples(tok, 5)
    batches = list(sft_batches(examples, batch_size=2, context_length=64, seed=0, pad_id=PAD))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1] and all(b[2] is None for b in batches)
    again = list(sft_batches(examples, batch_size=2, context_length=64, seed=0, pad_id=PAD))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    seen = 0
    for x, y, _ in batches:
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
            ex = next(e for e in examples if e.ids[:-1] == row_x[: len(e.ids) - 1])
            n = len(ex.ids) - 1
            assert row_x[n:] == [PAD] * (len(row_x) - n) and row_y[n:] == [-100] * (len(row_y) - n)
            assert row_y[:n] == [t if m else -100 for t, m in zip(ex.ids[1:], ex.mask[1:], strict=True)]
            seen += 1
    assert seen == 5
    with pytest.raises(ValueError, match="exceed context_length"):
        next(sft_batches(examples, batch_size=2, context_length=8, seed=0, pad_id=PAD))


def test_packed_forward_equals_each_example_alone(tok):
    """Block-diagonal attention: logits of a packed row equal those of each example run alone (RoPE)."""
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=tok.get_vocab_size(), arch="modern", context_length=96)).eval()
    examples = _examples(tok, 3)
    (row,) = pack_examples(examples, 96)
    assert len(row.segments) == 3
    x, y, segs = (torch.tensor([c]) for c in row_tensors(row, 96, PAD))  # 3 examples, then padding
    with torch.no_grad():
        packed, _ = model(x, segment_ids=segs)
        start = position = 0
        for n in row.segments:
            alone, _ = model(torch.tensor([row.ids[start : start + n - 1]]))  # positions restart at 0 here
            assert torch.allclose(packed[0, position : position + n - 1], alone[0], atol=1e-5)
            start, position = start + n, position + n - 1
        _, loss_packed = model(x, y, segment_ids=segs)
        assert torch.isfinite(loss_packed)
    # without segment ids the later examples would see the earlier ones: the check above can fail
    with torch.no_grad():
        leaky, _ = model(x)
    assert not torch.allclose(leaky, packed, atol=1e-5)


def test_the_assets_config_is_the_lmcore_config_plus_the_records():
    from assets.finetune.sft_data import SftDatasetConfig

    assert SftDatasetConfig().to_lmcore() == SftDataConfig(), "one set of defaults"
    config = SftDatasetConfig(records=["a.jsonl"], holdout_fraction=0.4, pack=False, system_prompt="Be nice.")
    assert config.to_lmcore() == SftDataConfig(holdout_fraction=0.4, pack=False, system_prompt="Be nice.")
    with pytest.raises(ValueError, match="holdout_fraction must be in"):
        SftDatasetConfig(holdout_fraction=1.0).to_lmcore()
