"""kill -9 a real writer process mid-stream, many times; the store must reopen whole.

The writer (tests/ledger/chainmaker.py) appends certified blocks to a real LevelDB in a
loop. After every SIGKILL we reopen: the tip must name a complete block, the state ops
written with it must match its height (block and state in one batch), verify_chain must
pass, and the next writer resumes from that tip. CITYLEDGER_SOAK=1 runs 200 kills.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.store import BlockStore
from ledger.verify import verify_chain
from tests.ledger.chainmaker import CHAIN_ID, GENESIS_HASH, VALIDATORS

REPO_ROOT = Path(__file__).resolve().parents[2]
KILLS = 200 if os.environ.get("CITYLEDGER_SOAK") == "1" else 20
KILL_DELAY_MIN_S = 0.02
KILL_DELAY_MAX_S = 0.12
READY_TIMEOUT_S = 20.0


def _start_writer(db_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.ledger.chainmaker", str(db_path), "2", mode],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdout is not None
    line = writer.stdout.readline()  # blocks until the store is open
    assert line.startswith("ready "), f"writer did not start: {line!r}"
    return writer, int(line.split()[1])


@pytest.mark.parametrize("mode", ["synced", "runs"])
def test_store_reopens_at_a_complete_verified_tip_after_repeated_sigkill(
    tmp_path: Path, mode: str,
) -> None:
    """`runs` writes like catch-up: blocks unsynced, one sync per run of 8."""
    seed = int(os.environ.get("CITYLEDGER_SEED", str(random.randrange(2**32))))
    print(f"crash test seed {seed}")
    rng = random.Random(seed)
    db_path = tmp_path / "ledger.db"
    last_tip = 0
    rounds_with_progress = 0
    started = time.monotonic()
    for kill in range(KILLS):
        writer, resumed_at = _start_writer(db_path, mode)
        assert resumed_at == last_tip, f"kill {kill}: writer resumed at {resumed_at}"
        time.sleep(rng.uniform(KILL_DELAY_MIN_S, KILL_DELAY_MAX_S))
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=READY_TIMEOUT_S) == -signal.SIGKILL
        assert writer.stdout is not None
        writer.stdout.close()

        with BlockStore.open(db_path) as store:
            height, tip_hash = store.tip()
            assert height >= last_tip, f"kill {kill}: tip went back from {last_tip} to {height}"
            if height:
                block = store.block(height)
                assert block is not None and block.hash == tip_hash
            # The block and the state it wrote are one batch: both or neither survive.
            assert store.db.get(b"m/test_height") == struct.pack(">Q", height)
            report = verify_chain(store, GENESIS_HASH, CHAIN_ID, VALIDATORS)
            assert report.ok, f"kill {kill} (seed {seed}): {report}"
            rounds_with_progress += height > last_tip
            last_tip = height
    # Kills that land before the first append prove little; most rounds must write.
    assert rounds_with_progress >= KILLS // 2, f"only {rounds_with_progress} rounds wrote"
    print(f"{KILLS} kills, final tip {last_tip}, {time.monotonic() - started:.1f}s")
