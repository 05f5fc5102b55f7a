"""Validators frozen with SIGSTOP for longer than the view-change timeout, then resumed."""

from __future__ import annotations

import time

import pytest

from tests.integration.cluster import FAST_CONSENSUS, Cluster, LoadGenerator, NodeProcess

pytestmark = pytest.mark.integration

VIEW_CHANGE_TIMEOUT_S = FAST_CONSENSUS["view_change_timeout_ms"] / 1000


def freeze_under_load(cluster: Cluster, load: LoadGenerator, victim: NodeProcess,
                      frozen_s: float) -> int:
    """Freeze `victim` while the others commit, thaw it; the height reached meanwhile."""
    victim.freeze()
    frozen_at = time.monotonic()
    load.wait_committed(10, timeout_s=30)
    time.sleep(max(0.0, frozen_s - (time.monotonic() - frozen_at)))
    height_while_frozen = max(node.height() for node in cluster.running())
    victim.thaw()
    load.wait_committed(10, timeout_s=30)
    return height_while_frozen


def test_frozen_primary_then_frozen_backup_resume_without_fork_and_catch_up(
        cluster: Cluster) -> None:
    with LoadGenerator(cluster) as load:
        load.wait_committed(5)
        # The primary, 5x the view-change timeout: the others must change view without it,
        # and on thaw its stale view and votes must not fork anything.
        primary = cluster.primary()
        view_before = primary.status()["view"]
        frozen_height = freeze_under_load(cluster, load, primary, 5 * VIEW_CHANGE_TIMEOUT_S)
        others = [node for node in cluster.nodes if node is not primary]
        assert all(node.status()["view"] > view_before for node in others), cluster.describe()
        head = cluster.wait_converged(timeout_s=40)
        assert head[0] > frozen_height
        cluster.assert_same_chain()
        cluster.wait_participating(primary)

        # A backup, longer than the p2p idle timeout (6 s): its links drop and reconnect.
        primary = cluster.primary()
        backup = next(node for node in cluster.nodes if node is not primary)
        frozen_height = freeze_under_load(cluster, load, backup, 8.0)
    head = cluster.wait_converged(timeout_s=40)
    assert head[0] > frozen_height
    cluster.assert_same_chain()
    cluster.assert_no_lost_txs()
