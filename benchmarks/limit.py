"""What one validator must spend per transaction, and the cluster ceiling that follows.

    python -m benchmarks.limit [--txs 4000] [--block-txs 1000] [--validators 4] [--out DIR]

In one process, for the cluster benchmark's own transactions (same genesis, same rule
modules, same op mix), every transaction goes through what a node does to it once:
    decode+verify   ledger.tx.decode_and_verify (canonical decode, Ed25519 verify)
    admission       Executor.check_admission (nonce, schema) as the mempool runs it
    execute         Chain.build: the rule modules over an overlay, then the new state root
    store           Chain.commit: block, certificate, receipts and state in one synced
                    LevelDB batch
Consensus messages are per block, not per transaction, so they are left out: the result
is an upper bound. Every validator does this work for every transaction, so with
`cores` cores shared by N validators the cluster cannot commit more than
    ceiling_tps = cores / (N x per-tx CPU seconds).

With `--catch-up B`, it also measures what a fresh node pays to sync the same transactions
as a history of B-tx certified blocks: one chain builds and certifies the history, a second
replays it as the node does (`Chain.commit_certified_run` over runs of 16 blocks, the
signatures checked first, as the verify pool does), and the per-tx cost of each part gives
the sync ceiling on this machine: the loop thread's commit work bounds it on one core, and
both parts together on `cores`. That ceiling assumes the two parts do not slow each other;
they do, so two more chains replay the history with a two-thread verify pool, timed by the
wall clock: as the node runs it (each run's signatures checked on the pool, then the run
committed) and overlapped (the next run's signatures checked while this one commits, which
the node did before: on this machine it was the slower of the two).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from benchmarks.common import (
    Network,
    Workload,
    build_workload,
    fmt,
    machine,
    parse_mix,
    print_table,
    write_json,
)
from ledger.block import Block, CommitCertificate, commit_vote_bytes
from ledger.chain import Chain
from ledger.crypto import KeyPair
from ledger.executor import Executor
from ledger.genesis import build_genesis_state, load_genesis
from ledger.quorum import quorum_size
from ledger.rules import RuleModule
from ledger.state import WorldState
from ledger.store import BlockStore
from ledger.tx import Tx, TxError, decode_and_verify
from ledger.tx_verifier import VERIFY_THREADS
from txtypes.base import load_modules

STAGES = ("decode_verify", "admission", "execute", "store")
T = TypeVar("T")
CATCH_UP_RUN_BLOCKS = 16  # the node cuts catch-up runs at checkpoint boundaries (16 seqs)
# Given the genesis writes and the executor, more initial state to write with them.
Seeder = Callable[[dict[bytes, bytes | None], Executor], Mapping[bytes, bytes | None]]


class LimitChain:
    """A node's ledger side (store, state, executor, Chain) on a temporary LevelDB."""

    def __init__(self, genesis_path: Path, validator_keys: Sequence[KeyPair], db_path: Path,
                 seed: Seeder | None = None) -> None:
        self.genesis = load_genesis(genesis_path)
        # cast: TxFamily declares `family` as a ClassVar, RuleModule as an attribute (as in
        # node.py); the objects are the same rule modules the node loads.
        modules = cast(list[RuleModule], load_modules(self.genesis.module_names))
        self.store = BlockStore.open(db_path)
        self.state = WorldState(self.store.db)
        writes, _ = build_genesis_state(self.genesis, modules)
        self.executor = Executor(self.genesis.chain_id, modules)
        if seed is not None:  # extra initial state (benchmarks.scale: many accounts)
            writes.update(seed(writes, self.executor))
        prepared = self.state.prepare(writes, height=0)
        self.store.init_genesis(self.genesis.hash, prepared.root, prepared.ops)
        self.state.apply_prepared(prepared)
        self.validators = [v.public_key_bytes for v in self.genesis.validators]
        self.keys = {key.public_key: key for key in validator_keys}
        self.chain = Chain(self.genesis, self.store, self.state, self.executor,
                           lambda view: self.validators[view % len(self.validators)])
        self.clock_ms = 1_000_000

    def certificate(self, seq: int, block_hash: bytes) -> CommitCertificate:
        quorum = quorum_size(len(self.validators))
        vote = commit_vote_bytes(self.genesis.chain_id, 0, seq, block_hash)
        signers = sorted(self.validators)[:quorum]
        return CommitCertificate(seq, 0, block_hash,
                                 tuple((key, self.keys[key].sign(vote)) for key in signers))

    def run_block(self, raws: Sequence[bytes]) -> dict[str, float]:
        """Push one block of wire transactions through every stage; CPU seconds per stage."""
        seconds: dict[str, float] = {}
        seconds["decode_verify"], checked = _cpu_timed(lambda: self.checked(raws))
        reader = self.state.reader()

        def admit_all() -> None:
            for tx in checked:
                problem = self.executor.check_admission(tx, reader, nonce_ahead_max=10**6)
                if problem is not None:
                    raise SystemExit(f"benchmark transaction not admitted: {problem}")

        seconds["admission"], _ = _cpu_timed(admit_all)
        self.clock_ms += 1000
        seconds["execute"], speculation = _cpu_timed(
            lambda: self.chain.build(0, self.validators[0], checked, self.clock_ms))
        rejected = [r for r in speculation.result.receipts if not r.ok]
        if rejected:
            raise SystemExit(f"benchmark tx rejected: {rejected[0].code} {rejected[0].reason}")
        cert = self.certificate(speculation.block.header.height, speculation.block.hash)
        seconds["store"], _ = _cpu_timed(lambda: self.chain.commit(speculation, cert))
        return seconds

    def checked(self, raws: Sequence[bytes]) -> list[Tx]:
        """Decode and verify wire txs (a block's, as the verify pool does for catch-up)."""
        txs = []
        for raw in raws:
            tx = decode_and_verify(raw, self.genesis.chain_id)
            if isinstance(tx, TxError):
                raise SystemExit(f"benchmark transaction refused: {tx}")
            txs.append(tx)
        return txs

    def certified_block(self, raws: Sequence[bytes]) -> tuple[Block, CommitCertificate]:
        """Build, certify and commit the next block of `raws`; the block and certificate."""
        self.clock_ms += 1000
        speculation = self.chain.build(0, self.validators[0], self.checked(raws), self.clock_ms)
        cert = self.certificate(speculation.block.header.height, speculation.block.hash)
        self.chain.commit(speculation, cert)
        return speculation.block, cert

    def replay(self, history: Sequence[tuple[Block, CommitCertificate, Sequence[Tx]]]) -> None:
        """Commit certified blocks as a catching-up node does, in runs with one fsync each."""
        for start in range(0, len(history), CATCH_UP_RUN_BLOCKS):
            _, rejected = self.chain.commit_certified_run(
                history[start:start + CATCH_UP_RUN_BLOCKS])
            if rejected is not None:
                raise SystemExit(f"catch-up replay refused a block: {rejected.reason}")

    def close(self) -> None:
        self.store.close()


def _cpu_timed(action: Callable[[], T]) -> tuple[float, T]:
    started = time.process_time()
    result = action()
    return time.process_time() - started, result


def validator_keys(network_dir: Path) -> list[KeyPair]:
    """The validators' signing keys from a `genesis init` directory (to certify blocks)."""
    return [KeyPair.load(home / "node_key.json")
            for home in sorted(network_dir.glob("node*")) if (home / "node_key.json").exists()]


def sample_of(workload: Workload, count: int) -> list[bytes]:
    """A prefix of every lane: each sender's nonces stay gap-free and in order."""
    lanes = workload.lanes
    share = -(-count // len(lanes))
    return [raw for lane in lanes for raw in lane[:share]][:count]


def measure(network_dir: Path, workload: Workload, txs: int, block_txs: int
            ) -> dict[str, Any]:
    """Per-tx CPU microseconds per stage for `txs` of the workload (after its setup)."""
    keys = validator_keys(network_dir)
    sample = sample_of(workload, txs)
    totals = dict.fromkeys(STAGES, 0.0)
    wall_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="limit-") as tmp:
        chain = LimitChain(network_dir / "genesis.json", keys, Path(tmp) / "ledger.db")
        try:
            for phase in workload.setup:
                for start in range(0, len(phase), block_txs):
                    chain.run_block(phase[start:start + block_txs])
            wall_started = time.perf_counter()
            for start in range(0, len(sample), block_txs):
                for stage, seconds in chain.run_block(sample[start:start + block_txs]).items():
                    totals[stage] += seconds
            wall_s = time.perf_counter() - wall_started
        finally:
            chain.close()
    per_tx_us = {stage: totals[stage] / len(sample) * 1e6 for stage in STAGES}
    total_us = sum(per_tx_us.values())
    return {"txs": len(sample), "block_txs": block_txs, "per_tx_cpu_us": per_tx_us,
            "total_cpu_us_per_tx": total_us, "wall_us_per_tx": wall_s / len(sample) * 1e6,
            "single_core_tps": 1e6 / total_us}


def catch_up(network_dir: Path, workload: Workload, txs: int, block_txs: int,
             cores: int) -> dict[str, Any]:
    """CPU per tx for a fresh node replaying `txs` of the workload in `block_txs` blocks."""
    keys = validator_keys(network_dir)
    sample = sample_of(workload, txs)
    genesis = network_dir / "genesis.json"
    with tempfile.TemporaryDirectory(prefix="limit-catch-up-") as tmp:
        source = LimitChain(genesis, keys, Path(tmp) / "source.db")
        late = LimitChain(genesis, keys, Path(tmp) / "late.db")
        as_node = LimitChain(genesis, keys, Path(tmp) / "as-node.db")
        overlapped = LimitChain(genesis, keys, Path(tmp) / "overlapped.db")
        replays = (late, as_node, overlapped)
        try:
            setup = [source.certified_block(phase[start:start + 1000])
                     for phase in workload.setup for start in range(0, len(phase), 1000)]
            history = [source.certified_block(sample[start:start + block_txs])
                       for start in range(0, len(sample), block_txs)]
            for chain in replays:
                chain.replay([(block, cert, chain.checked(block.txs)) for block, cert in setup])
            verify_s, checked = _cpu_timed(
                lambda: [(block, cert, late.checked(block.txs)) for block, cert in history])
            commit_s, _ = _cpu_timed(lambda: late.replay(checked))
            tips = [late.store.tip()]
            # Each replay's database is closed before the next is timed: LevelDB compacts
            # in the background after a burst of writes, and that would load the next one.
            late.close()
            as_node_s = _pooled_replay(as_node, history, overlap=False)
            tips.append(as_node.store.tip())
            as_node.close()
            overlapped_s = _pooled_replay(overlapped, history, overlap=True)
            tips.append(overlapped.store.tip())
            if any(tip != source.store.tip() for tip in tips):
                raise SystemExit("catch-up replay did not reach the source chain's head")
        finally:
            for chain in (source, *replays):
                chain.close()
    verify_us, commit_us = verify_s / len(sample) * 1e6, commit_s / len(sample) * 1e6
    return {"txs": len(sample), "block_txs": block_txs, "blocks": len(history),
            "verify_cpu_us_per_tx": verify_us, "commit_cpu_us_per_tx": commit_us,
            "commit_ms_per_block": commit_s / len(history) * 1e3,
            # The loop thread commits; the verify pool's threads check signatures beside it.
            "ceiling_tps": min(1e6 / commit_us, cores * 1e6 / (commit_us + verify_us)),
            "as_node_tps": len(sample) / as_node_s,
            "overlapped_tps": len(sample) / overlapped_s}


def _pooled_replay(chain: LimitChain, history: Sequence[tuple[Block, CommitCertificate]], *,
                   overlap: bool) -> float:
    """Wall seconds to replay `history` in runs, each run's signatures checked on a thread
    pool before it commits; with `overlap`, the next run's are checked while one commits."""
    runs = [history[start:start + CATCH_UP_RUN_BLOCKS]
            for start in range(0, len(history), CATCH_UP_RUN_BLOCKS)]
    with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="verify") as pool:
        def submit(run: Sequence[tuple[Block, CommitCertificate]]) -> list[Future[list[Tx]]]:
            return [pool.submit(chain.checked, block.txs) for block, _ in run]

        started = time.perf_counter()
        pending = submit(runs[0]) if runs else []
        for index, run in enumerate(runs):
            checked = [(block, cert, future.result())
                       for (block, cert), future in zip(run, pending, strict=True)]
            following = runs[index + 1] if index + 1 < len(runs) else None
            if overlap and following:
                pending = submit(following)
            chain.replay(checked)
            if not overlap and following:
                pending = submit(following)
        return time.perf_counter() - started


def ceiling_tps(total_cpu_us_per_tx: float, validators: int, cores: int) -> float:
    """cores / (N x per-tx cost): every validator does the per-tx work for every tx."""
    return cores / (validators * total_cpu_us_per_tx / 1e6)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", type=int, default=4000, help="measured transactions")
    parser.add_argument("--block-txs", type=int, default=1000, help="transactions per block")
    parser.add_argument("--validators", type=int, default=4, help="N for the ceiling")
    parser.add_argument("--senders", type=int, default=1000)
    parser.add_argument("--mix", default="transfer=1", help="op weights, e.g. transfer=8,spend=2")
    parser.add_argument("--payload-bytes", type=int, default=0, help="spend memo length")
    parser.add_argument("--catch-up", type=int, default=0, metavar="BLOCK_TXS",
                        help="also measure a fresh node's replay of the txs in blocks of this size")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args(argv)
    if args.catch_up < 0:
        parser.error("--catch-up takes a block size of at least 1 (0 leaves it out)")
    info = machine()
    with tempfile.TemporaryDirectory(prefix="limit-net-") as tmp:
        network = Network(Path(tmp) / "net", args.validators)
        network.init()
        workload = build_workload(network.chain_id, network.account("treasury"),
                                  network.account("civil-registry"), args.txs,
                                  min(args.senders, args.txs), 1, parse_mix(args.mix),
                                  args.payload_bytes)
        result = measure(network.out_dir, workload, args.txs, args.block_txs)
        synced = (catch_up(network.out_dir, workload, args.txs, args.catch_up, info["cores"])
                  if args.catch_up else None)
    ceiling = ceiling_tps(result["total_cpu_us_per_tx"], args.validators, info["cores"])
    report = {"benchmark": "limit", "machine": info, "validators": args.validators,
              "mix": args.mix, **result, "ceiling_tps": ceiling, "catch_up": synced}
    rows = [(f"{stage} (CPU us/tx)", fmt(result["per_tx_cpu_us"][stage], 1)) for stage in STAGES]
    rows += [("total (CPU us/tx)", fmt(result["total_cpu_us_per_tx"], 1)),
             ("wall us/tx", fmt(result["wall_us_per_tx"], 1)),
             ("one core, tx/s", fmt(result["single_core_tps"])),
             (f"ceiling, {info['cores']} cores / {args.validators} validators, tx/s",
              fmt(ceiling))]
    if synced is not None:
        rows += [(f"catch-up, blocks of {synced['block_txs']}: verify (CPU us/tx)",
                  fmt(synced["verify_cpu_us_per_tx"], 1)),
                 ("catch-up: commit runs (CPU us/tx)", fmt(synced["commit_cpu_us_per_tx"], 1)),
                 ("catch-up: commit per block (ms)", fmt(synced["commit_ms_per_block"], 2)),
                 ("catch-up ceiling, verified tx/s", fmt(synced["ceiling_tps"])),
                 ("catch-up as the node runs it (pool, then commit), verified tx/s",
                  fmt(synced["as_node_tps"])),
                 ("catch-up overlapped (pool beside the commit), verified tx/s",
                  fmt(synced["overlapped_tps"]))]
    print_table(f"limit: {result['txs']} txs ({args.mix}), blocks of {args.block_txs}", rows)
    path = write_json(Path(args.out), "limit.json", report)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
