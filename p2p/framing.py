"""Frames on the wire: a 4-byte big-endian length, then that many bytes of canonical msgpack.

A frame of length 0 is a keepalive and carries no message. Every other frame must hold
one canonical map (ledger.codec); anything else is a `FrameError` naming the reason, and
the connection that sent it is closed. The length is checked against the limit before a
single body byte is read, so a peer cannot make us buffer more than `frame_bytes_max`.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from ledger.codec import decode_map, encode
from ledger.errors import CodecError, LedgerError

LENGTH_BYTES = 4
LENGTH_MAX = 2**32 - 1
KEEPALIVE_FRAME = b"\x00\x00\x00\x00"
_LENGTH = struct.Struct(">I")


class FrameError(LedgerError):
    """A frame that breaks the wire format. `code` says which rule (for counters/logs)."""

    code = "frame_error"


def encode_frame(message: dict[str, Any]) -> bytes:
    """The framed bytes of one message map; CodecError if it is not canonically encodable."""
    if not isinstance(message, dict):
        raise CodecError(f"a frame carries a map, got {type(message).__name__}")
    body = encode(message)
    if len(body) > LENGTH_MAX:
        raise CodecError(f"message of {len(body)} bytes cannot be framed")
    return _LENGTH.pack(len(body)) + body


def parse_length(header: bytes, frame_bytes_max: int) -> int:
    """The body length announced by a 4-byte header, or FrameError when over the limit."""
    if len(header) != LENGTH_BYTES:
        raise FrameError(f"frame header is {len(header)} bytes, not {LENGTH_BYTES}", code="frame_truncated")
    (length,) = _LENGTH.unpack(header)
    if length > frame_bytes_max:
        raise FrameError(
            f"frame of {length} bytes exceeds the {frame_bytes_max}-byte limit", code="frame_oversize"
        )
    return int(length)


def decode_body(body: bytes, frame_bytes_max: int) -> dict[str, Any]:
    """The message map in a frame body, or FrameError; never another exception."""
    try:
        return decode_map(body, max_bytes=frame_bytes_max)
    except CodecError as exc:
        raise FrameError(f"frame body is not a canonical map: {exc.reason}", code="frame_undecodable") from exc


def split_frames(
    data: bytes | bytearray, frame_bytes_max: int
) -> tuple[list[dict[str, Any] | None], int, FrameError | None]:
    """Parse the complete frames at the start of `data`.

    Returns (messages, bytes consumed, error): messages in order (None for keepalives), how
    far parsing got, and the FrameError that stopped it, if any. An incomplete last frame is
    not an error: it is left unconsumed for more bytes to complete it. An oversize length is
    refused as soon as its header is in, without waiting for the body.
    """
    messages: list[dict[str, Any] | None] = []
    view = memoryview(data)
    offset = 0
    try:
        while len(data) - offset >= LENGTH_BYTES:
            length = parse_length(bytes(view[offset : offset + LENGTH_BYTES]), frame_bytes_max)
            end = offset + LENGTH_BYTES + length
            if end > len(data):
                break
            body = bytes(view[offset + LENGTH_BYTES : end])
            messages.append(decode_body(body, frame_bytes_max) if length else None)
            offset = end
    except FrameError as exc:
        return messages, offset, exc
    finally:
        view.release()
    return messages, offset, None


def decode_frames(data: bytes, frame_bytes_max: int) -> list[dict[str, Any] | None]:
    """Every frame in a complete byte string (None for keepalives), or FrameError."""
    messages, consumed, error = split_frames(data, frame_bytes_max)
    if error is not None:
        raise error
    if consumed != len(data):
        raise FrameError(f"{len(data) - consumed} bytes of an incomplete frame", code="frame_truncated")
    return messages


class FrameReader:
    """Reads frames from a stream in chunks: one await per chunk, not two per frame.

    Messages that arrived before a bad frame are still returned; the FrameError comes on
    the next call, so a peer cannot make us drop its earlier good messages by accident.
    """

    __slots__ = ("_buffer", "_bytes_read", "_error", "_frame_bytes_max", "_reader")

    CHUNK_BYTES = 256 * 1024

    def __init__(self, reader: asyncio.StreamReader, frame_bytes_max: int) -> None:
        self._reader = reader
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._error: FrameError | None = None
        self._bytes_read = 0

    def take_bytes_read(self) -> int:
        """Bytes read from the stream since the last call (for traffic counters)."""
        count, self._bytes_read = self._bytes_read, 0
        return count

    async def read_batch(self) -> list[dict[str, Any] | None]:
        """The next non-empty list of frames (None entries are keepalives).

        Raises FrameError for a bad frame and asyncio.IncompleteReadError at end of stream
        (`partial` holds the bytes of an unfinished frame, empty after a clean close).
        """
        while True:
            if self._error is not None:
                raise self._error
            chunk = await self._reader.read(self.CHUNK_BYTES)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self._buffer), None)
            self._bytes_read += len(chunk)
            self._buffer += chunk
            messages, consumed, self._error = split_frames(self._buffer, self._frame_bytes_max)
            if consumed:
                del self._buffer[:consumed]
            if messages:
                return messages


async def read_frame(reader: asyncio.StreamReader, frame_bytes_max: int) -> dict[str, Any] | None:
    """The next message from `reader` (None for a keepalive).

    Raises FrameError for a bad frame and asyncio.IncompleteReadError when the peer closes
    (cleanly between frames: `partial` is empty).
    """
    header = await reader.readexactly(LENGTH_BYTES)
    length = parse_length(header, frame_bytes_max)
    if length == 0:
        return None
    body = await reader.readexactly(length)
    return decode_body(body, frame_bytes_max)
