"""Contracts family: escrow, hourly work and milestone templates, and deadlines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from ledger.crypto import KeyPair
from ledger.overlay import MemoryKV, Overlay
from ledger.rules import RuleError, StateView, TxContext
from tests.txtypes.conftest import Cast, Chain, city_genesis, city_modules
from tests.txtypes.harness import FamilyHarness
from txtypes.balances import balance_of, credit
from txtypes.base import Payload
from txtypes.contract_templates import Contract, Opening, builtin_templates
from txtypes.contract_templates.base import NoArgs, close, pay_out, refund_rest
from txtypes.contract_templates.hourly_work import owed_for
from txtypes.contracts import DUE_PREFIX, ContractsFamily, contract_get

CHAIN_ID = "test-city"
CLASS = "civic"
START_HEIGHT = 10


def key(n: int) -> KeyPair:
    return KeyPair(bytes([n]) * 32)


PAYER, PAYEE, ARBITER, STRANGER, CLOCK, SUB1, SUB2 = (key(n) for n in range(1, 8))


def define_class(state: Overlay, class_id: str, *, transferable: bool = True,
                 expiry_height: int = 10**9) -> None:
    """A token class record as the tokens family stores it (only the fields we read)."""
    state.put_obj(b"tokens/class/" + class_id.encode(),
                  {"class_id": class_id, "transferable": transferable,
                   "expiry_height": expiry_height})


class Harness(FamilyHarness):
    """Runs contracts transactions the way the executor does: check, apply, in a child."""

    def __init__(self, genesis: Mapping[str, Any] | None = None,
                 family: ContractsFamily | None = None) -> None:
        super().__init__(family or ContractsFamily(), START_HEIGHT)
        self.family.init_genesis(self.state, genesis or {})
        define_class(self.state, CLASS)


    def fund(self, who: KeyPair, amount: int, class_id: str = CLASS) -> None:
        credit(self.state, class_id, who.address, amount)

    def balance(self, who: KeyPair | str, class_id: str = CLASS) -> int:
        holder = who if isinstance(who, str) else who.address
        return balance_of(self.state, class_id, holder)

    def create(self, creator: KeyPair, template: str, terms: dict[str, Any],
               class_id: str = CLASS) -> str:
        result = self.submit(creator, "create",
                             {"template": template, "class_id": class_id, "terms": terms})
        contract_id: str = result["contract_id"]
        return contract_id

    def act(self, signer: KeyPair, contract_id: str, action: str,
            args: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.submit(signer, "act",
                           {"contract_id": contract_id, "action": action, "args": args or {}})

    def act_rejected(self, signer: KeyPair, contract_id: str, action: str,
                     args: dict[str, Any] | None = None) -> str:
        return self.rejected(signer, "act",
                             {"contract_id": contract_id, "action": action, "args": args or {}})

    def contract(self, contract_id: str) -> dict[str, Any]:
        record = contract_get(self.state, contract_id)
        assert record is not None
        return record

    def due_entries(self) -> list[bytes]:
        return [k for k, _ in self.state.scan(DUE_PREFIX, 10_000)]


def escrow_terms(amount: int = 500, deadline: int = START_HEIGHT + 5, **over: Any) -> dict[str, Any]:
    return {"payee": PAYEE.address, "arbiter": ARBITER.address, "amount": amount,
            "deadline_height": deadline, **over}


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.fund(PAYER, 1000)
    return harness


# -- escrow ---------------------------------------------------------------------------------

def test_escrow_create_locks_payer_funds_in_the_escrow_account(h: Harness) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms(500))
    assert h.balance(PAYER) == 500
    assert h.balance(f"escrow:{cid}") == 500
    record = h.contract(cid)
    assert record["status"] == "open" and record["held"] == 500
    assert record["data"]["payee"] == PAYEE.address
    assert record["escrow_account"] == f"escrow:{cid}"


def test_escrow_release_by_arbiter_pays_payee_and_closes(h: Harness) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms(500))
    result = h.act(ARBITER, cid, "release")
    assert result["paid"] == 500 and result["status"] == "closed"
    assert h.balance(PAYEE) == 500 and h.balance(f"escrow:{cid}") == 0
    assert h.contract(cid)["outcome"] == "released"
    assert h.due_entries() == []
    assert h.act_rejected(ARBITER, cid, "release") == "contract_closed"


@pytest.mark.parametrize("signer", [PAYER, PAYEE, STRANGER])
def test_escrow_release_by_anyone_but_the_arbiter_is_refused(h: Harness, signer: KeyPair) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms())
    assert h.act_rejected(signer, cid, "release") == "not_arbiter"
    assert h.balance(PAYEE) == 0


def test_escrow_refund_by_payee_returns_funds_to_payer(h: Harness) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms(300))
    h.act(PAYEE, cid, "refund")
    assert h.balance(PAYER) == 1000
    assert h.contract(cid)["outcome"] == "refunded"


def test_escrow_refund_by_payer_is_refused(h: Harness) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms(300))
    assert h.act_rejected(PAYER, cid, "refund") == "not_arbiter_or_payee"


def test_escrow_is_refunded_at_the_end_of_its_deadline_block_not_before(h: Harness) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms(400, deadline=START_HEIGHT + 3))
    h.run_to(START_HEIGHT + 2)
    assert h.contract(cid)["status"] == "open" and h.balance(PAYER) == 600
    h.run_to(START_HEIGHT + 3)
    record = h.contract(cid)
    assert record["outcome"] == "expired_refunded"
    assert record["closed_height"] == START_HEIGHT + 3
    assert h.balance(PAYER) == 1000 and h.balance(f"escrow:{cid}") == 0
    assert h.due_entries() == []
    assert h.act_rejected(ARBITER, cid, "release") == "contract_closed"


def test_escrow_can_still_be_released_inside_its_deadline_block(h: Harness) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms(400, deadline=START_HEIGHT + 2))
    h.run_to(START_HEIGHT + 1)
    h.act(ARBITER, cid, "release")
    h.end_block()
    assert h.balance(PAYEE) == 400 and h.contract(cid)["outcome"] == "released"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"template": "lottery", "class_id": CLASS, "terms": {}}, "unknown_template"),
        ({"template": "escrow", "class_id": CLASS, "terms": {"payee": "nobody"}}, "invalid_terms"),
        ({"template": "escrow", "class_id": "nosuch", "terms": escrow_terms()}, "unknown_class"),
        ({"template": "escrow", "class_id": CLASS, "terms": escrow_terms(deadline=START_HEIGHT)},
         "deadline_not_in_future"),
        ({"template": "escrow", "class_id": CLASS, "terms": escrow_terms(amount=1001)},
         "insufficient_funds"),
        ({"template": "escrow", "class_id": CLASS,
          "terms": escrow_terms(payee=PAYER.address)}, "duplicate_party"),
        ({"template": "escrow", "class_id": CLASS,
          "terms": escrow_terms(arbiter=PAYEE.address)}, "arbiter_not_independent"),
    ],
)
def test_escrow_create_rejections(h: Harness, payload: dict[str, Any], code: str) -> None:
    assert h.rejected(PAYER, "create", payload) == code
    assert h.balance(PAYER) == 1000


def test_invalid_terms_reason_names_field_and_stable_type(h: Harness) -> None:
    with pytest.raises(RuleError) as info:
        h.submit(PAYER, "create", {"template": "escrow", "class_id": CLASS,
                                   "terms": escrow_terms(amount="5")})
    assert info.value.code == "invalid_terms"
    assert "amount: int_type" in info.value.reason


def test_purpose_bound_token_class_cannot_be_escrowed(h: Harness) -> None:
    define_class(h.state, "social", transferable=False)
    h.fund(PAYER, 100, "social")
    code = h.rejected(PAYER, "create", {"template": "escrow", "class_id": "social",
                                        "terms": escrow_terms(50)})
    assert code == "not_transferable"


def test_expired_token_class_cannot_be_escrowed(h: Harness) -> None:
    define_class(h.state, "old", expiry_height=START_HEIGHT)
    h.fund(PAYER, 100, "old")
    code = h.rejected(PAYER, "create", {"template": "escrow", "class_id": "old",
                                        "terms": escrow_terms(50)})
    assert code == "class_expired"


def test_act_rejections_for_unknown_contract_action_and_args(h: Harness) -> None:
    cid = h.create(PAYER, "escrow", escrow_terms())
    assert h.act_rejected(ARBITER, "0" * 32, "release") == "unknown_contract"
    assert h.act_rejected(ARBITER, cid, "explode") == "unknown_action"
    assert h.act_rejected(ARBITER, cid, "release", {"extra": 1}) == "invalid_args"


def test_genesis_can_enable_a_subset_of_templates() -> None:
    h = Harness({"templates": ["escrow"]})
    h.fund(PAYER, 1000)
    h.create(PAYER, "escrow", escrow_terms())
    code = h.rejected(PAYER, "create", {"template": "hourly_work", "class_id": CLASS,
                                        "terms": hourly_terms()})
    assert code == "unknown_template"


@pytest.mark.parametrize("params", [{"templates": ["nope"]}, {"templates": "escrow"},
                                    {"colour": "blue"}])
def test_genesis_refuses_bad_template_params(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ContractsFamily().init_genesis(Overlay(MemoryKV()), params)


# -- hourly work ----------------------------------------------------------------------------

def hourly_terms(budget: int = 600, rate: int = 60, end: int = START_HEIGHT + 5,
                 **over: Any) -> dict[str, Any]:
    return {"worker": PAYEE.address, "rate_per_hour": rate, "budget": budget,
            "period_end_height": end, "time_clock": CLOCK.address, **over}


def test_hourly_work_pays_recorded_time_at_period_end_and_returns_the_rest(h: Harness) -> None:
    cid = h.create(PAYER, "hourly_work", hourly_terms(budget=600, rate=60))
    assert h.act(PAYER, cid, "record_time", {"minutes": 120})["owed"] == 120
    assert h.act(CLOCK, cid, "record_time", {"minutes": 90, "note": "site B"})["owed"] == 210
    h.run_to(START_HEIGHT + 4)
    assert h.balance(PAYEE) == 0
    h.end_block()
    record = h.contract(cid)
    assert record["outcome"] == "settled" and record["data"]["paid_to_worker"] == 210
    assert h.balance(PAYEE) == 210 and h.balance(PAYER) == 1000 - 210
    assert h.balance(f"escrow:{cid}") == 0


def test_hourly_work_rounds_partial_units_up_in_the_workers_favour(h: Harness) -> None:
    cid = h.create(PAYER, "hourly_work", hourly_terms(budget=100, rate=7))
    h.act(PAYER, cid, "record_time", {"minutes": 50})  # 50 * 7 / 60 = 5.83
    h.run_to(START_HEIGHT + 5)
    assert h.balance(PAYEE) == 6


@pytest.mark.parametrize("signer", [PAYEE, STRANGER])
def test_hourly_work_time_recorded_by_others_is_refused(h: Harness, signer: KeyPair) -> None:
    cid = h.create(PAYER, "hourly_work", hourly_terms())
    assert h.act_rejected(signer, cid, "record_time", {"minutes": 60}) == "not_authorised_recorder"


def test_hourly_work_without_time_clock_accepts_only_the_employer(h: Harness) -> None:
    cid = h.create(PAYER, "hourly_work", hourly_terms(time_clock=""))
    assert h.act_rejected(CLOCK, cid, "record_time", {"minutes": 60}) == "not_authorised_recorder"
    h.act(PAYER, cid, "record_time", {"minutes": 60})


def test_hourly_work_time_beyond_the_escrowed_budget_is_refused_until_topped_up(h: Harness) -> None:
    cid = h.create(PAYER, "hourly_work", hourly_terms(budget=100, rate=60))
    h.act(PAYER, cid, "record_time", {"minutes": 100})
    assert h.act_rejected(CLOCK, cid, "record_time", {"minutes": 1}) == "exceeds_escrowed_budget"
    assert h.act_rejected(PAYEE, cid, "top_up", {"amount": 50}) == "not_employer"
    assert h.act_rejected(PAYER, cid, "top_up", {"amount": 901}) == "insufficient_funds"
    assert h.act(PAYER, cid, "top_up", {"amount": 50})["budget"] == 150
    h.act(CLOCK, cid, "record_time", {"minutes": 50})
    h.run_to(START_HEIGHT + 5)
    assert h.balance(PAYEE) == 150 and h.balance(PAYER) == 850


def test_hourly_work_cannot_record_after_the_period_has_settled(h: Harness) -> None:
    cid = h.create(PAYER, "hourly_work", hourly_terms(end=START_HEIGHT + 1))
    h.run_to(START_HEIGHT + 1)
    assert h.act_rejected(PAYER, cid, "record_time", {"minutes": 5}) == "contract_closed"


def test_hourly_work_creation_rejects_conflicting_parties(h: Harness) -> None:
    code = h.rejected(PAYER, "create", {"template": "hourly_work", "class_id": CLASS,
                                        "terms": hourly_terms(worker=PAYER.address)})
    assert code == "duplicate_party"
    code = h.rejected(PAYER, "create", {"template": "hourly_work", "class_id": CLASS,
                                        "terms": hourly_terms(time_clock=PAYEE.address)})
    assert code == "time_clock_is_worker"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.integers(1, 2000),
    rate=st.integers(1, 500),
    steps=st.lists(
        st.tuples(st.sampled_from(["employer", "clock", "worker", "top_up"]),
                  st.integers(1, 600)),
        max_size=12,
    ),
)
def test_hourly_work_worker_is_never_underpaid_for_recorded_time(
    budget: int, rate: int, steps: list[tuple[str, int]]
) -> None:
    h = Harness()
    h.fund(PAYER, 10_000)
    cid = h.create(PAYER, "hourly_work", hourly_terms(budget=budget, rate=rate))
    accepted_minutes = 0
    signers = {"employer": PAYER, "clock": CLOCK, "worker": PAYEE}
    for who, n in steps:
        try:
            if who == "top_up":
                h.act(PAYER, cid, "top_up", {"amount": n})
            else:
                h.act(signers[who], cid, "record_time", {"minutes": n})
                accepted_minutes += n
        except RuleError as exc:
            assert exc.code in {"not_authorised_recorder", "exceeds_escrowed_budget",
                                "insufficient_funds"}
    h.run_to(START_HEIGHT + 5)
    paid = h.balance(PAYEE)
    assert paid == owed_for(accepted_minutes, rate)
    assert paid * 60 >= accepted_minutes * rate  # never less than time x rate
    assert h.balance(PAYER) + paid == 10_000  # the rest came back, nothing stuck in escrow
    assert h.balance(f"escrow:{cid}") == 0


# -- milestone ------------------------------------------------------------------------------

@pytest.fixture
def hm() -> Harness:
    harness = Harness()
    harness.fund(PAYER, 2000)
    return harness


def milestone_terms(amounts: tuple[int, ...] = (1001, 499), deadline: int = START_HEIGHT + 10,
                    shares: tuple[int, ...] = (2500, 3333), **over: Any) -> dict[str, Any]:
    subs = [SUB1, SUB2]
    return {
        "contractor": PAYEE.address,
        "inspector": ARBITER.address,
        "deadline_height": deadline,
        "milestones": [{"name": f"phase {i}", "amount": a} for i, a in enumerate(amounts)],
        "subcontractors": [{"account": subs[i].address, "share_bps": bps}
                           for i, bps in enumerate(shares)],
        **over,
    }


def test_milestone_approval_pays_contractor_and_subcontractor_shares(hm: Harness) -> None:
    cid = hm.create(PAYER, "milestone", milestone_terms())
    assert hm.balance(PAYER) == 500 and hm.balance(f"escrow:{cid}") == 1500
    hm.act(PAYEE, cid, "submit", {"index": 0})
    result = hm.act(ARBITER, cid, "approve", {"index": 0})
    # 1001 * 2500 // 10000 = 250, 1001 * 3333 // 10000 = 333, contractor gets the rest
    assert hm.balance(SUB1) == 250 and hm.balance(SUB2) == 333 and hm.balance(PAYEE) == 418
    assert result["payments"] == [[PAYEE.address, 418], [SUB1.address, 250], [SUB2.address, 333]]
    assert hm.contract(cid)["status"] == "open"
    hm.act(PAYEE, cid, "submit", {"index": 1})
    hm.act(ARBITER, cid, "approve", {"index": 1})
    record = hm.contract(cid)
    assert record["outcome"] == "completed" and record["held"] == 0
    assert hm.balance(SUB1) + hm.balance(SUB2) + hm.balance(PAYEE) == 1500
    assert hm.due_entries() == []


def test_milestone_approval_before_submission_is_refused(hm: Harness) -> None:
    cid = hm.create(PAYER, "milestone", milestone_terms())
    assert hm.act_rejected(ARBITER, cid, "approve", {"index": 0}) == "milestone_not_submitted"
    assert hm.balance(PAYEE) == 0


def test_milestone_only_inspector_approves_and_only_contractor_submits(hm: Harness) -> None:
    cid = hm.create(PAYER, "milestone", milestone_terms())
    assert hm.act_rejected(SUB1, cid, "submit", {"index": 0}) == "not_contractor"
    hm.act(PAYEE, cid, "submit", {"index": 0})
    for signer in (PAYER, PAYEE, SUB1):
        assert hm.act_rejected(signer, cid, "approve", {"index": 0}) == "not_inspector"


def test_milestone_reject_sends_it_back_and_double_actions_are_refused(hm: Harness) -> None:
    cid = hm.create(PAYER, "milestone", milestone_terms())
    hm.act(PAYEE, cid, "submit", {"index": 0})
    assert hm.act_rejected(PAYEE, cid, "submit", {"index": 0}) == "milestone_already_submitted"
    hm.act(ARBITER, cid, "reject", {"index": 0, "note": "tiles missing"})
    assert hm.act_rejected(ARBITER, cid, "approve", {"index": 0}) == "milestone_not_submitted"
    hm.act(PAYEE, cid, "submit", {"index": 0})
    hm.act(ARBITER, cid, "approve", {"index": 0})
    assert hm.act_rejected(ARBITER, cid, "approve", {"index": 0}) == "milestone_already_paid"
    assert hm.act_rejected(PAYEE, cid, "submit", {"index": 5}) == "unknown_milestone"


def test_milestone_deadline_refunds_unpaid_milestones_to_the_client(hm: Harness) -> None:
    cid = hm.create(PAYER, "milestone", milestone_terms(deadline=START_HEIGHT + 2))
    hm.act(PAYEE, cid, "submit", {"index": 0})
    hm.act(ARBITER, cid, "approve", {"index": 0})
    hm.act(PAYEE, cid, "submit", {"index": 1})
    hm.run_to(START_HEIGHT + 2)
    record = hm.contract(cid)
    assert record["outcome"] == "expired"
    assert [m["state"] for m in record["data"]["milestones"]] == ["paid", "refunded"]
    assert hm.balance(PAYER) == 2000 - 1001
    assert hm.balance(f"escrow:{cid}") == 0


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"shares": (6000, 4001)}, "shares_exceed_whole"),
        ({"inspector": SUB1.address}, "inspector_not_independent"),
        ({"contractor": SUB1.address}, "duplicate_party"),
        ({"milestones": []}, "invalid_terms"),
    ],
)
def test_milestone_creation_rejections(hm: Harness, over: dict[str, Any], code: str) -> None:
    terms = milestone_terms(**{k: v for k, v in over.items() if k == "shares"})
    terms.update({k: v for k, v in over.items() if k != "shares"})
    assert hm.rejected(PAYER, "create", {"template": "milestone", "class_id": CLASS,
                                        "terms": terms}) == code


# -- deadline index -------------------------------------------------------------------------

class CountingReads(Overlay):
    """An overlay that counts reads of contract records (to show end_block's cost)."""

    def __init__(self, base: Overlay) -> None:
        super().__init__(base)
        self.contract_reads = 0

    def get(self, key: bytes) -> bytes | None:
        if key.startswith(b"contracts/c/"):
            self.contract_reads += 1
        return super().get(key)


def test_end_block_reads_only_the_contracts_that_are_due() -> None:
    h = Harness()
    h.fund(PAYER, 10_000)
    for i in range(40):
        h.create(PAYER, "escrow", escrow_terms(10, deadline=START_HEIGHT + 100 + i))
    due_now = h.create(PAYER, "escrow", escrow_terms(10, deadline=START_HEIGHT + 1))
    h.end_block()  # height START_HEIGHT: nothing due
    counting = CountingReads(h.state)
    h.family.end_block(h.block(), counting)
    assert counting.contract_reads == 1
    counting.merge_into(h.state)
    assert h.contract(due_now)["status"] == "closed"
    assert len(h.due_entries()) == 40


def test_many_contracts_due_in_one_block_all_settle() -> None:
    h = Harness()
    h.fund(PAYER, 10_000)
    ids = [h.create(PAYER, "escrow", escrow_terms(7, deadline=START_HEIGHT + 1))
           for _ in range(300)]
    h.run_to(START_HEIGHT + 1)
    assert all(h.contract(cid)["outcome"] == "expired_refunded" for cid in ids)
    assert h.balance(PAYER) == 10_000 and h.due_entries() == []


def test_contract_get_unknown_is_none(h: Harness) -> None:
    assert contract_get(h.state, "f" * 32) is None


# -- end to end through the executor, with the real tokens family ---------------------------

def test_hourly_work_through_the_executor_pays_a_part_time_worker() -> None:
    chain = Chain([*city_modules(), ContractsFamily()], city_genesis())
    cafe, worker, clock = key(50), key(51), key(52)
    chain.ok(Cast.treasury, "tokens", "define_class", {
        "class_id": "scoin", "name": "S-Coin", "budget": 100_000, "categories": ["food"],
        "transferable": True, "expiry_height": 1000, "redemption_cents_per_unit": 1})
    chain.ok(Cast.treasury, "tokens", "issue", {"class_id": "scoin", "to": cafe.address,
                                                "amount": 2000})
    terms = {"worker": worker.address, "rate_per_hour": 120, "budget": 1000,
             "period_end_height": chain.next_height + 5, "time_clock": clock.address}
    created = chain.ok(cafe, "contracts", "create",
                       {"template": "hourly_work", "class_id": "scoin", "terms": terms})
    cid = created["contract_id"]
    act = {"contract_id": cid, "action": "record_time"}
    chain.ok(clock, "contracts", "act", {**act, "args": {"minutes": 240}})
    chain.reject(worker, "contracts", "act", {**act, "args": {"minutes": 600}},
                 code="not_authorised_recorder")
    chain.reject(cafe, "contracts", "act", {**act, "args": {"minutes": 300}},
                 code="exceeds_escrowed_budget")
    chain.ok(cafe, "contracts", "act", {**act, "args": {"minutes": 30}})
    chain.advance_to(terms["period_end_height"])
    view = chain.state
    assert balance_of(view, "scoin", worker.address) == 540  # 4.5 h x 120
    assert balance_of(view, "scoin", cafe.address) == 2000 - 540
    record = contract_get(view, cid)
    assert record is not None and record["outcome"] == "settled"


def test_replayed_release_is_refused_by_nonce_and_pays_once() -> None:
    chain = Chain([*city_modules(), ContractsFamily()], city_genesis())
    chain.ok(Cast.treasury, "tokens", "define_class", {
        "class_id": "scoin", "name": "S-Coin", "budget": 1000, "categories": ["food"],
        "transferable": True, "expiry_height": 1000, "redemption_cents_per_unit": 1})
    chain.ok(Cast.treasury, "tokens", "issue", {"class_id": "scoin", "to": PAYER.address,
                                                "amount": 500})
    cid = chain.ok(PAYER, "contracts", "create", {
        "template": "escrow", "class_id": "scoin",
        "terms": escrow_terms(200, deadline=chain.next_height + 10)})["contract_id"]
    release = chain.sign(ARBITER, "contracts", "act",
                         {"contract_id": cid, "action": "release", "args": {}})
    (first,) = chain.block(release)
    (replay,) = chain.block(release)
    assert first.ok and not replay.ok and replay.code == "bad_nonce"
    assert balance_of(chain.state, "scoin", PAYEE.address) == 200


# -- pluggable templates --------------------------------------------------------------------

class GiftTerms(Payload):
    beneficiary: str
    amount: int
    deadline_height: int


class GiftTemplate:
    """A test-only template: the beneficiary claims a gift before the deadline."""

    name = "gift"
    terms_schema: type[BaseModel] = GiftTerms
    action_schemas: Mapping[str, type[BaseModel]] = {"claim": NoArgs}

    def open(self, ctx: TxContext, state: StateView, terms: BaseModel) -> Opening:
        assert isinstance(terms, GiftTerms)
        return Opening(terms.amount, terms.deadline_height, {"beneficiary": terms.beneficiary})

    def check_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> None:
        if ctx.sender_address != contract.data["beneficiary"]:
            raise RuleError("not_beneficiary", "only the beneficiary may claim")

    def apply_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> dict[str, Any]:
        pay_out(state, contract, ctx.sender_address, contract.held)
        close(contract, "claimed", ctx.block.height)
        return {}

    def on_deadline(self, state: StateView, contract: Contract, height: int) -> None:
        refund_rest(state, contract)
        close(contract, "unclaimed", height)


def test_a_third_party_template_plugs_into_the_family() -> None:
    h = Harness(family=ContractsFamily({**builtin_templates(), "gift": GiftTemplate()}))
    h.fund(PAYER, 100)
    terms = {"beneficiary": PAYEE.address, "amount": 60, "deadline_height": START_HEIGHT + 3}
    cid = h.create(PAYER, "gift", terms)
    assert h.act_rejected(STRANGER, cid, "claim") == "not_beneficiary"
    h.act(PAYEE, cid, "claim")
    assert h.balance(PAYEE) == 60 and h.contract(cid)["outcome"] == "claimed"
    unclaimed = h.create(PAYER, "gift", {**terms, "amount": 30})
    assert h.balance(PAYER) == 10
    h.run_to(START_HEIGHT + 3)
    assert h.contract(unclaimed)["outcome"] == "unclaimed" and h.balance(PAYER) == 40
