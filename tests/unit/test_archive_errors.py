"""Truncated or corrupt compressed files and archives: one error naming the file, never short or garbled text."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard

from lmcore.data.sources.formats import read_file
from lmcore.data.sources.policy import ReadContext

BOOK = "".join(f"Line {i} of a book, with ünïcode.\n" for i in range(20_000)).encode()


def _read(path: Path, ctx: ReadContext | None = None) -> list[tuple[str, int, str]]:
    ctx = ctx or ReadContext()
    items = list(read_file(path, path.name, str(path), ctx))
    ctx.problems.raise_if_any()
    return items


def _tar(data: bytes, name: str = "book.txt") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("book.txt", data)
    return out.getvalue()


COMPRESS = {
    "book.txt.zst": zstandard.ZstdCompressor().compress,
    "book.jsonl.zst": lambda b: zstandard.ZstdCompressor().compress(
        b"".join(b'{"text": "%s"}\n' % line for line in b.splitlines())
    ),
    "book.txt.gz": gzip.compress,
    "book.zip": _zip,
    "book.tar.gz": lambda b: gzip.compress(_tar(b)),
    "book.tar.zst": lambda b: zstandard.ZstdCompressor().compress(_tar(b)),
    "book.tar": _tar,
}
CHECKER = {".zst": "zstd -t", ".gz": "gzip -t", ".zip": "unzip -t", ".tar": "tar -tf"}


@pytest.mark.parametrize("name", sorted(COMPRESS))
def test_truncated_archive_is_an_error_naming_the_file(tmp_path, name):
    whole = COMPRESS[name](BOOK)
    path = tmp_path / name
    path.write_bytes(whole)
    assert sum(len(t) for _, _, t in _read(path)) > 0  # the whole file reads
    path.write_bytes(whole[: len(whole) // 2])
    checker = CHECKER[Path(name).suffix]
    for policy in ("error", "replace", "skip"):  # a reading policy never turns damage into text
        with pytest.raises(ValueError, match=rf"^{path}: truncated/corrupt archive .*re-download.*`{checker} FILE`"):
            _read(path, ReadContext(invalid_utf8=policy, on_bad_record="skip" if policy == "skip" else "error"))


def test_corrupt_zstd_with_a_checksum_is_an_error_not_invalid_utf8(tmp_path):
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(BOOK))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "book.txt.zst"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"book\.txt\.zst: truncated/corrupt archive") as err:
        _read(path)
    assert "UTF-8" not in str(err.value) and "replace" not in str(err.value)


def _raw_zstd_frame(data: bytes) -> bytes:
    """A zstd frame holding ``data`` as one raw block, without a checksum: damage to it cannot be detected."""
    assert len(data) < 256
    return b"\x28\xb5\x2f\xfd" + bytes([0x20, len(data)]) + ((len(data) << 3) | 1).to_bytes(3, "little") + data


def test_undetectable_zstd_damage_is_reported_as_a_likely_corrupt_archive_first(tmp_path):
    text = "Ein Buch über Bücher.\n".encode()
    assert zstandard.ZstdDecompressor().decompress(_raw_zstd_frame(text)) == text
    path = tmp_path / "book.txt.zst"
    path.write_bytes(_raw_zstd_frame(text.replace("ü".encode(), b"\xff\xfc", 1)))
    with pytest.raises(ValueError, match=r"book\.txt\.zst: not valid UTF-8 after decompression") as err:
        _read(path)
    message = str(err.value)
    assert message.index("truncated/corrupt archive") < message.index("invalid_utf8='replace'")


def test_damage_inside_a_gzip_replaces_the_errors_its_bytes_caused(tmp_path):
    lines = b"".join(b'{"text": "record %d"}\n' % i for i in range(5000))
    data = bytearray(gzip.compress(lines))
    data[len(data) // 2] ^= 0xFF  # the CRC at the end tells, after the garbled lines were read
    path = tmp_path / "records.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        _read(path)
    assert "truncated/corrupt archive" in str(err.value)
    assert "not valid JSON" not in str(err.value) and "UTF-8" not in str(err.value)


def test_multi_frame_zstd_reads_every_frame(tmp_path):
    path = tmp_path / "two.txt.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"first ") + zstandard.ZstdCompressor().compress(b"second"))
    assert _read(path) == [("", 0, "first second")]
