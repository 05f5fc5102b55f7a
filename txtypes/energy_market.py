"""The energy market's matching rule: a uniform-price double auction, pure and integer-only.

Given one market's bids and offers (a zone, an interval, a token class):
1. Bids are sorted by price descending, then by order sequence (transaction order);
   offers by price ascending, then by order sequence.
2. Walk both lists: while the best remaining bid's price >= the best remaining offer's
   price, match min(remaining bid Wh, remaining offer Wh) between them and move on from
   whichever is used up (both when equal). Each match is a `Fill`.
3. The clearing price is the floor of the midpoint of the last matched pair:
   price = (last_bid_price + last_offer_price) // 2. Every matched offer asked at most
   last_offer_price <= price and every matched bid offered at least last_bid_price >= price,
   so nobody trades at a worse price than they asked for.
4. Money: prices are token units per kWh and quantities Wh, so a fill of w Wh costs
   floor(w * price / 1000) units (rounded down: the buyer never pays more than
   w x price). A bid locks ceil(q * bid_price / 1000) units up front, which always covers
   what its fills cost; the rest of the lock returns to the buyer at clearing.
No floats, no dict or set iteration: the same orders give the same fills everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WH_PER_KWH = 1000


@dataclass(frozen=True, slots=True)
class Order:
    seq: int
    price_per_kwh: int
    quantity_wh: int


@dataclass(frozen=True, slots=True)
class Fill:
    bid_seq: int
    offer_seq: int
    quantity_wh: int


@dataclass(frozen=True, slots=True)
class Clearing:
    """The outcome: price is None when nothing matched."""

    price_per_kwh: int | None
    fills: tuple[Fill, ...]

    @property
    def traded_wh(self) -> int:
        return sum(fill.quantity_wh for fill in self.fills)


def cost_units(quantity_wh: int, price_per_kwh: int) -> int:
    """What `quantity_wh` costs at `price_per_kwh`, rounded down to a whole unit."""
    return quantity_wh * price_per_kwh // WH_PER_KWH


def lock_units(quantity_wh: int, price_per_kwh: int) -> int:
    """What a bid locks: its full quantity at its limit price, rounded up."""
    return -(-quantity_wh * price_per_kwh // WH_PER_KWH)


def clear(bids: Sequence[Order], offers: Sequence[Order]) -> Clearing:
    ranked_bids = sorted(bids, key=lambda order: (-order.price_per_kwh, order.seq))
    ranked_offers = sorted(offers, key=lambda order: (order.price_per_kwh, order.seq))
    fills: list[Fill] = []
    i = j = 0
    bid_left = ranked_bids[0].quantity_wh if ranked_bids else 0
    offer_left = ranked_offers[0].quantity_wh if ranked_offers else 0
    last_pair: tuple[int, int] | None = None
    while i < len(ranked_bids) and j < len(ranked_offers):
        bid, offer = ranked_bids[i], ranked_offers[j]
        if bid.price_per_kwh < offer.price_per_kwh:
            break
        quantity = min(bid_left, offer_left)
        fills.append(Fill(bid.seq, offer.seq, quantity))
        last_pair = (bid.price_per_kwh, offer.price_per_kwh)
        bid_left -= quantity
        offer_left -= quantity
        if bid_left == 0:
            i += 1
            bid_left = ranked_bids[i].quantity_wh if i < len(ranked_bids) else 0
        if offer_left == 0:
            j += 1
            offer_left = ranked_offers[j].quantity_wh if j < len(ranked_offers) else 0
    if last_pair is None:
        return Clearing(None, ())
    return Clearing((last_pair[0] + last_pair[1]) // 2, tuple(fills))
