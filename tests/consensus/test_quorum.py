"""Quorum arithmetic (DESIGN.md principle 11): any two quorums share an honest validator."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.quorum import fault_tolerance, quorum_size


def test_quorum_matches_the_formula_for_every_size_up_to_31() -> None:
    for n in range(1, 32):
        f = (n - 1) // 3
        assert fault_tolerance(n) == f
        assert quorum_size(n) == math.ceil((n + f + 1) / 2)


def test_any_two_quorums_intersect_in_at_least_f_plus_one_for_n_1_to_31() -> None:
    for n in range(1, 32):
        f, q = fault_tolerance(n), quorum_size(n)
        # Two quorums of size q among n overlap in at least 2q - n validators.
        assert 2 * q - n >= f + 1, n
        # A quorum is always reachable with f validators silent.
        assert q <= n - f, n


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=31), st.data())
def test_two_concrete_quorums_share_more_than_f_validators(n: int, data: st.DataObject) -> None:
    q, f = quorum_size(n), fault_tolerance(n)
    first = data.draw(st.sets(st.integers(0, n - 1), min_size=q, max_size=n))
    second = data.draw(st.sets(st.integers(0, n - 1), min_size=q, max_size=n))
    assert len(first & second) >= f + 1


def test_quorum_intersection_exhaustively_for_small_n() -> None:
    for n in range(1, 8):
        q, f = quorum_size(n), fault_tolerance(n)
        quorums = [set(c) for c in itertools.combinations(range(n), q)]
        assert min(len(a & b) for a in quorums for b in quorums) >= f + 1


def test_the_canary_quorum_breaks_intersection_somewhere() -> None:
    # The simulator's --canary lowers q by one; it must really be unsafe for some n,
    # otherwise the canary test would prove nothing.
    assert any(2 * (quorum_size(n) - 1) - n < fault_tolerance(n) + 1 for n in (4, 7))
