"""A governance-approved validator-set change takes effect at a checkpoint boundary.

Four validators at genesis, and a fifth agency's node made with `cityledger node init`
and started early (a follower nobody will talk to yet). The agencies approve a set that
drops one validator and adds the new node. At the next checkpoint boundary every node switches:
the departed node stops voting, the new node catches up and votes; with one of the
remaining old validators down, blocks still commit only because the new node's votes
count. A restarted validator comes back in the new set, and `verify-chain` checks each
block's certificate against the set that signed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import plyvel
import pytest

from ledger.crypto import KeyPair
from ledger.tx import sign_tx
from tests.integration.cluster import Cluster, NodeProcess, free_ports, run_cli, wait_until

pytestmark = pytest.mark.integration

CHECKPOINT_INTERVAL = 4


def _add_joining_node(cluster: Cluster) -> tuple[NodeProcess, dict[str, Any]]:
    """A new agency's node made as an operator would (`node init`); not yet a validator."""
    p2p_port, rpc_port = free_ports(2)
    home = cluster.root / "joiner"
    result = run_cli("node", "init", "--home", str(home), "--genesis",
                     str(cluster.root / "genesis.json"), "--name", "health",
                     "--p2p", f"127.0.0.1:{p2p_port}", "--rpc", f"127.0.0.1:{rpc_port}",
                     "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)["validator_entry"]
    node = NodeProcess(index=len(cluster.nodes), home=home, name="health",
                       rpc_url=f"http://127.0.0.1:{rpc_port}/rpc", p2p_port=p2p_port)
    cluster.nodes.append(node)  # so the cluster kills it like the others
    return node, entry


class Agencies:
    """Signs governance transactions with the agencies' account keys from `genesis init`."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.nonces: dict[str, int] = {}

    def send(self, via: NodeProcess, agency: str, op: str, payload: dict[str, Any]) -> Any:
        key = KeyPair.load(self.cluster.root / "accounts" / f"{agency}.json")
        nonce = self.nonces.get(agency, 0)
        self.nonces[agency] = nonce + 1
        tx = sign_tx(key, self.cluster.chain_id, "governance", op, nonce, payload)
        result = self.cluster.submit(via, tx)
        assert result["receipt"]["status"] == "ok", result
        return result["receipt"]["result"]


def _status(node: NodeProcess) -> dict[str, Any]:
    return node.status()


def _fresh_network(make_cluster: Callable[..., Cluster]) -> Cluster:
    # The fixture kills every process at teardown (the joining node too, once appended)
    # and prints the nodes' logs when the test failed.
    return make_cluster(consensus={"checkpoint_interval_blocks": CHECKPOINT_INTERVAL},
                        start=False)


def test_an_approved_validator_set_takes_over_at_the_next_checkpoint(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = _fresh_network(make_cluster)
    old = list(cluster.nodes)
    genesis_set = json.loads((cluster.root / "genesis.json").read_text())["validators"]
    newcomer, newcomer_entry = _add_joining_node(cluster)
    departing = old[3]
    cluster.start(old)
    cluster.start([newcomer])
    assert _status(newcomer)["validator"] is False
    assert _status(old[0])["epoch"] == 0 and _status(old[0])["validator"] is True

    agencies = Agencies(cluster)
    new_set = genesis_set[:3] + [newcomer_entry]
    proposal = agencies.send(old[0], "treasury", "propose",
                             {"kind": "set_validators", "validators": new_set})
    for agency in ("civil-registry", "utility"):
        last = agencies.send(old[1], agency, "approve", {"proposal_id": proposal["proposal_id"]})
    assert last["status"] == "executed", last

    # Blocks carry the chain to the next checkpoint boundary; every node switches there.
    def switched() -> bool:
        if all(_status(node)["epoch"] == 1 for node in old[:3]):
            return True
        cluster.submit(old[0])
        return False
    wait_until(switched, 60.0, "the old validators to enter epoch 1")
    expected = sorted(v["name"] for v in new_set)
    for node in old[:3]:
        assert sorted(_status(node)["validators"]) == expected
    assert sorted(v["name"] for v in old[1].rpc("validators_list")) == expected
    epochs = old[1].rpc("validator_epochs")
    assert [e["epoch"] for e in epochs] == [0, 1] and epochs[0]["first_seq"] == 1
    assert (epochs[1]["first_seq"] - 1) % CHECKPOINT_INTERVAL == 0
    assert epochs[1]["signing_domain"] == f"{cluster.chain_id}/epoch/1"
    assert epochs[1]["validators"] == [{**v, "address": epochs[1]["validators"][i]["address"]}
                                       for i, v in enumerate(new_set)]
    wait_until(lambda: _status(departing)["epoch"] == 1, 30.0, "the departing node to switch")
    assert _status(departing)["validator"] is False

    # The newcomer is now let in, catches up through the old epoch and starts voting.
    def newcomer_votes() -> bool:
        status = _status(newcomer)
        return status["validator"] and status["epoch"] == 1
    wait_until(newcomer_votes, 60.0, "the newcomer to join the validator set")

    # With one of the three remaining old validators down, a quorum (3 of 4) needs the
    # newcomer: commits prove it votes.
    old[0].stop()
    live = [old[1], old[2], newcomer]
    for _ in range(3):
        assert cluster.submit(old[1])["status"] == "committed"
    cluster.wait_converged(live, timeout_s=30.0)

    # A restarted validator restores the new epoch (its set and its records) from disk;
    # the quorum still needs it, so these commits show it votes again.
    old[1].stop()
    old[1].start()
    cluster.wait_ready([old[1]])
    assert _status(old[1])["epoch"] == 1 and _status(old[1])["validator"] is True
    for _ in range(3):
        assert cluster.submit(old[2])["status"] == "committed"
    height = cluster.assert_same_chain(live)
    assert height >= CHECKPOINT_INTERVAL + 3

    for node in live + [departing]:
        node.stop()
    # The restarted node dropped the retired epoch's consensus records; the new ones stay.
    db = plyvel.DB(str(old[1].home / "data" / "ledger.db"))
    try:
        assert next(db.iterator(prefix=b"cons/rec/"), None) is None
        assert next(db.iterator(prefix=b"cons/rec-e1/"), None) is not None
    finally:
        db.close()
    for node in live:
        result = run_cli("verify-chain", "--home", str(node.home))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok" in result.stdout


def test_a_validator_down_during_the_switch_catches_up_into_the_new_set(
        make_cluster: Callable[..., Cluster]) -> None:
    """Agency 4 leaves (n=3: quorum 2). Agency 3's node is down while the set changes;
    restarted in the old epoch, it fetches across the boundary, switches, and is then
    needed for the quorum."""
    cluster = _fresh_network(make_cluster)
    genesis_set = json.loads((cluster.root / "genesis.json").read_text())["validators"]
    cluster.start()
    first, second, lagging, departing = cluster.nodes
    agencies = Agencies(cluster)
    proposal = agencies.send(first, "treasury", "propose",
                             {"kind": "set_validators", "validators": genesis_set[:3]})
    lagging.stop()
    for agency in ("civil-registry", "utility"):
        agencies.send(second, agency, "approve", {"proposal_id": proposal["proposal_id"]})

    def switched() -> bool:
        if all(_status(node)["epoch"] == 1 for node in (first, second)):
            return True
        cluster.submit(first)
        return False
    wait_until(switched, 60.0, "the running validators to enter epoch 1")
    cluster.submit(second)  # the new set of three commits with two of them
    lagging.start()
    cluster.wait_ready([lagging])
    wait_until(lambda: _status(lagging)["epoch"] == 1 and _status(lagging)["validator"],
               60.0, "the restarted validator to cross into epoch 1")
    first.stop()
    departing.stop()
    for _ in range(3):
        assert cluster.submit(second)["status"] == "committed"
    cluster.assert_same_chain([second, lagging])
