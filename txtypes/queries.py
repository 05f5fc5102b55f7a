"""The families' read methods, as one registry the node serves over JSON-RPC.

Each entry is `name -> (params model, query, doc)`: the node validates the params with the
strict model, then calls `query(reader, params, height)` with the committed state's reader
and the committed height, and returns the result (None means "not found"). The models
live here, not in rpc/, because txtypes/ must not import rpc/; they follow the same rules
as the node's own params (strict types, unknown fields refused, immutable), so the CLI and
other clients can build their arguments from them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ledger.overlay import KeyValueReader
from txtypes import contracts, credentials, energy, governance, identity, tokens

# Mirrors of the families' own patterns (txtypes/*.py payload schemas).
Address = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
Did = Annotated[str, StringConstraints(pattern=identity.DID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ClassId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
CredentialId = Annotated[str, StringConstraints(pattern=identity.CREDENTIAL_ID_PATTERN)]
ContractId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Zone = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
# A holder may be an address or a module's pseudo-account ("escrow:<id>", "market:<zone>/<n>").
Holder = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$|^[a-z]+:[A-Za-z0-9_./-]{1,96}$")]
SaltHex = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{2}){16,256}$")]
Height = Annotated[int, Field(ge=0, le=2**63 - 1)]
PROPOSAL_STATUSES = ("open", "executed", "failed", "expired")
PROPOSALS_LIMIT_MAX = 1000


class QueryParams(BaseModel):
    """Strict, closed, immutable: what a client sends is exactly what the query gets."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class IdentityGetParams(QueryParams):
    did: Did


class CredentialGetParams(QueryParams):
    credential_id: CredentialId


class CredentialVerifyParams(QueryParams):
    """`value` is typed (true, 1 and "1" differ); `at_height` defaults to the current one."""

    credential_id: CredentialId
    attribute: Name
    value: bool | int | Annotated[str, StringConstraints(max_length=1024)]
    salt: SaltHex
    at_height: Height | None = None


class TokenBalanceParams(QueryParams):
    class_id: ClassId
    holder: Holder


class TokenClassGetParams(QueryParams):
    class_id: ClassId


class MerchantGetParams(QueryParams):
    address: Address


class ContractGetParams(QueryParams):
    contract_id: ContractId


class EnergyMarketParams(QueryParams):
    """`interval` defaults to the interval the next block belongs to (the open market)."""

    zone: Zone
    interval: Annotated[int, Field(ge=0, le=2**62)] | None = None


class MeterGetParams(QueryParams):
    meter_id: Address


class GovernanceProposalsParams(QueryParams):
    status: Annotated[str, StringConstraints(pattern="^(" + "|".join(PROPOSAL_STATUSES) + ")$")] \
        | None = None
    limit: Annotated[int, Field(ge=1, le=PROPOSALS_LIMIT_MAX)] = 100


class GovernanceProposalGetParams(QueryParams):
    proposal_id: Annotated[int, Field(ge=0, le=2**63 - 1)]


class GovernanceRolesParams(QueryParams):
    role: Name


Query = Callable[[KeyValueReader, Any, int], Any]


def _identity_get(reader: KeyValueReader, p: IdentityGetParams, height: int) -> Any:
    return identity.identity_get(reader, p.did)


def _credential_get(reader: KeyValueReader, p: CredentialGetParams, height: int) -> Any:
    return identity.credential_get(reader, p.credential_id)


def _credential_verify(reader: KeyValueReader, p: CredentialVerifyParams, height: int) -> Any:
    at_height = height if p.at_height is None else p.at_height
    return credentials.credential_verify(reader, p.credential_id, p.attribute, p.value, p.salt,
                                         at_height)


def _token_balance(reader: KeyValueReader, p: TokenBalanceParams, height: int) -> Any:
    return tokens.token_balance(reader, p.class_id, p.holder)


def _token_class_get(reader: KeyValueReader, p: TokenClassGetParams, height: int) -> Any:
    return tokens.token_class_get(reader, p.class_id)


def _merchant_get(reader: KeyValueReader, p: MerchantGetParams, height: int) -> Any:
    merchant = tokens.merchant_get(reader, p.address)
    if merchant is None:
        return None
    return {**merchant, "owed_cents": tokens.merchant_owed_cents(reader, p.address)}


def _contract_get(reader: KeyValueReader, p: ContractGetParams, height: int) -> Any:
    return contracts.contract_get(reader, p.contract_id)


def _energy_market(reader: KeyValueReader, p: EnergyMarketParams, height: int) -> Any:
    interval = energy.interval_of(reader, height + 1) if p.interval is None else p.interval
    return energy.energy_market(reader, p.zone, interval)


def _meter_get(reader: KeyValueReader, p: MeterGetParams, height: int) -> Any:
    return energy.meter_get(reader, p.meter_id)


def _governance_proposals(reader: KeyValueReader, p: GovernanceProposalsParams,
                          height: int) -> Any:
    return governance.governance_proposals(reader, p.status, p.limit)


def _governance_proposal_get(reader: KeyValueReader, p: GovernanceProposalGetParams,
                             height: int) -> Any:
    return governance.governance_proposal_get(reader, p.proposal_id)


def _governance_roles(reader: KeyValueReader, p: GovernanceRolesParams, height: int) -> Any:
    return {"role": p.role, "holders": governance.governance_roles(reader, p.role)}


FAMILY_QUERIES: dict[str, tuple[type[BaseModel], Query, str]] = {
    "identity_get": (IdentityGetParams, _identity_get,
                     "A DID's record (key, controller, guardians, status) and the ids of "
                     "credentials issued about it."),
    "credential_get": (CredentialGetParams, _credential_get,
                       "A credential's record: issuer, subject, schema, commitments, expiry, "
                       "revocation."),
    "credential_verify": (CredentialVerifyParams, _credential_verify,
                          "Check a disclosed attribute (value + salt) against its on-chain "
                          "commitment, and the credential's validity at a height."),
    "token_balance": (TokenBalanceParams, _token_balance,
                      "Units of a token class held by an address or pseudo-account."),
    "token_class_get": (TokenClassGetParams, _token_class_get,
                        "A token class's definition and supply (issued, redeemed, burned, "
                        "outstanding)."),
    "merchant_get": (MerchantGetParams, _merchant_get,
                     "A registered merchant and the cents the treasury still owes it."),
    "contract_get": (ContractGetParams, _contract_get,
                     "A contract's record: template, parties, escrow held, status, outcome."),
    "energy_market": (EnergyMarketParams, _energy_market,
                      "A zone's market for an interval: every token class's offers, bids and "
                      "clearing result."),
    "meter_get": (MeterGetParams, _meter_get,
                  "A smart meter's record and its unsold certified surplus."),
    "governance_proposals": (GovernanceProposalsParams, _governance_proposals,
                             "Proposals in id order, optionally only those with a status."),
    "governance_proposal_get": (GovernanceProposalGetParams, _governance_proposal_get,
                                "One proposal with its approvals and status."),
    "governance_roles": (GovernanceRolesParams, _governance_roles,
                         "The accounts holding a role."),
}
