"""Ed25519 keys and signatures, key files, addresses and domain-separated payloads."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import decode
from ledger.crypto import (
    PROTOCOL_TAG,
    KeyPair,
    address_of,
    parse_public_key,
    sha256,
    signing_payload,
    verify,
)
from ledger.errors import CryptoError

SEED = bytes(range(32))


def test_signatures_match_an_independent_ed25519_implementation() -> None:
    key = KeyPair(SEED)
    other = Ed25519PrivateKey.from_private_bytes(SEED)
    message = b"cross-check"
    assert key.sign(message) == other.sign(message)  # Ed25519 is deterministic
    assert key.public_key == other.public_key().public_bytes_raw()


@settings(deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=8 * 64 - 1))
def test_a_signature_with_any_bit_flipped_does_not_verify(message: bytes, bit: int) -> None:
    key = KeyPair(SEED)
    signature = bytearray(key.sign(message))
    assert verify(key.public_key, message, bytes(signature))
    signature[bit // 8] ^= 1 << (bit % 8)
    assert not verify(key.public_key, message, bytes(signature))


def test_verify_is_false_for_another_message_key_or_malformed_inputs() -> None:
    key, other = KeyPair(SEED), KeyPair(bytes(32))
    signature = key.sign(b"m")
    assert not verify(key.public_key, b"n", signature)
    assert not verify(other.public_key, b"m", signature)
    assert not verify(key.public_key[:31], b"m", signature)
    assert not verify(key.public_key, b"m", signature[:63])
    assert not verify(b"\xff" * 32, b"m", signature)


def test_keypair_refuses_a_seed_of_the_wrong_length_and_never_prints_the_secret() -> None:
    with pytest.raises(CryptoError):
        KeyPair(b"short")
    assert SEED.hex() not in repr(KeyPair(SEED))
    assert KeyPair.generate().public_key != KeyPair.generate().public_key


def test_key_file_round_trips_with_mode_0600_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.key"
    key = KeyPair(SEED)
    key.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert KeyPair.load(path).public_key == key.public_key
    with pytest.raises(CryptoError, match="already exists"):
        KeyPair(bytes(32)).save(path)
    assert KeyPair.load(path).public_key == key.public_key


def test_loading_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    KeyPair(SEED).save(path)
    path.chmod(0o644)
    with pytest.raises(CryptoError, match="chmod 600"):
        KeyPair.load(path)


@pytest.mark.parametrize(
    "content",
    ["not json", json.dumps({"type": "rsa", "seed": SEED.hex()}), json.dumps({"type": "ed25519"}),
     json.dumps({"type": "ed25519", "seed": "zz"}), json.dumps([1]),
     json.dumps({"type": "ed25519", "seed": SEED.hex(), "public_key": "00" * 32})],
)
def test_malformed_key_files_are_a_typed_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "node.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(CryptoError):
        KeyPair.load(path)


def test_missing_key_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="cannot read"):
        KeyPair.load(tmp_path / "absent.key")


def test_address_is_the_first_20_bytes_of_the_public_key_hash() -> None:
    key = KeyPair(SEED)
    assert address_of(key.public_key) == hashlib.sha256(key.public_key).digest()[:20].hex()
    assert key.address == address_of(key.public_key) and len(key.address) == 40
    assert sha256(b"abc") == hashlib.sha256(b"abc").digest()


def test_parse_public_key_accepts_64_hex_characters_only() -> None:
    key = KeyPair(SEED).public_key
    assert parse_public_key(key.hex()) == key
    for bad in ["zz" * 32, key.hex()[:62], key.hex() + "00"]:
        with pytest.raises(CryptoError):
            parse_public_key(bad)


def test_signing_payload_separates_domains_and_chains() -> None:
    body = {"x": 1}
    payload = signing_payload("tx", "city", body)
    assert decode(payload) == [PROTOCOL_TAG, "tx", "city", body]
    assert payload != signing_payload("commit", "city", body)
    assert payload != signing_payload("tx", "other", body)
    key = KeyPair(SEED)
    assert not verify(key.public_key, signing_payload("commit", "city", body), key.sign(payload))
