"""Random operation sequences over tokens keep the supply invariants at every height.

Every step executes one block through the real executor. After each step, for every class:
no balance is negative, issued <= budget, and
issued == sum of balances (accounts, merchants and escrow pseudo-accounts) + redeemed + burned.
An accepted operation must move exactly its amount; a rejected one must change no rule state.
A tiny test-only family locks units in "escrow:<n>" pseudo-accounts through
txtypes.balances, as the contracts module does, so pseudo-account holdings are covered too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pydantic import BaseModel, Field

from ledger.codec import decode
from ledger.rules import RuleError, StateView, TxContext
from tests.txtypes.conftest import Cast, Chain, city_genesis, city_modules
from txtypes.balances import BALANCE_PREFIX, balance_of, move
from txtypes.base import Payload, TxFamily
from txtypes.tokens import supply_record, token_class

CLASSES = ("social", "points")
EXPIRY_HEIGHT = 80
PEOPLE = (Cast.citizen, Cast.citizen2, Cast.outsider)
MERCHANTS = (Cast.grocer, Cast.bar)
ESCROWS = ("escrow:1", "escrow:2")
PERCENT = st.integers(1, 110)  # share of the current balance; over 100 must be refused


class EscrowPayload(Payload):
    class_id: str
    escrow: str
    amount: int = Field(ge=1)


class EscrowTestFamily(TxFamily):
    """Test-only: lock into and release from an escrow pseudo-account."""

    family: ClassVar[str] = "escrowtest"
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {
        "lock": EscrowPayload, "release": EscrowPayload,
    }

    def apply_lock(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, EscrowPayload)
        if token_class(state, p.class_id) is None:
            raise RuleError("unknown_class", p.class_id)
        move(state, p.class_id, ctx.sender_address, p.escrow, p.amount)
        return {}

    def apply_release(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, EscrowPayload)
        move(state, p.class_id, p.escrow, ctx.sender_address, p.amount)
        return {}


def rule_state(chain: Chain) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in chain.kv.items() if not k.startswith(b"nonce/")]


class TokenMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.chain = Chain([*city_modules(), EscrowTestFamily()], city_genesis())

    @initialize()
    def define_classes_and_merchants(self) -> None:
        for class_id, transferable, categories in (("social", False, ["food"]),
                                                   ("points", True, ["food", "bar"])):
            self.chain.ok(Cast.treasury, "tokens", "define_class", {
                "class_id": class_id, "name": class_id, "budget": 1500,
                "categories": categories, "transferable": transferable,
                "expiry_height": EXPIRY_HEIGHT, "redemption_cents_per_unit": 25,
            })
        for merchant, category in ((Cast.grocer, "food"), (Cast.bar, "bar")):
            self.chain.ok(Cast.registry, "tokens", "register_merchant",
                          {"merchant": merchant.address, "name": "m", "category": category})
        for class_id in CLASSES:
            for person in PEOPLE:
                self.chain.ok(Cast.treasury, "tokens", "issue",
                              {"class_id": class_id, "to": person.address, "amount": 100})

    def _amount(self, class_id: str, holder: str, percent: int) -> int:
        """A share of the holder's balance; above 100 percent it must be refused."""
        return max(1, balance_of(self.chain.state, class_id, holder) * percent // 100)

    # -- steps --------------------------------------------------------------------------
    def _run(self, signer: Any, family: str, op: str, payload: dict[str, Any],
             moves: list[tuple[str, str, int]]) -> None:
        """Run one tx; if accepted, each (class, holder, delta) must hold exactly."""
        class_id = payload.get("class_id", "social")
        before = {holder: balance_of(self.chain.state, class_id, holder) for _, holder, _ in moves}
        state_before = rule_state(self.chain)
        receipt = self.chain.run(signer, family, op, payload)
        if receipt.ok:
            for _, holder, delta in moves:
                assert balance_of(self.chain.state, class_id, holder) == before[holder] + delta
        else:
            assert receipt.code and receipt.reason
            assert rule_state(self.chain) == state_before, f"rejected {op} changed state"

    @rule(class_id=st.sampled_from(CLASSES), who=st.sampled_from(PEOPLE + MERCHANTS),
          amount=st.integers(1, 150))
    def issue(self, class_id: str, who: Any, amount: int) -> None:
        self._run(Cast.treasury, "tokens", "issue",
                  {"class_id": class_id, "to": who.address, "amount": amount},
                  [(class_id, who.address, amount)])

    @rule(class_id=st.sampled_from(CLASSES), sender=st.sampled_from(PEOPLE),
          to=st.sampled_from(PEOPLE + MERCHANTS), percent=PERCENT)
    def transfer(self, class_id: str, sender: Any, to: Any, percent: int) -> None:
        if sender.address == to.address:
            return
        amount = self._amount(class_id, sender.address, percent)
        self._run(sender, "tokens", "transfer",
                  {"class_id": class_id, "to": to.address, "amount": amount},
                  [(class_id, sender.address, -amount), (class_id, to.address, amount)])

    @rule(class_id=st.sampled_from(CLASSES), sender=st.sampled_from(PEOPLE),
          merchant=st.sampled_from(MERCHANTS), percent=PERCENT)
    def spend(self, class_id: str, sender: Any, merchant: Any, percent: int) -> None:
        amount = self._amount(class_id, sender.address, percent)
        self._run(sender, "tokens", "spend",
                  {"class_id": class_id, "merchant": merchant.address, "amount": amount},
                  [(class_id, sender.address, -amount), (class_id, merchant.address, amount)])

    @rule(class_id=st.sampled_from(CLASSES), merchant=st.sampled_from(MERCHANTS),
          percent=PERCENT)
    def redeem(self, class_id: str, merchant: Any, percent: int) -> None:
        amount = self._amount(class_id, merchant.address, percent)
        self._run(merchant, "tokens", "redeem", {"class_id": class_id, "amount": amount},
                  [(class_id, merchant.address, -amount)])

    @rule(class_id=st.sampled_from(CLASSES), who=st.sampled_from(PEOPLE),
          escrow=st.sampled_from(ESCROWS), percent=PERCENT, lock=st.booleans())
    def escrow(self, class_id: str, who: Any, escrow: str, percent: int, lock: bool) -> None:
        amount = self._amount(class_id, who.address if lock else escrow, percent)
        sign = -1 if lock else 1
        self._run(who, "escrowtest", "lock" if lock else "release",
                  {"class_id": class_id, "escrow": escrow, "amount": amount},
                  [(class_id, who.address, sign * amount), (class_id, escrow, -sign * amount)])

    @precondition(lambda self: self.chain.height >= EXPIRY_HEIGHT - 2)
    @rule(class_id=st.sampled_from(CLASSES), limit=st.integers(1, 3))
    def burn_expired(self, class_id: str, limit: int) -> None:
        self._run(Cast.outsider, "tokens", "burn_expired", {"class_id": class_id, "limit": limit},
                  [])

    @rule(blocks=st.integers(1, 8))
    def advance(self, blocks: int) -> None:
        self.chain.advance_to(self.chain.height + blocks)

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def supply_is_conserved_and_within_budget(self) -> None:
        state = self.chain.state
        for class_id in CLASSES:
            record = token_class(state, class_id)
            if record is None:
                continue
            prefix = BALANCE_PREFIX + class_id.encode() + b"/"
            balances = [decode(raw) for _, raw in state.scan(prefix, 10_000)]
            assert all(isinstance(b, int) and b > 0 for b in balances)
            supply = supply_record(state, class_id)
            assert supply["issued"] <= record["budget"]
            assert supply["issued"] == sum(balances) + supply["redeemed"] + supply["burned"]
            assert supply["outstanding"] == sum(balances)


SOAK = os.environ.get("CITYLEDGER_SOAK") == "1"
TokenMachine.TestCase.settings = settings(
    max_examples=300 if SOAK else 25,
    stateful_step_count=60 if SOAK else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_token_invariants_hold_over_random_operation_sequences = TokenMachine.TestCase
