"""The shortcuts on the per-transaction hot path give exactly what the long way gives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from ledger.codec import encode
from ledger.crypto import KeyPair
from ledger.errors import CodecError
from ledger.executor import Executor
from ledger.overlay import CachedReader, MemoryKV
from ledger.receipt import Receipt, decode_receipt
from ledger.rules import BlockContext, StateView, TxContext
from ledger.state import MemoryBackend, WorldState
from ledger.tx import sign_tx
from txtypes.balances import BALANCE_PREFIX, balance_key
from txtypes.tokens import class_key, token_class

CHAIN = "perf-chain"
SHARED_KEY = b"shared/config"
ALICE = KeyPair(bytes(range(32)))
BOB = KeyPair(bytes(range(1, 33)))


class CountingKV(MemoryKV):
    """A memory base that counts the reads of each key."""

    def __init__(self, items: dict[bytes, bytes] | None = None) -> None:
        super().__init__(items)
        self.reads: dict[bytes, int] = {}

    def get(self, key: bytes) -> bytes | None:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().get(key)


class _Empty(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SharedReader:
    """Every tx reads one shared key (like a token class record) and writes its own."""

    family = "shared"

    @property
    def operations(self) -> Mapping[str, type[BaseModel]]:
        return {"copy": _Empty}

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        return None

    def check(self, ctx: TxContext, state: StateView) -> None:
        state.get(SHARED_KEY)

    def apply(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        shared = state.get(SHARED_KEY)
        state.put(f"copy/{ctx.sender_address}/{ctx.tx.nonce}".encode(), shared or b"none")
        return {"copied": shared is not None}

    def begin_block(self, block: BlockContext, state: StateView) -> None:
        return None

    def end_block(self, block: BlockContext, state: StateView) -> None:
        return None


def _block() -> BlockContext:
    return BlockContext(chain_id=CHAIN, height=1, timestamp_ms=1_000, proposer=b"\x01" * 32)


def test_a_block_reads_each_committed_key_from_the_base_once() -> None:
    base = CountingKV({SHARED_KEY: b"v1"})
    txs = [sign_tx(key, CHAIN, "shared", "copy", nonce, {})
           for nonce in range(3) for key in (ALICE, BOB)]
    result = Executor(CHAIN, [SharedReader()]).execute_block(base, _block(), txs)
    assert all(receipt.ok for receipt in result.receipts)
    assert base.reads[SHARED_KEY] == 1  # six txs read it twice each
    assert all(count == 1 for count in base.reads.values())
    copies = [value for key, value in result.writes.items() if key.startswith(b"copy/")]
    assert copies == [b"v1"] * 6


def test_cached_reader_remembers_absent_keys_and_passes_scans_through() -> None:
    base = CountingKV({b"a/1": b"x", b"a/2": b"y"})
    reader = CachedReader(base)
    assert reader.get(b"missing") is None
    assert reader.get(b"missing") is None
    assert reader.get(b"a/1") == b"x"
    assert reader.get(b"a/1") == b"x"
    assert base.reads == {b"missing": 1, b"a/1": 1}
    assert reader.scan(b"a/", 10) == [(b"a/1", b"x"), (b"a/2", b"y")]


def _seeded_state(backend: MemoryBackend) -> WorldState:
    state = WorldState(backend)
    state.commit({f"k{i}".encode(): encode(i) for i in range(50)}, height=0)
    return state


def test_prepare_after_reads_gives_the_same_ops_as_prepare_without_them() -> None:
    writes: dict[bytes, bytes | None] = {b"k1": encode(100), b"k2": None, b"new": b"n"}
    fresh = _seeded_state(MemoryBackend())
    expected = fresh.prepare(writes, height=1).ops

    warmed = _seeded_state(MemoryBackend())
    reader = warmed.reader()
    for key in (b"k1", b"k2", b"new", b"k3"):
        reader.get(key)
    assert warmed.prepare(writes, height=1).ops == expected


def test_a_reader_of_an_older_state_cannot_feed_a_newer_undo_record() -> None:
    state = _seeded_state(MemoryBackend())
    old_reader = state.reader()
    assert old_reader.get(b"k7") == encode(7)  # remembered at height 0
    state.commit({b"k7": encode(70)}, height=1)
    old_reader.get(b"k8")
    state.commit({b"k7": encode(700)}, height=2)
    value, _ = state.prove_at(b"k7", 1)
    assert value == encode(70)
    value, _ = state.prove_at(b"k7", 0)
    assert value == encode(7)
    assert state.root_at(1) == WorldState.in_memory().commit(
        {**{f"k{i}".encode(): encode(i) for i in range(50)}, b"k7": encode(70)})


_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.text(max_size=20) | st.binary(max_size=20))
_results = st.dictionaries(
    st.text(max_size=8),
    _scalars | st.lists(_scalars, max_size=3) | st.dictionaries(st.text(max_size=4), _scalars,
                                                                max_size=3),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(
    tx_hash=st.binary(min_size=32, max_size=32),
    index=st.integers(min_value=0, max_value=2**64 - 1),
    code=st.text(max_size=12),
    reason=st.text(max_size=40),
    ok=st.booleans(),
    result=_results,
)
def test_receipt_encoding_is_the_canonical_encoding_of_its_wire_map(
    tx_hash: bytes, index: int, code: str, reason: str, ok: bool, result: dict[str, Any]
) -> None:
    receipt = (Receipt.accepted(tx_hash, index, result) if ok
               else Receipt(tx_hash, index, "rejected", code, reason, result))
    raw = receipt.encode()
    assert raw == encode(receipt.to_wire())
    assert decode_receipt(raw) == receipt


def test_receipt_with_an_out_of_range_result_integer_is_refused_like_the_codec_does() -> None:
    receipt = Receipt.accepted(b"\x00" * 32, 0, {"too_big": 2**64})
    with pytest.raises(CodecError):
        receipt.encode()


@settings(max_examples=150, deadline=None)
@given(class_id=st.text(max_size=10), holder=st.text(max_size=45))
def test_balance_key_is_prefix_class_slash_holder_in_utf8(class_id: str, holder: str) -> None:
    try:
        expected = BALANCE_PREFIX + class_id.encode() + b"/" + holder.encode()
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            balance_key(class_id, holder)
        return
    assert balance_key(class_id, holder) == expected


def _class_record(**changes: Any) -> dict[str, Any]:
    record = {"class_id": "food", "name": "Food", "budget": 1000, "categories": ["a", "b"],
              "transferable": True, "expiry_height": 99, "redemption_cents_per_unit": 1,
              "eligibility_schema": None, "treasury": "t", "defined_height": 1}
    return {**record, **changes}


def test_a_changed_class_record_copy_does_not_change_the_next_read() -> None:
    base = MemoryKV({class_key("food"): encode(_class_record())})
    first = token_class(base, "food")
    assert first == _class_record()
    first["categories"].append("weapons")
    first["budget"] = 1
    assert token_class(base, "food") == _class_record()


def test_a_rewritten_class_record_is_read_as_rewritten() -> None:
    base = MemoryKV({class_key("food"): encode(_class_record())})
    assert token_class(base, "food") == _class_record()
    base.apply({class_key("food"): encode(_class_record(categories=["c"], budget=5))})
    assert token_class(base, "food") == _class_record(categories=["c"], budget=5)
    nested = _class_record(extra={"deep": [1]})
    base.apply({class_key("food"): encode(nested)})
    got = token_class(base, "food")
    assert got == nested
    assert got is not None
    got["extra"]["deep"].append(2)
    assert token_class(base, "food") == nested
    base.apply({class_key("food"): None})
    assert token_class(base, "food") is None


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, key: bytes) -> bytes | None:
        self.gets += 1
        return super().get(key)


def test_reads_are_shared_by_readers_and_blocks_and_a_block_s_writes_need_no_read() -> None:
    backend = CountingBackend()
    _seeded_state(backend)
    state = WorldState(backend)  # reopened: nothing cached yet
    before = backend.gets
    assert state.reader().get(b"k3") == encode(3)  # admission
    assert state.reader().get(b"k3") == encode(3)  # the block's execution
    assert state.reader().get(b"absent") is None
    assert state.reader().get(b"absent") is None
    assert backend.gets - before == 2
    state.commit({b"k3": encode(33), b"absent": b"now"}, height=1)
    after_block = backend.gets
    assert state.reader().get(b"k3") == encode(33)
    assert state.reader().get(b"absent") == b"now"
    assert backend.gets == after_block  # written by the block: known without a read
    assert state.reader().get(b"k4") == encode(4)
    assert backend.gets == after_block + 1
