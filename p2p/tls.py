"""TLS material for a validator: a self-signed certificate whose key IS the validator key.

The certificate carries no trust of its own (nobody signs it but its owner); what makes it
meaningful is that its public key equals the node's Ed25519 validator key from genesis. A
dialer therefore trusts a server exactly when the server's certificate key is the key it
meant to dial (`certificate_public_key`), and TLS 1.3's CertificateVerify proves the server
holds the matching private key. Chain and date checks are deliberately off: there is no
CA, and an expiry date would only let a ledger halt itself on a calendar day.

The certificate is deterministic in the key (fixed serial, names and validity, and Ed25519
signatures are deterministic), so regenerating it for the same key gives the same bytes.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import NameOID

from ledger.crypto import KeyPair, sha256
from ledger.errors import LedgerError

CERT_FILE_NAME = "node_tls_cert.pem"
KEY_FILE_NAME = "node_tls_key.pem"
# Not checked by anyone (see module docstring); fixed so the certificate is reproducible.
_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class TlsError(LedgerError):
    """TLS material that cannot be written, read or bound to a validator key."""

    code = "tls_error"


def build_certificate_pem(key: KeyPair) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for the validator `key`."""
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CityLedger validator"),
            x509.NameAttribute(NameOID.COMMON_NAME, key.public_key.hex()),
        ]
    )
    serial = int.from_bytes(sha256(b"cityledger-tls-serial" + key.public_key)[:16], "big") >> 1
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(serial or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, algorithm=None)
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _write_private(path: Path, data: bytes) -> None:
    # 0600 before the first byte lands, also when an older file with a wider mode exists.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_node_tls(key: KeyPair, out_dir: Path) -> tuple[Path, Path]:
    """Write the node's certificate and private key into `out_dir`; returns (cert, key) paths.

    The key file is mode 0600. Rewriting for the same validator key gives identical files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = build_certificate_pem(key)
    cert_path = out_dir / CERT_FILE_NAME
    key_path = out_dir / KEY_FILE_NAME
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path


def certificate_public_key(cert_der: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key in a DER certificate, or TlsError."""
    try:
        certificate = x509.load_der_x509_certificate(cert_der)
        public = certificate.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"peer certificate cannot be parsed: {exc}") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise TlsError(f"peer certificate key is {type(public).__name__}, not Ed25519")
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def certificate_der(cert_path: Path) -> bytes:
    """The DER bytes of the PEM certificate at `cert_path`."""
    try:
        certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except OSError as exc:
        raise TlsError(f"cannot read certificate {cert_path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise TlsError(f"certificate {cert_path} is malformed: {exc}") from exc
    return certificate.public_bytes(serialization.Encoding.DER)


def certificate_fingerprint(cert_der: bytes) -> bytes:
    """SHA-256 of the DER certificate: what the signed HELLO binds to."""
    return sha256(cert_der)


def _base_context(protocol: int, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS certificate {cert_path} / key {key_path}: {exc}") from exc
    return context


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Context for accepting peers: TLS 1.3 only, presents our validator certificate.

    The client is not asked for a certificate: Python's ssl can only verify one against a CA,
    and validators have none. The client proves its validator key in the signed HELLO
    instead (p2p/handshake.py), bound to this server's certificate.
    """
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, cert_path, key_path)
    context.verify_mode = ssl.CERT_NONE
    return context


def client_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Context for dialing peers: TLS 1.3 only; the server's key is checked after the
    handshake against the validator key dialed (no CA, no host name)."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert_path, key_path)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
