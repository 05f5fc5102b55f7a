"""The validator node: one asyncio loop wiring store, state, replica, mempool, p2p and RPC.

The replica (consensus/) decides; this module performs what it asks, in order:
  Persist   -> appended to the record log by the writer thread (one synced batch for
               all records pending at once); every later action waits until it is durable
  Send      -> framed to peers by p2p/
  Build/Validate/Execute -> done by the ledger's Chain, one job at a time, in arrival
               order (a block is executed once: when built or validated; Execute writes it)
  SetTimer  -> loop.call_later, fed back as TimerFired
  Fetch     -> block requests to peers, answers verified by the replica and the Chain
               (their certificates' signatures first, off the loop, frame by frame)
Transactions from clients enter the mempool (signature checked once per node) and are
gossiped to every validator; committed ones wake the RPC callers waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus.certificates import commit_proof_signatures
from consensus.config import ReplicaConfig
from consensus.events import (
    BROADCAST,
    Action,
    BuildProposal,
    CancelTimer,
    CommitProof,
    CommittedFetched,
    Compact,
    Event,
    Execute,
    Executed,
    FetchCommitted,
    MessageReceived,
    Persist,
    ProposalBuilt,
    ProposalValidated,
    ReportEvidence,
    RequestReceived,
    RequestsReceived,
    RequestWithdrawn,
    Send,
    SetTimer,
    TimerFired,
    ValidateProposal,
)
from consensus.messages import (
    NULL_DIGEST,
    VALIDATORS_MAX,
    MessageError,
    decode_message,
    encode_message,
)
from consensus.records import decode_record, encode_record
from consensus.replica import PROGRESS_TIMER, REQUEST_TIMER, Replica
from ledger.block import Block, BlockError, CommitCertificate
from ledger.chain import CertifiedBlock, Chain, ProposalRejected, Speculation
from ledger.codec import decode_stored
from ledger.crypto import KeyPair, sha256
from ledger.epochs import Epoch, EpochError, EpochHistory, due_epoch
from ledger.errors import CryptoError, LedgerError, invariant
from ledger.executor import Executor, next_nonce
from ledger.genesis import Genesis, GenesisError, build_genesis_state, load_genesis
from ledger.mempool import Mempool, MempoolLimits
from ledger.quorum import fault_tolerance
from ledger.record_log import RecordLog, RecordWrite
from ledger.sequences import CommittedSequences
from ledger.signature_process import SignatureProcess
from ledger.state import StateFormatError, WorldState
from ledger.store import STORE_LIMIT_RANGES, BlockStore, StoreError, StoreMemoryLimits
from ledger.tx import Tx, TxError
from ledger.tx_verifier import VERIFY_THREADS, TxVerifier
from ledger.verify import VerifyReport, verify_chain, verify_epochs
from p2p import PeerNetwork
from p2p.config import PeerConfigError, parse_address
from p2p.tls import CERT_FILE_NAME, KEY_FILE_NAME
from rpc.methods import jsonable
from rpc.node_methods import TxWaiters, build_node_methods
from rpc.server import create_rpc_app, start_rpc_server
from txtypes.base import ModuleNotInstalled, load_modules
from txtypes.governance import VALIDATORS_PENDING_KEY, validators_pending

log = logging.getLogger("cityledger.node")

TICK_MS = 10
FORWARD_BATCH_TXS_MAX = 1000
FETCH_SEQS_MAX = 32
RUN_BLOCKS_MAX = 64  # committed blocks executed back to back with one fsync
RUN_SLICE_TXS = 128  # a run yields to the event loop after about this many txs
FETCH_AHEAD_SEQS_MAX = 3 * FETCH_SEQS_MAX  # fetched seqs waiting for execution, at most
# A peer a fetch range or more ahead starts the signature process (see
# ledger.signature_process); a node a few blocks behind in normal running needs none.
SIGNATURE_PROCESS_BEHIND_SEQS = FETCH_SEQS_MAX
FETCH_BYTES_MAX = 6 * 1024 * 1024
TIP_INTERVAL_S = 1.0
STARTUP_GRACE_S = 2.5 * TIP_INTERVAL_S  # long enough to hear every peer's tip
VIEW_TIMERS = frozenset({PROGRESS_TIMER, REQUEST_TIMER})
TIMER_HOLD_MAX_S = 8.0
CATCH_UP_INTERVAL_S = 0.5
# While a catch-up stream's last request is younger than this, peers' tip announcements
# ask for nothing: each such ask fetched the range the stream had just asked for again.
STREAM_ANSWER_WAIT_S = 2.0
PROPOSAL_BYTES_MAX = 1536 * 1024  # under consensus.messages.PAYLOAD_BYTES_MAX
EVIDENCE_KEPT_MAX = 64
# Young-generation collections every 20,000 allocations instead of 700 (a block's
# temporaries mostly die before a collection sees them), the older generations every 20
# collections of the one below instead of 10 (see settle_heap).
GC_THRESHOLDS = (20_000, 20, 20)
# Every fetched seq waiting for execution stays decoded: it is decoded once, not per use.
DECODED_BLOCKS_MAX = FETCH_AHEAD_SEQS_MAX + 8
# ...and by size: 104 full proposals would be 156 MB of payload, several times that decoded.
DECODED_BYTES_MAX = FETCH_BYTES_MAX + 2 * PROPOSAL_BYTES_MAX
# Fetched frames of one peer waiting for their certificates' check, at most. An honest peer
# has at most the stream's answers in flight (it asks again as each arrives, up to the
# fetch-ahead bound) and one more (a tip's ask or the replica's own fetch); more are
# dropped, so a hostile one holds at most this many frames (<= 8 MB each).
FETCHED_FRAMES_PER_PEER_MAX = FETCH_AHEAD_SEQS_MAX // FETCH_SEQS_MAX + 1


class NodeError(Exception):
    """A startup problem the operator must fix (bad home dir, genesis, key)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_name: str
    p2p_listen: str
    rpc_listen: str
    mempool_txs_max: int = 100_000
    rpc_body_bytes_max: int = 1024 * 1024
    tx_wait_timeout_s: float = 30.0
    # LevelDB's memory (ledger.store.StoreMemoryLimits): block cache and open tables.
    store_cache_mb: int = 8
    store_open_files_max: int = 256
    # Threads checking tx signatures beside the event loop; 0 checks them on the loop.
    # `genesis init` writes 0: its nodes share one machine, whose cores are busy anyway.
    verify_threads: int = VERIFY_THREADS

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise NodeError(f"cannot read node config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise NodeError(f"{path} must hold a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise NodeError(f"{path}: unknown settings {unknown}")
        try:
            config = cls(**data)
        except TypeError as exc:
            raise NodeError(f"{path}: {exc}") from exc
        problem = config.problem()
        if problem is not None:
            raise NodeError(f"{path}: {problem}")
        return config

    def problem(self) -> str | None:
        """What is wrong with these settings (a JSON file can hold any type), or None."""
        for name in ("node_name", "p2p_listen", "rpc_listen"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                return f"{name} must be a non-empty string"
        for name in ("p2p_listen", "rpc_listen"):
            try:
                parse_address(getattr(self, name))
            except PeerConfigError:
                return f"{name} must be host:port, got {getattr(self, name)!r}"
        for name, low, high in _NUMERIC_SETTINGS:
            value = getattr(self, name)
            seconds = name.endswith("_s")  # durations may be fractional, counts may not
            if type(value) not in ((int, float) if seconds else (int,)) \
                    or not low <= value <= high:
                kind = "a number" if seconds else "an integer"
                return f"{name} must be {kind} in {low}..{high}, got {value!r}"
        return None


# (setting, lowest, highest) for NodeConfig's numeric settings.
_NUMERIC_SETTINGS: tuple[tuple[str, float, float], ...] = (
    ("mempool_txs_max", 1, 10_000_000),
    ("rpc_body_bytes_max", 1024, 64 * 1024 * 1024),
    ("tx_wait_timeout_s", 0.1, 3600),
    ("store_cache_mb", *STORE_LIMIT_RANGES["block_cache_mb"]),
    ("store_open_files_max", *STORE_LIMIT_RANGES["open_files_max"]),
    ("verify_threads", 0, 64),
)


def proof_to_map(proof: CommitProof) -> dict[str, Any]:
    return {"view": proof.view, "seq": proof.seq, "digest": proof.digest,
            "signatures": [list(pair) for pair in proof.signatures]}


FetchedItem = tuple[int, bytes, CommitProof]  # (seq, payload, commit proof) of a fetched seq


def proof_from_map(data: Any) -> CommitProof:
    if not isinstance(data, dict):
        raise MessageError("commit proof must be a map")
    # Byte fields must be bytes already: bytes(n) of a peer's integer n allocates n bytes
    # (or raises OverflowError, which no frame handler catches). More signatures than a
    # set can have validators are never a valid certificate, and would only be held.
    signatures, digest = data.get("signatures"), data.get("digest")
    if not isinstance(signatures, list) or len(signatures) > VALIDATORS_MAX \
            or not isinstance(digest, bytes):
        raise MessageError("malformed commit proof: digest or signatures")
    pairs: list[tuple[bytes, bytes]] = []
    for pair in signatures:
        if not isinstance(pair, list) or len(pair) != 2 \
                or not isinstance(pair[0], bytes) or not isinstance(pair[1], bytes):
            raise MessageError("malformed commit proof: a signature is [public key, signature]")
        pairs.append((pair[0], pair[1]))
    try:
        return CommitProof(int(data["view"]), int(data["seq"]), digest, tuple(pairs))
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"malformed commit proof: {exc}") from exc


class Node:
    """One validator: owns every component and the single event loop that drives them."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.config = NodeConfig.load(self.home / "config.json")
        try:
            self.genesis: Genesis = load_genesis(self.home / "genesis.json")
            self.key = KeyPair.load(self.home / "node_key.json")
            modules = load_modules(self.genesis.module_names)
        except (GenesisError, CryptoError) as exc:
            raise NodeError(str(exc)) from exc
        except ModuleNotInstalled as exc:
            raise NodeError(str(exc)) from exc
        self.chain_id = self.genesis.chain_id
        self.names: dict[bytes, str] = {}
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        try:
            self.store = BlockStore.open(
                self.home / "data" / "ledger.db",
                StoreMemoryLimits(block_cache_mb=self.config.store_cache_mb,
                                  open_files_max=self.config.store_open_files_max))
        except StoreError as exc:
            raise NodeError(str(exc)) from exc
        try:
            self.state = WorldState(self.store.db)
        except StateFormatError as exc:
            self.store.close()
            raise NodeError(f"the data dir {self.home / 'data'}: {exc.reason}") from exc
        self._init_genesis(modules)
        try:
            self.epochs = EpochHistory(self.store.db, self.genesis)
        except EpochError as exc:
            raise NodeError(f"the data dir {self.home / 'data'}: {exc.reason}") from exc
        self._adopt_validators(self.epochs.current)
        self.executor = Executor(self.chain_id, modules)
        self.modules = modules
        self.chain = Chain(self.genesis, self.store, self.state, self.executor, self.primary_of,
                           self.epochs)
        self.mempool = Mempool(
            self.chain_id,
            lambda tx: self.executor.check_admission(tx, self.state.reader(),
                                                     nonce_ahead_max=1000),
            MempoolLimits(txs_max=self.config.mempool_txs_max),
        )
        self.records = RecordLog(self.store.db, records_prefix(self.epochs.current.number))
        # One thread, so record batches are durable in the order they were started.
        self._record_writer = ThreadPoolExecutor(1, thread_name_prefix="record-writer")
        self._held: deque[Action] = deque()  # actions waiting for a record write
        self._writing = False
        self.sequences = CommittedSequences(self.store, self.genesis.hash)
        # Before the replica: its config's `verify` answers from this verifier's cache.
        self.verifier = TxVerifier(self.chain_id, threads=self.config.verify_threads)
        # Started once a peer is far ahead; the verifier sends a catch-up's checks there.
        self.signature_process = SignatureProcess()
        self.verifier.process = self.signature_process
        self._finish_epoch_switch()
        for retired in self.epochs.all()[:-1]:  # a retired set's votes are never needed again
            old_log = RecordLog(self.store.db, records_prefix(retired.number))
            if len(old_log):
                old_log.replace([])
        self.replica: Replica | None = self._restore_replica()
        if self.replica is None:
            log.warning("this node's key is not in the current validator set (epoch %d): it "
                        "follows the chain and votes once a set including it takes over",
                        self.epochs.current.number)
        self._epoch_switches = 0  # lets the job worker drop jobs of a retired replica
        self.waiters = TxWaiters()
        self.evidence: list[dict[str, Any]] = []
        self.gc_frozen_objects = 0  # set by the node process (settle_heap), reported in status
        self.speculations: OrderedDict[bytes, Speculation] = OrderedDict()
        self._decoded: OrderedDict[bytes, tuple[Block, int]] = OrderedDict()  # (block, bytes)
        self._decoded_bytes = 0  # payload bytes of the blocks in _decoded
        self._deferred: dict[int, ValidateProposal] = {}
        self._withdrawn: set[bytes] = set()
        self._peer_seq: dict[bytes, int] = {}
        self._last_catch_up_s = 0.0
        self._stream_peer: bytes | None = None  # whose catch-up stream waits for execution
        self._stream_asked_s = -STREAM_ANSWER_WAIT_S  # when the stream last asked a peer
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._forward: list[bytes] = []
        self._jobs: asyncio.Queue[Action] = asyncio.Queue()
        # Fetched frames (shape-checked) in arrival order, and how many each peer has
        # there; one consumer task at a time takes them, see _on_fetched.
        self._fetched: deque[tuple[bytes, list[FetchedItem]]] = deque()
        self._fetched_waiting: dict[bytes, int] = {}
        # The highest seq of the queued frames that extend what is issued, one after
        # another: the stream asks past it without waiting for their checks (_on_fetched).
        self._queued_high = 0
        self._fetched_consumer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started_ms = int(time.time() * 1000)
        self._started_s = time.monotonic()
        self.p2p: PeerNetwork | None = None
        self.halted: str | None = None

    # -- setup -----------------------------------------------------------------------------
    def _init_genesis(self, modules: Sequence[Any]) -> None:
        existing = self.store.genesis_hash()
        if existing is None:
            try:
                writes, root = build_genesis_state(self.genesis, modules)
            except GenesisError as exc:
                raise NodeError(str(exc)) from exc
            prepared = self.state.prepare(writes, height=0)
            invariant(prepared.root == root, "genesis state root differs between builders")
            self.store.init_genesis(self.genesis.hash, root, prepared.ops)
            self.state.apply_prepared(prepared)
        elif existing != self.genesis.hash:
            raise NodeError(
                f"the data dir {self.home / 'data'} belongs to another genesis "
                f"({existing.hex()[:16]}…, not {self.genesis.hash.hex()[:16]}…)"
            )
        invariant(self.state.height == self.store.tip()[0],
                  f"state height {self.state.height} differs from store tip {self.store.tip()[0]}")

    def _adopt_validators(self, epoch: Epoch) -> None:
        """Take `epoch`'s set as the one this node checks, routes and (maybe) votes in."""
        self.validators = epoch.keys
        self.names.update({v.public_key_bytes: v.name for v in epoch.validators})
        self.is_validator = self.key.public_key in self.validators
        self.index = self.validators.index(self.key.public_key) if self.is_validator else -1

    def _finish_epoch_switch(self) -> None:
        """Record an epoch that was due at the last executed seq but not yet written (a crash
        between executing a checkpoint boundary and recording the set change)."""
        try:
            epoch = due_epoch(self.executed_seq, self.genesis.consensus.checkpoint_interval_blocks,
                              validators_pending(self.state.reader()), self.epochs.current)
        except EpochError as exc:
            raise NodeError(f"the approved validator set cannot take over: {exc.reason}") from exc
        if epoch is not None:
            self.epochs.record(epoch)
            self._adopt_validators(epoch)
            self.records = RecordLog(self.store.db, records_prefix(epoch.number))
            log.warning("validator set of epoch %d takes over from seq %d", epoch.number,
                        epoch.first_seq)

    def _replica_config(self) -> ReplicaConfig:
        params = self.genesis.consensus
        view_ticks = max(1, math.ceil(params.view_change_timeout_ms / TICK_MS))
        epoch = self.epochs.current
        base_seq = epoch.first_seq - 1
        return ReplicaConfig(
            chain_id=epoch.domain(self.chain_id),
            base_seq=base_seq,
            base_state_digest=self.sequences.state_digest_at(base_seq) if base_seq else bytes(32),
            validators=self.validators,
            signer=self.key,
            digest_of=self._digest_of,
            requests_in=self._requests_in,
            # A fetched range's certificates were verified off the loop (_on_fetched): the
            # replica's check of them finds them there instead of running Ed25519 again.
            verify=self.verifier.signatures.verify,
            checkpoint_interval_seqs=params.checkpoint_interval_blocks,
            watermark_window_seqs=max(32, 2 * params.checkpoint_interval_blocks),
            pipeline_window=1,
            batch_requests_max=params.batch_txs_max,
            batch_interval_ticks=max(1, math.ceil(params.batch_interval_ms / TICK_MS)),
            view_timeout_ticks=view_ticks,
            request_timeout_ticks=3 * view_ticks,
            fetch_timeout_ticks=view_ticks,
        )

    def _restore_replica(self) -> Replica | None:
        if not self.is_validator:
            return None
        records = [decode_record(raw) for raw in self.records.load()]
        executed = self.sequences.executed_seq
        return Replica.restore(self._replica_config(), records, executed_seq=executed)

    def _report_executed(self, seq: int, state_digest: bytes) -> None:
        """Tell the replica `seq` is executed, or hand over to the set whose epoch follows it.

        Only a checkpoint boundary can end an epoch, and only by state every node agrees
        on (the pending change at that seq), so all nodes switch at the same sequence.
        """
        try:
            epoch = self._epoch_due_after(seq)
        except EpochError as exc:
            self._halt(f"the approved validator set cannot take over: {exc.reason}")
            return
        self._report_decided(seq, state_digest, epoch)

    def _epoch_due_after(self, seq: int) -> Epoch | None:
        """The epoch starting after `seq`, judged on the state as it is now (which must be
        the state right after `seq`); EpochError when the pending change is corrupt."""
        interval = self.genesis.consensus.checkpoint_interval_blocks
        if seq % interval:
            return None
        return due_epoch(seq, interval, validators_pending(self.state.reader()),
                         self.epochs.current)

    def _report_decided(self, seq: int, state_digest: bytes, epoch: Epoch | None) -> None:
        if epoch is None:
            self.feed(Executed(seq, state_digest))
            return
        self.epochs.record(epoch)  # durable before the new set's replica signs anything
        self._enter_epoch(epoch)

    def _enter_epoch(self, epoch: Epoch) -> None:
        """Retire the old replica (as if it crashed here) and start the new set's one."""
        old = self.validators
        self._adopt_validators(epoch)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._held.clear()  # the old epoch's unsent actions: dropped as a crash would
        while not self._jobs.empty():
            self._jobs.get_nowait()
        self._deferred.clear()
        self._queued_high = 0  # fetched past the switch for the old set: asked again
        self._withdrawn.clear()
        self.speculations.clear()
        self._epoch_switches += 1
        self.records = RecordLog(self.store.db, records_prefix(epoch.number))
        self.replica = self._restore_replica()
        if self.p2p is not None:
            self.p2p.set_validators({v.public_key_bytes: v.p2p_address for v in epoch.validators})
        joined = sorted(self.names[k] for k in set(self.validators) - set(old))
        left = sorted(self.names[k] for k in set(old) - set(self.validators))
        log.warning("epoch %d: validator set changed from seq %d (joined %s, left %s)%s",
                    epoch.number, epoch.first_seq, joined or "none", left or "none",
                    "" if self.is_validator else "; this node no longer votes")
        for peer in [p for p in self._peer_seq if p not in self.validators]:
            del self._peer_seq[peer]  # a departed validator's tip no longer says we lag
        if self.replica is None:
            return
        self.perform(self.replica.start())
        pending = tuple(self.mempool.pending_hashes())
        if pending:
            self.feed(RequestsReceived(pending))

    def primary_of(self, view: int) -> bytes:
        return self.validators[view % len(self.validators)]

    # -- payload helpers given to the replica ---------------------------------------------
    def _block_of(self, payload: bytes) -> Block | None:
        key = sha256(payload)
        known = self._decoded.get(key)
        if known is not None:
            return known[0]
        try:
            block = Block.decode(payload)
        except BlockError:
            return None
        self._decoded[key] = (block, len(payload))
        self._decoded_bytes += len(payload)
        while len(self._decoded) > 1 and (len(self._decoded) > DECODED_BLOCKS_MAX
                                          or self._decoded_bytes > DECODED_BYTES_MAX):
            _, (_, dropped_bytes) = self._decoded.popitem(last=False)
            self._decoded_bytes -= dropped_bytes
        return block

    def _digest_of(self, payload: bytes) -> bytes | None:
        block = self._block_of(payload)
        return None if block is None else block.hash

    def _requests_in(self, payload: bytes) -> list[bytes] | None:
        block = self._block_of(payload)
        return None if block is None else block.tx_hashes()

    # -- status -----------------------------------------------------------------------------
    @property
    def executed_seq(self) -> int:
        return self.sequences.executed_seq

    def status(self) -> dict[str, Any]:
        height, tip = self.store.tip()
        connected = self.p2p.connected_peers() if self.p2p else []
        replica = self.replica
        view = replica.view if replica is not None else 0
        fetch_target = replica.fetch_target if replica is not None else 0
        return {
            "chain_id": self.chain_id,
            "node_id": self.key.public_key.hex(),
            "node_name": self.config.node_name,
            "height": height,
            "last_block_hash": tip.hex(),
            "executed_seq": self.executed_seq,
            "view": view,
            "in_view_change": replica.in_view_change if replica is not None else False,
            "primary": self.names[self.primary_of(view)],
            "validators": [self.names[v] for v in self.validators],
            "validator": self.is_validator,
            "epoch": self.epochs.current.number,
            "connected_peers": sorted(self.names.get(p, p.hex()[:16]) for p in connected),
            "syncing": max([fetch_target, *self._peer_seq.values()])
            > self.executed_seq + 1,
            "mempool_txs": len(self.mempool),
            # Transactions this node has decoded and signature-checked since it started
            # (cache answers not counted): about one per committed tx when the cache works.
            "signatures_checked": self.verifier.checked,
            # The child process that checks a catch-up's signatures: idle until a peer was
            # far ahead, then ready (or broken: the node checks them itself); what it did.
            "signature_process": {"state": self.signature_process.state,
                                  "checked": self.signature_process.checked},
            # Objects settle_heap() took out of garbage collection (0 before it ran).
            "gc_frozen_objects": self.gc_frozen_objects,
            "evidence": len(self.evidence),
            "halted": self.halted,
            # The transport's counters since start: frames and bytes each way, what was
            # dropped (queue full, oversize, expired while a peer was away), closes by reason.
            "p2p": self.p2p.stats() if self.p2p is not None else {},
        }

    async def _health(self) -> dict[str, Any]:
        """GET /health: "ok" only when this node can serve current answers."""
        status = self.status()
        state = "halted" if self.halted else "syncing" if status["syncing"] else "ok"
        return {"status": state, "height": status["height"], "view": status["view"],
                "connected_peers": len(status["connected_peers"])}

    # -- the event loop side --------------------------------------------------------------
    def feed(self, event: Event) -> None:
        """Step the replica and perform what it asks; the only caller of `step`."""
        if self.halted or self.replica is None:  # no replica: not a validator of this set
            return
        view, changing = self.replica.view, self.replica.in_view_change
        self.perform(self.replica.step(event))
        if (view, changing) != (self.replica.view, self.replica.in_view_change):
            if self.replica.in_view_change:
                log.warning("starting view change to view %d", self.replica.view)
            else:
                log.info("entered view %d, primary %s", self.replica.view,
                         self.names[self.primary_of(self.replica.view)])

    def perform(self, actions: list[Action]) -> None:
        """Perform the replica's actions in order; records are written off the loop thread.

        Persist before you speak: no action after a Persist or Compact (in this list or a
        later one) is performed before that record is durable. The synced write runs on
        the writer thread, so the loop keeps admitting txs and reading frames meanwhile;
        records that pile up during one write go out together in the next (group commit).
        """
        if not self._held and not self._writing \
                and not any(isinstance(action, Persist | Compact) for action in actions):
            for action in actions:
                self._perform_one(action)
            return
        self._held.extend(actions)
        self._release_held()

    def _release_held(self) -> None:
        while self._held and not self._writing and not self.halted:
            if isinstance(self._held[0], Persist | Compact):
                self._write_held_records()
            else:
                self._perform_one(self._held.popleft())
        if self.halted:
            self._held.clear()  # a halted node must not speak

    def _write_held_records(self) -> None:
        """Start one synced batch with every record held now; the rest waits for it.

        Writing a record earlier than some action listed before it is safe: that is what
        a crash right after those actions would have left (the sends as if lost).
        """
        steps: list[RecordWrite] = []
        waiting: deque[Action] = deque()
        for action in self._held:
            if isinstance(action, Persist):
                steps.append(RecordWrite((encode_record(action.record),)))
            elif isinstance(action, Compact):
                steps.append(RecordWrite(tuple(encode_record(r) for r in action.records),
                                         replace=True))
            else:
                waiting.append(action)
        self._held = waiting
        self._writing = True
        future = asyncio.get_running_loop().run_in_executor(
            self._record_writer, self.records.write_group, steps)
        future.add_done_callback(self._records_written)

    def _records_written(self, future: asyncio.Future[None]) -> None:
        self._writing = False
        if future.cancelled():
            return
        problem = future.exception()
        if problem is not None:
            self._halt(f"cannot persist consensus records: {problem!r}")
        self._release_held()

    def _perform_one(self, action: Action) -> None:
        if isinstance(action, Send):
            self._send(action)
        elif isinstance(action, SetTimer):
            self._set_timer(action)
        elif isinstance(action, CancelTimer):
            handle = self._timers.pop(action.kind, None)
            if handle is not None:
                handle.cancel()
        elif isinstance(action, BuildProposal | ValidateProposal | Execute):
            # One at a time, in order, on the job worker; a fetched block's signatures
            # were started as its frame was taken (_preverify), its run awaits them.
            self._jobs.put_nowait(action)
        elif isinstance(action, FetchCommitted):
            self._fetch(action)
        elif isinstance(action, ReportEvidence):
            self._evidence(action)

    def _send(self, action: Send) -> None:
        if self.p2p is None:
            return
        frame = {"k": "cons", "m": encode_message(action.message)}
        if action.to == BROADCAST:
            self.p2p.broadcast(frame)
        else:
            self.p2p.send(self.validators[action.to], frame)

    def _set_timer(self, action: SetTimer) -> None:
        old = self._timers.pop(action.kind, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay_s = action.delay_ticks * TICK_MS / 1000
        self._timers[action.kind] = loop.call_later(
            delay_s, self._timer_fired, TimerFired(action.kind, action.token), delay_s,
            time.monotonic())

    def _timer_fired(self, event: TimerFired, delay_s: float, armed_s: float) -> None:
        """Deliver a timer, but hold view-change timers while this node is catching up.

        A node that restarted behind sees requests it cannot yet see ordered and would
        vote out a working primary alone, then sit in a view nobody joins. While f+1 peers
        (so at least one honest) announce a higher executed sequence, or just after start
        before any announcement could arrive, such a timer is re-armed instead; it fires
        once the node has caught up, and the replica then judges progress itself. The hold
        is bounded: a node that cannot catch up must still be able to change view (that is
        also how a lagging replica learns the current view).
        """
        held_s = time.monotonic() - armed_s
        if event.kind in VIEW_TIMERS and self._catching_up() and held_s < TIMER_HOLD_MAX_S:
            self._timers[event.kind] = asyncio.get_running_loop().call_later(
                delay_s, self._timer_fired, event, delay_s, armed_s)
            return
        self._timers.pop(event.kind, None)
        self.feed(event)

    def _catching_up(self) -> bool:
        if time.monotonic() - self._started_s < STARTUP_GRACE_S:
            return True
        ahead = sum(1 for seq in self._peer_seq.values() if seq > self.executed_seq + 1)
        return ahead >= fault_tolerance(len(self.validators)) + 1

    def _evidence(self, action: ReportEvidence) -> None:
        offender = self.names[self.validators[action.offender]]
        log.warning("evidence of equivocation by %s", offender)
        self.evidence.append({"offender": offender,
                              "first": encode_message(action.first).hex(),
                              "second": encode_message(action.second).hex()})
        del self.evidence[:-EVIDENCE_KEPT_MAX]

    # -- peer messages ----------------------------------------------------------------------
    def on_peer_message(self, peer: bytes, message: dict[str, Any]) -> None:
        kind = message.get("k")
        try:
            if kind == "cons":
                raw = message.get("m")
                if not isinstance(raw, bytes):
                    raise MessageError("consensus frame without message bytes")
                self.feed(MessageReceived(self.validators.index(peer), decode_message(raw)))
            elif kind == "txs":
                self._on_forwarded_txs(message.get("txs"))
            elif kind == "fetch":
                self._serve_fetch(peer, message)
            elif kind == "tip":
                self._on_peer_tip(peer, message.get("seq"))
            elif kind == "fetched":
                self._on_fetched(peer, message.get("items"))
            else:
                log.info("dropping peer frame of unknown kind %r from %s", kind, self.names[peer])
        except (LedgerError, ValueError, TypeError) as exc:
            log.info("dropping bad %r frame from %s: %s", kind, self.names[peer], exc)

    def _on_forwarded_txs(self, raws: Any) -> None:
        if not isinstance(raws, list):
            raise MessageError("txs frame needs a list")
        good = [raw for raw in raws[:FORWARD_BATCH_TXS_MAX] if isinstance(raw, bytes)]
        task = asyncio.get_running_loop().create_task(self._admit_gossiped(good))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit_gossiped(self, raws: list[bytes]) -> None:
        for outcome in await self.admit_many(raws, forward=False):
            if isinstance(outcome, TxError) and outcome.code not in (
                    "already_known", "nonce_used"):
                log.debug("gossiped tx refused: %s", outcome)

    # -- transactions -----------------------------------------------------------------------
    async def admit(self, raw: bytes, *, forward: bool = True) -> Tx | TxError:
        """Admit a client's or a peer's transaction; client ones are gossiped to all peers."""
        return (await self.admit_many([raw], forward=forward))[0]

    async def admit_many(self, raws: Sequence[bytes], *,
                         forward: bool = True) -> list[Tx | TxError]:
        """`admit` of each raw, in order: one verifier call and one replica step for all
        (a per-tx task and replica step cost more than the rest of admission)."""
        hashes = [sha256(raw) for raw in raws]
        outcomes: list[Tx | TxError] = [_ALREADY_KNOWN] * len(raws)
        todo = [i for i, tx_hash in enumerate(hashes) if tx_hash not in self.mempool]
        checked = await self.verifier.verify_many([raws[i] for i in todo],
                                                  [hashes[i] for i in todo])
        admitted: list[bytes] = []
        for index, tx in zip(todo, checked, strict=True):
            if not isinstance(tx, TxError):
                added = self.mempool.add_verified(tx)
                if isinstance(added, TxError):
                    self._forget_refused(tx)
                    tx = added
                else:
                    if forward:
                        self._forward.append(tx.raw)
                    admitted.append(tx.hash)
            outcomes[index] = tx
        if admitted:
            self.feed(RequestsReceived(tuple(admitted)))
        return outcomes

    def _forget_refused(self, tx: Tx) -> None:
        """A verified tx the pool refused (e.g. a gossiped copy of one already committed)
        will not be proposed: keeping it in the verifier's cache would only hold memory."""
        if tx.hash not in self.mempool:
            self.verifier.forget([tx.hash])

    def _flush_forward(self) -> None:
        """Gossip new client transactions to every validator.

        Every backup then knows each request, so its censorship timer can fire if the
        primary never proposes it, and the next primary already holds it after a view
        change. Each node still verifies each transaction once (at admission).
        """
        if not self._forward or self.p2p is None:
            return
        batch, self._forward = self._forward, []
        for start in range(0, len(batch), FORWARD_BATCH_TXS_MAX):
            self.p2p.broadcast({"k": "txs", "txs": batch[start:start + FORWARD_BATCH_TXS_MAX]})

    async def _verify(self, raws: Sequence[bytes], *, bulk: bool = False
                      ) -> list[Tx | TxError]:
        """Decode+verify a block's txs; those this node already checked are not redone."""
        return await self.verifier.verify_many(raws, bulk=bulk)

    # -- the application jobs (build, validate, execute), one at a time ------------------
    async def _job_worker(self) -> None:
        carried: Action | None = None
        while True:
            action = carried if carried is not None else await self._jobs.get()
            carried = None
            if self.halted:
                continue
            switches = self._epoch_switches
            # A run re-validates its blocks from scratch: a block this node has already
            # validated (a backup one block behind) is committed from its speculation
            # instead, by _execute, and what follows it forms the run.
            if isinstance(action, Execute) and action.payload \
                    and action.seq == self.executed_seq + 1 and not self._jobs.empty() \
                    and self._cached_speculation(action.digest) is None:
                run = [action]
                while not self._jobs.empty() and len(run) < RUN_BLOCKS_MAX:
                    following = self._jobs.get_nowait()
                    # A run may cross checkpoint boundaries: _execute_run stops at one where
                    # a validator-set change takes over (and that set drops the rest).
                    if not (isinstance(following, Execute) and following.payload
                            and following.seq == run[-1].seq + 1):
                        carried = following
                        break
                    run.append(following)
                if len(run) > 1:
                    await self._execute_run(run)
                    self._continue_fetch()
                    if self._epoch_switches != switches:
                        carried = None  # it was the old set's job
                    continue
            if isinstance(action, BuildProposal):
                self._build(action)
            elif isinstance(action, ValidateProposal):
                await self._validate(action)
            elif isinstance(action, Execute):
                await self._execute(action)
                self._continue_fetch()
            if self._epoch_switches != switches:
                carried = None  # it was the old set's job

    def _remember(self, speculation: Speculation) -> None:
        self.speculations[speculation.block.hash] = speculation
        while len(self.speculations) > 8:
            self.speculations.popitem(last=False)

    def _build(self, action: BuildProposal) -> None:
        """Answer BuildProposal; an empty payload tells the replica there is nothing to build."""
        if action.seq != self.executed_seq + 1:
            log.info("not building seq %d: executed only to %d", action.seq, self.executed_seq)
            self.feed(ProposalBuilt(action.view, action.seq, b""))
            return
        reader = self.state.reader()
        txs = self.mempool.select(self.genesis.consensus.batch_txs_max, PROPOSAL_BYTES_MAX,
                                  lambda address: next_nonce(reader, address))
        if not txs:
            # What the replica asked for was dropped or waits on a nonce gap: withdraw it
            # rather than propose empty blocks; what is still pooled is offered again after
            # the next commit.
            for digest in action.requests:
                if digest in self.mempool:
                    self._withdrawn.add(digest)
                self.feed(RequestWithdrawn(digest))
            self.feed(ProposalBuilt(action.view, action.seq, b""))
            return
        speculation = self.chain.build(action.view, self.key.public_key, txs, _now_ms())
        self._remember(speculation)
        self.feed(ProposalBuilt(action.view, action.seq, speculation.block.encode()))

    async def _validate(self, action: ValidateProposal) -> None:
        if action.seq > self.executed_seq + 1:
            self._deferred[action.seq] = action  # its parent is not executed yet
            return
        if action.seq <= self.executed_seq:
            # A re-proposal of a sequence executed here: valid only if it is what we executed.
            ok = self._executed_digest(action.seq) == action.digest
        else:
            ok = await self._speculate(action.payload, action.digest,
                                       now_ms=_now_ms()) is not None
        self.feed(ProposalValidated(action.view, action.seq, action.digest, ok))

    def _executed_digest(self, seq: int) -> bytes | None:
        found = self.sequences.committed_range(seq, seq, FETCH_BYTES_MAX)
        if not found or found[0].seq != seq:
            return None
        return found[0].block.hash if found[0].block is not None else NULL_DIGEST

    def _cached_speculation(self, digest: bytes) -> Speculation | None:
        """The remembered validation of block `digest`, if it still extends the tip."""
        cached = self.speculations.get(digest)
        if cached is None:
            return None
        height, tip = self.store.tip()
        header = cached.block.header
        return cached if header.height == height + 1 and header.prev_hash == tip else None

    async def _speculate(self, payload: bytes, digest: bytes,
                         now_ms: int | None) -> Speculation | None:
        cached = self._cached_speculation(digest)
        if cached is not None:
            return cached
        try:
            block = Chain.decode_proposal(payload)
            self.chain.check_header(block, now_ms)
            checked = await self._verify(block.txs)
            txs = []
            for item in checked:
                if isinstance(item, TxError):
                    raise ProposalRejected(f"bad transaction in proposal: {item}")
                txs.append(item)
            speculation = self.chain.validate(block, txs, now_ms)
        except ProposalRejected as exc:
            log.warning("refusing proposal %s: %s", digest.hex()[:16], exc.reason)
            return None
        self._remember(speculation)
        return speculation

    async def _execute(self, action: Execute) -> None:
        if action.seq <= self.executed_seq:
            self.feed(Executed(action.seq, self.sequences.state_digest_at(action.seq)))
            return
        invariant(action.seq == self.executed_seq + 1,
                  f"execute seq {action.seq} after {self.executed_seq}")
        cert = CommitCertificate(action.seq, action.certificate.view, action.digest,
                                 action.certificate.signatures)
        if not action.payload:
            self.sequences.record_null(action.seq, proof_to_map(action.certificate))
        else:
            speculation = await self._speculate(action.payload, action.digest, now_ms=None)
            if speculation is None:
                self._halt(f"a quorum committed seq {action.seq} ({action.digest.hex()[:16]}) "
                           "which this node finds invalid: refusing to continue")
                return
            # The block goes live at once (one atomic batch, applied on this thread, so no
            # reader sees part of it); its fsync runs on the writer thread, after any record
            # batch already started there, while the loop goes on. Waiting clients and the
            # replica hear of it only once it is durable.
            self.chain.commit(speculation, cert, sync=False)
            await asyncio.get_running_loop().run_in_executor(self._record_writer,
                                                             self.store.sync)
            self._after_commit(speculation)
        self._report_executed(action.seq, self.store.tip()[1])
        deferred = self._deferred.pop(action.seq + 1, None)
        if deferred is not None:
            self._jobs.put_nowait(deferred)
        for seq in [s for s in self._deferred if s <= action.seq]:
            del self._deferred[seq]

    async def _execute_run(self, run: list[Execute]) -> None:
        """Execute consecutive committed blocks (a catch-up run) with one fsync.

        Consensus checked each certificate and that the payload hashes to its digest
        before asking; here every tx signature (off the loop, see _preverify) and every
        header and hash link (Chain) is checked before that block is written. Executed is
        reported only once the whole run is durable.

        A run crosses checkpoint boundaries (one fsync per run, not per checkpoint
        interval: with 16-block intervals a sync waited ~15 ms for an fsync after every
        ~50 ms of execution). At each boundary the validator-set rule is judged on the
        state right after it, as a single Execute would be; where a new set takes over,
        the run ends there and the rest, the old set's jobs, is dropped with the job
        queue when that set starts.
        """
        blocks: list[Block] = []
        for action in run:
            block = self._block_of(action.payload)
            invariant(block is not None and block.hash == action.digest,
                      f"committed payload of seq {action.seq} does not match its digest")
            assert block is not None
            blocks.append(block)
        checked = await self._verify([raw for block in blocks for raw in block.txs], bulk=True)
        items: list[CertifiedBlock] = []
        bad: str | None = None
        position = 0
        for action, block in zip(run, blocks, strict=True):
            part = checked[position:position + len(block.txs)]
            position += len(block.txs)
            errors = [item for item in part if isinstance(item, TxError)]
            if errors:
                bad = f"bad transaction in block: {errors[0]}"
                break
            cert = CommitCertificate(action.seq, action.certificate.view, action.digest,
                                     action.certificate.signatures)
            items.append((block, cert, [tx for tx in part if isinstance(tx, Tx)]))
        committed: list[Speculation] = []
        rejected: ProposalRejected | None = None
        interval = self.genesis.consensus.checkpoint_interval_blocks
        epoch: Epoch | None = None  # the set taking over after the run's last block
        epoch_problem: str | None = None
        for run_slice in _slices_of_txs(items, RUN_SLICE_TXS, interval):
            done, rejected = self.chain.commit_certified_run(run_slice, sync=False)
            committed.extend(done)
            if rejected is not None:
                break
            boundary = run_slice[-1][1].seq
            if boundary % interval == 0:  # slices end at every boundary
                try:
                    epoch = self._epoch_due_after(boundary)
                except EpochError as exc:
                    epoch_problem = f"the approved validator set cannot take over: {exc.reason}"
                if epoch is not None or epoch_problem is not None:
                    run = run[:len(committed)]
                    break
            # Let the loop read the next fetched range and send its txs to be checked
            # while this run goes on: a run holds the loop for ~20 ms per 100 txs, and a
            # fetched range arrives in many reads, each one a loop iteration.
            await asyncio.sleep(0)
        if committed:
            # On the writer thread, as for a single block: the loop reads and checks the
            # next fetched range during the fsync instead of waiting in it.
            await asyncio.get_running_loop().run_in_executor(self._record_writer,
                                                             self.store.sync)
        for speculation in committed:
            self._after_commit(speculation, log_it=False)
        if committed:
            # One line per run, not per block: a 100k-block sync wrote 100k of them.
            first_block, last_block = committed[0].block, committed[-1].block
            log.info("committed heights %d..%d (%d blocks, %d txs) %s",
                     first_block.header.height, last_block.header.height, len(committed),
                     sum(len(done.txs) for done in committed), last_block.hash.hex()[:16])
        for action, speculation in zip(run, committed, strict=False):
            if epoch_problem is not None and action.seq == run[-1].seq:
                self._halt(epoch_problem)  # as a single Execute of that seq would
                return
            # Decided as each boundary was committed, not now: later blocks of the run
            # may already have changed the pending validator set.
            self._report_decided(action.seq, speculation.block.hash,
                                 epoch if action.seq == run[-1].seq else None)
        if epoch is not None:
            return  # the new set's replica started; the old one's deferred jobs are gone
        if len(committed) < len(run):
            failed = run[len(committed)]
            reason = rejected.reason if rejected is not None else bad
            log.warning("refusing committed block at seq %d: %s", failed.seq, reason)
            self._halt(f"a quorum committed seq {failed.seq} ({failed.digest.hex()[:16]}) "
                       "which this node finds invalid: refusing to continue")
            return
        last = run[-1].seq
        deferred = self._deferred.pop(last + 1, None)
        if deferred is not None:
            self._jobs.put_nowait(deferred)
        for seq in [s for s in self._deferred if s <= last]:
            del self._deferred[seq]

    def _after_commit(self, speculation: Speculation, *, log_it: bool = True) -> None:
        height = speculation.block.header.height
        hashes = [tx.hash for tx in speculation.txs]
        self.mempool.remove(hashes)
        self.verifier.forget(hashes)
        for digest in hashes:
            # Gossip can re-announce a tx between the replica issuing its Execute and this
            # commit; such a request would otherwise stay pending in the replica forever.
            if self.replica is not None and digest in self.replica.pending:
                self.feed(RequestWithdrawn(digest))
        reader = self.state.reader()
        for stale in self.mempool.evict_stale({tx.sender_address for tx in speculation.txs},
                                              lambda address: next_nonce(reader, address)):
            self.feed(RequestWithdrawn(stale))
        withdrawn, self._withdrawn = self._withdrawn, set()
        for digest in withdrawn:
            if digest in self.mempool:
                self.feed(RequestReceived(digest))
        waited = self.waiters.futures
        for index, (tx, receipt) in enumerate(zip(speculation.txs, speculation.result.receipts,
                                                  strict=True)):
            if tx.hash in waited:  # most committed txs have no caller waiting here
                self.waiters.resolve(tx.hash, {"hash": tx.hash.hex(), "height": height,
                                               "index": index,
                                               "receipt": jsonable(receipt.to_wire())})
        self.speculations.pop(speculation.block.hash, None)
        if log_it:
            log.info("committed height %d (%d txs) %s", height, len(hashes),
                     speculation.block.hash.hex()[:16])

    def _halt(self, reason: str) -> None:
        self.halted = reason
        log.critical("HALTED: %s", reason)

    # -- catch-up ---------------------------------------------------------------------------
    def _fetch(self, action: FetchCommitted) -> None:
        if self.p2p is None:
            return
        request = {"k": "fetch", "from": action.from_seq,
                   "to": min(action.to_seq, action.from_seq + FETCH_SEQS_MAX - 1)}
        for peer in action.peers[:2]:
            self.p2p.send(self.validators[peer], request)

    def _serve_fetch(self, peer: bytes, message: dict[str, Any]) -> None:
        first, last = message.get("from"), message.get("to")
        if type(first) is not int or type(last) is not int or not 1 <= first <= last:
            raise MessageError("fetch needs 1 <= from <= to")
        last = min(last, first + FETCH_SEQS_MAX - 1)
        items: list[dict[str, Any]] = []
        for entry in self.sequences.committed_range(first, last, FETCH_BYTES_MAX):
            if entry.block is None:
                items.append({"seq": entry.seq, "payload": b"", "cert": entry.null_proof})
                continue
            cert = entry.certificate
            assert cert is not None
            proof = CommitProof(cert.view, cert.seq, cert.block_hash, cert.signatures)
            items.append({"seq": entry.seq, "payload": entry.block.encode(),
                          "cert": proof_to_map(proof)})
        if items and self.p2p is not None:
            self.p2p.send(peer, {"k": "fetched", "items": items})

    def _announce_tip(self) -> None:
        """Tell peers how far this node has executed, so an idle laggard still catches up.

        Consensus only reveals that a replica is behind through later traffic (checkpoints,
        votes); on a quiet network a restarted or wiped node would wait for it forever.
        """
        if self.p2p is not None:
            self.p2p.broadcast(self._tip_frame())

    def _tip_frame(self) -> dict[str, Any]:
        return {"k": "tip", "seq": self.executed_seq}

    def on_peer_change(self, peer: bytes, connected: bool) -> None:
        """A peer that just connected hears our tip at once, not at the next announcement:
        a restarted or fresh node then starts fetching within a round trip of connecting
        instead of up to TIP_INTERVAL_S later."""
        if connected and self.p2p is not None:
            self.p2p.send(peer, self._tip_frame())

    def _on_peer_tip(self, peer: bytes, seq: Any) -> None:
        if type(seq) is not int or seq < 0:
            raise MessageError("tip needs a sequence number")
        self._peer_seq[peer] = seq
        if seq - self.executed_seq >= SIGNATURE_PROCESS_BEHIND_SEQS and self.replica is not None:
            self.signature_process.start()  # once; a node this far behind has a sync ahead
        now = time.monotonic()
        issued = self._issued_seq()
        if seq > issued and now - self._last_catch_up_s >= CATCH_UP_INTERVAL_S \
                and now - self._stream_asked_s >= STREAM_ANSWER_WAIT_S \
                and issued - self.executed_seq < FETCH_AHEAD_SEQS_MAX and self.p2p is not None:
            self._last_catch_up_s = now
            first = issued + 1  # what is fetched but still executing is not asked again
            self.p2p.send(peer, {"k": "fetch", "from": first,
                                 "to": min(seq, first + FETCH_SEQS_MAX - 1)})

    def _issued_seq(self) -> int:
        """The highest seq this node has received and queued for execution."""
        return self.replica.last_issued if self.replica is not None else self.executed_seq

    def _on_fetched(self, peer: bytes, items: Any) -> None:
        """Queue a fetched frame for its certificates' check off the loop.

        Malformed frames raise here (the peer's frame is dropped and logged as any bad
        frame); good ones are taken by one consumer task, frame after frame in arrival
        order, so a later range is never fed before an earlier one.
        """
        if not isinstance(items, list):
            raise MessageError("fetched frame needs a list")
        frame: list[FetchedItem] = []
        for item in items[:FETCH_SEQS_MAX]:
            if not isinstance(item, dict) or not isinstance(item.get("payload"), bytes) \
                    or type(item.get("seq")) is not int:
                raise MessageError("malformed fetched item")
            frame.append((item["seq"], item["payload"], proof_from_map(item["cert"])))
        if not frame:
            return
        waiting = self._fetched_waiting.get(peer, 0)
        if waiting >= FETCHED_FRAMES_PER_PEER_MAX:
            log.info("dropping a fetched frame from %s: %d of its frames already wait for "
                     "their certificates' check", self.names.get(peer, peer.hex()[:16]),
                     waiting)
            return
        self._fetched_waiting[peer] = waiting + 1
        self._fetched.append((peer, frame))
        # Ask for the next range now, not once this frame's certificates are checked: that
        # check waits for the verifier and for the loop turns a catch-up run gives out
        # only between its slices, and a stream that waited for it kept about one range
        # ahead of execution (runs of ~32 blocks; ~41 since, S11). A frame that does not
        # extend the queued range (a repeat from another peer) asks nothing.
        next_seq = max(self._issued_seq(), self._queued_high) + 1
        if frame[0][0] <= next_seq <= _last_seq(frame):
            self._queued_high = _last_seq(frame)
            self._stream_peer = peer
            self._continue_fetch()
        if self._fetched_consumer is None:
            consumer = asyncio.get_running_loop().create_task(self._consume_fetched(),
                                                              name="fetched")
            consumer.add_done_callback(self._fetched_consumer_done)
            self._fetched_consumer = consumer

    async def _consume_fetched(self) -> None:
        """Check and take queued fetched frames in order, until none is left."""
        try:
            while self._fetched:
                peer, frame = self._fetched.popleft()
                try:
                    await self._verify_certificates(frame)
                    self._take_fetched(frame)
                except (LedgerError, ValueError, TypeError) as exc:  # as on_peer_message
                    log.info("dropping bad 'fetched' frame from %s: %s",
                             self.names.get(peer, peer.hex()[:16]), exc)
                finally:
                    if self._issued_seq() < min(self._queued_high, _last_seq(frame)):
                        # Not all taken (bad certificates, or a gap): the stream asked
                        # past what it has; start again from what is issued, elsewhere.
                        self._queued_high = 0
                        if self._stream_peer == peer:
                            self._stream_peer = None
                    left = self._fetched_waiting.pop(peer, 1) - 1
                    if left > 0:
                        self._fetched_waiting[peer] = left
        finally:
            # Here, not in a done callback: a frame queued between this task's end and
            # its callback would otherwise wait for a consumer that never comes.
            if self._fetched_consumer is asyncio.current_task():
                self._fetched_consumer = None

    def _fetched_consumer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a peer fault (those are caught per frame); the next frame starts
            # a new consumer.
            log.error("fetched-frame consumer failed", exc_info=task.exception())

    async def _verify_certificates(self, frame: list[FetchedItem]) -> None:
        """Verify in one batch, off the loop where the node can (the signature process,
        else the verify pool), the commit signatures the replica will check when `frame`
        is fed: its check then answers from the verifier's cache (~0.3 ms a certificate
        of Ed25519 saved on this thread)."""
        replica = self.replica
        if replica is None or self.halted:
            return  # a follower's Chain checks each certificate itself (_follow)
        triples: dict[tuple[bytes, bytes, bytes], None] = {}  # ordered, no repeats
        for seq, _, proof in frame:
            if seq > replica.last_issued and proof.seq == seq:  # else dropped unchecked
                triples.update(dict.fromkeys(commit_proof_signatures(replica.config, proof)))
        if triples:
            await self.verifier.verify_signatures(list(triples))

    def _take_fetched(self, frame: list[FetchedItem]) -> None:
        """Feed a checked frame to the replica (or follow it); the next range was asked
        for when it arrived (_on_fetched)."""
        fed: list[tuple[int, bytes]] = []
        for seq, payload, proof in frame:
            if self.replica is None:
                if not self._follow(seq, payload, proof):
                    return
            else:
                self.feed(CommittedFetched(seq, payload, proof))
                fed.append((seq, payload))
        if fed:
            self._preverify(fed)

    def _preverify(self, fed: list[tuple[int, bytes]]) -> None:
        """Start checking the signatures of fetched blocks a quorum certified, off the loop,
        while earlier runs execute on this thread: their run finds them checked."""
        if self.replica is None:
            return
        raws: list[bytes] = []
        for seq, payload in fed:
            slot = self.replica.slots.get(seq)
            if seq <= self.executed_seq or slot is None or slot.committed is None \
                    or slot.payload != payload:
                continue  # not taken by the replica (old, or no valid certificate)
            block = self._block_of(payload)
            if block is not None:
                raws.extend(block.txs)
        if raws:
            task = asyncio.get_running_loop().create_task(
                self.verifier.verify_many(raws, bulk=True))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _continue_fetch(self) -> None:
        """Ask the streaming peer for the next range, unless execution is far behind.

        Bounded memory: at most FETCH_AHEAD_SEQS_MAX fetched seqs wait for execution; the
        job worker calls this again as it executes them.
        """
        peer = self._stream_peer
        if peer is None or self.p2p is None:
            return
        first = max(self._issued_seq(), self._queued_high) + 1
        if first - 1 - self.executed_seq >= FETCH_AHEAD_SEQS_MAX:
            return  # resumed by the job worker
        self._stream_peer = None
        if self._peer_seq.get(peer, 0) >= first:
            self._stream_asked_s = time.monotonic()
            self.p2p.send(peer, {"k": "fetch", "from": first,
                                 "to": min(self._peer_seq[peer], first + FETCH_SEQS_MAX - 1)})

    def _follow(self, seq: int, payload: bytes, proof: CommitProof) -> bool:
        """Apply one fetched committed seq on a node that votes in no current set.

        No replica checks the proof here, so the Chain checks it against the set of the
        seq's epoch; False (nothing applied) for a seq out of order or a bad answer.
        """
        if seq != self.executed_seq + 1:
            return seq <= self.executed_seq  # an old one is harmless; a gap ends the batch
        cert = CommitCertificate(seq, proof.view, proof.digest, proof.signatures)
        if proof.seq != seq:
            raise MessageError("fetched proof is for another sequence")
        if not payload:
            problem = self.chain.check_certificate(cert) if proof.digest == NULL_DIGEST \
                else "a null proposal needs the null digest"
            if problem is not None:
                raise MessageError(f"fetched null seq {seq}: {problem}")
            self.sequences.record_null(seq, proof_to_map(proof))
        else:
            try:
                speculation = self.chain.apply_certified(Chain.decode_proposal(payload), cert)
            except ProposalRejected as exc:
                log.warning("refusing fetched seq %d: %s", seq, exc.reason)
                return False
            self._after_commit(speculation)
        self._report_executed(seq, self.store.tip()[1])
        return True

    # -- running ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        host, port = parse_address(self.config.rpc_listen)
        tls_dir = self.home / "tls"
        peers = {v.public_key_bytes: v.p2p_address for v in self.epochs.current.validators}
        self.p2p = PeerNetwork(self.chain_id, self.key, peers, self.config.p2p_listen,
                               self.on_peer_message, cert_path=tls_dir / CERT_FILE_NAME,
                               key_path=tls_dir / KEY_FILE_NAME,
                               on_peer_change=self.on_peer_change)
        await self.p2p.start()
        # The families' read methods (txtypes/queries.py) answer from committed state at
        # the committed height; None from a query is the RPC's not_found.
        from rpc.jsonrpc import NOT_FOUND, RpcAppError
        from txtypes.queries import FAMILY_QUERIES, Query

        def family_read(name: str, query: Query) -> Any:
            async def handler(params: Any) -> Any:
                result = query(self.state.reader(), params, self.store.tip()[0])
                if result is None:
                    raise RpcAppError(NOT_FOUND, f"{name}: nothing found",
                                      params.model_dump(mode="json"))
                return jsonable(result)
            return handler

        extra = {name: (model, family_read(name, query), doc)
                 for name, (model, query, doc) in FAMILY_QUERIES.items()}
        app = create_rpc_app(
            build_node_methods(self, extra=extra, wait_timeout_s=self.config.tx_wait_timeout_s),
            body_bytes_max=self.config.rpc_body_bytes_max, health=self._health)
        rpc = await start_rpc_server(app, host, port)
        worker = asyncio.create_task(self._job_worker(), name="jobs")
        if self.replica is not None:
            self.perform(self.replica.start())
        log.info("node %s up: chain %s height %d, p2p %s, rpc %s", self.config.node_name,
                 self.chain_id, self.store.tip()[0], self.config.p2p_listen, rpc.url)
        next_tip_s = 0.0
        try:
            while not stop.is_set():
                self._flush_forward()
                if time.monotonic() >= next_tip_s:
                    self._announce_tip()
                    next_tip_s = time.monotonic() + TIP_INTERVAL_S
                if worker.done():
                    worker.result()  # a crashed job worker is a programmer error: surface it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TICK_MS / 1000)
        finally:
            log.info("node %s stopping", self.config.node_name)
            worker.cancel()
            consumer = self._fetched_consumer
            self._fetched.clear()
            self._fetched_waiting.clear()
            if consumer is not None:
                consumer.cancel()
                await asyncio.wait([consumer])  # no frame is fed once the store closes
            for handle in self._timers.values():
                handle.cancel()
            await rpc.stop()
            await self.p2p.close()
            self.signature_process.close()
            self.verifier.close()
            self._record_writer.shutdown(wait=True)  # no write may outlive the store
            self.store.close()


_ALREADY_KNOWN = TxError("already_known", "this transaction is already pending")


def settle_heap() -> int:
    """Keep the garbage collector off what a started node holds for life; how many objects.

    The start-up heap (modules, pydantic schemas, aiohttp, the state tree) is ~55,000
    containers that every full collection walked: ~50 ms of CPU each, every few seconds
    under load, about 5% of a validator's CPU and a stop-the-world pause each time. Frozen,
    they are never examined again (a cycle among them would never be freed, so the garbage
    of start-up is collected first).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # Counted here, once: gc.get_freeze_count() walks the whole frozen list (~5 ms).
    return gc.get_freeze_count()


def records_prefix(epoch: int) -> bytes:
    """Each epoch's replica persists under its own prefix: a new set starts with none."""
    return b"cons/rec/" if epoch == 0 else f"cons/rec-e{epoch}/".encode()


def _slices_of_txs(items: list[CertifiedBlock], txs_max: int,
                   interval: int) -> list[list[CertifiedBlock]]:
    """Consecutive slices of `items`, each closed once it holds txs_max txs or more, or
    after the block of a checkpoint boundary (a seq that is a multiple of `interval`)."""
    slices: list[list[CertifiedBlock]] = [[]]
    txs = 0
    for item in items:
        if txs >= txs_max:
            slices.append([])
            txs = 0
        slices[-1].append(item)
        txs += len(item[2])
        if item[1].seq % interval == 0:
            txs = txs_max  # the next block starts a new slice
    if not slices[-1]:
        slices.pop()  # no items at all (a bad tx in the run's first block)
    return slices


def _last_seq(frame: list[FetchedItem]) -> int:
    return max(seq for seq, _, _ in frame)


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- logging and entry points -----------------------------------------------------------------
class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def _serve(home: Path) -> None:
    node = Node(home)
    # The node process's own collector; a Node embedded elsewhere leaves it be.
    node.gc_frozen_objects = settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)


def main(home: Path, *, log_format: str = "text", log_level: str = "INFO") -> int:
    setup_logging(log_format, log_level)
    try:
        asyncio.run(_serve(home))
    except NodeError as exc:
        log.error("cannot start: %s", exc)
        print(f"cityledger: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        print(f"cityledger: error: {exc}", file=sys.stderr)
        return 1
    return 0


def verify_home_chain(home: Path) -> VerifyReport:
    """Offline `verify-chain`: re-check the store of the node in `home`."""
    genesis = load_genesis(Path(home) / "genesis.json")
    store = BlockStore.open(Path(home) / "data" / "ledger.db")
    try:
        epochs = EpochHistory(store.db, genesis)
        report = verify_chain(store, genesis.hash, genesis.chain_id,
                              [v.public_key_bytes for v in genesis.validators], epochs)
        if not report.ok:
            return report
        # The recorded validator-set epochs must be the ones the chain's own state approved.
        state, sequences = WorldState(store.db), CommittedSequences(store, genesis.hash)

        def pending_at_seq(seq: int) -> Any:
            raw, _ = state.prove_at(VALIDATORS_PENDING_KEY, sequences.height_at(seq))
            return None if raw is None else decode_stored(raw)

        problem = verify_epochs(epochs, genesis.consensus.checkpoint_interval_blocks,
                                pending_at_seq)
        if problem is not None:
            return VerifyReport(False, report.blocks_checked, report.tip_height, None, problem)
        return report
    except EpochError as exc:
        return VerifyReport(False, 0, store.tip()[0], None, f"epoch records: {exc.reason}")
    finally:
        store.close()


if __name__ == "__main__":
    main(Path(os.environ.get("CITYLEDGER_HOME", ".")))
