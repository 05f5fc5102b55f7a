"""A real Ed25519 check that records each call, for tests of where signatures are checked."""

from __future__ import annotations

import threading

from ledger.crypto import verify as ed25519_verify
from ledger.signature_cache import Triple


class CountingVerify:
    """Ed25519 for real, recording each check: its triple, answer and thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[Triple, bool, str]] = []
        self._lock = threading.Lock()

    def __call__(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        ok = ed25519_verify(public_key, message, signature)
        with self._lock:
            self.calls.append(((public_key, message, signature), ok,
                               threading.current_thread().name))
        return ok

    def on_loop(self) -> list[tuple[Triple, bool, str]]:
        """The checks that ran outside the verify pool's threads."""
        return [call for call in self.calls if not call[2].startswith("verify")]
