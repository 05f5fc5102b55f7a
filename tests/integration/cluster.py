"""A harness for multi-process tests: real validator processes, real sockets, real LevelDB.

`Cluster.create(tmp_path, nodes=4)` writes a network with the `cityledger genesis init`
command, then moves every validator to free loopback ports and shortens the consensus
timeouts in genesis (before any node has started, so every node pins the same genesis).
Each `NodeProcess` is started as `python -m cli node start --home HOME`, exactly as an
operator would, and can be stopped, SIGKILLed, frozen (SIGSTOP), thawed (SIGCONT),
restarted or wiped. `Cluster.close()` SIGKILLs whatever is still running; the pytest
fixture calls it even when the test failed, and each child also asks the kernel to kill
it when the test process dies (PR_SET_PDEATHSIG), so no validator outlives its test.

RPC goes over plain urllib with JSON-RPC 2.0 bodies (no shared event loop to leak), and
every wait has a deadline that fails with a message saying what was awaited and what was
last seen.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ledger.crypto import KeyPair
from ledger.tx import Tx, sign_tx
from tests.ports import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Short timeouts keep view changes, and so the whole suite, fast.
FAST_CONSENSUS = {"view_change_timeout_ms": 600, "checkpoint_interval_blocks": 16,
                  "batch_interval_ms": 10}
RPC_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0
T = TypeVar("T")


class RpcError(Exception):
    """A JSON-RPC error answer (code, message, data) from a node."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


def die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL it if the test process goes away.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cli_command(*args: str) -> list[str]:
    return [PYTHON, "-m", "cli", *args]


def run_cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `cityledger ARGS` to completion from the repository root."""
    return subprocess.run(cli_command(*args), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


# -- JSON-RPC over urllib -------------------------------------------------------------------
def post_json(url: str, body: bytes, timeout_s: float = RPC_TIMEOUT_S) -> tuple[int, Any]:
    """(HTTP status, decoded JSON answer or None) for a raw POST."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, (json.loads(raw) if raw else None)


def rpc_call(url: str, method: str, timeout_s: float = RPC_TIMEOUT_S, **params: Any) -> Any:
    """The result of one call, or RpcError; OSError when the node cannot be reached."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params:
        request["params"] = params
    _, answer = post_json(url, json.dumps(request).encode(), timeout_s)
    if not isinstance(answer, dict):
        raise RpcError(-1, f"not a JSON-RPC answer: {answer!r:.200}")
    if "error" in answer:
        error = answer["error"]
        raise RpcError(error["code"], error.get("message", ""), error.get("data"))
    return answer["result"]


def rpc_batch(url: str, calls: Sequence[tuple[str, dict[str, Any]]],
              timeout_s: float = RPC_TIMEOUT_S) -> list[Any]:
    """Results of a JSON-RPC batch in call order; an error answer becomes an RpcError value."""
    if not calls:
        return []
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p}
            for i, (m, p) in enumerate(calls)]
    _, answer = post_json(url, json.dumps(body).encode(), timeout_s)
    if not isinstance(answer, list):
        raise RpcError(-1, f"batch answer is not a list: {answer!r:.200}")
    by_id = {item["id"]: item for item in answer}
    results: list[Any] = []
    for i in range(len(calls)):
        item = by_id[i]
        if "error" in item:
            error = item["error"]
            results.append(RpcError(error["code"], error.get("message", ""), error.get("data")))
        else:
            results.append(item["result"])
    return results


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str,
               interval_s: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy; AssertionError at the deadline.

    Exceptions from the predicate (node down, RPC error) count as "not yet"; the last
    value or exception seen is named in the failure message.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            value = predicate()
        except (OSError, RpcError, ValueError, KeyError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; "
                                 f"last seen: {last!r:.500}")
        time.sleep(interval_s)


def identity_tx(chain_id: str, key: KeyPair | None = None, nonce: int = 0) -> Tx:
    """A transaction anyone may send: register the DID of a (fresh) key."""
    return sign_tx(key or KeyPair.generate(), chain_id, "identity", "register", nonce, {})


# -- node processes -------------------------------------------------------------------------
@dataclass
class NodeProcess:
    """One validator's home and (when running) its process."""

    index: int
    home: Path
    name: str
    rpc_url: str
    p2p_port: int
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cli_command("node", "start", "--home", str(self.home), "--log-format", "json"),
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only the prctl call
            )
        self.frozen = False

    def signal(self, signum: int) -> None:
        assert self.proc is not None and self.running, f"{self.name} is not running"
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a power cut of the process."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.frozen = False

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        assert self.proc is not None
        if self.frozen:
            self.thaw()
        self.proc.terminate()
        return self.proc.wait(timeout=timeout_s)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)
        self.frozen = False

    def wipe_data(self) -> None:
        assert not self.running, "wipe a node's data only while it is down"
        shutil.rmtree(self.home / "data", ignore_errors=True)

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    # -- RPC ----------------------------------------------------------------------------
    def rpc(self, method: str, timeout_s: float = RPC_TIMEOUT_S, **params: Any) -> Any:
        return rpc_call(self.rpc_url, method, timeout_s, **params)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.rpc("node_status")
        return result

    def height(self) -> int:
        return int(self.status()["height"])

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def wait_logged(self, text: str, since_bytes: int, timeout_s: float = 10.0) -> None:
        """Wait until the node's log, after offset `since_bytes`, contains `text`."""
        def logged() -> bool:
            with open(self.log_path, "rb") as log:
                log.seek(since_bytes)
                return text.encode() in log.read()
        wait_until(logged, timeout_s, f"{self.name} to log {text!r}")

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` log lines other than routine commits, then the last commit."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        events = [line for line in text.splitlines() if "committed height" not in line]
        commits = [line for line in text.splitlines() if "committed height" in line]
        return "\n".join(events[-lines:] + commits[-1:])


@dataclass
class Cluster:
    """A network of validator processes under one directory."""

    root: Path
    chain_id: str
    nodes: list[NodeProcess]
    acked: dict[str, int] = field(default_factory=dict)  # tx hash -> committed height
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, root: Path, nodes: int = 4,
               consensus: dict[str, int] | None = None) -> Cluster:
        """A fresh network in `root` (not started), on free ports, with fast consensus."""
        out = Path(root) / "net"
        result = run_cli("genesis", "init", "--validators", str(nodes), "--out", str(out),
                         "--chain-id", "cityledger-it")
        assert result.returncode == 0, f"genesis init failed: {result.stderr}"
        ports = free_ports(2 * nodes)
        genesis = json.loads((out / "genesis.json").read_text())
        genesis["consensus"].update(FAST_CONSENSUS)
        genesis["consensus"].update(consensus or {})
        procs: list[NodeProcess] = []
        for i, validator in enumerate(genesis["validators"]):
            p2p_port, rpc_port = ports[2 * i], ports[2 * i + 1]
            validator["p2p_address"] = f"127.0.0.1:{p2p_port}"
            validator["rpc_address"] = f"127.0.0.1:{rpc_port}"
        text = json.dumps(genesis, indent=2, sort_keys=True) + "\n"
        (out / "genesis.json").write_text(text)
        homes = sorted(p for p in out.glob("node*") if (p / "config.json").exists())
        assert len(homes) == nodes, homes
        for i, home in enumerate(homes):
            (home / "genesis.json").write_text(text)
            config = json.loads((home / "config.json").read_text())
            config["p2p_listen"] = genesis["validators"][i]["p2p_address"]
            config["rpc_listen"] = genesis["validators"][i]["rpc_address"]
            (home / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            procs.append(NodeProcess(
                index=i, home=home, name=config["node_name"],
                rpc_url=f"http://{config['rpc_listen']}/rpc", p2p_port=ports[2 * i],
            ))
        return cls(out, genesis["chain_id"], procs)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, nodes: Iterable[NodeProcess] | None = None) -> None:
        chosen = list(self.nodes if nodes is None else nodes)
        for node in chosen:
            node.start()
        self.wait_ready(chosen)

    def wait_ready(self, nodes: Iterable[NodeProcess] | None = None,
                   timeout_s: float = START_TIMEOUT_S) -> None:
        for node in (self.nodes if nodes is None else nodes):
            def answers(node: NodeProcess = node) -> bool:
                if not node.running:
                    raise AssertionError(f"{node.name} exited with {node.proc and node.proc.returncode}:"
                                         f"\n{node.log_tail()}")
                return bool(node.status())
            wait_until(answers, timeout_s, f"{node.name} to answer node_status")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def running(self) -> list[NodeProcess]:
        return [node for node in self.nodes if node.running and not node.frozen]

    def node_named(self, name: str) -> NodeProcess:
        return next(node for node in self.nodes if node.name == name)

    def primary(self, via: NodeProcess | None = None) -> NodeProcess:
        """The primary as most running nodes see it (or as `via` sees it).

        A node that is catching up or alone in a view change may name another one, so the
        majority of nodes not in a view change decides.
        """
        if via is not None:
            return self.node_named(via.status()["primary"])
        votes = Counter(s["primary"] for s in (node.status() for node in self.running())
                        if not s["in_view_change"])
        assert votes, f"every running node is in a view change:\n{self.describe()}"
        return self.node_named(votes.most_common(1)[0][0])

    def majority_view(self, node: NodeProcess) -> int:
        """The view most running nodes other than `node` are in."""
        others = Counter(other.status()["view"] for other in self.running() if other is not node)
        view: int = others.most_common(1)[0][0]
        return view

    def wait_participating(self, node: NodeProcess, timeout_s: float = 30.0) -> None:
        """Wait until `node` is in the view most others are in, and not changing view."""
        def in_step() -> bool:
            view = self.majority_view(node)
            status = node.status()
            return status["view"] == view and not status["in_view_change"]
        try:
            wait_until(in_step, timeout_s, f"{node.name} to take part in the current view")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    # -- transactions ---------------------------------------------------------------------
    def record_ack(self, result: dict[str, Any]) -> None:
        """Keep a tx a node acknowledged as committed (or rejected) at a height."""
        assert result["status"] in ("committed", "rejected"), result
        with self._lock:
            previous = self.acked.setdefault(result["hash"], int(result["height"]))
        assert previous == int(result["height"]), (result, previous)

    def submit(self, node: NodeProcess, tx: Tx | None = None, wait: bool = True,
               timeout_s: float = 40.0) -> dict[str, Any]:
        """Submit one tx (a fresh identity registration by default) and record its ack."""
        tx = tx or identity_tx(self.chain_id)
        result: dict[str, Any] = node.rpc("tx_submit", timeout_s, tx=tx.raw.hex(), wait=wait)
        if wait:
            assert result["hash"] == tx.hash.hex(), result
            self.record_ack(result)
        return result

    def commit_some(self, count: int, via: Sequence[NodeProcess] | None = None) -> list[str]:
        """Commit `count` txs through the given nodes in turn (all running ones by default)."""
        targets = list(via or self.running())
        hashes = []
        for i in range(count):
            hashes.append(self.submit(targets[i % len(targets)])["hash"])
        return hashes

    # -- checks ---------------------------------------------------------------------------
    def wait_height(self, height: int, nodes: Iterable[NodeProcess] | None = None,
                    timeout_s: float = 30.0) -> None:
        for node in list(self.nodes if nodes is None else nodes):
            wait_until(lambda node=node: node.height() >= height, timeout_s,
                       f"{node.name} to reach height {height}")

    def wait_converged(self, nodes: Iterable[NodeProcess] | None = None,
                       timeout_s: float = 30.0) -> tuple[int, str]:
        """Wait until the nodes report the same head (height, hash); return it."""
        chosen = list(self.nodes if nodes is None else nodes)

        def same_head() -> tuple[int, str] | None:
            heads = {(s["height"], s["last_block_hash"]) for s in
                     (node.status() for node in chosen)}
            return heads.pop() if len(heads) == 1 else None

        try:
            return wait_until(same_head, timeout_s, f"{[n.name for n in chosen]} to share one head")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe(chosen)}") from None

    def describe(self, nodes: Iterable[NodeProcess] | None = None) -> str:
        """One line per node: height, head, view, primary (for failure messages)."""
        lines = []
        for node in (self.nodes if nodes is None else nodes):
            try:
                s = node.status()
            except (OSError, RpcError) as exc:
                lines.append(f"  {node.name}: unreachable ({exc})")
                continue
            lines.append(f"  {node.name}: height {s['height']} {s['last_block_hash'][:12]} "
                         f"view {s['view']}{' (changing)' if s['in_view_change'] else ''} "
                         f"primary {s['primary']} peers {s['connected_peers']} "
                         f"mempool {s['mempool_txs']} syncing {s['syncing']} halted {s['halted']}")
        return "\n".join(lines)

    def blocks(self, node: NodeProcess, first: int, last: int) -> list[dict[str, Any]]:
        """block_get for every height in [first, last] on `node` (batched RPC)."""
        blocks: list[dict[str, Any]] = []
        for start in range(first, last + 1, 100):
            heights = range(start, min(last, start + 99) + 1)
            results = rpc_batch(node.rpc_url, [("block_get", {"height": h}) for h in heights])
            for height, result in zip(heights, results, strict=True):
                if isinstance(result, RpcError):
                    raise AssertionError(f"{node.name} has no block {height}: {result}")
                assert result["height"] == height
                blocks.append(result)
        return blocks

    def assert_same_chain(self, nodes: Iterable[NodeProcess] | None = None) -> int:
        """Every node reports the same block hash at every height up to the lowest head.

        Returns that common height. Also checks the hash links between consecutive blocks
        and that no block is empty (these clients only send valid txs, and a primary with
        nothing to propose must not fill the chain with empty blocks).
        """
        chosen = list(self.nodes if nodes is None else nodes)
        common = min(node.height() for node in chosen)
        assert common > 0, "no blocks committed"
        reference = self.blocks(chosen[0], 1, common)
        for parent, child in zip(reference, reference[1:], strict=False):
            assert child["header"]["prev_hash"] == parent["hash"], child
        empty = [block["height"] for block in reference if not block["tx_hashes"]]
        assert not empty, f"empty blocks at heights {empty[:20]} (of {common})"
        for node in chosen[1:]:
            theirs = self.blocks(node, 1, common)
            for ours, other in zip(reference, theirs, strict=True):
                assert ours["hash"] == other["hash"], (
                    f"fork at height {ours['height']}: {chosen[0].name} has "
                    f"{ours['hash'][:16]}, {node.name} has {other['hash'][:16]}")
        return common

    def assert_no_lost_txs(self, nodes: Iterable[NodeProcess] | None = None) -> int:
        """Every acknowledged tx is in every node's chain at the acknowledged height."""
        chosen = list(self.nodes if nodes is None else nodes)
        with self._lock:
            acked = dict(self.acked)
        assert acked, "no acknowledged transactions to check"
        items = sorted(acked.items())
        for node in chosen:
            for start in range(0, len(items), 100):
                chunk = items[start:start + 100]
                results = rpc_batch(node.rpc_url, [("tx_get", {"hash": h}) for h, _ in chunk])
                for (tx_hash, height), result in zip(chunk, results, strict=True):
                    assert not isinstance(result, RpcError), \
                        f"{node.name} lost acknowledged tx {tx_hash[:16]}: {result}"
                    assert result["status"] in ("committed", "rejected"), (node.name, result)
                    assert result["height"] == height, \
                        f"{node.name} has tx {tx_hash[:16]} at {result['height']}, acked at {height}"
        return len(acked)

    def diagnostics(self) -> str:
        parts = []
        for node in self.nodes:
            parts.append(f"--- {node.name} ({'running' if node.running else 'down'}) ---\n"
                         f"{node.log_tail(30)}")
        return f"{self.describe()}\n" + "\n".join(parts)


class LoadGenerator:
    """A background client that keeps submitting (wait=True) to the running nodes.

    Every answer that says committed/rejected is recorded in the cluster's ack log;
    refusals, timeouts and unreachable nodes are counted and skipped (the next tx goes to
    the next node). A tx whose submit failed may still commit later; it is simply never
    acknowledged, so the no-loss check does not count on it.
    """

    def __init__(self, cluster: Cluster, threads: int = 2) -> None:
        self.cluster = cluster
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]
        self.committed = 0
        self.failures = 0
        self._counter_lock = threading.Lock()

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, offset: int) -> None:
        turn = offset
        while not self._stop.is_set():
            targets = self.cluster.running()
            if not targets:
                time.sleep(0.05)
                continue
            node = targets[turn % len(targets)]
            turn += 1
            try:
                self.cluster.submit(node, timeout_s=15.0)
            except (OSError, RpcError):
                with self._counter_lock:
                    self.failures += 1
                time.sleep(0.05)
            else:
                with self._counter_lock:
                    self.committed += 1

    def wait_committed(self, count: int, timeout_s: float = 30.0) -> None:
        target = self.committed + count
        wait_until(lambda: self.committed >= target, timeout_s,
                   f"the load generator to commit {count} more txs")
