from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from ledger.crypto import KeyPair
from p2p import TlsError, client_context, server_context, write_node_tls
from p2p.tls import certificate_der, certificate_public_key


def test_certificate_key_is_the_validator_key(tmp_path: Path) -> None:
    key = KeyPair.generate()
    cert_path, _ = write_node_tls(key, tmp_path)
    assert certificate_public_key(certificate_der(cert_path)) == key.public_key


def test_private_key_file_is_readable_only_by_its_owner(tmp_path: Path) -> None:
    _, key_path = write_node_tls(KeyPair.generate(), tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_rewriting_tls_for_the_same_key_gives_identical_files(tmp_path: Path) -> None:
    key = KeyPair(bytes(range(32)))
    first = [path.read_bytes() for path in write_node_tls(key, tmp_path / "a")]
    second = [path.read_bytes() for path in write_node_tls(key, tmp_path / "b")]
    assert first == second


def test_contexts_speak_only_tls13(tmp_path: Path) -> None:
    cert_path, key_path = write_node_tls(KeyPair.generate(), tmp_path)
    for context in (server_context(cert_path, key_path), client_context(cert_path, key_path)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.maximum_version == ssl.TLSVersion.TLSv1_3


def test_a_certificate_that_is_not_ed25519_is_refused() -> None:
    with pytest.raises(TlsError):
        certificate_public_key(b"\x30\x03\x02\x01\x00")


def test_missing_tls_files_give_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(TlsError):
        server_context(tmp_path / "nope.pem", tmp_path / "nope.key")


def test_rewriting_over_a_world_readable_key_file_makes_it_private(tmp_path: Path) -> None:
    key_path = tmp_path / "node_tls_key.pem"
    key_path.write_text("old")
    key_path.chmod(0o644)
    write_node_tls(KeyPair.generate(), tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
