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
from ledger.epochs import EpochHistory
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
    TX_SUBMIT,
    AccountGetParams,
    BlockGetParams,
    StateGetParams,
    TxGetParams,
    TxSubmit,
    TxSubmitParams,
    jsonable,
    tx_submit_fast,
)


class Waiters(Protocol):
    def add(self, tx_hash: bytes) -> asyncio.Future[dict[str, Any]] | None: ...

    def discard(self, tx_hash: bytes, future: asyncio.Future[dict[str, Any]]) -> None: ...


class NodeView(Protocol):
    """What the RPC methods need from the node."""

    genesis: Genesis
    chain_id: str
    epochs: EpochHistory
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


async def _admit_all(node: NodeView, raws: list[bytes]) -> list[Tx | TxError]:
    """node.admit for each raw, concurrently so that the verifier checks them as one chunk.

    A node may offer `admit_many(raws)` (same outcomes, in order, without an asyncio task
    per transaction); it is used when present.
    """
    admit_many = getattr(node, "admit_many", None)
    if admit_many is not None:
        admitted: list[Tx | TxError] = await admit_many(raws)
        return admitted
    return list(await asyncio.gather(*(node.admit(raw) for raw in raws)))


async def _wait_committed(timeout_s: float, waiting: list[int], hashes: list[bytes],
                          futures: list[asyncio.Future[dict[str, Any]] | None],
                          outcomes: list[Any]) -> None:
    """Fill outcomes[i] for each waiting call: its commit, or a timeout error."""
    await asyncio.wait([future for index in waiting if (future := futures[index]) is not None],
                       timeout=timeout_s)
    for index in waiting:
        future = futures[index]
        assert future is not None
        if not future.done():
            outcomes[index] = RpcAppError(
                TIMEOUT, f"not committed within {timeout_s:.0f} s; it may still be",
                {"hash": hashes[index].hex()})
            continue
        outcome = future.result()
        status = "committed" if outcome["receipt"]["status"] == "ok" else "rejected"
        outcomes[index] = {**outcome, "status": status}


def build_node_methods(
    node: NodeView,
    extra: Mapping[str, tuple[type[BaseModel], Callable[[Any], Awaitable[Any]], str]] = {},
    *,
    wait_timeout_s: float = 30.0,
) -> list[RpcMethod]:
    timeout_s = wait_timeout_s

    async def node_status(params: Any) -> Any:
        return node.status()

    async def tx_submit_many(calls: list[TxSubmit]) -> list[Any]:
        """tx_submit for a batch of calls: one outcome (result or RpcAppError) per call.

        Admitted together (the verifier checks them as one chunk) and, for `wait`, waited
        for together: one timer for the batch instead of a timeout and a shield per call.
        """
        if node.halted:
            return [RpcAppError(UNAVAILABLE, f"node halted: {node.halted}")] * len(calls)
        hashes = [sha256(call.raw) for call in calls]  # tx hashes; the verifier decodes
        outcomes: list[Any] = [None] * len(calls)
        futures: list[asyncio.Future[dict[str, Any]] | None] = []
        for index, call in enumerate(calls):
            # Wait before admitting: the commit may land before this handler resumes.
            future = node.waiters.add(hashes[index]) if call.wait else None
            if call.wait and future is None:
                outcomes[index] = RpcAppError(
                    UNAVAILABLE, "too many callers are waiting; submit without wait")
            futures.append(future)
        try:
            admitting = [index for index, outcome in enumerate(outcomes) if outcome is None]
            results = await _admit_all(node, [calls[index].raw for index in admitting])
            waiting: list[int] = []
            for index, result in zip(admitting, results, strict=True):
                tx_hash = hashes[index]
                if isinstance(result, TxError) and result.code != "already_known":
                    done = _committed(node, tx_hash) if result.code == "nonce_used" else None
                    if done is not None:
                        outcomes[index] = done  # a resubmitted committed tx: its receipt
                        continue
                    code = MEMPOOL_FULL if result.code == "mempool_full" else TX_REJECTED
                    outcomes[index] = RpcAppError(code, result.reason, {"code": result.code})
                elif futures[index] is None:
                    outcomes[index] = {"hash": tx_hash.hex(), "status": "pending"}
                else:
                    waiting.append(index)
            if waiting:
                await _wait_committed(timeout_s, waiting, hashes, futures, outcomes)
        finally:
            # Refused, timed out, or the client went away (cancelled): stop waiting.
            for tx_hash, future in zip(hashes, futures, strict=True):
                if future is not None and not future.done():
                    node.waiters.discard(tx_hash, future)
        return outcomes

    async def tx_submit(params: TxSubmitParams) -> Any:
        [outcome] = await tx_submit_many([TxSubmit(bytes.fromhex(params.tx), params.wait)])
        if isinstance(outcome, RpcAppError):
            raise outcome
        return outcome

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

    def validator_entries(validators: Any) -> list[dict[str, Any]]:
        return [{"name": v.name, "public_key": v.public_key, "address": v.address,
                 "p2p_address": v.p2p_address, "rpc_address": v.rpc_address}
                for v in validators]

    async def validators_list(params: Any) -> Any:
        """The validator set of the current epoch (genesis's until a set change)."""
        return validator_entries(node.epochs.current.validators)

    async def validator_epochs(params: Any) -> Any:
        """Every validator set so far: which seqs it certifies and the domain it signs in."""
        return [{"epoch": epoch.number, "first_seq": epoch.first_seq,
                 "signing_domain": epoch.domain(node.chain_id),
                 "validators": validator_entries(epoch.validators)}
                for epoch in node.epochs.all()]

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
        "validators_list": validators_list, "validator_epochs": validator_epochs,
        "state_get": state_get,
        "account_get": account_get,
    }
    methods = [RpcMethod(name, PARAMS_MODELS[name], handler, handler.__doc__ or "")
               for name, handler in core.items() if name != TX_SUBMIT]
    methods.append(RpcMethod(TX_SUBMIT, TxSubmitParams, tx_submit, tx_submit.__doc__ or "",
                             batch_params=tx_submit_fast, batch_handler=tx_submit_many))
    methods += [RpcMethod(name, model, handler, doc)
                for name, (model, handler, doc) in extra.items()]
    return methods
