"""The replica's configuration and the environment it is handed (DESIGN.md principle 15)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ledger.crypto import PUBLIC_KEY_BYTES, verify
from ledger.errors import LedgerError
from ledger.quorum import fault_tolerance, quorum_size


class ConfigError(LedgerError):
    code = "bad_consensus_config"


class Signer(Protocol):
    """The validator's key: the replica never sees the secret."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


# digest_of(payload) -> the proposal's identifier (the block hash), or None if malformed.
DigestOf = Callable[[bytes], "bytes | None"]
# requests_in(payload) -> the request digests the proposal contains, or None if malformed.
RequestsIn = Callable[[bytes], "list[bytes] | None"]
# verify(public_key, message, signature) -> bool; ledger.crypto.verify in production.
Verify = Callable[[bytes, bytes, bytes], bool]


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    chain_id: str
    validators: tuple[bytes, ...]  # public keys; index = validator id; primary = view % n
    signer: Signer  # this validator's key; its public key must be in `validators`
    digest_of: DigestOf
    requests_in: RequestsIn
    verify: Verify = verify
    checkpoint_interval_seqs: int = 16
    # Sequences accepted above the stable checkpoint (the high watermark is low + this).
    watermark_window_seqs: int = 32
    # Proposals in flight beyond the last executed sequence (1 = build after execute).
    pipeline_window: int = 1
    batch_requests_max: int = 500
    batch_interval_ticks: int = 2
    # Base view-change timeout; doubled per consecutive failed view up to 2**backoff_max.
    view_timeout_ticks: int = 20
    backoff_exponent_max: int = 6
    # A request known here but not proposed within this long triggers a view change.
    request_timeout_ticks: int = 60
    fetch_timeout_ticks: int = 20
    fetch_seqs_max: int = 64
    pending_requests_max: int = 100_000
    stash_per_sender_max: int = 256
    # 0 = derived from ledger.quorum.quorum_size. Only the simulator's canary lowers it.
    quorum: int = 0
    # Where this validator set's epoch starts (ledger/epochs.py): sequences up to base_seq
    # were settled by the previous set, so base_seq acts as a stable checkpoint needing no
    # votes, with the state digest every node reached there. 0 = genesis.
    base_seq: int = 0
    base_state_digest: bytes = bytes(32)
    faults: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        n = len(self.validators)
        if n < 1 or len(set(self.validators)) != n:
            raise ConfigError("validators must be a non-empty list of distinct keys")
        if any(len(key) != PUBLIC_KEY_BYTES for key in self.validators):
            raise ConfigError(f"validator keys are {PUBLIC_KEY_BYTES} bytes")
        for name in ("checkpoint_interval_seqs", "watermark_window_seqs", "pipeline_window",
                     "batch_requests_max", "batch_interval_ticks", "view_timeout_ticks",
                     "request_timeout_ticks", "fetch_timeout_ticks", "fetch_seqs_max",
                     "pending_requests_max", "stash_per_sender_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.watermark_window_seqs < self.checkpoint_interval_seqs:
            raise ConfigError("the watermark window must cover a checkpoint interval")
        if self.base_seq < 0 or len(self.base_state_digest) != 32:
            raise ConfigError("base_seq must be >= 0 and base_state_digest 32 bytes")
        if self.pipeline_window > self.watermark_window_seqs:
            raise ConfigError("the pipeline window cannot exceed the watermark window")
        if self.signer.public_key not in self.validators:
            raise ConfigError("this node's key is not a validator")
        if self.quorum == 0:
            object.__setattr__(self, "quorum", quorum_size(n))
        if not 1 <= self.quorum <= n:
            raise ConfigError(f"quorum {self.quorum} outside 1..{n}")
        object.__setattr__(self, "faults", fault_tolerance(n))

    @property
    def n(self) -> int:
        return len(self.validators)

    def primary(self, view: int) -> int:
        return view % len(self.validators)

    @property
    def me(self) -> int:
        return self.validators.index(self.signer.public_key)
