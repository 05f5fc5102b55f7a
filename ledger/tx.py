"""The transaction envelope: what a client signs and what the ledger orders.

Wire form (canonical msgpack map, docs/PROTOCOL.md):
    {"chain_id": str, "family": str, "op": str, "sender": bytes32, "nonce": int,
     "payload": map, "sig": bytes64}
The signature covers `signing_payload("tx", chain_id, <the map without "sig">)`.
The transaction hash is SHA-256 of the whole signed wire form.
`nonce` is the sender's sequence number: the first transaction of a key has nonce 0 and
each next one is exactly one more, so a signed transaction can be applied at most once.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from ledger.codec import decode_map, encode
from ledger.crypto import (
    PROTOCOL_TAG,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    KeyPair,
    address_of,
    sha256,
    signing_payload,
    verify,
)
from ledger.errors import CodecError

TX_BYTES_MAX = 64 * 1024
NONCE_MAX = 2**63 - 1
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TX_FIELDS = frozenset({"chain_id", "family", "op", "sender", "nonce", "payload", "sig"})
CHAIN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class TxError:
    """Why a transaction was refused: a stable code and a readable reason."""

    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Tx:
    """A transaction whose encoding and signature have been checked."""

    chain_id: str
    family: str
    op: str
    sender: bytes
    nonce: int
    payload: dict[str, Any]
    signature: bytes
    raw: bytes
    hash: bytes
    # Derived once: rules, mempool and executor ask for it several times per tx.
    sender_address: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sender_address", _address_of(self.sender))

    def unsigned_body(self) -> dict[str, Any]:
        return unsigned_body(
            self.chain_id, self.family, self.op, self.sender, self.nonce, self.payload
        )


def unsigned_body(
    chain_id: str, family: str, op: str, sender: bytes, nonce: int, payload: dict[str, Any]
) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "family": family,
        "op": op,
        "sender": sender,
        "nonce": nonce,
        "payload": payload,
    }


def sign_tx(
    key: KeyPair, chain_id: str, family: str, op: str, nonce: int, payload: dict[str, Any]
) -> Tx:
    """Build and sign a transaction (what a client does)."""
    body = unsigned_body(chain_id, family, op, key.public_key, nonce, payload)
    signature = key.sign(signing_payload("tx", chain_id, body))
    raw = encode({**body, "sig": signature})
    if len(raw) > TX_BYTES_MAX:
        raise CodecError(f"transaction of {len(raw)} bytes exceeds {TX_BYTES_MAX}")
    return Tx(chain_id, family, op, key.public_key, nonce, body["payload"], signature, raw,
              sha256(raw))


# An address is a pure function of the key; a sender's txs come again and again.
_address_of = functools.lru_cache(maxsize=16_384)(address_of)
# Field names in canonical (sorted) order: a canonical tx map has exactly these keys so.
_TX_FIELD_ORDER = sorted(TX_FIELDS)
# family/op names that passed NAME_PATTERN (the few in use), so the regex runs once each.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 1024


def _good_name(name: Any) -> bool:
    if type(name) is not str:
        return False
    if name in _GOOD_NAMES:
        return True
    if not NAME_PATTERN.match(name):
        return False
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)
    return True


def _shape_error(data: dict[str, Any]) -> TxError | None:
    # The common case in one pass of cheap checks; any doubt takes the path that names it.
    sender, sig, nonce = data.get("sender"), data.get("sig"), data.get("nonce")
    if (list(data) == _TX_FIELD_ORDER and type(data["chain_id"]) is str
            and _good_name(data["family"]) and _good_name(data["op"])
            and type(sender) is bytes and len(sender) == PUBLIC_KEY_BYTES
            and type(nonce) is int and 0 <= nonce <= NONCE_MAX
            and type(data["payload"]) is dict
            and type(sig) is bytes and len(sig) == SIGNATURE_BYTES):
        return None
    return _shape_problem(data)


def _shape_problem(data: dict[str, Any]) -> TxError | None:
    keys = set(data)
    if keys != TX_FIELDS:
        missing = sorted(TX_FIELDS - keys)
        extra = sorted(keys - TX_FIELDS)
        return TxError("tx_malformed", f"fields missing {missing}, unexpected {extra}")
    checks: list[tuple[bool, str]] = [
        (isinstance(data["chain_id"], str), "chain_id must be a string"),
        (isinstance(data["family"], str) and bool(NAME_PATTERN.match(data["family"])),
         "family must match [a-z][a-z0-9_]{0,31}"),
        (isinstance(data["op"], str) and bool(NAME_PATTERN.match(data["op"])),
         "op must match [a-z][a-z0-9_]{0,31}"),
        (isinstance(data["sender"], bytes) and len(data["sender"]) == PUBLIC_KEY_BYTES,
         "sender must be a 32-byte Ed25519 public key"),
        (type(data["nonce"]) is int and 0 <= data["nonce"] <= NONCE_MAX,
         "nonce must be an integer in [0, 2^63-1]"),
        (isinstance(data["payload"], dict), "payload must be a map"),
        (isinstance(data["sig"], bytes) and len(data["sig"]) == SIGNATURE_BYTES,
         "sig must be a 64-byte Ed25519 signature"),
    ]
    for ok, reason in checks:
        if not ok:
            return TxError("tx_malformed", reason)
    return None


def decode_tx(data: bytes, tx_hash: bytes | None = None) -> Tx | TxError:
    """Decode and shape-check a transaction without checking its signature.

    `tx_hash`, when the caller already has it, must be sha256(data) (saves hashing again).
    """
    if len(data) > TX_BYTES_MAX:
        return TxError("tx_too_large", f"{len(data)} bytes exceeds the {TX_BYTES_MAX}-byte limit")
    try:
        fields = decode_map(data, max_bytes=TX_BYTES_MAX)
    except CodecError as exc:
        return TxError("tx_malformed", exc.reason)
    problem = _shape_error(fields)
    if problem is not None:
        return problem
    raw = bytes(data)
    return Tx(fields["chain_id"], fields["family"], fields["op"], fields["sender"],
              fields["nonce"], fields["payload"], fields["sig"], raw,
              sha256(raw) if tx_hash is None else tx_hash)


# "sig" sorts last among the seven fields, so a canonical signed tx is the unsigned body's
# map (one entry fewer) followed by this key and a 64-byte bin8 value.
_SIG_ENTRY_HEAD = encode("sig") + b"\xc4\x40"
_SIG_ENTRY_BYTES = len(_SIG_ENTRY_HEAD) + SIGNATURE_BYTES
_FIXMAP_7, _FIXMAP_6 = 0x87, b"\x86"


@functools.lru_cache(maxsize=16)
def _signed_prefix(chain_id: str) -> bytes:
    """A 4-element array header and its first three elements: tag, domain, chain id."""
    three = encode([PROTOCOL_TAG, "tx", chain_id])
    return b"\x94" + three[1:]  # fixarray 3 -> fixarray 4; the elements follow unchanged


def signed_message(tx: Tx) -> bytes:
    """The bytes the sender signed: signing_payload("tx", chain_id, unsigned body).

    Cut from the canonical wire bytes instead of re-encoding the body (the hot path);
    equal to the re-encoded form by construction, which tests check.
    """
    raw = tx.raw
    if raw[0] == _FIXMAP_7 and raw[-_SIG_ENTRY_BYTES:-SIGNATURE_BYTES] == _SIG_ENTRY_HEAD:
        body = _FIXMAP_6 + raw[1:-_SIG_ENTRY_BYTES]
        return _signed_prefix(tx.chain_id) + body
    return signing_payload("tx", tx.chain_id, tx.unsigned_body())


def bad_signature() -> TxError:
    return TxError("bad_signature", "the signature does not match the sender's key")


def check_signature(tx: Tx) -> TxError | None:
    message = signed_message(tx)
    if not verify(tx.sender, message, tx.signature):
        return bad_signature()
    return None


def decode_for_chain(data: bytes, chain_id: str, tx_hash: bytes | None = None) -> Tx | TxError:
    """decode_tx, and refuse a tx for another chain; the signature is NOT checked."""
    tx = decode_tx(data, tx_hash)
    if isinstance(tx, Tx) and tx.chain_id != chain_id:
        return TxError("wrong_chain", f"transaction is for chain {tx.chain_id!r}, not {chain_id!r}")
    return tx


def decode_and_verify(data: bytes, chain_id: str, tx_hash: bytes | None = None) -> Tx | TxError:
    """The one way in for transaction bytes: a verified Tx, or the reason it is refused.

    `tx_hash`, when the caller already has it, must be sha256(data).
    """
    tx = decode_for_chain(data, chain_id, tx_hash)
    if isinstance(tx, TxError):
        return tx
    problem = check_signature(tx)
    return problem if problem is not None else tx
