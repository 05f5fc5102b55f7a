"""SignatureProcess: Ed25519 checks in a real child process, in order, and what happens
when the child is not there (never started, stopped, killed, out of step)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import sys
from collections.abc import Collection

import msgpack
import pytest

from ledger.crypto import KeyPair
from ledger.signature_cache import Triple
from ledger.signature_process import (
    REQUEST_BYTES_MAX,
    SignatureProcess,
    SignatureProcessError,
    worker_main,
)


def _triples(count: int, forged: Collection[int] = ()) -> list[Triple]:
    key = KeyPair.generate()
    out: list[Triple] = []
    for index in range(count):
        message = f"message {index}".encode()
        signature = key.sign(message)
        if index in forged:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        out.append((key.public_key, message, signature))
    return out


def test_the_child_answers_each_request_in_order() -> None:
    async def scenario() -> None:
        process = SignatureProcess()
        process.start()
        try:
            assert process.ready
            batches = [_triples(1), _triples(7, forged={0, 6}), _triples(300, forged={150}),
                       _triples(2, forged={1})]
            answers = await asyncio.gather(*(process.check(b) for b in batches))
            assert answers[0] == [True]
            assert answers[1] == [False] + [True] * 5 + [False]
            assert answers[2] == [index != 150 for index in range(300)]
            assert answers[3] == [True, False]
            assert process.checked == 310
            assert await process.check([]) == []
        finally:
            process.close()

    asyncio.run(scenario())


def test_checks_before_start_and_after_close_raise_and_close_reaps_the_child() -> None:
    async def scenario() -> None:
        process = SignatureProcess()
        with pytest.raises(SignatureProcessError, match="idle"):
            await process.check(_triples(1))
        process.start()
        child = process._child
        assert child is not None
        assert await process.check(_triples(1)) == [True]
        process.close()
        assert child.returncode == 0  # it saw its stdin end and exited
        assert process.state == "stopped"
        with pytest.raises(SignatureProcessError, match="stopped"):
            await process.check(_triples(1))
        process.start()  # a stopped process stays stopped
        assert process.state == "stopped"

    asyncio.run(scenario())


def test_a_killed_child_fails_what_waits_and_later_checks_turn_it_broken() -> None:
    async def scenario() -> None:
        process = SignatureProcess()
        process.start()
        try:
            child = process._child
            assert child is not None
            assert await process.check(_triples(1)) == [True]
            waiting = asyncio.ensure_future(process.check(_triples(20_000)))
            await asyncio.sleep(0.05)
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(SignatureProcessError, match="ended"):
                await asyncio.wait_for(waiting, 10)
            assert process.state == "broken"
            with pytest.raises(SignatureProcessError, match="broken"):
                await process.check(_triples(1))
        finally:
            process.close()

    asyncio.run(scenario())


def test_an_answer_of_the_wrong_size_breaks_it_and_kills_the_child() -> None:
    async def scenario() -> None:
        process = SignatureProcess()
        process.start()
        child = process._child
        assert child is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        process._waiting.append((2, future))
        process._answer(b"\x01")  # one answer where two were asked: out of step
        assert process.state == "broken"
        with pytest.raises(SignatureProcessError, match="1 answers for 2"):
            await future
        assert child.wait(timeout=5) == -signal.SIGKILL
        process.close()

    asyncio.run(scenario())


def _run_worker(monkeypatch: pytest.MonkeyPatch, stdin: bytes) -> tuple[int, bytes]:
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    code = worker_main()
    sys.stdout.flush()
    return code, out.getvalue()


def _request(triples: list[Triple]) -> bytes:
    body: bytes = msgpack.packb(triples, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def test_worker_main_answers_one_byte_per_triple_until_its_input_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out = _run_worker(monkeypatch, _request(_triples(3, forged={1})) + _request([]))
    assert code == 0
    assert out == struct.pack(">I", 3) + b"\x01\x00\x01" + struct.pack(">I", 0)
    # A request cut short is the end of the input too; an oversize one is refused.
    assert _run_worker(monkeypatch, _request(_triples(2))[:-5]) == (0, b"")
    assert _run_worker(monkeypatch, struct.pack(">I", REQUEST_BYTES_MAX + 1)) == (2, b"")
