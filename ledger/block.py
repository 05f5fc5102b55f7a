"""Block header, block and commit certificate: the hash-linked, certified history.

Exact bytes are in docs/PROTOCOL.md. In short:
- A header is the canonical map of its nine fields; its hash (the block hash) is SHA-256
  of those bytes. `state_root` and `receipts_root` are the results of executing THIS
  block: the primary executes before proposing and backups re-execute to validate.
- A block is {"header": header map, "txs": [signed tx wire bytes]}; `tx_root` is the
  Merkle root over those wire bytes in order. A block never carries the same tx twice.
- A commit certificate is a quorum of PBFT COMMIT votes for one block hash; each vote
  signs `commit_vote_bytes(chain_id, view, seq, block_hash)`.

Every type validates itself on construction, so a malformed value cannot exist; decoding
bytes from a peer or the disk raises `BlockError` (a `CodecError`) with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.codec import decode_map, encode
from ledger.crypto import (
    HASH_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    sha256,
    signing_payload,
    verify,
)
from ledger.errors import CodecError
from ledger.merkle import merkle_proof, merkle_root, verify_proof
from ledger.quorum import quorum_size
from ledger.tx import CHAIN_ID_PATTERN, TX_BYTES_MAX

BLOCK_BYTES_MAX = 4 * 1024 * 1024
TXS_MAX = 10_000
SIGNERS_MAX = 1024
UINT63_MAX = 2**63 - 1
HEADER_BYTES_MAX = 1024
CERT_BYTES_MAX = 16 + SIGNERS_MAX * (PUBLIC_KEY_BYTES + SIGNATURE_BYTES + 8) + 128
# Upper bound on msgpack framing per tx (bin32 header) plus the block's outer map/array.
_TX_FRAMING_BYTES = 5
_BLOCK_FRAMING_BYTES = 32

HEADER_FIELDS = (
    "chain_id",
    "height",
    "prev_hash",
    "timestamp_ms",
    "proposer",
    "view",
    "tx_root",
    "state_root",
    "receipts_root",
)
BLOCK_FIELDS = frozenset({"header", "txs"})
CERT_FIELDS = frozenset({"seq", "view", "block_hash", "signatures"})


class BlockError(CodecError):
    """A header, block or certificate that is malformed or breaks a structural rule."""

    code = "block_malformed"


def _decode_fields(what: str, data: bytes, max_bytes: int) -> dict[str, Any]:
    """The map of a header, block or certificate; any undecodable input is a BlockError,
    so callers that refuse bad blocks need to catch only that."""
    try:
        return decode_map(data, max_bytes=max_bytes)
    except BlockError:
        raise
    except CodecError as exc:
        raise BlockError(f"{what} is not canonical msgpack: {exc.reason}") from exc


def _check_uint(name: str, value: object, minimum: int = 0) -> None:
    # `type(...) is int` rather than isinstance: bool is an int subclass.
    if type(value) is not int or not minimum <= value <= UINT63_MAX:
        raise BlockError(f"{name} must be an integer in [{minimum}, 2^63-1], got {value!r}")


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        shown = len(value) if isinstance(value, bytes) else type(value).__name__
        raise BlockError(f"{name} must be {length} bytes, got {shown}")


def _check_chain_id(value: object) -> None:
    if not isinstance(value, str) or not CHAIN_ID_PATTERN.match(value):
        raise BlockError(f"chain_id must match {CHAIN_ID_PATTERN.pattern}, got {value!r}")


def _check_fields(kind: str, data: dict[str, Any], expected: frozenset[str]) -> None:
    keys = set(data)
    if keys != expected:
        raise BlockError(
            f"{kind} fields missing {sorted(expected - keys)}, unexpected {sorted(keys - expected)}"
        )


def tx_root_of(txs: Sequence[bytes]) -> bytes:
    """Merkle root over signed tx wire bytes, in block order."""
    return merkle_root(list(txs))


def receipts_root_of(receipts: Sequence[bytes]) -> bytes:
    """Merkle root over encoded receipts, in block order (one receipt per tx)."""
    return merkle_root(list(receipts))


@dataclass(frozen=True, slots=True)
class Header:
    chain_id: str
    height: int
    prev_hash: bytes
    timestamp_ms: int
    proposer: bytes
    view: int
    tx_root: bytes
    state_root: bytes
    receipts_root: bytes
    _encoded: bytes = field(init=False, repr=False, compare=False)
    _hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_chain_id(self.chain_id)
        # Height 0 is genesis, which is not a stored block.
        _check_uint("height", self.height, minimum=1)
        _check_bytes("prev_hash", self.prev_hash, HASH_BYTES)
        _check_uint("timestamp_ms", self.timestamp_ms)
        _check_bytes("proposer", self.proposer, PUBLIC_KEY_BYTES)
        _check_uint("view", self.view)
        _check_bytes("tx_root", self.tx_root, HASH_BYTES)
        _check_bytes("state_root", self.state_root, HASH_BYTES)
        _check_bytes("receipts_root", self.receipts_root, HASH_BYTES)
        encoded = encode(self.to_map())
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_hash", sha256(encoded))

    def to_map(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HEADER_FIELDS}

    def encode(self) -> bytes:
        return self._encoded

    @property
    def hash(self) -> bytes:
        """The block hash: SHA-256 of the canonical header bytes."""
        return self._hash

    @classmethod
    def from_map(cls, data: dict[str, Any]) -> Header:
        _check_fields("header", data, frozenset(HEADER_FIELDS))
        return cls(**{name: data[name] for name in HEADER_FIELDS})

    @classmethod
    def decode(cls, data: bytes) -> Header:
        return cls.from_map(_decode_fields("header", data, HEADER_BYTES_MAX))


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    txs: tuple[bytes, ...]
    # Set once the tx_root is known to match the txs: a validated block is checked again
    # by the store when it is written, and the Merkle root is one hash per tx and level.
    _tx_root_matches: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.header, Header):
            raise BlockError(f"header must be a Header, got {type(self.header).__name__}")
        if isinstance(self.txs, list):
            object.__setattr__(self, "txs", tuple(self.txs))
        if not isinstance(self.txs, tuple):
            raise BlockError(f"txs must be a sequence of bytes, got {type(self.txs).__name__}")
        if len(self.txs) > TXS_MAX:
            raise BlockError(f"{len(self.txs)} transactions exceed the limit of {TXS_MAX}")
        total = len(self.header.encode()) + _BLOCK_FRAMING_BYTES
        for index, tx in enumerate(self.txs):
            if not isinstance(tx, bytes) or not 1 <= len(tx) <= TX_BYTES_MAX:
                raise BlockError(f"tx {index} must be 1..{TX_BYTES_MAX} bytes")
            total += len(tx) + _TX_FRAMING_BYTES
        if total > BLOCK_BYTES_MAX:
            raise BlockError(f"block of about {total} bytes exceeds {BLOCK_BYTES_MAX}")
        if len(set(self.txs)) != len(self.txs):
            raise BlockError("block carries the same transaction more than once")

    @classmethod
    def build(
        cls,
        *,
        chain_id: str,
        height: int,
        prev_hash: bytes,
        timestamp_ms: int,
        proposer: bytes,
        view: int,
        txs: Sequence[bytes],
        state_root: bytes,
        receipts_root: bytes,
    ) -> Block:
        """A block whose tx_root is computed from `txs`."""
        header = Header(chain_id, height, prev_hash, timestamp_ms, proposer, view,
                        tx_root_of(txs), state_root, receipts_root)
        block = cls(header, tuple(txs))
        object.__setattr__(block, "_tx_root_matches", True)
        return block

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def to_map(self) -> dict[str, Any]:
        return {"header": self.header.to_map(), "txs": list(self.txs)}

    def encode(self) -> bytes:
        return encode(self.to_map())

    @classmethod
    def decode(cls, data: bytes) -> Block:
        fields = _decode_fields("block", data, BLOCK_BYTES_MAX)
        _check_fields("block", fields, BLOCK_FIELDS)
        header, txs = fields["header"], fields["txs"]
        if not isinstance(header, dict):
            raise BlockError("block header must be a map")
        if not isinstance(txs, list):
            raise BlockError("block txs must be a list")
        return cls(Header.from_map(header), tuple(txs))

    def tx_hashes(self) -> list[bytes]:
        return [sha256(tx) for tx in self.txs]

    def check_tx_root(self) -> str | None:
        """None when the header's tx_root matches the txs, else the reason."""
        if self._tx_root_matches:
            return None
        actual = tx_root_of(self.txs)
        if actual != self.header.tx_root:
            return f"tx_root {self.header.tx_root.hex()} does not match the txs ({actual.hex()})"
        object.__setattr__(self, "_tx_root_matches", True)  # immutable fields: stays true
        return None

    def tx_proof(self, index: int) -> list[bytes]:
        """Merkle proof that tx `index` is in this block (check with `verify_tx_inclusion`)."""
        if not 0 <= index < len(self.txs):
            raise BlockError(f"tx index {index} outside 0..{len(self.txs) - 1}")
        return merkle_proof(list(self.txs), index)


def verify_tx_inclusion(
    header: Header, tx_bytes: bytes, index: int, count: int, proof: Sequence[bytes]
) -> bool:
    """True when `tx_bytes` is tx `index` of the `count` txs committed to by `header`."""
    return verify_proof(header.tx_root, tx_bytes, index, count, list(proof))


def verify_receipt_inclusion(
    header: Header, receipt: bytes, index: int, count: int, proof: Sequence[bytes]
) -> bool:
    """True when `receipt` is receipt `index` of the `count` committed to by `header`."""
    return verify_proof(header.receipts_root, receipt, index, count, list(proof))


def commit_vote_bytes(chain_id: str, view: int, seq: int, block_hash: bytes) -> bytes:
    """The exact bytes a validator signs in a PBFT COMMIT vote for `block_hash`."""
    return signing_payload("commit", chain_id, [view, seq, block_hash])


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    """A quorum of COMMIT votes for one block; signatures are kept sorted by public key."""

    seq: int
    view: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...]

    def __post_init__(self) -> None:
        _check_uint("seq", self.seq, minimum=1)
        _check_uint("view", self.view)
        _check_bytes("block_hash", self.block_hash, HASH_BYTES)
        if not isinstance(self.signatures, tuple | list):
            raise BlockError("signatures must be a sequence of (public key, signature) pairs")
        if not 1 <= len(self.signatures) <= SIGNERS_MAX:
            raise BlockError(f"a certificate holds 1..{SIGNERS_MAX} signatures")
        pairs: list[tuple[bytes, bytes]] = []
        for index, pair in enumerate(self.signatures):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise BlockError(f"signature {index} must be a (public key, signature) pair")
            _check_bytes(f"signature {index} public key", pair[0], PUBLIC_KEY_BYTES)
            _check_bytes(f"signature {index} signature", pair[1], SIGNATURE_BYTES)
            pairs.append((pair[0], pair[1]))
        pairs.sort()
        if len({key for key, _ in pairs}) != len(pairs):
            raise BlockError("a validator signs a certificate at most once")
        object.__setattr__(self, "signatures", tuple(pairs))

    def to_map(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "view": self.view,
            "block_hash": self.block_hash,
            "signatures": [[key, sig] for key, sig in self.signatures],
        }

    def encode(self) -> bytes:
        return encode(self.to_map())

    @classmethod
    def decode(cls, data: bytes) -> CommitCertificate:
        fields = _decode_fields("certificate", data, CERT_BYTES_MAX)
        _check_fields("certificate", fields, CERT_FIELDS)
        signatures = fields["signatures"]
        if not isinstance(signatures, list):
            raise BlockError("signatures must be a list")
        cert = cls(fields["seq"], fields["view"], fields["block_hash"],
                   tuple(tuple(pair) if isinstance(pair, list) else pair for pair in signatures))
        # One certificate, one byte form: the wire order must already be the sorted order.
        if [list(pair) for pair in cert.signatures] != signatures:
            raise BlockError("signatures are not sorted by public key")
        return cert

    def vote_bytes(self, chain_id: str) -> bytes:
        return commit_vote_bytes(chain_id, self.view, self.seq, self.block_hash)

    def verify(self, chain_id: str, validators: Sequence[bytes]) -> str | None:
        """None when this is a valid quorum certificate for `validators`, else the reason."""
        members = set(validators)
        if not members or len(members) != len(validators):
            return "the validator set is empty or lists a validator twice"
        needed = quorum_size(len(members))
        signers = [key for key, _ in self.signatures]
        if len(set(signers)) != len(signers):
            return "a validator signed more than once"
        if len(signers) < needed:
            return f"{len(signers)} signatures, a quorum of {len(members)} validators needs {needed}"
        message = self.vote_bytes(chain_id)
        for key, signature in self.signatures:
            if key not in members:
                return f"signer {key.hex()} is not a validator"
            if not verify(key, message, signature):
                return f"bad commit signature from {key.hex()}"
        return None
