"""View change and NEW-VIEW handling per PBFT (part of the replica)."""

from __future__ import annotations

from consensus.certificates import (
    check_checkpoint_proof,
    check_view_change,
    payload_matches,
    signature_ok,
)
from consensus.checkpointing import Checkpointing
from consensus.events import (
    BROADCAST,
    Persist,
    Send,
)
from consensus.guard import SigningRefused
from consensus.messages import (
    NewView,
    PrePrepare,
    ViewChange,
    signed_bytes,
)
from consensus.new_view_plan import NewViewPlan, plan_new_view
from consensus.records import (
    NewViewRecord,
    OwnViewChangeRecord,
    ViewRecord,
)
from consensus.replica_base import (
    BATCH_TIMER,
    PROGRESS_TIMER,
)
from ledger.errors import invariant


class ViewChanging(Checkpointing):
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
        """f+1 replicas seen in later views prove an honest one moved on: follow them.

        A replica is seen in a view by its view change for it or by its votes signed in it
        (stashed). The votes matter to a replica that missed a NEW-VIEW (restarted without
        its records, or cut off during the change) and keeps up by fetching: it never
        times out, so without them it would stay in its old view for good. Its view change
        makes the primary there repeat the NEW-VIEW.
        """
        furthest = {s: vc.new_view for s, vc in self.view_changes.items()}
        for sender, queue in self.stash.items():
            if queue:
                furthest[sender] = max(furthest.get(sender, 0), *(m.view for m in queue))
        views = sorted((view for sender, view in furthest.items()
                        if sender != self.me and view > self.view), reverse=True)
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
        # Proposals of older views are void (a replica may also jump here from a normal
        # view): only the re-proposals below hold requests now.
        self.in_flight = {}
        self.queued = dict.fromkeys(self.pending)
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
