"""BlockStore: genesis, append rules (all-or-nothing), reads, reopen, and verify_chain."""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import plyvel
import pytest

from ledger.block import (
    Block,
    CommitCertificate,
    verify_receipt_inclusion,
    verify_tx_inclusion,
)
from ledger.codec import encode
from ledger.crypto import sha256
from ledger.store import (
    CERT_PREFIX,
    HEADER_PREFIX,
    RECEIPT_PREFIX,
    SYNC_MARK_KEY,
    TIP_KEY,
    TX_LOCATION_PREFIX,
    BlockStore,
    StoreError,
    StoreMemoryLimits,
    fsync_older_logs,
)
from ledger.verify import verify_chain
from tests.ledger.chainmaker import (
    CHAIN_ID,
    GENESIS_HASH,
    GENESIS_STATE_ROOT,
    VALIDATOR_KEYS,
    VALIDATORS,
    append_next,
    make_txs,
    next_block,
    open_test_store,
    receipt_for,
    sign_certificate,
    state_ops_for,
)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[BlockStore]:
    opened = open_test_store(tmp_path / "ledger.db")
    yield opened
    opened.close()


def snapshot(store: BlockStore) -> list[tuple[bytes, bytes]]:
    return list(store.db.iterator())


def certified_next(store: BlockStore, txs_count: int = 2):  # type: ignore[no-untyped-def]
    height, tip_hash = store.tip()
    block, receipts = next_block(height + 1, tip_hash, make_txs(height + 1, txs_count))
    cert = sign_certificate(block.hash, store.tip_seq() + 1, 0, VALIDATOR_KEYS[:3])
    return block, cert, receipts


# -- genesis --------------------------------------------------------------------------


def test_fresh_store_has_no_genesis_and_refuses_tip_and_append(tmp_path: Path) -> None:
    with BlockStore.open(tmp_path / "db") as fresh:
        assert fresh.genesis_hash() is None
        with pytest.raises(StoreError) as info:
            fresh.tip()
        assert info.value.code == "store_uninitialised"
        fresh.init_genesis(GENESIS_HASH, GENESIS_STATE_ROOT, [])
        block, cert, receipts = certified_next(fresh)
    with BlockStore.open(tmp_path / "db2") as other:
        with pytest.raises(StoreError, match="no genesis"):
            other.append(block, cert, receipts, [])
        assert snapshot(other) == []


def test_genesis_sets_tip_zero_and_writes_its_state_ops(store: BlockStore) -> None:
    assert store.tip() == (0, GENESIS_HASH)
    assert store.tip_seq() == 0
    assert store.genesis_hash() == GENESIS_HASH
    assert store.genesis_state_root() == GENESIS_STATE_ROOT
    assert store.db.get(b"m/test_height") == struct.pack(">Q", 0)
    assert store.header(0) is None and store.block(0) is None and store.certificate(0) is None


def test_same_genesis_again_is_a_no_op_and_a_different_one_is_refused(
    store: BlockStore,
) -> None:
    append_next(store)
    before = snapshot(store)
    store.init_genesis(GENESIS_HASH, GENESIS_STATE_ROOT, [(b"s/x", b"new")])
    assert snapshot(store) == before
    with pytest.raises(StoreError) as info:
        store.init_genesis(sha256(b"other"), GENESIS_STATE_ROOT, [])
    assert info.value.code == "genesis_mismatch"
    assert snapshot(store) == before


def test_genesis_state_ops_outside_the_state_prefixes_are_refused(tmp_path: Path) -> None:
    with BlockStore.open(tmp_path / "db") as fresh:
        with pytest.raises(StoreError):
            fresh.init_genesis(GENESIS_HASH, GENESIS_STATE_ROOT, [(b"chain/tip", b"x")])
        assert snapshot(fresh) == []


# -- append and reads -----------------------------------------------------------------


def test_appended_block_is_readable_every_way_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with open_test_store(path) as store:
        block, cert, receipts = certified_next(store, 3)
        store.append(block, cert, receipts, state_ops_for(1) + [(b"s/gone", None)],
                     extra_ops=[(b"p/vote", b"v")])
    with BlockStore.open(path) as store:
        assert store.tip() == (1, block.hash)
        assert store.tip_seq() == cert.seq
        assert store.header(1) == block.header
        assert store.block(1) == block
        assert store.block_by_hash(block.hash) == block
        assert store.height_of(block.hash) == 1
        assert store.certificate(1) == cert
        assert store.receipts(1) == receipts
        for index, tx in enumerate(block.txs):
            assert store.tx_location(sha256(tx)) == (1, index)
            assert store.tx(sha256(tx)) == tx
            assert store.receipt(sha256(tx)) == receipts[index]
        assert store.tx_location(sha256(b"unknown")) is None
        assert store.tx(sha256(b"unknown")) is None and store.receipt(sha256(b"x")) is None
        assert store.db.get(b"s/test/height") == struct.pack(">Q", 1)
        assert store.db.get(b"p/vote") == b"v"
        assert store.block(2) is None and store.block_by_hash(sha256(b"?")) is None


def test_tx_inclusion_proves_tx_and_receipt_against_the_stored_header(
    store: BlockStore,
) -> None:
    append_next(store, 1)
    block = append_next(store, 5)
    tx = block.txs[3]
    inclusion = store.tx_inclusion(sha256(tx))
    assert inclusion is not None
    assert inclusion.header == block.header and (inclusion.index, inclusion.count) == (3, 5)
    assert inclusion.tx == tx and inclusion.receipt == store.receipt(sha256(tx))
    assert verify_tx_inclusion(block.header, tx, 3, 5, inclusion.tx_proof)
    assert verify_receipt_inclusion(block.header, inclusion.receipt, 3, 5,
                                    inclusion.receipt_proof)
    assert not verify_tx_inclusion(block.header, block.txs[2], 3, 5, inclusion.tx_proof)
    assert store.tx_inclusion(sha256(b"unknown")) is None


def test_empty_block_is_stored_and_read_back(store: BlockStore) -> None:
    block, cert, receipts = certified_next(store, 0)
    store.append(block, cert, receipts, [])
    assert store.block(1) == block and store.receipts(1) == []


def test_blocks_range_returns_certified_blocks_clipped_to_tip_and_limit(
    store: BlockStore,
) -> None:
    blocks = [append_next(store, 1) for _ in range(6)]
    got = store.blocks_range(2, 4)
    assert [block for block, _ in got] == blocks[1:4]
    assert all(cert.block_hash == block.hash for block, cert in got)
    assert [b.height for b, _ in store.blocks_range(0, 100)] == [1, 2, 3, 4, 5, 6]
    assert [b.height for b, _ in store.blocks_range(3, 100, limit=2)] == [3, 4]
    assert store.blocks_range(7, 9) == []


def test_a_tx_included_again_keeps_its_first_location(store: BlockStore) -> None:
    first = append_next(store, 2)
    height, tip_hash = store.tip()
    again = first.txs[0]
    block, receipts = next_block(height + 1, tip_hash, [again])
    cert = sign_certificate(block.hash, store.tip_seq() + 1, 0, VALIDATOR_KEYS[:3])
    store.append(block, cert, receipts, [])
    assert store.tx_location(sha256(again)) == (1, 0)
    assert verify_chain(store, GENESIS_HASH, CHAIN_ID, VALIDATORS).ok


# -- refusals: typed error, nothing written --------------------------------------------


def _wrong_height(store: BlockStore) -> tuple[Block, CommitCertificate, list[bytes]]:
    height, tip_hash = store.tip()
    block, receipts = next_block(height + 2, tip_hash, make_txs(height + 2, 1))
    return block, sign_certificate(block.hash, 9, 0, VALIDATOR_KEYS[:3]), receipts


def _wrong_parent(store: BlockStore) -> tuple[Block, CommitCertificate, list[bytes]]:
    height, _ = store.tip()
    block, receipts = next_block(height + 1, sha256(b"elsewhere"), make_txs(height + 1, 1))
    return block, sign_certificate(block.hash, 9, 0, VALIDATOR_KEYS[:3]), receipts


def _cert_for_other_block(store: BlockStore) -> tuple[Block, CommitCertificate, list[bytes]]:
    block, cert, receipts = certified_next(store)
    return block, sign_certificate(sha256(b"other"), cert.seq, 0, VALIDATOR_KEYS[:3]), receipts


def _stale_seq(store: BlockStore) -> tuple[Block, CommitCertificate, list[bytes]]:
    block, cert, receipts = certified_next(store)
    return block, dataclasses.replace(cert, seq=store.tip_seq()), receipts


def _cert_view_before_proposal(store: BlockStore) -> tuple[Block, CommitCertificate,
                                                           list[bytes]]:
    height, tip_hash = store.tip()
    block, receipts = next_block(height + 1, tip_hash, make_txs(height + 1, 1), view=2)
    return block, sign_certificate(block.hash, 9, 1, VALIDATOR_KEYS[:3]), receipts


def _missing_receipt(store: BlockStore) -> tuple[Block, CommitCertificate, list[bytes]]:
    block, cert, receipts = certified_next(store)
    return block, cert, receipts[:-1]


def _wrong_receipt(store: BlockStore) -> tuple[Block, CommitCertificate, list[bytes]]:
    block, cert, receipts = certified_next(store)
    return block, cert, [receipts[0], receipt_for(b"something else")]


def _wrong_tx_root(store: BlockStore) -> tuple[Block, CommitCertificate, list[bytes]]:
    block, _, receipts = certified_next(store)
    tampered = Block(block.header, (block.txs[1], block.txs[0]))
    return tampered, sign_certificate(tampered.hash, 9, 0, VALIDATOR_KEYS[:3]), receipts


REFUSALS = {
    "wrong_height": (_wrong_height, "wrong_height"),
    "wrong_parent": (_wrong_parent, "wrong_parent"),
    "cert_for_other_block": (_cert_for_other_block, "cert_mismatch"),
    "cert_stale_seq": (_stale_seq, "cert_mismatch"),
    "cert_view_before_proposal": (_cert_view_before_proposal, "cert_mismatch"),
    "missing_receipt": (_missing_receipt, "receipts_mismatch"),
    "wrong_receipt": (_wrong_receipt, "receipts_mismatch"),
    "wrong_tx_root": (_wrong_tx_root, "bad_tx_root"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_append_refuses_a_block_that_does_not_fit_and_writes_nothing(
    store: BlockStore, case: str
) -> None:
    append_next(store)
    tip = store.tip()
    before = snapshot(store)
    build, expected_code = REFUSALS[case]
    block, cert, receipts = build(store)
    with pytest.raises(StoreError) as info:
        store.append(block, cert, receipts, state_ops_for(2))
    assert info.value.code == expected_code
    assert snapshot(store) == before
    assert store.tip() == tip


def test_append_with_the_callers_tx_hashes_indexes_the_same_and_refuses_a_short_list(
    store: BlockStore,
) -> None:
    block, cert, receipts = certified_next(store, 3)
    before = snapshot(store)
    with pytest.raises(StoreError) as info:
        store.append(block, cert, receipts, state_ops_for(1), tx_hashes=block.tx_hashes()[:2])
    assert info.value.code == "bad_op"
    assert snapshot(store) == before
    store.append(block, cert, receipts, state_ops_for(1), tx_hashes=block.tx_hashes())
    assert [store.tx_location(sha256(tx)) for tx in block.txs] == [(1, 0), (1, 1), (1, 2)]
    assert verify_chain(store, GENESIS_HASH, CHAIN_ID, VALIDATORS).ok


def test_append_refuses_accepted_flags_that_do_not_match_the_txs(store: BlockStore) -> None:
    block, cert, receipts = certified_next(store, 3)
    before = snapshot(store)
    with pytest.raises(StoreError) as info:
        store.append(block, cert, receipts, state_ops_for(1), accepted=[True, True])
    assert info.value.code == "bad_op"
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("state_ops", "extra_ops"),
    [([(b"x/not-state", b"1")], []), ([(b"tx/evil", b"1")], []), ([], [(b"chain/tip", b"1")]),
     ([], [(b"txloc/" + bytes(32), b"1")]), ([(b"s/ok", "str")], [])],
)
def test_append_refuses_ops_outside_their_prefixes_and_writes_nothing(
    store: BlockStore, state_ops: list[tuple[bytes, bytes]], extra_ops: list[tuple[bytes, bytes]]
) -> None:
    before = snapshot(store)
    block, cert, receipts = certified_next(store)
    with pytest.raises(StoreError) as info:
        store.append(block, cert, receipts, state_ops, extra_ops)
    assert info.value.code == "bad_op"
    assert snapshot(store) == before


def test_a_second_open_of_the_same_database_is_a_typed_error(
    store: BlockStore, tmp_path: Path
) -> None:
    with pytest.raises(StoreError) as info:
        BlockStore.open(tmp_path / "ledger.db")
    assert info.value.code == "store_open"


@pytest.mark.parametrize("limits", [
    {"block_cache_mb": 0}, {"write_buffer_mb": 1024}, {"open_files_max": 8},
    {"block_cache_mb": "8"}, {"open_files_max": 64.0}, {"block_cache_mb": True},
])
def test_store_memory_limits_out_of_range_are_a_typed_error(limits: dict[str, object]) -> None:
    with pytest.raises(StoreError) as info:
        StoreMemoryLimits(**limits)  # type: ignore[arg-type]
    assert info.value.code == "store_limits"


def test_a_store_opened_with_small_limits_keeps_every_block(tmp_path: Path) -> None:
    path = tmp_path / "small.db"
    small = StoreMemoryLimits(block_cache_mb=1, write_buffer_mb=1, open_files_max=32)
    with open_test_store(path) as store:
        for _ in range(3):
            append_next(store, 4)
        tip = store.tip()
    with BlockStore.open(path, small) as reopened:
        assert reopened.tip() == tip
        append_next(reopened, 2)
        assert reopened.tip()[0] == tip[0] + 1


def test_tables_are_written_uncompressed_and_snappy_tables_still_read(tmp_path: Path) -> None:
    # Compaction CPU, not disk, limits a validator (COMPRESSION's comment): a table of
    # very compressible values must take their full size on disk.
    path = tmp_path / "plain.db"
    values = {f"k{i:05d}".encode(): bytes(1000) for i in range(3000)}
    with BlockStore.open(path) as store:
        for key, value in values.items():
            store.db.put(key, value)
        store.db.compact_range()
    tables = sum(f.stat().st_size for f in path.glob("*.ldb"))
    assert tables >= 3000 * 1000
    # A database written with snappy (by an older node) opens and reads back the same.
    old = tmp_path / "snappy.db"
    db = plyvel.DB(str(old), create_if_missing=True, compression="snappy")
    for key, value in values.items():
        db.put(key, value)
    db.compact_range()
    db.close()
    assert sum(f.stat().st_size for f in old.glob("*.ldb")) < 3000 * 1000 // 10
    with BlockStore.open(old) as store:
        assert all(store.db.get(key) == value for key, value in values.items())


# -- verify_chain ---------------------------------------------------------------------


def test_verify_chain_passes_on_an_honest_chain(store: BlockStore) -> None:
    for _ in range(5):
        append_next(store, 3)
    report = verify_chain(store, GENESIS_HASH, CHAIN_ID, VALIDATORS)
    assert report.ok and report.blocks_checked == 5 and report.first_bad_height is None
    assert "5 blocks" in str(report)


def test_verify_chain_refuses_the_wrong_genesis_or_chain_or_validators(
    store: BlockStore,
) -> None:
    append_next(store)
    assert not verify_chain(store, sha256(b"x"), CHAIN_ID, VALIDATORS).ok
    wrong_chain = verify_chain(store, GENESIS_HASH, "other-city", VALIDATORS)
    assert wrong_chain.first_bad_height == 1 and "chain" in (wrong_chain.reason or "")
    others = [sha256(bytes([i])) for i in range(4)]
    wrong_set = verify_chain(store, GENESIS_HASH, CHAIN_ID, others)
    assert wrong_set.first_bad_height == 1 and "certificate" in (wrong_set.reason or "")


def _tamper_receipt(store: BlockStore) -> None:
    store.db.put(RECEIPT_PREFIX + struct.pack(">QI", 3, 0), encode({"code": "forged"}))


def _drop_cert(store: BlockStore) -> None:
    store.db.delete(CERT_PREFIX + struct.pack(">Q", 3))


def _corrupt_header(store: BlockStore) -> None:
    store.db.put(HEADER_PREFIX + struct.pack(">Q", 3), b"\xc1garbage")


def _drop_tx_index(store: BlockStore) -> None:
    block = store.block(3)
    assert block is not None
    store.db.delete(TX_LOCATION_PREFIX + sha256(block.txs[1]))


def _swap_cert(store: BlockStore) -> None:
    cert = store.certificate(4)
    assert cert is not None
    store.db.put(CERT_PREFIX + struct.pack(">Q", 3), cert.encode())


def _replace_block(store: BlockStore) -> None:
    # A block with a valid shape and a real-looking certificate, but a broken link.
    block = store.block(3)
    assert block is not None
    forged = dataclasses.replace(block.header, timestamp_ms=1)
    store.db.put(HEADER_PREFIX + struct.pack(">Q", 3), forged.encode())


@pytest.mark.parametrize(
    "tamper", [_tamper_receipt, _drop_cert, _corrupt_header, _drop_tx_index, _swap_cert,
               _replace_block],
)
def test_verify_chain_reports_the_first_tampered_height(store, tamper) -> None:  # type: ignore[no-untyped-def]
    for _ in range(5):
        append_next(store, 2)
    tamper(store)
    report = verify_chain(store, GENESIS_HASH, CHAIN_ID, VALIDATORS)
    assert not report.ok
    assert report.first_bad_height == 3, report
    assert report.blocks_checked == 2
    assert report.reason


# -- durability across LevelDB's log switches -------------------------------------------


def _recording_fsync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the file name behind every os.fsync (the real fsync still runs)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_fsync_older_logs_syncs_every_log_but_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("000003.log", "000012.log", "000009.log", "MANIFEST-000002", "000005.ldb",
                 "notes.log", "LOG"):
        (tmp_path / name).write_bytes(b"x")
    synced = _recording_fsync(monkeypatch)
    assert fsync_older_logs(tmp_path) == ["000003.log", "000009.log"]
    assert synced == ["000003.log", "000009.log"]


def test_fsync_older_logs_skips_a_log_flushed_and_deleted_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "000004.log").write_bytes(b"x")
    (tmp_path / "000007.log").write_bytes(b"x")
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir",
                        lambda path: [*real_listdir(path), "000001.log"])  # gone by open
    assert fsync_older_logs(tmp_path) == ["000004.log"]
    (tmp_path / "000004.log").unlink()
    assert fsync_older_logs(tmp_path) == []  # only the current log is left


def test_sync_fsyncs_the_old_log_that_holds_unsynced_blocks_after_a_log_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks written unsynced, then a switch to a new log: sync() must reach the old one.

    LevelDB fsyncs only its current log on a synced write and leaves the previous one to
    its memtable flush; the old log is held here by writing the unsynced block right
    before the memtable fills, so the sync's own write starts the new log.
    """
    path = tmp_path / "ledger.db"
    with open_test_store(path) as created:
        tip = created.tip()
    store = BlockStore.open(path, StoreMemoryLimits(write_buffer_mb=1))
    try:
        logs_before = sorted(path.glob("*.log"))
        assert len(logs_before) == 1
        # Fill the memtable past 1 MB with unsynced writes; the last is a real block.
        store.db.put(b"fill/0", bytes(1_100_000), sync=False)
        block = append_next(store, 3, sync=False)
        synced = _recording_fsync(monkeypatch)
        store.sync()
        logs_after = sorted(p.name for p in path.glob("*.log"))
        assert logs_after[-1] != logs_before[0].name  # the sync's write started a new log
        # The old log (the block's) was fsynced, unless its flush had already made a
        # synced table of it and deleted it.
        assert logs_before[0].name in synced or logs_before[0].name not in logs_after
        assert store.db.get(SYNC_MARK_KEY) == b""
        assert store.tip()[0] == tip[0] + 1 and store.tip()[1] == block.hash
    finally:
        store.close()
    with BlockStore.open(path) as reopened:
        assert reopened.tip()[1] == block.hash
        assert reopened.db.get(TIP_KEY) is not None
