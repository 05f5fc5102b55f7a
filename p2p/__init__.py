"""Authenticated peer transport between validators: TLS 1.3, framed canonical msgpack.

Security design (details in p2p/handshake.py):

* Each node's TLS certificate is self-signed with its Ed25519 validator key, so the key
  in the certificate IS the genesis validator key (p2p/tls.py).
* Python's ssl cannot check a peer against a bare public key, so TLS gives the encrypted
  channel and server authentication by key comparison: the dialer refuses a server whose
  certificate key is not the validator key it dialed.
* The dialer proves its own key with a signed HELLO over both keys, two fresh nonces and
  the server certificate's fingerprint, domain-separated by "p2p-hello" and the chain id.
  The acceptor refuses any key that is not a genesis validator (or that should not be
  dialing it) before doing anything else, and no application frame is read or delivered
  until the exchange succeeds.
* One connection per validator pair: the lower key dials (p2p/network.py).

Frames are a 4-byte big-endian length and one canonical msgpack map; length 0 is a
keepalive. Bad frames close only the link that sent them, with a logged reason and a
counter. Logger name: "cityledger.p2p".
"""

from p2p.config import PeerConfigError, PeerLimits, backoff_delay_s, parse_address
from p2p.framing import FrameError, decode_frames, encode_frame
from p2p.handshake import HandshakeError
from p2p.network import PeerNetwork
from p2p.tls import TlsError, client_context, server_context, write_node_tls

__all__ = [
    "FrameError",
    "HandshakeError",
    "PeerConfigError",
    "PeerLimits",
    "PeerNetwork",
    "TlsError",
    "backoff_delay_s",
    "client_context",
    "decode_frames",
    "encode_frame",
    "parse_address",
    "server_context",
    "write_node_tls",
]
