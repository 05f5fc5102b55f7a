"""CommittedSequences maps consensus sequences to blocks and null proposals."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.errors import InvariantViolation
from ledger.quorum import quorum_size
from ledger.sequences import CommittedSequences
from tests.ledger.chainmaker import (
    GENESIS_HASH,
    VALIDATOR_KEYS,
    make_txs,
    next_block,
    open_test_store,
    sign_certificate,
    state_ops_for,
)


def _append(store, seq: int) -> bytes:  # type: ignore[no-untyped-def]
    height, tip_hash = store.tip()
    block, receipts = next_block(height + 1, tip_hash, make_txs(height + 1, 2))
    cert = sign_certificate(block.hash, seq, 0, VALIDATOR_KEYS[: quorum_size(4)])
    store.append(block, cert, receipts, state_ops_for(height + 1))
    return block.hash


def test_blocks_and_null_sequences_are_served_in_order_and_survive_reopen(
        tmp_path: Path) -> None:
    store = open_test_store(tmp_path / "db")
    sequences = CommittedSequences(store, GENESIS_HASH)
    first = _append(store, 1)
    sequences.record_null(2, {"view": 1, "seq": 2, "digest": bytes(32), "signatures": []})
    third = _append(store, 3)
    assert sequences.executed_seq == 3
    assert [sequences.height_at(s) for s in (0, 1, 2, 3, 9)] == [0, 1, 1, 2, 2]
    assert sequences.state_digest_at(0) == GENESIS_HASH
    assert sequences.state_digest_at(2) == first and sequences.state_digest_at(3) == third
    served = sequences.committed_range(1, 10, bytes_max=10**9)
    assert [(e.seq, e.block is None) for e in served] == [(1, False), (2, True), (3, False)]
    assert served[1].null_proof["seq"] == 2
    assert served[2].certificate is not None and served[2].certificate.seq == 3
    store.close()
    reopened = open_test_store(tmp_path / "db")
    assert CommittedSequences(reopened, GENESIS_HASH).executed_seq == 3
    reopened.close()


def test_range_stops_at_byte_budget_but_always_serves_one(tmp_path: Path) -> None:
    store = open_test_store(tmp_path / "db")
    sequences = CommittedSequences(store, GENESIS_HASH)
    for seq in (1, 2, 3):
        _append(store, seq)
    assert len(sequences.committed_range(1, 3, bytes_max=1)) == 1
    assert sequences.committed_range(4, 8, bytes_max=10**9) == []
    store.close()


def test_null_record_out_of_order_is_a_programmer_error(tmp_path: Path) -> None:
    store = open_test_store(tmp_path / "db")
    sequences = CommittedSequences(store, GENESIS_HASH)
    with pytest.raises(InvariantViolation):
        sequences.record_null(5, {})
    store.close()
