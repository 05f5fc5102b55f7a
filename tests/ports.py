"""Loopback ports for tests that start servers (nodes, p2p listeners)."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def listen_port_window() -> tuple[int, int]:
    """The loopback ports tests may listen on: below the kernel's ephemeral range (see
    `free_ports`); where that range starts too low to leave room below, from its start up."""
    low, _ = _ephemeral_range()
    return (10000, low - 1) if low > 12000 else (low, 65535)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now, checked by binding them together.

    They are drawn below the kernel's ephemeral range: a port the kernel hands out for
    port 0 can be handed out again as the source port of some outgoing connection (the
    validators dial each other all the time) before our node binds it. Ports below the
    range are only ever taken by an explicit bind, and the bind check skips those in use.
    """
    first, last = listen_port_window()
    rng = random.Random()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", rng.randint(first, last)))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
