"""zstd streams read whole or not at all: a truncated file raises instead of reading as a shorter one."""

from __future__ import annotations

import io
from typing import BinaryIO

_INPUT_PIECE = 1 << 12  # a zstd block of 3 bytes can decode to 128 KiB: keep pieces small


class ZstdReader(io.RawIOBase):
    """The decompressed bytes of a zstd stream of one or more frames.

    ``ZstdDecompressor.stream_reader`` returns the bytes decoded so far when the input ends inside
    a frame, so a truncated file would read as a short, whole-looking one; this raises ``ZstdError``
    instead. Input is fed in small pieces so that one read's output stays bounded.
    """

    def __init__(self, stream: BinaryIO) -> None:
        import zstandard

        self._stream = stream
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._in_frame = False  # input of the current frame has been fed, and it has not ended
        self._out = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        import zstandard

        while self._pos >= len(self._out):
            data = self._stream.read(_INPUT_PIECE)
            if not data:
                if self._in_frame:
                    raise zstandard.ZstdError("the data ends inside a zstd frame (the file is cut short)")
                return 0
            self._out, self._pos = self._feed(data), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_frame = True
            out.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data, self._frame, self._in_frame = self._frame.unused_data, self._dctx.decompressobj(), False
        return b"".join(out)
