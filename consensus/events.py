"""What the node tells the replica (events) and what the replica asks of the node (actions).

See the module docstring of consensus/replica.py for the contract around them.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.messages import Commit, Message
from consensus.records import Record

# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A client request (its digest) is known to this node and awaits ordering."""

    digest: bytes


@dataclass(frozen=True, slots=True)
class RequestsReceived:
    """Several requests at once, in arrival order: the same as one RequestReceived each,
    in one step (the node admits transactions in batches)."""

    digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RequestWithdrawn:
    """The node dropped a request (invalid, expired): stop waiting for it."""

    digest: bytes


@dataclass(frozen=True, slots=True)
class TimerFired:
    kind: str
    token: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    peer: int  # transport-level origin; the message's own sender is what is trusted
    message: Message


@dataclass(frozen=True, slots=True)
class ProposalBuilt:
    view: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ProposalValidated:
    view: int
    seq: int
    digest: bytes
    ok: bool


@dataclass(frozen=True, slots=True)
class Executed:
    seq: int
    state_digest: bytes


@dataclass(frozen=True, slots=True)
class CommitProof:
    """A quorum of COMMIT signatures for (view, seq, digest): the commit certificate.

    `signatures` are (validator public key, signature) pairs sorted by key, exactly what
    ledger.block.CommitCertificate(seq, view, block_hash, signatures) holds.
    """

    view: int
    seq: int
    digest: bytes
    signatures: tuple[tuple[bytes, bytes], ...]

    @staticmethod
    def from_commits(commits: list[Commit], validators: tuple[bytes, ...]) -> CommitProof:
        first = commits[0]
        pairs = sorted((validators[c.sender], c.signature) for c in commits)
        return CommitProof(first.view, first.seq, first.digest, tuple(pairs))


@dataclass(frozen=True, slots=True)
class CommittedFetched:
    """A committed proposal fetched from a peer for catch-up; verified before use."""

    seq: int
    payload: bytes
    certificate: CommitProof


Event = (RequestReceived | RequestsReceived | RequestWithdrawn | TimerFired | MessageReceived | ProposalBuilt
         | ProposalValidated | Executed | CommittedFetched)

# -- actions ----------------------------------------------------------------------------

BROADCAST = -1


@dataclass(frozen=True, slots=True)
class Send:
    to: int  # validator index, or BROADCAST for every other validator
    message: Message


@dataclass(frozen=True, slots=True)
class Persist:
    """Durably store `record` before performing any later action of the same list."""

    record: Record


@dataclass(frozen=True, slots=True)
class Compact:
    """The node may atomically replace every stored record with `records` (GC)."""

    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class BuildProposal:
    view: int
    seq: int
    requests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ValidateProposal:
    view: int
    seq: int
    digest: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Execute:
    seq: int
    view: int
    digest: bytes
    payload: bytes  # b"" = null proposal: no state change, but still answer Executed
    certificate: CommitProof


@dataclass(frozen=True, slots=True)
class SetTimer:
    kind: str
    token: int
    delay_ticks: int


@dataclass(frozen=True, slots=True)
class CancelTimer:
    kind: str


@dataclass(frozen=True, slots=True)
class FetchCommitted:
    from_seq: int
    to_seq: int
    peers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReportEvidence:
    """Two conflicting messages signed by one validator."""

    offender: int
    first: Message
    second: Message


Action = (Send | Persist | Compact | BuildProposal | ValidateProposal | Execute | SetTimer
          | CancelTimer | FetchCommitted | ReportEvidence)
