"""Executor: nonces, schema, rule errors, hooks, programmer errors, receipts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from ledger.codec import decode, encode
from ledger.crypto import KeyPair
from ledger.errors import CodecError, InvariantViolation
from ledger.executor import Executor, next_nonce, nonce_key
from ledger.merkle import merkle_root
from ledger.overlay import MemoryKV
from ledger.receipt import Receipt, decode_receipt
from ledger.rules import BlockContext, RuleError, StateView, TxContext
from ledger.tx import Tx, sign_tx

CHAIN = "test-chain"


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class AddPayload(_Payload):
    amount: int = Field(ge=0)


class FailPayload(_Payload):
    code: str


class CounterModule:
    """Test-only rules: `add` adds to the sender's counter; `fail` writes then raises."""

    family = "counter"

    def __init__(self, log: list[str], *, family: str = "counter") -> None:
        self.family = family
        self.log = log

    @property
    def operations(self) -> Mapping[str, type[BaseModel]]:
        return {"add": AddPayload, "fail": FailPayload, "crash": _Payload,
                "touch_nonce": _Payload, "bad_result": _Payload}

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        return None

    def _key(self, ctx: TxContext) -> bytes:
        return f"{self.family}/{ctx.sender_address}".encode()

    def check(self, ctx: TxContext, state: StateView) -> None:
        self.log.append(f"check {self.family} {ctx.index}")
        if isinstance(ctx.payload, AddPayload) and ctx.payload.amount > 1000:
            raise RuleError("too_large", f"{ctx.payload.amount} exceeds 1000")

    def apply(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        self.log.append(f"apply {self.family} {ctx.index}")
        op = ctx.tx.op
        if op == "add":
            assert isinstance(ctx.payload, AddPayload)
            total = (state.get_obj(self._key(ctx)) or 0) + ctx.payload.amount
            state.put_obj(self._key(ctx), total)
            return {"total": total}
        if op == "fail":
            assert isinstance(ctx.payload, FailPayload)
            state.put(f"{self.family}/junk".encode(), b"should vanish")
            raise RuleError(ctx.payload.code, "asked to fail")
        if op == "crash":
            raise KeyError("a bug in the module")
        if op == "touch_nonce":
            state.put(nonce_key(ctx.sender_address), encode(0))
            return {}
        return {"bad": 1.5}

    def begin_block(self, block: BlockContext, state: StateView) -> None:
        self.log.append(f"begin {self.family}")

    def end_block(self, block: BlockContext, state: StateView) -> None:
        self.log.append(f"end {self.family}")
        if block.height == 666:
            raise RuleError("hook_refused", "hooks cannot reject")
        state.put_obj(f"{self.family}/last_height".encode(), block.height)


ALICE = KeyPair(bytes(range(32)))
BOB = KeyPair(bytes(range(1, 33)))


def _block(height: int = 1) -> BlockContext:
    return BlockContext(chain_id=CHAIN, height=height, timestamp_ms=1_000 * height,
                        proposer=b"\x01" * 32)


def _tx(key: KeyPair, nonce: int, op: str = "add", payload: dict[str, Any] | None = None,
        family: str = "counter", chain_id: str = CHAIN) -> Tx:
    return sign_tx(key, chain_id, family, op, nonce,
                   {"amount": 5} if payload is None else payload)


def _executor(log: list[str] | None = None) -> Executor:
    return Executor(CHAIN, [CounterModule([] if log is None else log)])


def _run(base: MemoryKV, txs: list[Tx], height: int = 1, executor: Executor | None = None
         ) -> list[Receipt]:
    result = (executor or _executor()).execute_block(base, _block(height), txs)
    base.apply(result.writes)
    return result.receipts


def test_valid_tx_applies_and_consumes_its_nonce() -> None:
    base = MemoryKV()
    [receipt] = _run(base, [_tx(ALICE, 0)])
    assert receipt.ok and receipt.code == "ok" and receipt.result == {"total": 5}
    assert next_nonce(base, ALICE.address) == 1
    assert decode(base.get(f"counter/{ALICE.address}".encode()) or b"") == 5


def test_replaying_a_committed_tx_in_a_later_block_is_rejected_and_changes_nothing() -> None:
    base = MemoryKV()
    tx = _tx(ALICE, 0)
    _run(base, [tx])
    before = base.items()
    result = _executor().execute_block(base, _block(2), [tx])
    assert result.receipts[0].code == "bad_nonce"
    assert not result.receipts[0].ok
    # Only the end_block hook wrote something; the replay itself did not.
    assert set(result.writes) == {b"counter/last_height"}
    assert base.items() == before


def test_same_tx_twice_in_one_block_applies_once() -> None:
    base = MemoryKV()
    tx = _tx(ALICE, 0)
    receipts = _run(base, [tx, tx])
    assert [r.code for r in receipts] == ["ok", "bad_nonce"]
    assert decode(base.get(f"counter/{ALICE.address}".encode()) or b"") == 5


def test_future_nonce_is_rejected_without_consuming_a_nonce() -> None:
    base = MemoryKV()
    [receipt] = _run(base, [_tx(ALICE, 3)])
    assert receipt.code == "bad_nonce"
    assert next_nonce(base, ALICE.address) == 0


def test_consecutive_nonces_in_one_block_all_apply() -> None:
    base = MemoryKV()
    receipts = _run(base, [_tx(ALICE, 0), _tx(BOB, 0), _tx(ALICE, 1)])
    assert [r.code for r in receipts] == ["ok", "ok", "ok"]
    assert [r.index for r in receipts] == [0, 1, 2]
    assert next_nonce(base, ALICE.address) == 2


def test_schema_rejection_names_field_and_stable_type_and_consumes_nonce() -> None:
    base = MemoryKV()
    [wrong_type] = _run(base, [_tx(ALICE, 0, payload={"amount": "5"})])
    assert wrong_type.code == "invalid_payload"
    assert wrong_type.reason == "amount: int_type"
    [extra] = _run(base, [_tx(ALICE, 1, payload={"amount": 1, "memo": "x"})], height=2)
    assert extra.reason == "memo: extra_forbidden"
    assert next_nonce(base, ALICE.address) == 2
    assert base.get(f"counter/{ALICE.address}".encode()) is None


def test_rule_error_discards_the_tx_writes_but_consumes_the_nonce() -> None:
    base = MemoryKV()
    [receipt] = _run(base, [_tx(ALICE, 0, op="fail", payload={"code": "no_way"})])
    assert receipt.status == "rejected"
    assert (receipt.code, receipt.reason, receipt.result) == ("no_way", "asked to fail", {})
    assert base.get(b"counter/junk") is None
    assert next_nonce(base, ALICE.address) == 1


def test_check_failure_stops_before_apply() -> None:
    log: list[str] = []
    base = MemoryKV()
    [receipt] = _run(base, [_tx(ALICE, 0, payload={"amount": 5000})],
                     executor=_executor(log))
    assert receipt.code == "too_large"
    assert "apply counter 0" not in log
    assert next_nonce(base, ALICE.address) == 1


def test_unknown_family_and_operation_are_rejected_and_consume_the_nonce() -> None:
    base = MemoryKV()
    receipts = _run(base, [_tx(ALICE, 0, family="nosuch"), _tx(ALICE, 1, op="nosuch")])
    assert [r.code for r in receipts] == ["unknown_family", "unknown_operation"]
    assert next_nonce(base, ALICE.address) == 2


def test_tx_for_another_chain_is_rejected_without_consuming_the_nonce() -> None:
    base = MemoryKV()
    [receipt] = _run(base, [_tx(ALICE, 0, chain_id="other-chain")])
    assert receipt.code == "wrong_chain"
    assert next_nonce(base, ALICE.address) == 0


def test_hooks_run_in_genesis_order_around_the_transactions() -> None:
    log: list[str] = []
    executor = Executor(CHAIN, [CounterModule(log, family="alpha"),
                                CounterModule(log, family="beta")])
    executor.execute_block(MemoryKV(), _block(), [_tx(ALICE, 0, family="beta")])
    assert log == ["begin alpha", "begin beta", "check beta 0", "apply beta 0",
                   "end alpha", "end beta"]


def test_execute_block_leaves_the_base_untouched() -> None:
    base = MemoryKV({b"counter/x": b"\x01"})
    before = base.items()
    result = _executor().execute_block(base, _block(), [_tx(ALICE, 0), _tx(BOB, 0)])
    assert result.writes
    assert base.items() == before


def test_module_raising_a_non_rule_error_halts_with_a_note() -> None:
    with pytest.raises(KeyError) as info:
        _executor().execute_block(MemoryKV(), _block(), [_tx(ALICE, 0, op="crash", payload={})])
    assert any("programmer error" in note for note in info.value.__notes__)


def test_rule_error_from_a_block_hook_is_a_broken_invariant() -> None:
    with pytest.raises(InvariantViolation, match="hooks may not reject"):
        _executor().execute_block(MemoryKV(), _block(666), [])


def test_module_writing_a_nonce_key_is_a_broken_invariant() -> None:
    with pytest.raises(InvariantViolation):
        _executor().execute_block(MemoryKV(), _block(),
                                  [_tx(ALICE, 0, op="touch_nonce", payload={})])


def test_module_returning_an_unencodable_result_is_a_broken_invariant() -> None:
    with pytest.raises(InvariantViolation):
        _executor().execute_block(MemoryKV(), _block(),
                                  [_tx(ALICE, 0, op="bad_result", payload={})])


def test_receipts_root_is_the_merkle_root_of_encoded_receipts_and_is_deterministic() -> None:
    txs = [_tx(ALICE, 0), _tx(ALICE, 1, op="fail", payload={"code": "x"}), _tx(ALICE, 9)]
    first = _executor().execute_block(MemoryKV(), _block(), txs)
    second = _executor().execute_block(MemoryKV(), _block(), txs)
    assert first.receipts_root == second.receipts_root
    assert first.encoded_receipts == second.encoded_receipts
    assert first.receipts_root == merkle_root([r.encode() for r in first.receipts])
    assert first.writes == second.writes
    assert [decode_receipt(raw) for raw in first.encoded_receipts] == first.receipts


@pytest.mark.parametrize(
    "mutation",
    [
        {"status": "maybe"},
        {"tx_hash": b"short"},
        {"index": -1},
        {"result": []},
        {"code": "not_ok"},
        {"extra": 1},
    ],
)
def test_malformed_receipts_are_refused(mutation: dict[str, Any]) -> None:
    wire = Receipt.accepted(b"\x07" * 32, 0, {}).to_wire()
    wire.update(mutation)
    with pytest.raises(CodecError):
        decode_receipt(encode(wire))


# -- admission ---------------------------------------------------------------------------


def test_admission_accepts_current_and_future_nonces_and_refuses_used_ones() -> None:
    base = MemoryKV()
    _run(base, [_tx(ALICE, 0)])
    executor = _executor()
    assert executor.check_admission(_tx(ALICE, 1), base) is None
    assert executor.check_admission(_tx(ALICE, 4), base) is None
    used = executor.check_admission(_tx(ALICE, 0), base)
    assert used is not None and used.code == "nonce_used"
    far = executor.check_admission(_tx(ALICE, 100), base, nonce_ahead_max=10)
    assert far is not None and far.code == "nonce_too_far"


def test_admission_refuses_unknown_family_operation_bad_payload_and_wrong_chain() -> None:
    executor, base = _executor(), MemoryKV()
    cases = {
        "unknown_family": _tx(ALICE, 0, family="nosuch"),
        "unknown_operation": _tx(ALICE, 0, op="nosuch"),
        "invalid_payload": _tx(ALICE, 0, payload={"amount": -1}),
        "wrong_chain": _tx(ALICE, 0, chain_id="other-chain"),
    }
    for code, tx in cases.items():
        error = executor.check_admission(tx, base)
        assert error is not None and error.code == code
    bad = executor.check_admission(cases["invalid_payload"], base)
    assert bad is not None and "amount" in bad.reason and "greater_than_equal" in bad.reason


def test_two_modules_with_one_family_are_refused() -> None:
    with pytest.raises(InvariantViolation):
        Executor(CHAIN, [CounterModule([]), CounterModule([])])


def test_execution_over_committed_state_matches_execution_over_memory() -> None:
    from ledger.state import WorldState

    state = WorldState.in_memory()
    memory = MemoryKV()
    first = _executor().execute_block(memory, _block(1), [_tx(ALICE, 0), _tx(BOB, 0)])
    memory.apply(first.writes)
    state.commit(first.writes, height=1)
    txs = [_tx(ALICE, 1), _tx(BOB, 1, op="fail", payload={"code": "x"}), _tx(ALICE, 0)]
    over_memory = _executor().execute_block(memory, _block(2), txs)
    over_state = _executor().execute_block(state.reader(), _block(2), txs)
    assert over_state.writes == over_memory.writes
    assert over_state.receipts_root == over_memory.receipts_root
