"""A bounded per-peer queue of framed bytes: full means drop, never wait; old means drop.

Bounded by frame count and by bytes, because one 4 MiB block counts the same as a 200-byte
vote when only frames are counted. Offering never blocks the caller, so a peer that stops
reading can only lose its own messages; it cannot stall consensus traffic to the others.

Bounded in age too: a frame that waited `ttl_s` (its peer was away) is dropped rather than
sent. Consensus retransmits what still matters and a rejoining node fetches the history,
while thousands of old votes and gossiped transactions would only be decoded,
signature-checked and thrown away by a node that is busy catching up; and a queue full of
them would refuse the fresh frames it should be holding instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class SendQueue:
    __slots__ = ("_bytes", "_bytes_max", "_clock", "_frames", "_frames_max", "_nonempty",
                 "_ttl_s", "stale_dropped")

    def __init__(self, frames_max: int, bytes_max: int, ttl_s: float = float("inf"),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if frames_max < 1 or bytes_max < 1:
            raise ValueError("a send queue needs room for at least one frame")
        if not ttl_s > 0:
            raise ValueError("a send queue's frames need a positive time to live")
        self._frames: deque[tuple[float, bytes]] = deque()  # (queued at, frame), oldest first
        self._frames_max = frames_max
        self._bytes_max = bytes_max
        self._ttl_s = ttl_s
        self._clock = clock
        self._bytes = 0
        self._nonempty = asyncio.Event()
        self.stale_dropped = 0  # frames dropped for age, since the queue was made

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def _drop_stale(self, now: float) -> None:
        frames, oldest_kept = self._frames, now - self._ttl_s
        while frames and frames[0][0] <= oldest_kept:
            self._bytes -= len(frames.popleft()[1])
            self.stale_dropped += 1
        if not frames:
            self._nonempty.clear()

    def offer(self, frame: bytes) -> bool:
        """Append `frame` if it fits both limits; False (and nothing queued) otherwise."""
        now = self._clock()
        self._drop_stale(now)
        if len(self._frames) >= self._frames_max or self._bytes + len(frame) > self._bytes_max:
            return False
        self._frames.append((now, frame))
        self._bytes += len(frame)
        self._nonempty.set()
        return True

    async def wait_nonempty(self) -> None:
        await self._nonempty.wait()

    def take_all(self, bytes_max: int) -> list[bytes]:
        """Remove and return queued frames younger than the time to live, oldest first, up
        to about `bytes_max` bytes (at least one frame when any such is queued)."""
        self._drop_stale(self._clock())
        taken: list[bytes] = []
        size = 0
        frames = self._frames
        while frames and (not taken or size + len(frames[0][1]) <= bytes_max):
            frame = frames.popleft()[1]
            taken.append(frame)
            size += len(frame)
        self._bytes -= size
        if not frames:
            self._nonempty.clear()
        return taken
