"""SIGKILLed validators: the others go on, and a restarted or wiped node catches up."""

from __future__ import annotations

import json

import pytest

from tests.integration.cluster import Cluster, LoadGenerator, run_cli, wait_until

pytestmark = pytest.mark.integration


def test_killed_primary_is_replaced_by_view_change_and_catches_up_after_restart(
        cluster: Cluster) -> None:
    cluster.commit_some(4)
    primary = cluster.primary()
    view_before = primary.status()["view"]
    backups = [node for node in cluster.nodes if node is not primary]

    primary.kill()
    # Transactions sent to the backups still commit: they suspect the silent primary,
    # change view, and the new primary proposes.
    cluster.commit_some(6, via=backups)
    for node in backups:
        status = node.status()
        assert status["view"] > view_before, status
        assert status["primary"] != primary.name, status
    head = cluster.wait_converged(backups)

    primary.start()
    cluster.wait_ready([primary])
    caught_up = cluster.wait_converged(timeout_s=40)
    assert caught_up[0] >= head[0]
    # The restarted node follows the new view and takes part again.
    cluster.commit_some(4)
    cluster.wait_converged(timeout_s=30)
    cluster.assert_same_chain()
    cluster.assert_no_lost_txs()


def test_backup_killed_under_load_catches_up_after_restart(cluster: Cluster) -> None:
    primary = cluster.primary()
    backup = next(node for node in cluster.nodes if node is not primary)
    with LoadGenerator(cluster) as load:
        load.wait_committed(10)
        backup.kill()
        height_at_kill = cluster.running()[0].height()
        load.wait_committed(20)
        backup.start()
        cluster.wait_ready([backup])
        load.wait_committed(20)
    assert cluster.running()[0].height() > height_at_kill
    cluster.wait_converged(timeout_s=40)
    cluster.assert_same_chain()
    assert cluster.assert_no_lost_txs() >= 50


def test_wiped_node_resyncs_whole_chain_from_peers_under_load_and_verify_chain_passes(
        cluster: Cluster) -> None:
    victim = cluster.nodes[3]
    # Longer than a checkpoint interval (16 blocks) and one fetch batch (32 seqs).
    cluster.commit_some(40)
    head = cluster.wait_converged()
    victim.kill()
    victim.wipe_data()
    assert not (victim.home / "data").exists()
    victim.start()
    cluster.wait_ready([victim])
    # The network keeps working while the wiped node syncs.
    with LoadGenerator(cluster, threads=1):
        wait_until(lambda: victim.height() >= head[0], 40,
                   f"the wiped {victim.name} to re-sync to height {head[0]}")
    final = cluster.wait_converged(timeout_s=30)
    assert final[0] > head[0]
    cluster.assert_same_chain()
    cluster.assert_no_lost_txs()
    # A node a fetch range behind checks the catch-up's signatures in its child process.
    checks = victim.status()["signature_process"]
    assert checks["state"] == "ready" and checks["checked"] > 0, checks

    # verify-chain reads the store offline, so stop the node cleanly first.
    assert victim.stop() == 0
    result = run_cli("--json", "verify-chain", "--home", str(victim.home))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["blocks_checked"] >= final[0]


def test_restarted_and_wiped_nodes_resync_on_an_idle_network(cluster: Cluster) -> None:
    behind, wiped = cluster.nodes[1], cluster.nodes[3]
    # More than one fetch batch (32 seqs) and two checkpoints (16 blocks).
    cluster.commit_some(30)
    behind.kill()
    cluster.commit_some(5, via=[cluster.nodes[0], cluster.nodes[2]])
    head = cluster.wait_converged([cluster.nodes[0], cluster.nodes[2], wiped])
    assert head[0] >= 35
    wiped.kill()
    wiped.wipe_data()
    # No client sends anything from here on: the restarted nodes must ask on their own.
    cluster.start([behind, wiped])
    assert cluster.wait_converged(timeout_s=30) == head
    cluster.assert_same_chain()
    # Both take part again: the network commits through them.
    cluster.commit_some(2, via=[behind, wiped])
    cluster.wait_converged(timeout_s=30)
    cluster.assert_same_chain()
    cluster.assert_no_lost_txs()
