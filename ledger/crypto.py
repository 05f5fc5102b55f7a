"""Ed25519 keys, signatures and SHA-256 hashing.

Verification uses PyNaCl (libsodium): on this machine class it verifies about 2.5x faster
than OpenSSL through `cryptography` (benchmarks/crypto_verify.py), and signature checks
dominate the per-transaction cost. libsodium calls release the GIL, so verification can
run on worker threads.

Every signed message is domain-separated by `signing_payload`: a signature made for one
purpose (a transaction, a commit vote, a peer handshake) on one chain can never be
replayed as another.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions

from ledger.codec import encode
from ledger.errors import CryptoError

PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32
ADDRESS_BYTES = 20
PROTOCOL_TAG = "cityledger/v1"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def address_of(public_key: bytes) -> str:
    """An account's address: hex of the first 20 bytes of SHA-256 of its public key."""
    return hashlib.sha256(public_key).digest()[:ADDRESS_BYTES].hex()


def signing_payload(domain: str, chain_id: str, body: Any) -> bytes:
    """The exact bytes signed for `body` in `domain` on chain `chain_id` (docs/PROTOCOL.md)."""
    return encode([PROTOCOL_TAG, domain, chain_id, body])


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message`; never raises."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


class KeyPair:
    """An Ed25519 signing key with its public key."""

    __slots__ = ("_secret", "public_key", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise CryptoError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        self.seed = bytes(seed)
        public_key, secret = nacl.bindings.crypto_sign_seed_keypair(self.seed)
        self.public_key: bytes = public_key
        self._secret: bytes = secret

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(os.urandom(SEED_BYTES))

    @property
    def address(self) -> str:
        return address_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        signed: bytes = nacl.bindings.crypto_sign(message, self._secret)
        return signed[:SIGNATURE_BYTES]

    def __repr__(self) -> str:  # never print the secret
        return f"KeyPair(public_key={self.public_key.hex()})"

    # -- key files ------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the key as JSON with mode 0600; refuses to overwrite an existing file."""
        body = json.dumps(
            {"type": "ed25519", "seed": self.seed.hex(), "public_key": self.public_key.hex()},
            indent=2,
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise CryptoError(f"key file {path} already exists; not overwriting it") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(body + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        """Read a key file written by `save`; refuses files others can read."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except OSError as exc:
            raise CryptoError(f"cannot read key file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CryptoError(
                f"key file {path} is accessible by group or others (mode {oct(mode & 0o777)}); "
                "run: chmod 600 " + str(path)
            )
        try:
            data = json.loads(text)
            if data.get("type") != "ed25519":
                raise CryptoError(f"key file {path}: type must be 'ed25519'")
            seed = bytes.fromhex(data["seed"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CryptoError(f"key file {path} is malformed: {exc}") from exc
        pair = cls(seed)
        if "public_key" in data and data["public_key"] != pair.public_key.hex():
            raise CryptoError(f"key file {path}: public_key does not match the seed")
        return pair


def parse_public_key(text: str) -> bytes:
    """A public key from its 64-character hex form, or CryptoError."""
    try:
        key = bytes.fromhex(text)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"public key {text!r} is not hex") from exc
    if len(key) != PUBLIC_KEY_BYTES:
        raise CryptoError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(key)}")
    return key
