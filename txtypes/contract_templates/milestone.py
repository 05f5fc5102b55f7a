"""`milestone`: a client pays a contractor (and its subcontractors) milestone by milestone.

Terms: contractor, inspector, deadline_height, milestones [{name, amount}], and
subcontractors [{account, share_bps}] (basis points of each milestone payment, together at
most 10000). The creator is the client and locks the sum of all milestone amounts.

Actions:
- `submit` {index}: the contractor declares milestone `index` done.
- `approve` {index}: the inspector accepts a submitted milestone; its amount is paid at
  once: each subcontractor gets floor(amount * share_bps / 10000), in the order listed,
  and the contractor the remainder (so the payment adds up exactly).
- `reject` {index, note}: the inspector sends a submitted milestone back to pending.
When every milestone is paid the contract closes as `completed`. At the end of block
`deadline_height` whatever is unpaid returns to the client (`expired`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field

from ledger.rules import RuleError, StateView, TxContext
from txtypes.base import Payload
from txtypes.contract_templates.base import (
    AddressStr,
    AmountInt,
    Contract,
    HeightInt,
    NoteStr,
    Opening,
    close,
    pay_out,
    refund_rest,
)

BPS_WHOLE = 10_000
MILESTONES_MAX = 32
SUBCONTRACTORS_MAX = 16

PENDING = "pending"
SUBMITTED = "submitted"
PAID = "paid"
REFUNDED = "refunded"


class MilestoneSpec(Payload):
    name: Annotated[str, Field(min_length=1, max_length=80)]
    amount: AmountInt


class SubcontractorShare(Payload):
    account: AddressStr
    share_bps: Annotated[int, Field(ge=1, le=BPS_WHOLE)]


class MilestoneTerms(Payload):
    contractor: AddressStr
    inspector: AddressStr
    deadline_height: HeightInt
    milestones: Annotated[list[MilestoneSpec], Field(min_length=1, max_length=MILESTONES_MAX)]
    subcontractors: Annotated[list[SubcontractorShare], Field(max_length=SUBCONTRACTORS_MAX)] = []


class MilestoneIndexArgs(Payload):
    index: Annotated[int, Field(ge=0, lt=MILESTONES_MAX)]


class RejectArgs(Payload):
    index: Annotated[int, Field(ge=0, lt=MILESTONES_MAX)]
    note: NoteStr = ""


def split_payment(amount: int, shares: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Subcontractors' floor shares in listed order; the caller pays the contractor the rest."""
    return [(share["account"], amount * share["share_bps"] // BPS_WHOLE) for share in shares]


class MilestoneTemplate:
    name = "milestone"
    terms_schema: type[BaseModel] = MilestoneTerms
    action_schemas: Mapping[str, type[BaseModel]] = {
        "submit": MilestoneIndexArgs,
        "approve": MilestoneIndexArgs,
        "reject": RejectArgs,
    }

    def open(self, ctx: TxContext, state: StateView, terms: BaseModel) -> Opening:
        assert isinstance(terms, MilestoneTerms)
        client = ctx.sender_address
        subs = [share.account for share in terms.subcontractors]
        parties = [client, terms.contractor, *subs]
        if len(set(parties)) != len(parties):
            raise RuleError("duplicate_party",
                            "client, contractor and subcontractors must all be different")
        if terms.inspector in parties:
            raise RuleError("inspector_not_independent",
                            "the inspector must not be the client, contractor or a "
                            "subcontractor")
        total_bps = sum(share.share_bps for share in terms.subcontractors)
        if total_bps > BPS_WHOLE:
            raise RuleError("shares_exceed_whole",
                            f"subcontractor shares add up to {total_bps} bps, over {BPS_WHOLE}")
        total = sum(m.amount for m in terms.milestones)
        return Opening(
            lock_amount=total,
            deadline_height=terms.deadline_height,
            data={
                "client": client,
                "contractor": terms.contractor,
                "inspector": terms.inspector,
                "subcontractors": [
                    {"account": s.account, "share_bps": s.share_bps}
                    for s in terms.subcontractors
                ],
                "milestones": [
                    {"name": m.name, "amount": m.amount, "state": PENDING, "paid_height": -1}
                    for m in terms.milestones
                ],
            },
        )

    def check_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> None:
        assert isinstance(args, MilestoneIndexArgs | RejectArgs)
        data = contract.data
        sender = ctx.sender_address
        if action == "submit" and sender != data["contractor"]:
            raise RuleError("not_contractor", "only the contractor may submit a milestone")
        if action in ("approve", "reject") and sender != data["inspector"]:
            raise RuleError("not_inspector", f"only the inspector may {action} a milestone")
        milestones = data["milestones"]
        if args.index >= len(milestones):
            raise RuleError("unknown_milestone",
                            f"milestone {args.index} does not exist (there are {len(milestones)})")
        current = milestones[args.index]["state"]
        if current == PAID:
            raise RuleError("milestone_already_paid", f"milestone {args.index} is already paid")
        if action == "submit" and current != PENDING:
            raise RuleError("milestone_already_submitted",
                            f"milestone {args.index} is already submitted")
        if action in ("approve", "reject") and current != SUBMITTED:
            raise RuleError("milestone_not_submitted",
                            f"milestone {args.index} must be submitted by the contractor "
                            f"before it can be {action}d")

    def apply_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> dict[str, Any]:
        assert isinstance(args, MilestoneIndexArgs | RejectArgs)
        data = contract.data
        milestone = data["milestones"][args.index]
        if action == "submit":
            milestone["state"] = SUBMITTED
            return {"index": args.index, "state": SUBMITTED}
        if action == "reject":
            milestone["state"] = PENDING
            return {"index": args.index, "state": PENDING}
        amount = milestone["amount"]
        payments = split_payment(amount, data["subcontractors"])
        contractor_part = amount - sum(part for _, part in payments)
        payments.insert(0, (data["contractor"], contractor_part))
        for account, part in payments:
            pay_out(state, contract, account, part)
        milestone["state"] = PAID
        milestone["paid_height"] = ctx.block.height
        if all(m["state"] == PAID for m in data["milestones"]):
            close(contract, "completed", ctx.block.height)
        return {"index": args.index, "payments": [[a, p] for a, p in payments]}

    def on_deadline(self, state: StateView, contract: Contract, height: int) -> None:
        for milestone in contract.data["milestones"]:
            if milestone["state"] != PAID:
                milestone["state"] = REFUNDED
        refund_rest(state, contract)
        close(contract, "expired", height)
