"""`cityledger testnet up`: starts every node, prints their RPC URLs, stops them all on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import (
    REPO_ROOT,
    Cluster,
    cli_command,
    die_with_parent,
    identity_tx,
    rpc_call,
    wait_until,
)

pytestmark = pytest.mark.integration

READY_LINE = "Ctrl-C stops every node."


def node_pids(network_dir: Path) -> list[int]:
    """Live (non-zombie) `node start` processes whose home is under `network_dir`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        text = [arg.decode(errors="replace") for arg in argv]
        if "node" in text and "start" in text and state != "Z" and \
                any(arg.startswith(str(network_dir)) for arg in text):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def network_dir(tmp_path: Path) -> Iterator[Path]:
    """A 4-node network dir on free ports; any node process left behind is killed."""
    directory = Cluster.create(tmp_path).root
    try:
        yield directory
    finally:
        for pid in node_pids(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_testnet_up_prints_rpc_urls_commits_and_stops_every_node_on_ctrl_c(
        network_dir: Path) -> None:
    proc = subprocess.Popen(cli_command("testnet", "up", "--nodes", "4", "--dir", str(network_dir)),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=die_with_parent)  # noqa: PLW1509
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    output: list[str] = []
    try:
        def ready() -> bool:
            while not lines.empty():
                output.append(lines.get_nowait())
            if proc.poll() is not None:
                raise AssertionError(f"testnet up exited early: {''.join(output)}")
            return any(READY_LINE in line for line in output)

        wait_until(ready, 30, "testnet up to print its RPC URLs")
        urls = re.findall(r"RPC (http://\S+/rpc)", "".join(output))
        genesis = json.loads((network_dir / "genesis.json").read_text())
        assert urls == [f"http://{v['rpc_address']}/rpc" for v in genesis["validators"]]
        for url in urls:
            wait_until(lambda url=url: rpc_call(url, "node_status"), 60, f"{url} to answer")
        assert len(node_pids(network_dir)) == 4

        tx = identity_tx(genesis["chain_id"])
        result = rpc_call(urls[1], "tx_submit", 40, tx=tx.raw.hex(), wait=True)
        assert result["status"] == "committed", result
        for url in urls:
            got = wait_until(lambda url=url: rpc_call(url, "tx_get", hash=tx.hash.hex())
                             .get("status") == "committed", 20, f"the tx on {url}")
            assert got

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while not lines.empty():
        output.append(lines.get_nowait())
    assert "all nodes stopped" in "".join(output)
    assert node_pids(network_dir) == []
    # The nodes it started wrote structured logs: one JSON object per line.
    for home in sorted(network_dir.glob("node*")):
        records = [json.loads(line) for line in (home / "node.log").read_text().splitlines()
                   if line.strip()]
        assert any("stopping" in record["msg"] for record in records), home
