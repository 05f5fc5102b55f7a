"""The standard benchmark set (`make bench`): every target of issue 6, medians of N runs.

    python -m benchmarks.standard [--runs 3] [--quick] [--out bench-out/standard]

Per run, in this order (so the BFT cluster and the Raft peer are measured minutes apart):
  1. benchmarks.cluster, 4 validators, closed loop (max)    -> tx/s, ceiling fraction, CPU/tx
  2. benchmarks.raft_peer, 3 PySyncObj nodes, same workload -> writes/s, the ratio rows
  3. benchmarks.cluster, 4 validators, open loop 500 tx/s   -> p50 / p99 commit latency
  4. benchmarks.scale sync, a fresh 4th node catches up      -> verified tx/s while syncing
Peak RSS per node is the largest seen in the cluster runs. Prints the summary table and
writes OUT/standard.json with every run's result. Default durations: 60 s closed loop
(10 s warm-up), 30 s open loop, 30 s Raft, so three runs take about 15 minutes on 2 cores;
--quick runs everything once with 20 s durations.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import cluster, raft_peer
from benchmarks.common import fmt, machine, stop_on_sigterm, write_json
from benchmarks.scale import scale_sync

# (name, goal text, value getter over one run's results, passes?)
Target = tuple[str, str, Callable[[dict[str, Any]], float | None], Callable[[float], bool]]


def _get(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def getter(run: dict[str, Any]) -> float | None:
        value: Any = run
        for key in path:
            if not isinstance(value, dict) or value.get(key) is None:
                return None
            value = value[key]
        return float(value)
    return getter


def _ratio(top: Callable[[dict[str, Any]], float | None],
           bottom: Callable[[dict[str, Any]], float | None]
           ) -> Callable[[dict[str, Any]], float | None]:
    def getter(run: dict[str, Any]) -> float | None:
        a, b = top(run), bottom(run)
        return a / b if a is not None and b else None
    return getter


TARGETS: list[Target] = [
    ("committed tx/s, 4 validators, closed loop", ">= 3,000",
     _get("max", "tps"), lambda v: v >= 3000),
    ("fraction of measured ceiling", ">= 0.50",
     _get("max", "ceiling_fraction"), lambda v: v >= 0.5),
    ("p50 commit latency at 500 tx/s, ms", "<= 50",
     _get("open", "latency_ms", "p50"), lambda v: v <= 50),
    ("p99 commit latency at 500 tx/s, ms", "<= 250",
     _get("open", "latency_ms", "p99"), lambda v: v <= 250),
    ("committed tx/s at 500 tx/s offered", "~ 500",
     _get("open", "tps"), lambda v: v >= 475),
    ("CPU us per committed tx per validator", "<= 150",
     _get("max", "cpu_us_per_tx_per_node"), lambda v: v <= 150),
    ("peak RSS per node, MB", "<= 300",
     _get("peak_rss_mb"), lambda v: v <= 300),
    ("fresh-node sync, verified tx/s", ">= 5,000",
     _get("sync", "txs_per_s"), lambda v: v >= 5000),
    ("all nodes on one head (every cluster run)", "yes",
     _get("same_head"), lambda v: v == 1.0),
]
RATIOS: list[tuple[str, Callable[[dict[str, Any]], float | None]]] = [
    ("BFT tx/s / Raft writes/s", _ratio(_get("max", "tps"), _get("raft", "tps"))),
    ("BFT CPU us/tx (all nodes) / Raft CPU us/write (all nodes)",
     _ratio(_get("max", "cpu_us_per_tx"), _get("raft", "cpu_us_per_tx"))),
    ("cluster tx/s / ceiling tx/s (same as above)", _get("max", "ceiling_fraction")),
    ("ceiling tx/s (benchmarks.limit, in the run)", _get("max", "ceiling_tps")),
    ("Raft writes/s", _get("raft", "tps")),
]


def one_run(index: int, out: Path, closed_s: float, open_s: float, raft_s: float,
            warmup_s: float, sync_s: float) -> dict[str, Any]:
    run_out = out / f"run{index}"
    print(f"\n=== run {index}: cluster, closed loop ===", flush=True)
    closed = cluster.run(cluster.Options(duration_s=closed_s, warmup_s=warmup_s,
                                         out=str(run_out / "cluster-max")))
    print(f"\n=== run {index}: raft_peer ===", flush=True)
    raft = raft_peer.run(int(20_000 * raft_s), raft_s, min(warmup_s, raft_s / 3), 2000, 250,
                         run_out / "raft")
    raft_peer.report(raft)
    write_json(run_out / "raft", "result.json", raft)
    print(f"\n=== run {index}: cluster, open loop 500 tx/s ===", flush=True)
    opened = cluster.run(cluster.Options(rate=500.0, duration_s=open_s,
                                         warmup_s=min(5.0, open_s / 3),
                                         out=str(run_out / "cluster-500")))
    print(f"\n=== run {index}: fresh-node sync ===", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        sync = scale_sync(4, 300.0, sync_s, 500, Path(tmp), run_out / "sync")
    print(f"  synced {sync['history_blocks']} blocks / {sync['history_txs']} txs in "
          f"{fmt(sync['catch_up_s'], 1)} s: {fmt(sync['txs_per_s'])} verified tx/s")
    return {"max": closed, "open": opened, "raft": raft, "sync": sync,
            "peak_rss_mb": max(closed["peak_rss_mb"], opened["peak_rss_mb"]),
            "same_head": float(closed["same_head"] and opened["same_head"])}


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, goal, getter, passes in TARGETS:
        values = [getter(run) for run in runs]
        present = [v for v in values if v is not None]
        middle = statistics.median(present) if present else None
        rows.append({"target": name, "goal": goal, "values": values, "median": middle,
                     "met": passes(middle) if middle is not None else None})
    for name, getter in RATIOS:
        values = [getter(run) for run in runs]
        present = [v for v in values if v is not None]
        rows.append({"target": name, "goal": "", "values": values,
                     "median": statistics.median(present) if present else None, "met": None})
    return rows


def _cell(value: float | None, yes_no: bool = False) -> str:
    if value is None:
        return "-"
    if yes_no:
        return "yes" if value == 1.0 else "NO"
    return fmt(value, 2 if abs(value) < 10 else 0)


def print_summary(rows: list[dict[str, Any]], runs: int, info: dict[str, Any]) -> None:
    print(f"\nCityLedger standard benchmarks: medians of {runs} run(s) on {info['cores']} cores "
          f"({info['cpu']}), Python {info['python']}")
    width = max(len(row["target"]) for row in rows)
    print(f"{'target':<{width}}  {'goal':>9}  {'median':>9}  {'met':>4}  runs")
    for row in rows:
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        yes_no = row["goal"] == "yes"
        each = " ".join(_cell(v, yes_no) for v in row["values"])
        print(f"{row['target']:<{width}}  {row['goal']:>9}  {_cell(row['median'], yes_no):>9}  "
              f"{met:>4}  {each}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run, 20 s durations")
    parser.add_argument("--out", default="bench-out/standard")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    closed_s, open_s, raft_s, warmup_s, sync_s = ((20.0, 20.0, 20.0, 5.0, 10.0) if args.quick
                                                  else (60.0, 30.0, 30.0, 10.0, 20.0))
    out = Path(args.out)
    info = machine()
    started = time.time()
    results = [one_run(i + 1, out, closed_s, open_s, raft_s, warmup_s, sync_s)
               for i in range(runs)]
    rows = summary_rows(results)
    print_summary(rows, runs, info)
    report = {"benchmark": "standard", "machine": info, "runs": runs,
              "elapsed_s": round(time.time() - started, 1), "summary": rows,
              "results": results}
    path = write_json(out, "standard.json", report)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    stop_on_sigterm()
    main()
