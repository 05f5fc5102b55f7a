"""City tokens: purpose-bound units the treasury issues, citizens spend, merchants redeem.

A token class is defined by a treasury account: a budget (the most units ever issued),
the merchant categories it may be spent in (a social token buys food and clothes, an
education token pays school and books), whether holders may pass it on, an expiry height,
the fiat value per unit in integer cents, and optionally the credential schema a recipient
must hold (e.g. low_income_eligibility). Redeeming is the seeds' "return the token,
withdraw the value, pay the store": the merchant hands units back, they leave circulation,
and the treasury's debt to the merchant (in cents) is recorded until `settle` records the
fiat payment.

Expiry: a class is expired at every height >= expiry_height. Expired units can no longer
be issued, transferred or spent. Anyone may send `burn_expired`, which burns the expired
units held by ordinary accounts, a bounded batch per transaction (re-send while the
receipt says `more`). Units held by registered merchants are not burned — they were paid
for goods — and stay redeemable; units in pseudo-accounts ("escrow:…", "market:…") are
left to the contracts and energy modules, which return them to accounts.

Invariants at every height, for every class (`supply_record`):
    balances >= 0;  issued <= budget;
    issued == sum of all balances (accounts and pseudo-accounts) + redeemed + burned.

State layout (values canonical msgpack):
    tokens/class/<class_id>               -> class record (see `apply_define_class`)
    tokens/supply/<class_id>              -> {"issued", "redeemed", "burned"}
    tokens/bal/<class_id>/<holder>        -> int                (txtypes/balances.py)
    tokens/merchant/<address>             -> {"address", "name", "category", ...}
    tokens/owed/<merchant>                -> int cents the treasury owes the merchant
    tokens/redemption/<seq:016d>          -> one redemption record
    tokens/next_redemption                -> int
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from ledger.codec import decode_stored
from ledger.overlay import KeyValueReader
from ledger.rules import RuleError, StateView, TxContext
from txtypes.balances import BALANCE_PREFIX, balance_key, balance_of, credit, debit, move
from txtypes.base import Payload, TxFamily
from txtypes.credentials import credential_status
from txtypes.governance import Address, Label, Name, read_obj
from txtypes.identity import did_controller_address
from txtypes.roles import require_role

ROLE_TREASURY = "treasury"
ROLE_REGISTRAR = "registrar"
CLASS_PREFIX = b"tokens/class/"
SUPPLY_PREFIX = b"tokens/supply/"
MERCHANT_PREFIX = b"tokens/merchant/"
OWED_PREFIX = b"tokens/owed/"
REDEMPTION_PREFIX = b"tokens/redemption/"
NEXT_REDEMPTION_KEY = b"tokens/next_redemption"

AMOUNT_MAX = 2**62  # keeps every sum of amounts inside the 64-bit canonical integer range
CENTS_PER_UNIT_MAX = 10**9
CATEGORIES_MAX = 32
BURN_BATCH_DEFAULT = 500
BURN_BATCH_MAX = 2000
BURN_SCAN_MAX = 5000  # entries looked at per burn_expired; skipped holders count against it


# -- payloads -------------------------------------------------------------------------------
class DefineClassPayload(Payload):
    class_id: Name
    name: Label
    budget: int = Field(ge=1, le=AMOUNT_MAX)
    categories: list[Name] = Field(min_length=1, max_length=CATEGORIES_MAX)
    transferable: bool
    expiry_height: int = Field(ge=1)
    redemption_cents_per_unit: int = Field(ge=0, le=CENTS_PER_UNIT_MAX)
    eligibility_schema: Name | None = None


class IssuePayload(Payload):
    class_id: Name
    to: Address
    amount: int = Field(ge=1, le=AMOUNT_MAX)
    # Needed when the class has an eligibility schema: a credential for the recipient's DID.
    credential_id: str | None = Field(default=None, min_length=1, max_length=64)


class TransferPayload(Payload):
    class_id: Name
    to: Address
    amount: int = Field(ge=1, le=AMOUNT_MAX)


class SpendPayload(Payload):
    class_id: Name
    merchant: Address
    amount: int = Field(ge=1, le=AMOUNT_MAX)
    memo: str = Field(default="", max_length=140)


class RegisterMerchantPayload(Payload):
    merchant: Address
    name: Label
    category: Name


class RedeemPayload(Payload):
    class_id: Name
    amount: int = Field(ge=1, le=AMOUNT_MAX)


class SettlePayload(Payload):
    merchant: Address
    cents: int = Field(ge=1, le=AMOUNT_MAX)
    reference: str = Field(default="", max_length=140)


class BurnExpiredPayload(Payload):
    class_id: Name
    limit: int = Field(default=BURN_BATCH_DEFAULT, ge=1, le=BURN_BATCH_MAX)


# -- pure queries (stable names: contracts and energy import these) --------------------------
def class_key(class_id: str) -> bytes:
    return CLASS_PREFIX + class_id.encode()


def supply_key(class_id: str) -> bytes:
    return SUPPLY_PREFIX + class_id.encode()


def merchant_key(address: str) -> bytes:
    return MERCHANT_PREFIX + address.encode()


def owed_key(merchant: str) -> bytes:
    return OWED_PREFIX + merchant.encode()


# Decoded class records by their stored bytes: every transfer and spend reads its class.
# Same bytes, same record, so the cache cannot change an outcome, and a changed record
# has new bytes. Callers get their own copy (lists included) and may change it freely.
_CLASS_RECORDS_MAX = 1024
_class_records: dict[bytes, tuple[dict[str, Any], tuple[str, ...]]] = {}


def _decoded_class(raw: bytes) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    cached = _class_records.get(raw)
    if cached is not None:
        return cached
    record = decode_stored(raw)
    if not isinstance(record, dict):
        return None
    list_keys = tuple(key for key, value in record.items() if type(value) is list)
    flat = all(type(value) is not dict for value in record.values()) and all(
        type(item) not in (list, dict) for key in list_keys for item in record[key])
    if not flat:  # a fresh decode, not shared: no copy needed, not cached
        return record, ()
    if len(_class_records) >= _CLASS_RECORDS_MAX:
        _class_records.clear()
    entry = _class_records[raw] = (record, list_keys)  # copying one level deep copies all
    return entry


def token_class(state: KeyValueReader, class_id: str) -> dict[str, Any] | None:
    """The class record, or None if no such class is defined."""
    raw = state.get(class_key(class_id))
    found = None if raw is None else _decoded_class(raw)
    if found is None:
        return None
    record, list_keys = found
    copied = dict(record)
    for key in list_keys:
        copied[key] = list(copied[key])
    return copied


def require_class(state: KeyValueReader, class_id: str) -> dict[str, Any]:
    """The class record, or RuleError("unknown_class")."""
    record = token_class(state, class_id)
    if record is None:
        raise RuleError("unknown_class", f"no token class {class_id!r}")
    return record


def class_expired(record: Mapping[str, Any], height: int) -> bool:
    return height >= int(record["expiry_height"])


def require_active_class(state: KeyValueReader, class_id: str, height: int) -> dict[str, Any]:
    """The class record if it exists and has not expired at `height`, else RuleError."""
    record = require_class(state, class_id)
    if class_expired(record, height):
        raise RuleError("class_expired",
                        f"token class {class_id!r} expired at height {record['expiry_height']}")
    return record


def token_class_get(state: KeyValueReader, class_id: str) -> dict[str, Any] | None:
    """RPC view of a class: its definition plus its supply record."""
    record = token_class(state, class_id)
    if record is None:
        return None
    return {**record, "supply": supply_record(state, class_id)}


def token_balance(state: KeyValueReader, class_id: str, holder: str) -> dict[str, Any]:
    raw = state.get(balance_key(class_id, holder))
    return {"class_id": class_id, "holder": holder, "balance": 0 if raw is None else decode_stored(raw)}


def supply_record(state: KeyValueReader, class_id: str) -> dict[str, int]:
    """issued, redeemed, burned and outstanding (= issued - redeemed - burned) units."""
    raw = read_obj(state, supply_key(class_id))
    record = raw if isinstance(raw, dict) else {"issued": 0, "redeemed": 0, "burned": 0}
    issued, redeemed, burned = int(record["issued"]), int(record["redeemed"]), int(record["burned"])
    return {"issued": issued, "redeemed": redeemed, "burned": burned,
            "outstanding": issued - redeemed - burned}


def merchant_get(state: KeyValueReader, address: str) -> dict[str, Any] | None:
    record = read_obj(state, merchant_key(address))
    return dict(record) if isinstance(record, dict) else None


def merchant_owed_cents(state: KeyValueReader, merchant: str) -> int:
    return int(read_obj(state, owed_key(merchant)) or 0)


def sum_balances(state: KeyValueReader, class_id: str, scan_max: int = 1_000_000) -> int:
    """Sum of every holder's balance of a class (audits and invariant tests)."""
    prefix = BALANCE_PREFIX + class_id.encode() + b"/"
    return sum(int(decode_stored(raw)) for _, raw in state.scan(prefix, scan_max))


def _bump_supply(state: StateView, class_id: str, field: str, amount: int) -> None:
    record = supply_record(state, class_id)
    record[field] += amount
    state.put_obj(supply_key(class_id), {k: record[k] for k in ("issued", "redeemed", "burned")})


def _require_category(record: Mapping[str, Any], merchant: Mapping[str, Any]) -> None:
    if merchant["category"] not in record["categories"]:
        raise RuleError(
            "category_not_allowed",
            f"{record['class_id']!r} tokens cannot be used at a {merchant['category']!r} "
            f"merchant (allowed: {', '.join(record['categories'])})",
        )


def _require_merchant(state: StateView, address: str) -> dict[str, Any]:
    merchant = merchant_get(state, address)
    if merchant is None:
        raise RuleError("unknown_merchant", f"{address} is not a registered merchant")
    return merchant


def _check_eligibility(state: StateView, record: Mapping[str, Any], payload: IssuePayload,
                       height: int) -> None:
    schema = record.get("eligibility_schema")
    if schema is None:
        return
    if payload.credential_id is None:
        raise RuleError("not_eligible",
                        f"{record['class_id']!r} requires a {schema!r} credential; none given")
    status = credential_status(state, payload.credential_id, height)
    if not status.valid:
        raise RuleError("not_eligible", f"credential {payload.credential_id!r}: {status.reason}")
    credential = status.credential
    assert credential is not None
    if credential["schema"] != schema:
        raise RuleError("not_eligible",
                        f"credential {payload.credential_id!r} is a {credential['schema']!r} "
                        f"credential, {schema!r} is required")
    if did_controller_address(state, credential["subject_did"]) != payload.to:
        raise RuleError("not_eligible",
                        f"credential {payload.credential_id!r} is not about the holder of {payload.to}")


class TokensFamily(TxFamily):
    family: ClassVar[str] = "tokens"
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {
        "define_class": DefineClassPayload,
        "issue": IssuePayload,
        "transfer": TransferPayload,
        "spend": SpendPayload,
        "register_merchant": RegisterMerchantPayload,
        "redeem": RedeemPayload,
        "settle": SettlePayload,
        "burn_expired": BurnExpiredPayload,
    }

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        if params:
            raise ValueError(f"the tokens module takes no genesis parameters, got {sorted(params)}")

    # -- define_class ---------------------------------------------------------------------
    def check_define_class(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, DefineClassPayload)
        require_role(state, ctx.sender_address, ROLE_TREASURY)
        if token_class(state, p.class_id) is not None:
            raise RuleError("class_exists", f"token class {p.class_id!r} is already defined")
        if p.expiry_height <= ctx.block.height:
            raise RuleError("expiry_in_past",
                            f"expiry height {p.expiry_height} is not after the current height "
                            f"{ctx.block.height}")
        if len(set(p.categories)) != len(p.categories):
            raise RuleError("duplicate_category", "a merchant category is listed twice")

    def apply_define_class(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, DefineClassPayload)
        state.put_obj(class_key(p.class_id), {
            "class_id": p.class_id,
            "name": p.name,
            "budget": p.budget,
            "categories": sorted(p.categories),
            "transferable": p.transferable,
            "expiry_height": p.expiry_height,
            "redemption_cents_per_unit": p.redemption_cents_per_unit,
            "eligibility_schema": p.eligibility_schema,
            "treasury": ctx.sender_address,
            "defined_height": ctx.block.height,
        })
        state.put_obj(supply_key(p.class_id), {"issued": 0, "redeemed": 0, "burned": 0})
        return {"class_id": p.class_id}

    # -- issue ----------------------------------------------------------------------------
    def check_issue(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, IssuePayload)
        require_role(state, ctx.sender_address, ROLE_TREASURY)
        record = require_active_class(state, p.class_id, ctx.block.height)
        issued = supply_record(state, p.class_id)["issued"]
        if issued + p.amount > record["budget"]:
            raise RuleError("over_budget",
                            f"issuing {p.amount} would bring {p.class_id!r} to {issued + p.amount} "
                            f"units, over its budget of {record['budget']}")
        _check_eligibility(state, record, p, ctx.block.height)

    def apply_issue(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, IssuePayload)
        credit(state, p.class_id, p.to, p.amount)
        _bump_supply(state, p.class_id, "issued", p.amount)
        return {"class_id": p.class_id, "to": p.to, "amount": p.amount,
                "balance": balance_of(state, p.class_id, p.to)}

    # -- transfer -------------------------------------------------------------------------
    def check_transfer(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, TransferPayload)
        record = require_active_class(state, p.class_id, ctx.block.height)
        if not record["transferable"]:
            raise RuleError("not_transferable",
                            f"{p.class_id!r} tokens cannot be passed to another holder")
        if p.to == ctx.sender_address:
            raise RuleError("self_transfer", "sender and recipient are the same account")
        _require_funds(state, p.class_id, ctx.sender_address, p.amount)

    def apply_transfer(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, TransferPayload)
        move(state, p.class_id, ctx.sender_address, p.to, p.amount)
        return {"class_id": p.class_id, "to": p.to, "amount": p.amount}

    # -- spend ----------------------------------------------------------------------------
    def check_spend(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, SpendPayload)
        record = require_active_class(state, p.class_id, ctx.block.height)
        merchant = _require_merchant(state, p.merchant)
        _require_category(record, merchant)
        if p.merchant == ctx.sender_address:
            raise RuleError("self_transfer", "a merchant cannot spend at itself")
        _require_funds(state, p.class_id, ctx.sender_address, p.amount)

    def apply_spend(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, SpendPayload)
        move(state, p.class_id, ctx.sender_address, p.merchant, p.amount)
        return {"class_id": p.class_id, "merchant": p.merchant, "amount": p.amount}

    # -- register_merchant ----------------------------------------------------------------
    def check_register_merchant(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, RegisterMerchantPayload)
        require_role(state, ctx.sender_address, ROLE_REGISTRAR)
        if merchant_get(state, p.merchant) is not None:
            raise RuleError("merchant_exists", f"{p.merchant} is already a registered merchant")

    def apply_register_merchant(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, RegisterMerchantPayload)
        state.put_obj(merchant_key(p.merchant), {
            "address": p.merchant, "name": p.name, "category": p.category,
            "registered_by": ctx.sender_address, "registered_height": ctx.block.height,
        })
        return {"merchant": p.merchant, "category": p.category}

    # -- redeem ---------------------------------------------------------------------------
    def check_redeem(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, RedeemPayload)
        merchant = _require_merchant(state, ctx.sender_address)
        # Redeeming stays open after expiry: the merchant delivered goods for these units.
        _require_category(require_class(state, p.class_id), merchant)
        _require_funds(state, p.class_id, ctx.sender_address, p.amount)

    def apply_redeem(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, RedeemPayload)
        record = require_class(state, p.class_id)
        cents = p.amount * int(record["redemption_cents_per_unit"])
        debit(state, p.class_id, ctx.sender_address, p.amount)
        _bump_supply(state, p.class_id, "redeemed", p.amount)
        owed = merchant_owed_cents(state, ctx.sender_address) + cents
        state.put_obj(owed_key(ctx.sender_address), owed)
        seq = int(read_obj(state, NEXT_REDEMPTION_KEY) or 1)
        state.put_obj(NEXT_REDEMPTION_KEY, seq + 1)
        state.put_obj(REDEMPTION_PREFIX + f"{seq:016d}".encode(), {
            "seq": seq, "merchant": ctx.sender_address, "class_id": p.class_id,
            "units": p.amount, "cents": cents, "treasury": record["treasury"],
            "height": ctx.block.height, "tx_hash": ctx.tx.hash.hex(),
        })
        return {"redemption": seq, "units": p.amount, "cents": cents, "owed_cents": owed}

    # -- settle ---------------------------------------------------------------------------
    def check_settle(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, SettlePayload)
        require_role(state, ctx.sender_address, ROLE_TREASURY)
        owed = merchant_owed_cents(state, p.merchant)
        if p.cents > owed:
            raise RuleError("over_settlement",
                            f"the treasury owes {p.merchant} {owed} cents, not {p.cents}")

    def apply_settle(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, SettlePayload)
        owed = merchant_owed_cents(state, p.merchant) - p.cents
        if owed:
            state.put_obj(owed_key(p.merchant), owed)
        else:
            state.delete(owed_key(p.merchant))
        return {"merchant": p.merchant, "paid_cents": p.cents, "owed_cents": owed}

    # -- burn_expired ---------------------------------------------------------------------
    def check_burn_expired(self, ctx: TxContext, state: StateView) -> None:
        p = ctx.payload
        assert isinstance(p, BurnExpiredPayload)
        record = require_class(state, p.class_id)
        if not class_expired(record, ctx.block.height):
            raise RuleError("class_not_expired",
                            f"{p.class_id!r} expires at height {record['expiry_height']}, "
                            f"now {ctx.block.height}")

    def apply_burn_expired(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        p = ctx.payload
        assert isinstance(p, BurnExpiredPayload)
        prefix = BALANCE_PREFIX + p.class_id.encode() + b"/"
        burned = holders_burned = 0
        burnable_left = False
        for key, raw in state.scan(prefix, BURN_SCAN_MAX):
            holder = key[len(prefix):].decode()
            if ":" in holder or merchant_get(state, holder) is not None:
                continue  # pseudo-accounts and merchants keep their units (see module doc)
            if holders_burned >= p.limit:
                burnable_left = True
                break
            amount = int(decode_stored(raw))
            state.delete(balance_key(p.class_id, holder))
            burned += amount
            holders_burned += 1
        if burned:
            _bump_supply(state, p.class_id, "burned", burned)
        return {"class_id": p.class_id, "burned": burned, "holders": holders_burned,
                "more": burnable_left}


def _require_funds(state: StateView, class_id: str, holder: str, amount: int) -> None:
    held = balance_of(state, class_id, holder)
    if held < amount:
        raise RuleError("insufficient_funds",
                        f"{holder} holds {held} units of {class_id!r}, needs {amount}")
