"""What the executor needs from a rule module, and what a rule module sees.

The ledger imports nothing of ours, so the contract lives here as Protocols; `txtypes/base.py`
gives module authors a base class that satisfies them. State keys are bytes whose first
segment names the family that owns them (b"tokens/...", b"identity/..."); a module may read
any family's keys but writes its own and those its rules document (a contract moving tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from ledger.tx import Tx


class RuleError(Exception):
    """A transaction broke a rule: stable `code` for programs, `reason` for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class StateView(Protocol):
    """Key-value state as a rule module sees it during one block (read-your-writes)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` entries whose key starts with `prefix`, in ascending key order."""
        ...

    def get_obj(self, key: bytes) -> Any | None:
        """The canonically decoded value at `key`, or None."""
        ...

    def put_obj(self, key: bytes, value: Any) -> None:
        """Store `value` canonically encoded."""
        ...


@dataclass(frozen=True, slots=True)
class BlockContext:
    """Agreed facts about the block being executed: never the local clock."""

    chain_id: str
    height: int
    timestamp_ms: int
    proposer: bytes


@dataclass(frozen=True, slots=True)
class TxContext:
    """One transaction with its validated payload, as handed to check/apply."""

    tx: Tx
    payload: BaseModel
    block: BlockContext
    index: int

    @property
    def sender_address(self) -> str:
        return self.tx.sender_address


class RuleModule(Protocol):
    """A transaction family's rules (DESIGN.md principle 9)."""

    @property
    def family(self) -> str:
        """The family name transactions carry; a class attribute in txtypes.base.TxFamily."""
        ...

    @property
    def operations(self) -> Mapping[str, type[BaseModel]]:
        """Operation name -> strict pydantic payload schema."""
        ...

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        """Seed state from this module's genesis parameters; raise ValueError if they are bad."""
        ...

    def check(self, ctx: TxContext, state: StateView) -> None:
        """Raise RuleError if the transaction may not be applied."""
        ...

    def apply(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        """Apply the transaction; the returned map goes into its receipt as `result`."""
        ...

    def begin_block(self, block: BlockContext, state: StateView) -> None: ...

    def end_block(self, block: BlockContext, state: StateView) -> None: ...
