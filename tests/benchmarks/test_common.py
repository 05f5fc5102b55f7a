"""The benchmark helpers that decide what is measured: workload shape and statistics."""

from __future__ import annotations

import pytest

from benchmarks.common import Workload, build_workload, parse_mix, percentile
from benchmarks.limit import ceiling_tps, sample_of
from ledger.crypto import KeyPair, sha256
from ledger.tx import Tx, decode_and_verify

CHAIN = "bench-test"


def _workload(txs: int, senders: int, lanes: int, mix: str = "transfer=1") -> Workload:
    return build_workload(CHAIN, KeyPair(sha256(b"treasury")), KeyPair(sha256(b"registrar")),
                          txs, senders, lanes, parse_mix(mix), 8, workers=1)


def test_each_sender_uses_one_lane_with_gap_free_nonces_in_order() -> None:
    workload = _workload(300, 7, 3)
    assert workload.count == 300
    seen_lane: dict[bytes, int] = {}
    next_nonce: dict[bytes, int] = {}
    for lane_index, lane in enumerate(workload.lanes):
        for raw in lane:
            tx = decode_and_verify(raw, CHAIN)
            assert isinstance(tx, Tx)
            assert seen_lane.setdefault(tx.sender, lane_index) == lane_index
            assert tx.nonce == next_nonce.get(tx.sender, 0)
            next_nonce[tx.sender] = tx.nonce + 1
    assert len(next_nonce) == 7


def test_setup_defines_the_class_before_issuing_to_every_sender() -> None:
    workload = _workload(50, 5, 2, "transfer=1,spend=1")
    first = [decode_and_verify(raw, CHAIN) for raw in workload.setup[0]]
    second = [decode_and_verify(raw, CHAIN) for raw in workload.setup[1]]
    assert [tx.op for tx in first if isinstance(tx, Tx)] == ["define_class",
                                                             "register_merchant"]
    assert [tx.op for tx in second if isinstance(tx, Tx)] == ["issue"] * 5


def test_mix_weights_choose_the_ops_and_register_uses_fresh_keys() -> None:
    workload = _workload(200, 10, 2, "transfer=1,register=1")
    txs = [decode_and_verify(raw, CHAIN) for lane in workload.lanes for raw in lane]
    registers = [tx for tx in txs if isinstance(tx, Tx) and tx.op == "register"]
    assert set(workload.op_counts) == {"transfer", "register"}
    assert len(registers) == workload.op_counts["register"] > 0
    assert all(tx.nonce == 0 for tx in registers)
    assert len({tx.sender for tx in registers}) == len(registers)


def test_limit_sample_keeps_every_senders_nonces_from_zero() -> None:
    workload = _workload(120, 6, 3)
    nonces: dict[bytes, list[int]] = {}
    for raw in sample_of(workload, 40):
        tx = decode_and_verify(raw, CHAIN)
        assert isinstance(tx, Tx)
        nonces.setdefault(tx.sender, []).append(tx.nonce)
    assert all(seq == list(range(len(seq))) for seq in nonces.values())


def test_parse_mix_refuses_unknown_ops_and_all_zero_weights() -> None:
    assert parse_mix("transfer=3,spend=1") == {"transfer": 3, "spend": 1}
    with pytest.raises(ValueError, match="unknown op"):
        parse_mix("mint=1")
    with pytest.raises(ValueError, match="positive"):
        parse_mix("transfer=0")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_ceiling_is_cores_over_validators_times_cost() -> None:
    assert ceiling_tps(250.0, 4, 2) == pytest.approx(2000.0)
    assert ceiling_tps(250.0, 10, 2) == pytest.approx(800.0)
