"""Batch admission on a real Node (its own LevelDB, verifier, mempool and replica).

`admit_many` must give each tx the outcome `admit` would, in order, tell the replica once,
and not keep refused transactions in the verifier's cache (a gossiped copy of a tx that
already committed would otherwise hold memory until the cache's bound).
"""

from __future__ import annotations

import asyncio

import pytest

from consensus.events import Event, RequestsReceived
from ledger.crypto import KeyPair, sha256
from ledger.tx import Tx, TxError, sign_tx
from node import Node


@pytest.fixture
def node(local_node: Node) -> Node:
    return local_node


def _register(node: Node, nonce: int, key: KeyPair | None = None) -> bytes:
    return sign_tx(key or KeyPair.generate(), node.chain_id, "identity", "register", nonce,
                   {}).raw


def test_a_batch_is_admitted_in_order_with_one_replica_step_and_refusals_are_forgotten(
        node: Node) -> None:
    fed: list[Event] = []
    node.feed = fed.append  # type: ignore[method-assign]
    good = [_register(node, 0) for _ in range(3)]
    too_far_ahead = _register(node, 5_000)  # admission refuses nonces far ahead
    garbage = b"\x00not a transaction"

    async def scenario() -> tuple[list[Tx | TxError], list[Tx | TxError]]:
        first = await node.admit_many([good[0], too_far_ahead, good[1], garbage, good[2]])
        again = await node.admit_many([good[1]])
        return first, again

    first, again = asyncio.run(scenario())
    assert [type(outcome) for outcome in first] == [Tx, TxError, Tx, TxError, Tx]
    assert [o.hash for o in first if isinstance(o, Tx)] == [sha256(raw) for raw in good]
    refused = first[1]
    assert isinstance(refused, TxError) and refused.code != "already_known"
    assert isinstance(again[0], TxError) and again[0].code == "already_known"
    assert fed == [RequestsReceived(tuple(sha256(raw) for raw in good))]
    assert len(node.mempool) == 3
    # The refused tx was verified, but is not kept: nothing will ever propose it.
    assert node.verifier.known(sha256(too_far_ahead)) is None
    assert all(node.verifier.known(sha256(raw)) is not None for raw in good)
    # node_status counts what went to the verify pool (the garbage included), not cache
    # answers: the resubmitted tx adds nothing.
    assert node.status()["signatures_checked"] == 5


def test_decoded_blocks_are_bounded_by_bytes_as_well_as_by_count(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    import node as node_module
    from tests.ledger.chainmaker import make_txs, next_block

    payloads = [next_block(height, bytes(32), make_txs(height, 20))[0].encode()
                for height in range(1, 13)]
    budget = 4 * len(payloads[0])
    monkeypatch.setattr(node_module, "DECODED_BYTES_MAX", budget)
    for payload in payloads:
        block = node._block_of(payload)
        assert block is not None and block.encode() == payload
        assert node._decoded_bytes <= budget
    # The newest blocks are the ones kept, and what is kept is accounted exactly.
    assert len(node._decoded) < len(payloads)
    assert node._decoded_bytes == sum(size for _, size in node._decoded.values())
    assert node._block_of(payloads[-1]) is next(reversed(node._decoded.values()))[0]
    assert node._block_of(b"not a block") is None


@pytest.mark.parametrize("payload", [
    b"not a block", b"\xc1", b"\x93\x01\x02\x03", b"\x80",
    b"\x82\xa6header\x80\xa3txs\x90" + b"\x00",
])
def test_a_peer_proposal_that_is_not_a_block_is_refused_not_raised(
        node: Node, payload: bytes) -> None:
    # The replica asks these for every received proposal; an exception here would escape
    # in the middle of a replica step (it once did, for payloads that were not msgpack).
    assert node._digest_of(payload) is None
    assert node._requests_in(payload) is None
