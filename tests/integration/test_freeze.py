"""A validator frozen with SIGSTOP for longer than the view-change timeout, then resumed."""

from __future__ import annotations

import time

import pytest

from tests.integration.cluster import FAST_CONSENSUS, Cluster, LoadGenerator

pytestmark = pytest.mark.integration

VIEW_CHANGE_TIMEOUT_S = FAST_CONSENSUS["view_change_timeout_ms"] / 1000


@pytest.mark.parametrize(("role", "frozen_s"), [
    # The primary: the others must change view without it, and it must not fork on thaw.
    ("primary", 5 * VIEW_CHANGE_TIMEOUT_S),
    # A backup, longer than the p2p idle timeout (6 s), so its links drop and reconnect.
    ("backup", 8.0),
])
def test_frozen_node_resumes_without_fork_and_catches_up(
        cluster: Cluster, role: str, frozen_s: float) -> None:
    primary = cluster.primary()
    victim = primary if role == "primary" else \
        next(node for node in cluster.nodes if node is not primary)
    view_before = primary.status()["view"]
    with LoadGenerator(cluster) as load:
        load.wait_committed(5)
        victim.freeze()
        frozen_at = time.monotonic()
        load.wait_committed(10, timeout_s=30)
        time.sleep(max(0.0, frozen_s - (time.monotonic() - frozen_at)))
        height_while_frozen = max(node.height() for node in cluster.running())
        victim.thaw()
        load.wait_committed(10, timeout_s=30)
    others = [node for node in cluster.nodes if node is not victim]
    if role == "primary":
        assert all(node.status()["view"] > view_before for node in others), cluster.describe()
    head = cluster.wait_converged(timeout_s=40)
    assert head[0] > height_while_frozen
    cluster.assert_same_chain()
    cluster.assert_no_lost_txs()
