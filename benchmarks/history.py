"""A long certified history written straight into validators' data dirs.

    python -m benchmarks.scale --parts sync --sync-history-blocks 100000 --sync-block-txs 5

Building 100k blocks through a running cluster takes about an hour here (a few dozen
blocks/s at low load); the fresh-node sync that the issue times does not care how the
history was made, only that it is a valid chain with commit certificates. So one process
runs the real ledger (benchmarks.limit's LimitChain: genesis from the network's
genesis.json, the real rule modules, `Chain.build` and `Chain.commit`) over pre-signed
token transfers, certifies each block with a quorum of the validators' own keys (view 0,
sequence = height, the signing domain of epoch 0: what their replicas would have
signed), records the stable checkpoint a live network would have agreed on at its last
checkpoint seq (signed by the same quorum), and copies the finished data dir to every
serving validator. Nodes started on those dirs restore at that height, with their
watermarks at that checkpoint, and serve it to a node that starts empty.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from benchmarks.common import Network, build_workload, parse_mix
from benchmarks.limit import LimitChain, validator_keys
from consensus.messages import Checkpoint, CheckpointProof, signed_bytes
from consensus.records import ExecutedRecord, StableRecord, encode_record
from ledger.crypto import KeyPair
from ledger.quorum import quorum_size
from ledger.record_log import RecordLog
from ledger.tx import Tx, TxError, decode_tx
from node import records_prefix

# Durability every this many blocks: the history is thrown away if writing it fails, so
# one fsync per block (~4 ms here) would only make it slower to build.
SYNC_EVERY_BLOCKS = 1000
HISTORY_BLOCK_SPACING_MS = 20


@dataclass(frozen=True)
class History:
    blocks: int
    txs: int
    build_s: float
    copy_s: float
    data_bytes: int


def _decoded(raws: list[bytes]) -> list[Tx]:
    """Txs this process just signed: decoded, not re-verified (the late node verifies)."""
    txs = []
    for raw in raws:
        tx = decode_tx(raw)
        if isinstance(tx, TxError):
            raise SystemExit(f"history transaction does not decode: {tx}")
        txs.append(tx)
    return txs


def stable_checkpoint(chain_id: str, seq: int, block_hash: bytes, validators: list[bytes],
                      keys: dict[bytes, KeyPair]) -> CheckpointProof:
    """A quorum's signed checkpoints of `seq`, whose state digest is the block hash there."""
    quorum = quorum_size(len(validators))
    signers = [index for index, key in enumerate(validators) if key in keys][:quorum]
    if len(signers) < quorum:
        raise ValueError("not enough validator keys to sign a checkpoint quorum")
    checkpoints = []
    for index in signers:
        unsigned = Checkpoint(seq, block_hash, index, bytes(64))
        signature = keys[validators[index]].sign(signed_bytes(unsigned, chain_id))
        checkpoints.append(Checkpoint(seq, block_hash, index, signature))
    return CheckpointProof(seq, block_hash, tuple(checkpoints))


def write_history(network: Network, serving: list[int], blocks: int, block_txs: int,
                  senders: int = 200) -> History:
    """Write `blocks` certified blocks of `block_txs` transfers to the `serving` nodes."""
    if blocks < 1 or block_txs < 1 or not serving:
        raise ValueError("a history needs blocks >= 1, block_txs >= 1 and a serving node")
    started = time.perf_counter()
    homes = [network.out_dir / f"node{index}" for index in serving]
    keys = validator_keys(network.out_dir)  # before any node dir is parked
    data = homes[0] / "data"
    data.mkdir(parents=True, exist_ok=True)
    chain = LimitChain(network.genesis_path, keys, data / "ledger.db")
    senders = max(1, min(senders, blocks * block_txs))
    setup_txs = 1 + senders  # the class, one issue per sender
    transfers = max(0, blocks * block_txs - setup_txs)
    workload = build_workload(network.chain_id, network.account("treasury"),
                              network.account("civil-registry"), transfers, senders, 1,
                              parse_mix("transfer=1"), 0)
    raws = [raw for phase in workload.setup for raw in phase] + workload.lanes[0]
    # Timestamps that end about now, so nodes that go on from this history see time go on.
    clock_ms = int(time.time() * 1000) - blocks * HISTORY_BLOCK_SPACING_MS
    proposer = chain.validators[0]  # the primary of view 0
    txs_total = 0
    interval = chain.genesis.consensus.checkpoint_interval_blocks
    last_checkpoint: tuple[int, bytes] | None = None
    try:
        for height in range(1, blocks + 1):
            part = raws[(height - 1) * block_txs:height * block_txs]
            clock_ms += HISTORY_BLOCK_SPACING_MS
            speculation = chain.chain.build(0, proposer, _decoded(part), clock_ms)
            refused = [r for r in speculation.result.receipts if not r.ok]
            if refused:
                raise SystemExit(f"history tx refused at height {height}: {refused[0].code} "
                                 f"{refused[0].reason}")
            cert = chain.certificate(height, speculation.block.hash)
            chain.chain.commit(speculation, cert, sync=height % SYNC_EVERY_BLOCKS == 0)
            txs_total += len(part)
            if height % interval == 0:
                last_checkpoint = (height, speculation.block.hash)
        if last_checkpoint is not None:
            seq, block_hash = last_checkpoint
            proof = stable_checkpoint(network.chain_id, seq, block_hash, chain.validators,
                                      chain.keys)
            RecordLog(chain.store.db, records_prefix(0)).replace(
                [encode_record(ExecutedRecord(seq, block_hash)),
                 encode_record(StableRecord(proof))])
        chain.store.sync()
    finally:
        chain.close()
    built_s = time.perf_counter() - started
    copied = time.perf_counter()
    for home in homes[1:]:
        target = home / "data"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(data, target)
    data_bytes = sum(path.stat().st_size for path in data.rglob("*") if path.is_file())
    return History(blocks, txs_total, built_s, time.perf_counter() - copied, data_bytes)
