"""Signatures verified in a batch on the verify pool, answered once later without libsodium."""

from __future__ import annotations

import asyncio
import threading

from ledger.crypto import KeyPair
from ledger.signature_cache import Triple, VerifiedSignatures
from ledger.tx_verifier import TxVerifier
from tests.counting_verify import CountingVerify


def signed(count: int) -> list[Triple]:
    triples = []
    for number in range(count):
        key = KeyPair.generate()
        message = f"commit vote {number}".encode()
        triples.append((key.public_key, message, key.sign(message)))
    return triples


def forged(triple: Triple) -> Triple:
    key, message, signature = triple
    return key, message, bytes([signature[0] ^ 1]) + signature[1:]


def test_good_signatures_are_answered_once_from_the_cache_and_bad_ones_never_cached() -> None:
    async def scenario() -> None:
        counting = CountingVerify()
        verifier = TxVerifier("sigs", verify=counting)
        try:
            good = signed(3)
            bad = forged(good[0])
            assert await verifier.verify_signatures([*good, bad]) == [True, True, True, False]
            assert len(counting.calls) == 4 and verifier.signatures_checked == 4
            assert bad not in verifier.signatures and len(verifier.signatures) == 3
            cache = verifier.signatures
            assert all(cache.verify(*triple) for triple in good)
            assert len(counting.calls) == 4  # answered without libsodium
            assert len(cache) == 0  # each answer consumed its entry
            assert cache.verify(*good[1])  # a second ask is checked for real, and holds
            assert not cache.verify(*bad)
            assert len(counting.calls) == 6 and len(cache) == 0  # misses are not cached
            # An entry answers only for its exact bytes: another message is checked.
            await verifier.verify_signatures([good[2]])
            key, message, signature = good[2]
            assert not cache.verify(key, message + b"!", signature)
            assert counting.calls[-1][0] == (key, message + b"!", signature)
        finally:
            verifier.close()

    asyncio.run(scenario())


def test_a_large_batch_is_checked_on_the_pool_a_small_one_inline_and_known_ones_not_again(
        ) -> None:
    async def scenario() -> None:
        counting = CountingVerify()
        verifier = TxVerifier("sigs", verify=counting, inline_signatures_max=4)
        try:
            good = signed(40)
            bad = forged(good[7])
            batch = [*good[:20], bad, *good[20:]]
            results = await verifier.verify_signatures(batch)
            assert results == [triple is not bad for triple in batch]
            threads = {name for _, _, name in counting.calls}
            assert len(counting.calls) == 41 and all(n.startswith("verify") for n in threads)
            assert len(verifier.signatures) == 40 and bad not in verifier.signatures
            # Already verified here: answered without a check, and still consumable once.
            assert await verifier.verify_signatures(good[:3]) == [True] * 3
            assert len(counting.calls) == 41
            fresh = signed(2)
            assert await verifier.verify_signatures(fresh) == [True, True]
            assert counting.calls[-1][2] == threading.current_thread().name  # inline
        finally:
            verifier.close()

    asyncio.run(scenario())


def test_the_cache_stays_bounded_and_drops_its_oldest_entries_first() -> None:
    counting = CountingVerify()
    cache = VerifiedSignatures(counting, entries_max=3)
    triples = signed(5)
    for triple in triples:
        cache.add(triple)
    assert len(cache) == 3
    assert triples[0] not in cache and triples[1] not in cache
    assert all(cache.verify(*triple) for triple in triples[2:]) and counting.calls == []
    assert cache.verify(*triples[0]) and len(counting.calls) == 1  # evicted: checked again
