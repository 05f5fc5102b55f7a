"""The signed HELLO that binds a TLS connection to two genesis validator keys.

Python's ssl can verify a peer certificate only against a CA; validators have no CA, just
keys listed in genesis. So the channel is TLS 1.3 and authentication is split in two:

* Server -> client: the dialer checks that the server certificate's public key is the
  validator key it dialed (TLS 1.3 CertificateVerify proves the server holds that key).
* Client -> server: the client signs a HELLO that names both keys, both fresh nonces and
  the SHA-256 fingerprint of the server certificate it saw. The server checks the key is
  a validator allowed to dial it and verifies the signature against its own fingerprint.

The exchange, every message one frame (at most `HANDSHAKE_FRAME_BYTES_MAX` bytes):

    client -> server  {"type": "p2p-hello", "version", "chain_id", "key": Kc, "nonce": Nc}
    server -> client  {"type": "p2p-hello-server", "key": Ks, "nonce": Ns, "sig": Ss}
                      or {"type": "p2p-refused", "reason"}        (unknown key, wrong chain...)
    client -> server  {"type": "p2p-hello-client", "sig": Sc}
    server -> client  {"type": "p2p-welcome"} or {"type": "p2p-refused", "reason"}

    Ss = sign_Ks(signing_payload("p2p-hello", chain_id, ["server", Ks, Kc, Nc, Ns, fp]))
    Sc = sign_Kc(signing_payload("p2p-hello", chain_id, ["client", Kc, Ks, Nc, Ns, fp]))

Why this resists relays: a client's signature names the peer key and certificate it
talked to, so a validator M that receives it cannot forward it to validator B (B checks
["client", Kc, B, ..., fp_B]); a non-validator in the middle cannot present a certificate
for the dialed key at all. Fresh nonces from both sides stop replay; the chain id and the
"p2p-hello" domain stop cross-chain and cross-purpose reuse of the signatures. No
application frame is read or delivered before "p2p-welcome".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from ledger.crypto import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, KeyPair, signing_payload, verify
from ledger.errors import LedgerError
from p2p.framing import FrameError, encode_frame, read_frame
from p2p.tls import TlsError, certificate_fingerprint, certificate_public_key

HANDSHAKE_VERSION = 1
HANDSHAKE_FRAME_BYTES_MAX = 1024
NONCE_BYTES = 32
HELLO_DOMAIN = "p2p-hello"
REASON_CHARS_MAX = 200

# Given a claimed peer key, the reason to refuse it, or None to go on.
AdmitPolicy = Callable[[bytes], str | None]


class HandshakeError(LedgerError):
    """A peer that failed authentication; `code` says how (refused, bad_signature...)."""

    code = "handshake_failed"


def hello_payload(
    chain_id: str, role: str, own_key: bytes, peer_key: bytes, client_nonce: bytes,
    server_nonce: bytes, server_cert_fingerprint: bytes,
) -> bytes:
    """The exact bytes each side signs (see module docstring)."""
    body = [role, own_key, peer_key, client_nonce, server_nonce, server_cert_fingerprint]
    return signing_payload(HELLO_DOMAIN, chain_id, body)


def _bytes_field(message: dict[str, Any], name: str, length: int) -> bytes:
    value = message.get(name)
    if not isinstance(value, bytes) or len(value) != length:
        raise HandshakeError(f"field {name!r} must be {length} bytes", code="handshake_malformed")
    return value


async def _read(reader: asyncio.StreamReader, expected_type: str) -> dict[str, Any]:
    try:
        message = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
    except FrameError as exc:
        raise HandshakeError(f"bad handshake frame: {exc.reason}", code="handshake_malformed") from exc
    except asyncio.IncompleteReadError as exc:
        raise HandshakeError("peer closed during the handshake", code="handshake_closed") from exc
    if message is None:
        raise HandshakeError("keepalive during the handshake", code="handshake_malformed")
    kind = message.get("type")
    if kind == "p2p-refused":
        reason = message.get("reason")
        text = reason[:REASON_CHARS_MAX] if isinstance(reason, str) else "no reason given"
        raise HandshakeError(f"peer refused us: {text}", code="handshake_refused_by_peer")
    if kind != expected_type:
        raise HandshakeError(f"expected {expected_type!r}, got {kind!r}", code="handshake_malformed")
    return message


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(encode_frame(message))
    await writer.drain()


async def _refuse(writer: asyncio.StreamWriter, reason: str, code: str) -> HandshakeError:
    # Tell the peer why (it helps operators fix configs), then fail; the caller closes.
    with contextlib.suppress(ConnectionError, OSError):
        await _send(writer, {"type": "p2p-refused", "reason": reason[:REASON_CHARS_MAX]})
    return HandshakeError(reason, code=code)


def peer_certificate_der(writer: asyncio.StreamWriter) -> bytes:
    """The DER certificate the TLS peer presented, or HandshakeError."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise HandshakeError("peer presented no TLS certificate", code="handshake_no_certificate")
    return bytes(der)


async def dial_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chain_id: str,
    key: KeyPair,
    expected_peer: bytes,
    server_cert_der: bytes,
) -> None:
    """Authenticate the server we dialed as `expected_peer` and prove our key to it.

    Returns when the server has welcomed us; raises HandshakeError otherwise.
    """
    try:
        presented = certificate_public_key(server_cert_der)
    except TlsError as exc:
        raise HandshakeError(exc.reason, code="handshake_bad_certificate") from exc
    if presented != expected_peer:
        raise HandshakeError(
            f"server certificate key {presented.hex()[:16]}… is not the validator dialed "
            f"{expected_peer.hex()[:16]}…",
            code="handshake_wrong_key",
        )
    fingerprint = certificate_fingerprint(server_cert_der)
    client_nonce = os.urandom(NONCE_BYTES)
    await _send(
        writer,
        {
            "type": "p2p-hello",
            "version": HANDSHAKE_VERSION,
            "chain_id": chain_id,
            "key": key.public_key,
            "nonce": client_nonce,
        },
    )
    server_hello = await _read(reader, "p2p-hello-server")
    server_key = _bytes_field(server_hello, "key", PUBLIC_KEY_BYTES)
    server_nonce = _bytes_field(server_hello, "nonce", NONCE_BYTES)
    server_sig = _bytes_field(server_hello, "sig", SIGNATURE_BYTES)
    if server_key != expected_peer:
        raise HandshakeError("server HELLO names another key than its certificate", code="handshake_wrong_key")
    signed = hello_payload(
        chain_id, "server", server_key, key.public_key, client_nonce, server_nonce, fingerprint
    )
    if not verify(server_key, signed, server_sig):
        raise HandshakeError("server HELLO signature does not verify", code="handshake_bad_signature")
    ours = hello_payload(
        chain_id, "client", key.public_key, server_key, client_nonce, server_nonce, fingerprint
    )
    await _send(writer, {"type": "p2p-hello-client", "sig": key.sign(ours)})
    await _read(reader, "p2p-welcome")


async def accept_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chain_id: str,
    key: KeyPair,
    own_cert_der: bytes,
    admit: AdmitPolicy,
) -> bytes:
    """Authenticate a dialing peer; returns its validator key or raises HandshakeError.

    `admit` decides (before any signature work) whether the claimed key may connect.
    """
    hello = await _read(reader, "p2p-hello")
    if hello.get("version") != HANDSHAKE_VERSION:
        raise await _refuse(writer, f"unsupported handshake version {hello.get('version')!r}", "handshake_refused")
    if hello.get("chain_id") != chain_id:
        raise await _refuse(writer, "peer is on another chain", "handshake_refused")
    client_key = _bytes_field(hello, "key", PUBLIC_KEY_BYTES)
    client_nonce = _bytes_field(hello, "nonce", NONCE_BYTES)
    reason = admit(client_key)
    if reason is not None:
        raise await _refuse(writer, reason, "handshake_refused")
    fingerprint = certificate_fingerprint(own_cert_der)
    server_nonce = os.urandom(NONCE_BYTES)
    ours = hello_payload(
        chain_id, "server", key.public_key, client_key, client_nonce, server_nonce, fingerprint
    )
    await _send(
        writer,
        {"type": "p2p-hello-server", "key": key.public_key, "nonce": server_nonce, "sig": key.sign(ours)},
    )
    client_hello = await _read(reader, "p2p-hello-client")
    client_sig = _bytes_field(client_hello, "sig", SIGNATURE_BYTES)
    theirs = hello_payload(
        chain_id, "client", client_key, key.public_key, client_nonce, server_nonce, fingerprint
    )
    if not verify(client_key, theirs, client_sig):
        raise await _refuse(writer, "HELLO signature does not verify", "handshake_bad_signature")
    await _send(writer, {"type": "p2p-welcome"})
    return client_key
