"""Test support: a real aiohttp RPC server on 127.0.0.1 (ephemeral port), a small test
method set, and raw HTTP helpers.

The server runs on its own event loop in a background thread, so tests can talk to it
over real HTTP from plain blocking code or from their own asyncio.run.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from rpc.jsonrpc import NoParams, RpcAppError, RpcMethod, RpcParams
from rpc.server import RunningRpcServer, start_rpc_server


class EchoParams(RpcParams):
    text: str
    times: int = 1


class AddParams(RpcParams):
    a: int
    b: int


class CodeParams(RpcParams):
    code: int


class NoteParams(RpcParams):
    value: str


class SleepParams(RpcParams):
    ms: int


@dataclass
class MethodSet:
    """The test method set and what its handlers observed."""

    notes: list[str] = field(default_factory=list)
    running: int = 0
    running_peak: int = 0

    def methods(self) -> list[RpcMethod]:
        async def echo(params: EchoParams) -> str:
            return params.text * params.times

        async def add(params: AddParams) -> int:
            return params.a + params.b

        async def app_error(params: CodeParams) -> None:
            raise RpcAppError(params.code, f"application error {params.code}", {"why": "asked"})

        async def crash(params: NoParams) -> None:
            raise RuntimeError("secret internal detail /etc/node_key.json")

        async def bad_result(params: NoParams) -> Any:
            return {"value": object()}

        async def note(params: NoteParams) -> int:
            self.notes.append(params.value)
            return len(self.notes)

        async def sleep(params: SleepParams) -> int:
            self.running += 1
            self.running_peak = max(self.running_peak, self.running)
            try:
                await asyncio.sleep(params.ms / 1000)
            finally:
                self.running -= 1
            return params.ms

        return [
            RpcMethod("echo", EchoParams, echo, "repeat text"),
            RpcMethod("add", AddParams, add, "sum of two integers"),
            RpcMethod("app_error", CodeParams, app_error, "raise an application error"),
            RpcMethod("crash", NoParams, crash, "a handler with a bug"),
            RpcMethod("bad_result", NoParams, bad_result, "returns something that is not JSON"),
            RpcMethod("note", NoteParams, note, "record a value"),
            RpcMethod("sleep", SleepParams, sleep, "wait a while"),
        ]


class ServerThread:
    """Runs an aiohttp app on a private loop in a daemon thread."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self._app = app
        self._started = threading.Event()
        self.server: RunningRpcServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            start_rpc_server(self._app, "127.0.0.1", 0)
        )
        self._started.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        assert self._started.wait(10), "RPC server did not start"
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def _shutdown(self) -> None:
        assert self.server is not None
        await self.server.stop()
        # Like asyncio.run: finish what is left (idle keep-alive handlers) before closing.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)


def post_raw(url: str, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> HttpAnswer:
    """POST bytes with the standard library, so tests control every header and byte."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        connection.request("POST", parts.path, body=body, headers=all_headers)
        response = connection.getresponse()
        return HttpAnswer(response.status, response.read(),
                          response.getheader("Content-Type", ""))
    finally:
        connection.close()


def post_json(url: str, message: Any) -> HttpAnswer:
    return post_raw(url, json.dumps(message).encode())
