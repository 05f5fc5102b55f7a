"""How cost grows: with validators, with state size, with chain length.

    python -m benchmarks.scale [--parts validators,state,sync] [--out bench-out/scale]
        [--validator-counts 4,7,10] [--duration 20] [--warmup 5] [--rate R]
        [--state-sizes 10000,100000] [--state-txs 2000]
        [--sync-rate 300] [--sync-duration 20] [--sync-history-blocks B --sync-block-txs K]

validators  benchmarks.cluster for each N (closed loop unless --rate): throughput, latency,
            CPU per tx, ceiling fraction.
state       per-tx CPU cost of a validator (benchmarks.limit's pipeline: decode+verify,
            admission, execute, store) with S funded accounts already in the state, for
            transfers between random accounts; and the 4-validator ceiling it implies.
            The accounts are written straight into the genesis state (issuing 1M accounts
            through transactions would take longer than the measurement), then LevelDB is
            compacted before timing: the seeding is one huge batch, and its compaction,
            running in the background, would otherwise be charged to whatever stage runs
            (a node that grew to that size has long since compacted it). The measured
            blocks' own compaction still counts (process CPU time).
sync        a fresh node catching up over the network: N-1 validators (a quorum) build a
            history under open-loop load while the last one is not running; then it is
            started with an empty data dir (same command as `testnet up`) and timed until
            it reaches the others' head. Reports blocks/s and verified tx/s of the catch-up
            and the seconds per 10k blocks at the measured block size.
The defaults run in a few minutes on 2 cores. Bigger settings (minutes to an hour):
    --state-sizes 10000,100000,1000000     --sync-rate 1000 --sync-duration 120
    --sync-history-blocks 100000 --sync-block-txs 5   (history written in ~5 min, not built
                                                        under load; then the timed sync)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import cluster
from benchmarks.common import (
    CLASS_ID,
    ISSUE_UNITS,
    Network,
    build_workload,
    fmt,
    machine,
    parse_mix,
    peak_rss_mb,
    print_table,
    stop_on_sigterm,
    write_json,
)
from benchmarks.history import History, write_history
from benchmarks.limit import STAGES, LimitChain, ceiling_tps, validator_keys
from ledger.codec import encode
from ledger.crypto import KeyPair, sha256
from ledger.executor import Executor
from ledger.overlay import MemoryKV
from ledger.rules import BlockContext
from ledger.tx import sign_tx
from rpc.client import RpcClientError, SyncRpcClient
from txtypes.balances import balance_key

SYNC_TIMEOUT_S = 600.0
SYNC_SEGMENT_BLOCKS = 10_000  # a long catch-up's rate is also reported per segment


# -- validators -----------------------------------------------------------------------------
def scale_validators(counts: list[int], base: cluster.Options, out: Path) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        opts = replace(base, validators=count, out=str(out / f"validators-{count}"))
        result = cluster.run(opts)
        rows.append({"validators": count, "tps": result["tps"],
                     "latency_ms": result["latency_ms"], "cpu_us_per_tx": result["cpu_us_per_tx"],
                     "cpu_us_per_tx_per_node": result["cpu_us_per_tx_per_node"],
                     "ceiling_tps": result["ceiling_tps"],
                     "ceiling_fraction": result["ceiling_fraction"],
                     "peak_rss_mb": result["peak_rss_mb"], "same_head": result["same_head"]})
    return rows


# -- state size -----------------------------------------------------------------------------
def _seeded_chain(network_dir: Path, accounts: list[str], db_path: Path) -> LimitChain:
    """A LimitChain whose genesis state also holds the token class and `accounts` funded."""
    keys = validator_keys(network_dir)
    treasury = KeyPair.load(network_dir / "accounts" / "treasury.json")

    def seed(genesis_writes: dict[bytes, bytes | None], executor: Executor
             ) -> dict[bytes, bytes | None]:
        base = MemoryKV({k: v for k, v in genesis_writes.items() if v is not None})
        define = sign_tx(treasury, executor.chain_id, "tokens", "define_class", 0, {
            "class_id": CLASS_ID, "name": "benchmark token", "budget": 2**61,
            "categories": ["food"], "transferable": True, "expiry_height": 2**40,
            "redemption_cents_per_unit": 1})
        context = BlockContext(executor.chain_id, 1, 1, bytes(32))
        result = executor.execute_block(base, context, [define])
        if not all(receipt.ok for receipt in result.receipts):
            raise SystemExit("could not define the benchmark class for the state-size run")
        writes = dict(result.writes)
        units = encode(ISSUE_UNITS)
        for address in accounts:
            writes[balance_key(CLASS_ID, address)] = units
        return writes

    return LimitChain(network_dir / "genesis.json", keys, db_path, seed)


def scale_state(sizes: list[int], txs: int, block_txs: int, validators: int, cores: int,
                workdir: Path) -> list[dict[str, Any]]:
    network = Network(workdir / "state-net", validators)
    network.init()
    rows = []
    for size in sizes:
        rng = random.Random(size)
        senders = [KeyPair(sha256(f"state sender {i}".encode())) for i in range(min(txs, 1000))]
        others = [sha256(f"state account {i}".encode()).hex()[:40]
                  for i in range(max(0, size - len(senders)))]
        accounts = [key.address for key in senders] + others
        seed_started = time.perf_counter()
        chain = _seeded_chain(network.out_dir, accounts, workdir / f"state-{size}.db")
        seed_s = time.perf_counter() - seed_started
        compact_started = time.perf_counter()
        chain.store.db.compact_range()
        compact_s = time.perf_counter() - compact_started
        try:
            raws: list[bytes] = []
            nonces = [0] * len(senders)
            for index in range(txs):
                who = index % len(senders)
                raws.append(sign_tx(senders[who], network.chain_id, "tokens", "transfer",
                                    nonces[who], {"class_id": CLASS_ID,
                                                  "to": rng.choice(accounts), "amount": 1}).raw)
                nonces[who] += 1
            # Warm-up on a prefix (each sender's nonces stay in order), at most half of them:
            # with fewer txs than a block, re-running the warm-up's own txs was refused.
            warm = min(block_txs, len(raws) // 2)
            chain.run_block(raws[:warm])
            totals = dict.fromkeys(STAGES, 0.0)
            measured = raws[warm:]
            for start in range(0, len(measured), block_txs):
                for stage, seconds in chain.run_block(measured[start:start + block_txs]).items():
                    totals[stage] += seconds
        finally:
            chain.close()
            shutil.rmtree(workdir / f"state-{size}.db", ignore_errors=True)
        per_tx = {stage: totals[stage] / len(measured) * 1e6 for stage in STAGES}
        total = sum(per_tx.values())
        rows.append({"accounts": size, "seed_s": round(seed_s, 1),
                     "compact_s": round(compact_s, 1), "txs": len(measured),
                     "per_tx_cpu_us": per_tx, "total_cpu_us_per_tx": total,
                     "ceiling_tps": ceiling_tps(total, validators, cores)})
        print(f"  state {size:>9,} accounts: {total:,.0f} CPU us/tx "
              f"(execute {per_tx['execute']:,.0f}, store {per_tx['store']:,.0f}), "
              f"seeded in {seed_s:.0f} s, compacted in {compact_s:.0f} s")
    return rows


# -- sync -----------------------------------------------------------------------------------
def _status(client: SyncRpcClient) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = client.call("node_status")
        return status
    except (RpcClientError, OSError):
        return None


# An idle node uses ~0.035 cores (tick loop, tip announcements); above this it is working.
QUIET_CORES_PER_NODE = 0.06
QUIET_TIMEOUT_S = 30.0


def scale_sync(validators: int, rate: float, duration_s: float, senders: int,
               workdir: Path, out: Path, history_blocks: int = 0,
               history_block_txs: int = 5) -> dict[str, Any]:
    """Time a fresh node's catch-up to the others' head.

    The history is built under open-loop load by the running validators, or, with
    `history_blocks`, written beforehand into their data dirs (benchmarks.history).
    """
    import cli  # the spawn function `testnet up` uses, so the late node starts the same way

    network = Network(workdir / "sync-net", validators)
    network.init()
    written: History | None = None
    if history_blocks:
        written = write_history(network, list(range(validators - 1)), history_blocks,
                                history_block_txs)
        print(f"  sync: wrote {written.blocks:,} blocks / {written.txs:,} txs in "
              f"{written.build_s:.0f} s ({written.data_bytes / 2**20:,.0f} MB, copied in "
              f"{written.copy_s:.0f} s)", flush=True)
    late_home = network.out_dir / f"node{validators - 1}"
    parked = network.out_dir / f"late-node{validators - 1}"
    late_home.rename(parked)
    late = None
    try:
        network.start(running=validators - 1)
        urls = network.rpc_urls[:validators - 1]
        if written is None:
            workload = build_workload(network.chain_id, network.account("treasury"),
                                      network.account("civil-registry"),
                                      int(rate * duration_s) + 100, senders, validators - 1,
                                      parse_mix("transfer=1"), 0)
            asyncio.run(cluster.submit_setup(urls, workload))
            opts = cluster.Options(validators=validators - 1, rate=rate,
                                   duration_s=duration_s, warmup_s=0.0)
            asyncio.run(cluster.drive_load(network, workload, opts, urls))
        _, heads = asyncio.run(cluster.heads_of(urls))
        quiet_wait_s = _wait_quiet(network)
        target = int(heads[0]["height"])
        txs_total = (written.txs if written is not None else
                     sum(count for _, count in asyncio.run(cluster._blocks(urls[0], target))))
        late_url = network.rpc_urls[validators - 1]
        started = time.monotonic()
        late = cli._spawn_node(parked, "json")
        ready_s = connected_s = synced_s = None
        error = None
        crossed: list[tuple[int, float]] = []  # (height, seconds since start) per segment
        received_mb: float | None = None
        next_mark = SYNC_SEGMENT_BLOCKS
        # One kept-alive client: a new event loop and connection per poll cost the machine
        # the late node is being measured on several percent of a core.
        with SyncRpcClient(late_url, timeout_s=5) as client:
            # A long written history gets longer: ~20 ms a block is 4x what a sync takes here.
            timeout_s = max(SYNC_TIMEOUT_S, target * 0.02)
            while time.monotonic() - started < timeout_s:
                if late.poll() is not None:
                    error = f"the late node exited with {late.returncode} (see its node.log)"
                    break
                status = _status(client)
                now_s = time.monotonic() - started
                if status is not None:
                    ready_s = now_s if ready_s is None else ready_s
                    if connected_s is None and status["connected_peers"]:
                        connected_s = now_s
                    height = int(status["height"])
                    while height >= next_mark <= target:  # progress along the chain
                        crossed.append((next_mark, now_s))
                        next_mark += SYNC_SEGMENT_BLOCKS
                    # Bytes the late node took in: a range fetched twice shows up here.
                    received_mb = status.get("p2p", {}).get("bytes_received", 0) / 2**20
                    if height >= target:
                        synced_s = now_s
                        break
                time.sleep(0.05)
            if synced_s is None and error is None:
                error = f"not at the head {target} after {timeout_s:.0f} s"
        late_peak_rss_mb = peak_rss_mb(late.pid)
        same, final_heads = asyncio.run(cluster.heads_of(network.rpc_urls))
    finally:
        if late is not None and late.poll() is None:
            late.terminate()
            late.wait(timeout=15)
        network.stop()
        if (parked / "node.log").exists():  # the catch-up as the late node logged it
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(parked / "node.log", out / "sync-late-node.log")
    # The rate is timed from the first peer connection: before it the late node can fetch
    # nothing, and how long a peer takes to redial it (its backoff, up to 5 s, after the
    # whole load phase of failed dials) is a constant that says nothing about sync speed
    # yet is a large share of a short history's catch-up. It is reported on its own.
    catch_up_s = (synced_s - connected_s
                  if synced_s is not None and connected_s is not None else None)
    return {
        "validators": validators, "history_blocks": target, "history_txs": txs_total,
        "mean_block_txs": txs_total / target if target else 0.0,
        "startup_s": ready_s, "connect_wait_s": (connected_s - ready_s
                                                 if connected_s is not None
                                                 and ready_s is not None else None),
        "catch_up_s": catch_up_s, "synced": synced_s is not None,
        "blocks_per_s": target / catch_up_s if catch_up_s else None,
        "txs_per_s": txs_total / catch_up_s if catch_up_s else None,
        "s_per_10k_blocks": catch_up_s / target * 10_000 if catch_up_s and target else None,
        "same_head_after": same, "heads_after": final_heads, "error": error,
        "quiet_wait_s": quiet_wait_s,
        "s_per_segment": _segment_seconds(crossed, connected_s),
        "late_node_peak_rss_mb": late_peak_rss_mb,
        "late_node_received_mb": received_mb,
        "history": "written" if written is not None else "built under load",
        "history_build_s": written.build_s if written is not None else None,
        "history_data_mb": written.data_bytes / 2**20 if written is not None else None,
    }


def _segment_seconds(crossed: list[tuple[int, float]], connected_s: float | None
                     ) -> list[dict[str, float]]:
    """Seconds each SYNC_SEGMENT_BLOCKS of the chain took, from the first connection on."""
    if connected_s is None:
        return []
    out = []
    previous = connected_s
    for height, at_s in crossed:
        out.append({"up_to_height": height, "s": round(at_s - previous, 2)})
        previous = at_s
    return out


def _wait_quiet(network: Network, per_node_cores: float = QUIET_CORES_PER_NODE,
                timeout_s: float = QUIET_TIMEOUT_S) -> float:
    """Wait until the running nodes are idle (LevelDB compactions and the tail of the load
    done), so the late node's catch-up is measured on the machine's cores rather than
    against whatever the others still have to finish; the seconds waited."""
    started = time.monotonic()
    before = sum(network.node_cpu_s())
    while time.monotonic() - started < timeout_s:
        time.sleep(1.0)
        now = sum(network.node_cpu_s())
        if now - before < per_node_cores * len(network.nodes):
            break
        before = now
    return time.monotonic() - started


# -- entry point ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="validators,state,sync")
    parser.add_argument("--out", default="bench-out/scale")
    parser.add_argument("--validator-counts", default="4,7,10")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=None, help="open loop (default closed)")
    parser.add_argument("--state-sizes", default="10000,100000")
    parser.add_argument("--state-txs", type=int, default=2000)
    parser.add_argument("--sync-rate", type=float, default=300.0)
    parser.add_argument("--sync-duration", type=float, default=20.0)
    parser.add_argument("--sync-validators", type=int, default=4)
    parser.add_argument("--sync-history-blocks", type=int, default=0,
                        help="write a history of this many blocks beforehand instead of "
                             "building it under load (benchmarks.history)")
    parser.add_argument("--sync-block-txs", type=int, default=5,
                        help="transfers per block of a written history")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    out = Path(args.out)
    info = machine()
    report: dict[str, Any] = {"benchmark": "scale", "machine": info}
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        if "validators" in parts:
            base = cluster.Options(rate=args.rate, duration_s=args.duration,
                                   warmup_s=args.warmup)
            report["validators"] = scale_validators(
                [int(n) for n in args.validator_counts.split(",")], base, out)
        if "state" in parts:
            report["state"] = scale_state([int(n) for n in args.state_sizes.split(",")],
                                          args.state_txs, 1000, 4, info["cores"], workdir)
        if "sync" in parts:
            report["sync"] = scale_sync(args.sync_validators, args.sync_rate,
                                        args.sync_duration, 500, workdir, out,
                                        args.sync_history_blocks, args.sync_block_txs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(report)
    path = write_json(out, "scale.json", report)
    print(f"wrote {path}")
    return report


def print_report(report: dict[str, Any]) -> None:
    if "validators" in report:
        print("scale: validators")
        print(f"  {'N':>3} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/tx/node':>15} "
              f"{'ceiling':>8} {'fraction':>9} {'same head':>10}")
        for row in report["validators"]:
            latency = row["latency_ms"]
            print(f"  {row['validators']:>3} {fmt(row['tps']):>8} {fmt(latency['p50']):>8} "
                  f"{fmt(latency['p99']):>8} {fmt(row['cpu_us_per_tx_per_node']):>15} "
                  f"{fmt(row['ceiling_tps']):>8} {fmt(row['ceiling_fraction'], 2):>9} "
                  f"{fmt(row['same_head']):>10}")
    if "state" in report:
        print("scale: state size (one validator's per-tx CPU, transfers to random accounts)")
        print(f"  {'accounts':>10} {'us/tx':>8} {'decode+verify':>14} {'execute':>8} "
              f"{'store':>6} {'4-node ceiling':>15}")
        for row in report["state"]:
            per_tx = row["per_tx_cpu_us"]
            print(f"  {row['accounts']:>10,} {fmt(row['total_cpu_us_per_tx']):>8} "
                  f"{fmt(per_tx['decode_verify']):>14} {fmt(per_tx['execute']):>8} "
                  f"{fmt(per_tx['store']):>6} {fmt(row['ceiling_tps']):>15}")
    if "sync" in report:
        sync = report["sync"]
        print_table("scale: fresh-node sync", [
            ("history", f"{sync['history_blocks']:,} blocks, {sync['history_txs']:,} txs"),
            ("synced", fmt(sync["synced"]) + (f" ({sync['error']})" if sync["error"] else "")),
            ("startup s (process start to RPC up)", fmt(sync["startup_s"], 1)),
            ("waiting for a peer connection s", fmt(sync["connect_wait_s"], 1)),
            ("catch-up s (first connection to synced)", fmt(sync["catch_up_s"], 1)),
            ("blocks/s, verified tx/s", f"{fmt(sync['blocks_per_s'])}, "
                                        f"{fmt(sync['txs_per_s'])}"),
            ("s per 10k blocks (at this block size)", fmt(sync["s_per_10k_blocks"])),
            ("s per 10k blocks, by part of the chain",
             ", ".join(fmt(part["s"], 1) for part in sync.get("s_per_segment", [])) or "-"),
            ("same head afterwards", fmt(sync["same_head_after"])),
            ("peak RSS of the synced node, MB", fmt(sync.get("late_node_peak_rss_mb"))),
            ("MB the synced node received (all peers)", fmt(sync.get("late_node_received_mb"))),
        ])


if __name__ == "__main__":
    stop_on_sigterm()
    main()
