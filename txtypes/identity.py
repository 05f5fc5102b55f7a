"""Decentralised identifiers bound to keys, recovery guardians, and verifiable credentials.

A person registers `did:city:<address>` with their own key (the transaction's signer;
the address is the one of that first key and stays the DID's name for life). The key can
be rotated by the current key; an agency named as recovery guardian can bind a new key
when the person lost theirs — this is how an agency acts for someone without a fixed
address or a phone of their own. Binding a new key (rotate or recover) needs a proof that
the new key's holder agrees: an Ed25519 signature by the new key over
`signing_payload("identity_key", chain_id, {"did": did, "public_key": <hex>})`
(`key_binding_message`), so nobody can bind a key they do not hold.

Credentials are issued by accounts holding the issuer role about an active DID: a schema
name (residency, age_over_18, low_income_eligibility…), per-attribute salted commitments
(txtypes/credentials.py, the holder discloses one attribute's value and salt) and an
expiry height. The issuing account may revoke. Verification is in txtypes/credentials.py.

Public keys travel as 64-char lowercase hex strings; signatures as 128-char hex.

State layout (values canonical msgpack):
    identity/did/<did>                   -> DID record (see `apply_register`)
    identity/controller/<address>        -> did the key with this address currently controls
    identity/credential/<credential_id>  -> credential record (see `apply_issue_credential`)
    identity/subject/<did>/<credential_id> -> true (credentials about a DID)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field, StringConstraints

from ledger.crypto import address_of, signing_payload, verify
from ledger.overlay import KeyValueReader
from ledger.rules import RuleError, StateView, TxContext
from txtypes.base import Payload, TxFamily
from txtypes.governance import ROLE_AGENCY, Address, Name, PublicKeyHex, holds_role, read_obj
from txtypes.roles import require_role

ROLE_ISSUER = "issuer"
DID_METHOD_PREFIX = "did:city:"
DID_PATTERN = r"^did:city:[0-9a-f]{40}$"
CREDENTIAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
COMMITMENT_PATTERN = r"^[0-9a-f]{64}$"
SIGNATURE_HEX_PATTERN = r"^[0-9a-f]{128}$"
KEY_BINDING_DOMAIN = "identity_key"
GUARDIANS_MAX = 5
ATTRIBUTES_MAX = 32
SUBJECT_CREDENTIALS_LIST_MAX = 200

Did = Annotated[str, StringConstraints(pattern=DID_PATTERN)]
CredentialId = Annotated[str, StringConstraints(pattern=CREDENTIAL_ID_PATTERN)]
Commitment = Annotated[str, StringConstraints(pattern=COMMITMENT_PATTERN)]
SignatureHex = Annotated[str, StringConstraints(pattern=SIGNATURE_HEX_PATTERN)]

DID_PREFIX = b"identity/did/"
CONTROLLER_PREFIX = b"identity/controller/"
CREDENTIAL_PREFIX = b"identity/credential/"
SUBJECT_PREFIX = b"identity/subject/"


# -- payloads -------------------------------------------------------------------------------
class RegisterPayload(Payload):
    """Self-registration: the DID is did:city:<signer address>, bound to the signer's key."""


class RotateKeyPayload(Payload):
    did: Did
    new_public_key: PublicKeyHex
    new_key_signature: SignatureHex


class GuardianPayload(Payload):
    did: Did
    guardian: Address


class RecoverPayload(Payload):
    did: Did
    new_public_key: PublicKeyHex
    new_key_signature: SignatureHex


class DeactivatePayload(Payload):
    did: Did


class IssueCredentialPayload(Payload):
    credential_id: CredentialId
    subject_did: Did
    schema_name: Name
    commitments: dict[Name, Commitment] = Field(min_length=1, max_length=ATTRIBUTES_MAX)
    expiry_height: int = Field(ge=1)


class RevokeCredentialPayload(Payload):
    credential_id: CredentialId
    reason: str = Field(default="", max_length=140)


# -- keys and pure queries ------------------------------------------------------------------
def did_for_address(address: str) -> str:
    return DID_METHOD_PREFIX + address


def did_key(did: str) -> bytes:
    return DID_PREFIX + did.encode()


def controller_key(address: str) -> bytes:
    return CONTROLLER_PREFIX + address.encode()


def credential_key(credential_id: str) -> bytes:
    return CREDENTIAL_PREFIX + credential_id.encode()


def subject_key(did: str, credential_id: str) -> bytes:
    return SUBJECT_PREFIX + did.encode() + b"/" + credential_id.encode()


def did_record(state: KeyValueReader, did: str) -> dict[str, Any] | None:
    record = read_obj(state, did_key(did))
    return dict(record) if isinstance(record, dict) else None


def did_controller_address(state: KeyValueReader, did: str) -> str | None:
    """The address of the key that currently controls an active DID, else None."""
    record = did_record(state, did)
    if record is None or record["status"] != "active":
        return None
    return str(record["controller"])


def did_of_controller(state: KeyValueReader, address: str) -> str | None:
    did = read_obj(state, controller_key(address))
    return did if isinstance(did, str) else None


def credential_get(state: KeyValueReader, credential_id: str) -> dict[str, Any] | None:
    record = read_obj(state, credential_key(credential_id))
    return dict(record) if isinstance(record, dict) else None


def identity_get(state: KeyValueReader, did: str) -> dict[str, Any] | None:
    """RPC view of a DID: its record plus the ids of credentials issued about it."""
    if not re.match(DID_PATTERN, did):
        return None
    record = did_record(state, did)
    if record is None:
        return None
    prefix = SUBJECT_PREFIX + did.encode() + b"/"
    ids = [key[len(prefix):].decode() for key, _ in state.scan(prefix, SUBJECT_CREDENTIALS_LIST_MAX)]
    return {**record, "credentials": ids}


def key_binding_message(chain_id: str, did: str, public_key_hex: str) -> bytes:
    """What the holder of a new key signs to agree to control `did` (rotate, recover)."""
    return signing_payload(KEY_BINDING_DOMAIN, chain_id, {"did": did, "public_key": public_key_hex})


# -- rule helpers ---------------------------------------------------------------------------
def _require_did(state: StateView, did: str) -> dict[str, Any]:
    record = did_record(state, did)
    if record is None:
        raise RuleError("unknown_did", f"{did} is not registered")
    if record["status"] != "active":
        raise RuleError("did_deactivated", f"{did} has been deactivated")
    return record


def _require_controller(state: StateView, did: str, sender: str) -> dict[str, Any]:
    record = _require_did(state, did)
    if record["controller"] != sender:
        raise RuleError("not_controller", f"{sender} is not the current key of {did}")
    return record


def _check_new_key(state: StateView, chain_id: str, did: str, new_key_hex: str,
                   proof_hex: str) -> None:
    new_key = bytes.fromhex(new_key_hex)
    if not verify(new_key, key_binding_message(chain_id, did, new_key_hex), bytes.fromhex(proof_hex)):
        raise RuleError("bad_key_proof",
                        "new_key_signature is not the new key's signature of the key binding")
    holder = did_of_controller(state, address_of(new_key))
    if holder is not None:
        raise RuleError("key_in_use", f"that key already controls {holder}")


def _bind_key(state: StateView, record: dict[str, Any], new_key_hex: str, height: int) -> None:
    state.delete(controller_key(record["controller"]))
    new_address = address_of(bytes.fromhex(new_key_hex))
    record["public_key"] = new_key_hex
    record["controller"] = new_address
    record["key_version"] = int(record["key_version"]) + 1
    record["updated_height"] = height
    state.put_obj(did_key(record["did"]), record)
    state.put_obj(controller_key(new_address), record["did"])


class IdentityFamily(TxFamily):
    family: ClassVar[str] = "identity"
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {
        "register": RegisterPayload,
        "rotate_key": RotateKeyPayload,
        "add_guardian": GuardianPayload,
        "remove_guardian": GuardianPayload,
        "recover": RecoverPayload,
        "deactivate": DeactivatePayload,
        "issue_credential": IssueCredentialPayload,
        "revoke_credential": RevokeCredentialPayload,
    }

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        if params:
            raise ValueError(f"the identity module takes no genesis parameters, got {sorted(params)}")

    # -- register -------------------------------------------------------------------------
    def check_register(self, ctx: TxContext, state: StateView) -> None:
        did = did_for_address(ctx.sender_address)
        if did_record(state, did) is not None:
            raise RuleError("did_exists", f"{did} is already registered")
        holder = did_of_controller(state, ctx.sender_address)
        if holder is not None:
            raise RuleError("key_in_use", f"the signing key already controls {holder}")

    def apply_register(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        did = did_for_address(ctx.sender_address)
        state.put_obj(did_key(did), {
            "did": did,
            "public_key": ctx.tx.sender.hex(),
            "controller": ctx.sender_address,
            "key_version": 1,
            "guardians": [],
            "status": "active",
            "registered_height": ctx.block.height,
            "updated_height": ctx.block.height,
        })
        state.put_obj(controller_key(ctx.sender_address), did)
        return {"did": did}

    # -- rotate_key -----------------------------------------------------------------------
    def check_rotate_key(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, RotateKeyPayload)
        _require_controller(state, p.did, ctx.sender_address)
        _check_new_key(state, ctx.tx.chain_id, p.did, p.new_public_key, p.new_key_signature)

    def apply_rotate_key(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, RotateKeyPayload)
        record = _require_controller(state, p.did, ctx.sender_address)
        _bind_key(state, record, p.new_public_key, ctx.block.height)
        return {"did": p.did, "controller": record["controller"], "key_version": record["key_version"]}

    # -- guardians ------------------------------------------------------------------------
    def check_add_guardian(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, GuardianPayload)
        record = _require_controller(state, p.did, ctx.sender_address)
        if not holds_role(state, p.guardian, ROLE_AGENCY):
            raise RuleError("guardian_not_agency",
                            f"{p.guardian} is not an agency account; only agencies may be guardians")
        if p.guardian in record["guardians"]:
            raise RuleError("guardian_exists", f"{p.guardian} is already a guardian of {p.did}")
        if len(record["guardians"]) >= GUARDIANS_MAX:
            raise RuleError("too_many_guardians", f"a DID may have at most {GUARDIANS_MAX} guardians")

    def apply_add_guardian(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, GuardianPayload)
        record = _require_controller(state, p.did, ctx.sender_address)
        record["guardians"] = sorted({*record["guardians"], p.guardian})
        record["updated_height"] = ctx.block.height
        state.put_obj(did_key(p.did), record)
        return {"did": p.did, "guardians": record["guardians"]}

    def check_remove_guardian(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, GuardianPayload)
        record = _require_controller(state, p.did, ctx.sender_address)
        if p.guardian not in record["guardians"]:
            raise RuleError("not_guardian", f"{p.guardian} is not a guardian of {p.did}")

    def apply_remove_guardian(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, GuardianPayload)
        record = _require_controller(state, p.did, ctx.sender_address)
        record["guardians"] = [g for g in record["guardians"] if g != p.guardian]
        record["updated_height"] = ctx.block.height
        state.put_obj(did_key(p.did), record)
        return {"did": p.did, "guardians": record["guardians"]}

    # -- recover --------------------------------------------------------------------------
    def check_recover(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, RecoverPayload)
        record = _require_did(state, p.did)
        if ctx.sender_address not in record["guardians"]:
            raise RuleError("not_guardian", f"{ctx.sender_address} is not a guardian of {p.did}")
        if not holds_role(state, ctx.sender_address, ROLE_AGENCY):
            raise RuleError("guardian_not_agency",
                            f"guardian {ctx.sender_address} no longer holds the agency role")
        _check_new_key(state, ctx.tx.chain_id, p.did, p.new_public_key, p.new_key_signature)

    def apply_recover(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, RecoverPayload)
        record = _require_did(state, p.did)
        record["last_recovery"] = {"guardian": ctx.sender_address, "height": ctx.block.height}
        _bind_key(state, record, p.new_public_key, ctx.block.height)
        return {"did": p.did, "controller": record["controller"], "key_version": record["key_version"]}

    # -- deactivate -----------------------------------------------------------------------
    def check_deactivate(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, DeactivatePayload)
        _require_controller(state, p.did, ctx.sender_address)

    def apply_deactivate(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, DeactivatePayload)
        record = _require_controller(state, p.did, ctx.sender_address)
        record["status"] = "deactivated"
        record["updated_height"] = ctx.block.height
        state.put_obj(did_key(p.did), record)
        # The key is released: it may register its own DID afterwards, never this one again.
        state.delete(controller_key(record["controller"]))
        return {"did": p.did, "status": "deactivated"}

    # -- credentials ----------------------------------------------------------------------
    def check_issue_credential(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, IssueCredentialPayload)
        require_role(state, ctx.sender_address, ROLE_ISSUER)
        if credential_get(state, p.credential_id) is not None:
            raise RuleError("credential_exists", f"credential {p.credential_id!r} already exists")
        _require_did(state, p.subject_did)
        if p.expiry_height <= ctx.block.height:
            raise RuleError("expiry_in_past",
                            f"expiry height {p.expiry_height} is not after the current height "
                            f"{ctx.block.height}")

    def apply_issue_credential(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, IssueCredentialPayload)
        state.put_obj(credential_key(p.credential_id), {
            "credential_id": p.credential_id,
            "issuer": ctx.sender_address,
            "subject_did": p.subject_did,
            "schema": p.schema_name,
            "commitments": dict(p.commitments),
            "expiry_height": p.expiry_height,
            "issued_height": ctx.block.height,
            "revoked": False,
        })
        state.put_obj(subject_key(p.subject_did, p.credential_id), True)
        return {"credential_id": p.credential_id}

    def check_revoke_credential(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, RevokeCredentialPayload)
        record = credential_get(state, p.credential_id)
        if record is None:
            raise RuleError("unknown_credential", f"no credential {p.credential_id!r}")
        if record["issuer"] != ctx.sender_address:
            raise RuleError("not_issuer", f"only the issuer {record['issuer']} may revoke it")
        if record["revoked"]:
            raise RuleError("already_revoked", f"credential {p.credential_id!r} is already revoked")

    def apply_revoke_credential(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, RevokeCredentialPayload)
        record = credential_get(state, p.credential_id)
        assert record is not None
        record["revoked"] = True
        record["revoked_height"] = ctx.block.height
        record["revocation_reason"] = p.reason
        state.put_obj(credential_key(p.credential_id), record)
        return {"credential_id": p.credential_id, "revoked": True}
