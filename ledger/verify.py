"""Offline integrity check of a block store: `cityledger verify-chain` is built on this.

Walks heights 1..tip and rechecks everything a node or auditor would otherwise trust the
disk for: hash links, header encoding, tx and receipts Merkle roots, the tx and block-hash
indexes, and each commit certificate against the validator set. Stops at the first bad
height and says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.block import Block, CommitCertificate, Header, receipts_root_of
from ledger.epochs import EpochError, EpochHistory, due_epoch
from ledger.errors import CodecError
from ledger.receipt import receipt_accepts
from ledger.store import BlockStore


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    blocks_checked: int
    tip_height: int
    first_bad_height: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.blocks_checked} blocks verified, tip height {self.tip_height}"
        if self.first_bad_height is None:
            return f"BAD: {self.reason}"
        return f"BAD at height {self.first_bad_height}: {self.reason}"


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_block(
    store: BlockStore,
    height: int,
    prev_hash: bytes,
    prev_seq: int,
    chain_id: str,
    certifiers: Callable[[int], tuple[str, Sequence[bytes]]],
) -> tuple[bytes, int]:
    """Check one stored block; returns (its hash, its certificate seq) or raises _Bad."""
    try:
        header: Header | None = store.header(height)
        cert: CommitCertificate | None = store.certificate(height)
        block: Block | None = store.block(height)
        receipts = store.receipts(height)
    except CodecError as exc:
        raise _Bad(f"stored data does not decode: {exc.reason}") from exc
    if header is None or block is None:
        raise _Bad("block is missing")
    if cert is None:
        raise _Bad("commit certificate is missing")
    if header.height != height:
        raise _Bad(f"header says height {header.height}")
    if header.chain_id != chain_id:
        raise _Bad(f"header is for chain {header.chain_id!r}, not {chain_id!r}")
    if header.prev_hash != prev_hash:
        raise _Bad(f"prev_hash {header.prev_hash.hex()} does not link to {prev_hash.hex()}")
    problem = block.check_tx_root()
    if problem is not None:
        raise _Bad(problem)
    if len(receipts) != len(block.txs):
        raise _Bad(f"{len(receipts)} receipts for {len(block.txs)} transactions")
    if receipts_root_of(receipts) != header.receipts_root:
        raise _Bad("stored receipts do not match receipts_root")
    if store.height_of(block.hash) != height:
        raise _Bad("block-hash index does not point at this height")
    for index, (tx, tx_hash) in enumerate(zip(block.txs, block.tx_hashes(), strict=True)):
        location = store.tx_location(tx_hash)
        if location is None:
            raise _Bad(f"tx {index} is missing from the tx index")
        # The index holds the copy that accepted the tx, else its first (ledger/store.py).
        if location != (height, index) and (
                receipt_accepts(receipts[index]) or store.tx(tx_hash) != tx
                or (location > (height, index)
                    and not receipt_accepts(store.receipt(tx_hash) or b""))):
            raise _Bad(f"tx index entry for tx {index} points at {location}")
    if cert.block_hash != block.hash:
        raise _Bad("commit certificate is for another block")
    if cert.seq <= prev_seq:
        raise _Bad(f"certificate sequence {cert.seq} does not increase past {prev_seq}")
    if cert.view < header.view:
        raise _Bad(f"certificate view {cert.view} precedes the proposal view {header.view}")
    domain, validators = certifiers(cert.seq)
    problem = cert.verify(domain, validators)
    if problem is not None:
        raise _Bad(f"commit certificate invalid: {problem}")
    return block.hash, cert.seq


def verify_chain(
    store: BlockStore, genesis_hash: bytes, chain_id: str, validators: Sequence[bytes],
    epochs: EpochHistory | None = None,
) -> VerifyReport:
    """Recheck the whole stored chain; the report names the first bad height, if any.

    With `epochs`, each certificate is checked against the validator set and signing
    domain of its sequence's epoch (validator-set changes); else against `validators`.
    """
    def certifiers(seq: int) -> tuple[str, Sequence[bytes]]:
        return (chain_id, validators) if epochs is None else epochs.certifiers(chain_id, seq)

    stored_genesis = store.genesis_hash()
    if stored_genesis is None:
        return VerifyReport(False, 0, 0, 0, "the store has no genesis")
    if stored_genesis != genesis_hash:
        return VerifyReport(False, 0, 0, 0, f"store genesis {stored_genesis.hex()} is not "
                            f"{genesis_hash.hex()}")
    tip_height, tip_hash = store.tip()
    prev_hash, prev_seq = genesis_hash, 0
    for height in range(1, tip_height + 1):
        try:
            prev_hash, prev_seq = _check_block(store, height, prev_hash, prev_seq, chain_id,
                                               certifiers)
        except _Bad as bad:
            return VerifyReport(False, height - 1, tip_height, height, bad.reason)
    if prev_hash != tip_hash:
        return VerifyReport(False, tip_height, tip_height, tip_height,
                            "tip pointer names a different block hash")
    if store.header(tip_height + 1) is not None:
        return VerifyReport(False, tip_height, tip_height, tip_height + 1,
                            "a block is stored above the tip")
    return VerifyReport(True, tip_height, tip_height)


def verify_epochs(
    epochs: EpochHistory,
    checkpoint_interval_seqs: int,
    pending_at_seq: Callable[[int], Any],
) -> str | None:
    """Recheck that each recorded validator-set epoch is the one agreed state implies.

    Epoch n starting at seq S+1 must have S on a checkpoint boundary, the approved change
    in the state at S must be change n with exactly this set, and the state at the
    boundary before must not already have held it (else the switch was due earlier).
    `pending_at_seq(seq)` is the pending-change record in the state after `seq`, or None.
    Returns None when every epoch checks out, else the reason.
    """
    history = epochs.all()
    for previous, epoch in zip(history, history[1:], strict=False):
        base = epoch.first_seq - 1
        try:
            due = due_epoch(base, checkpoint_interval_seqs, pending_at_seq(base), previous)
            earlier = (due_epoch(base - checkpoint_interval_seqs, checkpoint_interval_seqs,
                                 pending_at_seq(base - checkpoint_interval_seqs), previous)
                       if base - checkpoint_interval_seqs >= previous.first_seq else None)
        except EpochError as exc:
            return f"epoch {epoch.number}: {exc.reason}"
        if due != epoch:
            return (f"epoch {epoch.number} from seq {epoch.first_seq} is not what the state "
                    f"at seq {base} approved")
        if earlier is not None:
            return f"epoch {epoch.number} was due at an earlier checkpoint"
    return None
