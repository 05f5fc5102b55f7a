"""PeerNetwork over real TLS sockets on 127.0.0.1: delivery, bounds, bad frames, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ledger.codec import encode
from ledger.crypto import KeyPair
from p2p import PeerConfigError, PeerLimits, PeerNetwork, encode_frame, write_node_tls
from tests.p2p.support import (
    CHAIN_ID,
    FAST_LIMITS,
    Inbox,
    closed_by_peer,
    make_cluster,
    raw_authenticated_dial,
    wait_until,
)


def test_four_validators_exchange_messages_both_ways(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 4)
    inboxes = [Inbox() for _ in range(4)]
    block = {"kind": "block", "body": b"\xab" * (4 * 1024 * 1024)}

    async def scenario() -> None:
        networks = [cluster.network(index, inboxes[index]) for index in range(4)]
        for network in networks:
            await network.start()
        try:
            for network in networks:
                assert await network.wait_for_peers(3, 10.0)
            for sender in range(4):
                for receiver in range(4):
                    if sender != receiver:
                        sent = networks[sender].send(
                            cluster.keys[receiver].public_key, {"from": sender, "to": receiver}
                        )
                        assert sent
            # The highest key only accepts; it still sends a full-size block to the lowest.
            assert networks[3].send(cluster.keys[0].public_key, block)
            assert networks[1].broadcast({"round": 2}) == 3
            await wait_until(lambda: sum(len(inbox.received) for inbox in inboxes) == 12 + 1 + 3)
        finally:
            for network in networks:
                await network.close()

    asyncio.run(scenario())
    for receiver, inbox in enumerate(inboxes):
        for sender in range(4):
            if sender != receiver:
                assert {"from": sender, "to": receiver} in inbox.from_peer(cluster.keys[sender].public_key)
        if receiver != 1:
            assert {"round": 2} in inbox.from_peer(cluster.keys[1].public_key)
    assert block in inboxes[0].from_peer(cluster.keys[3].public_key)


def test_async_message_handlers_are_awaited(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 2)
    seen: list[dict[str, Any]] = []

    async def handler(peer: bytes, message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(message)

    async def scenario() -> None:
        first, second = cluster.network(0, Inbox()), cluster.network(1, handler)
        await first.start()
        await second.start()
        try:
            for index in range(5):
                first.send(cluster.keys[1].public_key, {"n": index})
            await wait_until(lambda: len(seen) == 5)
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
    assert seen == [{"n": index} for index in range(5)]  # order kept per peer


def test_each_bad_frame_closes_only_its_connection_and_the_node_keeps_serving(tmp_path: Path) -> None:
    # keys[0] is a validator spoken for by hand; keys[1] and keys[2] run real networks.
    cluster = make_cluster(tmp_path, 3)
    raw_key, live_key, server_key = (key.public_key for key in cluster.keys)
    server_inbox, live_inbox = Inbox(), Inbox()
    non_canonical = msgpack.packb({"b": 1, "a": 2})
    bad_frames = {
        "frame_undecodable": struct.pack(">I", 16) + b"\xc1" * 16,
        "frame_oversize": struct.pack(">I", FAST_LIMITS.frame_bytes_max + 1),
        "non_canonical": struct.pack(">I", len(non_canonical)) + non_canonical,
        "not_a_map": struct.pack(">I", len(encode([1, 2]))) + encode([1, 2]),
    }

    async def scenario() -> None:
        server = cluster.network(2, server_inbox)
        live = cluster.network(1, live_inbox)
        await server.start()
        await live.start()
        try:
            await wait_until(lambda: live_key in server.connected_peers())
            for name, frame in bad_frames.items():
                reader, writer = await raw_authenticated_dial(
                    server.listen_port, cluster.keys[0], server_key, tmp_path / "raw"
                )
                # The link works for good frames first, so the close below is the bad frame's doing.
                writer.write(encode_frame({"probe": name}))
                await wait_until(lambda name=name: {"probe": name} in server_inbox.from_peer(raw_key))
                writer.write(frame)
                assert await closed_by_peer(reader), name
                writer.close()
                # The other validator is still served in both directions.
                assert live.send(server_key, {"after": name})
                assert server.send(live_key, {"after": name})
                await wait_until(lambda name=name: {"after": name} in server_inbox.from_peer(live_key))
                await wait_until(lambda name=name: {"after": name} in live_inbox.from_peer(server_key))
            stats = server.stats()
            assert stats["closed_frame_oversize"] == 1
            assert stats["closed_frame_undecodable"] == 3
            assert server.connected_peers() == [live_key]
        finally:
            await server.close()
            await live.close()

    asyncio.run(scenario())
    assert len(server_inbox.from_peer(raw_key)) == len(bad_frames)  # only the probes


def test_garbage_instead_of_tls_is_dropped_and_counted(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 2)

    async def scenario() -> None:
        dialer, server = cluster.network(0, Inbox()), cluster.network(1, Inbox())
        await server.start()
        await dialer.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.listen_port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
            assert await closed_by_peer(reader)
            writer.close()
            await wait_until(lambda: server.stats().get("accept_handshake_failed", 0) == 1)
            await wait_until(lambda: dialer.connected_peers() == [cluster.keys[1].public_key])
            assert dialer.send(cluster.keys[1].public_key, {"still": "served"})
        finally:
            await server.close()
            await dialer.close()

    asyncio.run(scenario())


def test_a_dead_peer_fills_its_queue_and_drops_without_delaying_live_peers(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 3)
    live_inbox = Inbox()
    limits = PeerLimits(
        send_queue_frames_max=50, keepalive_interval_s=0.2, idle_timeout_s=3.0,
        reconnect_base_s=0.02, reconnect_max_s=0.2,
    )
    dead_key, live_key = cluster.keys[1].public_key, cluster.keys[2].public_key

    async def scenario() -> None:
        node = cluster.network(0, Inbox(), limits)  # keys[1] is never started
        live = cluster.network(2, live_inbox, limits)
        await node.start()
        await live.start()
        try:
            assert await node.wait_for_peers(1, 10.0)
            assert not await node.wait_for_peers(2, 0.3)  # the dead peer never comes
            assert node.connected_peers() == [live_key]
            started = time.monotonic()
            accepted = [node.send(dead_key, {"n": index}) for index in range(200)]
            assert node.broadcast({"all": True}) == 1  # the dead peer's queue is full
            assert node.send(live_key, {"live": True})
            assert time.monotonic() - started < 0.5
            assert accepted == [True] * 50 + [False] * 150
            assert node.stats()["send_dropped_queue_full"] == 151
            assert node.queue_depth(dead_key) == 50
            await wait_until(lambda: {"live": True} in live_inbox.from_peer(node.key.public_key), 2.0)
            assert {"all": True} in live_inbox.from_peer(node.key.public_key)
        finally:
            await node.close()
            await live.close()

    asyncio.run(scenario())


def test_a_peer_that_stops_reading_is_cut_off_by_the_write_timeout(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 3)
    stalled_key, live_key = cluster.keys[0].public_key, cluster.keys[1].public_key
    live_inbox = Inbox()
    limits = PeerLimits(write_timeout_s=2.0, reconnect_base_s=0.02, reconnect_max_s=0.2)

    async def scenario() -> None:
        server = cluster.network(2, Inbox(), limits)
        live = cluster.network(1, live_inbox, limits)
        await server.start()
        await live.start()
        try:
            reader, writer = await raw_authenticated_dial(
                server.listen_port, cluster.keys[0], cluster.keys[2].public_key, tmp_path / "raw"
            )
            await wait_until(lambda: stalled_key in server.connected_peers())
            chunk = {"pad": b"\x00" * (256 * 1024)}
            for _ in range(64):  # 16 MiB: far more than the socket buffers hold
                assert server.send(stalled_key, chunk)
            for index in range(20):
                assert server.send(live_key, {"n": index})
            await wait_until(lambda: len(live_inbox.received) == 20)
            # The live peer was served while the stalled link was still waiting on its write.
            assert stalled_key in server.connected_peers()
            await wait_until(lambda: stalled_key not in server.connected_peers(), 5.0)
            assert server.stats()["closed_write_timeout"] == 1
            writer.close()
        finally:
            await server.close()
            await live.close()

    asyncio.run(scenario())


def test_dialer_reconnects_after_the_peer_restarts_and_delivers_what_was_queued(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 2)
    low_key, high_key = (key.public_key for key in cluster.keys)
    before, after, dialer_inbox = Inbox(), Inbox(), Inbox()

    async def scenario() -> None:
        dialer = cluster.network(0, dialer_inbox)
        acceptor = cluster.network(1, before)
        await acceptor.start()
        await dialer.start()
        try:
            await wait_until(lambda: dialer.connected_peers() == [high_key])
            await acceptor.close()
            await wait_until(lambda: dialer.connected_peers() == [])
            assert dialer.send(high_key, {"queued": "while down"})
            restarted = cluster.network(1, after)
            await restarted.start()
            try:
                await wait_until(lambda: {"queued": "while down"} in after.from_peer(low_key), 5.0)
                assert restarted.send(low_key, {"back": True})
                await wait_until(lambda: {"back": True} in dialer_inbox.from_peer(high_key))
            finally:
                await restarted.close()
        finally:
            await dialer.close()

    asyncio.run(scenario())
    assert before.from_peer(low_key) == []


def test_frames_queued_for_a_peer_away_longer_than_their_time_to_live_are_not_sent(
        tmp_path: Path) -> None:
    # A node rejoining after an outage gets what was sent lately, not the whole outage.
    cluster = make_cluster(tmp_path, 2)
    low_key, high_key = (key.public_key for key in cluster.keys)
    limits = dataclasses.replace(FAST_LIMITS, send_queue_frame_ttl_s=2.0)
    after = Inbox()

    async def scenario() -> None:
        dialer = cluster.network(0, Inbox(), limits)
        await dialer.start()
        try:
            assert dialer.send(high_key, {"queued": "early"})
            await asyncio.sleep(2.5)
            assert dialer.send(high_key, {"queued": "late"})
            peer = cluster.network(1, after, limits)
            await peer.start()
            try:
                await wait_until(lambda: {"queued": "late"} in after.from_peer(low_key), 5.0)
                assert {"queued": "early"} not in after.from_peer(low_key)
                assert dialer.stats()["send_dropped_stale"] == 1
            finally:
                await peer.close()
        finally:
            await dialer.close()

    asyncio.run(scenario())


def test_acceptor_takes_the_new_connection_when_the_dialer_restarts(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 2)
    low_key, high_key = (key.public_key for key in cluster.keys)
    acceptor_inbox = Inbox()

    async def scenario() -> None:
        acceptor = cluster.network(1, acceptor_inbox)
        await acceptor.start()
        try:
            for generation in range(2):
                dialer = cluster.network(0, Inbox())
                await dialer.start()
                try:
                    await wait_until(lambda dialer=dialer: dialer.connected_peers() == [high_key])
                    assert dialer.send(high_key, {"generation": generation})
                    await wait_until(
                        lambda generation=generation: {"generation": generation}
                        in acceptor_inbox.from_peer(low_key)
                    )
                finally:
                    await dialer.close()
            await wait_until(lambda: acceptor.connected_peers() == [])
        finally:
            await acceptor.close()

    asyncio.run(scenario())


def test_a_second_connection_from_the_same_validator_replaces_the_first(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 2)
    inbox = Inbox()

    async def scenario() -> None:
        server = cluster.network(1, inbox)
        await server.start()
        try:
            old_reader, old_writer = await raw_authenticated_dial(
                server.listen_port, cluster.keys[0], cluster.keys[1].public_key, tmp_path / "raw"
            )
            new_reader, new_writer = await raw_authenticated_dial(
                server.listen_port, cluster.keys[0], cluster.keys[1].public_key, tmp_path / "raw"
            )
            assert await closed_by_peer(old_reader)
            new_writer.write(encode_frame({"on": "new link"}))
            await wait_until(lambda: len(inbox.received) == 1)
            assert server.connected_peers() == [cluster.keys[0].public_key]
            assert server.stats()["connections_superseded"] == 1
            old_writer.close()
            new_writer.close()
        finally:
            await server.close()

    asyncio.run(scenario())


def test_a_raising_message_handler_closes_that_link_and_the_link_comes_back(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 2)
    delivered: list[dict[str, Any]] = []

    def fragile(peer: bytes, message: dict[str, Any]) -> None:
        if message.get("explode"):
            raise RuntimeError("handler bug")
        delivered.append(message)

    async def scenario() -> None:
        dialer, acceptor = cluster.network(0, Inbox()), cluster.network(1, fragile)
        await acceptor.start()
        await dialer.start()
        try:
            high_key = cluster.keys[1].public_key
            await wait_until(lambda: dialer.connected_peers() == [high_key])
            dialer.send(high_key, {"explode": True})
            await wait_until(lambda: acceptor.stats().get("handler_errors", 0) == 1)
            # Delivery is at-most-once: what is sent after the link is back arrives.
            await wait_until(lambda: dialer.stats().get("connections_opened", 0) == 2)
            dialer.send(high_key, {"fine": True})
            await wait_until(lambda: delivered == [{"fine": True}], 5.0)
        finally:
            await dialer.close()
            await acceptor.close()

    asyncio.run(scenario())


def test_certificate_for_another_key_is_a_configuration_error(tmp_path: Path) -> None:
    key, other = KeyPair.generate(), KeyPair.generate()
    cert_path, key_path = write_node_tls(other, tmp_path)
    with pytest.raises(PeerConfigError):
        PeerNetwork(
            CHAIN_ID, key, {key.public_key: "127.0.0.1:1"}, "127.0.0.1:0", Inbox(),
            cert_path=cert_path, key_path=key_path,
        )


@pytest.mark.parametrize("address", ["localhost", "host:port", ":80", "h:70000"])
def test_malformed_addresses_are_configuration_errors(tmp_path: Path, address: str) -> None:
    key = KeyPair.generate()
    cert_path, key_path = write_node_tls(key, tmp_path)
    with pytest.raises(PeerConfigError):
        PeerNetwork(
            CHAIN_ID, key, {}, address, Inbox(), cert_path=cert_path, key_path=key_path,
        )


def test_a_silent_peer_is_dropped_after_the_idle_timeout_while_keepalives_hold_real_links(
    tmp_path: Path,
) -> None:
    cluster = make_cluster(tmp_path, 3)
    limits = PeerLimits(keepalive_interval_s=0.1, idle_timeout_s=1.0, reconnect_base_s=0.02, reconnect_max_s=0.2)
    silent_key, live_key = cluster.keys[0].public_key, cluster.keys[1].public_key

    async def scenario() -> None:
        server, live = cluster.network(2, Inbox(), limits), cluster.network(1, Inbox(), limits)
        await server.start()
        await live.start()
        try:
            # A frozen peer (think SIGSTOP): authenticated, then never sends another byte.
            reader, writer = await raw_authenticated_dial(
                server.listen_port, cluster.keys[0], cluster.keys[2].public_key, tmp_path / "raw"
            )
            await wait_until(lambda: server.connected_peers() == [silent_key, live_key])
            await asyncio.sleep(2.2)  # two idle timeouts
            assert server.connected_peers() == [live_key]
            assert server.stats()["closed_idle"] == 1
            assert server.stats()["connections_opened"] == 2  # the live link never dropped
            writer.close()
        finally:
            await server.close()
            await live.close()

    asyncio.run(scenario())


def test_unfinished_handshakes_are_capped_and_time_out(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 2)
    limits = PeerLimits(
        handshakes_pending_max=2, handshake_timeout_s=0.5, reconnect_base_s=0.02, reconnect_max_s=0.1
    )

    async def scenario() -> None:
        server = cluster.network(1, Inbox(), limits)
        await server.start()
        try:
            # Two connections that never start TLS hold every pending-handshake slot.
            idle = [await asyncio.open_connection("127.0.0.1", server.listen_port) for _ in range(2)]
            await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.listen_port)
            assert await closed_by_peer(reader, 1.0)
            assert server.stats()["accept_refused_busy"] == 1
            for idle_reader, _ in idle:
                assert await closed_by_peer(idle_reader, 2.0)
            assert server.stats()["accept_handshake_failed"] == 2
            # With the slots free again, a real validator gets in.
            dialer = cluster.network(0, Inbox(), limits)
            await dialer.start()
            await wait_until(lambda: dialer.connected_peers() == [cluster.keys[1].public_key])
            await dialer.close()
            writer.close()
            for _, idle_writer in idle:
                idle_writer.close()
        finally:
            await server.close()

    asyncio.run(scenario())


def test_validator_set_changes_connect_newcomers_and_cut_off_departed_validators(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 3)
    keys = [key.public_key for key in cluster.keys]
    events: list[tuple[bytes, bool]] = []

    async def scenario() -> None:
        everyone = cluster.validators
        first_two = {key: everyone[key] for key in keys[:2]}
        networks = []
        for index in range(3):
            cert_path, key_path = cluster.tls_files(index)
            networks.append(
                PeerNetwork(
                    CHAIN_ID, cluster.keys[index], first_two if index < 2 else everyone,
                    f"127.0.0.1:{cluster.ports[index]}", Inbox(),
                    cert_path=cert_path, key_path=key_path, limits=FAST_LIMITS,
                    on_peer_change=(lambda peer, up: events.append((peer, up))) if index == 0 else None,
                )
            )
        for network in networks:
            await network.start()
        try:
            await wait_until(lambda: networks[0].connected_peers() == [keys[1]])
            # keys[2] joins by reconfiguration: keys[0] and keys[1] now dial it.
            networks[0].set_validators(everyone)
            networks[1].set_validators(everyone)
            await wait_until(lambda: networks[2].connected_peers() == keys[:2])
            # keys[1] leaves: the others drop it and refuse its redials.
            without_1 = {key: everyone[key] for key in (keys[0], keys[2])}
            networks[0].set_validators(without_1)
            networks[2].set_validators(without_1)
            await wait_until(lambda: networks[0].connected_peers() == [keys[2]])
            await wait_until(lambda: networks[2].connected_peers() == [keys[0]])
            await wait_until(lambda: networks[2].stats().get("accept_handshake_refused", 0) >= 1)
            assert not networks[0].send(keys[1], {"to": "departed"})
        finally:
            for network in networks:
                await network.close()

    asyncio.run(scenario())
    assert events[:3] == [(keys[1], True), (keys[2], True), (keys[1], False)]
