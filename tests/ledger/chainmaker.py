"""Builds real, certified test chains; run as a script it is the crash test's writer.

    python -m tests.ledger.chainmaker DB_PATH [TXS_PER_BLOCK]

opens (or creates) the store at DB_PATH, prints "ready <tip height>" and appends
certified blocks forever, resuming from whatever tip it finds, until it is killed.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from pathlib import Path

from ledger.block import Block, CommitCertificate, commit_vote_bytes, receipts_root_of
from ledger.codec import encode
from ledger.crypto import KeyPair, sha256
from ledger.quorum import quorum_size
from ledger.store import BlockStore, StateOp
from ledger.tx import sign_tx

CHAIN_ID = "test-city"
GENESIS_HASH = sha256(b"cityledger test genesis")
GENESIS_STATE_ROOT = sha256(b"cityledger test genesis state")
VALIDATOR_KEYS = [KeyPair(bytes([index + 1]) * 32) for index in range(4)]
VALIDATORS = [key.public_key for key in VALIDATOR_KEYS]
CLIENT_KEY = KeyPair(bytes([0xC0]) * 32)
TIMESTAMP_BASE_MS = 1_800_000_000_000


def sign_certificate(
    block_hash: bytes, seq: int, view: int, keys: Sequence[KeyPair], chain_id: str = CHAIN_ID
) -> CommitCertificate:
    message = commit_vote_bytes(chain_id, view, seq, block_hash)
    return CommitCertificate(seq, view, block_hash,
                             tuple((key.public_key, key.sign(message)) for key in keys))


def make_txs(height: int, count: int) -> list[bytes]:
    """`count` signed transfers whose nonces are unique per height."""
    return [
        sign_tx(CLIENT_KEY, CHAIN_ID, "tokens", "transfer", (height - 1) * count + index,
                {"to": bytes(20), "amount": height * 1000 + index}).raw
        for index in range(count)
    ]


def receipt_for(tx: bytes) -> bytes:
    return encode({"tx_hash": sha256(tx), "code": "ok"})


def next_block(
    height: int, prev_hash: bytes, txs: Sequence[bytes], *, view: int = 0
) -> tuple[Block, list[bytes]]:
    receipts = [receipt_for(tx) for tx in txs]
    block = Block.build(
        chain_id=CHAIN_ID, height=height, prev_hash=prev_hash,
        timestamp_ms=TIMESTAMP_BASE_MS + height, proposer=VALIDATORS[view % len(VALIDATORS)],
        view=view, txs=txs, state_root=sha256(b"state" + height.to_bytes(8, "big")),
        receipts_root=receipts_root_of(receipts),
    )
    return block, receipts


def state_ops_for(height: int) -> list[StateOp]:
    packed = struct.pack(">Q", height)
    return [(b"s/test/height", packed), (b"m/test_height", packed)]


def append_next(store: BlockStore, txs_per_block: int = 3, *, sync: bool = True) -> Block:
    """Append one certified block on top of the store's tip."""
    height, tip_hash = store.tip()
    block, receipts = next_block(height + 1, tip_hash, make_txs(height + 1, txs_per_block))
    signers = VALIDATOR_KEYS[: quorum_size(len(VALIDATOR_KEYS))]
    cert = sign_certificate(block.hash, store.tip_seq() + 1, 0, signers)
    store.append(block, cert, receipts, state_ops_for(height + 1), sync=sync)
    return block


def open_test_store(path: Path | str) -> BlockStore:
    store = BlockStore.open(Path(path))
    store.init_genesis(GENESIS_HASH, GENESIS_STATE_ROOT, [(b"m/test_height", struct.pack(">Q", 0))])
    return store


def main(argv: list[str]) -> int:
    store = open_test_store(argv[1])
    txs_per_block = int(argv[2]) if len(argv) > 2 else 3
    runs = len(argv) > 3 and argv[3] == "runs"  # catch-up style: 8 unsynced, then one sync
    print(f"ready {store.tip()[0]}", flush=True)
    while True:
        if runs:
            for _ in range(8):
                append_next(store, txs_per_block, sync=False)
            store.sync()
        else:
            append_next(store, txs_per_block)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
