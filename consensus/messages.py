"""PBFT wire messages: frozen, bounded, canonically encoded, signed per phase.

Every message names its sender by validator index (position in the genesis validator
list) and carries an Ed25519 signature over `signing_payload(<phase>, chain_id, body)`:

    pre-prepare  [view, seq, digest]          (the payload is bound through digest_of)
    prepare      [view, seq, digest]
    commit       [view, seq, digest]          (= ledger.block.commit_vote_bytes)
    checkpoint   [seq, state_digest]
    view-change  the view-change map without "sig", payloads left out
    new-view     the new-view map without "sig", payloads left out

Signing view changes without payloads lets a NEW-VIEW carry the view changes it is built
on stripped of payloads (each payload travels once, in the re-proposed PRE-PREPARE), and
their signatures still verify. `decode_message` turns peer bytes into a message or raises
`MessageError`; `validate()` returns the reason a message is malformed, or None.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ledger.codec import DECODE_BYTES_MAX, decode_map, encode
from ledger.crypto import HASH_BYTES, SIGNATURE_BYTES, signing_payload
from ledger.errors import CodecError

UINT63_MAX = 2**63 - 1
VALIDATORS_MAX = 1024
# Whole PRE-PREPARE payload (a block); the codec caps a frame at DECODE_BYTES_MAX anyway.
PAYLOAD_BYTES_MAX = 2 * 1024 * 1024
# Prepared certificates in one VIEW-CHANGE: bounded by the watermark window in use.
PREPARED_CERTS_MAX = 256
MESSAGE_BYTES_MAX = DECODE_BYTES_MAX

# A null proposal fills a sequence gap in NEW-VIEW and executes as a no-op.
NULL_DIGEST = bytes(HASH_BYTES)
NULL_PAYLOAD = b""


class MessageError(CodecError):
    """Bytes from a peer that are not a well-formed consensus message."""

    code = "bad_message"


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT63_MAX


def _hash(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_BYTES


def _common(view: Any, seq: Any, sender: Any, signature: Any) -> str | None:
    if not _uint(view):
        return "view must be an unsigned integer"
    if not _uint(seq):
        return "seq must be an unsigned integer"
    if not (_uint(sender) and sender < VALIDATORS_MAX):
        return f"sender must be a validator index below {VALIDATORS_MAX}"
    if not (isinstance(signature, bytes) and len(signature) == SIGNATURE_BYTES):
        return f"signature must be {SIGNATURE_BYTES} bytes"
    return None


@dataclass(frozen=True, slots=True)
class PrePrepare:
    view: int
    seq: int
    digest: bytes
    payload: bytes | None  # None only inside a NEW-VIEW's view changes (stripped)
    sender: int
    signature: bytes

    kind = "pre-prepare"

    def validate(self) -> str | None:
        reason = _common(self.view, self.seq, self.sender, self.signature)
        if reason:
            return reason
        if self.seq == 0:
            return "seq starts at 1"
        if not _hash(self.digest):
            return f"digest must be {HASH_BYTES} bytes"
        if self.payload is not None:
            if not isinstance(self.payload, bytes) or len(self.payload) > PAYLOAD_BYTES_MAX:
                return f"payload must be bytes of at most {PAYLOAD_BYTES_MAX}"
            if (self.digest == NULL_DIGEST) != (self.payload == NULL_PAYLOAD):
                return "the null digest goes with the empty payload and only with it"
        return None

    def body(self) -> list[Any]:
        return [self.view, self.seq, self.digest]

    def is_null(self) -> bool:
        return self.digest == NULL_DIGEST

    def stripped(self) -> PrePrepare:
        return replace(self, payload=None)

    def to_map(self) -> dict[str, Any]:
        return {"type": self.kind, "view": self.view, "seq": self.seq, "digest": self.digest,
                "payload": self.payload, "sender": self.sender, "sig": self.signature}


@dataclass(frozen=True, slots=True)
class _Vote:
    """PREPARE and COMMIT carry the same fields; only their kind (and signing domain) differ."""

    view: int
    seq: int
    digest: bytes
    sender: int
    signature: bytes

    kind: ClassVar[str] = ""

    def validate(self) -> str | None:
        reason = _common(self.view, self.seq, self.sender, self.signature)
        if reason:
            return reason
        if self.seq == 0:
            return "seq starts at 1"
        return None if _hash(self.digest) else f"digest must be {HASH_BYTES} bytes"

    def body(self) -> list[Any]:
        return [self.view, self.seq, self.digest]

    def to_map(self) -> dict[str, Any]:
        return {"type": self.kind, "view": self.view, "seq": self.seq, "digest": self.digest,
                "sender": self.sender, "sig": self.signature}


@dataclass(frozen=True, slots=True)
class Prepare(_Vote):
    kind: ClassVar[str] = "prepare"


@dataclass(frozen=True, slots=True)
class Commit(_Vote):
    kind: ClassVar[str] = "commit"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    state_digest: bytes
    sender: int
    signature: bytes

    kind = "checkpoint"

    def validate(self) -> str | None:
        reason = _common(0, self.seq, self.sender, self.signature)
        if reason:
            return reason
        if self.seq == 0:
            return "checkpoints start at seq 1"
        return None if _hash(self.state_digest) else f"state digest must be {HASH_BYTES} bytes"

    def body(self) -> list[Any]:
        return [self.seq, self.state_digest]

    def to_map(self) -> dict[str, Any]:
        return {"type": self.kind, "seq": self.seq, "state_digest": self.state_digest,
                "sender": self.sender, "sig": self.signature}


@dataclass(frozen=True, slots=True)
class PreparedCert:
    """A PRE-PREPARE and the quorum-minus-one matching PREPAREs from other replicas."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]

    @property
    def seq(self) -> int:
        return self.pre_prepare.seq

    @property
    def view(self) -> int:
        return self.pre_prepare.view

    @property
    def digest(self) -> bytes:
        return self.pre_prepare.digest

    def validate(self) -> str | None:
        reason = self.pre_prepare.validate()
        if reason:
            return f"prepared pre-prepare: {reason}"
        if len(self.prepares) > VALIDATORS_MAX:
            return "too many prepares"
        for prepare in self.prepares:
            reason = prepare.validate()
            if reason:
                return f"prepared prepare: {reason}"
        return None

    def stripped(self) -> PreparedCert:
        return PreparedCert(self.pre_prepare.stripped(), self.prepares)

    def to_map(self, with_payload: bool = True) -> dict[str, Any]:
        pre_prepare = self.pre_prepare if with_payload else self.pre_prepare.stripped()
        return {"pre_prepare": pre_prepare.to_map(),
                "prepares": [p.to_map() for p in self.prepares]}


@dataclass(frozen=True, slots=True)
class CheckpointProof:
    """A quorum of matching CHECKPOINT messages; seq 0 (genesis) needs none."""

    seq: int
    state_digest: bytes
    checkpoints: tuple[Checkpoint, ...]

    def validate(self) -> str | None:
        if not _uint(self.seq) or not _hash(self.state_digest):
            return "checkpoint proof seq or digest malformed"
        if len(self.checkpoints) > VALIDATORS_MAX:
            return "too many checkpoints"
        for checkpoint in self.checkpoints:
            reason = checkpoint.validate()
            if reason:
                return f"checkpoint proof: {reason}"
            if checkpoint.seq != self.seq or checkpoint.state_digest != self.state_digest:
                return "checkpoint proof mixes checkpoints"
        return None

    def to_map(self) -> dict[str, Any]:
        return {"seq": self.seq, "state_digest": self.state_digest,
                "checkpoints": [c.to_map() for c in self.checkpoints]}


GENESIS_PROOF = CheckpointProof(0, bytes(HASH_BYTES), ())


@dataclass(frozen=True, slots=True)
class ViewChange:
    new_view: int
    stable: CheckpointProof
    prepared: tuple[PreparedCert, ...]
    sender: int
    signature: bytes

    kind = "view-change"

    def validate(self) -> str | None:
        reason = _common(self.new_view, 0, self.sender, self.signature)
        if reason:
            return reason
        if self.new_view == 0:
            return "a view change targets view 1 or later"
        reason = self.stable.validate()
        if reason:
            return reason
        if len(self.prepared) > PREPARED_CERTS_MAX:
            return f"more than {PREPARED_CERTS_MAX} prepared certificates"
        seqs = [cert.seq for cert in self.prepared]
        if seqs != sorted(set(seqs)):
            return "prepared certificates must be sorted by seq, one per seq"
        for cert in self.prepared:
            reason = cert.validate()
            if reason:
                return reason
            if cert.seq <= self.stable.seq or cert.view >= self.new_view:
                return "prepared certificate outside (stable checkpoint, new view)"
        return None

    def has_payloads(self) -> bool:
        return all(cert.pre_prepare.payload is not None for cert in self.prepared)

    def stripped(self) -> ViewChange:
        return replace(self, prepared=tuple(cert.stripped() for cert in self.prepared))

    def body(self) -> dict[str, Any]:
        return {"new_view": self.new_view, "stable": self.stable.to_map(),
                "prepared": [cert.to_map(with_payload=False) for cert in self.prepared],
                "sender": self.sender}

    def to_map(self) -> dict[str, Any]:
        return {"type": self.kind, "new_view": self.new_view, "stable": self.stable.to_map(),
                "prepared": [cert.to_map() for cert in self.prepared],
                "sender": self.sender, "sig": self.signature}


@dataclass(frozen=True, slots=True)
class NewView:
    view: int
    view_changes: tuple[ViewChange, ...]  # stripped of payloads
    pre_prepares: tuple[PrePrepare, ...]  # with payloads, sorted by seq
    sender: int
    signature: bytes

    kind = "new-view"

    def validate(self) -> str | None:
        reason = _common(self.view, 0, self.sender, self.signature)
        if reason:
            return reason
        if len(self.view_changes) > VALIDATORS_MAX:
            return "too many view changes"
        for vc in self.view_changes:
            reason = vc.validate()
            if reason:
                return f"new-view's view change: {reason}"
            if vc.new_view != self.view:
                return "new-view carries a view change for another view"
        if len(self.pre_prepares) > PREPARED_CERTS_MAX + 1:
            return "too many re-proposals"
        seqs = [pp.seq for pp in self.pre_prepares]
        if seqs != sorted(set(seqs)):
            return "re-proposals must be sorted by seq, one per seq"
        for pp in self.pre_prepares:
            reason = pp.validate()
            if reason:
                return f"re-proposal: {reason}"
            if pp.payload is None or pp.view != self.view or pp.sender != self.sender:
                return "re-proposal must carry its payload and the new view's primary"
        return None

    def body(self) -> dict[str, Any]:
        return {"view": self.view,
                "view_changes": [vc.stripped().to_map() for vc in self.view_changes],
                "pre_prepares": [pp.stripped().to_map() for pp in self.pre_prepares],
                "sender": self.sender}

    def to_map(self) -> dict[str, Any]:
        return {"type": self.kind, "view": self.view,
                "view_changes": [vc.stripped().to_map() for vc in self.view_changes],
                "pre_prepares": [pp.to_map() for pp in self.pre_prepares],
                "sender": self.sender, "sig": self.signature}


Message = PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView


def signed_bytes(message: Message, chain_id: str) -> bytes:
    """The exact bytes the sender signed for `message` on chain `chain_id`."""
    return signing_payload(message.kind, chain_id, message.body())


def encode_message(message: Message) -> bytes:
    return encode(message.to_map())


# -- decoding -------------------------------------------------------------------------


def _fields(raw: Any, names: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise MessageError(f"{what} must be a map")
    if set(raw) != names:
        raise MessageError(f"{what} fields must be exactly {sorted(names)}")
    return raw


def _list(raw: Any, what: str) -> list[Any]:
    if not isinstance(raw, list):
        raise MessageError(f"{what} must be a list")
    return raw


_VOTE_FIELDS = frozenset({"type", "view", "seq", "digest", "sender", "sig"})
_PP_FIELDS = _VOTE_FIELDS | {"payload"}
_CKPT_FIELDS = frozenset({"type", "seq", "state_digest", "sender", "sig"})
_PROOF_FIELDS = frozenset({"seq", "state_digest", "checkpoints"})
_CERT_FIELDS = frozenset({"pre_prepare", "prepares"})
_VC_FIELDS = frozenset({"type", "new_view", "stable", "prepared", "sender", "sig"})
_NV_FIELDS = frozenset({"type", "view", "view_changes", "pre_prepares", "sender", "sig"})


def _typed(raw: Any, kind: str, names: frozenset[str]) -> dict[str, Any]:
    fields = _fields(raw, names, kind)
    if fields["type"] != kind:
        raise MessageError(f"expected a {kind} message, got {fields['type']!r}")
    return fields


def _pre_prepare(raw: Any) -> PrePrepare:
    f = _typed(raw, "pre-prepare", _PP_FIELDS)
    return PrePrepare(f["view"], f["seq"], f["digest"], f["payload"], f["sender"], f["sig"])


def _prepare(raw: Any) -> Prepare:
    f = _typed(raw, "prepare", _VOTE_FIELDS)
    return Prepare(f["view"], f["seq"], f["digest"], f["sender"], f["sig"])


def _commit(raw: Any) -> Commit:
    f = _typed(raw, "commit", _VOTE_FIELDS)
    return Commit(f["view"], f["seq"], f["digest"], f["sender"], f["sig"])


def _checkpoint(raw: Any) -> Checkpoint:
    f = _typed(raw, "checkpoint", _CKPT_FIELDS)
    return Checkpoint(f["seq"], f["state_digest"], f["sender"], f["sig"])


def _proof(raw: Any) -> CheckpointProof:
    f = _fields(raw, _PROOF_FIELDS, "checkpoint proof")
    checkpoints = _list(f["checkpoints"], "checkpoints")
    if len(checkpoints) > VALIDATORS_MAX:
        raise MessageError("too many checkpoints")
    return CheckpointProof(f["seq"], f["state_digest"], tuple(_checkpoint(c) for c in checkpoints))


def _cert(raw: Any) -> PreparedCert:
    f = _fields(raw, _CERT_FIELDS, "prepared certificate")
    prepares = _list(f["prepares"], "prepares")
    if len(prepares) > VALIDATORS_MAX:
        raise MessageError("too many prepares")
    return PreparedCert(_pre_prepare(f["pre_prepare"]), tuple(_prepare(p) for p in prepares))


def _view_change(raw: Any) -> ViewChange:
    f = _typed(raw, "view-change", _VC_FIELDS)
    prepared = _list(f["prepared"], "prepared")
    if len(prepared) > PREPARED_CERTS_MAX:
        raise MessageError("too many prepared certificates")
    return ViewChange(f["new_view"], _proof(f["stable"]), tuple(_cert(c) for c in prepared),
                      f["sender"], f["sig"])


def _new_view(raw: Any) -> NewView:
    f = _typed(raw, "new-view", _NV_FIELDS)
    vcs = _list(f["view_changes"], "view_changes")
    pps = _list(f["pre_prepares"], "pre_prepares")
    if len(vcs) > VALIDATORS_MAX or len(pps) > PREPARED_CERTS_MAX + 1:
        raise MessageError("new-view too large")
    return NewView(f["view"], tuple(_view_change(v) for v in vcs),
                   tuple(_pre_prepare(p) for p in pps), f["sender"], f["sig"])


_DECODERS: dict[Any, Any] = {
    "pre-prepare": _pre_prepare,
    "prepare": _prepare,
    "commit": _commit,
    "checkpoint": _checkpoint,
    "view-change": _view_change,
    "new-view": _new_view,
}


def message_from_map(raw: Any) -> Message:
    """Build and validate a message from its decoded map, or raise MessageError."""
    if not isinstance(raw, dict):
        raise MessageError("a message must be a map")
    decoder = _DECODERS.get(raw.get("type"))
    if decoder is None:
        raise MessageError(f"unknown message type {raw.get('type')!r}")
    message: Message = decoder(raw)
    reason = message.validate()
    if reason:
        raise MessageError(f"{message.kind}: {reason}")
    return message


def decode_message(data: bytes, *, max_bytes: int = MESSAGE_BYTES_MAX) -> Message:
    """Strictly decode peer bytes into a validated message, or raise MessageError."""
    try:
        raw = decode_map(data, max_bytes=max_bytes)
    except MessageError:
        raise
    except CodecError as exc:
        raise MessageError(exc.reason) from exc
    return message_from_map(raw)
