"""Batched transaction signature checks on worker threads.

Signature checks dominate the cost of a transaction. libsodium releases the GIL, so
verifying on a small thread pool uses both cores and keeps the event loop free for
consensus traffic. Requests arriving within one loop iteration are verified together in
chunks, so the per-call thread hand-off is paid per chunk, not per transaction.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from ledger.crypto import sha256
from ledger.tx import Tx, TxError, decode_and_verify

CHUNK_TXS = 128


class TxVerifier:
    def __init__(self, chain_id: str, threads: int = 2) -> None:
        self.chain_id = chain_id
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
        # (raw, its hash, the future for its outcome), waiting for the next flush.
        self._pending: list[tuple[bytes, bytes, asyncio.Future[Tx | TxError]]] = []
        self._flush_scheduled = False
        # Hashes already verified on this node (bounded): a tx seen in the mempool and
        # then in a block, or in two proposals, is checked only once.
        self._verified: dict[bytes, Tx] = {}
        self.verified_max = 200_000
        self._in_flight: dict[bytes, asyncio.Future[Tx | TxError]] = {}
        self.checked = 0  # txs decoded and signature-checked so far (not cache answers)

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
                          tx_hashes: Sequence[bytes] | None = None) -> list[Tx | TxError]:
        """verify() of each raw, in order. A proposal's txs are mostly known already
        (gossiped first): those are answered from the cache without a future each.
        `tx_hashes`, when the caller has them, are the sha256 of each raw."""
        hashes = [sha256(raw) for raw in raws] if tx_hashes is None else tx_hashes
        results: list[Tx | TxError | None] = []
        waiting: list[tuple[int, asyncio.Future[Tx | TxError]]] = []
        verified = self._verified
        for index, (raw, tx_hash) in enumerate(zip(raws, hashes, strict=True)):
            cached = verified.get(tx_hash)
            if cached is None:
                waiting.append((index, self.verify(raw, tx_hash)))
            results.append(cached)
        if waiting:
            checked = await asyncio.gather(*(future for _, future in waiting))
            for (index, _), result in zip(waiting, checked, strict=True):
                results[index] = result
        return cast(list[Tx | TxError], results)  # every None was filled above

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(pending), CHUNK_TXS):
            chunk = pending[start:start + CHUNK_TXS]
            work = loop.run_in_executor(self._pool, self._check_chunk, chunk)
            work.add_done_callback(functools.partial(self._deliver, chunk))

    def _deliver(self, chunk: list[tuple[bytes, bytes, asyncio.Future[Tx | TxError]]],
                 done: asyncio.Future[list[Tx | TxError]]) -> None:
        results = done.result()
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
        self._pool.shutdown(wait=False, cancel_futures=True)
