"""One network through every fault in turn, under constant load: nothing acknowledged is lost.

A client keeps submitting (and waiting for commit) through whichever nodes are up while
the primary is SIGKILLed and restarted, a backup is SIGKILLed and restarted, the primary
is frozen past the view-change timeout and thawed, and a node is wiped and re-synced.
At the end every transaction any node acknowledged as committed is in every node's
chain, at the height it was acknowledged, the chains are identical, and `verify-chain`
passes on every node's store.
"""

from __future__ import annotations

import json
import time
import warnings

import pytest

from tests.integration.cluster import Cluster, LoadGenerator, NodeProcess, run_cli, wait_until

pytestmark = pytest.mark.integration


def rejoin(cluster: Cluster, node: NodeProcess, load: LoadGenerator) -> None:
    """Start `node` and wait until it has caught up with the height when it came back."""
    target = max(other.height() for other in cluster.running())
    node.start()
    cluster.wait_ready([node])
    wait_until(lambda: node.height() >= target, 40,
               f"{node.name} to catch up to height {target}")
    load.wait_committed(5)
    # Recovered means voting again, the usual outcome. Rarely a restarted node changes
    # view alone while it catches up; PBFT gives it no safe way back, so it follows by
    # fetching until the others next change view (docs/CONSENSUS.md, "Known limit"). Then
    # the next fault is two nodes out of step: the network must still go on, and the
    # load's wait after that fault checks that it does.
    try:
        cluster.wait_participating(node, timeout_s=20)
    except AssertionError:
        status = node.status()
        assert status["in_view_change"] and status["view"] > cluster.majority_view(node), (
            f"{node.name} neither votes nor waits in a later view: {status}")
        warnings.warn(f"{node.name} changed view alone while catching up; it follows "
                      "by fetching", stacklevel=1)


def test_no_acknowledged_transaction_is_lost_across_kills_freezes_and_a_wipe(
        cluster: Cluster) -> None:
    with LoadGenerator(cluster, threads=2) as load:
        load.wait_committed(6)

        primary = cluster.primary()
        primary.kill()
        load.wait_committed(6)
        rejoin(cluster, primary, load)

        primary = cluster.primary()
        backup = next(node for node in cluster.nodes if node is not primary)
        backup.kill()
        load.wait_committed(6)
        rejoin(cluster, backup, load)

        primary = cluster.primary()
        primary.freeze()
        time.sleep(3.0)
        load.wait_committed(5)
        primary.thaw()
        load.wait_committed(6)
        cluster.wait_participating(primary, timeout_s=20)

        wiped = cluster.nodes[2]
        wiped.kill()
        wiped.wipe_data()
        rejoin(cluster, wiped, load)
        load.wait_committed(6)
    assert load.committed >= 40

    head = cluster.wait_converged(timeout_s=40)
    cluster.assert_same_chain()
    checked = cluster.assert_no_lost_txs()
    assert checked == load.committed
    for node in cluster.nodes:
        assert node.stop() == 0, node.log_tail()
        result = run_cli("--json", "verify-chain", "--home", str(node.home))
        assert result.returncode == 0, (node.name, result.stdout, result.stderr)
        assert json.loads(result.stdout)["blocks_checked"] >= head[0]
