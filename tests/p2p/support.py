"""Shared scaffolding for the p2p tests: keys, TLS files, free ports, a recording inbox."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.crypto import KeyPair
from p2p import PeerLimits, PeerNetwork, write_node_tls
from tests.ports import free_ports

CHAIN_ID = "cityledger-test"

# Short timers so reconnect and keepalive behaviour shows up within a second.
FAST_LIMITS = PeerLimits(
    connect_timeout_s=1.0,
    handshake_timeout_s=2.0,
    write_timeout_s=1.0,
    keepalive_interval_s=0.2,
    idle_timeout_s=3.0,
    reconnect_base_s=0.02,
    reconnect_max_s=0.2,
)


def sorted_keys(count: int, salt: int = 0) -> list[KeyPair]:
    """Deterministic key pairs ordered by public key (index 0 dials everyone)."""
    keys = [KeyPair(bytes([salt, index + 1]) * 16) for index in range(count)]
    return sorted(keys, key=lambda pair: pair.public_key)


@dataclass
class Inbox:
    """Records every delivered message and lets a test wait for a condition on them."""

    received: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, peer: bytes, message: dict[str, Any]) -> None:
        self.received.append((peer, message))

    def from_peer(self, peer: bytes) -> list[dict[str, Any]]:
        return [message for sender, message in self.received if sender == peer]


@dataclass
class Cluster:
    keys: list[KeyPair]
    ports: list[int]
    tls_dir: Path

    @property
    def validators(self) -> dict[bytes, str]:
        return {key.public_key: f"127.0.0.1:{port}" for key, port in zip(self.keys, self.ports, strict=True)}

    def tls_files(self, index: int) -> tuple[Path, Path]:
        return write_node_tls(self.keys[index], self.tls_dir / f"node{index}")

    def network(
        self, index: int, inbox: Callable[[bytes, dict[str, Any]], Any], limits: PeerLimits = FAST_LIMITS
    ) -> PeerNetwork:
        cert_path, key_path = self.tls_files(index)
        return PeerNetwork(
            CHAIN_ID,
            self.keys[index],
            self.validators,
            f"127.0.0.1:{self.ports[index]}",
            inbox,
            cert_path=cert_path,
            key_path=key_path,
            limits=limits,
        )


def make_cluster(tmp_path: Path, count: int) -> Cluster:
    return Cluster(sorted_keys(count), free_ports(count), tmp_path)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` until it holds; fail the test with a timeout otherwise."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def raw_dial(
    port: int, key: KeyPair, tls_dir: Path
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TLS connection to a node, before any HELLO (for speaking the protocol by hand)."""
    from p2p import client_context

    cert_path, key_path = write_node_tls(key, tls_dir)
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(cert_path, key_path), server_hostname="127.0.0.1"
    )


async def raw_authenticated_dial(
    port: int, key: KeyPair, server_key: bytes, tls_dir: Path
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that passed the real handshake as `key`; then the test writes raw bytes."""
    from p2p.handshake import dial_handshake, peer_certificate_der

    reader, writer = await raw_dial(port, key, tls_dir)
    await dial_handshake(
        reader, writer, chain_id=CHAIN_ID, key=key, expected_peer=server_key,
        server_cert_der=peer_certificate_der(writer),
    )
    return reader, writer


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> bool:
    """True once the other side has closed the connection (EOF or reset)."""
    async with asyncio.timeout(timeout_s):
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
    return True
