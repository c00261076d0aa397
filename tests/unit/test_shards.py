import numpy as np
import pytest

from lmcore.data.shards import TokenShardWriter, open_split, token_dtype, tokenize_splits, verify_shards
from lmcore.data.tokenizer import EOT
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


def _docs(tmp_path, texts):
    with ParquetShardWriter(tmp_path / "docs") as w:
        for i, t in enumerate(texts):
            w.write({"doc_id": str(i), "source": "t", "text": t})
    return [tmp_path / "docs" / s["path"] for s in w.shards]


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
