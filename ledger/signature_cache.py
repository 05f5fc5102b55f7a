"""Ed25519 signatures this node has already verified, handed to a later check.

A catch-up range's commit certificates are verified in one batch on the verify pool
(TxVerifier.verify_signatures) before the replica checks them on the event-loop thread;
the replica's `verify` (this cache's `verify`) then finds each one here instead of running
libsodium a second time on the thread that bounds a sync.

Only a real verification that said yes adds an entry, keyed by the exact bytes of the
public key, message and signature: a triple is trusted because libsodium checked exactly
those bytes on this node, never because a peer said so.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ledger.crypto import verify as ed25519_verify

# verify(public_key, message, signature) -> bool; ledger.crypto.verify in production.
Verify = Callable[[bytes, bytes, bytes], bool]
Triple = tuple[bytes, bytes, bytes]  # (public key, message, signature)

# A fetched frame adds at most FETCH_SEQS_MAX (32) certificates of n signatures each, and
# its feed consumes them at once; what stays (an item the replica dropped before its check)
# is only ever evicted, oldest first. 8192 entries of ~450 bytes (the key tuple, its three
# bytes objects, the ordered-dict node): about 4 MB at most, and room for one whole frame
# of a 256-validator set.
SIGNATURES_MAX = 8192


class VerifiedSignatures:
    def __init__(self, verify: Verify = ed25519_verify,
                 entries_max: int = SIGNATURES_MAX) -> None:
        self.real_verify = verify
        self.entries_max = entries_max
        self._verified: OrderedDict[Triple, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._verified)

    def __contains__(self, triple: Triple) -> bool:
        return triple in self._verified

    def add(self, triple: Triple) -> None:
        """Record a triple that `real_verify` accepted; only TxVerifier calls this."""
        verified = self._verified
        while len(verified) >= self.entries_max:
            verified.popitem(last=False)  # the oldest: the least likely still to be asked
        verified[triple] = None

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """A drop-in `verify`: True for a triple verified here before (consuming it),
        otherwise the real check, whose answer is not cached.

        Consumed, because each entry is added for exactly one check that follows at once
        (the replica checks a fetched seq's certificate once, and drops later copies
        before checking): the cache stays near empty instead of holding a working set.
        """
        triple = (public_key, message, signature)
        if triple in self._verified:
            del self._verified[triple]
            return True
        return self.real_verify(public_key, message, signature)
