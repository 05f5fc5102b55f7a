"""The HTTP front: body limits, content types, health, overload and concurrency."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from rpc.jsonrpc import INVALID_REQUEST, LIMIT_EXCEEDED, UNAVAILABLE
from rpc.server import STOP_GRACE_S, create_rpc_app
from tests.rpc.support import MethodSet, ServerThread, post_json, post_raw

TEN_MB = 10 * 1024 * 1024


def add_call(a: int, b: int, request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "add", "params": [a, b], "id": request_id}


def test_ten_megabyte_body_is_refused_with_413_json_and_next_request_works(rpc_url: str) -> None:
    async def scenario() -> None:
        body = b'{"jsonrpc":"2.0","method":"echo","params":{"text":"' + b"x" * TEN_MB + b'"},"id":1}'
        async with aiohttp.ClientSession() as session:
            async with session.post(rpc_url, data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                assert response.status == 413
                assert response.content_type == "application/json"
                message = await response.json()
            assert message["id"] is None
            assert message["error"]["code"] == LIMIT_EXCEEDED
            assert message["error"]["data"] == {"limit_bytes": 1024 * 1024}
            async with session.post(rpc_url, json=add_call(20, 22)) as response:
                assert (await response.json())["result"] == 42

    asyncio.run(scenario())


def test_ten_megabyte_body_from_a_blocking_client_gets_the_413_too(rpc_url: str) -> None:
    body = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1,"pad":"' + b"p" * TEN_MB + b'"}'
    answer = post_raw(rpc_url, body)
    assert answer.status == 413
    assert answer.json()["error"]["code"] == LIMIT_EXCEEDED
    assert post_json(rpc_url, add_call(3, 4)).json()["result"] == 7


def test_oversized_content_length_is_refused_before_the_body_is_sent(rpc_url: str) -> None:
    parts = urlsplit(rpc_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            f"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {TEN_MB}\r\n\r\n".encode()
        )
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == LIMIT_EXCEEDED
    assert post_json(rpc_url, add_call(1, 2)).json()["result"] == 3


def test_chunked_body_over_the_limit_is_cut_off(rpc_url: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):  # 2.5 MiB in 64 KiB chunks, no Content-Length
            yield b" " * 65536

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, session.post(rpc_url, data=chunks(),
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == LIMIT_EXCEEDED

    asyncio.run(scenario())
    assert post_json(rpc_url, add_call(2, 2)).json()["result"] == 4


def test_body_just_under_the_limit_is_processed(rpc_url: str) -> None:
    text = "y" * (1024 * 1024 - 100)
    message = {"jsonrpc": "2.0", "method": "echo", "params": [text], "id": 1}
    body = json.dumps(message, separators=(",", ":")).encode()
    assert len(body) <= 1024 * 1024
    assert post_raw(rpc_url, body).json()["result"] == text


def test_wrong_content_type_is_415_with_a_json_rpc_error(rpc_url: str) -> None:
    body = json.dumps(add_call(1, 1)).encode()
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""]:
        answer = post_raw(rpc_url, body, content_type=content_type)
        assert answer.status == 415
        assert answer.json()["error"]["code"] == INVALID_REQUEST
        assert "Content-Type" in answer.json()["error"]["message"]


def test_json_content_type_with_charset_is_accepted(rpc_url: str) -> None:
    body = json.dumps(add_call(5, 5)).encode()
    answer = post_raw(rpc_url, body, content_type="application/json; charset=utf-8")
    assert answer.json()["result"] == 10


def test_get_on_the_rpc_path_is_method_not_allowed(rpc_url: str) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session, session.get(rpc_url) as response:
            return response.status

    assert asyncio.run(scenario()) == 405


def test_health_is_ok_by_default(rpc_url: str) -> None:
    async def scenario() -> tuple[int, Any]:
        url = rpc_url.replace("/rpc", "/health")
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.json()

    assert asyncio.run(scenario()) == (200, {"status": "ok"})


def test_health_reports_503_while_the_node_says_it_is_not_ok() -> None:
    state = {"status": "syncing", "height": 3}

    async def health() -> Mapping[str, Any]:
        return dict(state)

    server = ServerThread(create_rpc_app(MethodSet().methods(), health=health)).start()
    url = server.url.replace("/rpc", "/health")

    async def probe() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.json()

    try:
        assert asyncio.run(probe()) == (503, {"status": "syncing", "height": 3})
        state["status"] = "ok"
        assert asyncio.run(probe())[0] == 200
    finally:
        server.stop()


def test_health_check_that_raises_reads_as_not_ready() -> None:
    async def health() -> Mapping[str, Any]:
        raise RuntimeError("store closed")

    server = ServerThread(create_rpc_app(MethodSet().methods(), health=health)).start()

    async def probe() -> tuple[int, Any]:
        url = server.url.replace("/rpc", "/health")
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.json()

    try:
        assert asyncio.run(probe()) == (503, {"status": "error"})
    finally:
        server.stop()


def test_concurrent_requests_run_in_parallel_and_get_their_own_answers(
    rpc_url: str, test_methods: MethodSet
) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            async def one(index: int) -> None:
                message = add_call(index, 1000, request_id=index)
                async with session.post(rpc_url, json=message) as response:
                    answer = await response.json()
                assert answer == {"jsonrpc": "2.0", "id": index, "result": index + 1000}

            async def sleeper(index: int) -> None:
                message = {"jsonrpc": "2.0", "method": "sleep", "params": [200], "id": index}
                async with session.post(rpc_url, json=message) as response:
                    assert (await response.json())["result"] == 200

            started = time.monotonic()
            await asyncio.gather(*(sleeper(i) for i in range(20)), *(one(i) for i in range(100)))
            # 20 sleeps of 200 ms each: concurrent, so far less than the 4 s of a queue.
            assert time.monotonic() - started < 2.0

    asyncio.run(scenario())
    assert test_methods.running_peak > 1
    assert test_methods.running == 0


def test_requests_over_the_inflight_limit_get_503_unavailable() -> None:
    methods = MethodSet()
    server = ServerThread(create_rpc_app(methods.methods(), requests_inflight_max=2)).start()

    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            async def post(message: dict[str, Any]) -> tuple[int, Any]:
                async with session.post(server.url, json=message) as response:
                    return response.status, await response.json()

            slow = [asyncio.create_task(post(
                {"jsonrpc": "2.0", "method": "sleep", "params": [400], "id": i})) for i in range(2)]
            while methods.running < 2:
                await asyncio.sleep(0.01)
            refused = await post(add_call(1, 1))
            done = await asyncio.gather(*slow)
            after = await post(add_call(1, 1))
            return [refused, *done, after]

    try:
        refused, first, second, after = asyncio.run(scenario())
    finally:
        server.stop()
    assert refused[0] == 503
    assert refused[1]["error"]["code"] == UNAVAILABLE
    assert first == (200, {"jsonrpc": "2.0", "id": 0, "result": 400})
    assert second[0] == 200
    assert after == (200, {"jsonrpc": "2.0", "id": 1, "result": 2})


def test_stopping_cancels_a_request_still_running_after_the_grace_period() -> None:
    # A stopping node must not wait on a client: aiohttp's default could hold it two minutes.
    methods = MethodSet()
    server = ServerThread(create_rpc_app(methods.methods())).start()
    outcome: list[BaseException | int] = []

    async def slow_call() -> None:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.post(server.url, json={
                        "jsonrpc": "2.0", "method": "sleep", "params": [60_000], "id": 1}) as r:
                    outcome.append(r.status)
            except aiohttp.ClientError as exc:
                outcome.append(exc)

    client = threading.Thread(target=lambda: asyncio.run(slow_call()))
    client.start()
    deadline = time.monotonic() + 10
    while methods.running < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert methods.running == 1
    started = time.monotonic()
    server.stop()  # raises TimeoutError if the server's shutdown outlives 10 s
    assert time.monotonic() - started < STOP_GRACE_S + 3
    client.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], aiohttp.ClientError)
    assert methods.running == 0  # the handler was cancelled, not left behind
