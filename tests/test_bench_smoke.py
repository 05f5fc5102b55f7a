"""A few seconds of the real cluster benchmark, so the harness cannot rot.

Four validator processes started by `cityledger testnet up`, a small open-loop load, and
the result file the full runs write; the full runs themselves are `make bench`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cluster, limit, scale
from benchmarks.common import Network
from benchmarks.history import write_history
from ledger.store import BlockStore
from node import Node, verify_home_chain

pytestmark = pytest.mark.integration

RESULT_FIELDS = ("tps", "latency_ms", "cpu_us_per_tx", "peak_rss_mb", "ceiling_tps",
                 "ceiling_fraction", "same_head", "blocks_per_s", "mean_block_txs")


def test_cluster_benchmark_commits_every_tx_and_writes_its_result(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cluster.main(["--validators", "4", "--txs", "240", "--rate", "120",
                           "--duration", "2", "--warmup", "0.3", "--senders", "24",
                           "--limit-txs", "100", "--cache", "", "--out", str(out)])

    written = json.loads((out / "result.json").read_text())
    for name in RESULT_FIELDS:
        assert name in written, name
    assert set(written["latency_ms"]) >= {"p50", "p95", "p99"}
    assert result["errors"] == {}
    assert result["submitted"] > 0
    assert result["committed"] == result["submitted"]
    assert result["same_head"] is True
    assert result["height"] > 2  # setup blocks plus measured ones
    assert result["tps"] > 0
    assert result["latency_ms"]["p50"] is not None
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["cpu_us_per_tx"] > 0
    assert result["ceiling_tps"] > 0
    assert result["ceiling_fraction"] > 0
    assert len(result["peak_rss_mb_per_node"]) == 4


def test_limit_catch_up_replays_the_history_to_the_same_head(tmp_path: Path) -> None:
    # The replay exits (SystemExit) unless every certified block commits and both late
    # chains (checked first, and two with a verify pool) end on the source's head.
    report = limit.main(["--txs", "60", "--senders", "12", "--block-txs", "20",
                         "--catch-up", "7", "--out", str(tmp_path)])
    synced = report["catch_up"]
    assert synced["txs"] == 60 and synced["blocks"] == 9  # 8 blocks of 7 and one of 4
    assert synced["verify_cpu_us_per_tx"] > 0 and synced["commit_cpu_us_per_tx"] > 0
    assert synced["ceiling_tps"] <= 1e6 / synced["commit_cpu_us_per_tx"]
    assert synced["as_node_tps"] > 0 and synced["overlapped_tps"] > 0  # same head too
    assert json.loads((tmp_path / "limit.json").read_text())["catch_up"]["blocks"] == 9


def test_a_written_history_is_a_valid_certified_chain_on_every_serving_node(
        tmp_path: Path) -> None:
    network = Network(tmp_path / "net", 4)
    network.init()
    history = write_history(network, [0, 1, 2], blocks=210, block_txs=1, senders=6)
    assert (history.blocks, history.txs) == (210, 210)
    homes = [network.out_dir / f"node{index}" for index in range(3)]
    reports = [verify_home_chain(home) for home in homes]
    # Every header link, tx root, state root and commit certificate re-checked offline.
    assert all(report.ok for report in reports), [report.reason for report in reports]
    assert [report.tip_height for report in reports] == [210, 210, 210]
    # A node started there restores at the head with its watermarks at the last
    # checkpoint, as a live network's would be.
    node = Node(homes[1])
    try:
        assert node.replica is not None
        interval = node.genesis.consensus.checkpoint_interval_blocks
        checkpoint = 210 // interval * interval
        assert 0 < checkpoint <= 210
        assert (node.replica.low_seq, node.replica.last_executed) == (checkpoint, 210)
        assert node.replica.stable_proof.state_digest == node.sequences.state_digest_at(
            checkpoint)
        tip = node.store.tip()
    finally:
        node.store.close()
    for home in (homes[0], homes[2]):
        store = BlockStore.open(home / "data" / "ledger.db")
        assert store.tip() == tip
        store.close()
    assert not (network.out_dir / "node3" / "data").exists()  # the late node starts empty


def test_a_fresh_node_syncs_a_written_history_from_running_validators(tmp_path: Path) -> None:
    sync = scale.scale_sync(4, rate=0.0, duration_s=0.0, senders=0, workdir=tmp_path,
                            out=tmp_path / "out", history_blocks=120, history_block_txs=2)
    assert sync["error"] is None and sync["synced"] is True
    assert (sync["history_blocks"], sync["history_txs"]) == (120, 240)
    assert sync["same_head_after"] is True
    assert sync["txs_per_s"] > 0
    assert 0 < sync["late_node_peak_rss_mb"] < 1000
