"""Transport configuration: the limits, address parsing and the redial backoff policy."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ledger.errors import LedgerError


class PeerConfigError(LedgerError):
    """A transport configuration that cannot work (bad address, key/cert mismatch...)."""

    code = "p2p_config_error"


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """Every bound of the transport. The defaults suit a LAN/loopback validator set."""

    # Must hold the largest block (4 MiB, ledger.codec.DECODE_BYTES_MAX) plus its envelope.
    frame_bytes_max: int = 8 * 1024 * 1024
    send_queue_frames_max: int = 4096
    send_queue_bytes_max: int = 64 * 1024 * 1024
    # A frame not sent within this long (its peer was away) is dropped: a few view-change
    # timeouts, long enough to carry a peer's restart, short enough that a node rejoining
    # after an outage is not handed thousands of stale votes and transactions.
    send_queue_frame_ttl_s: float = 5.0
    # Bytes handed to the socket per drain; bounds how long one batch holds the writer.
    write_batch_bytes_max: int = 1024 * 1024
    connect_timeout_s: float = 3.0
    handshake_timeout_s: float = 5.0
    write_timeout_s: float = 10.0
    keepalive_interval_s: float = 1.0
    idle_timeout_s: float = 6.0
    reconnect_base_s: float = 0.1
    reconnect_max_s: float = 5.0
    handshakes_pending_max: int = 64

    def validate(self) -> str | None:
        """The reason these limits cannot work, or None."""
        if self.frame_bytes_max < 1024:
            return "frame_bytes_max must be at least 1024"
        if self.send_queue_bytes_max < self.frame_bytes_max + 4:
            return "send_queue_bytes_max must hold at least one maximal frame"
        if self.send_queue_frames_max < 1 or self.handshakes_pending_max < 1:
            return "queue and pending-handshake limits must be positive"
        if self.idle_timeout_s <= self.keepalive_interval_s:
            return "idle_timeout_s must exceed keepalive_interval_s, or idle links would drop"
        if min(self.connect_timeout_s, self.handshake_timeout_s, self.write_timeout_s,
               self.send_queue_frame_ttl_s) <= 0:
            return "timeouts must be positive"
        if not 0 < self.reconnect_base_s <= self.reconnect_max_s:
            return "need 0 < reconnect_base_s <= reconnect_max_s"
        return None


def parse_address(text: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port", or PeerConfigError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise PeerConfigError(f"address {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def backoff_delay_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before redial number `attempt` (0-based): exponential, capped, with jitter.

    "Equal jitter": half the capped delay is fixed and half is random, so retries from many
    nodes spread out but a retry never comes sooner than half the backoff.
    """
    capped = min(max_s, base_s * (1 << min(attempt, 30)))
    return capped / 2 + rng.random() * capped / 2
