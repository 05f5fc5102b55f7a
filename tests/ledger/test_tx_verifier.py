"""TxVerifier: batched off-loop signature checks, cached per node."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from ledger.crypto import KeyPair
from ledger.signature_process import SignatureProcess
from ledger.tx import Tx, TxError, sign_tx
from ledger.tx_verifier import TxVerifier

CHAIN = "verifier-test"


def test_concurrent_verifies_return_each_result_and_cache_good_ones() -> None:
    async def scenario() -> None:
        verifier = TxVerifier(CHAIN)
        try:
            good = [sign_tx(KeyPair.generate(), CHAIN, "identity", "register", 0, {})
                    for _ in range(300)]
            bad = bytearray(good[0].raw)
            bad[-1] ^= 1
            results = await verifier.verify_many([tx.raw for tx in good] + [bytes(bad)])
            assert [r.hash for r in results[:-1] if isinstance(r, Tx)] == [t.hash for t in good]
            assert isinstance(results[-1], TxError) and results[-1].code == "bad_signature"
            assert verifier.known(good[5].hash) is not None
            verifier.forget([good[5].hash])
            assert verifier.known(good[5].hash) is None
            other_chain = sign_tx(KeyPair.generate(), "other", "identity", "register", 0, {})
            wrong = await verifier.verify(other_chain.raw)
            assert isinstance(wrong, TxError) and wrong.code == "wrong_chain"
        finally:
            verifier.close()

    asyncio.run(scenario())


def test_cache_stays_bounded() -> None:
    async def scenario() -> None:
        verifier = TxVerifier(CHAIN)
        verifier.verified_max = 10
        try:
            txs = [sign_tx(KeyPair.generate(), CHAIN, "identity", "register", 0, {})
                   for _ in range(25)]
            await verifier.verify_many([tx.raw for tx in txs])
            assert sum(verifier.known(t.hash) is not None for t in txs) <= 10
            assert verifier.known(txs[-1].hash) is not None
        finally:
            verifier.close()

    asyncio.run(scenario())


def test_concurrent_checks_of_one_tx_share_a_single_verification() -> None:
    async def scenario() -> None:
        verifier = TxVerifier(CHAIN)
        checked: list[int] = []
        original = verifier._check_chunk

        def counting(raws: list[bytes]) -> list[Tx | TxError]:
            checked.append(len(raws))
            return original(raws)

        verifier._check_chunk = counting  # type: ignore[method-assign]
        try:
            tx = sign_tx(KeyPair.generate(), CHAIN, "identity", "register", 0, {})
            first, second = verifier.verify(tx.raw), verifier.verify(tx.raw)
            assert first is second
            results = await asyncio.gather(first, second)
            assert all(isinstance(r, Tx) and r.hash == tx.hash for r in results)
            assert sum(checked) == 1
            assert isinstance(await verifier.verify(tx.raw), Tx) and sum(checked) == 1
        finally:
            verifier.close()

    asyncio.run(scenario())


def test_verify_many_answers_known_txs_from_the_cache_and_checks_the_rest_in_order() -> None:
    async def scenario() -> None:
        verifier = TxVerifier(CHAIN)
        try:
            txs = [sign_tx(KeyPair.generate(), CHAIN, "identity", "register", 0, {})
                   for _ in range(6)]
            bad = bytearray(txs[5].raw)
            bad[-1] ^= 1
            await verifier.verify_many([tx.raw for tx in txs[:3]])
            checks_before = verifier.checked
            raws = [txs[4].raw, txs[0].raw, bytes(bad), txs[2].raw, txs[3].raw, txs[1].raw]
            results = await verifier.verify_many(raws)
            assert [r.hash if isinstance(r, Tx) else r.code for r in results] == [
                txs[4].hash, txs[0].hash, "bad_signature", txs[2].hash, txs[3].hash,
                txs[1].hash]
            assert verifier.checked - checks_before == 3  # only the three it had not seen
            hashes = [r.hash if isinstance(r, Tx) else b"" for r in results]
            again = await verifier.verify_many(raws[:2], hashes[:2])
            assert again == results[:2]
        finally:
            verifier.close()

    asyncio.run(scenario())


def test_a_small_flush_is_checked_on_the_loop_thread_and_a_large_one_on_the_pool() -> None:
    async def scenario() -> None:
        verifier = TxVerifier(CHAIN, inline_txs_max=4)
        ran_on: list[str] = []
        original = verifier._check_chunk

        def recording(chunk: list) -> list[Tx | TxError]:  # type: ignore[type-arg]
            ran_on.append(threading.current_thread().name)
            return original(chunk)

        verifier._check_chunk = recording  # type: ignore[method-assign]
        try:
            txs = [sign_tx(KeyPair.generate(), CHAIN, "identity", "register", 0, {})
                   for _ in range(14)]
            bad = bytearray(txs[0].raw)
            bad[-1] ^= 1
            small = await verifier.verify_many([tx.raw for tx in txs[1:4]] + [bytes(bad)])
            assert [r.hash for r in small[:3] if isinstance(r, Tx)] == [t.hash for t in txs[1:4]]
            assert isinstance(small[3], TxError) and small[3].code == "bad_signature"
            assert ran_on == [threading.current_thread().name]
            large = await verifier.verify_many([tx.raw for tx in txs[4:]])
            assert [r.hash for r in large if isinstance(r, Tx)] == [t.hash for t in txs[4:]]
            assert len(ran_on) == 2 and ran_on[1].startswith("verify")
            assert verifier.checked == 14
        finally:
            verifier.close()

    asyncio.run(scenario())


# -- bulk checks in the signature process -------------------------------------------------


def _mixed_raws() -> list[bytes]:
    """Good txs, a forged signature, another chain's tx, a duplicate and undecodable bytes."""
    good = [sign_tx(KeyPair.generate(), CHAIN, "identity", "register", 0, {})
            for _ in range(300)]
    forged = bytearray(good[7].raw)
    forged[-1] ^= 1
    other_chain = sign_tx(KeyPair.generate(), "other", "identity", "register", 0, {})
    return ([tx.raw for tx in good[:100]] + [bytes(forged), other_chain.raw, good[3].raw,
                                               b"\x93junk"] + [tx.raw for tx in good[100:]])


def _outcome(result: Tx | TxError) -> tuple[str, ...]:
    if isinstance(result, Tx):
        return ("tx", result.hash.hex(), result.raw.hex())
    return ("error", result.code, result.reason)


async def _outcomes_on_threads(raws: list[bytes]) -> list[tuple[str, ...]]:
    """What a plain verifier (verify threads, no process) answers for `raws`."""
    reference = TxVerifier(CHAIN)
    try:
        return [_outcome(r) for r in await reference.verify_many(raws)]
    finally:
        reference.close()


def _with_process(threads: int = 2) -> tuple[TxVerifier, SignatureProcess]:
    verifier = TxVerifier(CHAIN, threads=threads)
    process = SignatureProcess()
    verifier.process = process
    process.start()
    return verifier, process


def test_bulk_checks_go_to_the_signature_process_with_the_threads_answers() -> None:
    async def scenario() -> None:
        raws = _mixed_raws()
        bulk, process = _with_process()
        try:
            expected = await _outcomes_on_threads(raws)
            got = await bulk.verify_many(raws, bulk=True)
            assert [_outcome(r) for r in got] == expected
            assert [r.code for r in got if isinstance(r, TxError)] == [
                "bad_signature", "wrong_chain", "tx_malformed"]
            # Every decodable tx of this chain was checked in the child, each once.
            assert process.checked == 301
            assert bulk.checked == len(raws) - 1  # all but the repeat, as on the threads
            good = [r for r in got if isinstance(r, Tx)]
            assert all(bulk.known(tx.hash) is not None for tx in good)
            # Known now: asked again they come from the cache, with no new check.
            again = await bulk.verify_many([tx.raw for tx in good[:50]], bulk=True)
            assert again == good[:50] and process.checked == 301
        finally:
            process.close()
            bulk.close()

    asyncio.run(scenario())


def test_bulk_checks_fall_back_to_the_threads_when_the_process_is_gone() -> None:
    async def scenario() -> None:
        raws = _mixed_raws()
        verifier, process = _with_process()
        try:
            expected = await _outcomes_on_threads(raws)
            child = process._child
            assert child is not None
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            # The answers still come, from the threads, whenever the death is noticed.
            got = await asyncio.wait_for(verifier.verify_many(raws, bulk=True), 30)
            assert [_outcome(r) for r in got] == expected
            assert process.state == "broken"
        finally:
            process.close()
            verifier.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("threads", [2, 0])
def test_certificate_batches_go_to_the_process_and_only_good_signatures_are_recorded(
        threads: int) -> None:
    async def scenario() -> None:
        key = KeyPair.generate()
        triples = []
        for index in range(40):
            message = f"commit {index}".encode()
            signature = key.sign(message)
            if index == 13:
                signature = bytes([signature[0] ^ 1]) + signature[1:]
            triples.append((key.public_key, message, signature))
        verifier, process = _with_process(threads)
        try:
            answers = await verifier.verify_signatures(triples)
            assert answers == [index != 13 for index in range(40)]
            assert process.checked == 40 and verifier.signatures_checked == 40
            assert triples[0] in verifier.signatures and triples[13] not in verifier.signatures
        finally:
            process.close()
            verifier.close()

    asyncio.run(scenario())


def test_with_no_threads_every_check_runs_on_the_calling_thread() -> None:
    async def scenario() -> None:
        verifier = TxVerifier(CHAIN, threads=0, inline_txs_max=4, inline_signatures_max=2)
        ran_on: list[str] = []
        original = verifier._check_chunk

        def recording(chunk: list) -> list[Tx | TxError]:  # type: ignore[type-arg]
            ran_on.append(threading.current_thread().name)
            return original(chunk)

        verifier._check_chunk = recording  # type: ignore[method-assign]
        try:
            raws = _mixed_raws()
            want = await _outcomes_on_threads(raws)
            assert [_outcome(r) for r in await verifier.verify_many(raws)] == want
            assert ran_on == [threading.current_thread().name]  # one flush, far over 4
            key = KeyPair.generate()
            triples = [(key.public_key, bytes([i]), key.sign(bytes([i]))) for i in range(10)]
            triples[4] = (key.public_key, b"forged", triples[4][2])
            real_signatures = verifier._check_signatures

            def recording_signatures(batch: list) -> list[bool]:  # type: ignore[type-arg]
                ran_on.append(threading.current_thread().name)
                return real_signatures(batch)

            verifier._check_signatures = recording_signatures  # type: ignore[method-assign]
            answers = await verifier.verify_signatures(triples)
            assert answers == [i != 4 for i in range(10)]
            assert ran_on == [threading.current_thread().name] * 2  # 10 > 2, still here
        finally:
            verifier.close()

    asyncio.run(scenario())
