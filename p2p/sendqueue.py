"""A bounded per-peer queue of framed bytes: full means drop, never wait.

Bounded by frame count and by bytes, because one 4 MiB block counts the same as a 200-byte
vote when only frames are counted. Offering never blocks the caller, so a peer that stops
reading can only lose its own messages; it cannot stall consensus traffic to the others.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SendQueue:
    __slots__ = ("_bytes", "_bytes_max", "_frames", "_frames_max", "_nonempty")

    def __init__(self, frames_max: int, bytes_max: int) -> None:
        if frames_max < 1 or bytes_max < 1:
            raise ValueError("a send queue needs room for at least one frame")
        self._frames: deque[bytes] = deque()
        self._frames_max = frames_max
        self._bytes_max = bytes_max
        self._bytes = 0
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def offer(self, frame: bytes) -> bool:
        """Append `frame` if it fits both limits; False (and nothing queued) otherwise."""
        if len(self._frames) >= self._frames_max or self._bytes + len(frame) > self._bytes_max:
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        self._nonempty.set()
        return True

    async def wait_nonempty(self) -> None:
        await self._nonempty.wait()

    def take_all(self, bytes_max: int) -> list[bytes]:
        """Remove and return queued frames, oldest first, up to about `bytes_max` bytes
        (always at least one frame when any is queued)."""
        taken: list[bytes] = []
        size = 0
        while self._frames and (not taken or size + len(self._frames[0]) <= bytes_max):
            frame = self._frames.popleft()
            taken.append(frame)
            size += len(frame)
        self._bytes -= size
        if not self._frames:
            self._nonempty.clear()
        return taken
