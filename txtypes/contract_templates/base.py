"""What a contract template is, and the contract record every template works on.

A template is a pluggable object with its own payload schemas: `terms_schema` validates the
terms given at creation, `action_schemas` the arguments of each action parties may take
later. The contracts family does the generic work (token class checks, locking the funds in
the pseudo-account "escrow:<contract id>", the deadline index, saving the record); a
template validates its terms, decides who may act and how escrowed funds are paid out, and
says what happens when the deadline height is reached.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field

from ledger.errors import invariant
from ledger.rules import StateView, TxContext
from txtypes.balances import move
from txtypes.base import Payload

ADDRESS_PATTERN = r"^[0-9a-f]{40}$"
ADDRESS_RE = re.compile(ADDRESS_PATTERN)
AMOUNT_MAX = 2**62
TEXT_MAX_CHARS = 200

STATUS_OPEN = "open"
STATUS_CLOSED = "closed"


# Field types shared by template schemas.
AmountInt = Annotated[int, Field(ge=1, le=AMOUNT_MAX)]
HeightInt = Annotated[int, Field(ge=0, le=AMOUNT_MAX)]
AddressStr = Annotated[str, Field(pattern=ADDRESS_PATTERN)]
NoteStr = Annotated[str, Field(max_length=TEXT_MAX_CHARS)]


class NoArgs(Payload):
    """Arguments of an action that takes none."""


@dataclass(slots=True)
class Contract:
    """One contract's record (stored canonically at b"contracts/c/<id>")."""

    id: str
    template: str
    creator: str
    class_id: str
    created_height: int
    deadline_height: int
    locked_total: int
    status: str = STATUS_OPEN
    outcome: str = ""
    closed_height: int = -1
    paid_out: int = 0
    refunded: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def escrow_account(self) -> str:
        return escrow_account(self.id)

    @property
    def held(self) -> int:
        """Units still locked in the escrow pseudo-account for this contract."""
        return self.locked_total - self.paid_out - self.refunded

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "template": self.template,
            "creator": self.creator,
            "class_id": self.class_id,
            "created_height": self.created_height,
            "deadline_height": self.deadline_height,
            "locked_total": self.locked_total,
            "status": self.status,
            "outcome": self.outcome,
            "closed_height": self.closed_height,
            "paid_out": self.paid_out,
            "refunded": self.refunded,
            "data": self.data,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Contract:
        return cls(
            id=record["id"],
            template=record["template"],
            creator=record["creator"],
            class_id=record["class_id"],
            created_height=record["created_height"],
            deadline_height=record["deadline_height"],
            locked_total=record["locked_total"],
            status=record["status"],
            outcome=record["outcome"],
            closed_height=record["closed_height"],
            paid_out=record["paid_out"],
            refunded=record["refunded"],
            data=dict(record["data"]),
        )


def escrow_account(contract_id: str) -> str:
    return f"escrow:{contract_id}"


def pay_out(state: StateView, contract: Contract, recipient: str, amount: int) -> None:
    """Pay `amount` from the contract's escrow to `recipient` (no-op for 0)."""
    if amount <= 0:
        return
    # Templates size every payment from what is held: a shortfall is a bug, so halt.
    invariant(amount <= contract.held,
              f"contract {contract.id} holds {contract.held}, cannot pay {amount}")
    move(state, contract.class_id, contract.escrow_account, recipient, amount)
    contract.paid_out += amount


def refund_rest(state: StateView, contract: Contract) -> int:
    """Return everything still held to the creator; the amount returned."""
    rest = contract.held
    if rest > 0:
        move(state, contract.class_id, contract.escrow_account, contract.creator, rest)
        contract.refunded += rest
    return rest


def close(contract: Contract, outcome: str, height: int) -> None:
    contract.status = STATUS_CLOSED
    contract.outcome = outcome
    contract.closed_height = height


@dataclass(frozen=True, slots=True)
class Opening:
    """What a template decided from valid terms: funds to lock, deadline, its own data."""

    lock_amount: int
    deadline_height: int
    data: dict[str, Any]


class ContractTemplate(Protocol):
    """A pluggable contract kind; see the module docstring."""

    name: str
    terms_schema: type[BaseModel]
    action_schemas: Mapping[str, type[BaseModel]]

    def open(self, ctx: TxContext, state: StateView, terms: BaseModel) -> Opening:
        """Validate terms (RuleError if bad, no writes) and describe the new contract."""
        ...

    def check_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> None:
        """RuleError if the sender may not take `action` now (no writes)."""
        ...

    def apply_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> dict[str, Any]:
        """Take a checked action: update `contract` in place, move escrowed funds."""
        ...

    def on_deadline(self, state: StateView, contract: Contract, height: int) -> None:
        """The deadline height's end of block: settle or refund and close `contract`."""
        ...
