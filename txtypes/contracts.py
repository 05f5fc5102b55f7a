"""The contracts family: self-executing agreements built from pluggable templates.

Operations:
- `create` {template, class_id, terms}: the sender opens a contract of `template`; the
  template validates `terms` and says how many units of `class_id` to lock. They move from
  the sender to the pseudo-account "escrow:<contract id>". The contract id is the first 32
  hex characters of the creating transaction's hash.
- `act` {contract_id, action, args}: a party takes one of the template's actions.
Deadlines: each open contract has a deadline height; at the end of that block the
template settles or refunds it (`on_deadline`). An index keyed by height lets end_block
visit only the contracts that are due.

State layout:
    b"contracts/params"                          -> {"templates": [enabled names]}
    b"contracts/c/<contract id>"                 -> contract record (see templates.base)
    b"contracts/due/<height, 20 digits>/<id>"    -> true, while the contract is open
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import BaseModel, Field, ValidationError

from ledger.codec import decode_stored
from ledger.rules import BlockContext, RuleError, StateView, TxContext
from txtypes.balances import balance_of, move
from txtypes.base import Payload, TxFamily
from txtypes.contract_templates.base import STATUS_OPEN, Contract, ContractTemplate, Opening
from txtypes.contract_templates.registry import builtin_templates
from txtypes.governance import Name
from txtypes.tokens import require_active_class

FAMILY = "contracts"
PARAMS_KEY = b"contracts/params"
CONTRACT_PREFIX = b"contracts/c/"
DUE_PREFIX = b"contracts/due/"
CONTRACT_ID_CHARS = 32
DUE_SCAN_BATCH_MAX = 128

NameStr = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ContractIdStr = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class CreatePayload(Payload):
    template: NameStr
    class_id: Name
    terms: dict[str, Any]


class ActPayload(Payload):
    contract_id: ContractIdStr
    action: NameStr
    args: dict[str, Any] = {}


class StateReader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


def contract_key(contract_id: str) -> bytes:
    return CONTRACT_PREFIX + contract_id.encode()


def due_key(height: int, contract_id: str) -> bytes:
    return DUE_PREFIX + f"{height:020d}/{contract_id}".encode()


def require_lockable_class(state: StateView, class_id: str, height: int) -> None:
    """RuleError unless units of `class_id` may be locked and paid out to another party.

    Purpose-bound (non-transferable) classes are refused: paying them out of an escrow
    would be a transfer the tokens family forbids.
    """
    record = require_active_class(state, class_id, height)
    if not record["transferable"]:
        raise RuleError("not_transferable",
                        f"token class {class_id!r} is purpose-bound and cannot be paid to "
                        "another party through a contract")


def load_contract(state: StateReader, contract_id: str) -> Contract | None:
    raw = state.get(contract_key(contract_id))
    return None if raw is None else Contract.from_record(decode_stored(raw))


def contract_get(state: StateReader, contract_id: str) -> dict[str, Any] | None:
    """RPC `contract_get`: the contract's record as JSON-friendly data, or None."""
    contract = load_contract(state, contract_id)
    if contract is None:
        return None
    record = contract.to_record()
    record["escrow_account"] = contract.escrow_account
    record["held"] = contract.held
    return record


def _validation_reason(exc: ValidationError) -> str:
    """Field and pydantic error type only: receipts are hashed, pydantic's prose may change."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['type']}"
        for error in exc.errors(include_url=False)
    )


class ContractsFamily(TxFamily):
    family = FAMILY
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {
        "create": CreatePayload, "act": ActPayload,
    }

    def __init__(self, templates: Mapping[str, ContractTemplate] | None = None) -> None:
        self.templates: dict[str, ContractTemplate] = dict(
            templates if templates is not None else builtin_templates()
        )

    # -- genesis --------------------------------------------------------------------
    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        unknown_params = set(params) - {"templates"}
        if unknown_params:
            raise ValueError(f"contracts: unknown genesis parameters {sorted(unknown_params)}")
        names = params.get("templates", sorted(self.templates))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("contracts: genesis 'templates' must be a list of names")
        missing = sorted(set(names) - set(self.templates))
        if missing:
            raise ValueError(f"contracts: genesis enables unknown templates {missing} "
                             f"(available: {sorted(self.templates)})")
        state.put_obj(PARAMS_KEY, {"templates": sorted(set(names))})

    def _enabled(self, state: StateView) -> list[str]:
        params = state.get_obj(PARAMS_KEY)
        if params is None:
            return sorted(self.templates)
        names: list[str] = params["templates"]
        return names

    # -- create ---------------------------------------------------------------------
    def _prepare_create(
        self, ctx: TxContext, state: StateView
    ) -> tuple[CreatePayload, ContractTemplate, Opening]:
        payload = ctx.payload
        assert isinstance(payload, CreatePayload)
        if payload.template not in self.templates or payload.template not in self._enabled(state):
            raise RuleError("unknown_template",
                            f"no contract template {payload.template!r} on this chain "
                            f"(enabled: {', '.join(self._enabled(state))})")
        template = self.templates[payload.template]
        try:
            terms = template.terms_schema.model_validate(payload.terms)
        except ValidationError as exc:
            raise RuleError("invalid_terms", f"{payload.template} terms: "
                            f"{_validation_reason(exc)}") from None
        require_lockable_class(state, payload.class_id, ctx.block.height)
        opening = template.open(ctx, state, terms)
        if opening.deadline_height <= ctx.block.height:
            raise RuleError("deadline_not_in_future",
                            f"deadline height {opening.deadline_height} must be after the "
                            f"current height {ctx.block.height}")
        have = balance_of(state, payload.class_id, ctx.sender_address)
        if have < opening.lock_amount:
            raise RuleError("insufficient_funds",
                            f"{ctx.sender_address} holds {have} units of {payload.class_id}, "
                            f"the contract locks {opening.lock_amount}")
        return payload, template, opening

    def check_create(self, ctx: TxContext, state: StateView) -> None:
        self._prepare_create(ctx, state)

    def apply_create(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        payload, template, opening = self._prepare_create(ctx, state)
        contract_id = ctx.tx.hash.hex()[:CONTRACT_ID_CHARS]
        if state.get(contract_key(contract_id)) is not None:
            raise RuleError("contract_exists", f"contract {contract_id} already exists")
        contract = Contract(
            id=contract_id,
            template=template.name,
            creator=ctx.sender_address,
            class_id=payload.class_id,
            created_height=ctx.block.height,
            deadline_height=opening.deadline_height,
            locked_total=opening.lock_amount,
            data=opening.data,
        )
        move(state, payload.class_id, ctx.sender_address, contract.escrow_account,
             opening.lock_amount)
        state.put_obj(contract_key(contract_id), contract.to_record())
        state.put_obj(due_key(contract.deadline_height, contract_id), True)
        return {"contract_id": contract_id, "locked": opening.lock_amount,
                "deadline_height": contract.deadline_height}

    # -- act ------------------------------------------------------------------------
    def _prepare_act(
        self, ctx: TxContext, state: StateView
    ) -> tuple[ActPayload, ContractTemplate, Contract, BaseModel]:
        payload = ctx.payload
        assert isinstance(payload, ActPayload)
        contract = load_contract(state, payload.contract_id)
        if contract is None:
            raise RuleError("unknown_contract", f"no contract {payload.contract_id}")
        if contract.status != STATUS_OPEN:
            raise RuleError("contract_closed",
                            f"contract {contract.id} closed at height {contract.closed_height} "
                            f"({contract.outcome})")
        template = self.templates.get(contract.template)
        if template is None:
            raise RuleError("unknown_template",
                            f"contract template {contract.template!r} is not loaded")
        schema = template.action_schemas.get(payload.action)
        if schema is None:
            raise RuleError("unknown_action",
                            f"{contract.template} contracts have no action {payload.action!r} "
                            f"(actions: {', '.join(sorted(template.action_schemas))})")
        try:
            args = schema.model_validate(payload.args)
        except ValidationError as exc:
            raise RuleError("invalid_args", f"{payload.action} arguments: "
                            f"{_validation_reason(exc)}") from None
        template.check_action(ctx, state, contract, payload.action, args)
        return payload, template, contract, args

    def check_act(self, ctx: TxContext, state: StateView) -> None:
        self._prepare_act(ctx, state)

    def apply_act(self, ctx: TxContext, state: StateView) -> dict[str, Any]:
        payload, template, contract, args = self._prepare_act(ctx, state)
        result = template.apply_action(ctx, state, contract, payload.action, args)
        self._save(state, contract)
        return {"contract_id": contract.id, "status": contract.status, **result}

    def _save(self, state: StateView, contract: Contract) -> None:
        state.put_obj(contract_key(contract.id), contract.to_record())
        if contract.status != STATUS_OPEN:
            state.delete(due_key(contract.deadline_height, contract.id))

    # -- deadlines ------------------------------------------------------------------
    def end_block(self, block: BlockContext, state: StateView) -> None:
        """Settle every open contract whose deadline height is this block's (or earlier)."""
        batch = 1  # most blocks have nothing due: look at one entry, then widen
        while True:
            entries = state.scan(DUE_PREFIX, batch)
            due = [key for key, _ in entries if _due_height(key) <= block.height]
            for key in due:
                contract_id = key[len(DUE_PREFIX) + 21:].decode()
                contract = load_contract(state, contract_id)
                state.delete(key)
                if contract is None or contract.status != STATUS_OPEN:
                    continue
                self.templates[contract.template].on_deadline(state, contract, block.height)
                self._save(state, contract)
            if len(due) < batch:
                return
            batch = min(batch * 2, DUE_SCAN_BATCH_MAX)


def _due_height(key: bytes) -> int:
    return int(key[len(DUE_PREFIX):len(DUE_PREFIX) + 20])
