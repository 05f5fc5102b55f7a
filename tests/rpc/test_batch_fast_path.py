"""The dispatcher's batch fast path, and tx_submit answering a whole batch at once.

A batch whose calls all go to one method with a batch handler is answered by one handler
call; every answer must be what the per-call path gives, and any batch the fast path
does not fully understand must take the per-call path.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ledger.crypto import KeyPair, sha256
from ledger.receipt import Receipt
from ledger.tx import TX_BYTES_MAX, Tx, TxError, decode_and_verify, sign_tx
from rpc.jsonrpc import (
    INTERNAL_ERROR,
    TIMEOUT,
    TX_REJECTED,
    UNAVAILABLE,
    RpcAppError,
    RpcDispatcher,
    RpcMethod,
    RpcParams,
)
from rpc.methods import TxSubmitParams, jsonable, tx_submit_fast
from rpc.node_methods import TxWaiters, build_node_methods

CHAIN_ID = "batchcity"


# -- tx_submit's cheap params check ---------------------------------------------------------
hex_like = st.text(alphabet="0123456789abcdefABCDEF \n", max_size=12)
param_values = st.one_of(hex_like, st.booleans(), st.none(), st.integers(0, 1), st.just([]))
raw_params = st.one_of(
    st.dictionaries(st.sampled_from(["tx", "wait", "extra"]), param_values, max_size=3),
    st.lists(param_values, max_size=3),
    param_values,
)


@settings(max_examples=600, deadline=None)
@given(raw_params)
def test_tx_submit_fast_check_accepts_exactly_what_the_params_model_accepts(params: Any) -> None:
    fast = tx_submit_fast(params)
    as_map = params
    if isinstance(params, list):
        as_map = dict(zip(["tx", "wait"], params, strict=False)) if len(params) <= 2 else None
    try:
        model = TxSubmitParams.model_validate(as_map)
    except ValidationError:
        assert fast is None
        return
    assert fast is not None
    assert fast.raw == bytes.fromhex(model.tx) and fast.wait == model.wait


def test_tx_submit_fast_check_leaves_oversize_txs_to_the_model() -> None:
    assert tx_submit_fast({"tx": "00" * TX_BYTES_MAX}) is not None
    assert tx_submit_fast({"tx": "00" * (TX_BYTES_MAX + 1)}) is None


# -- the dispatcher -------------------------------------------------------------------------
class DoubleParams(RpcParams):
    x: int


@dataclass
class Doubler:
    batch_calls: list[list[int]] = field(default_factory=list)

    async def one(self, params: DoubleParams) -> int:
        return (await self.many([params.x]))[0]  # type: ignore[no-any-return]

    async def many(self, xs: list[int]) -> list[Any]:
        self.batch_calls.append(xs)
        await asyncio.sleep(0)
        return [RpcAppError(-32050, "negative", {"x": x}) if x < 0 else 2 * x for x in xs]

    def methods(self, *, fast: bool) -> list[RpcMethod]:
        async def one(params: DoubleParams) -> int:
            outcome = (await self.many([params.x]))[0]
            if isinstance(outcome, RpcAppError):
                raise outcome
            return int(outcome)

        def check(params: Any) -> int | None:
            if type(params) is dict and set(params) == {"x"} and type(params["x"]) is int:
                return int(params["x"])
            return None

        async def echo(params: DoubleParams) -> int:
            return params.x

        extra = {"batch_params": check, "batch_handler": self.many} if fast else {}
        return [RpcMethod("double", DoubleParams, one, **extra),  # type: ignore[arg-type]
                RpcMethod("echo", DoubleParams, echo)]


def _call(x: Any, request_id: Any = 1, method: str = "double") -> dict[str, Any]:
    call: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": {"x": x}}
    if request_id is not None:
        call["id"] = request_id
    return call


def _answer(dispatcher: RpcDispatcher, batch: list[Any]) -> Any:
    body = asyncio.run(dispatcher.dispatch(json.dumps(batch).encode()))
    return None if body is None else json.loads(body)


BATCHES = {
    "all good": [_call(1, 1), _call(2, "two"), _call(3, None), _call(0, 4)],
    "app errors": [_call(-1, 1), _call(5, 2)],
    "only notifications": [_call(1, None), _call(2, None)],
    "bad params in one call": [_call(1, 1), _call("x", 2)],
    "another method in the batch": [_call(1, 1), _call(2, 2, method="echo")],
    "invalid request in the batch": [_call(1, 1), {"jsonrpc": "1.0", "id": 2}],
    "positional params": [{"jsonrpc": "2.0", "method": "double", "params": [3], "id": 1}],
}


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_batch_answers_are_the_same_with_and_without_the_fast_path(name: str) -> None:
    fast, slow = Doubler(), Doubler()
    fast_answer = _answer(RpcDispatcher.of(fast.methods(fast=True)), BATCHES[name])
    slow_answer = _answer(RpcDispatcher.of(slow.methods(fast=False)), BATCHES[name])
    assert fast_answer == slow_answer


def test_a_clean_batch_is_one_handler_call_and_a_mixed_one_is_per_call() -> None:
    doubler = Doubler()
    dispatcher = RpcDispatcher.of(doubler.methods(fast=True))
    assert _answer(dispatcher, BATCHES["all good"])[0]["result"] == 2
    assert doubler.batch_calls == [[1, 2, 3, 0]]
    doubler.batch_calls.clear()
    _answer(dispatcher, BATCHES["bad params in one call"])
    assert doubler.batch_calls == [[1]]  # the good call alone, through the per-call handler


def test_a_batch_handler_bug_is_an_internal_error_for_every_call() -> None:
    async def broken(xs: list[int]) -> list[Any]:
        raise RuntimeError("bug")

    async def one(params: DoubleParams) -> int:
        return params.x

    method = RpcMethod("double", DoubleParams, one, batch_params=lambda p: p["x"],
                       batch_handler=broken)
    answer = _answer(RpcDispatcher.of([method]), [_call(1, 1), _call(2, 2)])
    assert [item["error"]["code"] for item in answer] == [INTERNAL_ERROR, INTERNAL_ERROR]
    assert [item["id"] for item in answer] == [1, 2]


# -- tx_submit over a small node ----------------------------------------------------------------
@dataclass
class FakeStore:
    """Committed txs: hash -> (height, index) and receipt bytes."""

    locations: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    receipts: dict[bytes, bytes] = field(default_factory=dict)

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        return self.locations.get(tx_hash)

    def receipt(self, tx_hash: bytes) -> bytes | None:
        return self.receipts.get(tx_hash)


@dataclass
class FakeNode:
    """Admits verified txs once; committed ones are refused as nonce_used, like the node."""

    halted: str | None = None
    waiters: TxWaiters = field(default_factory=TxWaiters)
    store: FakeStore = field(default_factory=FakeStore)
    pending: dict[bytes, Tx] = field(default_factory=dict)
    admit_calls: int = 0
    admits_done: int = 0

    async def admit(self, raw: bytes, *, forward: bool = True) -> Tx | TxError:
        self.admit_calls += 1
        await asyncio.sleep(0)
        self.admits_done += 1
        tx = decode_and_verify(raw, CHAIN_ID)
        if isinstance(tx, TxError):
            return tx
        if tx.hash in self.store.locations:
            return TxError("nonce_used", "already committed")
        if tx.hash in self.pending:
            return TxError("already_known", "already pending")
        self.pending[tx.hash] = tx
        return tx

    def commit(self, tx_hash: bytes, height: int, index: int) -> None:
        receipt = Receipt.accepted(tx_hash, index, {"amount": 1})
        self.store.locations[tx_hash] = (height, index)
        self.store.receipts[tx_hash] = receipt.encode()
        self.waiters.resolve(tx_hash, {"hash": tx_hash.hex(), "height": height, "index": index,
                                       "receipt": jsonable(receipt.to_wire())})


@dataclass
class BatchAdmittingNode(FakeNode):
    """Offers admit_many, which the RPC uses instead of one admit per tx."""

    admit_many_calls: int = 0

    async def admit_many(self, raws: list[bytes]) -> list[Tx | TxError]:
        self.admit_many_calls += 1
        return [await FakeNode.admit(self, raw) for raw in raws]


KEY = KeyPair(sha256(b"batch fast path sender"))


def _raw(nonce: int, chain_id: str = CHAIN_ID) -> bytes:
    return sign_tx(KEY, chain_id, "tokens", "transfer", nonce,
                   {"class_id": "food", "to": "ab" * 20, "amount": 1}).raw


def _submit_batch(raws: list[bytes], *, wait: bool) -> bytes:
    return json.dumps([{"jsonrpc": "2.0", "method": "tx_submit", "id": index,
                        "params": {"tx": raw.hex(), "wait": wait}}
                       for index, raw in enumerate(raws)]).encode()


async def _dispatch_then_commit(node: FakeNode, raws: list[bytes], *, timeout_s: float = 5.0,
                                commit: list[int] | None = None, admits: int | None = None
                                ) -> Any:
    """Submit `raws` as one waiting batch; once `admits` admissions ran, commit some."""
    dispatcher = RpcDispatcher.of(build_node_methods(node, wait_timeout_s=timeout_s))  # type: ignore[arg-type]
    answer = asyncio.ensure_future(dispatcher.dispatch(_submit_batch(raws, wait=True)))
    expected = len(raws) if admits is None else admits
    while node.admits_done < expected and not answer.done():
        await asyncio.sleep(0)
    for index in commit if commit is not None else range(len(raws)):
        node.commit(sha256(raws[index]), 7, index)
    body = await answer
    return json.loads(body)


@pytest.mark.parametrize("node_class", [FakeNode, BatchAdmittingNode])
def test_waiting_submits_of_a_batch_answer_with_their_commits_in_order(
        node_class: type[FakeNode]) -> None:
    node = node_class()
    raws = [_raw(nonce) for nonce in range(5)]
    answer = asyncio.run(_dispatch_then_commit(node, raws))
    assert [item["id"] for item in answer] == list(range(5))
    assert [item["result"]["hash"] for item in answer] == [sha256(raw).hex() for raw in raws]
    assert {item["result"]["status"] for item in answer} == {"committed"}
    assert [item["result"]["index"] for item in answer] == list(range(5))
    assert node.waiters.count == 0
    if isinstance(node, BatchAdmittingNode):
        assert node.admit_many_calls == 1 and node.admit_calls == 5


def test_a_bad_tx_in_a_batch_is_refused_alone_and_the_rest_commit() -> None:
    node = FakeNode()
    raws = [_raw(0), _raw(1, chain_id="elsewhere"), _raw(2)]
    answer = asyncio.run(_dispatch_then_commit(node, raws, commit=[0, 2]))
    assert answer[1]["error"]["code"] == TX_REJECTED
    assert answer[1]["error"]["data"] == {"code": "wrong_chain"}
    assert answer[0]["result"]["status"] == answer[2]["result"]["status"] == "committed"
    assert node.waiters.count == 0


def test_uncommitted_waiting_submits_time_out_and_leave_no_waiter() -> None:
    node = FakeNode()
    raws = [_raw(0), _raw(1)]
    answer = asyncio.run(_dispatch_then_commit(node, raws, timeout_s=0.05, commit=[0]))
    assert answer[0]["result"]["status"] == "committed"
    assert answer[1]["error"]["code"] == TIMEOUT
    assert answer[1]["error"]["data"] == {"hash": sha256(raws[1]).hex()}
    assert node.waiters.count == 0 and not node.waiters.futures


def test_a_resubmitted_committed_tx_answers_with_its_receipt() -> None:
    node = FakeNode()
    raw = _raw(0)
    node.commit(sha256(raw), 3, 0)

    async def run() -> Any:
        dispatcher = RpcDispatcher.of(build_node_methods(node))  # type: ignore[arg-type]
        return json.loads(await dispatcher.dispatch(_submit_batch([raw, raw], wait=True)))

    answer = asyncio.run(run())
    assert [item["result"]["height"] for item in answer] == [3, 3]
    assert {item["result"]["status"] for item in answer} == {"committed"}
    assert node.waiters.count == 0


def test_a_batch_beyond_the_waiter_limit_refuses_the_calls_that_cannot_wait() -> None:
    node = FakeNode(waiters=TxWaiters(count_max=2))
    raws = [_raw(nonce) for nonce in range(3)]
    answer = asyncio.run(_dispatch_then_commit(node, raws, commit=[0, 1], admits=2))
    assert [item.get("error", {}).get("code") for item in answer] == [None, None, UNAVAILABLE]
    assert sha256(raws[2]) not in node.pending  # refused before admission, as before


def test_a_cancelled_batch_stops_waiting() -> None:
    node = FakeNode()

    async def run() -> None:
        dispatcher = RpcDispatcher.of(build_node_methods(node))  # type: ignore[arg-type]
        task = asyncio.ensure_future(dispatcher.dispatch(_submit_batch([_raw(0)], wait=True)))
        while not node.pending:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert node.waiters.count == 0 and not node.waiters.futures


def test_a_halted_node_refuses_a_batch_without_admitting() -> None:
    node = FakeNode(halted="state mismatch")
    answer = asyncio.run(_dispatch_then_commit(node, [_raw(0)], commit=[], admits=0))
    assert answer[0]["error"]["code"] == UNAVAILABLE
    assert node.admit_calls == 0
