"""Governance: genesis roles, agency-approved proposals, expiry, parameters, validator sets."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.overlay import MemoryKV, Overlay
from ledger.rules import BlockContext, RuleError, TxContext
from ledger.tx import sign_tx
from tests.txtypes.conftest import CHAIN_ID, Cast, Chain, city_genesis, city_modules, key
from txtypes.governance import (
    OPEN_PROPOSALS_MAX,
    ApprovePayload,
    GovernanceFamily,
    governance_config,
    governance_proposal_get,
    governance_proposals,
    param_get,
    validators_pending,
)
from txtypes.roles import has_role, holders

NEWCOMER = key("new-issuer")


def grant(role: str, address: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "grant_role", "role": role, "address": address, **extra}


def validator(name: str, index: int) -> dict[str, Any]:
    return {"name": name, "public_key": key(name).public_key.hex(),
            "p2p_address": f"10.0.0.{index}:26601", "rpc_address": f"10.0.0.{index}:26701"}


def approve_all(chain: Chain, proposal_id: int, signers: list[Any]) -> list[dict[str, Any]]:
    return [chain.ok(s, "governance", "approve", {"proposal_id": proposal_id}) for s in signers]


# -- genesis ---------------------------------------------------------------------------------
def test_genesis_accepts_the_local_network_setup_params() -> None:
    from ledger.network_setup import default_module_params

    accounts = {f"agency-{i}": key(f"agency-{i}") for i in range(4)}
    (governance,) = [m for m in default_module_params(accounts) if m["name"] == "governance"]
    state = Overlay(MemoryKV())
    GovernanceFamily().init_genesis(state, governance["params"])
    assert sorted(holders(state, "agency")) == sorted(k.address for k in accounts.values())


def test_genesis_seeds_agencies_roles_and_quorum(chain: Chain) -> None:
    state = chain.state
    assert sorted(holders(state, "agency")) == sorted(k.address for k in Cast.agencies())
    assert has_role(state, Cast.treasury.address, "treasury")
    assert has_role(state, Cast.registry.address, "registrar")
    assert not has_role(state, Cast.citizen.address, "treasury")
    assert governance_config(state) == {"approval_quorum": 3, "proposal_ttl_blocks": 50}


@pytest.mark.parametrize(("params", "fragment"), [
    ({}, "agencies must be a list"),
    ({"agencies": [], "approval_quorum": 1}, "at least one agency"),
    ({"agencies": ["xyz"], "approval_quorum": 1}, "not a 40-hex address"),
    ({"agencies": ["a" * 40, "a" * 40], "approval_quorum": 1}, "twice"),
    ({"agencies": ["a" * 40], "approval_quorum": 2}, "approval_quorum"),
    ({"agencies": ["a" * 40], "approval_quorum": True}, "approval_quorum"),
    ({"agencies": ["a" * 40], "approval_quorum": 1, "roles": {"Bad Role": []}}, "role name"),
    ({"agencies": ["a" * 40], "approval_quorum": 1, "roles": {"treasury": "a" * 40}}, "list"),
    ({"agencies": ["a" * 40], "approval_quorum": 1, "proposal_ttl_blocks": 0}, "ttl"),
    ({"agencies": ["a" * 40], "approval_quorum": 1, "surprise": 1}, "unknown keys"),
    ({"agencies": ["a" * 40], "approval_quorum": 1, "roles": {"agency": ["b" * 40]}},
     "same accounts"),
])
def test_genesis_rejects_bad_params_with_a_reason(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        GovernanceFamily().init_genesis(Overlay(MemoryKV()), params)


# -- proposals and approvals -------------------------------------------------------------------
def test_role_grant_executes_when_the_quorum_of_agencies_approves(chain: Chain) -> None:
    result = chain.ok(Cast.registry, "governance", "propose", grant("issuer", NEWCOMER.address))
    proposal_id = result["proposal_id"]
    assert result["status"] == "open"
    first = chain.ok(Cast.utility, "governance", "approve", {"proposal_id": proposal_id})
    assert first["status"] == "open" and not has_role(chain.state, NEWCOMER.address, "issuer")
    second = chain.ok(Cast.social, "governance", "approve", {"proposal_id": proposal_id})
    assert second["status"] == "executed"
    assert has_role(chain.state, NEWCOMER.address, "issuer")
    record = governance_proposal_get(chain.state, proposal_id)
    assert record is not None and record["executed_height"] == chain.height
    assert record["approvals"] == sorted(
        k.address for k in (Cast.registry, Cast.utility, Cast.social))


def test_role_revoke_executes_and_removes_the_role(chain: Chain) -> None:
    proposal = {"kind": "revoke_role", "role": "registrar", "address": Cast.registry.address}
    proposal_id = chain.ok(Cast.treasury, "governance", "propose", proposal)["proposal_id"]
    approve_all(chain, proposal_id, [Cast.utility, Cast.social])
    assert not has_role(chain.state, Cast.registry.address, "registrar")


def test_quorum_of_one_executes_on_filing() -> None:
    chain = Chain(city_modules(), city_genesis(quorum=1))
    result = chain.ok(Cast.treasury, "governance", "propose", grant("auditor", NEWCOMER.address))
    assert result["status"] == "executed"
    assert has_role(chain.state, NEWCOMER.address, "auditor")


def test_non_agency_cannot_propose_or_approve(chain: Chain) -> None:
    chain.reject(Cast.citizen, "governance", "propose", grant("treasury", Cast.citizen.address),
                 code="not_agency")
    proposal_id = chain.ok(Cast.treasury, "governance", "propose",
                           grant("auditor", NEWCOMER.address))["proposal_id"]
    chain.reject(Cast.citizen, "governance", "approve", {"proposal_id": proposal_id},
                 code="not_agency")


def test_approving_twice_is_refused(chain: Chain) -> None:
    proposal_id = chain.ok(Cast.treasury, "governance", "propose",
                           grant("auditor", NEWCOMER.address))["proposal_id"]
    chain.reject(Cast.treasury, "governance", "approve", {"proposal_id": proposal_id},
                 code="already_approved")


def test_unknown_and_closed_proposals_are_refused(chain: Chain) -> None:
    chain.reject(Cast.treasury, "governance", "approve", {"proposal_id": 99},
                 code="unknown_proposal")
    proposal_id = chain.ok(Cast.treasury, "governance", "propose",
                           grant("auditor", NEWCOMER.address))["proposal_id"]
    approve_all(chain, proposal_id, [Cast.utility, Cast.social])
    chain.reject(Cast.registry, "governance", "approve", {"proposal_id": proposal_id},
                 code="proposal_closed")


def test_proposal_expires_at_the_end_of_its_expiry_height() -> None:
    chain = Chain(city_modules(), city_genesis(ttl_blocks=50))
    result = chain.ok(Cast.treasury, "governance", "propose",
                      grant("auditor", NEWCOMER.address, ttl_blocks=3))
    proposal_id, filed_at = result["proposal_id"], chain.height
    chain.advance_to(filed_at + 2)
    chain.ok(Cast.utility, "governance", "approve", {"proposal_id": proposal_id})  # height +3
    assert governance_proposal_get(chain.state, proposal_id)["status"] == "expired"
    chain.reject(Cast.social, "governance", "approve", {"proposal_id": proposal_id},
                 code="proposal_closed")
    assert not has_role(chain.state, NEWCOMER.address, "auditor")
    assert [p["id"] for p in governance_proposals(chain.state, status="expired")] == [proposal_id]


def test_approval_past_expiry_is_refused_even_before_the_expiry_sweep(chain: Chain) -> None:
    """Safety net when the bounded end-of-block sweep has not reached a proposal yet."""
    family = GovernanceFamily()
    result = chain.ok(Cast.treasury, "governance", "propose",
                      grant("auditor", NEWCOMER.address, ttl_blocks=2))
    expires = governance_proposal_get(chain.state, result["proposal_id"])["expires_at_height"]
    tx = sign_tx(Cast.utility, CHAIN_ID, "governance", "approve", 0,
                 {"proposal_id": result["proposal_id"]})
    ctx = TxContext(tx, ApprovePayload(proposal_id=result["proposal_id"]),
                    BlockContext(CHAIN_ID, expires + 1, 0, bytes(32)), 0)
    with pytest.raises(RuleError) as raised:
        family.check_approve(ctx, chain.state)
    assert raised.value.code == "proposal_expired"


def test_approvals_of_agencies_that_lost_the_role_do_not_count(chain: Chain) -> None:
    # Revoke the utility agency (it approves its own removal along with two others).
    revoke = {"kind": "revoke_role", "role": "agency", "address": Cast.utility.address}
    pending = chain.ok(Cast.utility, "governance", "propose",
                       grant("auditor", NEWCOMER.address))["proposal_id"]
    revoke_id = chain.ok(Cast.treasury, "governance", "propose", revoke)["proposal_id"]
    approve_all(chain, revoke_id, [Cast.registry, Cast.social])
    assert not has_role(chain.state, Cast.utility.address, "agency")
    # Utility's approval of `pending` is void now: two more make only two valid ones.
    approve_all(chain, pending, [Cast.treasury, Cast.registry])
    assert governance_proposal_get(chain.state, pending)["status"] == "open"
    approve_all(chain, pending, [Cast.social])
    assert governance_proposal_get(chain.state, pending)["status"] == "executed"


def test_revoking_agencies_below_the_quorum_is_refused() -> None:
    chain = Chain(city_modules(), city_genesis(quorum=4))
    revoke = {"kind": "revoke_role", "role": "agency", "address": Cast.social.address}
    chain.reject(Cast.treasury, "governance", "propose", revoke, code="quorum_unreachable")


def test_role_proposals_check_the_current_holders(chain: Chain) -> None:
    chain.reject(Cast.treasury, "governance", "propose", grant("treasury", Cast.treasury.address),
                 code="role_already_held")
    chain.reject(Cast.treasury, "governance", "propose",
                 {"kind": "revoke_role", "role": "treasury", "address": Cast.citizen.address},
                 code="role_not_held")
    chain.reject(Cast.treasury, "governance", "propose", {"kind": "grant_role", "role": "auditor"},
                 code="missing_field")


def test_proposal_that_became_moot_is_closed_as_failed_with_the_reason(chain: Chain) -> None:
    first = chain.ok(Cast.treasury, "governance", "propose", grant("auditor", NEWCOMER.address))
    second = chain.ok(Cast.registry, "governance", "propose", grant("auditor", NEWCOMER.address))
    approve_all(chain, first["proposal_id"], [Cast.utility, Cast.social])
    result = approve_all(chain, second["proposal_id"], [Cast.utility, Cast.social])[-1]
    assert result["status"] == "failed"
    record = governance_proposal_get(chain.state, second["proposal_id"])
    assert record["failure"]["code"] == "role_already_held"


def test_module_parameter_change_is_readable_by_modules(chain: Chain) -> None:
    change = {"kind": "set_param", "module": "energy", "name": "interval_blocks", "value": 20}
    proposal_id = chain.ok(Cast.utility, "governance", "propose", change)["proposal_id"]
    assert param_get(chain.state, "energy", "interval_blocks", 10) == 10
    approve_all(chain, proposal_id, [Cast.treasury, Cast.social])
    assert param_get(chain.state, "energy", "interval_blocks", 10) == 20


def test_governance_own_parameters_are_validated_and_applied(chain: Chain) -> None:
    too_big = {"kind": "set_param", "module": "governance", "name": "approval_quorum", "value": 5}
    chain.reject(Cast.treasury, "governance", "propose", too_big, code="invalid_value")
    unknown = {"kind": "set_param", "module": "governance", "name": "color", "value": "red"}
    chain.reject(Cast.treasury, "governance", "propose", unknown, code="unknown_param")
    huge = {"kind": "set_param", "module": "energy", "name": "x", "value": 2**63}
    chain.reject(Cast.treasury, "governance", "propose", huge, code="invalid_value")
    lower = {"kind": "set_param", "module": "governance", "name": "approval_quorum", "value": 2}
    proposal_id = chain.ok(Cast.treasury, "governance", "propose", lower)["proposal_id"]
    approve_all(chain, proposal_id, [Cast.utility, Cast.social])
    assert governance_config(chain.state)["approval_quorum"] == 2
    # Two approvals now suffice.
    next_id = chain.ok(Cast.treasury, "governance", "propose",
                       grant("auditor", NEWCOMER.address))["proposal_id"]
    assert approve_all(chain, next_id, [Cast.social])[-1]["status"] == "executed"


def test_validator_set_change_is_recorded_as_pending_for_the_next_checkpoint(chain: Chain) -> None:
    new_set = [validator(f"v{i}", i) for i in range(5)]
    proposal_id = chain.ok(Cast.treasury, "governance", "propose",
                           {"kind": "set_validators", "validators": new_set})["proposal_id"]
    assert validators_pending(chain.state) is None
    approve_all(chain, proposal_id, [Cast.utility, Cast.social])
    pending = validators_pending(chain.state)
    assert pending == {"change_id": 1, "proposal_id": proposal_id, "validators": new_set,
                       "approved_height": chain.height, "activation": "next_checkpoint_boundary"}
    second_id = chain.ok(Cast.treasury, "governance", "propose",
                         {"kind": "set_validators", "validators": new_set[:4]})["proposal_id"]
    approve_all(chain, second_id, [Cast.utility, Cast.social])
    assert validators_pending(chain.state)["change_id"] == 2


def test_validator_set_must_be_non_empty_and_without_duplicates(chain: Chain) -> None:
    chain.reject(Cast.treasury, "governance", "propose",
                 {"kind": "set_validators", "validators": []}, code="invalid_validators")
    twice = [validator("v1", 1), {**validator("v1", 1), "name": "other"}]
    chain.reject(Cast.treasury, "governance", "propose",
                 {"kind": "set_validators", "validators": twice}, code="invalid_validators")
    bad_key = [{**validator("v1", 1), "public_key": "zz"}]
    chain.reject(Cast.treasury, "governance", "propose",
                 {"kind": "set_validators", "validators": bad_key}, code="invalid_payload")
    # Anything genesis.json would refuse for a validator cannot become the set either.
    for bad in ({"name": "Road Works"}, {"p2p_address": "10.0.0.1:26601"}):
        entries = [validator("v1", 1), {**validator("v2", 2), **bad}]
        chain.reject(Cast.treasury, "governance", "propose",
                     {"kind": "set_validators", "validators": entries}, code="invalid_validators")


def test_open_proposals_are_capped() -> None:
    chain = Chain(city_modules(), city_genesis(ttl_blocks=1000))
    txs = [chain.sign(Cast.treasury, "governance", "propose",
                      grant("auditor", key(f"a{i}").address)) for i in range(OPEN_PROPOSALS_MAX)]
    assert all(r.ok for r in chain.block(*txs))
    chain.reject(Cast.treasury, "governance", "propose", grant("auditor", NEWCOMER.address),
                 code="too_many_open_proposals")
    assert len(governance_proposals(chain.state, status="open", limit=1000)) == OPEN_PROPOSALS_MAX


def test_malformed_payload_and_replayed_nonce_are_rejected_by_the_executor(chain: Chain) -> None:
    chain.reject(Cast.treasury, "governance", "propose", {"kind": "abolish_city"},
                 code="invalid_payload")
    tx = chain.sign(Cast.treasury, "governance", "propose", grant("auditor", NEWCOMER.address))
    (first,) = chain.block(tx)
    assert first.ok
    (replayed,) = chain.block(tx)
    assert replayed.code == "bad_nonce"
    assert len(governance_proposals(chain.state)) == 1
