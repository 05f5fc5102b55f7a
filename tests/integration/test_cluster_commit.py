"""Four validators started through the CLI agree on one chain built from every node's RPC."""

from __future__ import annotations

import asyncio

import pytest

from ledger.crypto import KeyPair
from rpc.client import LedgerClient
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration


def test_txs_submitted_to_any_node_commit_with_the_same_hash_at_every_height(
        cluster: Cluster) -> None:
    statuses = [node.status() for node in cluster.nodes]
    assert {s["chain_id"] for s in statuses} == {cluster.chain_id}
    assert len({s["node_id"] for s in statuses}) == 4
    # Every node answers on its own RPC, and every node is used as an entry point.
    for round_ in range(3):
        for node in cluster.nodes:
            result = cluster.submit(node)
            assert result["status"] == "committed", (round_, node.name, result)
            assert result["receipt"]["status"] == "ok"

    # A client using the project's own RPC client, pipelining without waiting.
    async def pipelined() -> list[str]:
        async with LedgerClient(cluster.nodes[2].rpc_url, KeyPair.generate()) as client:
            sent = [await client.submit("identity", "register", {}, wait=False)]
            other = LedgerClient(cluster.nodes[3].rpc_url, KeyPair.generate())
            async with other:
                sent.append(await other.submit("identity", "register", {}, wait=False))
            return [item["hash"] for item in sent]

    for tx_hash in asyncio.run(pipelined()):
        def committed(tx_hash: str = tx_hash) -> dict[str, object] | None:
            result = cluster.nodes[0].rpc("tx_get", hash=tx_hash)
            return result if result["status"] == "committed" else None
        from tests.integration.cluster import wait_until

        cluster.record_ack(wait_until(committed, 20, f"tx {tx_hash[:12]} to commit"))

    head = cluster.wait_converged()
    assert head[0] >= 1
    common = cluster.assert_same_chain()
    assert common == head[0]
    assert cluster.assert_no_lost_txs() == 14
    # Each acknowledged tx sits in the block the ack named, on every node.
    for tx_hash, height in cluster.acked.items():
        for node in cluster.nodes:
            assert tx_hash in node.rpc("block_get", height=height)["tx_hashes"]
    # Every block carries a commit certificate signed by a quorum (3 of 4) of validators.
    validators = {v["public_key"] for v in cluster.nodes[0].rpc("validators_list")}
    for height in range(1, common + 1):
        cert = cluster.nodes[1].rpc("block_get", height=height)["certificate"]
        signers = {sig["validator"] for sig in cert["signatures"]}
        assert len(signers) >= 3 and signers <= validators, (height, cert)
