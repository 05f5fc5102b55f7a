"""`hourly_work`: a worker is paid for recorded time at the end of a pay period.

Terms: worker, rate_per_hour (units per hour), budget (units locked now),
period_end_height, optional time_clock (an account, e.g. a site's badge reader, that may
record time as well as the employer). The creator is the employer.

Actions:
- `record_time` {minutes}: by the employer or the time clock, while the period runs (up to
  and including block `period_end_height`). Refused up front when the pay owed for all
  recorded time would exceed what is escrowed, so recorded time is always covered.
- `top_up` {amount}: the employer locks more budget.

At the end of block `period_end_height` the worker is paid
    owed = ceil(total_minutes * rate_per_hour / 60)
(rounded up: the worker never receives less than time × rate) and the rest of the escrow
returns to the employer. Nothing else can move the escrowed units, so once time is recorded
the worker cannot be underpaid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field

from ledger.rules import RuleError, StateView, TxContext
from txtypes.balances import balance_of, move
from txtypes.base import Payload
from txtypes.contract_templates.base import (
    ADDRESS_PATTERN,
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

MINUTES_PER_HOUR = 60
MINUTES_PER_RECORD_MAX = 31 * 24 * 60


def owed_for(minutes: int, rate_per_hour: int) -> int:
    """Pay owed for `minutes` at `rate_per_hour`, rounded up to a whole unit."""
    return -(-minutes * rate_per_hour // MINUTES_PER_HOUR)


class HourlyWorkTerms(Payload):
    worker: AddressStr
    rate_per_hour: AmountInt
    budget: AmountInt
    period_end_height: HeightInt
    time_clock: Annotated[str, Field(pattern=f"{ADDRESS_PATTERN}|^$")] = ""


class RecordTimeArgs(Payload):
    minutes: Annotated[int, Field(ge=1, le=MINUTES_PER_RECORD_MAX)]
    note: NoteStr = ""


class TopUpArgs(Payload):
    amount: AmountInt


class HourlyWorkTemplate:
    name = "hourly_work"
    terms_schema: type[BaseModel] = HourlyWorkTerms
    action_schemas: Mapping[str, type[BaseModel]] = {
        "record_time": RecordTimeArgs,
        "top_up": TopUpArgs,
    }

    def open(self, ctx: TxContext, state: StateView, terms: BaseModel) -> Opening:
        assert isinstance(terms, HourlyWorkTerms)
        employer = ctx.sender_address
        if terms.worker == employer:
            raise RuleError("duplicate_party", "the worker must differ from the employer")
        if terms.time_clock == terms.worker:
            raise RuleError("time_clock_is_worker",
                            "the worker cannot be the time clock for their own hours")
        return Opening(
            lock_amount=terms.budget,
            deadline_height=terms.period_end_height,
            data={
                "employer": employer,
                "worker": terms.worker,
                "rate_per_hour": terms.rate_per_hour,
                "time_clock": terms.time_clock,
                "minutes_recorded": 0,
                "records": 0,
                "paid_to_worker": 0,
            },
        )

    def check_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> None:
        sender = ctx.sender_address
        data = contract.data
        if isinstance(args, TopUpArgs):
            if sender != data["employer"]:
                raise RuleError("not_employer", "only the employer may add budget")
            have = balance_of(state, contract.class_id, sender)
            if have < args.amount:
                raise RuleError("insufficient_funds",
                                f"{sender} holds {have} units of {contract.class_id}, "
                                f"the top-up needs {args.amount}")
            return
        assert isinstance(args, RecordTimeArgs)
        recorders = {data["employer"]} | ({data["time_clock"]} if data["time_clock"] else set())
        if sender not in recorders:
            raise RuleError("not_authorised_recorder",
                            "time may be recorded only by the employer or the contract's "
                            "time clock")
        minutes = data["minutes_recorded"] + args.minutes
        owed = owed_for(minutes, data["rate_per_hour"])
        if owed > contract.held:
            raise RuleError(
                "exceeds_escrowed_budget",
                f"{minutes} minutes at {data['rate_per_hour']}/h would owe {owed}, but only "
                f"{contract.held} is escrowed; top up first",
            )

    def apply_action(self, ctx: TxContext, state: StateView, contract: Contract,
                     action: str, args: BaseModel) -> dict[str, Any]:
        data = contract.data
        if isinstance(args, TopUpArgs):
            move(state, contract.class_id, ctx.sender_address, contract.escrow_account,
                 args.amount)
            contract.locked_total += args.amount
            return {"budget": contract.held}
        assert isinstance(args, RecordTimeArgs)
        data["minutes_recorded"] += args.minutes
        data["records"] += 1
        return {
            "minutes_recorded": data["minutes_recorded"],
            "owed": owed_for(data["minutes_recorded"], data["rate_per_hour"]),
        }

    def on_deadline(self, state: StateView, contract: Contract, height: int) -> None:
        data = contract.data
        owed = owed_for(data["minutes_recorded"], data["rate_per_hour"])
        pay_out(state, contract, data["worker"], owed)
        data["paid_to_worker"] = owed
        refund_rest(state, contract)
        close(contract, "settled", height)
