"""Records the replica asks the node to persist, and their canonical byte form.

A restarted replica is rebuilt from these alone (`Replica.restore`): its signing guard,
its view, its own view change, its prepared certificates, its stable checkpoint and how
far it has executed. `encode_record`/`decode_record` give the bytes the node stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.messages import (
    CheckpointProof,
    MessageError,
    NewView,
    PreparedCert,
    ViewChange,
    _cert,
    _new_view,
    _proof,
    _view_change,
)
from ledger.codec import decode_map, encode


@dataclass(frozen=True, slots=True)
class GuardRecord:
    """This replica signed `body_hash` for (domain, view, seq); never sign another."""

    domain: str
    view: int
    seq: int
    body_hash: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class ViewRecord:
    view: int
    in_view_change: bool


@dataclass(frozen=True, slots=True)
class OwnViewChangeRecord:
    view_change: ViewChange


@dataclass(frozen=True, slots=True)
class NewViewRecord:
    new_view: NewView


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    cert: PreparedCert


@dataclass(frozen=True, slots=True)
class StableRecord:
    proof: CheckpointProof


@dataclass(frozen=True, slots=True)
class ExecutedRecord:
    seq: int
    state_digest: bytes


Record = (GuardRecord | ViewRecord | OwnViewChangeRecord | NewViewRecord | PreparedRecord
          | StableRecord | ExecutedRecord)


def record_to_map(record: Record) -> dict[str, Any]:
    if isinstance(record, GuardRecord):
        return {"r": "guard", "domain": record.domain, "view": record.view, "seq": record.seq,
                "body_hash": record.body_hash, "sig": record.signature}
    if isinstance(record, ViewRecord):
        return {"r": "view", "view": record.view, "in_view_change": record.in_view_change}
    if isinstance(record, OwnViewChangeRecord):
        return {"r": "own-vc", "vc": record.view_change.to_map()}
    if isinstance(record, NewViewRecord):
        return {"r": "new-view", "nv": record.new_view.to_map()}
    if isinstance(record, PreparedRecord):
        return {"r": "prepared", "cert": record.cert.to_map()}
    if isinstance(record, StableRecord):
        return {"r": "stable", "proof": record.proof.to_map()}
    return {"r": "executed", "seq": record.seq, "state_digest": record.state_digest}


def encode_record(record: Record) -> bytes:
    return encode(record_to_map(record))


def decode_record(data: bytes) -> Record:
    """Bytes written by encode_record back into a record, or MessageError."""
    fields = decode_map(data)
    kind = fields.get("r")
    record: Record
    try:
        if kind == "guard":
            record = GuardRecord(fields["domain"], fields["view"], fields["seq"],
                                 fields["body_hash"], fields["sig"])
        elif kind == "view":
            record = ViewRecord(fields["view"], fields["in_view_change"])
        elif kind == "own-vc":
            record = OwnViewChangeRecord(_view_change(fields["vc"]))
        elif kind == "new-view":
            record = NewViewRecord(_new_view(fields["nv"]))
        elif kind == "prepared":
            record = PreparedRecord(_cert(fields["cert"]))
        elif kind == "stable":
            record = StableRecord(_proof(fields["proof"]))
        elif kind == "executed":
            record = ExecutedRecord(fields["seq"], fields["state_digest"])
        else:
            raise MessageError(f"unknown record kind {kind!r}")
    except KeyError as exc:
        raise MessageError(f"record {kind!r} lacks field {exc}") from exc
    return record
