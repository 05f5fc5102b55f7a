"""Mempool admission, ordering, limits and eviction."""

from __future__ import annotations

from ledger.crypto import KeyPair
from ledger.mempool import Mempool, MempoolLimits
from ledger.tx import Tx, TxError, sign_tx

CHAIN = "test-chain"


def _tx(key: KeyPair, nonce: int, amount: int = 1) -> Tx:
    return sign_tx(key, CHAIN, "tokens", "transfer", nonce, {"amount": amount})


def _accept_all(tx: Tx) -> TxError | None:
    return None


def test_admits_verified_tx_once_and_refuses_duplicates() -> None:
    pool = Mempool(CHAIN, _accept_all)
    key = KeyPair.generate()
    tx = _tx(key, 0)
    assert pool.add_raw(tx.raw) == tx
    again = pool.add_raw(tx.raw)
    assert isinstance(again, TxError) and again.code == "already_known"
    assert len(pool) == 1 and tx.hash in pool


def test_refuses_bad_signature_and_wrong_chain_without_admitting() -> None:
    pool = Mempool(CHAIN, _accept_all)
    key = KeyPair.generate()
    raw = bytearray(_tx(key, 0).raw)
    raw[-3] ^= 0x01
    bad = pool.add_raw(bytes(raw))
    assert isinstance(bad, TxError) and bad.code in {"bad_signature", "tx_malformed"}
    other = sign_tx(key, "other-chain", "tokens", "transfer", 0, {})
    wrong = pool.add_raw(other.raw)
    assert isinstance(wrong, TxError) and wrong.code == "wrong_chain"
    assert len(pool) == 0 and pool.bytes_used == 0


def test_admission_check_rejection_is_returned_and_nothing_kept() -> None:
    def refuse(tx: Tx) -> TxError | None:
        return TxError("bad_nonce", "used")

    pool = Mempool(CHAIN, refuse)
    result = pool.add_raw(_tx(KeyPair.generate(), 0).raw)
    assert isinstance(result, TxError) and result.code == "bad_nonce"
    assert len(pool) == 0


def test_select_keeps_each_sender_in_gap_free_nonce_order() -> None:
    pool = Mempool(CHAIN, _accept_all)
    alice, bob = KeyPair.generate(), KeyPair.generate()
    for nonce in (2, 0, 1, 4):  # 4 leaves a gap after 2
        pool.add_raw(_tx(alice, nonce).raw)
    pool.add_raw(_tx(bob, 5).raw)  # bob's state nonce is 5
    nonces = {alice.address: 0, bob.address: 5}
    chosen = pool.select(100, 10**9, lambda address: nonces[address])
    assert [(t.sender_address, t.nonce) for t in chosen] == [
        (alice.address, 0), (alice.address, 1), (alice.address, 2), (bob.address, 5)
    ]


def test_select_respects_count_and_byte_limits() -> None:
    pool = Mempool(CHAIN, _accept_all)
    keys = [KeyPair.generate() for _ in range(10)]
    for key in keys:
        pool.add_raw(_tx(key, 0).raw)
    assert len(pool.select(3, 10**9, lambda a: 0)) == 3
    one = len(_tx(keys[0], 0).raw)
    assert len(pool.select(100, one * 2 + 1, lambda a: 0)) == 2


def test_full_pool_answers_mempool_full() -> None:
    pool = Mempool(CHAIN, _accept_all, MempoolLimits(txs_max=2, per_sender_max=2))
    key = KeyPair.generate()
    assert isinstance(pool.add_raw(_tx(key, 0).raw), Tx)
    assert isinstance(pool.add_raw(_tx(key, 1).raw), Tx)
    full = pool.add_raw(_tx(key, 2).raw)
    assert isinstance(full, TxError) and full.code == "mempool_full"
    other = pool.add_raw(_tx(KeyPair.generate(), 0).raw)
    assert isinstance(other, TxError) and other.code == "mempool_full"


def test_remove_and_evict_stale_free_space() -> None:
    pool = Mempool(CHAIN, _accept_all)
    key = KeyPair.generate()
    txs = [_tx(key, n) for n in range(3)]
    for tx in txs:
        pool.add_raw(tx.raw)
    pool.remove([txs[0].hash])
    assert txs[0].hash not in pool and len(pool) == 2
    dropped = pool.evict_stale([key.address], lambda a: 2)
    assert dropped == [txs[1].hash]
    assert len(pool) == 1 and pool.bytes_used == len(txs[2].raw)
