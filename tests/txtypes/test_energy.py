"""Energy family: meters, signed readings, surplus offers, bids and the interval auction."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ledger.crypto import KeyPair
from ledger.executor import Executor
from ledger.overlay import MemoryKV, Overlay
from ledger.rules import BlockContext
from ledger.state import WorldState
from ledger.tx import sign_tx
from tests.txtypes.conftest import Cast, city_genesis, city_modules
from tests.txtypes.harness import FamilyHarness
from txtypes.balances import balance_of, credit
from txtypes.contracts import ContractsFamily
from txtypes.energy import EnergyFamily, energy_market, interval_heights, interval_of, meter_get
from txtypes.energy_market import Order, clear, cost_units, lock_units
from txtypes.governance import param_key
from txtypes.roles import grant_role

CHAIN_ID = "test-city"
CLASS = "kwh_coin"
INTERVAL_BLOCKS = 5
START_HEIGHT = 10  # interval 2: heights 10..14, cleared in end_block of 14


def key(n: int) -> KeyPair:
    return KeyPair(bytes([n]) * 32)


UTILITY, ALICE, BOB, CAROL, DAVE = (key(n) for n in range(1, 6))
METER_A, METER_B, METER_C, METER_D = (key(n) for n in range(11, 15))


def define_class(state: Overlay, class_id: str, *, transferable: bool = True,
                 expiry_height: int = 10**9) -> None:
    """A token class record as the tokens family stores it (only the fields we read)."""
    state.put_obj(b"tokens/class/" + class_id.encode(),
                  {"class_id": class_id, "transferable": transferable,
                   "expiry_height": expiry_height})


class EnergyHarness(FamilyHarness):
    """Runs energy transactions the way the executor does: check, apply, in a child."""

    def __init__(self, genesis: Mapping[str, Any] | None = None,
                 start_height: int = START_HEIGHT) -> None:
        super().__init__(EnergyFamily(), start_height)
        self.family.init_genesis(self.state, genesis or {"interval_blocks": INTERVAL_BLOCKS})
        grant_role(self.state, UTILITY.address, "utility")
        define_class(self.state, CLASS)


    def register(self, meter: KeyPair, owner: KeyPair, zone: str = "north") -> str:
        result = self.submit(UTILITY, "register_meter", {
            "meter_key": meter.public_key.hex(), "owner": owner.address, "zone": zone})
        meter_id: str = result["meter_id"]
        return meter_id

    def reading(self, meter: KeyPair, interval: int, produced: int, consumed: int) -> None:
        self.submit(meter, "reading", {"interval": interval, "produced_wh": produced,
                                       "consumed_wh": consumed})

    def order(self, op: str, owner: KeyPair, meter: KeyPair, quantity_wh: int,
              price: int, class_id: str = CLASS) -> dict[str, Any]:
        return self.submit(owner, op, {"meter_id": meter.address, "quantity_wh": quantity_wh,
                                       "price_per_kwh": price, "class_id": class_id})

    def order_rejected(self, op: str, owner: KeyPair, meter: KeyPair, quantity_wh: int,
                       price: int, class_id: str = CLASS) -> str:
        return self.rejected(owner, op, {"meter_id": meter.address, "quantity_wh": quantity_wh,
                                         "price_per_kwh": price, "class_id": class_id})

    def balance(self, who: KeyPair | str, class_id: str = CLASS) -> int:
        holder = who if isinstance(who, str) else who.address
        return balance_of(self.state, class_id, holder)

    def meter(self, meter: KeyPair) -> dict[str, Any]:
        record = meter_get(self.state, meter.address)
        assert record is not None
        return record


@pytest.fixture
def h() -> EnergyHarness:
    """Alice (meter A) and Carol (meter C) have surplus; Bob (B) and Dave (D) buy."""
    harness = EnergyHarness()
    for meter, owner in ((METER_A, ALICE), (METER_B, BOB), (METER_C, CAROL), (METER_D, DAVE)):
        harness.register(meter, owner)
    harness.reading(METER_A, 1, 5000, 1000)  # 4000 Wh certified
    harness.reading(METER_C, 1, 3000, 500)   # 2500 Wh certified
    credit(harness.state, CLASS, BOB.address, 1000)
    credit(harness.state, CLASS, DAVE.address, 1000)
    return harness


# -- meters ---------------------------------------------------------------------------------

def test_utility_registers_a_meter_bound_to_owner_and_zone(h: EnergyHarness) -> None:
    record = h.meter(METER_A)
    assert record["owner"] == ALICE.address and record["zone"] == "north"
    assert record["meter_key"] == METER_A.public_key.hex() and record["active"] is True


def test_meter_registration_rejections(h: EnergyHarness) -> None:
    new_meter = key(30)
    payload = {"meter_key": new_meter.public_key.hex(), "owner": ALICE.address, "zone": "north"}
    assert h.rejected(ALICE, "register_meter", payload) == "missing_role"
    assert h.rejected(UTILITY, "register_meter", {**payload,
                      "meter_key": METER_A.public_key.hex()}) == "meter_exists"
    assert h.rejected(UTILITY, "register_meter", {**payload,
                      "owner": new_meter.address}) == "meter_key_is_owner"


def test_deactivated_meter_can_no_longer_read_or_trade(h: EnergyHarness) -> None:
    payload = {"meter_id": METER_A.address}
    assert h.rejected(ALICE, "deactivate_meter", payload) == "missing_role"
    assert h.rejected(UTILITY, "deactivate_meter", {"meter_id": "0" * 40}) == "unknown_meter"
    h.submit(UTILITY, "deactivate_meter", payload)
    assert h.rejected(UTILITY, "deactivate_meter", payload) == "meter_inactive"
    assert h.rejected(METER_A, "reading", {"interval": 2, "produced_wh": 1,
                                           "consumed_wh": 0}) == "meter_inactive"
    assert h.order_rejected("offer", ALICE, METER_A, 100, 10) == "meter_inactive"


# -- readings -------------------------------------------------------------------------------

def test_reading_signed_by_meter_certifies_only_net_surplus(h: EnergyHarness) -> None:
    assert h.meter(METER_A)["certified_wh"] == 4000
    h.reading(METER_B, 1, 1000, 4000)  # a net consumer certifies nothing
    record = h.meter(METER_B)
    assert record["certified_wh"] == 0 and record["consumed_wh"] == 4000
    assert record["last_interval"] == 1


def test_reading_signed_by_anyone_but_the_meter_is_refused(h: EnergyHarness) -> None:
    payload = {"interval": 1, "produced_wh": 9000, "consumed_wh": 0}
    assert h.rejected(ALICE, "reading", payload) == "not_a_meter"
    assert h.rejected(UTILITY, "reading", payload) == "not_a_meter"


def test_reading_intervals_must_strictly_increase(h: EnergyHarness) -> None:
    for interval in (1, 0):
        code = h.rejected(METER_A, "reading", {"interval": interval, "produced_wh": 1,
                                               "consumed_wh": 0})
        assert code == "interval_not_increasing"


def test_reading_for_an_unfinished_interval_is_refused(h: EnergyHarness) -> None:
    for interval in (2, 3):  # the current interval is 2
        code = h.rejected(METER_B, "reading", {"interval": interval, "produced_wh": 1,
                                               "consumed_wh": 0})
        assert code == "interval_not_finished"


# -- orders ---------------------------------------------------------------------------------

def test_offer_reserves_surplus_and_double_offering_is_refused(h: EnergyHarness) -> None:
    h.order("offer", ALICE, METER_A, 3000, 100)
    assert h.meter(METER_A)["offered_wh"] == 3000
    assert h.meter(METER_A)["unsold_surplus_wh"] == 1000
    assert h.order_rejected("offer", ALICE, METER_A, 1001, 100) == "surplus_already_offered"
    h.order("offer", ALICE, METER_A, 1000, 120)
    assert h.order_rejected("offer", ALICE, METER_A, 1, 100) == "surplus_already_offered"


def test_offer_above_certified_surplus_is_refused(h: EnergyHarness) -> None:
    assert h.order_rejected("offer", ALICE, METER_A, 4001, 100) == "exceeds_certified_surplus"
    assert h.order_rejected("offer", BOB, METER_B, 1, 100) == "exceeds_certified_surplus"


def test_orders_through_someone_elses_meter_are_refused(h: EnergyHarness) -> None:
    assert h.order_rejected("offer", BOB, METER_A, 100, 100) == "not_meter_owner"
    assert h.order_rejected("bid", ALICE, METER_B, 100, 100) == "not_meter_owner"
    assert h.rejected(BOB, "bid", {"meter_id": "0" * 40, "quantity_wh": 1,
                                   "price_per_kwh": 1, "class_id": CLASS}) == "unknown_meter"


def test_orders_in_unknown_purpose_bound_or_expired_classes_are_refused(h: EnergyHarness) -> None:
    define_class(h.state, "social", transferable=False)
    define_class(h.state, "old", expiry_height=START_HEIGHT)
    assert h.order_rejected("offer", ALICE, METER_A, 100, 100, "nosuch") == "unknown_class"
    assert h.order_rejected("bid", BOB, METER_B, 100, 100, "social") == "not_transferable"
    assert h.order_rejected("bid", BOB, METER_B, 100, 100, "old") == "class_expired"


def test_bid_locks_funds_in_the_market_account(h: EnergyHarness) -> None:
    result = h.order("bid", BOB, METER_B, 4000, 201)  # 4 kWh x 201 = 804 units
    assert result["locked"] == 804
    assert h.balance(BOB) == 196 and h.balance("market:north/2") == 804


def test_bid_without_funds_to_lock_is_refused(h: EnergyHarness) -> None:
    assert h.order_rejected("bid", BOB, METER_B, 5001, 200) == "insufficient_funds"  # 1000.2
    assert h.order_rejected("bid", ALICE, METER_A, 1, 1) == "insufficient_funds"


def test_market_holds_at_most_the_genesis_number_of_orders() -> None:
    h = EnergyHarness({"interval_blocks": INTERVAL_BLOCKS, "orders_per_market_max": 2})
    h.register(METER_A, ALICE)
    h.register(METER_B, BOB)
    h.reading(METER_A, 1, 900, 0)
    credit(h.state, CLASS, BOB.address, 10)
    h.order("offer", ALICE, METER_A, 100, 1)
    h.order("bid", BOB, METER_B, 100, 1)
    assert h.order_rejected("offer", ALICE, METER_A, 100, 1) == "market_full"


# -- clearing -------------------------------------------------------------------------------

def test_interval_auction_settles_at_a_uniform_price_and_returns_the_rest(h: EnergyHarness) -> None:
    h.order("offer", ALICE, METER_A, 3000, 100)
    h.order("offer", CAROL, METER_C, 2000, 150)
    h.order("bid", BOB, METER_B, 4000, 200)   # locks 800
    h.order("bid", DAVE, METER_D, 2000, 120)  # locks 240, below Carol's ask
    h.run_to(START_HEIGHT + 3)
    assert energy_market(h.state, "north", 2)["markets"][0]["status"] == "open"
    h.end_block()  # last block of interval 2
    # Bob takes Alice's 3000 Wh and 1000 Wh of Carol's; the last matched pair is
    # (bid 200, offer 150), so the price is 175 per kWh.
    market = energy_market(h.state, "north", 2)["markets"][0]
    assert market["status"] == "cleared" and market["clearing_price_per_kwh"] == 175
    assert market["traded_wh"] == 4000 and market["paid_units"] == 700
    assert h.balance(ALICE) == 525 and h.balance(CAROL) == 175
    assert h.balance(BOB) == 1000 - 700 and h.balance(DAVE) == 1000
    assert h.balance("market:north/2") == 0
    assert h.meter(METER_A)["sold_wh"] == 3000 and h.meter(METER_B)["bought_wh"] == 4000
    carol = h.meter(METER_C)
    assert carol["sold_wh"] == 1000 and carol["offered_wh"] == 0
    assert carol["unsold_surplus_wh"] == 1500  # the unmatched 1000 Wh came back
    statuses = {(o["kind"], o["account"]): o["status"]
                for o in market["offers"] + market["bids"]}
    assert statuses == {("offer", ALICE.address): "filled",
                        ("offer", CAROL.address): "partly_filled",
                        ("bid", BOB.address): "filled", ("bid", DAVE.address): "expired"}


def test_unmatched_offer_expires_and_its_surplus_can_be_offered_again(h: EnergyHarness) -> None:
    h.order("offer", ALICE, METER_A, 4000, 300)
    h.order("bid", BOB, METER_B, 1000, 200)
    h.run_to(START_HEIGHT + 4)
    assert h.balance(BOB) == 1000 and h.balance(ALICE) == 0
    assert h.meter(METER_A)["unsold_surplus_wh"] == 4000
    h.order("offer", ALICE, METER_A, 4000, 150)  # interval 3
    assert energy_market(h.state, "north", 3)["markets"][0]["offer_count"] == 1


def test_markets_of_different_zones_and_classes_clear_separately(h: EnergyHarness) -> None:
    h.register(key(40), ALICE, zone="south")
    h.register(key(41), BOB, zone="south")
    h.reading(key(40), 1, 2000, 0)
    define_class(h.state, "euro")
    credit(h.state, "euro", BOB.address, 100)
    h.order("offer", ALICE, METER_A, 1000, 100)           # north, kwh_coin
    h.order("bid", BOB, key(41), 1000, 100, "euro")       # south, euro: no offer there
    h.order("offer", ALICE, key(40), 1000, 50, "euro")    # south, euro
    h.order("bid", DAVE, METER_D, 1000, 100)              # north, kwh_coin
    h.run_to(START_HEIGHT + 4)
    assert h.balance(ALICE) == 100 and h.balance(ALICE, "euro") == 75
    assert h.balance(BOB, "euro") == 25 and h.balance(DAVE) == 900
    assert h.balance("market:south/2", "euro") == 0


def test_energy_market_view_describes_the_interval(h: EnergyHarness) -> None:
    view = energy_market(h.state, "north", 2)
    assert view == {"zone": "north", "interval": 2, "first_height": 10, "last_height": 14,
                    "account": "market:north/2", "markets": []}
    h.order("offer", ALICE, METER_A, 500, 90)
    market = energy_market(h.state, "north", 2)["markets"][0]
    assert market["class_id"] == CLASS and market["offer_count"] == 1
    assert market["status"] == "open" and market["bids"] == []
    assert [(o["quantity_wh"], o["price_per_kwh"]) for o in market["offers"]] == [(500, 90)]


# -- the matching rule itself ---------------------------------------------------------------

def test_matching_price_is_the_midpoint_of_the_last_matched_pair_rounded_down() -> None:
    result = clear([Order(0, 101, 1000)], [Order(1, 90, 1000)])
    assert result.price_per_kwh == 95 and result.traded_wh == 1000


def test_matching_with_no_overlap_trades_nothing() -> None:
    result = clear([Order(0, 50, 1000)], [Order(1, 60, 1000)])
    assert result.price_per_kwh is None and result.fills == ()


def test_matching_breaks_price_ties_by_transaction_order() -> None:
    result = clear([Order(5, 100, 1500)], [Order(3, 80, 1000), Order(1, 80, 1000)])
    assert [(f.offer_seq, f.quantity_wh) for f in result.fills] == [(1, 1000), (3, 500)]


def test_money_rounding_never_charges_more_than_the_lock() -> None:
    assert lock_units(1, 1) == 1 and cost_units(1, 1) == 0
    assert lock_units(1500, 3) == 5 and cost_units(1500, 3) == 4
    for quantity in range(1, 3000, 7):
        for price in (1, 3, 999, 1001):
            assert cost_units(quantity, price) <= lock_units(quantity, price)


@pytest.mark.parametrize("params", [{"interval_blocks": 0}, {"interval_blocks": "5"},
                                    {"speed": 1}])
def test_genesis_refuses_bad_energy_params(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EnergyFamily().init_genesis(Overlay(MemoryKV()), params)


def test_an_account_cannot_bid_against_its_own_offer(h: EnergyHarness) -> None:
    h.register(key(42), ALICE)  # Alice's second meter, same zone
    credit(h.state, CLASS, ALICE.address, 500)
    h.order("offer", ALICE, METER_A, 1000, 100)
    assert h.order_rejected("bid", ALICE, key(42), 1000, 200) == "self_trade"
    h.order("bid", BOB, METER_B, 500, 200)
    assert h.order_rejected("offer", BOB, METER_B, 1, 1) == "self_trade"
    h.run_to(START_HEIGHT + 4)
    h.order("bid", ALICE, key(42), 1000, 200)  # a new interval is a new market


# -- governance parameters ------------------------------------------------------------------

def test_governance_change_of_interval_length_starts_at_the_next_boundary(
        h: EnergyHarness) -> None:
    h.state.put_obj(param_key("energy", "interval_blocks"), 3)
    assert interval_of(h.state, 14) == 2 and interval_of(h.state, 15) == 3
    h.run_to(START_HEIGHT + 4)  # end of interval 2 (heights 10..14)
    assert [interval_of(h.state, height) for height in (14, 15, 17, 18, 21)] == [2, 3, 3, 4, 5]
    assert interval_heights(h.state, 2) == (10, 14)
    assert interval_heights(h.state, 3) == (15, 17)
    assert interval_heights(h.state, 4) == (18, 20)
    h.run_to(15)
    h.order("offer", ALICE, METER_A, 1000, 100)
    h.order("bid", BOB, METER_B, 1000, 100)
    h.run_to(16)
    assert h.balance(ALICE) == 0
    h.run_to(17)  # last block of interval 3 under the new length
    assert h.balance(ALICE) == 100 and h.balance("market:north/3") == 0


def test_invalid_governance_interval_length_is_ignored(h: EnergyHarness) -> None:
    h.state.put_obj(param_key("energy", "interval_blocks"), 0)
    h.run_to(START_HEIGHT + 4)
    assert interval_heights(h.state, 3) == (15, 19)


def test_governance_can_lower_the_orders_per_market_limit(h: EnergyHarness) -> None:
    h.state.put_obj(param_key("energy", "orders_per_market_max"), 1)
    h.order("offer", ALICE, METER_A, 1000, 100)
    assert h.order_rejected("bid", BOB, METER_B, 1000, 100) == "market_full"


# -- end to end through the executor: a day of trading, and determinism ---------------------

E2E_INTERVAL_BLOCKS = 4


def trading_day() -> list[list[Any]]:
    """Blocks (from height 1) where two households trade surplus and contracts run."""
    nonces: dict[str, int] = defaultdict(int)

    def tx(signer: KeyPair, family: str, op: str, payload: dict[str, Any]) -> Any:
        nonce = nonces[signer.address]
        nonces[signer.address] += 1
        return sign_tx(signer, "test-city", family, op, nonce, payload)

    def order(owner: KeyPair, meter: KeyPair, op: str, wh: int, price: int) -> Any:
        return tx(owner, "energy", op, {"meter_id": meter.address, "quantity_wh": wh,
                                        "price_per_kwh": price, "class_id": "scoin"})

    blocks: list[list[Any]] = [
        [tx(Cast.treasury, "tokens", "define_class", {
            "class_id": "scoin", "name": "S-Coin", "budget": 100_000, "categories": ["food"],
            "transferable": True, "expiry_height": 1000, "redemption_cents_per_unit": 1}),
         *[tx(Cast.utility, "energy", "register_meter", {
             "meter_key": m.public_key.hex(), "owner": o.address, "zone": "harbour"})
           for m, o in ((METER_A, ALICE), (METER_B, BOB), (METER_C, CAROL))]],
        [tx(Cast.treasury, "tokens", "issue", {"class_id": "scoin", "to": who.address,
                                                "amount": 1000}) for who in (BOB, DAVE)],
        [],  # interval 0 is heights 0..3; its readings can come from height 4 on
        [tx(METER_A, "energy", "reading", {"interval": 0, "produced_wh": 6000,
                                           "consumed_wh": 2000}),
         tx(METER_C, "energy", "reading", {"interval": 0, "produced_wh": 2500,
                                           "consumed_wh": 500}),
         tx(ALICE, "energy", "reading", {"interval": 0, "produced_wh": 10**6,  # not a meter
                                         "consumed_wh": 0})],
        [order(ALICE, METER_A, "offer", 4000, 90), order(CAROL, METER_C, "offer", 2000, 130),
         order(CAROL, METER_C, "offer", 1, 1),  # rejected: surplus already offered
         order(BOB, METER_B, "bid", 5000, 150),
         tx(DAVE, "contracts", "create", {"template": "escrow", "class_id": "scoin", "terms": {
             "payee": CAROL.address, "arbiter": Cast.registry.address, "amount": 300,
             "deadline_height": 9}})],
        [], [],  # interval 1 (heights 4..7) clears at the end of block 7
        [tx(METER_A, "energy", "reading", {"interval": 1, "produced_wh": 100,
                                           "consumed_wh": 0}),
         tx(METER_A, "energy", "reading", {"interval": 1, "produced_wh": 100,  # rewrite
                                           "consumed_wh": 0})],
        [],  # the escrow's deadline: refunded to Dave
    ]
    return blocks


def run_trading_day() -> tuple[Any, list[str], list[str]]:
    state = WorldState.in_memory()
    modules = [*city_modules(), ContractsFamily(), EnergyFamily()]
    genesis = {**city_genesis(), "energy": {"interval_blocks": E2E_INTERVAL_BLOCKS}}
    seed = Overlay(state.reader())
    for module in modules:
        module.init_genesis(seed, dict(genesis.get(module.family, {})))
    roots = [state.commit(seed.writes, height=0).hex()]
    executor = Executor("test-city", modules)
    rejections: list[str] = []
    for height, txs in enumerate(trading_day(), start=1):
        result = executor.execute_block(
            state.reader(), BlockContext("test-city", height, height * 1000, bytes(32)), txs)
        roots.append(state.commit(result.writes, height=height).hex() + result.receipts_root.hex())
        rejections += [r.code for r in result.receipts if not r.ok]
    return state, roots, rejections


def test_trading_day_through_the_executor_settles_and_is_deterministic() -> None:
    state, roots, rejections = run_trading_day()
    assert run_trading_day()[1] == roots
    assert rejections == ["not_a_meter", "surplus_already_offered", "interval_not_increasing"]
    reader = state.reader()
    market = energy_market(reader, "harbour", 1)
    assert (market["first_height"], market["last_height"]) == (4, 7)
    (book,) = market["markets"]
    # Bob takes 4000 Wh from Alice and 1000 Wh from Carol; last pair (150, 130) -> 140/kWh.
    assert book["status"] == "cleared" and book["clearing_price_per_kwh"] == 140
    assert book["traded_wh"] == 5000 and book["offer_count"] == 2
    assert balance_of(reader, "scoin", ALICE.address) == 560
    assert balance_of(reader, "scoin", CAROL.address) == 140
    assert balance_of(reader, "scoin", BOB.address) == 300
    assert balance_of(reader, "scoin", DAVE.address) == 1000  # escrow refunded at height 9
    assert balance_of(reader, "scoin", "market:harbour/1") == 0
    meter_a = meter_get(reader, METER_A.address)
    assert meter_a is not None and meter_a["certified_wh"] == 4100
    assert meter_a["sold_wh"] == 4000 and meter_a["last_interval"] == 1


def test_trading_day_roots_do_not_depend_on_the_hash_seed() -> None:
    repo = Path(__file__).resolve().parents[2]
    expected = run_trading_day()[1][-1]
    code = "from tests.txtypes.test_energy import run_trading_day; print(run_trading_day()[1][-1])"
    env = {**os.environ, "PYTHONHASHSEED": "977", "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == expected


def test_many_markets_ending_in_one_block_all_clear() -> None:
    h = EnergyHarness(start_height=5)  # interval 1 of 5 blocks: heights 5..9
    meters = [key(100 + i) for i in range(70)]
    for i, meter in enumerate(meters):
        h.register(meter, ALICE, zone=f"z{i}")
        h.reading(meter, 0, 100, 0)
        h.order("offer", ALICE, meter, 100, 10)
    h.run_to(9)
    for i, meter in enumerate(meters):
        (market,) = energy_market(h.state, f"z{i}", 1)["markets"]
        assert market["status"] == "cleared" and market["clearing_price_per_kwh"] is None
        assert h.meter(meter)["unsold_surplus_wh"] == 100
    assert h.state.scan(b"energy/open/", 10) == []
