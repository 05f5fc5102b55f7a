"""Checkpoints, watermarks, garbage collection and catch-up (part of the replica)."""

from __future__ import annotations

from consensus.certificates import (
    check_commit_proof,
    payload_matches,
    signature_ok,
)
from consensus.events import (
    BROADCAST,
    CommittedFetched,
    Compact,
    Executed,
    FetchCommitted,
    Persist,
    Send,
)
from consensus.guard import SigningRefused
from consensus.messages import (
    Checkpoint,
    CheckpointProof,
    signed_bytes,
)
from consensus.records import (
    ExecutedRecord,
    StableRecord,
)
from consensus.replica_base import (
    FETCH_TIMER,
    ReplicaBase,
)
from ledger.errors import invariant


class Checkpointing(ReplicaBase):
    def _on_executed(self, event: Executed) -> None:
        if event.seq != self.last_executed + 1 or event.seq > self.last_issued:
            return
        self.last_executed = event.seq
        self.last_state_digest = event.state_digest
        if event.seq <= self.low_seq:
            # Garbage the moment it is executed: a catching-up node learns the stable
            # checkpoint first and may then execute thousands of seqs below it while no new
            # checkpoint comes to collect them.
            self.slots.pop(event.seq, None)
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

    def _send_stable_proof(self, to: int) -> None:
        """Hand a lagging replica the quorum of checkpoints that made ours stable: it can
        check them itself, move its watermarks up and fetch what lies below."""
        for checkpoint in self.stable_proof.checkpoints:
            if checkpoint.sender != to:
                self._out.append(Send(to, checkpoint))

    def _send_status(self, to: int) -> None:
        """Tell a replica that seems stuck how far we executed (a signed checkpoint at our
        last executed seq), so that f+1 such answers let it catch up by fetching."""
        self._send_stable_proof(to)
        if self.last_state_digest is None or self.last_executed <= self.low_seq:
            return
        checkpoint = self._signed_checkpoint(self.last_executed, self.last_state_digest)
        if checkpoint is not None:
            self._out.append(Send(to, checkpoint))

    def _on_checkpoint(self, checkpoint: Checkpoint) -> None:
        # Off-interval checkpoints are status replies: they only tell us we are behind.
        if checkpoint.seq <= self.low_seq:
            if (checkpoint.seq < self.low_seq and checkpoint.sender != self.me
                    and signature_ok(self.config, checkpoint)):
                # The sender is a whole checkpoint behind (catching up, or it missed the
                # checkpoint messages): without a stable checkpoint its watermarks stay put.
                self._send_stable_proof(checkpoint.sender)
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

    def _behind_target(self, claims_only: bool = False) -> tuple[int, tuple[int, ...]]:
        """Highest seq that f+1 validators (so at least one honest) claim to have executed,
        or else the lowest seq above our execution we hold a commit certificate for."""
        highest = self.claimed
        claims = sorted(highest.values(), reverse=True)
        target = claims[self.config.faults] if len(claims) > self.config.faults else 0
        if self.low_seq > target:
            target = self.low_seq
            peers = tuple(c.sender for c in self.stable_proof.checkpoints if c.sender != self.me)
        else:
            peers = tuple(sorted(s for s, seq in highest.items() if seq >= target))
        if target <= self.last_issued and not claims_only:
            # A commit certificate above our execution means we missed that seq's payload
            # or the seqs before it (e.g. after a restart): its signers have them.
            committed = [seq for seq, slot in self.slots.items()
                         if seq > self.last_issued and slot.committed is not None]
            if committed:
                proof = self.slots[min(committed)].committed
                assert proof is not None
                keys = {key for key, _ in proof.signatures}
                return proof.seq, tuple(i for i, key in enumerate(self.config.validators)
                                        if key in keys and i != self.me)
        return target, peers

    def _check_behind(self) -> None:
        target, peers = self._behind_target()
        if target <= self.last_issued or not peers:
            return
        self.fetch_peers = peers
        if FETCH_TIMER in self.timers:
            if self.fetch_target and target > self.fetch_target:
                self._fetch(target)  # already fetching and the goal moved up: ask for the rest
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
        # A certified sequence just past what we executed is always taken: a lagging node
        # learns of it from peers' announcements even when no checkpoint covers it yet,
        # and fetch_seqs_max bounds how many such slots can exist.
        horizon = max(self.fetch_target, self._high_seq(),
                      self.last_issued + self.config.fetch_seqs_max)
        if event.seq > horizon:
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
