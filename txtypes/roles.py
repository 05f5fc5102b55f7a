"""Roles held by accounts (treasury, issuer, registrar, utility, auditor, agency…).

Governance grants and revokes them; every family asks `has_role` before a privileged
operation. State layout: b"governance/role/<role>/<address>" -> canonical true.
"""

from __future__ import annotations

from ledger.codec import encode
from ledger.rules import RuleError, StateView

ROLE_PREFIX = b"governance/role/"


def role_key(role: str, address: str) -> bytes:
    return ROLE_PREFIX + role.encode() + b"/" + address.encode()


def has_role(state: StateView, address: str, role: str) -> bool:
    return state.get(role_key(role, address)) is not None


def require_role(state: StateView, address: str, role: str) -> None:
    if not has_role(state, address, role):
        raise RuleError("missing_role", f"account {address} does not hold the {role!r} role")


def grant_role(state: StateView, address: str, role: str) -> None:
    state.put(role_key(role, address), encode(True))


def revoke_role(state: StateView, address: str, role: str) -> None:
    state.delete(role_key(role, address))


def holders(state: StateView, role: str, limit: int = 1000) -> list[str]:
    prefix = ROLE_PREFIX + role.encode() + b"/"
    return [key[len(prefix):].decode() for key, _ in state.scan(prefix, limit)]
