"""The PBFT replica: a pure, deterministic state machine (DESIGN.md principle 1).

    replica = Replica(config)                       # or Replica.restore(config, records, ...)
    actions = replica.start()                       # once, after construction or restore
    actions = replica.step(event)                   # for every event, one at a time

No sockets, clock, disk or randomness: the node feeds events and performs actions, in
list order. Events (consensus/events.py):
    RequestReceived(digest)       a client request this node knows (gossiped to all nodes;
                                  the node itself forwards txs to the primary)
    RequestWithdrawn(digest)      the node dropped that request (invalid, expired)
    TimerFired(kind, token)       a timer set by SetTimer expired
    MessageReceived(peer, msg)    a decoded peer message (consensus.messages.decode_message)
    ProposalBuilt(view, seq, payload)          answer to BuildProposal
    ProposalValidated(view, seq, digest, ok)   answer to ValidateProposal (may come late)
    Executed(seq, state_digest)   the node durably executed seq (in order, also for null
                                  proposals); state_digest is what checkpoints sign
    CommittedFetched(seq, payload, certificate) answer to FetchCommitted, one per seq
Actions:
    Send(to | BROADCAST, msg)     BROADCAST = every other validator
    Persist(record)               store durably BEFORE performing any later action of the
                                  same list ("persist before you speak")
    Compact(records)              may atomically replace all stored records with these
    BuildProposal(view, seq, request digests)       primary only
    ValidateProposal(view, seq, digest, payload)    the PREPARE is sent only after ok=True;
                                  for a seq the node already executed, ok = same block
    Execute(seq, view, digest, payload, certificate) strictly in seq order; payload b""
                                  is a null proposal (no-op, still answer Executed);
                                  after a restart the node may see a seq again that it
                                  already executed: skip it and answer Executed
    SetTimer(kind, token, delay_ticks) / CancelTimer(kind)
    FetchCommitted(from_seq, to_seq, peers)    answer with CommittedFetched per seq
    ReportEvidence(offender, first, second)    two conflicting signed messages

Persistence contract: every record from a Persist action must be durable before the
next action is performed. Records hold the signing guard (every signature this replica
ever made, per phase/view/seq), its view, its own VIEW-CHANGE and NEW-VIEW, its prepared
certificates, the stable checkpoint and checkpointed state digests. `Replica.restore`
rebuilds from all of them in order; pass `executed_seq` (the node's durable height) so
the replica knows how far execution got. Nothing else needs to survive a crash.
"""

from __future__ import annotations

import itertools

from consensus.certificates import (
    check_checkpoint_proof,
    check_commit_proof,
    check_view_change,
    payload_matches,
    signature_ok,
)
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
    RequestWithdrawn,
    Send,
    SetTimer,
    TimerFired,
    ValidateProposal,
)
from consensus.guard import SigningGuard, SigningRefused
from consensus.messages import (
    GENESIS_PROOF,
    NULL_DIGEST,
    NULL_PAYLOAD,
    PAYLOAD_BYTES_MAX,
    Checkpoint,
    CheckpointProof,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    signed_bytes,
)
from consensus.records import (
    ExecutedRecord,
    GuardRecord,
    NewViewRecord,
    OwnViewChangeRecord,
    PreparedRecord,
    Record,
    StableRecord,
    ViewRecord,
)
from consensus.view_change import NewViewPlan, plan_new_view
from ledger.errors import invariant

PROGRESS_TIMER = "progress"  # view change when work is outstanding and nothing executes
BATCH_TIMER = "batch"  # primary: propose a partial batch
REQUEST_TIMER = "request"  # censorship: a known request never proposed
FETCH_TIMER = "fetch"  # catch-up: (re)issue FetchCommitted
EVIDENCE_MAX = 64


class Slot:
    """Everything known about one sequence number."""

    __slots__ = ("seq", "view", "pre_prepare", "validation", "prepares", "commits",
                 "sent_commit", "prepared", "committed", "payload")

    def __init__(self, seq: int, view: int) -> None:
        self.seq = seq
        self.view = view
        self.pre_prepare: PrePrepare | None = None
        self.validation = "none"  # none | pending | ok
        self.prepares: dict[int, Prepare] = {}
        self.commits: dict[int, Commit] = {}
        self.sent_commit = False
        self.prepared: PreparedCert | None = None  # highest-view prepared certificate
        self.committed: CommitProof | None = None
        self.payload: bytes | None = None  # the committed digest's payload, once known

    def enter_view(self, view: int) -> None:
        if view != self.view:
            self.view = view
            self.pre_prepare = None
            self.validation = "none"
            self.prepares = {}
            self.commits = {}
            self.sent_commit = False


class Replica:
    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.me = config.me
        self.guard = SigningGuard(config.signer)
        self.view = 0
        self.in_view_change = False
        self.view_change_attempts = 0
        self.low_seq = 0  # stable checkpoint (low watermark)
        self.stable_proof: CheckpointProof = GENESIS_PROOF
        self.last_executed = 0  # reported by the node
        self.last_issued = 0  # Execute actions emitted
        self.state_digests: dict[int, bytes] = {}
        self.last_state_digest: bytes | None = None
        self.slots: dict[int, Slot] = {}
        self.checkpoint_votes: dict[int, dict[int, Checkpoint]] = {}
        self.claimed: dict[int, int] = {}  # sender -> highest seq it signed a checkpoint for
        self.pending: dict[bytes, int] = {}  # request digest -> arrival number
        self.arrivals = 0
        self.in_flight: dict[bytes, int] = {}  # request digest -> seq proposing it
        # Pending requests not in flight, in arrival order: kept alongside `pending` and
        # `in_flight` so proposing and timer upkeep never scan every pending request.
        self.queued: dict[bytes, None] = {}
        self.next_seq = 1
        self.building: tuple[int, int] | None = None
        self.batch_due = False
        self.timers: dict[str, int] = {}
        self.timer_tokens = 0
        self.progress_mark = 0
        self.request_mark = 0
        self.view_changes: dict[int, ViewChange] = {}  # latest verified, per sender
        self.own_new_view: NewView | None = None
        self.stash: dict[int, list[PrePrepare | Prepare | Commit]] = {}
        self.fetch_target = 0
        self.fetch_peers: tuple[int, ...] = ()
        self.evidence: list[ReportEvidence] = []
        self._reported: set[tuple[int, str, int, int]] = set()
        self._out: list[Action] = []

    # -- construction from persisted state -----------------------------------------------

    @classmethod
    def restore(cls, config: ReplicaConfig, records: list[Record], *,
                executed_seq: int = 0) -> Replica:
        """Rebuild from every record this replica asked to persist, in order."""
        replica = cls(config)
        prepared: dict[int, PreparedCert] = {}
        for record in records:
            if isinstance(record, GuardRecord):
                replica.guard.load(record)
            elif isinstance(record, ViewRecord):
                if record.view >= replica.view:
                    replica.view, replica.in_view_change = record.view, record.in_view_change
            elif isinstance(record, OwnViewChangeRecord):
                known = replica.view_changes.get(replica.me)
                if known is None or record.view_change.new_view > known.new_view:
                    replica.view_changes[replica.me] = record.view_change
            elif isinstance(record, NewViewRecord):
                if replica.own_new_view is None or record.new_view.view > replica.own_new_view.view:
                    replica.own_new_view = record.new_view
            elif isinstance(record, PreparedRecord):
                cert = record.cert
                if cert.seq not in prepared or cert.view > prepared[cert.seq].view:
                    prepared[cert.seq] = cert
            elif isinstance(record, StableRecord):
                if record.proof.seq > replica.low_seq:
                    replica.low_seq, replica.stable_proof = record.proof.seq, record.proof
            else:
                replica.state_digests[record.seq] = record.state_digest
                replica.last_executed = max(replica.last_executed, record.seq)
        replica.last_executed = max(replica.last_executed, executed_seq)
        replica.last_issued = replica.last_executed
        for seq, cert in prepared.items():
            if seq > replica.low_seq:
                replica._slot(seq).prepared = cert
        replica.next_seq = max(replica.guard.highest_seq("pre-prepare", replica.view),
                               replica.low_seq, replica.last_executed) + 1
        return replica

    def start(self) -> list[Action]:
        """Actions to perform once after construction or restore (timers, resends)."""
        if self.in_view_change:
            nv = self.own_new_view
            own_vc = self.view_changes.get(self.me)
            if nv is not None and nv.view == self.view:
                self._out.append(Send(BROADCAST, nv))
                self._install_new_view(nv, plan_new_view(list(nv.view_changes)))
            elif own_vc is not None and own_vc.new_view == self.view:
                self._out.append(Send(BROADCAST, own_vc))
                self._arm(PROGRESS_TIMER, self._view_timeout())
            else:
                self._start_view_change(self.view + 1)
        self._after_step()
        return self._flush()

    def snapshot_records(self) -> list[Record]:
        """The minimal record set equivalent to everything persisted so far."""
        records: list[Record] = list(self.guard.records())
        records.append(ViewRecord(self.view, self.in_view_change))
        own_vc = self.view_changes.get(self.me)
        if own_vc is not None and own_vc.new_view >= self.view:
            records.append(OwnViewChangeRecord(own_vc))
        if self.own_new_view is not None and self.own_new_view.view >= self.view:
            records.append(NewViewRecord(self.own_new_view))
        for seq in sorted(self.slots):
            cert = self.slots[seq].prepared
            if cert is not None and seq > self.low_seq:
                records.append(PreparedRecord(cert))
        records.append(StableRecord(self.stable_proof))
        for seq in sorted(self.state_digests):
            records.append(ExecutedRecord(seq, self.state_digests[seq]))
        return records

    # -- the one entry point ---------------------------------------------------------------

    def step(self, event: Event) -> list[Action]:
        if isinstance(event, MessageReceived):
            self._on_message(event.message)
        elif isinstance(event, RequestReceived):
            self._on_request(event.digest)
        elif isinstance(event, RequestWithdrawn):
            self.pending.pop(event.digest, None)
            self.queued.pop(event.digest, None)
        elif isinstance(event, TimerFired):
            self._on_timer(event)
        elif isinstance(event, ProposalBuilt):
            self._on_built(event)
        elif isinstance(event, ProposalValidated):
            self._on_validated(event)
        elif isinstance(event, Executed):
            self._on_executed(event)
        elif isinstance(event, CommittedFetched):
            self._on_fetched(event)
        self._after_step()
        return self._flush()

    # -- small helpers ---------------------------------------------------------------------

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _high_seq(self) -> int:
        return self.low_seq + self.config.watermark_window_seqs

    def _in_window(self, seq: int) -> bool:
        return self.low_seq < seq <= self._high_seq()

    def _slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq, self.view)
        return slot

    def _is_primary(self) -> bool:
        return self.config.primary(self.view) == self.me

    def _sign(self, domain: str, view: int, seq: int, message_bytes: bytes) -> bytes:
        signature, record = self.guard.sign(domain, view, seq, message_bytes)
        if record is not None:
            self._out.append(Persist(record))
        return signature

    def _signed_vote(self, kind: type[Prepare] | type[Commit], view: int, seq: int,
                     digest: bytes) -> Prepare | Commit:
        unsigned = kind(view, seq, digest, self.me, bytes(64))
        signature = self._sign(unsigned.kind, view, seq, signed_bytes(unsigned, self.config.chain_id))
        return kind(view, seq, digest, self.me, signature)

    def _view_timeout(self) -> int:
        exponent = min(self.view_change_attempts, self.config.backoff_exponent_max)
        return self.config.view_timeout_ticks << exponent

    def _arm(self, kind: str, delay_ticks: int) -> None:
        self.timer_tokens += 1
        self.timers[kind] = self.timer_tokens
        self._out.append(SetTimer(kind, self.timer_tokens, delay_ticks))

    def _disarm(self, kind: str) -> None:
        if self.timers.pop(kind, None) is not None:
            self._out.append(CancelTimer(kind))

    def _report(self, first: Message, second: Message) -> None:
        key = (second.sender, second.kind, getattr(second, "view", 0), getattr(second, "seq", 0))
        if key in self._reported or not signature_ok(self.config, second):
            return
        self._reported.add(key)
        evidence = ReportEvidence(second.sender, first, second)
        if len(self.evidence) < EVIDENCE_MAX:
            self.evidence.append(evidence)
        self._out.append(evidence)

    def _outstanding(self) -> bool:
        if self.pending or self.last_issued > self.last_executed:
            return True
        return any(seq > self.last_issued and (s.pre_prepare is not None or s.committed is not None)
                   for seq, s in self.slots.items())

    # -- requests and proposing ------------------------------------------------------------

    def _on_request(self, digest: bytes) -> None:
        if digest in self.pending or len(self.pending) >= self.config.pending_requests_max:
            return
        self.arrivals += 1
        self.pending[digest] = self.arrivals
        if digest not in self.in_flight:
            self.queued[digest] = None

    def _maybe_propose(self) -> None:
        if self.in_view_change or not self._is_primary() or self.building is not None:
            return
        seq = self.next_seq
        if seq > self.last_executed + self.config.pipeline_window or seq > self._high_seq():
            return
        if not self.queued:
            return
        if len(self.queued) < self.config.batch_requests_max and not self.batch_due:
            return
        batch = tuple(itertools.islice(self.queued, self.config.batch_requests_max))
        self.batch_due = False
        self._disarm(BATCH_TIMER)
        for digest in batch:
            self._mark_in_flight(digest, seq)
        self.building = (self.view, seq)
        self._out.append(BuildProposal(self.view, seq, batch))

    def _mark_in_flight(self, digest: bytes, seq: int) -> None:
        self.in_flight[digest] = seq
        self.queued.pop(digest, None)

    def _release(self, seq: int, keep: set[bytes]) -> None:
        for digest in [d for d, s in self.in_flight.items() if s == seq and d not in keep]:
            del self.in_flight[digest]
            if digest in self.pending:
                self.queued[digest] = None

    def _on_built(self, event: ProposalBuilt) -> None:
        if self.building != (event.view, event.seq):
            return
        self.building = None
        digest = self.config.digest_of(event.payload) if event.payload else None
        requests = self.config.requests_in(event.payload) if digest is not None else None
        usable = (digest is not None and requests is not None and digest != NULL_DIGEST
                  and len(event.payload) <= PAYLOAD_BYTES_MAX)
        if not usable or event.view != self.view or self.in_view_change:
            self._release(event.seq, set())
            return
        assert digest is not None and requests is not None  # for mypy; checked by usable
        self._release(event.seq, set(requests))
        for request in requests:
            self._mark_in_flight(request, event.seq)
        unsigned = PrePrepare(self.view, event.seq, digest, event.payload, self.me, bytes(64))
        try:
            signature = self._sign("pre-prepare", self.view, event.seq,
                                   signed_bytes(unsigned, self.config.chain_id))
        except SigningRefused:
            self.next_seq = event.seq + 1
            self._release(event.seq, set())
            return
        pp = PrePrepare(self.view, event.seq, digest, event.payload, self.me, signature)
        self._out.append(Send(BROADCAST, pp))
        self.next_seq = event.seq + 1
        slot = self._slot(event.seq)
        slot.enter_view(self.view)
        slot.pre_prepare = pp
        slot.validation = "ok"
        self._check_prepared(slot)

    # -- normal case -----------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if message.validate() is not None or not 0 <= message.sender < self.config.n:
            return
        if message.sender == self.me:
            return
        if isinstance(message, PrePrepare | Prepare | Commit):
            self._on_vote_phase(message)
        elif isinstance(message, Checkpoint):
            self._on_checkpoint(message)
        elif isinstance(message, ViewChange):
            self._on_view_change(message)
        else:
            self._on_new_view(message)

    def _stash(self, message: PrePrepare | Prepare | Commit) -> None:
        queue = self.stash.setdefault(message.sender, [])
        if len(queue) < self.config.stash_per_sender_max and signature_ok(self.config, message):
            queue.append(message)

    def _on_vote_phase(self, message: PrePrepare | Prepare | Commit) -> None:
        if message.view < self.view:
            return
        if message.view > self.view or self.in_view_change:
            self._stash(message)
            return
        if not self._in_window(message.seq):
            return
        slot = self._slot(message.seq)
        slot.enter_view(self.view)
        if isinstance(message, PrePrepare):
            self._on_pre_prepare(slot, message)
        elif isinstance(message, Prepare):
            self._on_prepare(slot, message)
        else:
            self._on_commit(slot, message)

    def _on_pre_prepare(self, slot: Slot, pp: PrePrepare) -> None:
        if pp.sender != self.config.primary(self.view) or pp.payload is None:
            return
        known = slot.pre_prepare
        if known is not None:
            if known.digest != pp.digest:
                self._report(known, pp)
            return
        if not payload_matches(self.config, pp.digest, pp.payload):
            return
        if not signature_ok(self.config, pp):
            return
        slot.pre_prepare = pp
        self._accept_pre_prepare(slot)

    def _accept_pre_prepare(self, slot: Slot) -> None:
        pp = slot.pre_prepare
        invariant(pp is not None and pp.payload is not None, "accepting a missing pre-prepare")
        assert pp is not None and pp.payload is not None
        if slot.committed is not None and slot.payload is None and slot.committed.digest == pp.digest:
            slot.payload = pp.payload
        if pp.is_null() or self._is_primary():
            requests: list[bytes] | None = []
            ok: bool | None = True
        else:
            requests = self.config.requests_in(pp.payload)
            ok = None
        for request in requests or []:
            self._mark_in_flight(request, slot.seq)
        if slot.seq <= self.last_issued and slot.committed is not None:
            # Already executed here: only the digest executed may be prepared again. (After
            # a restart the certificate is gone; then the node answers from its store.)
            ok = slot.committed.digest == pp.digest
        if ok is None:
            slot.validation = "pending"
            self._out.append(ValidateProposal(self.view, slot.seq, pp.digest, pp.payload))
        elif ok:
            self._validated(slot)

    def _on_validated(self, event: ProposalValidated) -> None:
        slot = self.slots.get(event.seq)
        if (slot is None or event.view != self.view or self.in_view_change or slot.view != self.view
                or slot.pre_prepare is None or slot.pre_prepare.digest != event.digest
                or slot.validation != "pending"):
            return
        if event.ok:
            self._validated(slot)
        else:
            # The primary proposed something invalid: that is a primary fault.
            self._start_view_change(self.view + 1)

    def _validated(self, slot: Slot) -> None:
        slot.validation = "ok"
        pp = slot.pre_prepare
        assert pp is not None
        if not self._is_primary() and self.me not in slot.prepares:
            try:
                prepare = self._signed_vote(Prepare, self.view, slot.seq, pp.digest)
            except SigningRefused:
                return
            assert isinstance(prepare, Prepare)
            slot.prepares[self.me] = prepare
            self._out.append(Send(BROADCAST, prepare))
        self._check_prepared(slot)

    def _on_prepare(self, slot: Slot, prepare: Prepare) -> None:
        if prepare.sender == self.config.primary(self.view):
            return
        known = slot.prepares.get(prepare.sender)
        if known is not None:
            if known.digest != prepare.digest:
                self._report(known, prepare)
            return
        if not signature_ok(self.config, prepare):
            return
        slot.prepares[prepare.sender] = prepare
        self._check_prepared(slot)

    def _check_prepared(self, slot: Slot) -> None:
        pp = slot.pre_prepare
        if pp is None or slot.validation != "ok" or slot.sent_commit:
            return
        matching = sorted((p for p in slot.prepares.values() if p.digest == pp.digest),
                          key=lambda p: p.sender)
        needed = self.config.quorum - 1
        if len(matching) < needed:
            return
        cert = PreparedCert(pp, tuple(matching[:needed]))
        if slot.prepared is None or slot.prepared.view <= cert.view:
            slot.prepared = cert
            self._out.append(Persist(PreparedRecord(cert)))
        try:
            commit = self._signed_vote(Commit, self.view, slot.seq, pp.digest)
        except SigningRefused:
            return
        assert isinstance(commit, Commit)
        slot.sent_commit = True
        slot.commits[self.me] = commit
        self._out.append(Send(BROADCAST, commit))
        self._check_committed(slot)

    def _on_commit(self, slot: Slot, commit: Commit) -> None:
        known = slot.commits.get(commit.sender)
        if known is not None:
            if known.digest != commit.digest:
                self._report(known, commit)
            return
        if not signature_ok(self.config, commit):
            return
        slot.commits[commit.sender] = commit
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        if slot.committed is not None:
            return
        by_digest: dict[bytes, list[Commit]] = {}
        for commit in slot.commits.values():
            by_digest.setdefault(commit.digest, []).append(commit)
        for commits in by_digest.values():
            if len(commits) >= self.config.quorum:
                commits.sort(key=lambda c: c.sender)
                self._mark_committed(slot, CommitProof.from_commits(commits, self.config.validators))
                return

    def _mark_committed(self, slot: Slot, proof: CommitProof, payload: bytes | None = None) -> None:
        slot.committed = proof
        pp = slot.pre_prepare
        if payload is not None:
            slot.payload = payload
        elif proof.digest == NULL_DIGEST:
            slot.payload = NULL_PAYLOAD
        elif pp is not None and pp.digest == proof.digest:
            slot.payload = pp.payload
        elif slot.prepared is not None and slot.prepared.digest == proof.digest:
            slot.payload = slot.prepared.pre_prepare.payload

    def _try_execute(self) -> None:
        while True:
            slot = self.slots.get(self.last_issued + 1)
            if slot is None or slot.committed is None or slot.payload is None:
                return
            proof = slot.committed
            self.last_issued = slot.seq
            requests = self.config.requests_in(slot.payload) if slot.payload else []
            for request in requests or []:
                self.pending.pop(request, None)
                self.in_flight.pop(request, None)
                self.queued.pop(request, None)
            self._out.append(Execute(slot.seq, proof.view, proof.digest, slot.payload, proof))

    def _on_executed(self, event: Executed) -> None:
        if event.seq != self.last_executed + 1 or event.seq > self.last_issued:
            return
        self.last_executed = event.seq
        self.last_state_digest = event.state_digest
        if event.seq == self.low_seq:
            invariant(event.state_digest == self.stable_proof.state_digest,
                      f"state at seq {event.seq} diverges from the stable checkpoint: halting")
        if not self.in_view_change:
            self.view_change_attempts = 0
        if event.seq % self.config.checkpoint_interval_seqs:
            return
        self.state_digests[event.seq] = event.state_digest
        self._out.append(Persist(ExecutedRecord(event.seq, event.state_digest)))
        checkpoint = self._signed_checkpoint(event.seq, event.state_digest)
        if checkpoint is not None:
            self._out.append(Send(BROADCAST, checkpoint))
            self._add_checkpoint(checkpoint)

    def _signed_checkpoint(self, seq: int, state_digest: bytes) -> Checkpoint | None:
        unsigned = Checkpoint(seq, state_digest, self.me, bytes(64))
        try:
            signature = self._sign("checkpoint", 0, seq, signed_bytes(unsigned, self.config.chain_id))
        except SigningRefused:
            return None
        return Checkpoint(seq, state_digest, self.me, signature)

    def _resend_checkpoint(self) -> None:
        """Lost checkpoints would pin the watermarks forever: repeat ours when stuck."""
        seq = max((s for s in self.state_digests if s > self.low_seq), default=0)
        if seq:
            checkpoint = self._signed_checkpoint(seq, self.state_digests[seq])
            if checkpoint is not None:
                self._out.append(Send(BROADCAST, checkpoint))

    def _send_status(self, to: int) -> None:
        """Tell a replica that seems stuck how far we executed (a signed checkpoint at our
        last executed seq), so that f+1 such answers let it catch up by fetching."""
        if self.last_state_digest is None or self.last_executed <= self.low_seq:
            return
        checkpoint = self._signed_checkpoint(self.last_executed, self.last_state_digest)
        if checkpoint is not None:
            self._out.append(Send(to, checkpoint))

    # -- checkpoints, watermarks, garbage collection ----------------------------------------

    def _on_checkpoint(self, checkpoint: Checkpoint) -> None:
        # Off-interval checkpoints are status replies: they only tell us we are behind.
        if checkpoint.seq <= self.low_seq:
            return
        known = self.checkpoint_votes.get(checkpoint.seq, {}).get(checkpoint.sender)
        if known is not None:
            if known.state_digest != checkpoint.state_digest:
                self._report(known, checkpoint)
            return
        if not signature_ok(self.config, checkpoint):
            return
        self._add_checkpoint(checkpoint)

    def _add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.checkpoint_votes.setdefault(checkpoint.seq, {})[checkpoint.sender] = checkpoint
        if checkpoint.sender != self.me and checkpoint.seq > self.claimed.get(checkpoint.sender, 0):
            self.claimed[checkpoint.sender] = checkpoint.seq
        # Bound what one sender can make us hold: its few highest checkpoints only.
        keep = self.config.watermark_window_seqs // self.config.checkpoint_interval_seqs + 2
        mine = sorted(seq for seq, votes in self.checkpoint_votes.items() if checkpoint.sender in votes)
        for seq in mine[:-keep]:
            del self.checkpoint_votes[seq][checkpoint.sender]
        if checkpoint.seq % self.config.checkpoint_interval_seqs:
            return
        votes = self.checkpoint_votes.get(checkpoint.seq, {})
        matching = sorted((c for c in votes.values() if c.state_digest == checkpoint.state_digest),
                          key=lambda c: c.sender)
        if len(matching) >= self.config.quorum and checkpoint.seq > self.low_seq:
            proof = CheckpointProof(checkpoint.seq, checkpoint.state_digest,
                                    tuple(matching[: self.config.quorum]))
            self._make_stable(proof)

    def _make_stable(self, proof: CheckpointProof) -> None:
        mine = self.state_digests.get(proof.seq)
        invariant(mine is None or mine == proof.state_digest,
                  f"state at seq {proof.seq} diverges from a quorum's checkpoint: halting")
        self.low_seq = proof.seq
        self.stable_proof = proof
        self._out.append(Persist(StableRecord(proof)))
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        done = min(self.low_seq, self.last_issued)
        self.slots = {seq: s for seq, s in self.slots.items() if seq > done}
        self.checkpoint_votes = {seq: v for seq, v in self.checkpoint_votes.items()
                                 if seq > self.low_seq}
        self.state_digests = {seq: d for seq, d in self.state_digests.items() if seq >= self.low_seq}
        self.guard.forget(self.low_seq, self.view)
        self._reported = {key for key in self._reported if key[3] == 0 or key[3] > self.low_seq}
        self._out.append(Compact(tuple(self.snapshot_records())))

    # -- catch-up ---------------------------------------------------------------------------

    def _behind_target(self) -> tuple[int, tuple[int, ...]]:
        """Highest seq that f+1 validators (so at least one honest) claim to have executed."""
        highest = self.claimed
        claims = sorted(highest.values(), reverse=True)
        target = claims[self.config.faults] if len(claims) > self.config.faults else 0
        if self.low_seq > target:
            target = self.low_seq
            peers = tuple(c.sender for c in self.stable_proof.checkpoints if c.sender != self.me)
        else:
            peers = tuple(sorted(s for s, seq in highest.items() if seq >= target))
        waiting = self.slots.get(self.last_issued + 1)
        if (target <= self.last_issued and waiting is not None and waiting.committed is not None
                and waiting.payload is None):
            # Committed (we hold the certificate) but we never saw that payload.
            keys = {key for key, _ in waiting.committed.signatures}
            return waiting.seq, tuple(i for i, key in enumerate(self.config.validators)
                                      if key in keys and i != self.me)
        return target, peers

    def _check_behind(self) -> None:
        target, peers = self._behind_target()
        if target <= self.last_issued or not peers:
            return
        self.fetch_peers = peers
        if FETCH_TIMER in self.timers:
            return
        if target > self._high_seq() or self.fetch_target >= target:
            self._fetch(target)
        else:
            # Maybe the normal case is about to deliver it: give it one fetch timeout.
            self.fetch_target = 0
            self._arm(FETCH_TIMER, self.config.fetch_timeout_ticks)

    def _fetch(self, target: int) -> None:
        first = self.last_issued + 1
        last = min(target, first + self.config.fetch_seqs_max - 1)
        self.fetch_target = max(target, self.fetch_target)
        self._out.append(FetchCommitted(first, last, self.fetch_peers))
        self._arm(FETCH_TIMER, self.config.fetch_timeout_ticks)

    def _on_fetched(self, event: CommittedFetched) -> None:
        proof = event.certificate
        if event.seq != proof.seq or event.seq <= self.last_issued:
            return
        if event.seq > max(self.fetch_target, self._high_seq()):
            return
        slot = self.slots.get(event.seq)
        if slot is not None and slot.committed is not None and slot.payload is not None:
            return
        if not payload_matches(self.config, proof.digest, event.payload):
            return
        if check_commit_proof(self.config, proof) is not None:
            return
        slot = self._slot(event.seq)
        self._mark_committed(slot, proof, event.payload)

    # -- timers -----------------------------------------------------------------------------

    def _on_timer(self, event: TimerFired) -> None:
        if self.timers.get(event.kind) != event.token:
            return
        del self.timers[event.kind]
        if event.kind == PROGRESS_TIMER:
            self._on_progress_timeout()
        elif event.kind == BATCH_TIMER:
            self.batch_due = True
        elif event.kind == REQUEST_TIMER:
            stale = any(arrival <= self.request_mark and digest not in self.in_flight
                        for digest, arrival in self.pending.items())
            if stale and not self.in_view_change and not self._is_primary():
                self._start_view_change(self.view + 1)
        elif event.kind == FETCH_TIMER:
            target, peers = self._behind_target()
            if target > self.last_issued and peers:
                self.fetch_peers = peers
                self._fetch(target)
            else:
                self.fetch_target = 0

    def _on_progress_timeout(self) -> None:
        if self.in_view_change:
            supporters = [s for s, vc in self.view_changes.items() if vc.new_view == self.view]
            if len(supporters) >= self.config.quorum:
                self._start_view_change(self.view + 1)
            else:
                # Not enough view changes yet to justify the next view: resend ours (PBFT
                # waits for a quorum before the timer that moves to v+1 may run).
                own = self.view_changes.get(self.me)
                if own is not None:
                    self._out.append(Send(BROADCAST, own))
                self._resend_checkpoint()
                self._arm(PROGRESS_TIMER, self._view_timeout())
        elif self._outstanding() and self.last_executed == self.progress_mark:
            self._start_view_change(self.view + 1)

    def _maintain_timers(self) -> None:
        if self.in_view_change:
            if PROGRESS_TIMER not in self.timers:
                self._arm(PROGRESS_TIMER, self._view_timeout())
        elif self._outstanding():
            if PROGRESS_TIMER not in self.timers:
                self.progress_mark = self.last_executed
                self._arm(PROGRESS_TIMER, self._view_timeout())
        else:
            self._disarm(PROGRESS_TIMER)
        wants_batch = (self._is_primary() and not self.in_view_change and not self.batch_due
                       and bool(self.queued))
        if wants_batch and BATCH_TIMER not in self.timers:
            self._arm(BATCH_TIMER, self.config.batch_interval_ticks)
        if self.pending and REQUEST_TIMER not in self.timers:
            self.request_mark = self.arrivals
            self._arm(REQUEST_TIMER, self.config.request_timeout_ticks)
        elif not self.pending:
            self._disarm(REQUEST_TIMER)

    def _after_step(self) -> None:
        self._try_execute()
        self._check_behind()
        self._maybe_propose()
        self._maintain_timers()

    # -- view change ------------------------------------------------------------------------

    def _start_view_change(self, new_view: int) -> None:
        invariant(new_view > self.view, "view changes only move forward")
        self.view = new_view
        self.in_view_change = True
        self.view_change_attempts += 1
        self.building = None
        self.batch_due = False
        self.in_flight = {}
        self.queued = dict.fromkeys(self.pending)
        self.own_new_view = None
        self._disarm(BATCH_TIMER)
        self._out.append(Persist(ViewRecord(new_view, True)))
        prepared = tuple(cert for seq in sorted(self.slots) if seq > self.low_seq
                         and (cert := self.slots[seq].prepared) is not None)
        unsigned = ViewChange(new_view, self.stable_proof, prepared, self.me, bytes(64))
        try:
            signature = self._sign("view-change", new_view, 0,
                                   signed_bytes(unsigned, self.config.chain_id))
        except SigningRefused:
            # Signed a different one before a crash: skip to the next view instead.
            self._start_view_change(new_view + 1)
            return
        vc = ViewChange(new_view, self.stable_proof, prepared, self.me, signature)
        self._out.append(Persist(OwnViewChangeRecord(vc)))
        self._out.append(Send(BROADCAST, vc))
        self.view_changes[self.me] = vc
        self._resend_checkpoint()
        self._arm(PROGRESS_TIMER, self._view_timeout())
        self._check_new_view_quorum()

    def _on_view_change(self, vc: ViewChange) -> None:
        if not self.in_view_change and vc.sender != self.me:
            # A replica asking to leave the view we run, or stuck in an older view change,
            # may just be behind: say how far we got; the primary repeats its NEW-VIEW.
            # (Replies are bounded by the asker's own timer; the transport rate-limits peers.)
            self._send_status(vc.sender)
            if vc.new_view <= self.view:
                if self.own_new_view is not None and self.own_new_view.view == self.view:
                    self._out.append(Send(vc.sender, self.own_new_view))
                return
        if vc.new_view <= self.view and not (vc.new_view == self.view and self.in_view_change):
            return
        known = self.view_changes.get(vc.sender)
        if known is not None and known.new_view >= vc.new_view:
            return
        if check_view_change(self.config, vc, need_payloads=True) is not None:
            return
        self.view_changes[vc.sender] = vc
        self._check_join()
        self._check_new_view_quorum()

    def _check_join(self) -> None:
        """f+1 view changes for higher views prove an honest replica moved on: follow."""
        views = sorted((vc.new_view for s, vc in self.view_changes.items()
                        if s != self.me and vc.new_view > self.view), reverse=True)
        if len(views) > self.config.faults:
            self._start_view_change(views[self.config.faults])

    def _check_new_view_quorum(self) -> None:
        if not self.in_view_change or not self._is_primary():
            return
        own = self.view_changes.get(self.me)
        if own is None or own.new_view != self.view:
            return
        others = [self.view_changes[s] for s in sorted(self.view_changes)
                  if s != self.me and self.view_changes[s].new_view == self.view]
        if 1 + len(others) < self.config.quorum:
            return
        chosen = [own, *others[: self.config.quorum - 1]]
        plan = plan_new_view(chosen)
        pre_prepares = []
        for item in plan.reproposals:
            invariant(item.payload is not None, "re-proposal without its payload")
            unsigned = PrePrepare(self.view, item.seq, item.digest, item.payload, self.me, bytes(64))
            try:
                signature = self._sign("pre-prepare", self.view, item.seq,
                                       signed_bytes(unsigned, self.config.chain_id))
            except SigningRefused:
                self._start_view_change(self.view + 1)
                return
            pre_prepares.append(PrePrepare(self.view, item.seq, item.digest, item.payload,
                                           self.me, signature))
        unsigned_nv = NewView(self.view, tuple(vc.stripped() for vc in chosen),
                              tuple(pre_prepares), self.me, bytes(64))
        try:
            signature = self._sign("new-view", self.view, 0,
                                   signed_bytes(unsigned_nv, self.config.chain_id))
        except SigningRefused:
            self._start_view_change(self.view + 1)
            return
        nv = NewView(self.view, unsigned_nv.view_changes, unsigned_nv.pre_prepares, self.me, signature)
        self.own_new_view = nv
        self._out.append(Persist(NewViewRecord(nv)))
        self._out.append(Send(BROADCAST, nv))
        self._install_new_view(nv, plan)

    def _on_new_view(self, nv: NewView) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.in_view_change):
            return
        if nv.sender != self.config.primary(nv.view):
            return
        senders = {vc.sender for vc in nv.view_changes}
        if len(senders) != len(nv.view_changes) or len(senders) < self.config.quorum:
            return
        for vc in nv.view_changes:
            if check_view_change(self.config, vc, need_payloads=False) is not None:
                return
        plan = plan_new_view(list(nv.view_changes))
        expected = [(r.seq, r.digest) for r in plan.reproposals]
        if expected != [(pp.seq, pp.digest) for pp in nv.pre_prepares]:
            return
        for pp in nv.pre_prepares:
            assert pp.payload is not None  # NewView.validate requires payloads
            if not payload_matches(self.config, pp.digest, pp.payload):
                return
            if not signature_ok(self.config, pp):
                return
        if not signature_ok(self.config, nv):
            return
        if nv.view > self.view:
            self.view = nv.view
        self._install_new_view(nv, plan)

    def _install_new_view(self, nv: NewView, plan: NewViewPlan) -> None:
        self.in_view_change = False
        self.building = None
        self._out.append(Persist(ViewRecord(self.view, False)))
        self.view_changes = {s: vc for s, vc in self.view_changes.items() if vc.new_view > self.view}
        if plan.stable.seq > self.low_seq:
            reason = check_checkpoint_proof(self.config, plan.stable)
            invariant(reason is None, f"new-view checkpoint proof was checked: {reason}")
            self._make_stable(plan.stable)
        for pp in nv.pre_prepares:
            if pp.seq <= self.low_seq:
                continue
            slot = self._slot(pp.seq)
            slot.enter_view(self.view)
            slot.pre_prepare = pp
            self._accept_pre_prepare(slot)
        self.next_seq = max(plan.max_seq, self.low_seq, self.last_issued,
                            self.guard.highest_seq("pre-prepare", self.view)) + 1
        self._disarm(PROGRESS_TIMER)
        stashed, self.stash = self.stash, {}
        for sender in sorted(stashed):
            for message in stashed[sender]:
                if message.view == self.view:
                    self._on_vote_phase(message)
                elif message.view > self.view:
                    self.stash.setdefault(sender, []).append(message)
