"""Token shards: the writer, tokenize_splits, and per-partition tokenization gathered by assemble_shards."""

import os

import numpy as np
import pytest

from lmcore.data.shards import (
    EncodeConfig,
    TokenShardWriter,
    assemble_shards,
    load_manifest,
    open_split,
    split_groups,
    token_dtype,
    tokenize_partition,
    tokenize_splits,
    verify_shards,
)
from lmcore.data.tokenizer import EOT, TokenizerConfig, train_tokenizer
from lmcore.io import ParquetShardWriter


def test_dtype_follows_vocabulary_size():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


def test_writer_rotates_and_reads_back_across_shards(tmp_path):
    data = np.arange(10_000, dtype=np.uint32) % 60000
    with TokenShardWriter(tmp_path / "train", np.uint16, shard_tokens=3000) as w:
        for chunk in np.array_split(data, 7):
            w.add(chunk)
    assert [s["tokens"] for s in w.shards] == [3000, 3000, 3000, 1000]
    from lmcore.data.shards import write_manifest

    write_manifest(tmp_path, {"train": {"shards": w.shards, "tokens": w.tokens, "documents": 1}})
    got = open_split(tmp_path, "train")
    assert np.array_equal(np.concatenate(got.arrays), data)
    assert got.arrays[0].dtype == np.uint16 and got.num_tokens == 10_000


def test_writer_refuses_ids_that_do_not_fit(tmp_path):
    with TokenShardWriter(tmp_path, np.uint16) as w, pytest.raises(ValueError, match="does not fit"):
        w.add(np.array([70000], dtype=np.uint32))


def _docs(tmp_path, texts, specs=None, name="docs", first=0):
    """Document shards (DOCUMENT_SCHEMA) of ``texts``, doc ids ``first``, ``first + 1``, ..."""
    with ParquetShardWriter(tmp_path / name, max_bytes=2000, batch_rows=4) as w:
        for i, t in enumerate(texts):
            w.write({"doc_id": str(first + i), "source": "t", "spec": specs[i] if specs else "t", "text": t})
    return [tmp_path / name / s["path"] for s in w.shards]


def _decode_docs(tok, tokens: np.ndarray) -> list[str]:
    """The documents of a token stream: split after each <|endoftext|>."""
    assert tokens.size == 0 or tokens[-1] == tok.eot_id, "a stream ends with <|endoftext|>"
    docs = np.split(tokens, np.flatnonzero(tokens == tok.eot_id) + 1)[:-1]
    return [tok.decode(d[:-1].tolist(), skip_special_tokens=False) for d in docs]


def _paragraphs(small_texts: list[str]) -> list[str]:
    return [p.strip() for t in small_texts for p in t.split("\n\n") if p.strip()]


def test_tokenize_splits_separates_documents_with_eot_and_roundtrips(tmp_path, small_tokenizer, small_texts):
    tok, _ = small_tokenizer
    paths = _docs(tmp_path, small_texts)
    eot = tok.token_to_id(EOT)
    manifest = tokenize_splits(tok, {"train": paths}, tmp_path / "out", shard_tokens=500, batch_size=3)
    tokens = np.concatenate(open_split(tmp_path / "out", "train").arrays)
    assert manifest["splits"]["train"]["tokens"] == tokens.size
    assert int((tokens == eot).sum()) == len(small_texts) == manifest["splits"]["train"]["documents"]
    docs = np.split(tokens, np.flatnonzero(tokens == eot) + 1)[:-1]
    decoded = [tok.decode(d[:-1].tolist(), skip_special_tokens=False) for d in docs]
    assert decoded == small_texts
    assert verify_shards(tmp_path / "out") == []


def test_verify_detects_a_corrupted_shard(tmp_path, small_tokenizer, small_texts):
    tok, _ = small_tokenizer
    tokenize_splits(tok, {"train": _docs(tmp_path, small_texts)}, tmp_path / "out", shard_tokens=500)
    shard = tmp_path / "out" / "train" / "shard-00001.arrow"
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = verify_shards(tmp_path / "out")
    assert len(problems) == 1 and "shard-00001.arrow" in problems[0]


def test_missing_manifest_says_which_asset_to_materialize(tmp_path):
    with pytest.raises(FileNotFoundError, match="token_shards"):
        open_split(tmp_path, "train")


# ---------------------------------------------------------------- per partition, then assembled


def test_tokenize_partition_groups_by_split_and_spec_and_skips_unlisted_documents(tmp_path, tok, small_texts):
    texts = _paragraphs(small_texts)
    specs = ["spec-b" if i % 2 else "spec-a" for i in range(len(texts))]
    paths = _docs(tmp_path, texts, specs)
    assert len(paths) > 1 and len(texts) >= 20
    splits_of = {str(i): ("val" if i % 3 == 0 else "train") for i in range(len(texts)) if i % 5 != 4}
    out = tmp_path / "part"
    manifest = tokenize_partition(
        tok, paths, splits_of, out, settings=EncodeConfig(shard_tokens=200, batch_size=2), note="kept"
    )
    assert manifest["note"] == "kept" and manifest["vocab_size"] == 300 and manifest["dtype"] == "uint16"
    assert verify_shards(out) == []
    for split in ("train", "val"):
        info = manifest["splits"][split]
        ids = [i for i in range(len(texts)) if splits_of.get(str(i)) == split]
        assert info["documents"] == len(ids) and info["bytes"] == sum(len(texts[i].encode()) for i in ids)
        arrays = open_split(out, split).arrays
        assert info["tokens"] == sum(a.size for a in arrays) == sum(s["tokens"] for s in info["shards"])
        assert [s["spec"] for s in info["shards"]] == split_groups(out, split)
        for spec in ("spec-a", "spec-b"):
            mine = [a for a, s in zip(arrays, info["shards"], strict=True) if s["spec"] == spec]
            assert len(mine) > 1  # shard_tokens=200 rotates within a group
            stream = np.concatenate(mine)
            # one run of shards per spec, its documents in input order, the unlisted ones left out
            assert _decode_docs(tok, stream) == [texts[i] for i in ids if specs[i] == spec]
    assert manifest["splits"]["test"] == {"documents": 0, "tokens": 0, "bytes": 0, "shards": []}
    assert not (out / "test").exists()


def test_assemble_shards_links_partitions_in_order_and_counts_tokens_per_source(tmp_path, tok, small_texts):
    texts = _paragraphs(small_texts)
    half = len(texts) // 2
    parts = {}
    for key, first, chunk, spec in (("01", half, texts[half:], "spec-b"), ("00", 0, texts[:half], "spec-a")):
        paths = _docs(tmp_path, chunk, [spec] * len(chunk), name=f"docs-{key}", first=first)
        splits_of = {str(first + i): ("test" if i % 4 == 0 else "train") for i in range(len(chunk))}
        tokenize_partition(tok, paths, splits_of, tmp_path / f"tok-{key}", settings=EncodeConfig(shard_tokens=300))
        parts[key] = tmp_path / f"tok-{key}"  # "01" first: the assembled order must not follow the dict
    per = {k: load_manifest(parts[k])["splits"] for k in ("00", "01")}
    out = tmp_path / "assembled"
    manifest = assemble_shards(parts, out, tokenizer_sha256="abc")
    assert manifest == load_manifest(out)
    assert manifest["tokenizer_sha256"] == "abc" and manifest["eot_id"] == tok.eot_id
    assert verify_shards(out) == []
    for split in ("train", "test"):
        info = manifest["splits"][split]
        counts = [len(per[k][split]["shards"]) for k in ("00", "01")]
        assert counts[0] > 1 and counts[1] > 1
        assert [s["partition"] for s in info["shards"]] == ["00"] * counts[0] + ["01"] * counts[1]
        assert [s["path"] for s in info["shards"]] == [f"shard-{i:05d}.arrow" for i in range(sum(counts))]
        assert split_groups(out, split) == ["spec-a"] * counts[0] + ["spec-b"] * counts[1]
        whole = np.concatenate(open_split(out, split).arrays)
        pieces = [np.concatenate(open_split(parts[k], split).arrays) for k in ("00", "01")]
        assert np.array_equal(whole, np.concatenate(pieces))  # partition order, nothing re-encoded
        for field in ("documents", "bytes", "tokens"):
            assert info[field] == per["00"][split][field] + per["01"][split][field]
        assert info["tokens"] == whole.size
        linked = out / split / info["shards"][0]["path"]
        assert os.stat(linked).st_ino == os.stat(parts["00"] / split / per["00"][split]["shards"][0]["path"]).st_ino
    assert manifest["splits"]["val"] == {"documents": 0, "tokens": 0, "bytes": 0, "shards": []}
    assert manifest["sources"] == {
        spec: {s: per[k][s]["tokens"] for s in ("train", "val", "test")}
        for spec, k in (("spec-a", "00"), ("spec-b", "01"))
    }
    # a corrupted assembled shard is found (unlink first: the partition's linked file stays intact)
    first = out / "train" / "shard-00000.arrow"
    raw = bytearray(first.read_bytes())
    raw[-100] ^= 0xFF
    first.unlink()
    first.write_bytes(bytes(raw))
    assert verify_shards(out) == [f"{first}: sha256 does not match the manifest"]
    assert verify_shards(parts["00"]) == []


def test_assemble_shards_refuses_partitions_of_different_tokenizers(tmp_path, tok, small_texts):
    other = train_tokenizer(TokenizerConfig(vocab_size=280), small_texts, tmp_path / "other.json")
    paths = _docs(tmp_path, small_texts)
    splits_of = {str(i): "train" for i in range(len(small_texts))}
    tokenize_partition(tok, paths, splits_of, tmp_path / "a")
    tokenize_partition(other, paths, splits_of, tmp_path / "b")
    with pytest.raises(ValueError, match="different tokenizers.*re-materialize every partition"):
        assemble_shards({"00": tmp_path / "a", "01": tmp_path / "b"}, tmp_path / "out")
