"""Batched transaction signature checks, on worker threads when there are many.

Signature checks dominate the cost of a transaction. libsodium releases the GIL, so a
large batch (a client's batch, a catch-up run) is verified on a small thread pool, in
chunks, using both cores. Requests arriving within one loop iteration are flushed together;
a flush of a few (gossip, a proposal's unknown txs) is checked on the loop thread itself:
the hand-off to a thread and the GIL going back and forth cost more than the checks.

The same pool checks the commit certificates of a fetched catch-up range
(verify_signatures), recording the good signatures in `signatures`, whose `verify` the
replica is given: its own check of those certificates then runs no Ed25519 on the loop.

Bulk work (a catch-up's txs, `verify_many(..., bulk=True)`, and its certificates) goes to
a child process instead when the node has started one (`process`, see
ledger.signature_process): the loop decodes the txs and the child runs Ed25519 with its
own GIL. Until the node starts it, and if it dies, the threads (or, with none, the calling
thread) do that work as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from ledger.crypto import sha256
from ledger.crypto import verify as ed25519_verify
from ledger.signature_cache import Triple, VerifiedSignatures, Verify
from ledger.signature_process import SignatureProcess, SignatureProcessError
from ledger.tx import (
    Tx,
    TxError,
    bad_signature,
    decode_and_verify,
    decode_for_chain,
    signed_message,
)

CHUNK_TXS = 128
VERIFY_THREADS = 2  # a node alone on a 2-core machine: one per core
# A flush of at most this many txs is checked on the calling (event loop) thread: handing
# a few txs to the pool costs more than checking them (a thread wake-up, and the GIL taken
# back and forth with the loop), and the loop is held for at most ~10 ms. Larger flushes
# (client batches, catch-up runs) use the pool's threads, which overlap inside libsodium.
INLINE_TXS_MAX = 64
# Signature batches of at most this many (a certificate or two: a fetch of a seq the normal
# case missed) are checked on the loop thread, for the same reason, holding it ~1.5 ms at
# most; a catch-up range (32 certificates, ~100 signatures) goes to the pool. Unmeasured:
# the threshold only has to sit between those two cases.
INLINE_SIGNATURES_MAX = 16
# A large signature batch is split in one chunk per thread (the caller waits for all of
# it), but no chunk holds a thread longer than ~12 ms, so tx checks queued behind get in.
CHUNK_SIGNATURES_MAX = 128
# Bulk txs go to the signature process in requests of at most this many, so its answers
# stream back while the loop decodes the rest.
PROCESS_CHUNK_TXS = 256


class TxVerifier:
    def __init__(self, chain_id: str, threads: int = VERIFY_THREADS,
                 inline_txs_max: int = INLINE_TXS_MAX, *,
                 inline_signatures_max: int = INLINE_SIGNATURES_MAX,
                 verify: Verify = ed25519_verify) -> None:
        self.chain_id = chain_id
        self.inline_txs_max = inline_txs_max
        self.inline_signatures_max = inline_signatures_max
        self.threads = threads
        # No threads (threads=0): every check runs on the calling thread. Several nodes
        # sharing a machine's cores gain nothing from them and pay for the hand-offs.
        self._pool = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
                      if threads > 0 else None)
        # Signatures verified by verify_signatures, answered once each by signatures.verify
        # (which falls back to `verify` for anything else).
        self.signatures = VerifiedSignatures(verify)
        self.signatures_checked = 0  # by verify_signatures, not counting cache answers
        # (raw, its hash, the future for its outcome), waiting for the next flush.
        self._pending: list[tuple[bytes, bytes, asyncio.Future[Tx | TxError]]] = []
        self._flush_scheduled = False
        # Hashes already verified on this node (bounded): a tx seen in the mempool and
        # then in a block, or in two proposals, is checked only once.
        self._verified: dict[bytes, Tx] = {}
        self.verified_max = 200_000
        self._in_flight: dict[bytes, asyncio.Future[Tx | TxError]] = {}
        self.checked = 0  # txs decoded and signature-checked so far (not cache answers)
        # The child process for bulk checks, when the node started one (see the module doc).
        self.process: SignatureProcess | None = None
        self._offloads: set[asyncio.Task[None]] = set()

    def _check_chunk(self, chunk: list[tuple[bytes, bytes, asyncio.Future[Tx | TxError]]]
                     ) -> list[Tx | TxError]:
        chain_id = self.chain_id
        return [decode_and_verify(raw, chain_id, tx_hash) for raw, tx_hash, _ in chunk]

    def known(self, tx_hash: bytes) -> Tx | None:
        return self._verified.get(tx_hash)

    def remember(self, tx: Tx) -> None:
        if len(self._verified) >= self.verified_max:
            # Drop the oldest half; dicts keep insertion order.
            for key in list(self._verified)[: self.verified_max // 2]:
                del self._verified[key]
        self._verified[tx.hash] = tx

    def forget(self, tx_hashes: Sequence[bytes]) -> None:
        for tx_hash in tx_hashes:
            self._verified.pop(tx_hash, None)

    def verify(self, raw: bytes, tx_hash: bytes | None = None) -> asyncio.Future[Tx | TxError]:
        """A future for the verified tx (or its error); batched with concurrent callers.

        `tx_hash`, when the caller already has it, must be sha256(raw).
        """
        loop = asyncio.get_running_loop()
        if tx_hash is None:
            tx_hash = sha256(raw)
        in_flight = self._in_flight.get(tx_hash)
        if in_flight is not None:
            return in_flight  # gossip and a proposal carrying the same tx share one check
        future: asyncio.Future[Tx | TxError] = loop.create_future()
        cached = self._verified.get(tx_hash)
        if cached is not None:
            future.set_result(cached)
            return future
        self._in_flight[tx_hash] = future
        self._pending.append((raw, tx_hash, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def verify_many(self, raws: Sequence[bytes],
                          tx_hashes: Sequence[bytes] | None = None, *,
                          bulk: bool = False) -> list[Tx | TxError]:
        """verify() of each raw, in order. A proposal's txs are mostly known already
        (gossiped first): those are answered from the cache without a future each.
        `tx_hashes`, when the caller has them, are the sha256 of each raw. `bulk` (a
        catch-up's txs) sends the signature checks to the child process when it runs."""
        hashes = [sha256(raw) for raw in raws] if tx_hashes is None else tx_hashes
        results: list[Tx | TxError | None] = []
        waiting: list[tuple[int, asyncio.Future[Tx | TxError]]] = []
        verified = self._verified
        process = self.process
        offload = bulk and process is not None and process.ready
        offloaded: list[tuple[bytes, bytes]] = []
        for index, (raw, tx_hash) in enumerate(zip(raws, hashes, strict=True)):
            cached = verified.get(tx_hash)
            if cached is None:
                future = self._in_flight.get(tx_hash) if offload else None
                if future is None and offload:
                    future = asyncio.get_running_loop().create_future()
                    self._in_flight[tx_hash] = future
                    offloaded.append((raw, tx_hash))
                waiting.append((index, future if future is not None
                                else self.verify(raw, tx_hash)))
            results.append(cached)
        if offloaded:
            assert process is not None  # offloaded only when it is ready
            self._offload(process, offloaded)
        if waiting:
            checked = await asyncio.gather(*(future for _, future in waiting))
            for (index, _), result in zip(waiting, checked, strict=True):
                results[index] = result
        return cast(list[Tx | TxError], results)  # every None was filled above

    def _offload(self, process: SignatureProcess, entries: list[tuple[bytes, bytes]]) -> None:
        """Decode `entries` here and have `process` check their signatures; each entry's
        future is in _in_flight and is answered by _settle."""
        chain_id = self.chain_id
        decoded: list[Tx] = []
        for raw, tx_hash in entries:
            tx = decode_for_chain(raw, chain_id, tx_hash)
            if isinstance(tx, TxError):
                self.checked += 1
                self._settle(tx_hash, tx)
            else:
                decoded.append(tx)
        for start in range(0, len(decoded), PROCESS_CHUNK_TXS):
            task = asyncio.get_running_loop().create_task(
                self._check_offloaded(process, decoded[start:start + PROCESS_CHUNK_TXS]))
            self._offloads.add(task)
            task.add_done_callback(self._offloads.discard)

    async def _check_offloaded(self, process: SignatureProcess, txs: list[Tx]) -> None:
        triples = [(tx.sender, signed_message(tx), tx.signature) for tx in txs]
        try:
            valid = await process.check(triples)
        except SignatureProcessError:
            if self._pool is None:
                valid = self._check_signatures(triples)
            else:
                valid = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._check_signatures, triples)
        self.checked += len(txs)
        for tx, ok in zip(txs, valid, strict=True):
            self._settle(tx.hash, tx if ok else bad_signature())

    def _settle(self, tx_hash: bytes, result: Tx | TxError) -> None:
        future = self._in_flight.pop(tx_hash, None)
        if isinstance(result, Tx):
            self.remember(result)
        if future is not None and not future.done():
            future.set_result(result)

    async def verify_signatures(self, triples: Sequence[Triple]) -> list[bool]:
        """Whether each (public key, message, signature) is valid, in order; the valid ones
        are recorded in `signatures` (on this thread: the pool only computes answers).
        A triple already recorded there is answered without a check."""
        cache = self.signatures
        known = [triple in cache for triple in triples]
        todo = [triple for triple, seen in zip(triples, known, strict=True) if not seen]
        process = self.process
        checked: list[bool] | None = None
        large = len(todo) > self.inline_signatures_max
        if large and process is not None and process.ready:
            with contextlib.suppress(SignatureProcessError):  # then here or on the threads
                checked = await process.check(todo)
        if checked is None and (not large or self._pool is None):
            checked = self._check_signatures(todo)
        if checked is None:
            assert self._pool is not None  # without a pool the checks ran just above
            loop = asyncio.get_running_loop()
            size = min(CHUNK_SIGNATURES_MAX, -(-len(todo) // self.threads))
            parts = await asyncio.gather(*(
                loop.run_in_executor(self._pool, self._check_signatures, todo[start:start + size])
                for start in range(0, len(todo), size)))
            checked = [ok for part in parts for ok in part]
        self.signatures_checked += len(todo)
        good = {triple for triple, ok in zip(todo, checked, strict=True) if ok}
        for triple in good:
            cache.add(triple)
        return [seen or triple in good for triple, seen in zip(triples, known, strict=True)]

    def _check_signatures(self, triples: Sequence[Triple]) -> list[bool]:
        verify = self.signatures.real_verify
        return [verify(key, message, signature) for key, message, signature in triples]

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if len(pending) <= self.inline_txs_max or self._pool is None:
            self._deliver_results(pending, self._check_chunk(pending))
            return
        loop = asyncio.get_running_loop()
        for start in range(0, len(pending), CHUNK_TXS):
            chunk = pending[start:start + CHUNK_TXS]
            work = loop.run_in_executor(self._pool, self._check_chunk, chunk)
            work.add_done_callback(functools.partial(self._deliver, chunk))

    def _deliver(self, chunk: list[tuple[bytes, bytes, asyncio.Future[Tx | TxError]]],
                 done: asyncio.Future[list[Tx | TxError]]) -> None:
        if done.cancelled():  # close() dropped it: the node is stopping, no one waits
            return
        self._deliver_results(chunk, done.result())

    def _deliver_results(self, chunk: list[tuple[bytes, bytes, asyncio.Future[Tx | TxError]]],
                         results: list[Tx | TxError]) -> None:
        self.checked += len(results)
        in_flight, verified = self._in_flight, self._verified
        for (_, tx_hash, future), result in zip(chunk, results, strict=True):
            in_flight.pop(tx_hash, None)
            if isinstance(result, Tx):
                if len(verified) >= self.verified_max:
                    self.remember(result)  # makes room
                else:
                    verified[tx_hash] = result
            if not future.done():
                future.set_result(result)

    def close(self) -> None:
        for task in list(self._offloads):
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
