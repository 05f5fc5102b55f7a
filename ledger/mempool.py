"""Transactions admitted but not yet committed.

Admission runs every check that does not depend on ordering: decode, chain id, signature
(once per node: a tx admitted here is never verified again when it shows up in a block),
size, and the executor's stateless-plus-nonce checks. Transactions are kept per sender by
nonce, so a proposal only ever carries a sender's transactions in gap-free nonce order.
Every dimension is bounded; a full pool answers with a clear `mempool_full` error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ledger.tx import Tx, TxError, decode_and_verify

AdmissionCheck = Callable[[Tx], TxError | None]
NextNonce = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class MempoolLimits:
    txs_max: int = 100_000
    bytes_max: int = 64 * 1024 * 1024
    per_sender_max: int = 1_000


class Mempool:
    def __init__(
        self,
        chain_id: str,
        admission_check: AdmissionCheck,
        limits: MempoolLimits | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.limits = limits or MempoolLimits()
        self._admission_check = admission_check
        # Arrival order of every pooled tx; selection walks senders in this order.
        self._by_hash: OrderedDict[bytes, Tx] = OrderedDict()
        self._by_sender: dict[str, dict[int, Tx]] = {}
        self._bytes = 0

    # -- size -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._by_hash

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def get(self, tx_hash: bytes) -> Tx | None:
        return self._by_hash.get(tx_hash)

    # -- admission ------------------------------------------------------------------
    def add_raw(self, raw: bytes) -> Tx | TxError:
        """Decode, verify and admit wire bytes from a client or a peer."""
        tx = decode_and_verify(raw, self.chain_id)
        if isinstance(tx, TxError):
            return tx
        return self.add_verified(tx)

    def add_verified(self, tx: Tx) -> Tx | TxError:
        """Admit a transaction whose signature this node has already checked."""
        if tx.hash in self._by_hash:
            return TxError("already_known", "this transaction is already pending")
        sender = tx.sender_address
        pending = self._by_sender.get(sender)
        if pending is not None:
            if tx.nonce in pending:
                return TxError("nonce_pending",
                               f"another pending transaction uses nonce {tx.nonce}")
            if len(pending) >= self.limits.per_sender_max:
                return TxError(
                    "mempool_full",
                    f"sender already has {len(pending)} pending transactions "
                    f"(limit {self.limits.per_sender_max})",
                )
        if len(self._by_hash) >= self.limits.txs_max:
            return TxError("mempool_full", f"mempool holds {self.limits.txs_max} transactions")
        if self._bytes + len(tx.raw) > self.limits.bytes_max:
            return TxError("mempool_full", f"mempool holds {self._bytes} bytes of transactions")
        problem = self._admission_check(tx)
        if problem is not None:
            return problem
        self._by_hash[tx.hash] = tx
        if pending is None:
            pending = self._by_sender[sender] = {}
        pending[tx.nonce] = tx
        self._bytes += len(tx.raw)
        return tx

    # -- proposals ------------------------------------------------------------------
    def select(self, txs_max: int, bytes_max: int, next_nonce: NextNonce) -> list[Tx]:
        """Up to `txs_max` txs for a proposal, each sender's in gap-free nonce order."""
        chosen: list[Tx] = []
        used_bytes = 0
        expected: dict[str, int] = {}
        for tx in self._by_hash.values():
            if len(chosen) >= txs_max:
                break
            sender = tx.sender_address
            if sender in expected:
                continue  # this sender's run was already taken in nonce order
            nonce = next_nonce(sender)
            run = self._by_sender.get(sender, {})
            while nonce in run and len(chosen) < txs_max:
                candidate = run[nonce]
                if used_bytes + len(candidate.raw) > bytes_max:
                    return chosen
                chosen.append(candidate)
                used_bytes += len(candidate.raw)
                nonce += 1
            expected[sender] = nonce
        return chosen

    # -- eviction -------------------------------------------------------------------
    def remove(self, tx_hashes: Iterable[bytes]) -> None:
        for tx_hash in tx_hashes:
            tx = self._by_hash.pop(tx_hash, None)
            if tx is None:
                continue
            self._bytes -= len(tx.raw)
            run = self._by_sender.get(tx.sender_address)
            if run is not None:
                run.pop(tx.nonce, None)
                if not run:
                    del self._by_sender[tx.sender_address]

    def evict_stale(self, senders: Iterable[str], next_nonce: NextNonce) -> list[bytes]:
        """Drop pooled txs whose nonce a committed block has used up; returns their hashes."""
        stale: list[bytes] = []
        for sender in senders:
            run = self._by_sender.get(sender)
            if not run:
                continue
            floor = next_nonce(sender)
            stale.extend(tx.hash for nonce, tx in run.items() if nonce < floor)
        self.remove(stale)
        return stale

    def has_nonce(self, sender: str, nonce: int) -> bool:
        return nonce in self._by_sender.get(sender, {})

    def pending_hashes(self) -> list[bytes]:
        return list(self._by_hash)
