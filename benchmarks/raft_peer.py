"""The same count of small replicated writes through a 3-node PySyncObj (Raft) cluster.

    python -m benchmarks.raft_peer [--txs M] [--duration 20] [--warmup 5] [--in-flight 2000]
        [--value-bytes 250] [--out bench-out/raft_peer]

A crash-fault-tolerant replicated log in Python, measured on the same machine minutes
apart from benchmarks.cluster, gives the cluster's throughput a yardstick. Three processes
on loopback each run a PySyncObj node holding a replicated dict; whichever becomes leader
drives the load itself (no client hop, the most favourable case for Raft): closed loop
with `--in-flight` writes outstanding, each write `--value-bytes` long (about a signed
token transfer). Latency is submit to the commit callback on the leader. PySyncObj's
journal is an mmap'ed file that it never fsyncs per entry, unlike CityLedger's synced
LevelDB batches: durability is weaker, which again favours Raft.
Measured like benchmarks.cluster: committed writes/s in [start + warmup, end of sending],
latency p50/p95/p99, CPU seconds of the three processes per committed write, peak RSS,
and whether every node applied the same sequence (digest of keys in apply order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    REPO_DIR,
    fmt,
    free_port_base,
    machine,
    percentile,
    print_table,
    stop_on_sigterm,
    write_json,
)

NODES = 3
READY_TIMEOUT_S = 30.0


# -- one node (a child process) ----------------------------------------------------------
def _publish(path: Path, text: str) -> None:
    """Write then rename, so the parent never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


def serve(index: int, ports: list[int], work: Path, txs: int, duration_s: float,
          in_flight_max: int, value_bytes: int) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class ReplicatedLog(SyncObj):  # type: ignore[misc]
        def __init__(self, self_address: str, partners: list[str], conf: Any) -> None:
            super().__init__(self_address, partners, conf)
            self.applied = 0
            self.digest = b""  # a hash chain over applied keys; bytes, so snapshots pickle
            self.values: dict[int, int] = {}

        @replicated  # type: ignore[untyped-decorator]
        def put(self, key: int, value: bytes) -> int:
            self.values[key] = len(value)
            self.digest = hashlib.sha256(self.digest + key.to_bytes(8, "big")).digest()
            self.applied += 1
            return self.applied

    addresses = [f"127.0.0.1:{port}" for port in ports]
    conf = SyncObjConf(journalFile=str(work / f"journal{index}.bin"), dynamicMembershipChange=False,
                       commandsQueueSize=max(100_000, 2 * in_flight_max))
    node = ReplicatedLog(addresses[index], [a for i, a in enumerate(addresses) if i != index], conf)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and (not node.isReady() or node._getLeader() is None):
        time.sleep(0.05)
    result: dict[str, Any] = {"index": index}
    if node._isLeader():
        result.update(_drive(node, FAIL_REASON.SUCCESS, txs, duration_s, in_flight_max,
                             value_bytes, work))
        target = result["committed"]
        _publish(work / "target", str(target))
    else:
        result["role"] = "follower"
        target = -1
        while time.monotonic() < deadline + duration_s + 120:
            target_file = work / "target"
            if target_file.exists():
                target = int(target_file.read_text())
                break
            time.sleep(0.1)
    settle = time.monotonic() + 30
    while node.applied < target and time.monotonic() < settle:
        time.sleep(0.05)
    result.update({"applied": node.applied, "digest": node.digest.hex()})
    _publish(work / f"result{index}.json", json.dumps(result))
    # Stay up until every node has reported: followers catch up from the leader.
    settle = time.monotonic() + 60
    while len(list(work.glob("result*.json"))) < len(addresses) and time.monotonic() < settle:
        time.sleep(0.1)
    node.destroy()


def _drive(node: Any, success: int, txs: int, duration_s: float, in_flight_max: int,
           value_bytes: int, work: Path) -> dict[str, Any]:
    slots = threading.Semaphore(in_flight_max)
    lock = threading.Lock()
    sent_s: list[float] = [0.0] * txs
    done_s: list[float] = [0.0] * txs
    failures: dict[str, int] = {}
    value = os.urandom(value_bytes)

    def callback_for(key: int) -> Any:
        def done(result: Any, error: int) -> None:
            now = time.time()
            with lock:
                if error == success:
                    done_s[key] = now
                else:
                    failures[str(error)] = failures.get(str(error), 0) + 1
            slots.release()
        return done

    _publish(work / "started", str(time.time()))
    started = time.time()
    end = started + duration_s
    submitted = 0
    while submitted < txs and time.time() < end:
        if not slots.acquire(timeout=1.0):
            continue
        sent_s[submitted] = time.time()
        node.put(submitted, value, callback=callback_for(submitted))
        submitted += 1
    sending_ended = time.time()
    for _ in range(in_flight_max):  # wait for every outstanding write's callback
        if not slots.acquire(timeout=30.0):
            break
    committed = sum(1 for t in done_s[:submitted] if t)
    return {"role": "leader", "started_s": started, "sending_ended_s": sending_ended,
            "submitted": submitted, "committed": committed, "failures": failures,
            "sent_s": sent_s[:submitted], "done_s": done_s[:submitted]}


# -- the parent: three children, measured from outside ------------------------------------
def run(txs: int, duration_s: float, warmup_s: float, in_flight_max: int, value_bytes: int,
        out: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-raft-"))
    base = free_port_base(NODES)
    ports = [base + i for i in range(NODES)]
    procs: list[subprocess.Popen[bytes]] = []
    peak_rss: list[float] = []
    results: list[dict[str, Any]] = []
    try:
        for index in range(NODES):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.raft_peer", "--serve", str(index),
                 "--ports", ",".join(map(str, ports)), "--work", str(work), "--txs", str(txs),
                 "--duration", str(duration_s), "--in-flight", str(in_flight_max),
                 "--value-bytes", str(value_bytes)],
                cwd=REPO_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        handles = [psutil.Process(p.pid) for p in procs]
        deadline = time.monotonic() + READY_TIMEOUT_S + 10
        while not (work / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not (work / "started").exists():
            raise RuntimeError(f"no Raft leader drove the load; logs in {work}")
        started = float((work / "started").read_text())
        time.sleep(max(0.0, started + warmup_s - time.time()))
        cpu_start = [sum(h.cpu_times()[:2]) for h in handles]
        window_start = time.time()
        while time.time() < started + duration_s and not (work / "target").exists():
            time.sleep(0.02)
        cpu_end = [sum(h.cpu_times()[:2]) for h in handles]
        window_end = time.time()
        deadline = time.monotonic() + 180
        peak_rss = [_peak_rss_mb(p.pid) for p in procs]
        while len(results) < NODES and time.monotonic() < deadline:
            results = [json.loads(path.read_text()) for path in work.glob("result*.json")]
            time.sleep(0.1)
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    leader = next(r for r in results if r.get("role") == "leader")
    window_end = min(window_end, leader["sending_ended_s"])
    window_s = max(window_end - window_start, 1e-9)
    done = leader["done_s"]
    committed_in_window = sum(1 for t in done if window_start <= t < window_end)
    latencies = [(d - s) * 1000 for s, d in zip(leader["sent_s"], done, strict=True)
                 if d and window_start <= s < window_end]
    cpu_s = sum(cpu_end) - sum(cpu_start)
    # Under CPU pressure PySyncObj can lose its leader mid-run (election timeout); the
    # driving node's later writes are then discarded and the window commits nothing. That
    # is no throughput figure for Raft, so the run reports it and gives no writes/s.
    leader_lost = committed_in_window == 0 and bool(leader["failures"])
    tps = None if leader_lost else committed_in_window / window_s
    result = {
        "benchmark": "raft_peer",
        "machine": machine(),
        "options": {"txs": txs, "duration_s": duration_s, "warmup_s": warmup_s,
                    "in_flight": in_flight_max, "value_bytes": value_bytes, "nodes": NODES},
        "window_s": round(window_s, 3),
        "tps": tps,
        "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                       "p99": percentile(latencies, 0.99), "samples": len(latencies)},
        "cpu_us_per_tx": cpu_s / committed_in_window * 1e6 if committed_in_window else None,
        "peak_rss_mb": max(peak_rss) if peak_rss else None,
        "submitted": leader["submitted"],
        "committed": leader["committed"],
        "failures": leader["failures"],
        "leader_lost": leader_lost,
        "same_head": len({(r["applied"], r["digest"]) for r in results}) == 1
        and len(results) == NODES,
        "applied": [r["applied"] for r in sorted(results, key=lambda r: r["index"])],
    }
    return result


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except (OSError, psutil.Error):
        return float("nan")


def report(result: dict[str, Any]) -> None:
    latency = result["latency_ms"]
    rows = [
        ("committed writes/s (steady)", fmt(result["tps"])),
        ("latency p50 / p95 / p99 ms", " / ".join(fmt(latency[k], 1)
                                                   for k in ("p50", "p95", "p99"))),
        ("CPU us/write (3 nodes)", fmt(result["cpu_us_per_tx"])),
        ("peak RSS MB (max node)", fmt(result["peak_rss_mb"], 1)),
        ("same log on every node", fmt(result["same_head"])),
        ("submitted / committed", f"{result['submitted']:,} / {result['committed']:,}"),
    ]
    if result["failures"]:
        rows.append(("failed writes (PySyncObj reason code: count)",
                     json.dumps(result["failures"], sort_keys=True)
                     + ("; the leader was lost, run not counted" if result["leader_lost"]
                        else "")))
    opts = result["options"]
    print_table(f"raft_peer: PySyncObj, 3 nodes, {opts['in_flight']} in flight, "
                f"{opts['value_bytes']}-byte writes, {opts['duration_s']:.0f} s "
                f"(warm-up {opts['warmup_s']:.0f} s)", rows)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", "-m", type=int, default=None,
                        help="writes (default: more than the run can commit)")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=2000)
    parser.add_argument("--value-bytes", type=int, default=250)
    parser.add_argument("--out", default="bench-out/raft_peer")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    txs = args.txs if args.txs is not None else int(20_000 * args.duration)
    if args.serve is not None:
        serve(args.serve, [int(p) for p in args.ports.split(",")], Path(args.work), txs,
              args.duration, args.in_flight, args.value_bytes)
        return None
    if args.duration <= args.warmup:
        parser.error("--duration must be longer than --warmup")
    result = run(txs, args.duration, args.warmup, args.in_flight, args.value_bytes,
                 Path(args.out))
    report(result)
    path = write_json(Path(args.out), "result.json", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    stop_on_sigterm()
    main()
