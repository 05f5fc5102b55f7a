"""Hostile peers and clients get refused or their error, and the node keeps serving.

Everything here talks to a live validator process: the p2p port with raw TCP, with TLS
and a key that is not in genesis, and with a real validator's key sending bad frames; the
RPC port with a forged transaction and a 10 MB body. After each, the node must still
answer node_status and commit new transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.crypto import KeyPair
from p2p import HandshakeError, client_context, encode_frame, write_node_tls
from p2p.framing import read_frame
from p2p.handshake import dial_handshake, hello_payload, peer_certificate_der
from p2p.tls import CERT_FILE_NAME, KEY_FILE_NAME, certificate_der, certificate_fingerprint
from tests.integration.cluster import (
    Cluster,
    NodeProcess,
    RpcError,
    identity_tx,
    post_json,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One network for the whole module: each attack must leave it serving for the next."""
    shared = Cluster.create(tmp_path_factory.mktemp("hostile"))
    try:
        shared.start()
        yield shared
        # Across every attack, no acknowledged transaction went missing anywhere.
        shared.wait_converged(timeout_s=30)
        shared.assert_same_chain()
        shared.assert_no_lost_txs()
    finally:
        shared.close()

LINK_CLOSE_TIMEOUT_S = 10.0


def assert_still_serving(cluster: Cluster, node: NodeProcess) -> None:
    assert node.running, node.log_tail()
    assert node.status()["halted"] is None
    result = cluster.submit(node)
    assert result["status"] == "committed", result


def by_key(cluster: Cluster) -> list[tuple[bytes, NodeProcess]]:
    return sorted((bytes.fromhex(node.status()["node_id"]), node) for node in cluster.nodes)


def read_until_closed(sock: socket.socket, timeout_s: float = LINK_CLOSE_TIMEOUT_S) -> bytes:
    """Everything the node sends until it closes the connection (fails if it never does)."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the node kept the connection open for {timeout_s} s") from None
    return received


async def tls_connect(port: int, tls_dir: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = client_context(tls_dir / CERT_FILE_NAME, tls_dir / KEY_FILE_NAME)
    return await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                         server_hostname="127.0.0.1")


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the peer has closed (EOF or reset), skipping keepalives and frames."""
    try:
        async with asyncio.timeout(LINK_CLOSE_TIMEOUT_S):
            while await reader.read(65536):
                pass
    except (ConnectionError, OSError):
        return True
    return True


# -- p2p: authentication ------------------------------------------------------------------
def test_tls_client_whose_key_is_not_in_genesis_is_refused_at_the_handshake(
        cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.nodes[0]
    node_key = bytes.fromhex(node.status()["node_id"])
    stranger = KeyPair.generate()
    write_node_tls(stranger, tmp_path / "stranger-tls")

    async def attempt() -> HandshakeError:
        reader, writer = await tls_connect(node.p2p_port, tmp_path / "stranger-tls")
        try:
            with pytest.raises(HandshakeError) as refused:
                await dial_handshake(reader, writer, chain_id=cluster.chain_id, key=stranger,
                                     expected_peer=node_key,
                                     server_cert_der=peer_certificate_der(writer))
            assert await closed_by_peer(reader)
            return refused.value
        finally:
            writer.close()

    error = asyncio.run(attempt())
    assert error.code == "handshake_refused_by_peer"
    assert "not a validator" in error.reason
    assert_still_serving(cluster, node)


def test_stranger_claiming_a_validator_key_without_its_private_key_is_refused(
        cluster: Cluster, tmp_path: Path) -> None:
    (low_key, _), *_, (_, target) = by_key(cluster)  # a key the target accepts dials from
    stranger = KeyPair.generate()
    write_node_tls(stranger, tmp_path / "stranger-tls")

    async def attempt() -> dict[str, Any] | None:
        reader, writer = await tls_connect(target.p2p_port, tmp_path / "stranger-tls")
        try:
            fingerprint = certificate_fingerprint(peer_certificate_der(writer))
            nonce = os.urandom(32)
            writer.write(encode_frame({"type": "p2p-hello", "version": 1,
                                       "chain_id": cluster.chain_id, "key": low_key,
                                       "nonce": nonce}))
            server_hello = await read_frame(reader, 1024)
            assert server_hello is not None and server_hello["type"] == "p2p-hello-server"
            # We cannot sign as low_key; sign the right bytes with our own key instead.
            forged = stranger.sign(hello_payload(cluster.chain_id, "client", low_key,
                                                 server_hello["key"], nonce,
                                                 server_hello["nonce"], fingerprint))
            writer.write(encode_frame({"type": "p2p-hello-client", "sig": forged}))
            answer = await read_frame(reader, 1024)
            assert await closed_by_peer(reader)
            return answer
        finally:
            writer.close()

    answer = asyncio.run(attempt())
    assert answer is not None and answer["type"] == "p2p-refused", answer
    assert "signature" in answer["reason"]
    assert_still_serving(cluster, target)


# -- p2p: bad bytes -------------------------------------------------------------------------
def test_garbage_and_oversize_frames_on_the_p2p_port_close_only_that_connection(
        cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.nodes[1]
    # Raw garbage instead of a TLS ClientHello.
    log_size = node.log_size()
    with socket.create_connection(("127.0.0.1", node.p2p_port), timeout=5) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(os.urandom(64 * 1024))
        read_until_closed(sock)
    node.wait_logged("p2p handshake with", log_size)
    # A TLS session whose first frame announces 4 GiB before any HELLO.
    stranger = KeyPair.generate()
    write_node_tls(stranger, tmp_path / "stranger-tls")

    async def oversize_before_hello() -> None:
        reader, writer = await tls_connect(node.p2p_port, tmp_path / "stranger-tls")
        writer.write(b"\xff\xff\xff\xff" + os.urandom(1024))
        assert await closed_by_peer(reader)
        writer.close()

    log_size = node.log_size()
    asyncio.run(oversize_before_hello())
    node.wait_logged("exceeds the 1024-byte limit", log_size)
    assert_still_serving(cluster, node)


@pytest.mark.parametrize(("bad_frame", "logged"), [
    # 0xc1 is a byte msgpack never uses: the body cannot be decoded.
    (struct.pack(">I", 8) + b"\xc1" * 8, "not a canonical map"),
    # A length far over frame_bytes_max (8 MiB), refused before the body is read.
    (struct.pack(">I", 200 * 1024 * 1024) + os.urandom(4096), "exceeds the"),
], ids=["undecodable", "oversize"])
def test_bad_frame_from_an_authenticated_validator_closes_its_link_and_is_logged(
        cluster: Cluster, bad_frame: bytes, logged: str) -> None:
    (_, low_node), *_, (target_key, target) = by_key(cluster)
    # We hold the lowest validator's real key files: a faulty or compromised validator.
    low_key = KeyPair.load(low_node.home / "node_key.json")
    tls_dir = low_node.home / "tls"
    assert certificate_der(tls_dir / CERT_FILE_NAME)
    log_size = target.log_size()

    async def misbehave() -> None:
        reader, writer = await tls_connect(target.p2p_port, tls_dir)
        await dial_handshake(reader, writer, chain_id=cluster.chain_id, key=low_key,
                             expected_peer=target_key,
                             server_cert_der=peer_certificate_der(writer))
        # A well-formed frame of an unknown kind is dropped, the link stays up...
        writer.write(encode_frame({"k": "no-such-kind"}))
        await writer.drain()
        # ...the bad one closes it.
        writer.write(bad_frame)
        assert await closed_by_peer(reader)
        writer.close()

    asyncio.run(misbehave())

    target.wait_logged(logged, log_size)
    # The real validator reconnects and the network goes on with all four.
    assert_still_serving(cluster, target)
    cluster.wait_converged(timeout_s=30)
    wait_until(lambda: len(target.status()["connected_peers"]) == 3, 30,
               f"{target.name} to reconnect to every peer")


# -- RPC ------------------------------------------------------------------------------------
def test_transaction_with_invalid_signature_gets_error_32000_with_reason_and_is_not_stored(
        cluster: Cluster) -> None:
    node = cluster.nodes[2]
    tx = identity_tx(cluster.chain_id)
    forged = bytearray(tx.raw)
    signature_at = forged.rfind(tx.signature)
    assert signature_at > 0
    forged[signature_at + 10] ^= 0x01
    with pytest.raises(RpcError) as refused:
        node.rpc("tx_submit", tx=bytes(forged).hex(), wait=True)
    assert refused.value.code == -32000
    assert "signature" in refused.value.message.lower(), refused.value.message
    time.sleep(0.5)
    for other in cluster.nodes:
        with pytest.raises(RpcError) as missing:
            other.rpc("tx_get", hash=identity_tx_hash(bytes(forged)))
        assert missing.value.code == -32001
    # The genuine transaction still goes through.
    assert cluster.submit(node, tx)["status"] == "committed"
    assert_still_serving(cluster, node)
    cluster.assert_no_lost_txs()


def identity_tx_hash(raw: bytes) -> str:
    from ledger.crypto import sha256

    return sha256(raw).hex()


def test_ten_megabyte_rpc_body_gets_http_413_with_a_json_rpc_error(cluster: Cluster) -> None:
    node = cluster.nodes[3]
    pad = "x" * (10 * 1024 * 1024)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_status",
                       "params": {"pad": pad}}).encode()
    status, answer = post_json(node.rpc_url, body)
    assert status == 413
    assert answer["jsonrpc"] == "2.0" and answer["id"] is None
    assert answer["error"]["code"] < 0 and "limit" in answer["error"]["message"]
    # The same without Content-Length (chunked): cut off once over the limit.
    host, port = node.rpc_url.split("//")[1].split("/")[0].split(":")

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start:start + 256 * 1024]

    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        # The node may stop reading before we finish sending; its answer is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("POST", "/rpc", body=chunks(), encode_chunked=True,
                               headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == answer["error"]["code"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused so early the answer was lost in the reset; the node must still serve
    finally:
        connection.close()
    assert_still_serving(cluster, node)
