"""The energy family: smart meters, certified solar surplus and a per-interval market.

Time: genesis sets `interval_blocks` (B). Market interval n covers block heights
[n*B, (n+1)*B - 1]; a transaction in block h belongs to interval h // B. Every market of
interval n clears in end_block of its last block, height (n+1)*B - 1 (any market left open
from an earlier interval clears then too).

Operations:
- `register_meter` {meter_key, owner, zone} — utility role. The meter's id is the address
  of its public key; the meter key must not be the owner's own key.
- `deactivate_meter` {meter_id} — utility role.
- `reading` {interval, produced_wh, consumed_wh} — signed by the meter key itself. Readings
  cover finished intervals only (interval < current interval), strictly increasing per
  meter; a reading is never rewritten. Each adds max(0, produced - consumed) Wh to the
  meter's certified surplus.
- `offer` {meter_id, quantity_wh, price_per_kwh, class_id} — the meter's owner offers
  surplus in the current interval's market of the meter's zone. At any time
  offered_wh + sold_wh <= certified_wh: surplus is never sold or offered twice. An offer
  left unmatched at clearing expires and its Wh return to the unsold surplus.
- `bid` {meter_id, quantity_wh, price_per_kwh, class_id} — the owner of the meter that
  takes delivery bids in its zone; ceil(quantity_wh * price_per_kwh / 1000) units are
  locked in the pseudo-account "market:<zone>/<interval>" until clearing.
Matching and money rounding: see txtypes/energy_market.py.

State layout (intervals and sequence numbers as 20-digit decimals so keys sort by number):
    b"energy/params"                                   -> {interval_blocks, orders_per_market_max}
    b"energy/meter/<meter id>"                         -> meter record
    b"energy/reading/<meter id>/<interval>"            -> {produced_wh, consumed_wh, height}
    b"energy/zone/<zone>"                              -> {meters}
    b"energy/seq"                                      -> next order sequence number
    b"energy/market/<zone>/<interval>/<class>"         -> market record
    b"energy/book/<zone>/<interval>/<class>/<kind>/<seq>" -> order (kind: bid | offer)
    b"energy/open/<interval>/<zone>/<class>"           -> true while the market is uncleared
    b"energy/side/<zone>/<interval>/<class>/<account>" -> ["bid"] or ["offer"], until clearing
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import BaseModel, Field

from ledger.codec import decode_stored
from ledger.crypto import address_of
from ledger.errors import InvariantViolation, invariant
from ledger.rules import BlockContext, RuleError, StateView, TxContext
from txtypes.balances import balance_of, move
from txtypes.base import Payload, TxFamily
from txtypes.contracts import require_lockable_class
from txtypes.energy_market import Order, clear, cost_units, lock_units
from txtypes.governance import Name, param_get
from txtypes.roles import require_role

FAMILY = "energy"
UTILITY_ROLE = "utility"
PARAMS_KEY = b"energy/params"
SEQ_KEY = b"energy/seq"
METER_PREFIX = b"energy/meter/"
READING_PREFIX = b"energy/reading/"
ZONE_PREFIX = b"energy/zone/"
MARKET_PREFIX = b"energy/market/"
BOOK_PREFIX = b"energy/book/"
OPEN_PREFIX = b"energy/open/"
SIDE_PREFIX = b"energy/side/"

INTERVAL_BLOCKS_DEFAULT = 10
ORDERS_PER_MARKET_MAX_DEFAULT = 256
ENERGY_WH_MAX = 10**12  # a terawatt-hour: far above any household meter
PRICE_PER_KWH_MAX = 10**9
OPEN_SCAN_BATCH_MAX = 64
SETTING_MAX = 1_000_000

ADDRESS_PATTERN = r"^[0-9a-f]{40}$"
ZoneStr = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
AddressStr = Annotated[str, Field(pattern=ADDRESS_PATTERN)]
EnergyWh = Annotated[int, Field(ge=0, le=ENERGY_WH_MAX)]
QuantityWh = Annotated[int, Field(ge=1, le=ENERGY_WH_MAX)]
PricePerKwh = Annotated[int, Field(ge=1, le=PRICE_PER_KWH_MAX)]
IntervalInt = Annotated[int, Field(ge=0, le=2**62)]


class RegisterMeterPayload(Payload):
    meter_key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    owner: AddressStr
    zone: ZoneStr


class DeactivateMeterPayload(Payload):
    meter_id: AddressStr


class ReadingPayload(Payload):
    interval: IntervalInt
    produced_wh: EnergyWh
    consumed_wh: EnergyWh


class OrderPayload(Payload):
    meter_id: AddressStr
    quantity_wh: QuantityWh
    price_per_kwh: PricePerKwh
    class_id: Name


class StateReader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]: ...


# -- keys -------------------------------------------------------------------------------------

def _n(number: int) -> str:
    return f"{number:020d}"


def meter_key(meter_id: str) -> bytes:
    return METER_PREFIX + meter_id.encode()


def reading_key(meter_id: str, interval: int) -> bytes:
    return READING_PREFIX + f"{meter_id}/{_n(interval)}".encode()


def zone_key(zone: str) -> bytes:
    return ZONE_PREFIX + zone.encode()


def market_key(zone: str, interval: int, class_id: str) -> bytes:
    return MARKET_PREFIX + f"{zone}/{_n(interval)}/{class_id}".encode()


def book_prefix(zone: str, interval: int, class_id: str, kind: str) -> bytes:
    return BOOK_PREFIX + f"{zone}/{_n(interval)}/{class_id}/{kind}/".encode()


def side_prefix(zone: str, interval: int, class_id: str) -> bytes:
    return SIDE_PREFIX + f"{zone}/{_n(interval)}/{class_id}/".encode()


def open_key(interval: int, zone: str, class_id: str) -> bytes:
    return OPEN_PREFIX + f"{_n(interval)}/{zone}/{class_id}".encode()


def market_account(zone: str, interval: int) -> str:
    """The pseudo-account holding bids' locked funds until the market clears."""
    return f"market:{zone}/{interval}"


# -- reads ------------------------------------------------------------------------------------

def _get(state: StateReader, key: bytes) -> Any | None:
    raw = state.get(key)
    return None if raw is None else decode_stored(raw)


def _params(state: StateReader) -> dict[str, Any]:
    params = _get(state, PARAMS_KEY)
    if params is None:
        return _initial_params(INTERVAL_BLOCKS_DEFAULT, ORDERS_PER_MARKET_MAX_DEFAULT)
    return dict(params)


def _initial_params(interval_blocks: int, orders_per_market_max: int) -> dict[str, Any]:
    return {
        "orders_per_market_max": orders_per_market_max,
        "epochs": [{"start_height": 0, "start_interval": 0, "interval_blocks": interval_blocks}],
    }


def _valid_setting(value: Any) -> bool:
    return type(value) is int and 1 <= value <= SETTING_MAX


def interval_of(state: StateReader, height: int) -> int:
    """The market interval that block `height` belongs to."""
    epochs = _params(state)["epochs"]
    epoch = next((e for e in reversed(epochs) if e["start_height"] <= height), epochs[0])
    interval: int = (epoch["start_interval"]
                     + (height - epoch["start_height"]) // epoch["interval_blocks"])
    return interval


def interval_heights(state: StateReader, interval: int) -> tuple[int, int]:
    """First and last block height of market interval `interval`."""
    epochs = _params(state)["epochs"]
    epoch = next((e for e in reversed(epochs) if e["start_interval"] <= interval), epochs[0])
    blocks: int = epoch["interval_blocks"]
    first: int = epoch["start_height"] + (interval - epoch["start_interval"]) * blocks
    return first, first + blocks - 1


def orders_per_market_max(state: StateReader) -> int:
    """Governance may change this at any time; a bad value leaves the genesis one."""
    fallback: int = _params(state)["orders_per_market_max"]
    value = param_get(state, FAMILY, "orders_per_market_max", fallback)
    return value if _valid_setting(value) else fallback


def unsold_surplus_wh(meter: Mapping[str, Any]) -> int:
    """Certified Wh neither sold nor in an open offer."""
    free: int = meter["certified_wh"] - meter["sold_wh"] - meter["offered_wh"]
    return free


def meter_get(state: StateReader, meter_id: str) -> dict[str, Any] | None:
    """RPC view of a meter, with its unsold surplus."""
    meter = _get(state, meter_key(meter_id))
    if meter is None:
        return None
    return {**meter, "unsold_surplus_wh": unsold_surplus_wh(meter)}


def _orders(state: StateReader, zone: str, interval: int, class_id: str,
            kind: str) -> list[dict[str, Any]]:
    entries = state.scan(book_prefix(zone, interval, class_id, kind), 1 << 20)
    return [decode_stored(raw) for _, raw in entries]


def energy_market(state: StateReader, zone: str, interval: int) -> dict[str, Any]:
    """RPC `energy_market`: every class's book and clearing result for a zone and interval."""
    first_height, last_height = interval_heights(state, interval)
    prefix = MARKET_PREFIX + f"{zone}/{_n(interval)}/".encode()
    markets = []
    for _, raw in state.scan(prefix, 1 << 16):
        market = decode_stored(raw)
        class_id = market["class_id"]
        markets.append({
            **market,
            "offers": _orders(state, zone, interval, class_id, "offer"),
            "bids": _orders(state, zone, interval, class_id, "bid"),
        })
    return {
        "zone": zone,
        "interval": interval,
        "first_height": first_height,
        "last_height": last_height,
        "account": market_account(zone, interval),
        "markets": markets,
    }


class EnergyFamily(TxFamily):
    family = FAMILY
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {
        "register_meter": RegisterMeterPayload,
        "deactivate_meter": DeactivateMeterPayload,
        "reading": ReadingPayload,
        "offer": OrderPayload,
        "bid": OrderPayload,
    }

    # -- genesis ----------------------------------------------------------------------
    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        unknown = set(params) - {"interval_blocks", "orders_per_market_max"}
        if unknown:
            raise ValueError(f"energy: unknown genesis parameters {sorted(unknown)}")
        values = {
            "interval_blocks": params.get("interval_blocks", INTERVAL_BLOCKS_DEFAULT),
            "orders_per_market_max": params.get("orders_per_market_max",
                                                ORDERS_PER_MARKET_MAX_DEFAULT),
        }
        for name, value in values.items():
            if not _valid_setting(value):
                raise ValueError(f"energy: genesis {name} must be an integer in "
                                 f"[1, {SETTING_MAX}]")
        state.put_obj(PARAMS_KEY, _initial_params(values["interval_blocks"],
                                                  values["orders_per_market_max"]))

    # -- meters -----------------------------------------------------------------------
    def check_register_meter(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, RegisterMeterPayload)
        require_role(state, ctx.sender_address, UTILITY_ROLE)
        meter_id = address_of(bytes.fromhex(p.meter_key))
        if state.get(meter_key(meter_id)) is not None:
            raise RuleError("meter_exists", f"meter {meter_id} is already registered")
        if meter_id == p.owner:
            raise RuleError("meter_key_is_owner",
                            "the meter must have its own key, not the owner's, so the owner "
                            "cannot sign readings")

    def apply_register_meter(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        self.check_register_meter(ctx, state)
        p = ctx.payload
        assert isinstance(p, RegisterMeterPayload)
        meter_id = address_of(bytes.fromhex(p.meter_key))
        state.put_obj(meter_key(meter_id), {
            "meter_id": meter_id,
            "meter_key": p.meter_key,
            "owner": p.owner,
            "zone": p.zone,
            "active": True,
            "registered_height": ctx.block.height,
            "last_interval": -1,
            "produced_wh": 0,
            "consumed_wh": 0,
            "certified_wh": 0,
            "offered_wh": 0,
            "sold_wh": 0,
            "bought_wh": 0,
        })
        zone = state.get_obj(zone_key(p.zone)) or {"zone": p.zone, "meters": 0}
        zone["meters"] += 1
        state.put_obj(zone_key(p.zone), zone)
        return {"meter_id": meter_id, "zone": p.zone}

    def _meter(self, state: StateView, meter_id: str) -> dict[str, Any]:
        meter = state.get_obj(meter_key(meter_id))
        if meter is None:
            raise RuleError("unknown_meter", f"no meter {meter_id}")
        return dict(meter)

    def check_deactivate_meter(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, DeactivateMeterPayload)
        require_role(state, ctx.sender_address, UTILITY_ROLE)
        if not self._meter(state, p.meter_id)["active"]:
            raise RuleError("meter_inactive", f"meter {p.meter_id} is already deactivated")

    def apply_deactivate_meter(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        self.check_deactivate_meter(ctx, state)
        p = ctx.payload
        assert isinstance(p, DeactivateMeterPayload)
        meter = self._meter(state, p.meter_id)
        meter["active"] = False
        state.put_obj(meter_key(p.meter_id), meter)
        return {"meter_id": p.meter_id, "active": False}

    # -- readings ---------------------------------------------------------------------
    def _reading_meter(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        p = ctx.payload
        assert isinstance(p, ReadingPayload)
        meter = state.get_obj(meter_key(ctx.sender_address))
        if meter is None or meter["meter_key"] != ctx.tx.sender.hex():
            raise RuleError("not_a_meter",
                            "readings must be signed by a registered meter's own key")
        if not meter["active"]:
            raise RuleError("meter_inactive", f"meter {meter['meter_id']} is deactivated")
        if p.interval <= meter["last_interval"]:
            raise RuleError("interval_not_increasing",
                            f"interval {p.interval} is not after the meter's last reading "
                            f"(interval {meter['last_interval']}); readings are never rewritten")
        current = interval_of(state, ctx.block.height)
        if p.interval >= current:
            raise RuleError("interval_not_finished",
                            f"interval {p.interval} has not finished (current interval "
                            f"{current})")
        return dict(meter)

    def check_reading(self, ctx: TxContext, state: StateView) -> None:
        self._reading_meter(ctx, state)

    def apply_reading(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        meter = self._reading_meter(ctx, state)
        p = ctx.payload
        assert isinstance(p, ReadingPayload)
        surplus = max(0, p.produced_wh - p.consumed_wh)
        meter["last_interval"] = p.interval
        meter["produced_wh"] += p.produced_wh
        meter["consumed_wh"] += p.consumed_wh
        meter["certified_wh"] += surplus
        state.put_obj(meter_key(meter["meter_id"]), meter)
        state.put_obj(reading_key(meter["meter_id"], p.interval), {
            "produced_wh": p.produced_wh, "consumed_wh": p.consumed_wh,
            "height": ctx.block.height,
        })
        return {"meter_id": meter["meter_id"], "certified_surplus_wh": surplus,
                "unsold_surplus_wh": unsold_surplus_wh(meter)}

    # -- orders -----------------------------------------------------------------------
    def _order_context(
        self, ctx: TxContext, state: StateView, kind: str
    ) -> tuple[OrderPayload, dict[str, Any], int, dict[str, Any]]:
        """Checks common to offers and bids; the payload, meter, interval and market."""
        p = ctx.payload
        assert isinstance(p, OrderPayload)
        meter = self._meter(state, p.meter_id)
        if meter["owner"] != ctx.sender_address:
            raise RuleError("not_meter_owner",
                            f"only the owner of meter {p.meter_id} may trade through it")
        if not meter["active"]:
            raise RuleError("meter_inactive", f"meter {p.meter_id} is deactivated")
        require_lockable_class(state, p.class_id, ctx.block.height)
        interval = interval_of(state, ctx.block.height)
        market = state.get_obj(market_key(meter["zone"], interval, p.class_id)) or {
            "zone": meter["zone"], "interval": interval, "class_id": p.class_id,
            "status": "open", "offer_count": 0, "bid_count": 0,
            "clearing_price_per_kwh": None, "traded_wh": 0, "paid_units": 0,
            "cleared_height": -1,
        }
        invariant(market["status"] == "open",
                  f"order for market {meter['zone']}/{interval} after it cleared")
        sides = state.get_obj(side_prefix(meter["zone"], interval, p.class_id)
                              + ctx.sender_address.encode()) or []
        other = "bid" if kind == "offer" else "offer"
        if other in sides:
            raise RuleError("self_trade",
                            f"{ctx.sender_address} already has an {other} in this market; "
                            "an account may not trade with itself")
        limit = orders_per_market_max(state)
        if market["offer_count"] + market["bid_count"] >= limit:
            raise RuleError("market_full",
                            f"the {meter['zone']} market of interval {interval} already holds "
                            f"{limit} orders for {p.class_id}")
        return p, meter, interval, dict(market)

    def _check_offer(self, ctx: TxContext, state: StateView) -> tuple[
            OrderPayload, dict[str, Any], int, dict[str, Any]]:
        p, meter, interval, market = self._order_context(ctx, state, "offer")
        unsold = meter["certified_wh"] - meter["sold_wh"]
        if p.quantity_wh > unsold:
            raise RuleError("exceeds_certified_surplus",
                            f"offer of {p.quantity_wh} Wh exceeds the {unsold} Wh of certified "
                            f"surplus meter {p.meter_id} has not sold")
        free = unsold - meter["offered_wh"]
        if p.quantity_wh > free:
            raise RuleError("surplus_already_offered",
                            f"{meter['offered_wh']} Wh of meter {p.meter_id}'s surplus is in "
                            f"open offers; only {free} Wh can still be offered")
        return p, meter, interval, market

    def check_offer(self, ctx: TxContext, state: StateView) -> None:
        self._check_offer(ctx, state)

    def apply_offer(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        p, meter, interval, market = self._check_offer(ctx, state)
        meter["offered_wh"] += p.quantity_wh
        state.put_obj(meter_key(p.meter_id), meter)
        seq = self._place(state, ctx, "offer", p, meter, interval, market, locked=0)
        return {"seq": seq, "zone": meter["zone"], "interval": interval}

    def _check_bid(self, ctx: TxContext, state: StateView) -> tuple[
            OrderPayload, dict[str, Any], int, dict[str, Any], int]:
        p, meter, interval, market = self._order_context(ctx, state, "bid")
        lock = lock_units(p.quantity_wh, p.price_per_kwh)
        have = balance_of(state, p.class_id, ctx.sender_address)
        if have < lock:
            raise RuleError("insufficient_funds",
                            f"a bid of {p.quantity_wh} Wh at {p.price_per_kwh}/kWh locks "
                            f"{lock} units of {p.class_id}; {ctx.sender_address} holds {have}")
        return p, meter, interval, market, lock

    def check_bid(self, ctx: TxContext, state: StateView) -> None:
        self._check_bid(ctx, state)

    def apply_bid(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        p, meter, interval, market, lock = self._check_bid(ctx, state)
        move(state, p.class_id, ctx.sender_address, market_account(meter["zone"], interval),
             lock)
        seq = self._place(state, ctx, "bid", p, meter, interval, market, locked=lock)
        return {"seq": seq, "zone": meter["zone"], "interval": interval, "locked": lock}

    def _place(self, state: StateView, ctx: TxContext, kind: str, p: OrderPayload,
               meter: dict[str, Any], interval: int, market: dict[str, Any],
               locked: int) -> int:
        seq: int = state.get_obj(SEQ_KEY) or 0
        state.put_obj(SEQ_KEY, seq + 1)
        zone = meter["zone"]
        state.put_obj(book_prefix(zone, interval, p.class_id, kind) + _n(seq).encode(), {
            "seq": seq, "kind": kind, "account": ctx.sender_address, "meter_id": p.meter_id,
            "quantity_wh": p.quantity_wh, "price_per_kwh": p.price_per_kwh, "locked": locked,
            "height": ctx.block.height, "status": "open", "filled_wh": 0, "paid_units": 0,
            "refunded_units": 0,
        })
        side_key = side_prefix(zone, interval, p.class_id) + ctx.sender_address.encode()
        sides = state.get_obj(side_key) or []
        if kind not in sides:
            state.put_obj(side_key, sorted([*sides, kind]))
        market[f"{kind}_count"] += 1
        state.put_obj(market_key(zone, interval, p.class_id), market)
        state.put_obj(open_key(interval, zone, p.class_id), True)
        return seq

    # -- clearing ---------------------------------------------------------------------
    def end_block(self, block: BlockContext, state: StateView) -> None:
        """Clear every open market whose interval ends with this block (or ended before)."""
        first_open_interval = interval_of(state, block.height + 1)
        batch = 1  # most blocks clear nothing: look at one entry, then widen
        while True:
            entries = state.scan(OPEN_PREFIX, batch)
            due = [key for key, _ in entries
                   if int(key[len(OPEN_PREFIX):len(OPEN_PREFIX) + 20]) < first_open_interval]
            for key in due:
                interval_text, zone, class_id = key[len(OPEN_PREFIX):].decode().split("/")
                state.delete(key)
                clear_market(state, zone, int(interval_text), class_id, block.height)
            if len(due) < batch:
                break
            batch = min(batch * 2, OPEN_SCAN_BATCH_MAX)
        if first_open_interval != interval_of(state, block.height):
            _adopt_interval_change(state, block.height + 1, first_open_interval)


def _adopt_interval_change(state: StateView, next_height: int, next_interval: int) -> None:
    """Apply a governance change of interval_blocks from the next interval boundary on.

    Changing the length only at a boundary keeps interval numbers increasing and every
    market's interval whole; an invalid value is ignored and the current length stays.
    """
    params = _params(state)
    current: int = params["epochs"][-1]["interval_blocks"]
    wanted = param_get(state, FAMILY, "interval_blocks", current)
    if wanted == current or not _valid_setting(wanted):
        return
    params["epochs"] = [*params["epochs"], {
        "start_height": next_height, "start_interval": next_interval, "interval_blocks": wanted,
    }]
    state.put_obj(PARAMS_KEY, params)


def clear_market(state: StateView, zone: str, interval: int, class_id: str,
                 height: int) -> None:
    """Match one market's orders, pay sellers, return unused locks, release unsold Wh."""
    offer_entries = state.scan(book_prefix(zone, interval, class_id, "offer"), 1 << 20)
    bid_entries = state.scan(book_prefix(zone, interval, class_id, "bid"), 1 << 20)
    offers = _by_seq(offer_entries)
    bids = _by_seq(bid_entries)
    result = clear(
        [Order(seq, o["price_per_kwh"], o["quantity_wh"]) for seq, (_, o) in sorted(bids.items())],
        [Order(seq, o["price_per_kwh"], o["quantity_wh"])
         for seq, (_, o) in sorted(offers.items())],
    )
    account = market_account(zone, interval)
    price = result.price_per_kwh
    paid_total = 0
    for fill in result.fills:
        assert price is not None
        bid, offer = bids[fill.bid_seq][1], offers[fill.offer_seq][1]
        amount = cost_units(fill.quantity_wh, price)
        if amount > 0:
            move(state, class_id, account, offer["account"], amount)
        paid_total += amount
        bid["filled_wh"] += fill.quantity_wh
        bid["paid_units"] += amount
        offer["filled_wh"] += fill.quantity_wh
        offer["paid_units"] += amount
    # Orders settle in sequence order so every node writes the same way.
    for seq in sorted(bids):
        key, bid = bids[seq]
        refund = bid["locked"] - bid["paid_units"]
        invariant(refund >= 0, f"bid {seq} paid {bid['paid_units']} of {bid['locked']} locked")
        if refund > 0:
            move(state, class_id, account, bid["account"], refund)
        bid["refunded_units"] = refund
        bid["status"] = "filled" if bid["filled_wh"] == bid["quantity_wh"] else (
            "partly_filled" if bid["filled_wh"] else "expired")
        _add_to_meter(state, bid["meter_id"], {"bought_wh": bid["filled_wh"]})
        state.put_obj(key, bid)
    for seq in sorted(offers):
        key, offer = offers[seq]
        offer["status"] = "filled" if offer["filled_wh"] == offer["quantity_wh"] else (
            "partly_filled" if offer["filled_wh"] else "expired")
        _add_to_meter(state, offer["meter_id"], {"sold_wh": offer["filled_wh"],
                                                 "offered_wh": -offer["quantity_wh"]})
        state.put_obj(key, offer)
    for key, _ in state.scan(side_prefix(zone, interval, class_id), 1 << 20):
        state.delete(key)
    invariant(balance_of(state, class_id, account) == 0,
              f"market {zone}/{interval} still holds {class_id} after clearing")
    market = _require_obj(state, market_key(zone, interval, class_id))
    market.update({"status": "cleared", "clearing_price_per_kwh": price,
                   "traded_wh": result.traded_wh, "paid_units": paid_total,
                   "cleared_height": height})
    state.put_obj(market_key(zone, interval, class_id), market)


def _require_obj(state: StateView, key: bytes) -> dict[str, Any]:
    """A record this module wrote earlier; missing means corrupt state, so halt."""
    value = state.get_obj(key)
    if not isinstance(value, dict):
        raise InvariantViolation(f"energy record {key!r} is missing")
    return dict(value)


def _by_seq(entries: list[tuple[bytes, bytes]]) -> dict[int, tuple[bytes, dict[str, Any]]]:
    decoded = [(key, decode_stored(raw)) for key, raw in entries]
    return {order["seq"]: (key, order) for key, order in decoded}


def _add_to_meter(state: StateView, meter_id: str, deltas: Mapping[str, int]) -> None:
    meter = _require_obj(state, meter_key(meter_id))
    for field, delta in deltas.items():
        meter[field] += delta
    invariant(meter["offered_wh"] >= 0 and
              meter["offered_wh"] + meter["sold_wh"] <= meter["certified_wh"],
              f"meter {meter_id} surplus accounting broke")
    state.put_obj(meter_key(meter_id), meter)
