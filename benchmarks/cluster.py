"""Throughput, latency and cost of a real multi-process cluster on this machine.

    python -m benchmarks.cluster [--validators 4] [--txs M] [--rate TX_PER_S | --max]
        [--duration 20] [--warmup 5] [--mix transfer=1] [--payload-bytes 0]
        [--senders 2000] [--clients 4] [--batch 100] [--out bench-out/cluster]

The network is created and run by the operator's commands (`cityledger genesis init`
on free loopback ports, then `cityledger testnet up`: fsync on, JSON logs). Setup
transactions (a transferable token class, issues to `--senders` accounts, a merchant when
the mix spends) commit first; then M pre-signed transactions go to the nodes' JSON-RPC
as batched `tx_submit {wait: true}` calls, lane i (senders with index % N == i) to node i,
over several connections per node:
  open loop (--rate R)  a batch every 10 ms so that R tx/s are offered, whatever the answers
  closed loop (--max)   --clients requests per node in flight, each sent when one returns
Measured in the steady window [start + warmup, end of sending]:
  tps              committed txs in blocks whose timestamp falls in the window / window
  latency_ms       submit to committed receipt (the batch answer), p50/p95/p99
  blocks_per_s, mean_block_txs
  cpu_us_per_tx    CPU seconds of all node processes (psutil) over the window / committed
  peak_rss_mb      per node (VmHWM)
  ceiling_tps      benchmarks.limit on the same genesis and transactions, in this run
  same_head        every node reports one head hash at one height after the run
Results go to OUT/result.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    Network,
    Workload,
    build_workload,
    fmt,
    machine,
    parse_mix,
    percentile,
    print_table,
    stop_on_sigterm,
    write_json,
)
from benchmarks.limit import ceiling_tps, measure
from rpc.client import RpcClient

BATCH_CALLS_MAX = 100  # rpc.jsonrpc.BATCH_CALLS_MAX
TICK_S = 0.010
SAMPLE_S = 0.25
RSS_SAMPLE_S = 5.0
GROWTH_MINUTE_S = 60.0
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Options:
    validators: int = 4
    txs: int | None = None
    rate: float | None = None  # None: closed loop
    duration_s: float = 20.0
    warmup_s: float = 5.0
    mix: str = "transfer=1"
    payload_bytes: int = 0
    senders: int = 2000
    clients: int = 4
    batch: int = 100
    limit_txs: int = 2000
    drain_s: float = 30.0
    out: str = "bench-out/cluster"
    keep: bool = False
    cache: str | None = "bench-out/.signed-cache"

    def tx_count(self) -> int:
        if self.txs is not None:
            return self.txs
        if self.rate is not None:
            return int(self.rate * self.duration_s * 1.05) + 100
        # Closed loop: enough for the 3,000 tx/s target over the whole run, with headroom.
        return int(3500 * self.duration_s)


@dataclass
class Batch:
    node: int
    size: int
    sent_s: float
    done_s: float = 0.0
    committed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Drive:
    started_s: float
    sending_ended_s: float = 0.0
    batches: list[Batch] = field(default_factory=list)
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (time, node CPU s)
    main_cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # loop threads
    # Every ~5 s: (time, per node (RSS, private RSS)).
    rss_samples: list[tuple[float, list[tuple[float, float]]]] = field(default_factory=list)
    backlog_skips: int = 0


def _body(raws: list[bytes], first_id: int) -> bytes:
    calls = ",".join(
        f'{{"jsonrpc":"2.0","method":"tx_submit","params":{{"tx":"{raw.hex()}","wait":true}},'
        f'"id":{first_id + index}}}' for index, raw in enumerate(raws))
    return f"[{calls}]".encode()


async def _post_batch(session: aiohttp.ClientSession, url: str, raws: list[bytes],
                      batch: Batch) -> None:
    body = _body(raws, 1)
    answer: Any = None
    for attempt in range(2):
        try:
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                answer = json.loads(await response.read())
            break
        except aiohttp.ServerDisconnectedError:
            # A kept-alive connection the server closed as we reused it; tx_submit is
            # idempotent (a known tx is waited for), so sending the batch again is safe.
            if attempt == 0:
                continue
            batch.errors["transport:ServerDisconnectedError"] += len(raws)
            batch.done_s = time.time()
            return
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            batch.errors[f"transport:{type(exc).__name__}"] += len(raws)
            batch.done_s = time.time()
            return
    batch.done_s = time.time()
    if not isinstance(answer, list):
        batch.errors[f"batch:{str(answer)[:80]}"] += len(raws)
        return
    for item in answer:
        result = item.get("result") if isinstance(item, dict) else None
        if isinstance(result, dict) and result.get("status") == "committed":
            batch.committed += 1
        elif isinstance(result, dict):
            batch.errors[f"receipt:{result.get('receipt', {}).get('code', '?')}"] += 1
        else:
            error = item.get("error", {}) if isinstance(item, dict) else {}
            data = error.get("data") if isinstance(error, dict) else None
            code = data.get("code") if isinstance(data, dict) else error.get("code")
            batch.errors[f"rpc:{code}"] += 1


async def _sample_cpu(network: Network, drive: Drive, stop: asyncio.Event) -> None:
    while True:
        now = time.time()
        drive.cpu_samples.append((now, sum(network.node_cpu_s())))
        drive.main_cpu_samples.append((now, network.node_main_thread_cpu_s()))
        last_rss_s = drive.rss_samples[-1][0] if drive.rss_samples else 0.0
        if stop.is_set() or now - last_rss_s >= RSS_SAMPLE_S:
            drive.rss_samples.append((now, network.node_memory_mb()))
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def submit_setup(urls: list[str], workload: Workload) -> None:
    """Commit the workload's setup phases, in order, through the first node."""
    async with RpcClient(urls[0], timeout_s=REQUEST_TIMEOUT_S) as client:
        for phase in workload.setup:
            for start in range(0, len(phase), BATCH_CALLS_MAX):
                chunk = phase[start:start + BATCH_CALLS_MAX]
                results = await client.batch(
                    [("tx_submit", {"tx": raw.hex(), "wait": True}) for raw in chunk])
                bad = [r for r in results
                       if not isinstance(r, dict) or r.get("status") != "committed"]
                if bad:
                    raise RuntimeError(f"setup transaction failed: {bad[0]}")


async def drive_load(network: Network, workload: Workload, opts: Options,
                 urls: list[str] | None = None) -> Drive:
    """Send the workload's lanes (lane i to urls[i]) as the options say; what happened."""
    urls = urls if urls is not None else network.rpc_urls
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    sessions = [aiohttp.ClientSession(timeout=timeout,
                                      connector=aiohttp.TCPConnector(limit=opts.clients * 4))
                for _ in urls]
    stop_sampling = asyncio.Event()
    drive = Drive(started_s=time.time())
    sampler = asyncio.create_task(_sample_cpu(network, drive, stop_sampling))
    cursors = [0] * len(workload.lanes)
    end_s = drive.started_s + opts.duration_s
    batch_size = max(1, min(opts.batch, BATCH_CALLS_MAX))

    def take(lane: int, size: int) -> list[bytes]:
        raws = workload.lanes[lane][cursors[lane]:cursors[lane] + size]
        cursors[lane] += len(raws)
        return raws

    in_flight_txs = 0  # txs sent and not yet answered (kept as a count: summing the
    # batches on every send made the load generator's own CPU grow with the run)

    async def send(lane: int, raws: list[bytes]) -> None:
        nonlocal in_flight_txs
        batch = Batch(lane, len(raws), time.time())
        drive.batches.append(batch)
        in_flight_txs += len(raws)
        try:
            await _post_batch(sessions[lane], urls[lane], raws, batch)
        finally:
            in_flight_txs -= len(raws)

    try:
        if opts.rate is None:
            async def client(lane: int) -> None:
                while time.time() < end_s:
                    raws = take(lane, batch_size)
                    if not raws:
                        return
                    await send(lane, raws)

            await asyncio.gather(*(client(lane) for lane in range(len(urls))
                                   for _ in range(opts.clients)))
            drive.sending_ended_s = min(time.time(), end_s)
        else:
            in_flight: set[asyncio.Task[None]] = set()
            offered = 0
            lane = 0
            in_flight_txs_max = max(2000, int(opts.rate * 10))
            while time.time() < end_s and any(
                    cursor < len(raws) for cursor, raws in zip(cursors, workload.lanes,
                                                               strict=True)):
                due = int(opts.rate * (time.time() - drive.started_s)) - offered
                while due > 0:
                    size = min(due, batch_size)
                    raws = take(lane, size)
                    if not raws:
                        lane = (lane + 1) % len(urls)
                        due -= size
                        continue
                    if in_flight_txs > in_flight_txs_max:
                        drive.backlog_skips += len(raws)  # the cluster fell far behind
                    else:
                        task = asyncio.create_task(send(lane, raws))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    lane = (lane + 1) % len(urls)
                    offered += size
                    due -= size
                await asyncio.sleep(TICK_S)
            drive.sending_ended_s = time.time()
            if in_flight:
                await asyncio.wait(in_flight, timeout=opts.drain_s)
            for task in list(in_flight):  # still unanswered: stop waiting, count them
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            for batch in drive.batches:
                if not batch.done_s:
                    batch.errors["unanswered_after_drain"] += batch.size
    finally:
        stop_sampling.set()
        await sampler
        for session in sessions:
            await session.close()
    return drive


async def heads_of(urls: list[str], settle_s: float = 45.0
                   ) -> tuple[bool, list[dict[str, Any]]]:
    """Wait (up to `settle_s`) until every node reports one height, then compare head hashes.

    Each head also carries `hash_at_common`: the node's block hash at the lowest height
    any node reached, so a lagging node can still be checked for agreement.
    """
    deadline = time.monotonic() + settle_s
    heads: list[dict[str, Any]] = []
    while True:
        heads = []
        for url in urls:
            async with RpcClient(url, timeout_s=10) as client:
                status = await client.call("node_status")
            heads.append({"height": status["height"], "hash": status["last_block_hash"],
                          "signatures_checked": status.get("signatures_checked")})
        if len({h["height"] for h in heads}) == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    common = min(int(h["height"]) for h in heads)
    for url, head in zip(urls, heads, strict=True):
        head["common_height"] = common
        if common == 0:
            head["hash_at_common"] = None
            continue
        async with RpcClient(url, timeout_s=10) as client:
            block = await client.call("block_get", height=common)
        head["hash_at_common"] = block["hash"]
    same = len({(h["height"], h["hash"]) for h in heads}) == 1
    return same, heads


async def _blocks(url: str, height: int) -> list[tuple[int, int]]:
    """(timestamp_ms, tx count) of blocks 1..height."""
    found: list[tuple[int, int]] = []
    async with RpcClient(url, timeout_s=REQUEST_TIMEOUT_S) as client:
        for start in range(1, height + 1, BATCH_CALLS_MAX):
            stop = min(height, start + BATCH_CALLS_MAX - 1)
            answers = await client.batch([("block_get", {"height": h})
                                          for h in range(start, stop + 1)])
            for answer in answers:
                if isinstance(answer, dict):
                    found.append((int(answer["header"]["timestamp_ms"]),
                                  len(answer["tx_hashes"])))
    return found


def _cpu_at(samples: list[tuple[float, float]], at_s: float) -> float:
    """Node CPU seconds at `at_s`, linearly interpolated between samples."""
    before = max((s for s in samples if s[0] <= at_s), default=samples[0])
    after = min((s for s in samples if s[0] >= at_s), default=samples[-1])
    if after[0] == before[0]:
        return before[1]
    fraction = (at_s - before[0]) / (after[0] - before[0])
    return before[1] + fraction * (after[1] - before[1])


def _memory_growth(samples: list[tuple[float, list[tuple[float, float]]]], after_s: float,
                   private: bool) -> float | None:
    """The largest per-node growth from the first to the last minute after warm-up, each
    minute taken as its median: single samples swing by 10-20 MB as LevelDB compacts and
    as garbage is collected, which would make a first-vs-last sample difference noise."""
    steady = [(t, sizes) for t, sizes in samples if t >= after_s]
    if len(steady) < 2 or steady[-1][0] - steady[0][0] < 2 * GROWTH_MINUTE_S:
        return None
    first_end, last_start = steady[0][0] + GROWTH_MINUTE_S, steady[-1][0] - GROWTH_MINUTE_S
    growths = []
    column = 1 if private else 0
    for node in range(len(steady[0][1])):
        first = statistics.median(sizes[node][column] for t, sizes in steady if t <= first_end)
        last = statistics.median(sizes[node][column] for t, sizes in steady if t >= last_start)
        growths.append(last - first)
    return round(max(growths), 1)


def summarize(drive: Drive, blocks: list[tuple[int, int]], setup_height: int,
              opts: Options) -> dict[str, Any]:
    window_start = drive.started_s + opts.warmup_s
    last_done = max((b.done_s for b in drive.batches if b.committed), default=window_start)
    window_end = min(drive.sending_ended_s, last_done)
    window_s = max(window_end - window_start, 1e-9)
    in_window = [(ts, count) for ts, count in blocks[setup_height:]
                 if window_start * 1000 <= ts < window_end * 1000]
    committed_in_window = sum(count for _, count in in_window)
    latencies = [(b.done_s - b.sent_s) * 1000 for b in drive.batches
                 if window_start <= b.sent_s <= window_end for _ in range(b.committed)]
    cpu_s = _cpu_at(drive.cpu_samples, window_end) - _cpu_at(drive.cpu_samples, window_start)
    main_cpu_s = (_cpu_at(drive.main_cpu_samples, window_end)
                  - _cpu_at(drive.main_cpu_samples, window_start))
    errors: Counter[str] = Counter()
    for batch in drive.batches:
        errors.update(batch.errors)
    # Blocks and txs per second since the load started (for reading the run afterwards).
    timeline: dict[int, list[int]] = {}
    for ts, count in blocks[setup_height:]:
        second = int(ts / 1000 - drive.started_s)
        entry = timeline.setdefault(second, [second, 0, 0])
        entry[1] += 1
        entry[2] += count
    submitted = sum(b.size for b in drive.batches)
    committed = sum(b.committed for b in drive.batches)
    tps = committed_in_window / window_s
    cpu_us = cpu_s / committed_in_window * 1e6 if committed_in_window else None
    return {
        "window_s": round(window_s, 3),
        "tps": tps,
        "offered_tps": (opts.rate if opts.rate is not None else None),
        "latency_ms": {"p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95),
                       "p99": percentile(latencies, 0.99), "samples": len(latencies)},
        "blocks_per_s": len(in_window) / window_s,
        "mean_block_txs": committed_in_window / len(in_window) if in_window else 0.0,
        "cpu_us_per_tx": cpu_us,
        "cpu_us_per_tx_per_node": cpu_us / opts.validators if cpu_us is not None else None,
        "node_cpu_utilisation": cpu_s / window_s,
        # Event-loop threads vs worker threads (signature checks off the loop).
        "cpu_us_per_tx_main_thread": (main_cpu_s / committed_in_window * 1e6
                                      if committed_in_window else None),
        "submitted": submitted,
        "committed": committed,
        "backlog_skipped": drive.backlog_skips,
        "errors": dict(errors),
        "timeline_blocks_txs_per_s": [timeline[k] for k in sorted(timeline)],
        # Memory over the run: [seconds since start, max RSS over nodes, max private RSS];
        # growth: see _memory_growth (None for runs shorter than two minutes).
        "rss_mb_timeline": [[round(t - drive.started_s, 1), round(max(r for r, _ in sizes), 1),
                             round(max(p for _, p in sizes), 1)]
                            for t, sizes in drive.rss_samples],
        "rss_growth_mb": _memory_growth(drive.rss_samples, window_start, private=False),
        "private_rss_growth_mb": _memory_growth(drive.rss_samples, window_start, private=True),
    }


def run(opts: Options) -> dict[str, Any]:
    info = machine()
    out_dir = Path(opts.out)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    network = Network(tmp / "net", opts.validators)
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 2)
        clock = now

    try:
        network.init()
        phase("genesis_init_s")
        prepared_s = time.perf_counter()
        workload = build_workload(network.chain_id, network.account("treasury"),
                                  network.account("civil-registry"), opts.tx_count(),
                                  min(opts.senders, opts.tx_count()), opts.validators,
                                  parse_mix(opts.mix), opts.payload_bytes,
                                  cache_dir=Path(opts.cache) if opts.cache else None)
        sign_s = time.perf_counter() - prepared_s
        phase("sign_s")
        limit = measure(network.out_dir, workload, min(opts.limit_txs, workload.count),
                        block_txs=1000)
        ceiling = ceiling_tps(limit["total_cpu_us_per_tx"], opts.validators, info["cores"])
        phase("limit_s")
        network.start()
        phase("start_s")
        asyncio.run(submit_setup(network.rpc_urls, workload))
        _, setup_heads = asyncio.run(heads_of(network.rpc_urls))
        setup_height = int(setup_heads[0]["height"])
        phase("setup_s")
        drive = asyncio.run(drive_load(network, workload, opts))
        phase("drive_s")
        same_head, heads = asyncio.run(heads_of(network.rpc_urls))
        peak_rss = network.node_peak_rss_mb()
        blocks = asyncio.run(_blocks(network.rpc_urls[0], int(heads[0]["height"])))
        phase("collect_s")
    finally:
        network.stop()
        if opts.keep:
            print(f"network kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    phase("stop_s")
    summary = summarize(drive, blocks, setup_height, opts)
    total_txs = sum(count for _, count in blocks)
    result = {
        "benchmark": "cluster",
        "machine": info,
        "options": asdict(opts),
        "workload": {"txs": workload.count, "ops": workload.op_counts,
                     "tx_bytes_mean": round(workload.tx_bytes_mean, 1),
                     "senders": min(opts.senders, opts.tx_count()), "sign_s": round(sign_s, 1)},
        **summary,
        "peak_rss_mb": max(peak_rss),
        "peak_rss_mb_per_node": peak_rss,
        "limit": limit,
        "ceiling_tps": ceiling,
        "ceiling_fraction": summary["tps"] / ceiling if ceiling else None,
        "same_head": same_head,
        "agree_at_common_height": len({h["hash_at_common"] for h in heads}) == 1,
        "heads": heads,
        "height": int(heads[0]["height"]),
        # Signature checks per committed tx on each node (setup included): 1.0 when every
        # tx is checked once per node, higher when the verify cache misses.
        "signature_checks_per_tx": [
            round(h["signatures_checked"] / total_txs, 3)
            if h["signatures_checked"] is not None and total_txs else None for h in heads],
        "phases_s": phases,
    }
    report(result)
    path = write_json(out_dir, "result.json", result)
    print(f"wrote {path}")
    return result


def report(result: dict[str, Any]) -> None:
    opts = result["options"]
    mode = f"open loop {opts['rate']:,.0f} tx/s" if opts["rate"] else "closed loop (max)"
    latency = result["latency_ms"]
    rows = [
        ("committed tx/s (steady)", fmt(result["tps"])),
        ("latency p50 / p95 / p99 ms", " / ".join(fmt(latency[k], 1) for k in
                                                   ("p50", "p95", "p99"))),
        ("blocks/s, mean block txs", f"{fmt(result['blocks_per_s'], 1)}, "
                                     f"{fmt(result['mean_block_txs'], 1)}"),
        ("CPU us/tx (all nodes)", fmt(result["cpu_us_per_tx"])),
        ("CPU us/tx per validator", fmt(result["cpu_us_per_tx_per_node"])),
        ("peak RSS MB (max node)", fmt(result["peak_rss_mb"], 1)),
        ("RSS growth after warm-up MB", fmt(result["rss_growth_mb"], 1)),
        ("private RSS growth (no file pages) MB", fmt(result["private_rss_growth_mb"], 1)),
        ("ceiling tx/s (limit, this run)", fmt(result["ceiling_tps"])),
        ("fraction of ceiling", fmt(result["ceiling_fraction"], 2)),
        ("same head on every node", fmt(result["same_head"]) + (
            "" if result["same_head"] else
            f" (heights {[h['height'] for h in result['heads']]}; agree at "
            f"{result['heads'][0]['common_height']}: {fmt(result['agree_at_common_height'])})")),
        ("signature checks per tx, per node", ", ".join(
            fmt(c, 2) for c in result["signature_checks_per_tx"])),
        ("submitted / committed", f"{result['submitted']:,} / {result['committed']:,}"),
        ("errors", json.dumps(result["errors"]) if result["errors"] else "none"),
    ]
    print_table(f"cluster: {opts['validators']} validators, {mode}, {opts['duration_s']:.0f} s "
                f"(warm-up {opts['warmup_s']:.0f} s), mix {opts['mix']}", rows)


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validators", "-n", type=int, default=4)
    parser.add_argument("--txs", "-m", type=int, default=None,
                        help="pre-signed transactions (default: enough for the run)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, default=None, help="open loop: offered tx/s")
    load.add_argument("--max", action="store_true", help="closed loop (the default)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument("--mix", default="transfer=1",
                        help="op weights over transfer, spend, register (identity)")
    parser.add_argument("--payload-bytes", type=int, default=0,
                        help="memo bytes of each spend (0..140; transfers have a fixed schema)")
    parser.add_argument("--senders", type=int, default=2000, help="funded sender accounts")
    parser.add_argument("--clients", type=int, default=4,
                        help="closed loop: batches in flight per node")
    parser.add_argument("--batch", type=int, default=100, help="tx_submit calls per batch")
    parser.add_argument("--limit-txs", type=int, default=2000,
                        help="transactions for the in-run ceiling measurement")
    parser.add_argument("--out", default="bench-out/cluster")
    parser.add_argument("--keep", action="store_true", help="keep the network directory")
    parser.add_argument("--cache", default="bench-out/.signed-cache",
                        help="where pre-signed transactions are kept between runs ('' = off)")
    args = parser.parse_args(argv)
    if args.duration <= args.warmup:
        parser.error("--duration must be longer than --warmup")
    return Options(validators=args.validators, txs=args.txs, rate=args.rate,
                   duration_s=args.duration, warmup_s=args.warmup, mix=args.mix,
                   payload_bytes=args.payload_bytes, senders=args.senders, clients=args.clients,
                   batch=args.batch, limit_txs=args.limit_txs, out=args.out, keep=args.keep,
                   cache=args.cache or None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    stop_on_sigterm()
    main()
