"""The node methods' params schemas (rpc.methods) as the dispatcher applies them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.tx import TX_BYTES_MAX
from rpc.jsonrpc import INVALID_PARAMS, RpcDispatcher, RpcMethod
from rpc.methods import PARAMS_MODELS, jsonable

HASH = "ab" * 32


async def echo_params(params: Any) -> Any:
    return params.model_dump()


DISPATCHER = RpcDispatcher.of(
    RpcMethod(name, model, echo_params) for name, model in PARAMS_MODELS.items()
)


def dispatch(method: str, params: Any) -> dict[str, Any]:
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    answer = asyncio.run(DISPATCHER.dispatch(json.dumps(message).encode()))
    assert answer is not None
    decoded: dict[str, Any] = json.loads(answer)
    return decoded


@pytest.mark.parametrize(
    "method, params, expected",
    [
        ("block_get", [7], {"height": 7, "hash": None}),
        ("block_get", [None, HASH], {"height": None, "hash": HASH}),
        ("block_get", {"hash": HASH}, {"height": None, "hash": HASH}),
        ("tx_submit", ["00ff"], {"tx": "00ff", "wait": False}),
        ("tx_submit", {"tx": "00ff", "wait": True}, {"tx": "00ff", "wait": True}),
        ("tx_get", [HASH], {"hash": HASH}),
        ("state_get", {"key": b"tokens/sup/x".hex()}, {"key": b"tokens/sup/x".hex()}),
        ("account_get", ["cd" * 20], {"address": "cd" * 20}),
        ("node_status", [], {}),
        ("block_latest", {}, {}),
        ("validators_list", [], {}),
    ],
)
def test_documented_params_are_accepted(method: str, params: Any, expected: Any) -> None:
    assert dispatch(method, params)["result"] == expected


@pytest.mark.parametrize(
    "method, params",
    [
        ("block_get", {}),  # neither height nor hash
        ("block_get", {"height": 1, "hash": HASH}),  # both
        ("block_get", {"height": -1}),
        ("block_get", {"height": "1"}),
        ("block_get", {"hash": HASH.upper()}),  # hex is lowercase
        ("block_get", {"hash": HASH[:-2]}),
        ("tx_submit", {"tx": "abc"}),  # odd length
        ("tx_submit", {"tx": ""}),
        ("tx_submit", {"tx": "0x00"}),
        ("tx_submit", {"tx": "00" * (TX_BYTES_MAX + 1)}),
        ("tx_submit", {"tx": "00", "wait": "yes"}),
        ("tx_submit", {"tx": "00", "wait": 1}),
        ("tx_get", {"hash": 5}),
        ("state_get", {"key": "00" * 1025}),
        ("account_get", {"address": "cd" * 32}),
        ("node_status", {"verbose": True}),
        ("node_status", [1]),
    ],
)
def test_malformed_params_are_invalid_params(method: str, params: Any) -> None:
    answer = dispatch(method, params)
    assert answer["error"]["code"] == INVALID_PARAMS
    assert answer["error"]["data"]


def test_jsonable_turns_nested_bytes_into_hex_and_tuples_into_lists() -> None:
    value = {"hash": b"\x01\xff", "sigs": ((b"\x02", b"\x03"),), "n": 5, "s": "x", "z": None}
    assert jsonable(value) == {"hash": "01ff", "sigs": [["02", "03"]], "n": 5, "s": "x",
                               "z": None}


def _jsonable_reference(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(key): _jsonable_reference(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable_reference(item) for item in value]
    return value


ledger_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5)
    | st.binary(max_size=3).map(bytearray),
    lambda children: st.lists(children, max_size=4) | st.lists(children, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), children, max_size=4),
    max_leaves=20,
)


@settings(deadline=None)
@given(ledger_like)
def test_jsonable_fast_path_gives_what_the_plain_walk_gives(value: Any) -> None:
    assert jsonable(value) == _jsonable_reference(value)
