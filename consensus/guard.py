"""The signing guard (DESIGN.md principle 12).

Before the replica signs anything it asks the guard. For a (phase, view, seq) it has
already signed, the guard returns the stored signature when the bytes are identical and
refuses when they differ, so not even a restarted replica can equivocate. New entries
come back as GuardRecords that the node persists before the signature is sent.
"""

from __future__ import annotations

from consensus.config import Signer
from consensus.records import GuardRecord
from ledger.crypto import sha256
from ledger.errors import LedgerError

GuardKey = tuple[str, int, int]


class SigningRefused(LedgerError):
    """A request to sign something that conflicts with an earlier signature."""

    code = "signing_refused"


class SigningGuard:
    __slots__ = ("_entries", "_signer")

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._entries: dict[GuardKey, GuardRecord] = {}

    def sign(self, domain: str, view: int, seq: int, message: bytes) -> tuple[bytes, GuardRecord | None]:
        """The signature of `message` and the record to persist first (None if not new)."""
        key = (domain, view, seq)
        body_hash = sha256(message)
        known = self._entries.get(key)
        if known is not None:
            if known.body_hash != body_hash:
                raise SigningRefused(f"already signed a different {domain} for view {view} seq {seq}")
            return known.signature, None
        record = GuardRecord(domain, view, seq, body_hash, self._signer.sign(message))
        self._entries[key] = record
        return record.signature, record

    def signed(self, domain: str, view: int, seq: int) -> GuardRecord | None:
        return self._entries.get((domain, view, seq))

    def load(self, record: GuardRecord) -> None:
        self._entries[(record.domain, record.view, record.seq)] = record

    def highest_seq(self, domain: str, view: int) -> int:
        seqs = [k[2] for k in self._entries if k[0] == domain and k[1] == view]
        return max(seqs, default=0)

    def forget(self, stable_seq: int, view: int) -> None:
        """Drop what can never be asked again: seqs at or below the stable checkpoint and
        votes of views below `view` (the replica only ever signs in its current view)."""
        self._entries = {
            key: record for key, record in self._entries.items()
            if (key[2] == 0 or key[2] > stable_seq) and (key[0] == "checkpoint" or key[1] >= view)
        }

    def records(self) -> list[GuardRecord]:
        return list(self._entries.values())
