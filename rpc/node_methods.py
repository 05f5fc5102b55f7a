"""The node's JSON-RPC methods (docs/RPC.md), over a small view of the node.

Handlers only read the store and state or hand a transaction to the node; they never
change state themselves. Every ledger value leaves as JSON (bytes as lowercase hex).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from ledger.block import Block, CommitCertificate
from ledger.codec import decode
from ledger.crypto import sha256
from ledger.errors import CodecError
from ledger.executor import next_nonce
from ledger.genesis import Genesis
from ledger.mempool import Mempool
from ledger.receipt import decode_receipt
from ledger.state import WorldState
from ledger.store import BlockStore
from ledger.tx import Tx, TxError
from rpc.jsonrpc import (
    MEMPOOL_FULL,
    NOT_FOUND,
    TIMEOUT,
    TX_REJECTED,
    UNAVAILABLE,
    RpcAppError,
    RpcMethod,
)
from rpc.methods import (
    PARAMS_MODELS,
    AccountGetParams,
    BlockGetParams,
    StateGetParams,
    TxGetParams,
    TxSubmitParams,
    jsonable,
)


class Waiters(Protocol):
    def add(self, tx_hash: bytes) -> asyncio.Future[dict[str, Any]] | None: ...

    def discard(self, tx_hash: bytes, future: asyncio.Future[dict[str, Any]]) -> None: ...


class NodeView(Protocol):
    """What the RPC methods need from the node."""

    genesis: Genesis
    store: BlockStore
    state: WorldState
    mempool: Mempool
    halted: str | None

    @property
    def waiters(self) -> Waiters: ...

    def status(self) -> dict[str, Any]: ...

    async def admit(self, raw: bytes, *, forward: bool = True) -> Tx | TxError: ...


@dataclass
class TxWaiters:
    """RPC callers waiting for a transaction to commit (bounded)."""

    futures: dict[bytes, list[asyncio.Future[dict[str, Any]]]] = field(default_factory=dict)
    count_max: int = 50_000
    count: int = 0

    def add(self, tx_hash: bytes) -> asyncio.Future[dict[str, Any]] | None:
        if self.count >= self.count_max:
            return None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.futures.setdefault(tx_hash, []).append(future)
        self.count += 1
        return future

    def resolve(self, tx_hash: bytes, outcome: dict[str, Any]) -> None:
        waiting = self.futures.pop(tx_hash, [])
        self.count -= len(waiting)
        for future in waiting:
            if not future.done():
                future.set_result(outcome)

    def discard(self, tx_hash: bytes, future: asyncio.Future[dict[str, Any]]) -> None:
        pending = self.futures.get(tx_hash)
        if pending and future in pending:
            pending.remove(future)
            self.count -= 1
            if not pending:
                del self.futures[tx_hash]


def receipt_json(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = jsonable(decode_receipt(raw).to_wire())
    return result


def header_json(block: Block, cert: CommitCertificate | None) -> dict[str, Any]:
    header = block.header
    return {
        "hash": block.hash.hex(),
        "header": jsonable(header.to_map()),
        "tx_hashes": [h.hex() for h in block.tx_hashes()],
        "certificate": None if cert is None else {
            "seq": cert.seq, "view": cert.view, "block_hash": cert.block_hash.hex(),
            "signatures": [{"validator": key.hex(), "signature": sig.hex()}
                           for key, sig in cert.signatures],
        },
    }


def _committed(node: NodeView, tx_hash: bytes) -> dict[str, Any] | None:
    location = node.store.tx_location(tx_hash)
    if location is None:
        return None
    raw = node.store.receipt(tx_hash)
    assert raw is not None
    receipt = receipt_json(raw)
    status = "committed" if receipt["status"] == "ok" else "rejected"
    return {"hash": tx_hash.hex(), "status": status, "height": location[0],
            "index": location[1], "receipt": receipt}


def build_node_methods(
    node: NodeView,
    extra: Mapping[str, tuple[type[BaseModel], Callable[[Any], Awaitable[Any]], str]] = {},
    *,
    wait_timeout_s: float = 30.0,
) -> list[RpcMethod]:
    timeout_s = wait_timeout_s

    async def node_status(params: Any) -> Any:
        return node.status()

    async def tx_submit(params: TxSubmitParams) -> Any:
        if node.halted:
            raise RpcAppError(UNAVAILABLE, f"node halted: {node.halted}")
        raw = bytes.fromhex(params.tx)
        tx_hash = sha256(raw)  # the tx hash; the verifier does the only decode
        # Wait before admitting: the commit may land before this handler resumes.
        future = node.waiters.add(tx_hash) if params.wait else None
        if params.wait and future is None:
            raise RpcAppError(UNAVAILABLE, "too many callers are waiting; submit without wait")
        result = await node.admit(raw)
        if isinstance(result, TxError) and result.code != "already_known":
            if future is not None:
                node.waiters.discard(tx_hash, future)
            done = _committed(node, tx_hash) if result.code == "nonce_used" else None
            if done is not None:
                return done  # a resubmission of a committed tx answers with its receipt
            code = MEMPOOL_FULL if result.code == "mempool_full" else TX_REJECTED
            raise RpcAppError(code, result.reason, {"code": result.code})
        if future is None:
            return {"hash": tx_hash.hex(), "status": "pending"}
        try:
            outcome = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            node.waiters.discard(tx_hash, future)
            raise RpcAppError(TIMEOUT, f"not committed within {timeout_s:.0f} s; it may still be",
                              {"hash": tx_hash.hex()}) from None
        receipt = outcome["receipt"]
        status = "committed" if receipt["status"] == "ok" else "rejected"
        return {**outcome, "status": status}

    async def tx_get(params: TxGetParams) -> Any:
        tx_hash = bytes.fromhex(params.hash)
        done = _committed(node, tx_hash)
        if done is not None:
            return done
        if tx_hash in node.mempool:
            return {"hash": params.hash, "status": "pending"}
        raise RpcAppError(NOT_FOUND, "no such transaction (never seen, or dropped)",
                          {"hash": params.hash})

    async def block_get(params: BlockGetParams) -> Any:
        if params.height is not None:
            height: int | None = params.height
        else:
            assert params.hash is not None
            height = node.store.height_of(bytes.fromhex(params.hash))
        block = None if height is None or height == 0 else node.store.block(height)
        if block is None or height is None:
            raise RpcAppError(NOT_FOUND, "no such block", {"height": params.height,
                                                            "hash": params.hash})
        return {"height": height, **header_json(block, node.store.certificate(height))}

    async def block_latest(params: Any) -> Any:
        height, tip = node.store.tip()
        if height == 0:
            return {"height": 0, "hash": tip.hex(), "genesis": True}
        block = node.store.block(height)
        assert block is not None
        return {"height": height, **header_json(block, node.store.certificate(height))}

    async def validators_list(params: Any) -> Any:
        return [{"name": v.name, "public_key": v.public_key, "address": v.address,
                 "p2p_address": v.p2p_address, "rpc_address": v.rpc_address}
                for v in node.genesis.validators]

    async def state_get(params: StateGetParams) -> Any:
        key = bytes.fromhex(params.key)
        value = node.state.get(key)
        proof = node.state.prove(key)
        decoded: Any = None
        if value is not None:
            try:
                decoded = jsonable(decode(value))
            except CodecError:
                decoded = None
        height, tip = node.store.tip()
        return {"key": params.key, "value": None if value is None else value.hex(),
                "decoded": decoded, "height": height, "block_hash": tip.hex(),
                "state_root": node.state.root.hex(), "proof": jsonable(proof.to_wire())}

    async def account_get(params: AccountGetParams) -> Any:
        committed = next_nonce(node.state.reader(), params.address)
        pending = committed
        while node.mempool.has_nonce(params.address, pending):
            pending += 1
        return {"address": params.address, "next_nonce": pending, "committed_nonce": committed}

    core: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "node_status": node_status, "tx_submit": tx_submit, "tx_get": tx_get,
        "block_get": block_get, "block_latest": block_latest,
        "validators_list": validators_list, "state_get": state_get,
        "account_get": account_get,
    }
    methods = [RpcMethod(name, PARAMS_MODELS[name], handler, handler.__doc__ or "")
               for name, handler in core.items()]
    methods += [RpcMethod(name, model, handler, doc)
                for name, (model, handler, doc) in extra.items()]
    return methods
