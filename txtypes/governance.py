"""Governance: who may do what, changed only by a quorum of agencies.

Roles (treasury, issuer, registrar, utility, auditor, agency…) are held by accounts
(txtypes/roles.py stores them). Genesis seeds the first holders, the agency accounts and
the approval quorum. After that every change is a proposal — grant or revoke a role, set a
rule-module parameter, replace the validator set — that an agency files and that executes
in the same transaction as the approval that brings it to the quorum. A proposal not
approved by the end of its expiry height expires.

A validator-set change cannot take effect inside a block: consensus switches sets only at
a checkpoint boundary. So an executed `set_validators` proposal is written to
b"governance/validators/pending"; the node reads it after each block and hands it to
consensus, which activates it at the first checkpoint boundary after `approved_height`.
`change_id` grows by one per approved change, so the node can tell a new one from one it
has already handed over.

State layout (values canonical msgpack):
    governance/role/<role>/<address>        -> true                 (txtypes/roles.py)
    governance/config                        -> {"approval_quorum", "proposal_ttl_blocks"}
    governance/next_proposal_id              -> int
    governance/open_count                    -> int (open proposals, capped)
    governance/proposal/<id:016d>            -> proposal record (see `_new_proposal`)
    governance/expiry/<height:016d>/<id:016d> -> true (open proposals by expiry height)
    governance/param/<module>/<name>         -> int | str | bool
    governance/validators/pending            -> {"change_id", "proposal_id", "validators",
                                                 "approved_height", "activation"}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, StringConstraints

from ledger.codec import decode_stored
from ledger.epochs import EpochError, parse_validator_set
from ledger.overlay import KeyValueReader
from ledger.rules import BlockContext, RuleError, StateView, TxContext
from txtypes.base import Payload, TxFamily
from txtypes.roles import ROLE_PREFIX, grant_role, revoke_role, role_key

# -- shared field types (identity and tokens use them too) ----------------------------------
ADDRESS_PATTERN = r"^[0-9a-f]{40}$"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
PUBLIC_KEY_HEX_PATTERN = r"^[0-9a-f]{64}$"
Address = Annotated[str, StringConstraints(pattern=ADDRESS_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
PublicKeyHex = Annotated[str, StringConstraints(pattern=PUBLIC_KEY_HEX_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Endpoint = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")]
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

ROLE_AGENCY = "agency"
# Roles the shipped families check; governance accepts any role name matching NAME_PATTERN.
WELL_KNOWN_ROLES = ("agency", "treasury", "issuer", "registrar", "utility", "auditor")

CONFIG_KEY = b"governance/config"
NEXT_PROPOSAL_ID_KEY = b"governance/next_proposal_id"
OPEN_COUNT_KEY = b"governance/open_count"
PROPOSAL_PREFIX = b"governance/proposal/"
EXPIRY_PREFIX = b"governance/expiry/"
PARAM_PREFIX = b"governance/param/"
VALIDATORS_PENDING_KEY = b"governance/validators/pending"
ACTIVATION_RULE = "next_checkpoint_boundary"

PROPOSAL_TTL_BLOCKS_DEFAULT = 1000
PROPOSAL_TTL_BLOCKS_MAX = 1_000_000
OPEN_PROPOSALS_MAX = 256
VALIDATORS_MAX = 64
EXPIRIES_PER_BLOCK_MAX = 64  # bounded end-of-block work; the rest expire next block
PROPOSALS_SCAN_MAX = 10_000
PARAM_STR_CHARS_MAX = 256
GENESIS_KEYS = frozenset({"roles", "agencies", "approval_quorum", "proposal_ttl_blocks"})


# -- payloads -------------------------------------------------------------------------------
class ValidatorEntry(Payload):
    """One validator of a proposed set, shaped like a genesis.json validator entry."""

    name: Label
    public_key: PublicKeyHex
    p2p_address: Endpoint
    rpc_address: Endpoint


ProposalKind = Literal["grant_role", "revoke_role", "set_param", "set_validators"]


class ProposePayload(Payload):
    """File a proposal. Which fields are required depends on `kind`:
    grant_role/revoke_role: role, address; set_param: module, name, value;
    set_validators: validators."""

    kind: ProposalKind
    role: Name | None = None
    address: Address | None = None
    module: Name | None = None
    name: Name | None = None
    value: bool | int | str | None = None
    validators: list[ValidatorEntry] | None = Field(default=None, max_length=VALIDATORS_MAX)
    ttl_blocks: int | None = Field(default=None, ge=1, le=PROPOSAL_TTL_BLOCKS_MAX)
    note: str = Field(default="", max_length=280)


class ApprovePayload(Payload):
    proposal_id: int = Field(ge=1)


# -- pure queries ---------------------------------------------------------------------------
# Queries take any key-value reader (get + scan): a rule's StateView, or the committed
# state's reader when the RPC answers a read method.
ROLE_LIST_MAX = 1000


def read_obj(state: KeyValueReader, key: bytes) -> Any | None:
    """The canonically decoded value at `key`, or None."""
    raw = state.get(key)
    return None if raw is None else decode_stored(raw)


def holds_role(state: KeyValueReader, address: str, role: str) -> bool:
    return state.get(role_key(role, address)) is not None


def role_holders(state: KeyValueReader, role: str) -> list[str]:
    prefix = ROLE_PREFIX + role.encode() + b"/"
    return [key[len(prefix):].decode() for key, _ in state.scan(prefix, ROLE_LIST_MAX)]


def proposal_key(proposal_id: int) -> bytes:
    return PROPOSAL_PREFIX + f"{proposal_id:016d}".encode()


def _expiry_key(height: int, proposal_id: int) -> bytes:
    return EXPIRY_PREFIX + f"{height:016d}/{proposal_id:016d}".encode()


def param_key(module: str, name: str) -> bytes:
    return PARAM_PREFIX + module.encode() + b"/" + name.encode()


def governance_config(state: KeyValueReader) -> dict[str, int]:
    config = read_obj(state, CONFIG_KEY)
    if not isinstance(config, dict):
        return {"approval_quorum": 1, "proposal_ttl_blocks": PROPOSAL_TTL_BLOCKS_DEFAULT}
    return {"approval_quorum": int(config["approval_quorum"]),
            "proposal_ttl_blocks": int(config["proposal_ttl_blocks"])}


def param_get(state: KeyValueReader, module: str, name: str, default: Any = None) -> Any:
    """A rule-module parameter set by governance, or `default` if never set."""
    value = read_obj(state, param_key(module, name))
    return default if value is None else value


def agencies(state: KeyValueReader) -> list[str]:
    return role_holders(state, ROLE_AGENCY)


def governance_proposal_get(state: KeyValueReader, proposal_id: int) -> dict[str, Any] | None:
    record = read_obj(state, proposal_key(proposal_id))
    return dict(record) if isinstance(record, dict) else None


def governance_proposals(
    state: KeyValueReader, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Proposals in id order, optionally only those with `status`
    ("open", "executed", "failed", "expired")."""
    out: list[dict[str, Any]] = []
    for _, raw in state.scan(PROPOSAL_PREFIX, PROPOSALS_SCAN_MAX):
        record = decode_stored(raw)
        if status is None or record.get("status") == status:
            out.append(record)
            if len(out) >= limit:
                break
    return out


def governance_roles(state: KeyValueReader, role: str) -> list[str]:
    return role_holders(state, role)


def validators_pending(state: KeyValueReader) -> dict[str, Any] | None:
    """The approved validator-set change the node must hand to consensus, if any."""
    record = read_obj(state, VALIDATORS_PENDING_KEY)
    return dict(record) if isinstance(record, dict) else None


# -- validation shared by propose and execute ------------------------------------------------
def _require_agency(state: StateView, address: str) -> None:
    if not holds_role(state, address, ROLE_AGENCY):
        raise RuleError("not_agency", f"account {address} is not an agency account")


def _require(field: str, value: Any, kind: str) -> None:
    if value is None:
        raise RuleError("missing_field", f"a {kind} proposal needs {field!r}")


def _validate_action(state: StateView, action: Mapping[str, Any]) -> None:
    """RuleError if the action cannot be carried out against the current state."""
    kind = action["kind"]
    if kind in ("grant_role", "revoke_role"):
        _require("role", action.get("role"), kind)
        _require("address", action.get("address"), kind)
        role, address = action["role"], action["address"]
        held = holds_role(state, address, role)
        if kind == "grant_role" and held:
            raise RuleError("role_already_held", f"{address} already holds {role!r}")
        if kind == "revoke_role" and not held:
            raise RuleError("role_not_held", f"{address} does not hold {role!r}")
        if kind == "revoke_role" and role == ROLE_AGENCY:
            remaining = len(agencies(state)) - 1
            quorum = governance_config(state)["approval_quorum"]
            if remaining < quorum:
                raise RuleError(
                    "quorum_unreachable",
                    f"revoking leaves {remaining} agencies, fewer than the quorum {quorum}",
                )
    elif kind == "set_param":
        for field in ("module", "name", "value"):
            _require(field, action.get(field), kind)
        _validate_param(state, action["module"], action["name"], action["value"])
    elif kind == "set_validators":
        validators = action.get("validators")
        _require("validators", validators, kind)
        assert validators is not None
        if not validators:
            raise RuleError("invalid_validators", "a validator set needs at least one validator")
        keys = [entry["public_key"] for entry in validators]
        if len(set(keys)) != len(keys):
            raise RuleError("invalid_validators", "a validator public key appears twice")
        try:  # the same rules the node applies when the set takes over (ledger/epochs.py)
            parse_validator_set(validators)
        except EpochError as exc:
            raise RuleError("invalid_validators", exc.reason) from exc


def _validate_param(state: StateView, module: str, name: str, value: Any) -> None:
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise RuleError("invalid_value", f"{value} is outside the 64-bit integer range")
    if isinstance(value, str) and len(value) > PARAM_STR_CHARS_MAX:
        raise RuleError("invalid_value", f"string values are limited to {PARAM_STR_CHARS_MAX} chars")
    if module != GovernanceFamily.family:
        return
    if name == "approval_quorum":
        count = len(agencies(state))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= count:
            raise RuleError("invalid_value", f"approval_quorum must be an integer in 1..{count}")
    elif name == "proposal_ttl_blocks":
        if (isinstance(value, bool) or not isinstance(value, int)
                or not 1 <= value <= PROPOSAL_TTL_BLOCKS_MAX):
            raise RuleError("invalid_value",
                            f"proposal_ttl_blocks must be an integer in 1..{PROPOSAL_TTL_BLOCKS_MAX}")
    else:
        raise RuleError("unknown_param", f"governance has no parameter {name!r}")


def _carry_out(state: StateView, proposal: dict[str, Any], height: int) -> None:
    action = proposal["action"]
    kind = action["kind"]
    if kind == "grant_role":
        grant_role(state, action["address"], action["role"])
    elif kind == "revoke_role":
        revoke_role(state, action["address"], action["role"])
    elif kind == "set_param":
        if action["module"] == GovernanceFamily.family:
            config = governance_config(state)
            config[action["name"]] = action["value"]
            state.put_obj(CONFIG_KEY, config)
        else:
            state.put_obj(param_key(action["module"], action["name"]), action["value"])
    elif kind == "set_validators":
        previous = validators_pending(state)
        change_id = 1 if previous is None else int(previous["change_id"]) + 1
        state.put_obj(VALIDATORS_PENDING_KEY, {
            "change_id": change_id,
            "proposal_id": proposal["id"],
            "validators": action["validators"],
            "approved_height": height,
            "activation": ACTIVATION_RULE,
        })


def _close(state: StateView, proposal: dict[str, Any], status: str) -> None:
    proposal["status"] = status
    state.put_obj(proposal_key(proposal["id"]), proposal)
    state.delete(_expiry_key(proposal["expires_at_height"], proposal["id"]))
    open_count = int(read_obj(state, OPEN_COUNT_KEY) or 0)
    state.put_obj(OPEN_COUNT_KEY, max(0, open_count - 1))


def _tally_and_maybe_execute(state: StateView, proposal: dict[str, Any], height: int) -> None:
    """Count approvals from current agencies; at the quorum, execute (or fail) the action."""
    current = sum(1 for address in proposal["approvals"] if holds_role(state, address, ROLE_AGENCY))
    if current < governance_config(state)["approval_quorum"]:
        state.put_obj(proposal_key(proposal["id"]), proposal)
        return
    try:
        _validate_action(state, proposal["action"])
    except RuleError as exc:
        # The world changed since filing (e.g. the role was granted meanwhile): record why.
        proposal["failure"] = {"code": exc.code, "reason": exc.reason}
        proposal["closed_height"] = height
        _close(state, proposal, "failed")
        return
    _carry_out(state, proposal, height)
    proposal["executed_height"] = height
    proposal["closed_height"] = height
    _close(state, proposal, "executed")


def _action_of(payload: ProposePayload) -> dict[str, Any]:
    action: dict[str, Any] = {"kind": payload.kind}
    if payload.kind in ("grant_role", "revoke_role"):
        action.update(role=payload.role, address=payload.address)
    elif payload.kind == "set_param":
        action.update(module=payload.module, name=payload.name, value=payload.value)
    else:
        action["validators"] = (
            None if payload.validators is None
            else [entry.model_dump() for entry in payload.validators]
        )
    return action


def _load_open(state: StateView, proposal_id: int, height: int) -> dict[str, Any]:
    proposal = governance_proposal_get(state, proposal_id)
    if proposal is None:
        raise RuleError("unknown_proposal", f"no proposal {proposal_id}")
    if proposal["status"] != "open":
        raise RuleError("proposal_closed", f"proposal {proposal_id} is {proposal['status']}")
    if height > proposal["expires_at_height"]:
        raise RuleError("proposal_expired",
                        f"proposal {proposal_id} expired at height {proposal['expires_at_height']}")
    return proposal


def _validate_genesis(params: Mapping[str, Any]) -> tuple[dict[str, list[str]], list[str], int, int]:
    unknown = set(params) - GENESIS_KEYS
    if unknown:
        raise ValueError(f"governance genesis has unknown keys {sorted(unknown)}")
    address_re, name_re = re.compile(ADDRESS_PATTERN), re.compile(NAME_PATTERN)

    def addresses(value: Any, where: str) -> list[str]:
        if not isinstance(value, list):
            raise ValueError(f"governance genesis {where} must be a list of addresses")
        for item in value:
            if not isinstance(item, str) or not address_re.match(item):
                raise ValueError(f"governance genesis {where}: {item!r} is not a 40-hex address")
        if len(set(value)) != len(value):
            raise ValueError(f"governance genesis {where} lists an address twice")
        return list(value)

    agency_list = addresses(params.get("agencies"), "agencies")
    if not agency_list:
        raise ValueError("governance genesis needs at least one agency")
    roles = params.get("roles", {})
    if not isinstance(roles, Mapping):
        raise ValueError("governance genesis roles must map role name -> list of addresses")
    role_map: dict[str, list[str]] = {}
    for role, members in roles.items():
        if not isinstance(role, str) or not name_re.match(role):
            raise ValueError(f"governance genesis role name {role!r} must match {NAME_PATTERN}")
        role_map[role] = addresses(members, f"roles.{role}")
    if ROLE_AGENCY in role_map and sorted(role_map[ROLE_AGENCY]) != sorted(agency_list):
        raise ValueError("governance genesis roles.agency, when given, must list the same "
                         "accounts as agencies")
    quorum = params.get("approval_quorum")
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= len(agency_list):
        raise ValueError(f"governance genesis approval_quorum must be an integer in 1..{len(agency_list)}")
    ttl = params.get("proposal_ttl_blocks", PROPOSAL_TTL_BLOCKS_DEFAULT)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= PROPOSAL_TTL_BLOCKS_MAX:
        raise ValueError(f"governance genesis proposal_ttl_blocks must be in 1..{PROPOSAL_TTL_BLOCKS_MAX}")
    return role_map, agency_list, quorum, ttl


class GovernanceFamily(TxFamily):
    family: ClassVar[str] = "governance"
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {
        "propose": ProposePayload,
        "approve": ApprovePayload,
    }

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        role_map, agency_list, quorum, ttl = _validate_genesis(params)
        for address in agency_list:
            grant_role(state, address, ROLE_AGENCY)
        for role, members in role_map.items():
            for address in members:
                grant_role(state, address, role)
        state.put_obj(CONFIG_KEY, {"approval_quorum": quorum, "proposal_ttl_blocks": ttl})
        state.put_obj(NEXT_PROPOSAL_ID_KEY, 1)
        state.put_obj(OPEN_COUNT_KEY, 0)

    # -- propose --------------------------------------------------------------------------
    def check_propose(self, ctx: TxContext, state: StateView) -> None:
        payload = ctx.payload
        assert isinstance(payload, ProposePayload)
        _require_agency(state, ctx.sender_address)
        if int(read_obj(state, OPEN_COUNT_KEY) or 0) >= OPEN_PROPOSALS_MAX:
            raise RuleError("too_many_open_proposals",
                            f"{OPEN_PROPOSALS_MAX} proposals are open; approve or let some expire")
        _validate_action(state, _action_of(payload))

    def apply_propose(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        payload = ctx.payload
        assert isinstance(payload, ProposePayload)
        height = ctx.block.height
        proposal_id = int(read_obj(state, NEXT_PROPOSAL_ID_KEY) or 1)
        ttl = payload.ttl_blocks or governance_config(state)["proposal_ttl_blocks"]
        proposal: dict[str, Any] = {
            "id": proposal_id,
            "proposer": ctx.sender_address,
            "action": _action_of(payload),
            "note": payload.note,
            "created_height": height,
            "expires_at_height": height + ttl,
            "approvals": [ctx.sender_address],  # filing counts as the proposer's approval
            "status": "open",
        }
        state.put_obj(NEXT_PROPOSAL_ID_KEY, proposal_id + 1)
        state.put_obj(OPEN_COUNT_KEY, int(read_obj(state, OPEN_COUNT_KEY) or 0) + 1)
        state.put_obj(_expiry_key(proposal["expires_at_height"], proposal_id), True)
        _tally_and_maybe_execute(state, proposal, height)
        return {"proposal_id": proposal_id, "status": proposal["status"]}

    # -- approve --------------------------------------------------------------------------
    def check_approve(self, ctx: TxContext, state: StateView) -> None:
        payload = ctx.payload
        assert isinstance(payload, ApprovePayload)
        _require_agency(state, ctx.sender_address)
        proposal = _load_open(state, payload.proposal_id, ctx.block.height)
        if ctx.sender_address in proposal["approvals"]:
            raise RuleError("already_approved",
                            f"{ctx.sender_address} already approved proposal {payload.proposal_id}")

    def apply_approve(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        payload = ctx.payload
        assert isinstance(payload, ApprovePayload)
        proposal = _load_open(state, payload.proposal_id, ctx.block.height)
        proposal["approvals"] = sorted({*proposal["approvals"], ctx.sender_address})
        _tally_and_maybe_execute(state, proposal, ctx.block.height)
        return {"proposal_id": payload.proposal_id, "status": proposal["status"],
                "approvals": len(proposal["approvals"])}

    # -- expiry ---------------------------------------------------------------------------
    def end_block(self, block: BlockContext, state: StateView) -> None:
        """Expire open proposals whose expiry height has been reached (oldest first)."""
        for key, _ in state.scan(EXPIRY_PREFIX, EXPIRIES_PER_BLOCK_MAX):
            height_text, id_text = key[len(EXPIRY_PREFIX):].decode().split("/")
            if int(height_text) > block.height:
                break
            proposal = governance_proposal_get(state, int(id_text))
            if proposal is None or proposal["status"] != "open":
                state.delete(key)
                continue
            proposal["closed_height"] = block.height
            _close(state, proposal, "expired")
