"""Ed25519 checks in a child process, for bulk work (a catch-up's txs and certificates).

Why a process and not more threads: libsodium releases the GIL inside a verify, but a
verify thread needs the GIL back after every signature, and while the event loop runs
Python it gets it only at the interpreter's next forced switch (5 ms). A syncing node's
loop runs Python almost all the time, so its verify threads crawled while it executed and
the loop then waited for them (PERF_FINDINGS S12: verifying on the loop itself, with no
threads at all, synced faster). A child process has its own interpreter and GIL; the loop
only decodes, sends (public key, message, signature) triples and reads back one byte each.

The child is `python -m ledger.signature_process` with pipes for stdin and stdout:
    request:  4-byte big-endian length, then msgpack [[public key, message, signature], ...]
    answer:   4-byte big-endian length, then one byte per triple (1 valid, 0 not)
Answers come in request order. The child exits when its stdin closes (its parent stopped
or died). Multiprocessing's spawn would re-import the node's main module in the child;
a plain subprocess starts in ~40 ms with only ledger.crypto and msgpack loaded.

If the child dies or answers out of shape, `SignatureProcess` turns broken: every waiting
and later `check` raises SignatureProcessError, and callers check those signatures themselves.

Two small threads move the bytes (blocking pipe I/O releases the GIL): one writes queued
requests, so the child always has work waiting; one reads answers and hands each to the
loop. The loop never blocks on the child, and nothing here needs a task to be cancelled
cleanly (an asyncio subprocess cancelled while starting could wait forever for its child).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, BinaryIO

import msgpack

from ledger.crypto import verify
from ledger.signature_cache import Triple

log = logging.getLogger("cityledger.signatures")

_LENGTH = struct.Struct(">I")
# A request is at most this big; the parent sends far less (a fetched range's txs).
REQUEST_BYTES_MAX = 64 * 2**20
STOP_TIMEOUT_S = 1.0


class SignatureProcessError(Exception):
    """The child is not running (not started, stopped or died)."""


class SignatureProcess:
    """One child process checking signature triples in order; see the module docstring."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        # (triples asked, future) per request in flight, oldest first; loop thread only.
        self._waiting: deque[tuple[int, asyncio.Future[list[bool]]]] = deque()
        self.state = "idle"  # -> ready -> broken | stopped
        self.checked = 0  # triples answered by the child

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> None:
        """Start the child (once); checks can be sent at once, it answers when it is up."""
        if self.state != "idle":
            return
        env = dict(os.environ)
        # The child must import this checkout's ledger package, wherever it was started.
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._loop = asyncio.get_running_loop()
        try:
            child = subprocess.Popen([sys.executable, "-m", "ledger.signature_process"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as exc:
            self._break(f"cannot start the signature process: {exc}")
            return
        assert child.stdin is not None and child.stdout is not None
        self._child = child
        self.state = "ready"
        threading.Thread(target=self._write_requests, args=(child.stdin,),
                         name="signature-requests", daemon=True).start()
        threading.Thread(target=self._read_answers, args=(child.stdout, child.pid),
                         name="signature-answers", daemon=True).start()
        log.info("signature process %d started", child.pid)

    async def check(self, triples: Sequence[Triple]) -> list[bool]:
        """Whether each (public key, message, signature) is valid, in order."""
        if not triples:
            return []
        if self.state != "ready" or self._loop is None:
            raise SignatureProcessError(f"the signature process is {self.state}")
        body = msgpack.packb(list(triples), use_bin_type=True)  # tuples pack as arrays
        if len(body) > REQUEST_BYTES_MAX:
            raise SignatureProcessError(f"a request of {len(body)} bytes is too large")
        future: asyncio.Future[list[bool]] = self._loop.create_future()
        self._waiting.append((len(triples), future))
        self._requests.put(_LENGTH.pack(len(body)) + body)
        return await future

    def close(self) -> None:
        """Stop the child and reap it; waiting checks raise SignatureProcessError."""
        self.state = "stopped"
        self._fail_waiting("the signature process stopped")
        child = self._child
        if child is None:
            return
        self._requests.put(None)  # the writer closes the child's stdin and the child exits
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    # -- the loop's side of the answers -----------------------------------------------------
    def _answer(self, answer: bytes) -> None:
        if self.state != "ready":
            return
        if not self._waiting:
            self._break("the signature process answered a request nobody sent")
            return
        count, future = self._waiting[0]
        if len(answer) != count:  # _break fails this request too
            self._break(f"the signature process gave {len(answer)} answers for {count}")
            return
        self._waiting.popleft()
        self.checked += count
        if not future.done():
            future.set_result([byte == 1 for byte in answer])

    def _ended(self, pid: int) -> None:
        if self.state == "ready":
            self._break(f"signature process {pid} ended")

    def _break(self, reason: str) -> None:
        log.warning("%s; the node checks signatures itself from now on", reason)
        self.state = "broken"
        self._fail_waiting(reason)
        if self._child is not None and self._child.poll() is None:
            self._child.kill()  # it may be alive but out of step: it must not answer again

    def _fail_waiting(self, reason: str) -> None:
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(SignatureProcessError(reason))

    # -- the two I/O threads ----------------------------------------------------------------
    def _write_requests(self, stdin: IO[bytes]) -> None:
        while (request := self._requests.get()) is not None:
            try:
                stdin.write(request)
                stdin.flush()
            except (OSError, ValueError):
                break  # the child is gone; the reader sees its output end
        with contextlib.suppress(OSError):
            stdin.close()

    def _read_answers(self, stdout: IO[bytes], pid: int) -> None:
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: no one to tell
            while (head := _read_exactly(stdout, _LENGTH.size)) is not None:
                answer = _read_exactly(stdout, _LENGTH.unpack(head)[0])
                if answer is None:
                    break
                loop.call_soon_threadsafe(self._answer, answer)
            loop.call_soon_threadsafe(self._ended, pid)


def _read_exactly(stream: BinaryIO | IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def worker_main() -> int:
    """The child: answer requests from stdin on stdout until stdin closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read_exactly(stdin, _LENGTH.size)
        if head is None:
            return 0
        size = _LENGTH.unpack(head)[0]
        if size > REQUEST_BYTES_MAX:
            return 2
        body = _read_exactly(stdin, size)
        if body is None:
            return 0
        triples = msgpack.unpackb(body, raw=False)
        answer = bytes(1 if verify(key, message, signature) else 0
                       for key, message, signature in triples)
        stdout.write(_LENGTH.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(worker_main())
