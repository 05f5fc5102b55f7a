"""The aiohttp HTTP front of the JSON-RPC dispatcher: `POST /rpc` and `GET /health`.

HTTP status codes are only about the HTTP exchange: every JSON-RPC answer (including
JSON-RPC errors) is 200, a request with nothing to answer is 204. The exceptions are
refusals before any JSON-RPC processing, which still carry a JSON-RPC error body:
413 (body over the limit), 415 (not JSON), 503 (too many requests in flight).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from rpc.jsonrpc import (
    BATCH_CALLS_MAX,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    UNAVAILABLE,
    RpcDispatcher,
    RpcMethod,
    encode_json,
    error_body,
)

log = logging.getLogger("cityledger.rpc")

BODY_BYTES_MAX = 1024 * 1024
REQUESTS_INFLIGHT_MAX = 1024
READ_CHUNK_BYTES = 64 * 1024
JSON_CONTENT_TYPES = frozenset({"application/json", "application/json-rpc", "application/jsonrequest"})

HealthCheck = Callable[[], Awaitable[Mapping[str, Any]]]

DISPATCHER_KEY = web.AppKey("rpc_dispatcher", RpcDispatcher)


class _RequestTooLarge(Exception):
    pass


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


async def _read_body(request: web.Request, body_bytes_max: int) -> bytes:
    """The request body, refusing as soon as it is known to exceed `body_bytes_max`.

    Reads in chunks rather than trusting Content-Length alone, so a chunked upload of any
    size is cut off after at most `body_bytes_max` bytes have been buffered.
    """
    declared = request.content_length
    if declared is not None and declared > body_bytes_max:
        raise _RequestTooLarge
    chunks: list[bytes] = []
    received = 0
    while True:
        chunk = await request.content.read(READ_CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        received += len(chunk)
        if received > body_bytes_max:
            raise _RequestTooLarge
        chunks.append(chunk)


def create_rpc_app(
    methods: Iterable[RpcMethod],
    *,
    body_bytes_max: int = BODY_BYTES_MAX,
    batch_calls_max: int = BATCH_CALLS_MAX,
    requests_inflight_max: int = REQUESTS_INFLIGHT_MAX,
    health: HealthCheck | None = None,
) -> web.Application:
    """An aiohttp application serving `methods` on `POST /rpc` and a probe on `GET /health`.

    `health`, when given, returns a mapping with at least `"status"`; `GET /health`
    answers 200 when it is `"ok"` and 503 otherwise (e.g. `"syncing"`), with the mapping
    as the JSON body.
    """
    dispatcher = RpcDispatcher.of(methods, batch_calls_max=batch_calls_max)
    # A counter, not a semaphore: overload is answered at once instead of queueing
    # without bound (DESIGN.md principle 7).
    inflight = 0

    async def handle_rpc(request: web.Request) -> web.StreamResponse:
        nonlocal inflight
        if request.content_type not in JSON_CONTENT_TYPES:
            # Also keeps browsers from posting here cross-site with a "simple" request.
            return _json_response(
                error_body(
                    INVALID_REQUEST,
                    f"Content-Type must be application/json, not {request.content_type!r}",
                ),
                status=415,
            )
        if inflight >= requests_inflight_max:
            return _json_response(
                error_body(UNAVAILABLE, "server busy: too many requests in flight",
                           {"limit": requests_inflight_max}),
                status=503,
            )
        inflight += 1
        try:
            try:
                body = await _read_body(request, body_bytes_max)
            except _RequestTooLarge:
                response = _json_response(
                    error_body(
                        LIMIT_EXCEEDED,
                        f"request body exceeds the limit of {body_bytes_max} bytes",
                        {"limit_bytes": body_bytes_max},
                    ),
                    status=413,
                )
                # The rest of the oversized body is never read; close the connection
                # rather than keep it alive with unread bytes in it.
                response.force_close()
                return response
            answer = await dispatcher.dispatch(body)
        finally:
            inflight -= 1
        if answer is None:
            return web.Response(status=204)
        return _json_response(answer)

    async def handle_health(request: web.Request) -> web.Response:
        report: Mapping[str, Any] = {"status": "ok"}
        if health is not None:
            # A failing probe must read as "not ready", not as a crashed server.
            try:
                report = await health()
            except Exception:
                log.exception("health check failed")
                report = {"status": "error"}
        status = 200 if report.get("status") == "ok" else 503
        return _json_response(encode_json(dict(report)), status=status)

    # client_max_size guards aiohttp's own readers; _read_body enforces the real limit.
    app = web.Application(client_max_size=body_bytes_max)
    app[DISPATCHER_KEY] = dispatcher
    app.router.add_post("/rpc", handle_rpc)
    app.router.add_get("/health", handle_health)
    return app


@dataclass
class RunningRpcServer:
    """A started server: where it listens and how to stop it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/rpc"

    async def stop(self) -> None:
        await stop_rpc_server(self)


# How long stopping may wait on requests still running (a `tx_submit` waiting for its
# commit, a client that sent half a body): aiohttp's default held a stopping node for up to
# two minutes. aiohttp spends its shutdown timeout twice on such a request (first waiting
# for it to finish, then for it to go after cancelling), hence half of this each.
STOP_GRACE_S = 5.0


async def start_rpc_server(app: web.Application, host: str, port: int) -> RunningRpcServer:
    """Listen on host:port (port 0 picks a free one; see `.port`) and serve `app`."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_GRACE_S / 2)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1]) if runner.addresses else port
    log.info("RPC listening on %s:%d", host, bound_port)
    return RunningRpcServer(runner, host, bound_port)


async def stop_rpc_server(server: RunningRpcServer) -> None:
    """Stop accepting connections and finish the requests in flight, cancelling those
    still running after STOP_GRACE_S."""
    await server.runner.cleanup()
