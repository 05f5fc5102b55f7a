"""Authentication at the handshake: who is refused, and relays that must be detected."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.crypto import KeyPair
from p2p import HandshakeError, PeerNetwork, encode_frame, server_context, write_node_tls
from p2p.framing import read_frame
from p2p.handshake import (
    HANDSHAKE_FRAME_BYTES_MAX,
    accept_handshake,
    dial_handshake,
    hello_payload,
    peer_certificate_der,
)
from p2p.tls import build_certificate_pem, certificate_der, certificate_fingerprint
from tests.p2p.support import (
    CHAIN_ID,
    FAST_LIMITS,
    Inbox,
    closed_by_peer,
    free_ports,
    raw_dial,
    sorted_keys,
    wait_until,
)


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    message = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
    assert message is not None
    return message


def _network(
    key: KeyPair, validators: dict[bytes, str], port: int, inbox: Inbox, tls_dir: Path
) -> PeerNetwork:
    cert_path, key_path = write_node_tls(key, tls_dir)
    return PeerNetwork(
        CHAIN_ID, key, validators, f"127.0.0.1:{port}", inbox,
        cert_path=cert_path, key_path=key_path, limits=FAST_LIMITS,
    )


def test_a_node_whose_key_is_not_a_validator_is_refused_and_never_delivers(tmp_path: Path) -> None:
    outsider, validator, server_key = sorted_keys(3)
    ports = free_ports(3)
    inbox, outsider_inbox = Inbox(), Inbox()
    genesis = {
        validator.public_key: f"127.0.0.1:{ports[1]}",
        server_key.public_key: f"127.0.0.1:{ports[2]}",
    }

    async def scenario() -> None:
        server = _network(server_key, genesis, ports[2], inbox, tmp_path / "server")
        honest = _network(validator, genesis, ports[1], Inbox(), tmp_path / "honest")
        # The outsider runs the real transport and believes the server is its peer.
        intruder = _network(
            outsider,
            {outsider.public_key: f"127.0.0.1:{ports[0]}", **genesis},
            ports[0], outsider_inbox, tmp_path / "outsider",
        )
        for network in (server, honest, intruder):
            await network.start()
        try:
            intruder.broadcast({"forged": "vote"})
            # It keeps retrying (with backoff) and is refused every time.
            await wait_until(lambda: server.stats().get("accept_handshake_refused", 0) >= 2)
            await wait_until(lambda: server.connected_peers() == [validator.public_key])
            assert intruder.connected_peers() == []
            assert intruder.stats()["dial_handshake_refused_by_peer"] >= 2
            honest.send(server_key.public_key, {"honest": "vote"})
            await wait_until(lambda: len(inbox.received) == 1)
        finally:
            for network in (server, honest, intruder):
                await network.close()

    asyncio.run(scenario())
    assert inbox.received == [(validator.public_key, {"honest": "vote"})]


def test_an_application_frame_sent_instead_of_the_hello_is_not_delivered(tmp_path: Path) -> None:
    client, server_key = sorted_keys(2)
    (port,) = free_ports(1)
    inbox = Inbox()

    async def scenario() -> None:
        server = _network(
            server_key, {client.public_key: "127.0.0.1:1", server_key.public_key: f"127.0.0.1:{port}"},
            port, inbox, tmp_path / "server",
        )
        await server.start()
        try:
            reader, writer = await raw_dial(port, client, tmp_path / "client")
            writer.write(encode_frame({"type": "pre-prepare", "view": 0}))
            assert await closed_by_peer(reader)
            writer.close()
            assert server.stats()["accept_handshake_malformed"] == 1
        finally:
            await server.close()

    asyncio.run(scenario())
    assert inbox.received == []


def test_a_peer_claiming_another_validators_key_fails_the_signature_check(tmp_path: Path) -> None:
    impostor_victim, server_key = sorted_keys(2)
    impostor = KeyPair.generate()
    (port,) = free_ports(1)
    inbox = Inbox()

    async def scenario() -> None:
        server = _network(
            server_key,
            {impostor_victim.public_key: "127.0.0.1:1", server_key.public_key: f"127.0.0.1:{port}"},
            port, inbox, tmp_path / "server",
        )
        await server.start()
        try:
            reader, writer = await raw_dial(port, impostor, tmp_path / "impostor")
            fingerprint = certificate_fingerprint(peer_certificate_der(writer))
            nonce = b"\x07" * 32
            writer.write(encode_frame({
                "type": "p2p-hello", "version": 1, "chain_id": CHAIN_ID,
                "key": impostor_victim.public_key, "nonce": nonce,
            }))
            server_hello = await _read(reader)
            assert server_hello["type"] == "p2p-hello-server"
            # Everything right except the signer: the impostor does not hold the victim's key.
            payload = hello_payload(
                CHAIN_ID, "client", impostor_victim.public_key, server_key.public_key,
                nonce, server_hello["nonce"], fingerprint,
            )
            writer.write(encode_frame({"type": "p2p-hello-client", "sig": impostor.sign(payload)}))
            answer = await _read(reader)
            assert answer["type"] == "p2p-refused"
            writer.write(encode_frame({"type": "commit", "view": 0}))
            assert await closed_by_peer(reader)
            writer.close()
            assert server.stats()["accept_handshake_bad_signature"] == 1
            assert server.connected_peers() == []
        finally:
            await server.close()

    asyncio.run(scenario())
    assert inbox.received == []


def test_dialer_detects_a_relay_that_terminates_tls_with_another_certificate(tmp_path: Path) -> None:
    dialer_key, relay_key, server_key = sorted_keys(3)
    dialer_port, relay_port, server_port = free_ports(3)
    inbox = Inbox()

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await raw_dial(server_port, relay_key, tmp_path / "relay-up")
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def scenario() -> None:
        server = _network(
            server_key,
            {dialer_key.public_key: f"127.0.0.1:{dialer_port}", server_key.public_key: f"127.0.0.1:{server_port}"},
            server_port, inbox, tmp_path / "server",
        )
        # The dialer's route to the server leads to the relay instead.
        dialer = _network(
            dialer_key,
            {dialer_key.public_key: f"127.0.0.1:{dialer_port}", server_key.public_key: f"127.0.0.1:{relay_port}"},
            dialer_port, Inbox(), tmp_path / "dialer",
        )
        cert_path, key_path = write_node_tls(relay_key, tmp_path / "relay")
        relay_server = await asyncio.start_server(
            relay, "127.0.0.1", relay_port, ssl=server_context(cert_path, key_path)
        )
        await server.start()
        await dialer.start()
        try:
            dialer.send(server_key.public_key, {"secret": "vote"})
            await wait_until(lambda: dialer.stats().get("dial_handshake_wrong_key", 0) >= 2)
            assert dialer.connected_peers() == []
            assert server.connected_peers() == []
        finally:
            await dialer.close()
            await server.close()
            relay_server.close()

    asyncio.run(scenario())
    assert inbox.received == []


def test_a_validator_cannot_forward_anothers_hello_to_a_third_validator(tmp_path: Path) -> None:
    # The dialer honestly connects to validator M; M replays the exchange towards server B
    # to log in to B as the dialer. The dialer's signature names M and M's certificate.
    dialer_key, relay_key, server_key = sorted_keys(3)
    ports = free_ports(3)
    inbox = Inbox()
    genesis = {key.public_key: f"127.0.0.1:{port}" for key, port in zip((dialer_key, relay_key, server_key), ports, strict=True)}
    relay_seen: dict[str, Any] = {}

    async def scenario() -> None:
        server = _network(server_key, genesis, ports[2], inbox, tmp_path / "server")
        relay_cert, relay_tls_key = write_node_tls(relay_key, tmp_path / "relay")
        relay_fingerprint = certificate_fingerprint(certificate_der(relay_cert))

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                hello = await _read(reader)
                up_reader, up_writer = await raw_dial(ports[2], relay_key, tmp_path / "relay-up")
                up_writer.write(encode_frame(hello))
                server_hello = await _read(up_reader)
                # M answers the dialer with B's nonce, so the dialer signs a reusable nonce pair.
                signed = hello_payload(
                    CHAIN_ID, "server", relay_key.public_key, dialer_key.public_key,
                    hello["nonce"], server_hello["nonce"], relay_fingerprint,
                )
                writer.write(encode_frame({
                    "type": "p2p-hello-server", "key": relay_key.public_key,
                    "nonce": server_hello["nonce"], "sig": relay_key.sign(signed),
                }))
                client_hello = await _read(reader)
                up_writer.write(encode_frame(client_hello))
                relay_seen["server_answer"] = await _read(up_reader)
                up_writer.close()
            finally:
                writer.close()

        relay_server = await asyncio.start_server(
            relay, "127.0.0.1", ports[1], ssl=server_context(relay_cert, relay_tls_key)
        )
        await server.start()
        try:
            reader, writer = await raw_dial(ports[1], dialer_key, tmp_path / "dialer")
            with pytest.raises(HandshakeError):
                await dial_handshake(
                    reader, writer, chain_id=CHAIN_ID, key=dialer_key,
                    expected_peer=relay_key.public_key, server_cert_der=peer_certificate_der(writer),
                )
            writer.close()
            await wait_until(lambda: "server_answer" in relay_seen)
            assert relay_seen["server_answer"]["type"] == "p2p-refused"
            assert server.stats()["accept_handshake_bad_signature"] == 1
            assert server.connected_peers() == []
        finally:
            await server.close()
            relay_server.close()

    asyncio.run(scenario())
    assert inbox.received == []


@pytest.mark.parametrize(
    ("chain_id", "dial_from_higher_key"),
    [("another-chain", False), (CHAIN_ID, True)],
    ids=["wrong_chain", "higher_key_must_wait_to_be_dialed"],
)
def test_validators_on_another_chain_or_dialing_the_wrong_way_are_refused(
    tmp_path: Path, chain_id: str, dial_from_higher_key: bool
) -> None:
    low, high = sorted_keys(2)
    server_key, client_key = (low, high) if dial_from_higher_key else (high, low)
    (port,) = free_ports(1)
    inbox = Inbox()

    async def scenario() -> None:
        server = _network(
            server_key, {low.public_key: f"127.0.0.1:{port}", high.public_key: f"127.0.0.1:{port}"},
            port, inbox, tmp_path / "server",
        )
        await server.start()
        try:
            reader, writer = await raw_dial(port, client_key, tmp_path / "client")
            with pytest.raises(HandshakeError) as caught:
                await dial_handshake(
                    reader, writer, chain_id=chain_id, key=client_key,
                    expected_peer=server_key.public_key, server_cert_der=peer_certificate_der(writer),
                )
            assert caught.value.code == "handshake_refused_by_peer"
            writer.close()
            assert server.connected_peers() == []
        finally:
            await server.close()

    asyncio.run(scenario())


def test_an_oversize_hello_is_refused_before_it_is_read(tmp_path: Path) -> None:
    client, server_key = sorted_keys(2)
    (port,) = free_ports(1)

    async def scenario() -> None:
        server = _network(
            server_key, {client.public_key: "127.0.0.1:1", server_key.public_key: f"127.0.0.1:{port}"},
            port, Inbox(), tmp_path / "server",
        )
        await server.start()
        try:
            reader, writer = await raw_dial(port, client, tmp_path / "client")
            writer.write((HANDSHAKE_FRAME_BYTES_MAX + 1).to_bytes(4, "big"))
            assert await closed_by_peer(reader)
            writer.close()
            assert server.stats()["accept_handshake_malformed"] == 1
        finally:
            await server.close()

    asyncio.run(scenario())


_FUZZ_SERVER_KEY = KeyPair(b"\x05" * 32)
_FUZZ_SERVER_CERT_DER = x509.load_pem_x509_certificate(
    build_certificate_pem(_FUZZ_SERVER_KEY)[0]
).public_bytes(serialization.Encoding.DER)


class _CollectingWriter:
    """Stands in for the transport's write side; the handshake logic itself runs for real."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


_field_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.binary(max_size=70), st.text(max_size=12),
    st.sampled_from([b"\x00" * 32, b"\x01" * 64, CHAIN_ID, 1, "p2p-hello", "p2p-hello-client"]),
)


@st.composite
def _mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A well-formed handshake message with some fields replaced, removed or added."""
    message = dict(base)
    for name in draw(st.lists(st.sampled_from([*base, "extra"]), max_size=3)):
        if draw(st.booleans()):
            message.pop(name, None)
        else:
            message[name] = draw(_field_values)
    return message


_client_hello = {"type": "p2p-hello", "version": 1, "chain_id": CHAIN_ID, "key": b"\x02" * 32, "nonce": b"\x03" * 32}
_client_proof = {"type": "p2p-hello-client", "sig": b"\x04" * 64}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(_mutated(_client_hello), _mutated(_client_proof)), max_size=3),
    st.booleans(),
)
def test_arbitrary_hello_frames_end_in_a_handshake_error_and_never_authenticate(
    frames: list[dict[str, Any]], admit_everyone: bool
) -> None:
    async def run() -> BaseException | bytes:
        reader = asyncio.StreamReader()
        for frame in frames:
            reader.feed_data(encode_frame(frame))
        reader.feed_eof()
        try:
            return await accept_handshake(
                reader, _CollectingWriter(), chain_id=CHAIN_ID, key=_FUZZ_SERVER_KEY,  # type: ignore[arg-type]
                own_cert_der=_FUZZ_SERVER_CERT_DER,
                admit=lambda key: None if admit_everyone else "not a validator",
            )
        except HandshakeError as exc:
            return exc

    outcome = asyncio.run(run())
    assert isinstance(outcome, HandshakeError)


def test_hello_signing_bytes_match_the_documented_vector() -> None:
    # Pinned so a client in another language can interoperate: fixarray(4) of protocol tag,
    # domain "p2p-hello", chain id, then [role, own key, peer key, client nonce, server
    # nonce, server certificate fingerprint] as msgpack str/bin.
    payload = hello_payload(
        "cityledger-test", "client", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, b"\x05" * 32
    )
    expected = (
        "94ad636974796c65646765722f7631a97032702d68656c6c6faf636974796c65646765722d7465737496"
        "a6636c69656e74"
        + "".join("c420" + f"{byte:02x}" * 32 for byte in range(1, 6))
    )
    assert payload.hex() == expected
