"""The PBFT replica: a pure, deterministic state machine (DESIGN.md principle 1).

    replica = Replica(config)                       # or Replica.restore(config, records, ...)
    actions = replica.start()                       # once, after construction or restore
    actions = replica.step(event)                   # for every event, one at a time

No sockets, clock, disk or randomness: the node feeds events and performs actions, in
list order. Events (consensus/events.py):
    RequestReceived(digest)       a client request this node knows (gossiped to all nodes;
                                  the node itself forwards txs to the primary)
    RequestsReceived(digests)     the same for several requests, in arrival order
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
    payload_matches,
    signature_ok,
)
from consensus.config import ReplicaConfig
from consensus.events import (
    BROADCAST,
    Action,
    BuildProposal,
    CommitProof,
    CommittedFetched,
    Event,
    Execute,
    Executed,
    MessageReceived,
    Persist,
    ProposalBuilt,
    ProposalValidated,
    RequestReceived,
    RequestsReceived,
    RequestWithdrawn,
    Send,
    TimerFired,
    ValidateProposal,
)
from consensus.guard import SigningRefused
from consensus.messages import (
    NULL_DIGEST,
    NULL_PAYLOAD,
    PAYLOAD_BYTES_MAX,
    Checkpoint,
    Commit,
    Message,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    signed_bytes,
)
from consensus.new_view_plan import plan_new_view
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
from consensus.replica_base import (
    BATCH_TIMER,
    FETCH_TIMER,
    PROGRESS_TIMER,
    REQUEST_TIMER,
    Slot,
)
from consensus.view_change import ViewChanging
from ledger.errors import invariant

__all__ = ["BATCH_TIMER", "FETCH_TIMER", "PROGRESS_TIMER", "REQUEST_TIMER", "Replica"]


class Replica(ViewChanging):
    """One validator's PBFT replica; the contract is in this module's docstring.

    The behaviour is split by concern: the normal case, requests and timers here,
    checkpoints and catch-up in consensus/checkpointing.py, view change in
    consensus/view_change.py, shared state in consensus/replica_base.py.
    """

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
        elif isinstance(event, RequestsReceived):
            for digest in event.digests:
                self._on_request(digest)
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
            if message.view > self.view:
                self._check_join()

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
            if len(requests or []) < self.config.batch_requests_max:
                self.spare_room_seen = True
            for request in requests or []:
                arrival = self.pending.pop(request, None)
                if arrival is not None and arrival > self.request_mark:
                    self.overtaken += 1
                self.in_flight.pop(request, None)
                self.queued.pop(request, None)
            self._out.append(Execute(slot.seq, proof.view, proof.digest, slot.payload, proof))

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
            self._on_request_timeout()
        elif event.kind == FETCH_TIMER:
            target, peers = self._behind_target()
            if target > self.last_issued and peers:
                self.fetch_peers = peers
                self._fetch(target)
            else:
                self.fetch_target = 0

    def _on_request_timeout(self) -> None:
        """A request known here for a whole timeout was not ordered: censorship, or not?"""
        stale = any(arrival <= self.request_mark and digest not in self.in_flight
                    for digest, arrival in self.pending.items())
        if not stale or self.in_view_change or self._is_primary():
            return
        backlog = (self.last_executed > self.request_exec_mark and not self.spare_room_seen
                   and self.overtaken < self.config.batch_requests_max)
        if backlog:
            # Every block since was full and later requests did not jump the queue: the
            # primary is working through a backlog. Keep the mark; look again later.
            self.request_exec_mark = self.last_executed
            self._arm(REQUEST_TIMER, self.config.request_timeout_ticks)
            return
        target, peers = self._behind_target(claims_only=True)
        if target > self.last_issued and peers:
            # f+1 replicas executed further: the request may well be ordered already and
            # this replica is only behind. Catch up rather than vote out the primary.
            self.fetch_peers = peers
            self._fetch(target)
            self._arm(REQUEST_TIMER, self.config.request_timeout_ticks)
            return
        self._start_view_change(self.view + 1)

    def _on_progress_timeout(self) -> None:
        if self.in_view_change:
            # A quorum has left every view below this one (PBFT's condition for moving on).
            # Count view changes for later views too: a replica that went ahead alone and
            # then moved on first must not leave the rest short of a quorum for ever.
            supporters = [s for s, vc in self.view_changes.items() if vc.new_view >= self.view]
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
            # f+1 replicas executed further (a certificate above a gap would not prove that
            # the gap was ever committed): we are slow, not the primary. Catch up instead.
            target, peers = self._behind_target(claims_only=True)
            if target > self.last_issued and peers:
                self.fetch_peers = peers
                self._fetch(target)
            else:
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
            self.request_exec_mark = self.last_executed
            self.spare_room_seen = False
            self.overtaken = 0
            self._arm(REQUEST_TIMER, self.config.request_timeout_ticks)
        elif not self.pending:
            self._disarm(REQUEST_TIMER)

    def _after_step(self) -> None:
        self._try_execute()
        self._check_behind()
        self._maybe_propose()
        self._maintain_timers()
