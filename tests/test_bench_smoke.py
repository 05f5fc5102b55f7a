"""A few seconds of the real cluster benchmark, so the harness cannot rot.

Four validator processes started by `cityledger testnet up`, a small open-loop load, and
the result file the full runs write; the full runs themselves are `make bench`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cluster, limit

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
