"""Tokens: classes, issue within budget and eligibility, transfer, spend, redeem, burn."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.overlay import MemoryKV, Overlay
from tests.txtypes.conftest import Cast, Chain, key
from txtypes.balances import balance_of, move
from txtypes.credentials import commit_attributes
from txtypes.identity import did_for_address
from txtypes.tokens import (
    TokensFamily,
    merchant_get,
    merchant_owed_cents,
    sum_balances,
    supply_record,
    token_balance,
    token_class_get,
)

FOOD = "food"


def social_class(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "class_id": "social", "name": "Social support token", "budget": 1000,
        "categories": ["food", "clothing"], "transferable": False, "expiry_height": 100,
        "redemption_cents_per_unit": 100,
    }
    payload.update(overrides)
    return payload


def setup_city(chain: Chain, **class_overrides: Any) -> None:
    chain.ok(Cast.treasury, "tokens", "define_class", social_class(**class_overrides))
    chain.ok(Cast.registry, "tokens", "register_merchant",
             {"merchant": Cast.grocer.address, "name": "Corner grocer", "category": FOOD})
    chain.ok(Cast.registry, "tokens", "register_merchant",
             {"merchant": Cast.bar.address, "name": "Night bar", "category": "bar"})


def issue(chain: Chain, to: str, amount: int, class_id: str = "social", **extra: Any) -> None:
    chain.ok(Cast.treasury, "tokens", "issue",
             {"class_id": class_id, "to": to, "amount": amount, **extra})


def assert_supply_balanced(chain: Chain, class_id: str = "social") -> None:
    record = supply_record(chain.state, class_id)
    assert record["issued"] == (sum_balances(chain.state, class_id)
                                + record["redeemed"] + record["burned"])


# -- define_class -----------------------------------------------------------------------------
def test_treasury_defines_a_class(chain: Chain) -> None:
    chain.ok(Cast.treasury, "tokens", "define_class", social_class())
    view = token_class_get(chain.state, "social")
    assert view is not None
    assert view["budget"] == 1000 and view["categories"] == ["clothing", "food"]
    assert view["treasury"] == Cast.treasury.address
    assert view["supply"] == {"issued": 0, "redeemed": 0, "burned": 0, "outstanding": 0}
    assert token_class_get(chain.state, "nothing") is None


def test_define_class_rejections(chain: Chain) -> None:
    chain.reject(Cast.citizen, "tokens", "define_class", social_class(), code="missing_role")
    chain.ok(Cast.treasury, "tokens", "define_class", social_class())
    chain.reject(Cast.treasury, "tokens", "define_class", social_class(), code="class_exists")
    chain.reject(Cast.treasury, "tokens", "define_class",
                 social_class(class_id="late", expiry_height=chain.next_height),
                 code="expiry_in_past")
    chain.reject(Cast.treasury, "tokens", "define_class",
                 social_class(class_id="dup", categories=["food", "food"]),
                 code="duplicate_category")
    chain.reject(Cast.treasury, "tokens", "define_class", social_class(class_id="neg", budget=0),
                 code="invalid_payload")
    chain.reject(Cast.treasury, "tokens", "define_class",
                 social_class(class_id="flt", budget="1000"), code="invalid_payload")


# -- issue ------------------------------------------------------------------------------------
def test_issue_credits_the_wallet_and_counts_against_the_budget(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 600)
    assert balance_of(chain.state, "social", Cast.citizen.address) == 600
    assert supply_record(chain.state, "social")["issued"] == 600
    chain.reject(Cast.treasury, "tokens", "issue",
                 {"class_id": "social", "to": Cast.citizen2.address, "amount": 401},
                 code="over_budget")
    issue(chain, Cast.citizen2.address, 400)
    assert token_balance(chain.state, "social", Cast.citizen2.address)["balance"] == 400
    assert_supply_balanced(chain)


def test_issue_rejections(chain: Chain) -> None:
    setup_city(chain)
    payload = {"class_id": "social", "to": Cast.citizen.address, "amount": 5}
    chain.reject(Cast.registry, "tokens", "issue", payload, code="missing_role")
    chain.reject(Cast.treasury, "tokens", "issue", {**payload, "class_id": "nope"},
                 code="unknown_class")
    chain.reject(Cast.treasury, "tokens", "issue", {**payload, "to": "not-an-address"},
                 code="invalid_payload")
    chain.advance_to(100)
    chain.reject(Cast.treasury, "tokens", "issue", payload, code="class_expired")


# -- eligibility --------------------------------------------------------------------------------
def register_and_credential(chain: Chain, holder: Any, credential_id: str,
                            schema: str = "low_income_eligibility", expiry: int = 80) -> None:
    chain.ok(holder, "identity", "register", {})
    commitments, _ = commit_attributes({"eligible": True}, {"eligible": b"s" * 16})
    chain.ok(Cast.social, "identity", "issue_credential", {
        "credential_id": credential_id, "subject_did": did_for_address(holder.address),
        "schema_name": schema, "commitments": commitments, "expiry_height": expiry,
    })


def test_eligible_recipient_with_a_valid_credential_receives_tokens(chain: Chain) -> None:
    setup_city(chain, eligibility_schema="low_income_eligibility")
    register_and_credential(chain, Cast.citizen, "li-ana")
    issue(chain, Cast.citizen.address, 50, credential_id="li-ana")
    assert balance_of(chain.state, "social", Cast.citizen.address) == 50


def test_eligibility_rejections(chain: Chain) -> None:
    setup_city(chain, eligibility_schema="low_income_eligibility")
    register_and_credential(chain, Cast.citizen, "li-ana")
    register_and_credential(chain, Cast.citizen2, "res-ben", schema="residency")
    payload = {"class_id": "social", "to": Cast.citizen.address, "amount": 5}
    chain.reject(Cast.treasury, "tokens", "issue", payload, code="not_eligible")  # no credential
    chain.reject(Cast.treasury, "tokens", "issue", {**payload, "credential_id": "missing"},
                 code="not_eligible")
    # Someone else's credential does not make the recipient eligible.
    chain.reject(Cast.treasury, "tokens", "issue",
                 {**payload, "to": Cast.citizen2.address, "credential_id": "li-ana"},
                 code="not_eligible")
    # A credential of the wrong schema does not either.
    chain.reject(Cast.treasury, "tokens", "issue",
                 {**payload, "to": Cast.citizen2.address, "credential_id": "res-ben"},
                 code="not_eligible")
    chain.ok(Cast.social, "identity", "revoke_credential", {"credential_id": "li-ana"})
    reason = chain.reject(Cast.treasury, "tokens", "issue", {**payload, "credential_id": "li-ana"},
                          code="not_eligible")
    assert "revoked" in reason


def test_expired_credential_does_not_make_a_recipient_eligible(chain: Chain) -> None:
    setup_city(chain, eligibility_schema="low_income_eligibility")
    register_and_credential(chain, Cast.citizen, "li-ana", expiry=chain.height + 3)
    chain.advance_to(chain.height + 3)
    reason = chain.reject(Cast.treasury, "tokens", "issue",
                          {"class_id": "social", "to": Cast.citizen.address, "amount": 5,
                           "credential_id": "li-ana"}, code="not_eligible")
    assert "expired" in reason


# -- transfer ---------------------------------------------------------------------------------
def test_transferable_tokens_move_between_citizens(chain: Chain) -> None:
    setup_city(chain, transferable=True)
    issue(chain, Cast.citizen.address, 30)
    chain.ok(Cast.citizen, "tokens", "transfer",
             {"class_id": "social", "to": Cast.citizen2.address, "amount": 12})
    assert balance_of(chain.state, "social", Cast.citizen.address) == 18
    assert balance_of(chain.state, "social", Cast.citizen2.address) == 12
    assert_supply_balanced(chain)


def test_transfer_rejections(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 30)
    move = {"class_id": "social", "to": Cast.citizen2.address, "amount": 5}
    chain.reject(Cast.citizen, "tokens", "transfer", move, code="not_transferable")
    chain.ok(Cast.treasury, "tokens", "define_class",
             social_class(class_id="points", transferable=True))
    issue(chain, Cast.citizen.address, 10, class_id="points")
    points = {**move, "class_id": "points"}
    chain.reject(Cast.citizen, "tokens", "transfer", {**points, "amount": 11},
                 code="insufficient_funds")
    chain.reject(Cast.citizen, "tokens", "transfer", {**points, "to": Cast.citizen.address},
                 code="self_transfer")
    chain.reject(Cast.citizen, "tokens", "transfer", {**points, "amount": 0},
                 code="invalid_payload")
    chain.reject(Cast.citizen, "tokens", "transfer", {**points, "class_id": "nope"},
                 code="unknown_class")
    chain.advance_to(100)
    chain.reject(Cast.citizen, "tokens", "transfer", points, code="class_expired")


# -- spend ------------------------------------------------------------------------------------
def test_citizen_buys_food_at_the_grocer(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 30)
    chain.ok(Cast.citizen, "tokens", "spend",
             {"class_id": "social", "merchant": Cast.grocer.address, "amount": 20, "memo": "bread"})
    assert balance_of(chain.state, "social", Cast.grocer.address) == 20
    assert balance_of(chain.state, "social", Cast.citizen.address) == 10


def test_spend_rejections(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 30)
    at_grocer = {"class_id": "social", "merchant": Cast.grocer.address, "amount": 5}
    reason = chain.reject(Cast.citizen, "tokens", "spend",
                          {**at_grocer, "merchant": Cast.bar.address}, code="category_not_allowed")
    assert "'bar'" in reason
    chain.reject(Cast.citizen, "tokens", "spend", {**at_grocer, "merchant": Cast.outsider.address},
                 code="unknown_merchant")
    chain.reject(Cast.citizen, "tokens", "spend", {**at_grocer, "amount": 31},
                 code="insufficient_funds")
    chain.reject(Cast.citizen2, "tokens", "spend", at_grocer, code="insufficient_funds")
    chain.advance_to(100)
    chain.reject(Cast.citizen, "tokens", "spend", at_grocer, code="class_expired")


# -- merchants ----------------------------------------------------------------------------------
def test_registrar_registers_merchants_once(chain: Chain) -> None:
    setup_city(chain)
    record = merchant_get(chain.state, Cast.grocer.address)
    assert record is not None and record["category"] == FOOD
    entry = {"merchant": Cast.outsider.address, "name": "Shop", "category": FOOD}
    chain.reject(Cast.treasury, "tokens", "register_merchant", entry, code="missing_role")
    chain.reject(Cast.registry, "tokens", "register_merchant",
                 {**entry, "merchant": Cast.grocer.address}, code="merchant_exists")


# -- redeem and settle ----------------------------------------------------------------------------
def test_grocer_redeems_and_the_treasury_owes_then_settles(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 30)
    chain.ok(Cast.citizen, "tokens", "spend",
             {"class_id": "social", "merchant": Cast.grocer.address, "amount": 20})
    result = chain.ok(Cast.grocer, "tokens", "redeem", {"class_id": "social", "amount": 15})
    assert result["cents"] == 1500 and result["owed_cents"] == 1500
    assert balance_of(chain.state, "social", Cast.grocer.address) == 5
    assert supply_record(chain.state, "social")["redeemed"] == 15
    assert_supply_balanced(chain)
    chain.reject(Cast.treasury, "tokens", "settle", {"merchant": Cast.grocer.address, "cents": 1501},
                 code="over_settlement")
    chain.reject(Cast.grocer, "tokens", "settle", {"merchant": Cast.grocer.address, "cents": 100},
                 code="missing_role")
    chain.ok(Cast.treasury, "tokens", "settle", {"merchant": Cast.grocer.address, "cents": 1500})
    assert merchant_owed_cents(chain.state, Cast.grocer.address) == 0


def test_redeem_rejections(chain: Chain) -> None:
    setup_city(chain, transferable=True)
    issue(chain, Cast.citizen.address, 30)
    chain.reject(Cast.citizen, "tokens", "redeem", {"class_id": "social", "amount": 1},
                 code="unknown_merchant")
    chain.reject(Cast.grocer, "tokens", "redeem", {"class_id": "social", "amount": 1},
                 code="insufficient_funds")
    # A bar that got social tokens by transfer still cannot cash them in.
    chain.ok(Cast.citizen, "tokens", "transfer",
             {"class_id": "social", "to": Cast.bar.address, "amount": 5})
    chain.reject(Cast.bar, "tokens", "redeem", {"class_id": "social", "amount": 5},
                 code="category_not_allowed")
    chain.reject(Cast.grocer, "tokens", "redeem", {"class_id": "nope", "amount": 1},
                 code="unknown_class")


def test_merchant_may_redeem_after_expiry(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 30)
    chain.ok(Cast.citizen, "tokens", "spend",
             {"class_id": "social", "merchant": Cast.grocer.address, "amount": 20})
    chain.advance_to(100)
    assert chain.ok(Cast.grocer, "tokens", "redeem", {"class_id": "social", "amount": 20})["cents"] == 2000


# -- burn_expired -------------------------------------------------------------------------------
def test_anyone_burns_expired_units_of_accounts_but_not_of_merchants(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 30)
    issue(chain, Cast.citizen2.address, 7)
    chain.ok(Cast.citizen, "tokens", "spend",
             {"class_id": "social", "merchant": Cast.grocer.address, "amount": 10})
    chain.reject(Cast.outsider, "tokens", "burn_expired", {"class_id": "social"},
                 code="class_not_expired")
    chain.advance_to(100)
    result = chain.ok(Cast.outsider, "tokens", "burn_expired", {"class_id": "social"})
    assert result == {"class_id": "social", "burned": 27, "holders": 2, "more": False}
    assert balance_of(chain.state, "social", Cast.citizen.address) == 0
    assert balance_of(chain.state, "social", Cast.grocer.address) == 10
    assert supply_record(chain.state, "social")["burned"] == 27
    assert_supply_balanced(chain)
    chain.reject(Cast.outsider, "tokens", "burn_expired", {"class_id": "nope"},
                 code="unknown_class")


def test_burn_expired_leaves_pseudo_account_holdings_to_their_modules(chain: Chain) -> None:
    setup_city(chain)
    issue(chain, Cast.citizen.address, 30)
    # What the contracts module does when it locks funds in escrow.
    locking = Overlay(chain.kv)
    move(locking, "social", Cast.citizen.address, "escrow:7", 12)
    chain.kv.apply(locking.writes)
    chain.advance_to(100)
    assert chain.ok(Cast.outsider, "tokens", "burn_expired", {"class_id": "social"})["burned"] == 18
    assert balance_of(chain.state, "social", "escrow:7") == 12
    assert_supply_balanced(chain)


def test_burn_expired_works_in_bounded_batches(chain: Chain) -> None:
    setup_city(chain)
    holders = [key(f"holder-{i}").address for i in range(5)]
    chain.block(*[chain.sign(Cast.treasury, "tokens", "issue",
                             {"class_id": "social", "to": h, "amount": 3}) for h in holders])
    chain.advance_to(100)
    first = chain.ok(Cast.outsider, "tokens", "burn_expired", {"class_id": "social", "limit": 2})
    assert (first["burned"], first["more"]) == (6, True)
    chain.ok(Cast.outsider, "tokens", "burn_expired", {"class_id": "social", "limit": 2})
    last = chain.ok(Cast.outsider, "tokens", "burn_expired", {"class_id": "social", "limit": 2})
    assert (last["burned"], last["more"]) == (3, False)
    assert supply_record(chain.state, "social")["burned"] == 15
    assert_supply_balanced(chain)


def test_replayed_issue_is_refused_by_nonce(chain: Chain) -> None:
    setup_city(chain)
    tx = chain.sign(Cast.treasury, "tokens", "issue",
                    {"class_id": "social", "to": Cast.citizen.address, "amount": 10})
    assert chain.block(tx)[0].ok
    assert chain.block(tx)[0].code == "bad_nonce"
    assert balance_of(chain.state, "social", Cast.citizen.address) == 10


@pytest.mark.parametrize("params", [{"anything": 1}])
def test_tokens_genesis_takes_no_parameters(params: dict[str, Any]) -> None:

    with pytest.raises(ValueError, match="no genesis parameters"):
        TokensFamily().init_genesis(Overlay(MemoryKV()), params)
