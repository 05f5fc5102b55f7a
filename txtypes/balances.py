"""Token balances: the one place that reads and moves units of a token class.

Tokens, contracts and energy all move value through these functions, so the invariants
hold in one spot: no balance goes negative, and units only move (issue, redeem and burn
are the tokens module's and adjust the class's supply record alongside).

Holders are account addresses (40 hex chars) or module-owned pseudo-accounts such as
"escrow:<contract id>" and "market:<zone>/<interval>", which hold locked funds.
State layout: b"tokens/bal/<class_id>/<holder>" -> canonical int (absent means 0).
"""

from __future__ import annotations

from ledger.codec import decode_stored, encode
from ledger.rules import RuleError, StateView

BALANCE_PREFIX = b"tokens/bal/"


_BALANCE_PREFIX_TEXT = BALANCE_PREFIX.decode()


def balance_key(class_id: str, holder: str) -> bytes:
    # One encode of one f-string: the same bytes as prefix + class + "/" + holder, each
    # encoded, since UTF-8 encodes a concatenation piecewise.
    return f"{_BALANCE_PREFIX_TEXT}{class_id}/{holder}".encode()


def _balance_at(state: StateView, key: bytes) -> int:
    raw = state.get(key)
    if raw is None:
        return 0
    value = decode_stored(raw)
    assert isinstance(value, int)
    return value


def balance_of(state: StateView, class_id: str, holder: str) -> int:
    return _balance_at(state, balance_key(class_id, holder))


def _set_balance_at(state: StateView, key: bytes, amount: int) -> None:
    if amount == 0:
        state.delete(key)
    else:
        state.put(key, encode(amount))


def credit(state: StateView, class_id: str, holder: str, amount: int) -> None:
    if amount < 0:
        raise RuleError("invalid_amount", f"cannot credit a negative amount {amount}")
    key = balance_key(class_id, holder)
    _set_balance_at(state, key, _balance_at(state, key) + amount)


def debit(state: StateView, class_id: str, holder: str, amount: int) -> None:
    if amount < 0:
        raise RuleError("invalid_amount", f"cannot debit a negative amount {amount}")
    key = balance_key(class_id, holder)
    current = _balance_at(state, key)
    if current < amount:
        raise RuleError(
            "insufficient_funds",
            f"{holder} holds {current} units of {class_id}, needs {amount}",
        )
    _set_balance_at(state, key, current - amount)


def move(state: StateView, class_id: str, source: str, target: str, amount: int) -> None:
    """Move `amount` units from `source` to `target`; RuleError if `source` lacks them."""
    if amount <= 0:
        raise RuleError("invalid_amount", f"amount must be positive, got {amount}")
    debit(state, class_id, source, amount)
    credit(state, class_id, target, amount)
