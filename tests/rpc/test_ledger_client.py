"""LedgerClient against a small in-memory ledger served over real HTTP.

The test ledger implements the node's method names and params models (rpc.methods) and
checks every submitted transaction with ledger.tx.decode_and_verify, the same entry
point the node's mempool uses, so a tx the client signs wrongly is refused here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ledger.crypto import KeyPair, sha256
from ledger.tx import Tx, TxError, decode_and_verify
from rpc.client import LedgerClient, RpcClientError, SyncLedgerClient
from rpc.jsonrpc import NOT_FOUND, TX_REJECTED, RpcAppError, RpcMethod
from rpc.methods import (
    ACCOUNT_GET,
    BLOCK_GET,
    BLOCK_LATEST,
    NODE_STATUS,
    PARAMS_MODELS,
    STATE_GET,
    TX_GET,
    TX_SUBMIT,
    VALIDATORS_LIST,
    AccountGetParams,
    TxGetParams,
    TxSubmitParams,
    jsonable,
)
from tests.rpc.support import ServerThread

CHAIN_ID = "testcity"


@dataclass
class InMemoryLedger:
    """Admits like the node's mempool: a verified tx with an unused nonce, gaps allowed."""

    committed_nonces: dict[str, int] = field(default_factory=dict)
    txs: dict[str, Tx] = field(default_factory=dict)
    account_get_calls: int = 0

    def pending_nonces(self, address: str) -> set[int]:
        return {tx.nonce for tx in self.txs.values() if tx.sender_address == address}

    def next_nonce(self, address: str) -> int:
        """The committed next nonce, advanced over the gap-free run of pending ones."""
        nonce = self.committed_nonces.get(address, 0)
        pending = self.pending_nonces(address)
        while nonce in pending:
            nonce += 1
        return nonce

    def methods(self) -> list[RpcMethod]:
        async def node_status(params: Any) -> dict[str, Any]:
            return {"chain_id": CHAIN_ID, "height": len(self.txs)}

        async def account_get(params: AccountGetParams) -> dict[str, Any]:
            self.account_get_calls += 1
            return {"address": params.address, "next_nonce": self.next_nonce(params.address)}

        async def tx_submit(params: TxSubmitParams) -> dict[str, Any]:
            tx = decode_and_verify(bytes.fromhex(params.tx), CHAIN_ID)
            if isinstance(tx, TxError):
                raise RpcAppError(TX_REJECTED, tx.reason, {"reason": tx.code})
            floor = self.committed_nonces.get(tx.sender_address, 0)
            used = tx.nonce < floor or tx.nonce in self.pending_nonces(tx.sender_address)
            if used or tx.payload.get("refuse"):
                raise RpcAppError(TX_REJECTED, f"nonce {tx.nonce} is used or refused",
                                  {"reason": "bad_nonce"})
            # Let other submits interleave, as a real mempool admission would.
            await asyncio.sleep(0)
            self.txs[tx.hash.hex()] = tx
            answer: dict[str, Any] = {"hash": tx.hash.hex()}
            if params.wait:
                answer["receipt"] = {"status": "ok", "height": len(self.txs)}
            return answer

        async def tx_get(params: TxGetParams) -> dict[str, Any]:
            tx = self.txs.get(params.hash)
            if tx is None:
                raise RpcAppError(NOT_FOUND, f"no transaction {params.hash}")
            return {"hash": params.hash, "status": "committed", "nonce": tx.nonce}

        async def echo_params(params: Any) -> Any:
            return jsonable(params.model_dump())

        handlers = {
            NODE_STATUS: node_status, ACCOUNT_GET: account_get, TX_SUBMIT: tx_submit,
            TX_GET: tx_get, BLOCK_GET: echo_params, BLOCK_LATEST: echo_params,
            VALIDATORS_LIST: echo_params, STATE_GET: echo_params,
        }
        return [RpcMethod(name, PARAMS_MODELS[name], handler)
                for name, handler in handlers.items()]


@pytest.fixture
def ledger() -> Iterator[tuple[InMemoryLedger, str]]:
    from rpc.server import create_rpc_app

    test_ledger = InMemoryLedger()
    server = ServerThread(create_rpc_app(test_ledger.methods())).start()
    yield test_ledger, server.url
    server.stop()


def test_submit_sends_a_tx_that_decode_and_verify_accepts(
    ledger: tuple[InMemoryLedger, str]
) -> None:
    node, url = ledger
    key = KeyPair.generate()
    payload = {"class_id": "welfare", "to": "ab" * 20, "amount": 25, "memo": b"\x00\x01"}

    async def scenario() -> Any:
        async with LedgerClient(url, key, CHAIN_ID) as client:
            return await client.submit("tokens", "transfer", payload)

    answer = asyncio.run(scenario())
    tx = node.txs[answer["hash"]]
    verified = decode_and_verify(tx.raw, CHAIN_ID)
    assert isinstance(verified, Tx)
    assert (verified.family, verified.op, verified.payload) == ("tokens", "transfer", payload)
    assert verified.sender == key.public_key
    assert verified.nonce == 0
    assert answer["hash"] == sha256(tx.raw).hex()
    assert answer["receipt"]["status"] == "ok"  # wait=True is the default


def test_first_nonce_comes_from_the_node(ledger: tuple[InMemoryLedger, str]) -> None:
    node, url = ledger
    key = KeyPair.generate()
    node.committed_nonces[key.address] = 7

    async def scenario() -> Any:
        async with LedgerClient(url, key, CHAIN_ID) as client:
            return await client.submit("tokens", "transfer", {"n": 1}, wait=False)

    answer = asyncio.run(scenario())
    assert node.txs[answer["hash"]].nonce == 7
    assert "receipt" not in answer


def test_pipelined_submits_use_consecutive_nonces_from_one_lookup(
    ledger: tuple[InMemoryLedger, str]
) -> None:
    node, url = ledger
    key = KeyPair.generate()

    async def scenario() -> list[Any]:
        async with LedgerClient(url, key, CHAIN_ID) as client:
            return await asyncio.gather(*(
                client.submit("energy", "offer", {"kwh": i}, wait=False) for i in range(12)))

    answers = asyncio.run(scenario())
    nonces = sorted(node.txs[answer["hash"]].nonce for answer in answers)
    assert nonces == list(range(12))
    assert node.account_get_calls == 1


def test_submit_many_sends_one_batch_in_nonce_order(ledger: tuple[InMemoryLedger, str]) -> None:
    node, url = ledger
    key = KeyPair.generate()
    node.committed_nonces[key.address] = 3

    async def scenario() -> list[Any]:
        async with LedgerClient(url, key, CHAIN_ID) as client:
            return await client.submit_many(
                [("tokens", "transfer", {"i": i}) for i in range(5)]
                + [("tokens", "transfer", {"refuse": True})])

    results = asyncio.run(scenario())
    assert [node.txs[result["hash"]].nonce for result in results[:5]] == [3, 4, 5, 6, 7]
    assert [node.txs[result["hash"]].payload["i"] for result in results[:5]] == list(range(5))
    assert isinstance(results[5], RpcClientError) and results[5].code == TX_REJECTED


def test_rejected_submit_resets_the_nonce_and_the_next_one_recovers(
    ledger: tuple[InMemoryLedger, str]
) -> None:
    node, url = ledger
    key = KeyPair.generate()

    async def scenario() -> Any:
        async with LedgerClient(url, key, CHAIN_ID) as client:
            await client.submit("tokens", "transfer", {"n": 0})
            with pytest.raises(RpcClientError) as caught:
                await client.submit("tokens", "transfer", {"refuse": True})
            assert caught.value.code == TX_REJECTED
            assert caught.value.data == {"reason": "bad_nonce"}
            return await client.submit("tokens", "transfer", {"n": 1})

    answer = asyncio.run(scenario())
    assert node.txs[answer["hash"]].nonce == 1  # nonce 1 was not burnt by the refusal
    assert node.account_get_calls == 2


def test_chain_id_is_taken_from_the_node_when_not_given(ledger: tuple[InMemoryLedger, str]) -> None:
    node, url = ledger

    async def scenario() -> Any:
        async with LedgerClient(url, KeyPair.generate()) as client:
            return await client.submit("identity", "register", {"name": "x"})

    answer = asyncio.run(scenario())
    assert node.txs[answer["hash"]].chain_id == CHAIN_ID


def test_tx_signed_for_another_chain_is_refused_with_the_reason(
    ledger: tuple[InMemoryLedger, str]
) -> None:
    node, url = ledger

    async def scenario() -> None:
        async with LedgerClient(url, KeyPair.generate(), "othercity") as client:
            await client.submit("tokens", "transfer", {})

    with pytest.raises(RpcClientError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == TX_REJECTED
    assert caught.value.data == {"reason": "wrong_chain"}
    assert node.txs == {}


def test_read_methods_send_the_documented_params(ledger: tuple[InMemoryLedger, str]) -> None:
    node, url = ledger
    block_hash = bytes(range(32))

    async def scenario() -> list[Any]:
        async with LedgerClient(url) as client:
            return [
                await client.block_get(height=3),
                await client.block_get(block_hash=block_hash),
                await client.state_get(b"tokens/bal/welfare/ab"),
                await client.state_get("tokens/sup/welfare"),
                await client.block_latest(),
                await client.validators_list(),
            ]

    by_height, by_hash, raw_key, text_key, latest, validators = asyncio.run(scenario())
    assert by_height == {"height": 3, "hash": None}
    assert by_hash == {"height": None, "hash": block_hash.hex()}
    assert raw_key == {"key": b"tokens/bal/welfare/ab".hex()}
    assert text_key == {"key": b"tokens/sup/welfare".hex()}
    assert latest == {} and validators == {}


def test_tx_get_finds_a_submitted_tx_and_maps_not_found(ledger: tuple[InMemoryLedger, str]) -> None:
    node, url = ledger

    async def scenario() -> Any:
        async with LedgerClient(url, KeyPair.generate(), CHAIN_ID) as client:
            answer = await client.submit("tokens", "transfer", {"a": 1})
            found = await client.tx_get(answer["hash"])
            with pytest.raises(RpcClientError) as caught:
                await client.tx_get(b"\x00" * 32)
            assert caught.value.code == NOT_FOUND
            return found

    assert asyncio.run(scenario())["status"] == "committed"


def test_client_without_a_key_cannot_submit(ledger: tuple[InMemoryLedger, str]) -> None:
    _, url = ledger

    async def scenario() -> None:
        async with LedgerClient(url, None, CHAIN_ID) as client:
            await client.submit("tokens", "transfer", {})

    with pytest.raises(ValueError, match="no key"):
        asyncio.run(scenario())


def test_sync_ledger_client_submits_in_order_and_reads(ledger: tuple[InMemoryLedger, str]) -> None:
    node, url = ledger
    key = KeyPair.generate()
    with SyncLedgerClient(url, key, CHAIN_ID) as client:
        hashes = [client.submit("tokens", "transfer", {"i": i})["hash"] for i in range(3)]
        assert client.status()["chain_id"] == CHAIN_ID
        assert client.account_get()["next_nonce"] == 3
        assert client.tx_get(hashes[2])["nonce"] == 2
        more = client.submit_many([("tokens", "transfer", {"i": i}) for i in (3, 4)])
        for result in more:
            assert not isinstance(result, RpcClientError)
            hashes.append(result["hash"])
    assert [node.txs[h].nonce for h in hashes] == [0, 1, 2, 3, 4]
