"""Transaction receipts: what happened to each transaction of a block.

Wire form (canonical msgpack map):
    {"tx_hash": bytes32, "index": int, "status": "ok" | "rejected",
     "code": str, "reason": str, "result": map}
An accepted transaction has code "ok" and an empty reason; a rejected one carries the
stable error code and the reason, and an empty result. The header's receipts root is
`merkle_root` over the encoded receipts in block order, so every byte here is agreed by
consensus and must be deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgpack

from ledger.codec import INT_MAX, INT_MIN, decode_map, encode
from ledger.crypto import HASH_BYTES
from ledger.errors import CodecError
from ledger.merkle import merkle_root

STATUS_OK: Final = "ok"
STATUS_REJECTED: Final = "rejected"
RECEIPT_FIELDS = frozenset({"tx_hash", "index", "status", "code", "reason", "result"})
REASON_CHARS_MAX = 1000

Status = Literal["ok", "rejected"]


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: bytes
    index: int
    status: Status
    code: str
    reason: str
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_wire(self) -> dict[str, Any]:
        return {
            "tx_hash": self.tx_hash,
            "index": self.index,
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
            "result": self.result,
        }

    def encode(self) -> bytes:
        fast = _encode_flat(self)
        return fast if fast is not None else encode(self.to_wire())

    @classmethod
    def accepted(cls, tx_hash: bytes, index: int, result: dict[str, Any]) -> Receipt:
        return cls(tx_hash, index, STATUS_OK, STATUS_OK, "", result)

    @classmethod
    def rejected(cls, tx_hash: bytes, index: int, code: str, reason: str) -> Receipt:
        # Reasons are bounded so a module cannot bloat receipts with huge messages.
        return cls(tx_hash, index, STATUS_REJECTED, code, reason[:REASON_CHARS_MAX], {})


_FLAT_SCALARS = (str, bytes, bool, type(None))


def _encode_flat(receipt: Receipt) -> bytes | None:
    """`encode(receipt.to_wire())` for the common receipt, or None to take the long way.

    Every block encodes one receipt per transaction. When each member and each result
    value is a plain scalar of an exact type (what the built-in modules return), the
    canonical form is just the members in sorted key order packed as they are, so the
    codec's general walk is not needed; anything else (nested results, subclasses,
    out-of-range integers) goes through `encode`. A property test keeps both equal.
    """
    result = receipt.result
    if (type(receipt.tx_hash) is not bytes or type(receipt.index) is not int
            or type(receipt.code) is not str or type(receipt.reason) is not str
            or type(receipt.status) is not str or type(result) is not dict
            or not INT_MIN <= receipt.index <= INT_MAX):
        return None
    if not all(type(key) is str for key in result):
        return None
    flat: dict[str, Any] = {}
    for key in sorted(result):
        value = result[key]
        kind = type(value)
        if kind is int:
            if not INT_MIN <= value <= INT_MAX:
                return None
        elif kind not in _FLAT_SCALARS:
            return None
        flat[key] = value
    # Members in sorted key order: code, index, reason, result, status, tx_hash.
    packed: bytes = msgpack.packb(
        {"code": receipt.code, "index": receipt.index, "reason": receipt.reason,
         "result": flat, "status": receipt.status, "tx_hash": receipt.tx_hash},
        use_bin_type=True,
    )
    return packed


def decode_receipt(data: bytes) -> Receipt:
    """Decode a receipt, or raise CodecError with the reason."""
    fields = decode_map(data)
    if set(fields) != RECEIPT_FIELDS:
        raise CodecError(f"receipt fields must be {sorted(RECEIPT_FIELDS)}, got {sorted(fields)}")
    tx_hash, index, status = fields["tx_hash"], fields["index"], fields["status"]
    code, reason, result = fields["code"], fields["reason"], fields["result"]
    if not isinstance(tx_hash, bytes) or len(tx_hash) != HASH_BYTES:
        raise CodecError("receipt tx_hash must be 32 bytes")
    if type(index) is not int or index < 0:
        raise CodecError("receipt index must be a non-negative integer")
    if status not in (STATUS_OK, STATUS_REJECTED):
        raise CodecError(f"receipt status must be 'ok' or 'rejected', got {status!r}")
    if not isinstance(code, str) or not isinstance(reason, str):
        raise CodecError("receipt code and reason must be strings")
    if not isinstance(result, dict):
        raise CodecError("receipt result must be a map")
    if status == STATUS_OK and code != STATUS_OK:
        raise CodecError("an ok receipt must have code 'ok'")
    return Receipt(tx_hash, index, status, code, reason, result)


def receipt_accepts(data: bytes) -> bool:
    """Whether stored receipt bytes accept their tx; False for anything else, malformed too."""
    try:
        return decode_receipt(data).ok
    except CodecError:
        return False


def receipts_root(encoded_receipts: Sequence[bytes]) -> bytes:
    """Merkle root over encoded receipts in block order (the header's receipts_root)."""
    return merkle_root(list(encoded_receipts))
