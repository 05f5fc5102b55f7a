"""Replica state shared by the normal case, checkpointing and view change."""

from __future__ import annotations

from consensus.certificates import (
    signature_ok,
)
from consensus.config import ReplicaConfig
from consensus.events import (
    Action,
    CancelTimer,
    CommitProof,
    Persist,
    ReportEvidence,
    SetTimer,
)
from consensus.guard import SigningGuard
from consensus.messages import (
    GENESIS_PROOF,
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
    Record,
)

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


class ReplicaBase:
    """State and small helpers; the behaviour lives in the mixins and in Replica."""

    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.me = config.me
        self.guard = SigningGuard(config.signer)
        self.view = 0
        self.in_view_change = False
        self.view_change_attempts = 0
        self.low_seq = config.base_seq  # stable checkpoint (low watermark)
        self.stable_proof: CheckpointProof = (
            GENESIS_PROOF if config.base_seq == 0
            else CheckpointProof(config.base_seq, config.base_state_digest, ()))
        self.last_executed = config.base_seq  # reported by the node
        self.last_issued = config.base_seq  # Execute actions emitted
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
        self.next_seq = config.base_seq + 1
        self.building: tuple[int, int] | None = None
        self.batch_due = False
        self.timers: dict[str, int] = {}
        self.timer_tokens = 0
        self.progress_mark = 0
        self.request_mark = 0
        # Censorship evidence since the request timer was armed: executed sequences, and
        # whether any executed proposal had room for more requests, and how many requests
        # that arrived later were ordered first. Full blocks taken in arrival order are a
        # backlog, not censorship.
        self.request_exec_mark = 0
        self.spare_room_seen = False
        self.overtaken = 0  # executed requests that arrived here after the mark
        self.view_changes: dict[int, ViewChange] = {}  # latest verified, per sender
        self.own_new_view: NewView | None = None
        self.stash: dict[int, list[PrePrepare | Prepare | Commit]] = {}
        self.fetch_target = 0
        self.fetch_peers: tuple[int, ...] = ()
        self.evidence: list[ReportEvidence] = []
        self._reported: set[tuple[int, str, int, int]] = set()
        self._out: list[Action] = []

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

    # -- defined by Replica, used by the mixins ------------------------------------------

    def snapshot_records(self) -> list[Record]:
        raise NotImplementedError

    def _mark_committed(self, slot: Slot, proof: CommitProof, payload: bytes | None = None) -> None:
        raise NotImplementedError

    def _accept_pre_prepare(self, slot: Slot) -> None:
        raise NotImplementedError

    def _on_vote_phase(self, message: PrePrepare | Prepare | Commit) -> None:
        raise NotImplementedError
