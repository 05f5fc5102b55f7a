"""RpcClient and SyncRpcClient against the real test server: round trips and error mapping."""

from __future__ import annotations

import asyncio
import socket

import pytest

from rpc.client import (
    TRANSPORT_ERROR,
    RpcClient,
    RpcClientError,
    RpcTransportError,
    SyncRpcClient,
)
from rpc.jsonrpc import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LIMIT_EXCEEDED,
    MEMPOOL_FULL,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    TIMEOUT,
    TX_REJECTED,
    UNAVAILABLE,
)
from tests.rpc.support import MethodSet


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_call_by_name_and_by_position_round_trips(rpc_url: str) -> None:
    async def scenario() -> tuple[object, object]:
        async with RpcClient(rpc_url) as client:
            return (await client.call("echo", text="hi", times=2),
                    await client.call("add", 2, 40))

    assert asyncio.run(scenario()) == ("hihi", 42)


def test_bytes_params_are_sent_as_lowercase_hex(rpc_url: str) -> None:
    async def scenario() -> object:
        async with RpcClient(rpc_url) as client:
            return await client.call("echo", text=b"\xab\x01")

    assert asyncio.run(scenario()) == "ab01"


def test_call_refuses_mixed_positional_and_named_params(rpc_url: str) -> None:
    async def scenario() -> None:
        async with RpcClient(rpc_url) as client:
            await client.call("add", 1, b=2)

    with pytest.raises(TypeError):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    "code, name",
    [(TX_REJECTED, "tx_rejected"), (NOT_FOUND, "not_found"), (MEMPOOL_FULL, "mempool_full"),
     (TIMEOUT, "timeout"), (UNAVAILABLE, "unavailable"), (BAD_REQUEST, "bad_request")],
)
def test_application_errors_become_client_errors_with_code_name_and_data(
    rpc_url: str, code: int, name: str
) -> None:
    async def scenario() -> None:
        async with RpcClient(rpc_url) as client:
            await client.call("app_error", code=code)

    with pytest.raises(RpcClientError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == code
    assert caught.value.name == name
    assert caught.value.message == f"application error {code}"
    assert caught.value.data == {"why": "asked"}
    assert name in str(caught.value)


@pytest.mark.parametrize(
    "method, params, code",
    [("missing", {}, METHOD_NOT_FOUND), ("add", {"a": "1", "b": 2}, INVALID_PARAMS),
     ("crash", {}, INTERNAL_ERROR)],
)
def test_protocol_errors_become_client_errors(
    rpc_url: str, method: str, params: dict[str, object], code: int
) -> None:
    async def scenario() -> None:
        async with RpcClient(rpc_url) as client:
            await client.call(method, **params)

    with pytest.raises(RpcClientError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == code


def test_batch_returns_results_and_errors_in_call_order(rpc_url: str) -> None:
    async def scenario() -> list[object]:
        async with RpcClient(rpc_url) as client:
            return await client.batch([
                ("add", [1, 2]), ("missing", {}), ("echo", {"text": "z"}),
                ("app_error", {"code": NOT_FOUND}), ("add", {"a": 5, "b": 5}),
            ])

    results = asyncio.run(scenario())
    assert results[0] == 3
    assert isinstance(results[1], RpcClientError) and results[1].code == METHOD_NOT_FOUND
    assert results[2] == "z"
    assert isinstance(results[3], RpcClientError) and results[3].code == NOT_FOUND
    assert results[4] == 10


def test_batch_over_the_limit_raises_limit_exceeded(rpc_url: str) -> None:
    async def scenario() -> None:
        async with RpcClient(rpc_url) as client:
            await client.batch([("add", [i, i]) for i in range(101)])

    with pytest.raises(RpcClientError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == LIMIT_EXCEEDED


def test_ids_stay_unique_across_calls_and_batches(rpc_url: str) -> None:
    async def scenario() -> list[object]:
        async with RpcClient(rpc_url) as client:
            first = await client.batch([("add", [1, 0]), ("add", [2, 0])])
            single = await client.call("add", 3, 0)
            second = await client.batch([("add", [4, 0])])
            return [*first, single, *second]

    assert asyncio.run(scenario()) == [1, 2, 3, 4]


def test_notify_runs_the_method_without_an_answer(
    rpc_url: str, test_methods: MethodSet
) -> None:
    async def scenario() -> None:
        async with RpcClient(rpc_url) as client:
            await client.notify("note", value="from-client")

    asyncio.run(scenario())
    assert test_methods.notes[-1] == "from-client"


def test_unreachable_node_is_a_transport_error() -> None:
    async def scenario() -> None:
        async with RpcClient(f"http://127.0.0.1:{free_port()}/rpc", timeout_s=5) as client:
            await client.call("add", 1, 2)

    with pytest.raises(RpcTransportError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == TRANSPORT_ERROR
    assert caught.value.name == "transport_error"


def test_non_json_http_answer_is_a_transport_error(rpc_url: str) -> None:
    async def scenario() -> None:
        async with RpcClient(rpc_url.replace("/rpc", "/not-here")) as client:
            await client.call("add", 1, 2)

    with pytest.raises(RpcTransportError, match="404"):
        asyncio.run(scenario())


def test_sync_client_calls_batches_and_raises(rpc_url: str) -> None:
    with SyncRpcClient(rpc_url) as client:
        assert client.call("add", a=1, b=2) == 3
        assert client.call("add", 3, 4) == 7
        assert client.batch([("echo", ["a"]), ("echo", ["b"])]) == ["a", "b"]
        with pytest.raises(RpcClientError) as caught:
            client.call("app_error", code=MEMPOOL_FULL)
        assert caught.value.code == MEMPOOL_FULL
        # The client stays usable after an error.
        assert client.call("echo", text="again") == "again"
