"""Selective disclosure of credential attributes: commitments and their verification.

An issuer never writes attribute values on the ledger. For each attribute it publishes
    commitment = sha256(canonical_encode([attribute, value, salt]))     (hex)
with a fresh random salt of at least 16 bytes per attribute, and hands values and salts to
the holder privately. To prove one attribute (say age_over_18 = True) the holder reveals
that value and its salt only; anyone recomputes the commitment and checks it against the
ledger. Values are strings, integers or booleans and are committed with their type
(True, 1 and "1" are three different values).

Everything here is pure: it reads state and never writes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ledger.codec import encode
from ledger.crypto import sha256
from ledger.overlay import KeyValueReader
from txtypes.governance import holds_role
from txtypes.identity import ROLE_ISSUER, credential_get, did_record

SALT_BYTES_MIN = 16
SALT_BYTES_DEFAULT = 16
AttributeValue = str | int | bool


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """Whether a credential (or one disclosed attribute) checks out, and why not if not."""

    valid: bool
    reason: str
    credential: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "reason": self.reason}


def attribute_commitment(attribute: str, value: AttributeValue, salt: bytes) -> str:
    """The hex commitment to one attribute value (what the issuer puts on the ledger)."""
    return sha256(encode([attribute, value, bytes(salt)])).hex()


def commit_attributes(
    attributes: Mapping[str, AttributeValue], salts: Mapping[str, bytes] | None = None
) -> tuple[dict[str, str], dict[str, bytes]]:
    """Client-side: commitments for every attribute, and the salts the holder must keep.

    Fresh random salts are drawn unless given (give them only for reproducible tests).
    """
    chosen: dict[str, bytes] = {}
    commitments: dict[str, str] = {}
    for attribute, value in attributes.items():
        salt = bytes(salts[attribute]) if salts is not None else os.urandom(SALT_BYTES_DEFAULT)
        if len(salt) < SALT_BYTES_MIN:
            raise ValueError(f"salt for {attribute!r} must be at least {SALT_BYTES_MIN} bytes")
        chosen[attribute] = salt
        commitments[attribute] = attribute_commitment(attribute, value, salt)
    return commitments, chosen


def credential_status(state: KeyValueReader, credential_id: str, at_height: int) -> VerificationResult:
    """Is the credential itself valid at `at_height` (exists, issuer still authorised,
    not revoked, not expired, subject DID still active)?"""
    record = credential_get(state, credential_id)
    if record is None:
        return VerificationResult(False, f"no credential {credential_id!r}")
    if record["revoked"]:
        return VerificationResult(False, f"revoked at height {record.get('revoked_height')}", record)
    if at_height >= int(record["expiry_height"]):
        return VerificationResult(False, f"expired at height {record['expiry_height']}", record)
    if not holds_role(state, record["issuer"], ROLE_ISSUER):
        return VerificationResult(
            False, f"issuer {record['issuer']} no longer holds the issuer role", record
        )
    subject = did_record(state, record["subject_did"])
    if subject is None or subject["status"] != "active":
        return VerificationResult(False, f"subject {record['subject_did']} is not active", record)
    return VerificationResult(True, "valid", record)


def verify_disclosure(
    state: KeyValueReader,
    credential_id: str,
    attribute: str,
    value: AttributeValue,
    salt: bytes,
    at_height: int,
) -> VerificationResult:
    """Does the disclosed (value, salt) match the credential's commitment for `attribute`,
    and is the credential valid at `at_height`?"""
    status = credential_status(state, credential_id, at_height)
    if not status.valid:
        return status
    record = status.credential
    assert record is not None
    commitments = record["commitments"]
    if attribute not in commitments:
        return VerificationResult(False, f"the credential has no attribute {attribute!r}", record)
    if len(salt) < SALT_BYTES_MIN:
        return VerificationResult(False, f"salt shorter than {SALT_BYTES_MIN} bytes", record)
    if attribute_commitment(attribute, value, salt) != commitments[attribute]:
        return VerificationResult(
            False, f"the disclosed value does not match the commitment for {attribute!r}", record
        )
    return VerificationResult(True, "valid", record)


def credential_verify(
    state: KeyValueReader,
    credential_id: str,
    attribute: str,
    value: AttributeValue,
    salt_hex: str,
    at_height: int,
) -> dict[str, Any]:
    """RPC form of `verify_disclosure`: salt as hex, a JSON-friendly answer."""
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return {"valid": False, "reason": "salt is not hex", "credential_id": credential_id}
    result = verify_disclosure(state, credential_id, attribute, value, salt, at_height)
    answer: dict[str, Any] = {**result.to_json(), "credential_id": credential_id,
                              "attribute": attribute, "at_height": at_height}
    if result.credential is not None:
        answer.update(issuer=result.credential["issuer"],
                      subject_did=result.credential["subject_did"],
                      schema=result.credential["schema"],
                      expiry_height=result.credential["expiry_height"])
    return answer
