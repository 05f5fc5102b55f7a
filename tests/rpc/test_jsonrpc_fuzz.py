"""Fuzzing the parse layer: any bytes or JSON gets a valid JSON-RPC answer, never a crash."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpc.jsonrpc import ERROR_NAMES, INTERNAL_ERROR, RpcDispatcher
from tests.rpc.support import MethodSet, post_raw

# Methods that never fail by design: an internal error from them would be a dispatcher bug.
SAFE_METHOD_NAMES = ["echo", "add", "note", "missing", "rpc.discover", ""]

json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
request_like = st.dictionaries(
    st.sampled_from(["jsonrpc", "method", "params", "id", "extra"]),
    st.one_of(
        st.just("2.0"), st.sampled_from(SAFE_METHOD_NAMES), json_values,
        st.fixed_dictionaries({"text": st.text(max_size=5)}),
        st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    ),
)
messages = st.one_of(json_values, request_like, st.lists(request_like | json_values, max_size=8))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def dispatcher() -> RpcDispatcher:
    return RpcDispatcher.of(MethodSet().methods())


def assert_valid_response_object(item: Any) -> None:
    assert isinstance(item, dict)
    assert item["jsonrpc"] == "2.0"
    assert "id" in item
    assert ("result" in item) != ("error" in item)
    if "error" in item:
        error = item["error"]
        assert error["code"] in ERROR_NAMES
        assert error["code"] != INTERNAL_ERROR
        assert isinstance(error["message"], str) and error["message"]
        assert set(error) <= {"code", "message", "data"}


def assert_valid_answer(message: Any, answer: bytes | None) -> None:
    if answer is None:
        # Only notifications go unanswered.
        items = message if isinstance(message, list) and message else [message]
        assert all(isinstance(item, dict) and "id" not in item for item in items)
        return
    decoded = json.loads(answer)
    if isinstance(decoded, list):
        assert isinstance(message, list)
        assert 0 < len(decoded) <= len(message)
        for item in decoded:
            assert_valid_response_object(item)
    else:
        assert_valid_response_object(decoded)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=200))
def test_random_bytes_always_get_a_valid_json_rpc_answer(
    loop: asyncio.AbstractEventLoop, dispatcher: RpcDispatcher, body: bytes
) -> None:
    answer = loop.run_until_complete(dispatcher.dispatch(body))
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        assert answer is not None
        assert json.loads(answer)["error"]["code"] == -32700
        return
    assert_valid_answer(message, answer)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages)
def test_random_json_always_gets_a_valid_json_rpc_answer(
    loop: asyncio.AbstractEventLoop, dispatcher: RpcDispatcher, message: Any
) -> None:
    answer = loop.run_until_complete(dispatcher.dispatch(json.dumps(message).encode()))
    assert_valid_answer(message, answer)


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=100) | messages.map(lambda m: json.dumps(m).encode()))
def test_random_bodies_over_http_never_get_a_server_error(rpc_url: str, body: bytes) -> None:
    answer = post_raw(rpc_url, body)
    assert answer.status in (200, 204)
    if answer.status == 200:
        decoded = json.loads(answer.body)
        for item in decoded if isinstance(decoded, list) else [decoded]:
            assert_valid_response_object(item)
