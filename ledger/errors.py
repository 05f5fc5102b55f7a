"""Typed operating errors and the invariant helper (DESIGN.md principle 10).

Operating errors are values with a stable code: bad input from a peer, a client or a
file. They never crash the node. Programmer errors are broken invariants: `invariant()`
raises even under `python -O`, and the node halts rather than sign past one.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every typed operating error: a stable machine code and a readable reason."""

    code: str = "ledger_error"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        if code is not None:
            self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class CodecError(LedgerError):
    """Bytes that are not the canonical encoding of an allowed value."""

    code = "codec_error"


class CryptoError(LedgerError):
    """A malformed key, key file or signature."""

    code = "crypto_error"


class InvariantViolation(AssertionError):
    """A programmer error: the process must stop instead of continuing."""


def invariant(condition: bool, message: str) -> None:
    """Check a condition that only a bug can break; unlike `assert`, survives `python -O`."""
    if not condition:
        raise InvariantViolation(message)
