"""Shared pieces of the cluster benchmarks: the machine, the network, the workload.

`Network` creates and runs a local validator network through the operator's own commands
(`cityledger genesis init`, then `cityledger testnet up`), so a benchmark measures exactly
what an operator runs. `Workload` pre-signs the transactions (token transfers and the
optional family mix) so that signing is never inside a measured window.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import psutil

from ledger.crypto import KeyPair, sha256
from ledger.tx import sign_tx

REPO_DIR = Path(__file__).resolve().parent.parent
CLASS_ID = "benchtok"
CATEGORY = "food"
MEMO_BYTES_MAX = 140  # txtypes.tokens.SpendPayload.memo
ISSUE_UNITS = 10**9
OPS = ("transfer", "spend", "register")


# -- the machine ---------------------------------------------------------------------------
def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `finally` blocks stop the nodes we started."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR,
                              capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return done.stdout.strip() or None


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count() or 1, "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(),
            "memory_mb": psutil.virtual_memory().total // 2**20,
            "load_average_1m": round(os.getloadavg()[0], 1), "commit": _commit()}


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    print(title)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def write_json(out_dir: Path, name: str, data: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


# -- ports ---------------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Below Linux's ephemeral range (32768-60999), so a client connection made meanwhile
# cannot take a port a node binds later (the late node of benchmarks.scale).
PORT_RANGE = (20000, 32000)


def free_port_base(count: int) -> int:
    """A base port with `count` consecutive free loopback ports (random, so parallel runs
    and other tests on the machine do not collide)."""
    for _ in range(200):
        base = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        if all(_port_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError("no free loopback port range found")


# -- the network ---------------------------------------------------------------------------
class NetworkError(Exception):
    """The benchmark network could not be created or did not come up."""


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def genesis_init(out_dir: Path, validators: int, chain_id: str) -> dict[str, Any]:
    """`cityledger genesis init` on free loopback ports; returns its JSON answer."""
    base = free_port_base(2 * validators)
    done = subprocess.run(
        cli_command("--json", "genesis", "init", "--validators", str(validators),
                    "--out", str(out_dir), "--chain-id", chain_id,
                    "--p2p-base-port", str(base), "--rpc-base-port", str(base + validators)),
        cwd=REPO_DIR, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise NetworkError(f"genesis init failed: {done.stderr.strip()}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of process `pid` (Linux VmHWM; current RSS elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float(psutil.Process(pid).memory_info().rss / 2**20)
    except (OSError, psutil.Error):
        return float("nan")


@dataclass
class Network:
    """A network directory made by `genesis init` and run by `testnet up`."""

    out_dir: Path
    validators: int
    chain_id: str = "bench-local"
    rpc_urls: list[str] = field(default_factory=list)
    testnet: subprocess.Popen[bytes] | None = None
    nodes: list[psutil.Process] = field(default_factory=list)

    def init(self) -> None:
        answer = genesis_init(self.out_dir, self.validators, self.chain_id)
        self.rpc_urls = list(answer["rpc_urls"])

    @property
    def genesis_path(self) -> Path:
        return self.out_dir / "genesis.json"

    def account(self, agency: str) -> KeyPair:
        return KeyPair.load(self.out_dir / "accounts" / f"{agency}.json")

    def start(self, ready_timeout_s: float = 60.0, running: int | None = None) -> None:
        """`cityledger testnet up` on the directory; returns when every node is connected.

        With `running` < validators, the caller has moved the other homes out of the
        directory first (testnet up runs every node* home it finds).
        """
        count = self.validators if running is None else running
        log = open(self.out_dir / "testnet.log", "ab")  # noqa: SIM115 - child's for its life
        self.testnet = subprocess.Popen(
            cli_command("testnet", "up", "--nodes", str(count), "--dir", str(self.out_dir)),
            cwd=REPO_DIR, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + ready_timeout_s
        parent = psutil.Process(self.testnet.pid)
        while time.monotonic() < deadline:
            if self.testnet.poll() is not None:
                raise NetworkError(f"testnet up exited with {self.testnet.returncode}; see "
                                   f"{self.out_dir / 'testnet.log'}")
            children = parent.children()
            if len(children) == count:
                self.nodes = children
                break
            time.sleep(0.05)
        else:
            raise NetworkError("testnet up did not start every node in time")
        self._wait_connected(self.rpc_urls[:count], count - 1, deadline)

    def _wait_connected(self, urls: list[str], peers: int, deadline: float) -> None:
        from rpc.client import RpcClientError, SyncRpcClient

        pending = list(urls)
        while pending and time.monotonic() < deadline:
            url = pending[0]
            try:
                with SyncRpcClient(url, timeout_s=2.0) as client:
                    status = client.call("node_status")
                if len(status["connected_peers"]) >= peers:
                    pending.pop(0)
                    continue
            except (RpcClientError, OSError):
                pass
            time.sleep(0.1)
        if pending:
            self.stop()
            raise NetworkError(f"nodes not connected in time: {pending}")

    def node_cpu_s(self) -> list[float]:
        """CPU seconds (user + system) each node has used so far, with its children (the
        signature process a node starts to catch up), running or reaped."""
        seconds = []
        for proc in self.nodes:
            try:
                times = proc.cpu_times()
                used = times.user + times.system + times.children_user + times.children_system
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):  # it may end meanwhile
                        child_times = child.cpu_times()
                        used += child_times.user + child_times.system
                seconds.append(used)
            except psutil.Error:
                seconds.append(float("nan"))
        return seconds

    def node_main_thread_cpu_s(self) -> float:
        """CPU seconds of the nodes' main (event loop) threads, summed; the rest of a
        node's CPU is its worker threads (signature checks)."""
        total = 0.0
        for proc in self.nodes:
            try:
                for thread in proc.threads():
                    if thread.id == proc.pid:
                        total += thread.user_time + thread.system_time
            except psutil.Error:
                pass
        return total

    def node_memory_mb(self) -> list[tuple[float, float]]:
        """(RSS, private RSS) per node. Private is RSS less file-backed and shared pages:
        LevelDB maps its table files, and pages of those read stay resident as clean
        page cache the kernel can drop, so RSS grows with the database while the node's
        own (anonymous) memory need not."""
        sizes = []
        for proc in self.nodes:
            try:
                info = proc.memory_info()
                sizes.append((info.rss / 2**20, (info.rss - getattr(info, "shared", 0)) / 2**20))
            except psutil.Error:
                sizes.append((float("nan"), float("nan")))
        return sizes

    def node_peak_rss_mb(self) -> list[float]:
        """Peak resident set size per node (Linux VmHWM; current RSS elsewhere)."""
        return [peak_rss_mb(proc.pid) for proc in self.nodes]

    def stop(self) -> None:
        """SIGTERM through `testnet up` (it stops its nodes); then make sure of each node."""
        if self.testnet is not None and self.testnet.poll() is None:
            self.testnet.send_signal(signal.SIGTERM)
            try:
                self.testnet.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.testnet.kill()
                self.testnet.wait(timeout=5)
        for proc in self.nodes:
            try:
                if proc.is_running():
                    proc.terminate()
                    proc.wait(timeout=5)
            except psutil.TimeoutExpired:
                proc.kill()
            except psutil.Error:
                pass


# -- the workload --------------------------------------------------------------------------
def parse_mix(text: str) -> dict[str, int]:
    """'transfer=8,spend=1,register=1' -> weights; every name must be a known op."""
    weights: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in OPS:
            raise ValueError(f"unknown op {name!r} in --mix (known: {', '.join(OPS)})")
        weights[name] = int(weight or "1")
        if weights[name] < 0:
            raise ValueError("--mix weights must be >= 0")
    if not any(weights.values()):
        raise ValueError("--mix needs a positive weight")
    return weights


def _sign_run(job: tuple[bytes, str, list[tuple[str, str, int, dict[str, Any]]]]
              ) -> list[bytes]:
    seed, chain_id, items = job
    key = KeyPair(seed)
    return [sign_tx(key, chain_id, family, op, nonce, payload).raw
            for family, op, nonce, payload in items]


SignJob = tuple[bytes, str, list[tuple[str, str, int, dict[str, Any]]]]


def sign_jobs(jobs: list[SignJob], workers: int, cache_dir: Path | None = None
              ) -> list[list[bytes]]:
    """Sign many per-key runs, in parallel processes when there are enough of them.

    Signatures are deterministic (Ed25519), so the same jobs always give the same bytes:
    with `cache_dir` they are kept on disk and a repeated run skips the signing.
    """
    cache: Path | None = None
    if cache_dir is not None:
        cache = cache_dir / f"signed-{sha256(msgpack.packb(jobs)).hex()[:32]}.msgpack"
        if cache.exists():
            cached: list[list[bytes]] = msgpack.unpackb(cache.read_bytes())
            return cached
    signed = _sign_all(jobs, workers)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".tmp")
        partial.write_bytes(msgpack.packb(signed))
        partial.replace(cache)
    return signed


def _sign_all(jobs: list[SignJob], workers: int) -> list[list[bytes]]:
    total = sum(len(items) for _, _, items in jobs)
    if workers <= 1 or total < 4000:
        return [_sign_run(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_sign_run, jobs, chunksize=max(1, len(jobs) // (workers * 8))))


@dataclass
class Workload:
    """Setup transactions (class, merchant, issues) and M measured ones, all pre-signed.

    The measured transactions are grouped per client lane: lane i only carries senders
    with index % lanes == i, so each sender's nonces reach one node in order.
    """

    chain_id: str
    setup: list[list[bytes]]  # phases: each phase commits before the next is sent
    lanes: list[list[bytes]]
    op_counts: dict[str, int]
    tx_bytes_mean: float

    @property
    def count(self) -> int:
        return sum(len(lane) for lane in self.lanes)


def build_workload(chain_id: str, treasury: KeyPair, registrar: KeyPair, txs: int,
                   senders: int, lanes: int, mix: dict[str, int], memo_bytes: int,
                   seed: int = 1, workers: int | None = None,
                   cache_dir: Path | None = None) -> Workload:
    """Pre-sign `txs` transactions by `senders` accounts in the op mix, plus their setup."""
    if not 0 <= memo_bytes <= MEMO_BYTES_MAX:
        raise ValueError(f"payload memo must be 0..{MEMO_BYTES_MAX} bytes")
    rng = random.Random(seed)
    sender_keys = [KeyPair(sha256(f"bench sender {seed} {i}".encode())) for i in range(senders)]
    merchant = KeyPair(sha256(f"bench merchant {seed}".encode()))
    names = [name for name in OPS if mix.get(name, 0) > 0]
    weights = [mix[name] for name in names]
    ops = rng.choices(names, weights, k=txs)
    op_counts = {name: ops.count(name) for name in names}

    treasury_items: list[tuple[str, str, int, dict[str, Any]]] = [
        ("tokens", "define_class", 0, {
            "class_id": CLASS_ID, "name": "benchmark token", "budget": 2**61,
            "categories": [CATEGORY], "transferable": True, "expiry_height": 2**40,
            "redemption_cents_per_unit": 1})]
    for index, key in enumerate(sender_keys, start=1):
        treasury_items.append(("tokens", "issue", index,
                               {"class_id": CLASS_ID, "to": key.address, "amount": ISSUE_UNITS}))
    registrar_items: list[tuple[str, str, int, dict[str, Any]]] = []
    if op_counts.get("spend"):
        registrar_items.append(("tokens", "register_merchant", 0, {
            "merchant": merchant.address, "name": "bench shop", "category": CATEGORY}))

    # Per-sender runs of consecutive nonces; 'register' uses a fresh key each (nonce 0).
    runs: dict[int, list[tuple[str, str, int, dict[str, Any]]]] = {}
    fresh: list[tuple[int, bytes]] = []
    memo = "m" * memo_bytes
    for position, name in enumerate(ops):
        if name == "register":
            fresh.append((position, sha256(f"bench fresh {seed} {position}".encode())))
            continue
        who = position % senders
        run = runs.setdefault(who, [])
        if name == "transfer":
            target = sender_keys[(who + 1) % senders].address
            run.append(("tokens", "transfer", len(run),
                        {"class_id": CLASS_ID, "to": target, "amount": 1}))
        else:
            run.append(("tokens", "spend", len(run), {
                "class_id": CLASS_ID, "merchant": merchant.address, "amount": 1, "memo": memo}))

    # The setup is signed by this network's fresh agency keys; the measured transactions
    # only by deterministic keys, so they can come from the cache.
    setup_jobs: list[SignJob] = [(treasury.seed, chain_id, treasury_items)]
    if registrar_items:
        setup_jobs.append((registrar.seed, chain_id, registrar_items))
    worker_count = workers if workers is not None else (os.cpu_count() or 1)
    signed_setup = sign_jobs(setup_jobs, worker_count)
    setup_treasury = signed_setup[0]
    setup_registrar = signed_setup[1] if registrar_items else []
    order = sorted(runs)
    jobs: list[SignJob] = [(sender_keys[who].seed, chain_id, runs[who]) for who in order]
    jobs += [(seed_bytes, chain_id, [("identity", "register", 0, {})]) for _, seed_bytes in fresh]
    signed = sign_jobs(jobs, worker_count, cache_dir)
    sender_raws = {who: signed[i] for i, who in enumerate(order)}
    fresh_raws = [raws[0] for raws in signed[len(order):]]

    # Interleave senders (nonce 0 of everyone, then nonce 1...) so batches mix senders.
    lane_txs: list[list[bytes]] = [[] for _ in range(lanes)]
    longest = max((len(raws) for raws in sender_raws.values()), default=0)
    for nonce in range(longest):
        for who in order:
            raws = sender_raws[who]
            if nonce < len(raws):
                lane_txs[who % lanes].append(raws[nonce])
    for index, raw in enumerate(fresh_raws):
        lane = lane_txs[index % lanes]
        lane.insert(rng.randrange(len(lane) + 1), raw)
    all_raws = [raw for lane in lane_txs for raw in lane]
    mean_bytes = sum(len(raw) for raw in all_raws) / max(1, len(all_raws))
    # Setup phase 1: class (+ merchant); phase 2: issues (need the class committed).
    setup = [setup_treasury[:1] + setup_registrar, setup_treasury[1:]]
    return Workload(chain_id, setup, lane_txs, op_counts, mean_bytes)
