"""PeerNetwork: authenticated, framed, bounded connections to every other validator.

Topology: exactly one connection per validator pair, and the validator with the lower
public key (bytewise) dials. The higher key only accepts, and refuses a dial from a higher
key, so two nodes never race to build two connections. When an already-connected lower
key dials again, the new authenticated connection replaces the old one: a dialer only
redials after losing its connection, so the old one is dead even if our kernel has not
noticed yet (restart after SIGKILL).

Sending is fire-and-forget and at-most-once: `send` encodes, appends to that peer's
bounded queue and returns at once (False when the queue is full). A writer task per
connection drains the queue; frames queued while a peer is disconnected wait for the next
connection, for up to `send_queue_frame_ttl_s` (older ones are dropped unsent); a frame
handed to a connection that then dies is lost. Consensus tolerates loss (it retransmits
and state-transfers), and it must never wait on one peer.

Liveness: each connection sends a keepalive when it has had nothing to send for
`keepalive_interval_s`, and closes when it has received nothing for `idle_timeout_s`,
which catches a peer that is frozen (SIGSTOP) rather than gone. Dialers retry with
exponential backoff and jitter drawn from an injected random source.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from ledger.crypto import PUBLIC_KEY_BYTES, KeyPair
from p2p.config import PeerConfigError, PeerLimits, backoff_delay_s, parse_address
from p2p.framing import KEEPALIVE_FRAME, LENGTH_BYTES, FrameError, FrameReader, encode_frame
from p2p.handshake import HandshakeError, accept_handshake, dial_handshake, peer_certificate_der
from p2p.sendqueue import SendQueue
from p2p.tls import (
    TlsError,
    certificate_der,
    certificate_public_key,
    client_context,
    server_context,
)

logger = logging.getLogger("cityledger.p2p")

MessageHandler = Callable[[bytes, dict[str, Any]], None | Awaitable[None]]
PeerChangeHandler = Callable[[bytes, bool], None]


def _short(key: bytes) -> str:
    return key.hex()[:12]


class _Connection:
    """One authenticated link; the tasks that read from and write to it."""

    __slots__ = ("done", "outbound", "peer", "reader", "writer")

    def __init__(
        self, peer: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool
    ) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.outbound = outbound
        self.done = asyncio.Event()


class PeerNetwork:
    """The validator-to-validator transport of one node (see module docstring)."""

    def __init__(
        self,
        chain_id: str,
        key: KeyPair,
        validators: Mapping[bytes, str],
        listen: str,
        on_message: MessageHandler,
        *,
        cert_path: Path,
        key_path: Path,
        limits: PeerLimits | None = None,
        rng: random.Random | None = None,
        on_peer_change: PeerChangeHandler | None = None,
    ) -> None:
        self.limits = limits or PeerLimits()
        problem = self.limits.validate()
        if problem is not None:
            raise PeerConfigError(problem)
        self.chain_id = chain_id
        self.key = key
        self._listen = parse_address(listen)
        self._peers = self._parse_validators(validators)
        self._on_message = on_message
        self._on_peer_change = on_peer_change
        self._rng = rng or random.Random()
        self._own_cert_der = certificate_der(cert_path)
        try:
            cert_key = certificate_public_key(self._own_cert_der)
        except TlsError as exc:
            raise PeerConfigError(exc.reason) from exc
        if cert_key != key.public_key:
            raise PeerConfigError(f"TLS certificate {cert_path} is not for this node's validator key")
        self._server_ctx: ssl.SSLContext = server_context(cert_path, key_path)
        self._client_ctx: ssl.SSLContext = client_context(cert_path, key_path)
        self._queues = {peer: self._new_queue() for peer in self._peers}
        self._connections: dict[bytes, _Connection] = {}
        self._dialers: dict[bytes, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._handshakes_pending = 0
        self._links_changed = asyncio.Event()
        self._closing = False
        self.counters: Counter[str] = Counter()

    # -- public API -----------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        """The bound TCP port (useful when listening on port 0)."""
        if self._server is None or not self._server.sockets:
            raise PeerConfigError("the network is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen for lower-key validators and start dialing the higher-key ones."""
        if self._server is not None or self._closing:
            raise PeerConfigError("a PeerNetwork starts once")
        host, port = self._listen
        try:
            self._server = await asyncio.start_server(self._on_accept, host, port)
        except OSError as exc:
            raise PeerConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        logger.info("p2p listening on %s:%d as %s", host, self.listen_port, _short(self.key.public_key))
        for peer in sorted(self._peers):
            self._start_dialer(peer)

    def set_validators(self, validators: Mapping[bytes, str]) -> None:
        """Adopt a new validator set (after a reconfiguration) without a restart.

        Departed validators lose their connection, queue and dialer and are refused from now
        on; new ones get a queue and, when their key is higher, a dialer. An address change
        takes effect at the next dial.
        """
        updated = self._parse_validators(validators)
        for peer in sorted(set(self._peers) - set(updated)):
            logger.info("p2p %s left the validator set", _short(peer))
            del self._peers[peer]
            # Its queue goes; what it dropped for age stays counted.
            self.counters["send_dropped_stale"] += self._queues.pop(peer).stale_dropped
            dialer = self._dialers.pop(peer, None)
            if dialer is not None:
                dialer.cancel()
            connection = self._connections.get(peer)
            if connection is not None:
                connection.writer.transport.abort()
        for peer, address in updated.items():
            is_new = peer not in self._peers
            self._peers[peer] = address
            if is_new:
                self._queues[peer] = self._new_queue()
                if self._server is not None and not self._closing:
                    self._start_dialer(peer)

    def send(self, peer: bytes, message: dict[str, Any]) -> bool:
        """Queue `message` for `peer` without waiting; False when it was dropped.

        Raises CodecError when `message` is not a canonically encodable map (a bug).
        """
        return self._enqueue(peer, encode_frame(message))

    def broadcast(self, message: dict[str, Any]) -> int:
        """Queue `message` for every other validator (encoded once); returns how many took it."""
        frame = encode_frame(message)
        if not self._frame_fits(frame):
            return 0
        return sum(self._enqueue(peer, frame) for peer in self._peers)

    def connected_peers(self) -> list[bytes]:
        return sorted(self._connections)

    async def wait_for_peers(self, count: int, timeout_s: float) -> bool:
        """True once at least `count` peers are connected; False if `timeout_s` passes first."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self._connections) < count:
                    self._links_changed.clear()
                    await self._links_changed.wait()
        except TimeoutError:
            return False
        return True

    def peers(self) -> list[bytes]:
        """Every other validator this node talks to, connected or not."""
        return sorted(self._peers)

    def stats(self) -> dict[str, int]:
        """Counters (frames/bytes in and out, drops, closes by reason) and current depths."""
        snapshot = dict(self.counters)
        snapshot["peers_connected"] = len(self._connections)
        snapshot["send_queue_frames"] = sum(len(queue) for queue in self._queues.values())
        snapshot["send_queue_bytes"] = sum(queue.queued_bytes for queue in self._queues.values())
        snapshot["send_dropped_stale"] = self.counters["send_dropped_stale"] + sum(
            queue.stale_dropped for queue in self._queues.values())
        return snapshot

    def queue_depth(self, peer: bytes) -> int:
        queue = self._queues.get(peer)
        return len(queue) if queue is not None else 0

    async def close(self) -> None:
        """Stop listening, dialing and every connection; queued frames are discarded."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections.values()):
            connection.writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("p2p closed")

    # -- sending ----------------------------------------------------------------------

    def _frame_fits(self, frame: bytes) -> bool:
        # The receiver would close the link on it, so refusing here is kinder to everyone.
        if len(frame) - LENGTH_BYTES > self.limits.frame_bytes_max:
            self.counters["send_dropped_oversize"] += 1
            logger.error("p2p message of %d bytes exceeds frame_bytes_max; not sent", len(frame))
            return False
        return True

    def _enqueue(self, peer: bytes, frame: bytes) -> bool:
        if self._closing:
            return False
        queue = self._queues.get(peer)
        if queue is None:
            self.counters["send_unknown_peer"] += 1
            return False
        if not self._frame_fits(frame):
            return False
        if not queue.offer(frame):
            self.counters["send_dropped_queue_full"] += 1
            return False
        return True

    # -- setup helpers -----------------------------------------------------------------

    def _parse_validators(self, validators: Mapping[bytes, str]) -> dict[bytes, tuple[str, int]]:
        peers: dict[bytes, tuple[str, int]] = {}
        for peer, address in validators.items():
            if len(peer) != PUBLIC_KEY_BYTES:
                raise PeerConfigError(f"validator key {peer.hex()!r} is not {PUBLIC_KEY_BYTES} bytes")
            if peer != self.key.public_key:
                peers[bytes(peer)] = parse_address(address)
        return peers

    def _new_queue(self) -> SendQueue:
        limits = self.limits
        return SendQueue(limits.send_queue_frames_max, limits.send_queue_bytes_max,
                         limits.send_queue_frame_ttl_s)

    # -- tasks ------------------------------------------------------------------------

    def _start_dialer(self, peer: bytes) -> None:
        if self.key.public_key < peer:
            task = self._spawn(self._dial_forever(peer), f"p2p-dial-{_short(peer)}")
            self._dialers[peer] = task

            def forget(done: asyncio.Task[None]) -> None:
                if self._dialers.get(peer) is done:
                    del self._dialers[peer]

            task.add_done_callback(forget)

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _dial_forever(self, peer: bytes) -> None:
        attempt = 0
        while not self._closing and peer in self._peers:
            host, port = self._peers[peer]
            link = await self._dial_once(peer, host, port)
            if link is not None:
                attempt = 0
                await self._run_connection(peer, link[0], link[1], outbound=True)
            if self._closing:
                return
            delay = backoff_delay_s(
                attempt, self.limits.reconnect_base_s, self.limits.reconnect_max_s, self._rng
            )
            attempt += 1
            await asyncio.sleep(delay)

    async def _dial_once(
        self, peer: bytes, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.limits.connect_timeout_s + self.limits.handshake_timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._client_ctx, server_hostname=host,
                    ssl_handshake_timeout=self.limits.handshake_timeout_s,
                )
                await dial_handshake(
                    reader, writer, chain_id=self.chain_id, key=self.key, expected_peer=peer,
                    server_cert_der=peer_certificate_der(writer),
                )
        except asyncio.CancelledError:
            if writer is not None:
                writer.transport.abort()
            raise
        except HandshakeError as exc:
            self.counters[f"dial_{exc.code}"] += 1
            logger.warning("p2p dial %s at %s:%d refused: %s", _short(peer), host, port, exc)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            # Connection refused while a peer restarts is routine; keep it out of warnings.
            self.counters["dial_failed"] += 1
            logger.debug("p2p dial %s at %s:%d failed: %r", _short(peer), host, port, exc)
        else:
            return reader, writer
        if writer is not None:
            writer.transport.abort()
        return None

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that spawns our own task, so close() can cancel it (asyncio 3.11
        # logs an error when a task the server created itself is cancelled).
        if self._closing or self._handshakes_pending >= self.limits.handshakes_pending_max:
            self.counters["accept_refused_busy"] += 1
            writer.transport.abort()
            return
        self._handshakes_pending += 1
        self._spawn(self._serve_inbound(reader, writer), "p2p-inbound")

    async def _serve_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                await writer.start_tls(self._server_ctx)
                peer = await accept_handshake(
                    reader, writer, chain_id=self.chain_id, key=self.key,
                    own_cert_der=self._own_cert_der, admit=self._admit,
                )
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except HandshakeError as exc:
            self.counters[f"accept_{exc.code}"] += 1
            logger.warning("p2p refused connection from %s: %s", remote, exc)
            writer.transport.abort()
            return
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            # ssl.SSLError is an OSError: garbage instead of a TLS ClientHello lands here.
            self.counters["accept_handshake_failed"] += 1
            logger.warning("p2p handshake with %s failed: %r", remote, exc)
            writer.transport.abort()
            return
        finally:
            self._handshakes_pending -= 1
        await self._run_connection(peer, reader, writer, outbound=False)

    def _admit(self, claimed: bytes) -> str | None:
        if self._closing:
            return "node is shutting down"
        if claimed == self.key.public_key:
            return "that is this node's own key"
        if claimed not in self._peers:
            return "key is not a validator of this chain"
        if claimed > self.key.public_key:
            return "the validator with the lower key dials; wait to be dialed"
        return None

    # -- one connection ---------------------------------------------------------------

    async def _run_connection(
        self, peer: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool
    ) -> None:
        # A loop, not an if: another replacement may register while we wait.
        while (previous := self._connections.get(peer)) is not None:
            self.counters["connections_superseded"] += 1
            logger.info("p2p new connection from %s replaces the old one", _short(peer))
            previous.writer.transport.abort()
            await previous.done.wait()
        if self._closing or peer not in self._peers:  # shut down or voted out meanwhile
            writer.transport.abort()
            return
        connection = _Connection(peer, reader, writer, outbound)
        self._connections[peer] = connection
        self._links_changed.set()
        self.counters["connections_opened"] += 1
        logger.info("p2p connected to %s (%s)", _short(peer), "dialed" if outbound else "accepted")
        read_task = asyncio.get_running_loop().create_task(self._read_loop(connection))
        write_task = asyncio.get_running_loop().create_task(self._write_loop(connection))
        try:
            self._notify_peer_change(peer, True)
            await asyncio.wait((read_task, write_task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read_task, write_task):
                task.cancel()
            finished = await asyncio.gather(read_task, write_task, return_exceptions=True)
            writer.transport.abort()
            if self._connections.get(peer) is connection:
                del self._connections[peer]
                self._links_changed.set()
            connection.done.set()
            self.counters["connections_closed"] += 1
            reasons = [item for item in finished if isinstance(item, str)]
            failures = [
                item for item in finished
                if isinstance(item, BaseException) and not isinstance(item, asyncio.CancelledError)
            ]
            for failure in failures:
                # Only a raising on_message gets here: a bug in the node, not a peer fault.
                self.counters["handler_errors"] += 1
                logger.error(
                    "p2p message handler failed for %s; connection closed",
                    _short(peer), exc_info=failure,
                )
            logger.info("p2p disconnected from %s: %s", _short(peer), ", ".join(reasons) or "closed")
            self._notify_peer_change(peer, False)

    def _notify_peer_change(self, peer: bytes, connected: bool) -> None:
        # Scheduled, not called: a raising callback is then reported by the event loop and
        # cannot break the connection or dial task that noticed the change.
        if self._on_peer_change is not None and not self._closing:
            asyncio.get_running_loop().call_soon(self._on_peer_change, peer, connected)

    async def _read_loop(self, connection: _Connection) -> str:
        """Deliver frames until the link ends; returns why it ended."""
        peer = connection.peer
        limits = self.limits
        frames = FrameReader(connection.reader, limits.frame_bytes_max)
        while True:
            try:
                async with asyncio.timeout(limits.idle_timeout_s):
                    batch = await frames.read_batch()
            except FrameError as exc:
                self.counters[f"closed_{exc.code}"] += 1
                logger.warning("p2p closing link to %s: %s", _short(peer), exc)
                return f"bad frame ({exc.code})"
            except TimeoutError:
                self.counters["closed_idle"] += 1
                logger.warning("p2p closing link to %s: silent for %.1fs", _short(peer), limits.idle_timeout_s)
                return "idle timeout"
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self.counters["closed_frame_truncated"] += 1
                return "peer closed"
            except OSError as exc:
                return f"read error {exc!r}"
            self.counters["bytes_received"] += frames.take_bytes_read()
            for message in batch:
                if message is None:
                    continue
                self.counters["frames_received"] += 1
                result = self._on_message(peer, message)
                if inspect.isawaitable(result):
                    await result

    async def _write_loop(self, connection: _Connection) -> str:
        """Drain the peer's queue into the link; returns why it stopped."""
        queue = self._queues[connection.peer]
        writer = connection.writer
        limits = self.limits
        while True:
            try:
                async with asyncio.timeout(limits.keepalive_interval_s):
                    await queue.wait_nonempty()
            except TimeoutError:
                frames = [KEEPALIVE_FRAME]
            else:
                frames = queue.take_all(limits.write_batch_bytes_max)
                if not frames:  # everything queued had outlived its time to live
                    continue
            try:
                writer.writelines(frames)
                async with asyncio.timeout(limits.write_timeout_s):
                    await writer.drain()
            except TimeoutError:
                self.counters["closed_write_timeout"] += 1
                logger.warning("p2p closing link to %s: write stalled %.1fs", _short(connection.peer), limits.write_timeout_s)
                return "write timeout"
            except OSError as exc:
                return f"write error {exc!r}"
            if frames[0] is not KEEPALIVE_FRAME:
                self.counters["frames_sent"] += len(frames)
                self.counters["bytes_sent"] += sum(len(frame) for frame in frames)
