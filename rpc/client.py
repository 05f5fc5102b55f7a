"""Clients for the node's JSON-RPC: what the CLI uses and what integrators import.

`RpcClient` speaks JSON-RPC 2.0 over HTTP (async, aiohttp). `LedgerClient` adds the
ledger on top: it builds and signs typed transactions with the caller's key and keeps a
local nonce counter so several transactions can be submitted without waiting for each
one to commit. `SyncRpcClient` and `SyncLedgerClient` wrap both for blocking code (the
CLI) with a private event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from ledger.crypto import KeyPair
from ledger.tx import Tx, sign_tx
from rpc.jsonrpc import ERROR_NAMES
from rpc.methods import (
    ACCOUNT_GET,
    BLOCK_GET,
    BLOCK_LATEST,
    NODE_STATUS,
    STATE_GET,
    TX_GET,
    TX_SUBMIT,
    VALIDATOR_EPOCHS,
    VALIDATORS_LIST,
    jsonable,
)

# Never sent by a server: marks failures to reach the node or to read its answer.
TRANSPORT_ERROR = -32099
TIMEOUT_S_DEFAULT = 60.0

T = TypeVar("T")


class RpcClientError(Exception):
    """The node answered with a JSON-RPC error (or could not be reached: TRANSPORT_ERROR)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    @property
    def name(self) -> str:
        if self.code == TRANSPORT_ERROR:
            return "transport_error"
        return ERROR_NAMES.get(self.code, "server_error")

    def __str__(self) -> str:
        return f"{self.name} ({self.code}): {self.message}"


class RpcTransportError(RpcClientError):
    """The request did not get a JSON-RPC answer: connection, HTTP or decoding failure."""

    def __init__(self, message: str) -> None:
        super().__init__(TRANSPORT_ERROR, message)


def _error_from(obj: Any) -> RpcClientError:
    if not isinstance(obj, dict) or not isinstance(obj.get("code"), int):
        return RpcTransportError(f"malformed error object from the node: {obj!r:.200}")
    return RpcClientError(obj["code"], str(obj.get("message", "")), obj.get("data"))


class RpcClient:
    """An async JSON-RPC 2.0 client for one node URL (`http://host:port/rpc`)."""

    def __init__(self, url: str, *, timeout_s: float = TIMEOUT_S_DEFAULT,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _post(self, message: Any) -> Any:
        """The decoded JSON answer to `message`, or None for an empty (204) answer."""
        try:
            async with self._get_session().post(self.url, json=message) as response:
                body = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RpcTransportError(
                f"cannot reach {self.url}: {type(exc).__name__} {exc}".rstrip()
            ) from exc
        if status == 204 and not body:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise RpcTransportError(
                f"HTTP {status} from {self.url} is not JSON: {body[:200]!r}"
            ) from exc

    async def call(self, method: str, /, *args: Any, **params: Any) -> Any:
        """Call `method` with params by position or by name; its result or RpcClientError."""
        if args and params:
            raise TypeError("pass params either by position or by name, not both")
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if args or params:
            # Bytes travel as lowercase hex (docs/RPC.md), so callers may pass bytes.
            request["params"] = jsonable(list(args) if args else params)
        answer = await self._post(request)
        return self._unwrap(answer, request["id"])

    async def notify(self, method: str, /, **params: Any) -> None:
        """Send a notification: no answer, no error reported."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params:
            request["params"] = jsonable(params)
        await self._post(request)

    async def batch(self, calls: Sequence[tuple[str, dict[str, Any] | list[Any]]]
                    ) -> list[Any | RpcClientError]:
        """Send calls in one request; results in call order, each a value or RpcClientError.

        Raises RpcClientError when the whole batch is refused (e.g. too many calls).
        """
        if not calls:
            return []
        first_id = next(self._ids)
        self._ids = itertools.count(first_id + len(calls))
        requests = [
            {"jsonrpc": "2.0", "method": method, "params": jsonable(params),
             "id": first_id + index}
            for index, (method, params) in enumerate(calls)
        ]
        answer = await self._post(requests)
        if isinstance(answer, dict) and "error" in answer:
            raise _error_from(answer["error"])
        if not isinstance(answer, list):
            raise RpcTransportError(f"batch answer is not an array: {answer!r:.200}")
        by_id = {item.get("id"): item for item in answer if isinstance(item, dict)}
        results: list[Any | RpcClientError] = []
        for request in requests:
            item = by_id.get(request["id"])
            if item is None:
                results.append(RpcTransportError(f"no answer for call {request['id']}"))
            elif "error" in item:
                results.append(_error_from(item["error"]))
            else:
                results.append(item.get("result"))
        return results

    @staticmethod
    def _unwrap(answer: Any, request_id: int) -> Any:
        if not isinstance(answer, dict):
            raise RpcTransportError(f"answer is not a JSON-RPC response: {answer!r:.200}")
        if "error" in answer:
            raise _error_from(answer["error"])
        if answer.get("id") != request_id or "result" not in answer:
            raise RpcTransportError(f"answer does not match request {request_id}: {answer!r:.200}")
        return answer["result"]


class LedgerClient:
    """Builds, signs and submits typed transactions; reads blocks, txs and state.

    The nonce for the next transaction comes from the node (`account_get`) the first
    time, then from a local counter, so submits can be pipelined. When a submit fails
    the counter is dropped and read again from the node on the next submit.
    """

    def __init__(self, url: str, key: KeyPair | None = None, chain_id: str | None = None,
                 *, rpc: RpcClient | None = None, timeout_s: float = TIMEOUT_S_DEFAULT) -> None:
        self.rpc = rpc if rpc is not None else RpcClient(url, timeout_s=timeout_s)
        self.key = key
        self._chain_id = chain_id
        self._next_nonce: int | None = None
        self._nonce_lock = asyncio.Lock()

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self.rpc.close()

    async def chain_id(self) -> str:
        """The chain id given at construction, else the one the node reports."""
        if self._chain_id is None:
            status = await self.status()
            self._chain_id = str(status["chain_id"])
        return self._chain_id

    def _require_key(self) -> KeyPair:
        if self.key is None:
            raise ValueError("this LedgerClient has no key; pass key=KeyPair... to sign")
        return self.key

    async def reserve_nonce(self) -> int:
        """The nonce for the next transaction of this key; each call reserves one."""
        key = self._require_key()
        async with self._nonce_lock:
            if self._next_nonce is None:
                account = await self.account_get(key.address)
                self._next_nonce = int(account["next_nonce"])
            nonce = self._next_nonce
            self._next_nonce += 1
            return nonce

    def reset_nonce(self) -> None:
        """Forget the local nonce counter; the next submit asks the node again."""
        self._next_nonce = None

    async def build(self, family: str, op: str, payload: dict[str, Any],
                    nonce: int | None = None) -> Tx:
        """A signed transaction (reserving the next nonce unless one is given)."""
        key = self._require_key()
        chain_id = await self.chain_id()
        if nonce is None:
            nonce = await self.reserve_nonce()
        return sign_tx(key, chain_id, family, op, nonce, payload)

    async def submit_signed(self, tx: Tx | bytes, wait: bool = True) -> Any:
        raw = tx.raw if isinstance(tx, Tx) else bytes(tx)
        return await self.rpc.call(TX_SUBMIT, tx=raw.hex(), wait=wait)

    async def submit(self, family: str, op: str, payload: dict[str, Any],
                     wait: bool = True) -> Any:
        """Sign and submit; the tx_submit result (hash, and the receipt when `wait`)."""
        tx = await self.build(family, op, payload)
        try:
            return await self.submit_signed(tx, wait=wait)
        except RpcClientError:
            # A refused tx leaves a gap at its nonce; a timeout may or may not have
            # committed. Either way the node knows better than our counter now.
            self.reset_nonce()
            raise

    async def submit_many(self, ops: Sequence[tuple[str, str, dict[str, Any]]],
                          wait: bool = False) -> list[Any | RpcClientError]:
        """Sign `ops` (family, op, payload) with consecutive nonces and send one batch.

        The node starts the calls of a batch in order, so the transactions reach its
        mempool in nonce order. Results are in `ops` order, each a tx_submit result or
        the RpcClientError for that one transaction.
        """
        txs = [await self.build(family, op, payload) for family, op, payload in ops]
        try:
            results = await self.rpc.batch(
                [(TX_SUBMIT, {"tx": tx.raw.hex(), "wait": wait}) for tx in txs])
        except RpcClientError:
            self.reset_nonce()
            raise
        if any(isinstance(result, RpcClientError) for result in results):
            self.reset_nonce()
        return results

    async def status(self) -> Any:
        return await self.rpc.call(NODE_STATUS)

    async def tx_get(self, tx_hash: str | bytes) -> Any:
        return await self.rpc.call(TX_GET, hash=_hex(tx_hash))

    async def block_get(self, height: int | None = None, block_hash: str | bytes | None = None
                        ) -> Any:
        if (height is None) == (block_hash is None):
            raise ValueError("give exactly one of height and block_hash")
        if height is not None:
            return await self.rpc.call(BLOCK_GET, height=height)
        assert block_hash is not None
        return await self.rpc.call(BLOCK_GET, hash=_hex(block_hash))

    async def block_latest(self) -> Any:
        return await self.rpc.call(BLOCK_LATEST)

    async def validators_list(self) -> Any:
        return await self.rpc.call(VALIDATORS_LIST)

    async def validator_epochs(self) -> Any:
        return await self.rpc.call(VALIDATOR_EPOCHS)

    async def state_get(self, key: str | bytes) -> Any:
        """A state entry; `key` as raw bytes, or a str taken as the UTF-8 key text."""
        raw = key.encode() if isinstance(key, str) else bytes(key)
        return await self.rpc.call(STATE_GET, key=raw.hex())

    async def account_get(self, address: str | None = None) -> Any:
        if address is None:
            address = self._require_key().address
        return await self.rpc.call(ACCOUNT_GET, address=address)


def _hex(value: str | bytes) -> str:
    return bytes(value).hex() if isinstance(value, bytes | bytearray) else value.lower()


class _LoopOwner:
    """Runs coroutines on a private event loop, for use from blocking code."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def _close_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()


class SyncRpcClient(_LoopOwner):
    """Blocking RpcClient (for the CLI). Not for use inside a running event loop."""

    def __init__(self, url: str, *, timeout_s: float = TIMEOUT_S_DEFAULT) -> None:
        super().__init__()
        self._client = RpcClient(url, timeout_s=timeout_s)

    def call(self, method: str, /, *args: Any, **params: Any) -> Any:
        return self._run(self._client.call(method, *args, **params))

    def batch(self, calls: Sequence[tuple[str, dict[str, Any] | list[Any]]]
              ) -> list[Any | RpcClientError]:
        return self._run(self._client.batch(calls))

    def close(self) -> None:
        self._run(self._client.close())
        self._close_loop()

    def __enter__(self) -> SyncRpcClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class SyncLedgerClient(_LoopOwner):
    """Blocking LedgerClient (for the CLI). Not for use inside a running event loop."""

    def __init__(self, url: str, key: KeyPair | None = None, chain_id: str | None = None,
                 *, timeout_s: float = TIMEOUT_S_DEFAULT) -> None:
        super().__init__()
        self.client = LedgerClient(url, key, chain_id, timeout_s=timeout_s)

    def submit(self, family: str, op: str, payload: dict[str, Any], wait: bool = True) -> Any:
        return self._run(self.client.submit(family, op, payload, wait=wait))

    def submit_many(self, ops: Sequence[tuple[str, str, dict[str, Any]]],
                    wait: bool = False) -> list[Any | RpcClientError]:
        return self._run(self.client.submit_many(ops, wait=wait))

    def status(self) -> Any:
        return self._run(self.client.status())

    def tx_get(self, tx_hash: str | bytes) -> Any:
        return self._run(self.client.tx_get(tx_hash))

    def block_get(self, height: int | None = None, block_hash: str | bytes | None = None) -> Any:
        return self._run(self.client.block_get(height, block_hash))

    def block_latest(self) -> Any:
        return self._run(self.client.block_latest())

    def validators_list(self) -> Any:
        return self._run(self.client.validators_list())

    def validator_epochs(self) -> Any:
        return self._run(self.client.validator_epochs())

    def state_get(self, key: str | bytes) -> Any:
        return self._run(self.client.state_get(key))

    def account_get(self, address: str | None = None) -> Any:
        return self._run(self.client.account_get(address))

    def call(self, method: str, /, **params: Any) -> Any:
        return self._run(self.client.rpc.call(method, **params))

    def close(self) -> None:
        self._run(self.client.close())
        self._close_loop()

    def __enter__(self) -> SyncLedgerClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
