"""NEW-VIEW selection exactly per PBFT (Castro & Liskov, section 4.4), as a pure function.

From a quorum of VIEW-CHANGE messages for view v: min_s is the highest stable checkpoint
among them and max_s the highest prepared sequence. For every seq in (min_s, max_s] the
new primary re-proposes the digest of the prepared certificate with the highest view, or
a null proposal when none of the view changes prepared anything there. Backups recompute
the same list from the same view changes and accept the NEW-VIEW only if it matches.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.messages import (
    NULL_DIGEST,
    NULL_PAYLOAD,
    CheckpointProof,
    PreparedCert,
    ViewChange,
)


@dataclass(frozen=True, slots=True)
class Reproposal:
    seq: int
    digest: bytes
    payload: bytes | None  # None when the view changes were stripped (backup side)


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    stable: CheckpointProof  # the checkpoint at min_s
    reproposals: tuple[Reproposal, ...]

    @property
    def min_seq(self) -> int:
        return self.stable.seq

    @property
    def max_seq(self) -> int:
        return self.reproposals[-1].seq if self.reproposals else self.stable.seq


def plan_new_view(view_changes: list[ViewChange]) -> NewViewPlan:
    stable = max((vc.stable for vc in view_changes), key=lambda proof: proof.seq)
    best: dict[int, PreparedCert] = {}
    for vc in view_changes:
        for cert in vc.prepared:
            if cert.seq <= stable.seq:
                continue
            known = best.get(cert.seq)
            if known is None or cert.view > known.view:
                best[cert.seq] = cert
    max_seq = max(best, default=stable.seq)
    reproposals = []
    for seq in range(stable.seq + 1, max_seq + 1):
        chosen = best.get(seq)
        if chosen is None:
            reproposals.append(Reproposal(seq, NULL_DIGEST, NULL_PAYLOAD))
        else:
            reproposals.append(Reproposal(seq, chosen.digest, chosen.pre_prepare.payload))
    return NewViewPlan(stable, tuple(reproposals))
