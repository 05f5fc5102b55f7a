"""Identity: DIDs bound to keys, rotation, guardians and recovery, credentials and disclosure."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.crypto import KeyPair
from ledger.overlay import MemoryKV, Overlay
from tests.txtypes.conftest import CHAIN_ID, Cast, Chain, city_genesis, city_modules, key
from txtypes.credentials import (
    attribute_commitment,
    commit_attributes,
    credential_status,
    credential_verify,
    verify_disclosure,
)
from txtypes.identity import (
    IdentityFamily,
    did_controller_address,
    did_for_address,
    did_of_controller,
    identity_get,
    key_binding_message,
)

ANA_DID = did_for_address(Cast.citizen.address)
SALTS = {"resident": b"r" * 16, "district": b"d" * 16}


def binding(did: str, new_key: KeyPair, chain_id: str = CHAIN_ID) -> dict[str, str]:
    return {"did": did, "new_public_key": new_key.public_key.hex(),
            "new_key_signature": new_key.sign(
                key_binding_message(chain_id, did, new_key.public_key.hex())).hex()}


def residency(credential_id: str = "res-1", did: str = ANA_DID, expiry: int = 500) -> dict[str, Any]:
    commitments, _ = commit_attributes({"resident": True, "district": "mapo"}, SALTS)
    return {"credential_id": credential_id, "subject_did": did, "schema_name": "residency",
            "commitments": commitments, "expiry_height": expiry}


@pytest.fixture
def registered(chain: Chain) -> Chain:
    chain.ok(Cast.citizen, "identity", "register", {})
    return chain


# -- register ---------------------------------------------------------------------------------
def test_key_holder_registers_their_own_did(chain: Chain) -> None:
    assert chain.ok(Cast.citizen, "identity", "register", {}) == {"did": ANA_DID}
    record = identity_get(chain.state, ANA_DID)
    assert record is not None
    assert record["public_key"] == Cast.citizen.public_key.hex()
    assert record["controller"] == Cast.citizen.address
    assert record["status"] == "active" and record["credentials"] == []
    assert did_of_controller(chain.state, Cast.citizen.address) == ANA_DID
    assert identity_get(chain.state, "did:city:nothing") is None


def test_registering_twice_is_refused(registered: Chain) -> None:
    registered.reject(Cast.citizen, "identity", "register", {}, code="did_exists")
    registered.reject(Cast.citizen, "identity", "register", {"did": ANA_DID},
                      code="invalid_payload")


# -- rotate_key ---------------------------------------------------------------------------------
def test_current_key_rotates_to_a_new_key(registered: Chain) -> None:
    new = key("ana-new-phone")
    result = registered.ok(Cast.citizen, "identity", "rotate_key", binding(ANA_DID, new))
    assert result["controller"] == new.address and result["key_version"] == 2
    assert did_controller_address(registered.state, ANA_DID) == new.address
    assert did_of_controller(registered.state, Cast.citizen.address) is None
    # The old key has lost control; the new one has it.
    registered.reject(Cast.citizen, "identity", "rotate_key", binding(ANA_DID, key("x")),
                      code="not_controller")
    registered.ok(new, "identity", "rotate_key", binding(ANA_DID, key("ana-third")))


def test_rotation_rejections(registered: Chain) -> None:
    new = key("ana-new-phone")
    registered.reject(Cast.outsider, "identity", "rotate_key", binding(ANA_DID, new),
                      code="not_controller")
    registered.reject(Cast.citizen, "identity", "rotate_key",
                      binding(did_for_address(Cast.outsider.address), new), code="unknown_did")
    forged = {**binding(ANA_DID, new), "new_key_signature": key("mallory").sign(b"x").hex()}
    registered.reject(Cast.citizen, "identity", "rotate_key", forged, code="bad_key_proof")
    other_chain = binding(ANA_DID, new, chain_id="other-city")
    registered.reject(Cast.citizen, "identity", "rotate_key", other_chain, code="bad_key_proof")
    registered.ok(Cast.citizen2, "identity", "register", {})
    registered.reject(Cast.citizen, "identity", "rotate_key", binding(ANA_DID, Cast.citizen2),
                      code="key_in_use")
    registered.reject(Cast.citizen, "identity", "rotate_key",
                      {**binding(ANA_DID, new), "new_public_key": "abc"}, code="invalid_payload")


# -- guardians and recovery ------------------------------------------------------------------------
def test_agency_guardian_recovers_a_lost_key(registered: Chain) -> None:
    registered.ok(Cast.citizen, "identity", "add_guardian",
                  {"did": ANA_DID, "guardian": Cast.social.address})
    assert identity_get(registered.state, ANA_DID)["guardians"] == [Cast.social.address]
    new = key("ana-kiosk-key")
    result = registered.ok(Cast.social, "identity", "recover", binding(ANA_DID, new))
    assert result["controller"] == new.address
    record = identity_get(registered.state, ANA_DID)
    assert record["last_recovery"]["guardian"] == Cast.social.address
    registered.reject(Cast.citizen, "identity", "deactivate", {"did": ANA_DID},
                      code="not_controller")


def test_guardian_rejections(registered: Chain) -> None:
    add = {"did": ANA_DID, "guardian": Cast.social.address}
    registered.reject(Cast.citizen, "identity", "add_guardian",
                      {**add, "guardian": Cast.citizen2.address}, code="guardian_not_agency")
    registered.reject(Cast.outsider, "identity", "add_guardian", add, code="not_controller")
    registered.ok(Cast.citizen, "identity", "add_guardian", add)
    registered.reject(Cast.citizen, "identity", "add_guardian", add, code="guardian_exists")
    registered.reject(Cast.treasury, "identity", "recover", binding(ANA_DID, key("n")),
                      code="not_guardian")
    registered.reject(Cast.citizen, "identity", "remove_guardian",
                      {**add, "guardian": Cast.treasury.address}, code="not_guardian")
    registered.ok(Cast.citizen, "identity", "remove_guardian", add)
    registered.reject(Cast.social, "identity", "recover", binding(ANA_DID, key("n")),
                      code="not_guardian")


def test_guardian_that_lost_the_agency_role_cannot_recover() -> None:
    chain = Chain(city_modules(), city_genesis(quorum=1))
    chain.ok(Cast.citizen, "identity", "register", {})
    chain.ok(Cast.citizen, "identity", "add_guardian",
             {"did": ANA_DID, "guardian": Cast.social.address})
    chain.ok(Cast.treasury, "governance", "propose",
             {"kind": "revoke_role", "role": "agency", "address": Cast.social.address})
    chain.reject(Cast.social, "identity", "recover", binding(ANA_DID, key("n")),
                 code="guardian_not_agency")


def test_a_did_has_a_bounded_number_of_guardians() -> None:
    agencies = [key(f"agency-{i}") for i in range(6)]
    genesis = city_genesis()
    genesis["governance"]["agencies"] += [a.address for a in agencies]
    chain = Chain(city_modules(), genesis)
    chain.ok(Cast.citizen, "identity", "register", {})
    for agency in agencies[:5]:
        chain.ok(Cast.citizen, "identity", "add_guardian", {"did": ANA_DID, "guardian": agency.address})
    chain.reject(Cast.citizen, "identity", "add_guardian",
                 {"did": ANA_DID, "guardian": agencies[5].address}, code="too_many_guardians")


# -- deactivate ---------------------------------------------------------------------------------
def test_deactivated_did_can_no_longer_act_or_receive_credentials(registered: Chain) -> None:
    registered.ok(Cast.registry, "identity", "issue_credential", residency())
    registered.reject(Cast.outsider, "identity", "deactivate", {"did": ANA_DID},
                      code="not_controller")
    registered.ok(Cast.citizen, "identity", "deactivate", {"did": ANA_DID})
    assert identity_get(registered.state, ANA_DID)["status"] == "deactivated"
    assert did_controller_address(registered.state, ANA_DID) is None
    registered.reject(Cast.citizen, "identity", "deactivate", {"did": ANA_DID},
                      code="did_deactivated")
    registered.reject(Cast.registry, "identity", "issue_credential", residency("res-2"),
                      code="did_deactivated")
    status = credential_status(registered.state, "res-1", registered.height)
    assert not status.valid and "not active" in status.reason
    registered.reject(Cast.citizen, "identity", "register", {}, code="did_exists")


# -- credentials ----------------------------------------------------------------------------------
def test_issuer_issues_a_credential_and_a_disclosure_verifies(registered: Chain) -> None:
    registered.ok(Cast.registry, "identity", "issue_credential", residency())
    assert identity_get(registered.state, ANA_DID)["credentials"] == ["res-1"]
    at = registered.height
    good = verify_disclosure(registered.state, "res-1", "district", "mapo", SALTS["district"], at)
    assert good.valid and good.reason == "valid"
    answer = credential_verify(registered.state, "res-1", "resident", True,
                               SALTS["resident"].hex(), at)
    assert answer["valid"] and answer["issuer"] == Cast.registry.address
    assert answer["schema"] == "residency"


@pytest.mark.parametrize(("attribute", "value", "salt", "fragment"), [
    ("district", "gangnam", SALTS["district"], "does not match"),
    ("district", "mapo", b"x" * 16, "does not match"),
    ("resident", 1, SALTS["resident"], "does not match"),  # typed: 1 is not True
    ("income", 10, SALTS["district"], "no attribute"),
    ("district", "mapo", b"short", "salt shorter"),
])
def test_wrong_disclosures_are_not_valid(registered: Chain, attribute: str, value: Any,
                                         salt: bytes, fragment: str) -> None:
    registered.ok(Cast.registry, "identity", "issue_credential", residency())
    result = verify_disclosure(registered.state, "res-1", attribute, value, salt, registered.height)
    assert not result.valid and fragment in result.reason


def test_revoked_expired_and_deauthorised_credentials_do_not_verify() -> None:
    chain = Chain(city_modules(), city_genesis(quorum=1))
    chain.ok(Cast.citizen, "identity", "register", {})
    chain.ok(Cast.registry, "identity", "issue_credential", residency("a", expiry=chain.height + 5))
    chain.ok(Cast.social, "identity", "issue_credential", residency("b"))
    chain.ok(Cast.registry, "identity", "issue_credential", residency("c"))

    def check(credential_id: str) -> str:
        result = verify_disclosure(chain.state, credential_id, "district", "mapo",
                                   SALTS["district"], chain.height)
        return "valid" if result.valid else result.reason

    assert check("b") == "valid"
    chain.ok(Cast.social, "identity", "revoke_credential", {"credential_id": "b", "reason": "moved"})
    assert check("b").startswith("revoked")
    chain.advance_to(chain.height + 5)
    assert check("a").startswith("expired")
    assert check("c") == "valid"
    chain.ok(Cast.treasury, "governance", "propose",
             {"kind": "revoke_role", "role": "issuer", "address": Cast.registry.address})
    assert "no longer holds the issuer role" in check("c")
    assert "no credential" in check("zzz")
    assert credential_verify(chain.state, "c", "district", "mapo", "not hex", 1)["reason"] == \
        "salt is not hex"


def test_credential_issue_and_revoke_rejections(registered: Chain) -> None:
    registered.reject(Cast.citizen, "identity", "issue_credential", residency(),
                      code="missing_role")
    registered.reject(Cast.registry, "identity", "issue_credential",
                      residency(did=did_for_address(Cast.citizen2.address)), code="unknown_did")
    registered.reject(Cast.registry, "identity", "issue_credential",
                      residency(expiry=registered.next_height), code="expiry_in_past")
    registered.reject(Cast.registry, "identity", "issue_credential",
                      {**residency(), "commitments": {"district": "zz"}}, code="invalid_payload")
    registered.ok(Cast.registry, "identity", "issue_credential", residency())
    registered.reject(Cast.registry, "identity", "issue_credential", residency(),
                      code="credential_exists")
    registered.reject(Cast.social, "identity", "revoke_credential", {"credential_id": "res-1"},
                      code="not_issuer")
    registered.reject(Cast.registry, "identity", "revoke_credential", {"credential_id": "nope"},
                      code="unknown_credential")
    registered.ok(Cast.registry, "identity", "revoke_credential", {"credential_id": "res-1"})
    registered.reject(Cast.registry, "identity", "revoke_credential", {"credential_id": "res-1"},
                      code="already_revoked")


def test_commitment_is_sha256_of_the_canonical_triple() -> None:
    from ledger.codec import encode
    from ledger.crypto import sha256

    assert attribute_commitment("age_over_18", True, b"\x01" * 16) == \
        sha256(encode(["age_over_18", True, b"\x01" * 16])).hex()
    commitments, salts = commit_attributes({"age_over_18": True})
    assert len(salts["age_over_18"]) == 16
    assert commitments["age_over_18"] == attribute_commitment("age_over_18", True,
                                                              salts["age_over_18"])
    with pytest.raises(ValueError, match="at least 16 bytes"):
        commit_attributes({"a": 1}, {"a": b"short"})


def test_replayed_registration_is_refused_by_nonce(chain: Chain) -> None:
    tx = chain.sign(Cast.citizen, "identity", "register", {})
    assert chain.block(tx)[0].ok
    assert chain.block(tx)[0].code == "bad_nonce"


def test_identity_genesis_takes_no_parameters() -> None:
    with pytest.raises(ValueError, match="no genesis parameters"):
        IdentityFamily().init_genesis(Overlay(MemoryKV()), {"x": 1})
