"""Seeded deterministic network simulator for the PBFT replica (DESIGN.md, "Testing").

    python -m consensus.sim --seeds N [--start S] [--nodes 4|7] [--byzantine K]
                            [--faults loss,dup,reorder,partition,crash,byzantine,twins]
                            [--canary] [--canary-amnesia] [--real-crypto]
    python -m consensus.sim --seed S [--verbose]      replay one seed

Every run is a pure function of its seed: one `random.Random` drives delivery order,
delay, loss, duplication, partitions, crashes (also in the middle of a step, after only
part of the actions were performed), restarts from the persisted records, and the
Byzantine replicas. Messages and records go through their real byte encodings.

Before the global stabilization time (GST, drawn from the seed) anything goes; after it
the network is timely and every crashed replica is back. Checked on every step: no two
honest replicas execute different digests at one seq, every executed proposal was
proposed by a primary and is valid, honest execution is gap-free and in order, commit
certificates verify, and no evidence ever names an honest validator. Liveness: every
request is executed by every honest replica within a bounded time after GST.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from consensus.certificates import check_commit_proof
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
    Send,
    SetTimer,
    TimerFired,
    ValidateProposal,
)
from consensus.messages import (
    NULL_DIGEST,
    Checkpoint,
    Commit,
    Message,
    MessageError,
    NewView,
    Prepare,
    PrePrepare,
    decode_message,
    encode_message,
    signed_bytes,
)
from consensus.records import GuardRecord, decode_record, encode_record
from consensus.replica import Replica
from consensus.sim_env import (
    FAULT_KINDS,
    KeyFactory,
    Scenario,
    SimKey,
    digest_of,
    draw_scenario,
    make_payload,
    parse_payload,
    requests_in,
)
from ledger.crypto import KeyPair, sha256
from ledger.quorum import quorum_size

CHAIN_ID = "sim-chain"
LIVENESS_BUDGET_TICKS = 6000
STEP_BUDGET = 400_000
REPLAY_MEMORY = 64


@dataclass
class Host:
    """One process: a replica plus the node around it (store, timers, durable records)."""

    hid: int
    index: int
    key: KeyPair | SimKey
    config: ReplicaConfig
    faulty: bool
    behaviours: list[str]
    replica: Replica | None = None
    up: bool = True
    incarnation: int = 0
    durable: list[bytes] = field(default_factory=list)
    store: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # seq -> digest, payload
    certs: dict[int, CommitProof] = field(default_factory=dict)
    states: dict[int, bytes] = field(default_factory=dict)
    height: int = 0
    timers: dict[str, int] = field(default_factory=dict)
    mempool: dict[bytes, None] = field(default_factory=dict)
    executed_requests: set[bytes] = field(default_factory=set)
    seen: list[bytes] = field(default_factory=list)
    crash_armed: bool = False
    restart_at: int = 0
    forged: dict[int, tuple[bytes, set[int]]] = field(default_factory=dict)
    executed_tick: int = 0
    twin_copy: int = -1  # 0 or 1 for the two replicas sharing one key


@dataclass
class Outcome:
    seed: int
    safety: list[str]
    liveness: list[str]
    steps: int
    ticks: int
    trace: str
    executed: int

    def line(self) -> str:
        if self.safety:
            return f"seed={self.seed} SAFETY {self.safety[0]}"
        if self.liveness:
            return f"seed={self.seed} LIVENESS {self.liveness[0]}"
        return f"seed={self.seed} ok steps={self.steps} ticks={self.ticks} executed={self.executed} trace={self.trace}"


class Simulation:
    def __init__(self, scenario: Scenario, real_crypto: bool = False,
                 amnesia: bool = False, base_seq: int = 0) -> None:
        self.s = scenario
        # base_seq > 0: the validators start a new epoch (ledger/epochs.py) whose history up
        # to base_seq was settled by a previous set; the run must go on from there.
        self.base_seq = base_seq
        self.base_state = sha256(b"epoch base %d" % base_seq) if base_seq else bytes(32)
        # Canary: nodes that drop the signing guard's records, so a restart forgets votes.
        self.amnesia = amnesia
        self.rng = random.Random(f"run:{scenario.seed}")
        self.keys = KeyFactory(random.Random(f"keys:{scenario.seed}"), real_crypto)
        n = scenario.nodes
        validator_keys = [self.keys.make() for _ in range(n)]
        self.outsider = self.keys.make()
        self.validators = tuple(k.public_key for k in validator_keys)
        self.hosts: list[Host] = []
        for index in range(n):
            copies = 2 if index in scenario.twins else 1
            for copy in range(copies):
                faulty = index in scenario.byzantine
                quorum = 0 if faulty else quorum_size(n) + scenario.quorum_delta
                config = self._config(validator_keys[index], quorum)
                host = Host(len(self.hosts), index, validator_keys[index], config, faulty,
                            scenario.behaviours.get(index, []))
                host.height = base_seq
                host.states[base_seq] = self.base_state
                host.replica = Replica(config)
                host.twin_copy = copy if copies == 2 else -1
                self.hosts.append(host)
        self.queue: list[tuple[int, int, int, int, str, Any]] = []
        self.counter = 0
        self.now = 0
        self.steps = 0
        self.trace = hashlib.sha256()
        self.safety: list[str] = []
        self.committed: dict[int, bytes] = {}
        self.proposed: set[bytes] = set()
        self.issued: dict[bytes, None] = {}
        self.decoded: dict[bytes, Message] = {}
        self.mid_step_crashes = 0  # crashes that cut an action list short
        self.restarts = 0
        self.total_requests = scenario.requests_before_gst + scenario.requests_after_gst

    def _config(self, key: KeyPair | SimKey, quorum: int) -> ReplicaConfig:
        s = self.s
        return ReplicaConfig(
            chain_id=CHAIN_ID, validators=self.validators, signer=key, digest_of=digest_of,
            requests_in=requests_in, verify=self.keys.verify,
            checkpoint_interval_seqs=s.checkpoint_interval, watermark_window_seqs=s.watermark_window,
            pipeline_window=s.pipeline_window, batch_requests_max=s.batch_requests_max,
            batch_interval_ticks=3, view_timeout_ticks=30, backoff_exponent_max=4,
            request_timeout_ticks=90, fetch_timeout_ticks=15, fetch_seqs_max=8,
            stash_per_sender_max=64, quorum=quorum,
            base_seq=self.base_seq, base_state_digest=self.base_state,
        )

    # -- scheduling -------------------------------------------------------------------------

    def _at(self, tick: int, hid: int, kind: str, data: Any, bound: bool = True) -> None:
        incarnation = self.hosts[hid].incarnation if bound else -1
        self.counter += 1
        heapq.heappush(self.queue, (tick, self.counter, hid, incarnation, kind, data))

    def _after_gst(self) -> bool:
        return self.now >= self.s.gst_tick

    def _delay(self) -> int:
        if self._after_gst():
            return self.rng.randint(1, 2)
        return self.rng.randint(1, self.s.delay_max_ticks)

    def _partitioned(self, a: int, b: int) -> bool:
        ia, ib = self.hosts[a].index, self.hosts[b].index
        for start, end, side in self.s.partitions:
            if start <= self.now < end and (ia in side) != (ib in side):
                return True
        # Before GST each twin talks to its own half of the network: that splits them.
        for twin, other in ((self.hosts[a], self.hosts[b]), (self.hosts[b], self.hosts[a])):
            if twin.twin_copy >= 0 and not self._after_gst() and other.hid % 2 != twin.twin_copy:
                return True
        return False

    def _transmit(self, src: int, dst: int, data: bytes) -> None:
        if not self._after_gst():
            if self._partitioned(src, dst) or self.rng.random() < self.s.loss:
                return
            if self.rng.random() < self.s.dup:
                self._at(self.now + self._delay(), dst, "msg", data, bound=False)
        self._at(self.now + self._delay(), dst, "msg", data, bound=False)

    def _send(self, host: Host, to: int, data: bytes) -> None:
        for other in self.hosts:
            if other.hid != host.hid and (to == BROADCAST or other.index == to):
                self._transmit(host.hid, other.hid, data)

    # -- setting up a run -----------------------------------------------------------------

    def _schedule_world(self) -> None:
        s = self.s
        for i in range(s.requests_before_gst):
            self._issue(self.rng.randint(0, s.gst_tick), i)
        for i in range(s.requests_after_gst):
            self._issue(s.gst_tick + self.rng.randint(0, 5), s.requests_before_gst + i)
        for index, crash_at, restart_at in s.crashes:
            for host in self.hosts:
                if host.index == index:
                    self._at(crash_at, host.hid, "crash", restart_at, bound=False)
        for host in self.hosts:
            if host.faulty and host.behaviours:
                self._at(self.rng.randint(1, 10), host.hid, "byzantine", None, bound=False)
            assert host.replica is not None
            self._apply(host, host.replica.start())

    def _issue(self, tick: int, number: int) -> None:
        digest = sha256(f"request:{self.s.seed}:{number}".encode())
        self.issued[digest] = None
        for host in self.hosts:
            self._at(tick + self.rng.randint(0, 3), host.hid, "request", digest, bound=False)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> Outcome:
        self._schedule_world()
        deadline = self.s.gst_tick + LIVENESS_BUDGET_TICKS
        liveness: list[str] = []
        while self.queue:
            tick, _, hid, incarnation, kind, data = heapq.heappop(self.queue)
            if tick > deadline:
                break
            self.now = tick
            host = self.hosts[hid]
            if incarnation not in (-1, host.incarnation):
                continue
            self.trace.update(f"{tick}:{hid}:{kind}:".encode())
            if isinstance(data, bytes):
                self.trace.update(data)
            self._handle(host, kind, data)
            if self.safety:
                break
            if self.now >= self.s.gst_tick and self._all_done():
                break
            if self.steps > STEP_BUDGET:
                liveness.append(f"step budget {STEP_BUDGET} exhausted at tick {self.now}")
                break
        if not self.safety and not liveness and not self._all_done():
            lagging = [f"host{h.hid}:{len(h.executed_requests)}/{self.total_requests}"
                       f"(view {h.replica.view if h.replica else '-'})"
                       for h in self.hosts if not h.faulty]
            liveness.append(f"not all requests executed {LIVENESS_BUDGET_TICKS} ticks after GST: "
                            + " ".join(lagging))
        return Outcome(self.s.seed, self.safety, liveness, self.steps, self.now,
                       self.trace.hexdigest()[:16], len(self.committed))

    def _all_done(self) -> bool:
        return all(len(h.executed_requests) == self.total_requests for h in self.hosts
                   if not h.faulty)

    def _handle(self, host: Host, kind: str, data: Any) -> None:
        if kind == "request":
            if data not in host.executed_requests:
                host.mempool[data] = None
                if host.up:
                    self._step(host, RequestReceived(data))
            return
        if kind == "crash":
            self._crash(host, data, immediate=self.rng.random() >= self.s.mid_step_crash)
            return
        if kind == "restart":
            self._restart(host)
            return
        if not host.up:
            return
        if kind == "msg":
            if host.faulty:
                host.seen.append(data)
                del host.seen[:-REPLAY_MEMORY]
            # Decode each distinct frame once (a broadcast reaches n-1 replicas).
            message = self.decoded.get(data)
            if message is None:
                try:
                    message = decode_message(data)
                except MessageError:
                    return
                self.decoded[data] = message
            self._step(host, MessageReceived(-1, message))
        elif kind == "timer":
            timer_kind, token = data
            if host.timers.get(timer_kind) == token:
                del host.timers[timer_kind]
                self._step(host, TimerFired(timer_kind, token))
        elif kind == "byzantine":
            self._misbehave(host)
            self._at(self.now + self.rng.randint(3, 15), host.hid, "byzantine", None, bound=False)
        else:
            assert isinstance(data, ProposalBuilt | ProposalValidated | Executed | CommittedFetched)
            self._step(host, data)

    def _step(self, host: Host, event: Event) -> None:
        assert host.replica is not None
        self.steps += 1
        self._apply(host, host.replica.step(event))

    # -- crash and restart ----------------------------------------------------------------

    def _crash(self, host: Host, restart_at: int, immediate: bool) -> None:
        if not host.up:
            return
        host.restart_at = max(restart_at, self.now + 1)
        if immediate:
            self._go_down(host)
        else:
            host.crash_armed = True  # crash in the middle of this host's next step

    def _go_down(self, host: Host) -> None:
        host.up = False
        host.crash_armed = False
        host.replica = None
        host.timers = {}
        host.incarnation += 1
        self._at(min(host.restart_at, self.s.gst_tick), host.hid, "restart", None, bound=False)

    def _restart(self, host: Host) -> None:
        if host.up:
            return
        host.up = True
        self.restarts += 1
        records = [decode_record(data) for data in host.durable]
        host.replica = Replica.restore(host.config, records, executed_seq=host.height)
        self._apply(host, host.replica.start())
        for digest in list(host.mempool):
            if digest not in host.executed_requests and host.up:
                self._step(host, RequestReceived(digest))

    # -- performing actions (the node's job) ------------------------------------------------

    def _apply(self, host: Host, actions: list[Action]) -> None:
        cut = len(actions)
        if host.crash_armed and actions:  # crash inside the next step that does something
            cut = self.rng.randint(0, len(actions) - 1)
            self.mid_step_crashes += 1
        for action in actions[:cut]:
            self._perform(host, action)
            if not host.up:
                return
        if host.crash_armed and actions:
            self._go_down(host)

    def _perform(self, host: Host, action: Action) -> None:
        if isinstance(action, Send):
            self._on_send(host, action)
        elif isinstance(action, Persist):
            if not (self.amnesia and isinstance(action.record, GuardRecord)):
                host.durable.append(encode_record(action.record))
        elif isinstance(action, Compact):
            host.durable = [encode_record(r) for r in action.records
                            if not (self.amnesia and isinstance(r, GuardRecord))]
        elif isinstance(action, SetTimer):
            host.timers[action.kind] = action.token
            self._at(self.now + action.delay_ticks, host.hid, "timer", (action.kind, action.token))
        elif isinstance(action, CancelTimer):
            host.timers.pop(action.kind, None)
        elif isinstance(action, BuildProposal):
            payload = make_payload(action.seq, host.hid, list(action.requests))
            self._at(self.now + self.rng.randint(0, 2), host.hid, "built",
                     ProposalBuilt(action.view, action.seq, payload))
        elif isinstance(action, ValidateProposal):
            ok = self._valid(action.seq, action.payload)
            if action.seq in host.store:  # already executed: only that very block is valid
                ok = host.store[action.seq][0] == action.digest
            self._at(self.now + self.rng.randint(0, 2), host.hid, "validated",
                     ProposalValidated(action.view, action.seq, action.digest, ok))
        elif isinstance(action, Execute):
            self._execute(host, action)
        elif isinstance(action, FetchCommitted):
            self._serve_fetch(host, action)
        elif isinstance(action, ReportEvidence) and action.offender not in self.s.byzantine:
            self.safety.append(f"host{host.hid} reported evidence against honest "
                               f"validator {action.offender}")

    def _valid(self, seq: int, payload: bytes) -> bool:
        if not payload:
            return True
        fields = parse_payload(payload)
        return (fields is not None and fields["seq"] == seq
                and all(r in self.issued for r in fields["reqs"]))

    def _execute(self, host: Host, action: Execute) -> None:
        seq = action.seq
        if seq != host.height + 1:
            if not host.faulty:
                self.safety.append(f"host{host.hid} executed seq {seq} after {host.height}")
            return
        if not host.faulty:
            self._check_execution(host, action)
        host.store[seq] = (action.digest, action.payload)
        host.certs[seq] = action.certificate
        state = sha256(host.states.get(seq - 1, b"genesis") + action.digest)
        host.states[seq] = state
        host.height = seq
        included = (requests_in(action.payload) or []) if action.payload else []
        for request in included:
            host.mempool.pop(request, None)
            if request in self.issued:
                host.executed_requests.add(request)
        # Executed reports reach the replica in order, like the node's single executor.
        host.executed_tick = max(host.executed_tick, self.now + self.rng.randint(0, 1))
        self._at(host.executed_tick, host.hid, "executed", Executed(seq, state))

    def _check_execution(self, host: Host, action: Execute) -> None:
        seq, digest = action.seq, action.digest
        agreed = self.committed.setdefault(seq, digest)
        if agreed != digest:
            self.safety.append(f"seq {seq}: host{host.hid} executed {digest.hex()[:12]}, "
                               f"another honest replica {agreed.hex()[:12]}")
        if digest != NULL_DIGEST and digest not in self.proposed:
            self.safety.append(f"seq {seq}: host{host.hid} executed a digest no primary proposed")
        if not self._valid(seq, action.payload) or (action.payload and digest_of(action.payload) != digest):
            self.safety.append(f"seq {seq}: host{host.hid} executed an invalid proposal")
        proof = action.certificate
        if (proof.seq, proof.digest) != (seq, digest) or check_commit_proof(host.config, proof):
            self.safety.append(f"seq {seq}: host{host.hid} executed without a valid certificate")

    def _serve_fetch(self, host: Host, action: FetchCommitted) -> None:
        peers = [h for h in self.hosts if h.index in action.peers and h.up and h.hid != host.hid]
        if not peers:
            return
        server = self.rng.choice(peers)
        for seq in range(action.from_seq, action.to_seq + 1):
            if seq not in server.store:
                return
            if not self._after_gst() and self.rng.random() < self.s.loss:
                continue
            digest, payload = server.store[seq]
            cert = server.certs[seq]
            if server.faulty and "bad-fetch" in server.behaviours:
                if self.rng.random() < 0.5:
                    payload = make_payload(seq, 99, [])
                else:
                    cert = CommitProof(cert.view, seq, sha256(payload), cert.signatures)
            self._at(self.now + self._delay(), host.hid, "fetched", CommittedFetched(seq, payload, cert))

    # -- Byzantine behaviour ----------------------------------------------------------------

    def _on_send(self, host: Host, action: Send) -> None:
        message = action.message
        if isinstance(message, PrePrepare):
            self.proposed.add(message.digest)
        elif isinstance(message, NewView):
            self.proposed.update(pp.digest for pp in message.pre_prepares)
        if not host.faulty or not host.behaviours:
            self._send(host, action.to, encode_message(message))
            return
        if "mute-primary" in host.behaviours and isinstance(message, PrePrepare | NewView):
            return
        if "equivocate" in host.behaviours and isinstance(message, PrePrepare) and message.payload:
            self._equivocate(host, message)
            return
        if isinstance(message, Commit) and message.seq in host.forged:
            forged_digest, group = host.forged[message.seq]
            forged = self._sign(host, Commit(message.view, message.seq, forged_digest, host.index, b""))
            for other in self.hosts:
                if other.hid != host.hid:
                    chosen = forged if other.hid in group else message
                    self._transmit(host.hid, other.hid, encode_message(chosen))
            return
        self._send(host, action.to, encode_message(message))

    def _sign(self, host: Host, message: Any) -> Any:
        """Sign as this Byzantine host, or with the outsider's key when claiming another."""
        signer = self.outsider if message.sender != host.index else host.key
        return replace(message, signature=signer.sign(signed_bytes(message, CHAIN_ID)))

    def _equivocate(self, host: Host, pp: PrePrepare) -> None:
        requests = requests_in(pp.payload or b"") or []
        alternative = make_payload(pp.seq, host.hid + 1000, list(reversed(requests)))
        forged = self._sign(host, PrePrepare(pp.view, pp.seq, sha256(alternative), alternative,
                                             host.index, b""))
        self.proposed.add(forged.digest)
        group = {h.hid for h in self.hosts if h.hid != host.hid and self.rng.random() < 0.5}
        host.forged[pp.seq] = (forged.digest, group)
        # Vote for both at once, each side seeing only "its" proposal.
        commit = self._sign(host, Commit(pp.view, pp.seq, forged.digest, host.index, b""))
        real_commit = self._sign(host, Commit(pp.view, pp.seq, pp.digest, host.index, b""))
        for other in self.hosts:
            if other.hid == host.hid:
                continue
            if other.hid in group:
                self._transmit(host.hid, other.hid, encode_message(forged))
                self._transmit(host.hid, other.hid, encode_message(commit))
            else:
                self._transmit(host.hid, other.hid, encode_message(pp))
                self._transmit(host.hid, other.hid, encode_message(real_commit))

    def _misbehave(self, host: Host) -> None:
        if not host.up or host.replica is None:
            return
        replica = host.replica
        targets = [h.hid for h in self.hosts if h.hid != host.hid]
        behaviours = host.behaviours
        if "garbage" in behaviours:
            seq = replica.low_seq + self.rng.randint(1, 3)
            junk = sha256(self.rng.getrandbits(64).to_bytes(8, "big"))
            kind = self.rng.choice([Prepare, Commit])
            vote = self._sign(host, kind(replica.view, seq, junk, host.index, b""))
            ckpt_seq = (replica.low_seq // host.config.checkpoint_interval_seqs + 1
                        + self.rng.randint(0, 3)) * host.config.checkpoint_interval_seqs
            checkpoint = self._sign(host, Checkpoint(ckpt_seq, junk, host.index, b""))
            for message in (vote, checkpoint):
                self._transmit(host.hid, self.rng.choice(targets), encode_message(message))
        if "replay" in behaviours and host.seen:
            for _ in range(3):
                self._transmit(host.hid, self.rng.choice(targets), self.rng.choice(host.seen))
        if "non-validator" in behaviours:
            claimed = self.rng.randrange(self.s.nodes)
            junk = sha256(self.rng.getrandbits(64).to_bytes(8, "big"))
            forged_vote = self._sign(host, Commit(replica.view, replica.last_issued + 1, junk,
                                                  claimed, b""))
            payload = make_payload(replica.last_issued + 1, 77, [])
            forged_pp = self._sign(host, PrePrepare(replica.view, replica.last_issued + 1,
                                                    sha256(payload), payload, claimed, b""))
            if claimed == host.index:
                return
            for message in (forged_vote, forged_pp):
                self._transmit(host.hid, self.rng.choice(targets), encode_message(message))


def run_seed(seed: int, nodes: int = 4, byzantine: int | None = None,
             faults: frozenset[str] = FAULT_KINDS, canary: bool = False,
             real_crypto: bool = False, amnesia: bool = False, base_seq: int = 0) -> Outcome:
    scenario = draw_scenario(seed, nodes, byzantine, faults, canary)
    return Simulation(scenario, real_crypto=real_crypto, amnesia=amnesia,
                      base_seq=base_seq).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="replay exactly this seed")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--byzantine", type=int, default=None, help="faulty validators (default f)")
    parser.add_argument("--faults", default=",".join(sorted(FAULT_KINDS)),
                        help="comma-separated subset of " + ",".join(sorted(FAULT_KINDS)))
    parser.add_argument("--canary", action="store_true", help="weaken the quorum by one")
    parser.add_argument("--canary-amnesia", action="store_true",
                        help="nodes lose the signing guard's records across restarts")
    parser.add_argument("--real-crypto", action="store_true", help="Ed25519 instead of sim keys")
    parser.add_argument("--verbose", action="store_true", help="print every seed's line")
    parser.add_argument("--base-seq", type=int, default=0,
                        help="start as a new validator-set epoch after this seq (multiple of 12)")
    args = parser.parse_args(argv)
    if args.base_seq < 0 or args.base_seq % 12:
        parser.error("--base-seq must be a non-negative multiple of 12 (every interval divides it)")
    faults = frozenset(f for f in args.faults.split(",") if f)
    unknown = faults - FAULT_KINDS
    if unknown:
        parser.error(f"unknown faults: {sorted(unknown)}")
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    safety = liveness = 0
    for seed in seeds:
        outcome = run_seed(seed, args.nodes, args.byzantine, faults, args.canary, args.real_crypto,
                           args.canary_amnesia, args.base_seq)
        safety += bool(outcome.safety)
        liveness += bool(outcome.liveness and not outcome.safety)
        if outcome.safety or outcome.liveness or args.verbose or args.seed is not None:
            print(f"nodes={args.nodes} {outcome.line()}", flush=True)
    print(f"seeds={len(seeds)} safety_violations={safety} liveness_failures={liveness}")
    return 1 if safety or liveness else 0


if __name__ == "__main__":
    sys.exit(main())
