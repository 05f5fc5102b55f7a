"""Random operation sequences against the energy family keep its invariants.

- Tokens are conserved: the balances of all holders, market pseudo-accounts included, add
  up to what the test issued, in every class.
- No surplus is sold twice: per meter, sold + offered never exceeds the surplus certified
  by the readings the test saw accepted; energy sold equals energy bought.
- Locked funds come back: once a market has cleared its pseudo-account is empty and every
  bid's lock is fully accounted for as paid or refunded.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ledger.codec import decode
from ledger.rules import RuleError
from tests.txtypes.test_energy import (
    ALICE,
    BOB,
    CAROL,
    CLASS,
    DAVE,
    METER_A,
    METER_B,
    METER_C,
    METER_D,
    EnergyHarness,
    define_class,
)
from txtypes.balances import BALANCE_PREFIX, credit
from txtypes.energy import BOOK_PREFIX, interval_of
from txtypes.energy_market import lock_units

INTERVAL_BLOCKS = 4
CLASSES = (CLASS, "euro")
METERS = ((METER_A, ALICE, "north"), (METER_B, BOB, "north"),
          (METER_C, CAROL, "north"), (METER_D, DAVE, "south"))
meter_index = st.integers(0, len(METERS) - 1)
class_name = st.sampled_from((CLASS, CLASS, CLASS, "euro"))  # mostly one book per zone


class EnergyMarketMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = EnergyHarness({"interval_blocks": INTERVAL_BLOCKS, "orders_per_market_max": 6},
                               start_height=INTERVAL_BLOCKS)
        define_class(self.h.state, "euro")
        for meter, owner, zone in METERS:
            self.h.register(meter, owner, zone)
        self.issued = dict.fromkeys(CLASSES, 0)
        self.certified = [0] * len(METERS)
        self.last_interval = [-1] * len(METERS)
        # Start with money and surplus everywhere so that trades happen early.
        for i in range(len(METERS)):
            for class_id in CLASSES:
                self.issue(i, class_id, 2000)
            self.reading(i, 0, 3000, 0)
        # (interval, meter index, class) -> the order kinds placed: an account never has
        # both an offer and a bid in one market.
        self.sides: dict[tuple[int, int, str], set[str]] = {}

    def _other_side_taken(self, i: int, class_id: str, kind: str) -> bool:
        interval = interval_of(self.h.state, self.h.height)
        zone = METERS[i][2]
        other = "bid" if kind == "offer" else "offer"
        return any(other in kinds for (iv, j, c), kinds in self.sides.items()
                   if iv == interval and c == class_id and METERS[j][2] == zone
                   and METERS[j][1] == METERS[i][1])

    def _record_side(self, i: int, class_id: str, kind: str) -> None:
        interval = interval_of(self.h.state, self.h.height)
        self.sides.setdefault((interval, i, class_id), set()).add(kind)

    def _meter(self, i: int) -> dict[str, Any]:
        return self.h.meter(METERS[i][0])

    # -- rules ------------------------------------------------------------------------
    @rule(i=meter_index, class_id=class_name, amount=st.integers(1, 5000))
    def issue(self, i: int, class_id: str, amount: int) -> None:
        credit(self.h.state, class_id, METERS[i][1].address, amount)
        self.issued[class_id] += amount

    @rule(i=meter_index, skip=st.integers(0, 2), produced=st.integers(0, 8000),
          consumed=st.integers(0, 3000))
    def reading(self, i: int, skip: int, produced: int, consumed: int) -> None:
        interval = self.last_interval[i] + 1 + skip
        finished = interval < interval_of(self.h.state, self.h.height)
        try:
            self.h.reading(METERS[i][0], interval, produced, consumed)
        except RuleError as exc:
            assert not finished and exc.code == "interval_not_finished"
            return
        assert finished
        self.last_interval[i] = interval
        self.certified[i] += max(0, produced - consumed)

    @rule(i=meter_index)
    def rewrite_reading_is_refused(self, i: int) -> None:
        if self.last_interval[i] < 0:
            return
        code = self.h.rejected(METERS[i][0], "reading", {
            "interval": self.last_interval[i], "produced_wh": 10**6, "consumed_wh": 0})
        assert code == "interval_not_increasing"

    @rule(i=meter_index)
    def reading_signed_by_owner_is_refused(self, i: int) -> None:
        code = self.h.rejected(METERS[i][1], "reading", {
            "interval": self.last_interval[i] + 1, "produced_wh": 10**6, "consumed_wh": 0})
        assert code == "not_a_meter"

    @rule(i=meter_index, quantity=st.integers(1, 3000), price=st.integers(1, 200),
          class_id=class_name)
    def offer(self, i: int, quantity: int, price: int, class_id: str) -> None:
        meter, owner, _ = METERS[i]
        before = self._meter(i)
        free = before["certified_wh"] - before["sold_wh"] - before["offered_wh"]
        self_trade = self._other_side_taken(i, class_id, "offer")
        try:
            self.h.order("offer", owner, meter, quantity, price, class_id)
        except RuleError as exc:
            assert exc.code in {"exceeds_certified_surplus", "surplus_already_offered",
                                "market_full", "self_trade"}
            assert (exc.code == "self_trade") == self_trade
            assert exc.code in ("market_full", "self_trade") or quantity > free
            return
        assert quantity <= free and not self_trade
        self._record_side(i, class_id, "offer")

    @rule(i=meter_index, quantity=st.integers(1, 3000), price=st.integers(1, 400),
          class_id=class_name)
    def bid(self, i: int, quantity: int, price: int, class_id: str) -> None:
        meter, owner, _ = METERS[i]
        have = self.h.balance(owner, class_id)
        self_trade = self._other_side_taken(i, class_id, "bid")
        try:
            self.h.order("bid", owner, meter, quantity, price, class_id)
        except RuleError as exc:
            assert exc.code in {"insufficient_funds", "market_full", "self_trade"}
            assert (exc.code == "self_trade") == self_trade
            assert exc.code in ("market_full", "self_trade") or have < lock_units(quantity, price)
            return
        assert not self_trade
        assert self.h.balance(owner, class_id) == have - lock_units(quantity, price)
        self._record_side(i, class_id, "bid")

    @rule(seller=st.integers(0, 2), buyer_offset=st.integers(1, 2),
          quantity=st.integers(1, 3000), ask=st.integers(1, 200), markup=st.integers(0, 200))
    def crossing_pair(self, seller: int, buyer_offset: int, quantity: int, ask: int,
                      markup: int) -> None:
        """An offer and a bid that can match (north meters 0..2), through the rules above."""
        self.offer(seller, quantity, ask, CLASS)
        self.bid((seller + buyer_offset) % 3, quantity, ask + markup, CLASS)

    @rule(blocks=st.integers(1, INTERVAL_BLOCKS))
    def advance(self, blocks: int) -> None:
        sold_before = sum(self._meter(i)["sold_wh"] for i in range(len(METERS)))
        for _ in range(blocks):
            self.h.end_block()
        if sum(self._meter(i)["sold_wh"] for i in range(len(METERS))) > sold_before:
            event("a market cleared with trades")

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def tokens_are_conserved(self) -> None:
        for class_id in CLASSES:
            entries = self.h.state.scan(BALANCE_PREFIX + class_id.encode() + b"/", 10_000)
            assert sum(decode(raw) for _, raw in entries) == self.issued[class_id]

    @invariant()
    def no_surplus_is_sold_twice(self) -> None:
        sold = bought = 0
        for i in range(len(METERS)):
            meter = self._meter(i)
            assert meter["certified_wh"] == self.certified[i]
            assert meter["offered_wh"] >= 0
            assert meter["sold_wh"] + meter["offered_wh"] <= self.certified[i]
            sold += meter["sold_wh"]
            bought += meter["bought_wh"]
        assert sold == bought

    @invariant()
    def cleared_markets_hold_nothing_and_locks_are_settled(self) -> None:
        open_interval = interval_of(self.h.state, self.h.height)
        for class_id in CLASSES:
            prefix = BALANCE_PREFIX + class_id.encode() + b"/market:"
            for key, raw in self.h.state.scan(prefix, 10_000):
                interval = int(key.rsplit(b"/", 1)[1])
                assert interval >= open_interval, f"{key!r} still holds {decode(raw)}"
        for _, raw in self.h.state.scan(BOOK_PREFIX, 100_000):
            order = decode(raw)
            if order["status"] == "open":
                assert order["height"] // INTERVAL_BLOCKS >= open_interval
            elif order["kind"] == "bid":
                assert order["paid_units"] + order["refunded_units"] == order["locked"]


TestEnergyMarketMachine = EnergyMarketMachine.TestCase
TestEnergyMarketMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
