"""Quorum arithmetic, in one place (DESIGN.md principle 11).

With n validators, f = (n-1)//3 may be Byzantine and a quorum is q = ceil((n+f+1)/2).
That equals 2f+1 only when n = 3f+1; for n = 5 or 6 it is larger, which keeps any two
quorums intersecting in at least f+1 validators, so at least one honest one.
"""

from __future__ import annotations

from ledger.errors import invariant


def fault_tolerance(n: int) -> int:
    """How many of `n` validators may be Byzantine: f = (n-1)//3."""
    invariant(n >= 1, f"a validator set needs at least one member, got {n}")
    return (n - 1) // 3


def quorum_size(n: int) -> int:
    """Smallest number of distinct validators that forms a quorum: ceil((n+f+1)/2)."""
    f = fault_tolerance(n)
    return (n + f + 2) // 2
