"""`escrow`: the payer locks units; the arbiter releases them to the payee, or they go back.

Terms: payee, arbiter, amount, deadline_height. The creator is the payer.
Actions: `release` (arbiter only: everything to the payee), `refund` (arbiter or payee:
everything back to the payer). At the end of block `deadline_height` an escrow still open is
refunded to the payer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from ledger.rules import RuleError, StateView, TxContext
from txtypes.base import Payload
from txtypes.contract_templates.base import (
    AddressStr,
    AmountInt,
    Contract,
    HeightInt,
    NoArgs,
    Opening,
    close,
    pay_out,
    refund_rest,
)


class EscrowTerms(Payload):
    payee: AddressStr
    arbiter: AddressStr
    amount: AmountInt
    deadline_height: HeightInt


class EscrowTemplate:
    name = "escrow"
    terms_schema: type[BaseModel] = EscrowTerms
    action_schemas: Mapping[str, type[BaseModel]] = {"release": NoArgs, "refund": NoArgs}

    def open(self, ctx: TxContext, state: StateView, terms: BaseModel) -> Opening:
        assert isinstance(terms, EscrowTerms)
        payer = ctx.sender_address
        if terms.payee == payer:
            raise RuleError("duplicate_party", "the payee must differ from the payer")
        if terms.arbiter in (payer, terms.payee):
            raise RuleError("arbiter_not_independent",
                            "the arbiter must be neither the payer nor the payee")
        return Opening(
            lock_amount=terms.amount,
            deadline_height=terms.deadline_height,
            data={"payer": payer, "payee": terms.payee, "arbiter": terms.arbiter,
                  "amount": terms.amount},
        )

    def check_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> None:
        sender = ctx.sender_address
        if action == "release" and sender != contract.data["arbiter"]:
            raise RuleError("not_arbiter", f"only the arbiter {contract.data['arbiter']} "
                            "may release this escrow")
        if action == "refund" and sender not in (contract.data["arbiter"], contract.data["payee"]):
            raise RuleError("not_arbiter_or_payee",
                            "only the arbiter or the payee may refund this escrow")

    def apply_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> dict[str, Any]:
        height = ctx.block.height
        if action == "release":
            amount = contract.held
            pay_out(state, contract, contract.data["payee"], amount)
            close(contract, "released", height)
            return {"paid": amount, "to": contract.data["payee"]}
        amount = refund_rest(state, contract)
        close(contract, "refunded", height)
        return {"refunded": amount, "to": contract.creator}

    def on_deadline(self, state: StateView, contract: Contract, height: int) -> None:
        refund_rest(state, contract)
        close(contract, "expired_refunded", height)
