"""The same block sequence executed on two fresh stores gives identical state roots.

A scripted city day (governance, identity, credentials, tokens — accepted and rejected
transactions, end-of-block expiry) runs through the real executor over `WorldState`.
It runs twice in this process and once in each of two subprocesses with different
PYTHONHASHSEED values, so set or dict iteration order leaking into state would show up
as a different root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ledger.crypto import KeyPair
from ledger.executor import Executor
from ledger.overlay import Overlay
from ledger.rules import BlockContext
from ledger.state import WorldState
from ledger.tx import Tx, sign_tx
from tests.txtypes.conftest import CHAIN_ID, Cast, city_genesis, city_modules, key
from txtypes.credentials import commit_attributes, credential_verify
from txtypes.governance import governance_proposals
from txtypes.identity import did_for_address, identity_get, key_binding_message
from txtypes.tokens import token_balance, token_class_get

REPO = Path(__file__).resolve().parents[2]
TIMESTAMP_BASE_MS = 1_800_000_000_000


class Script:
    """Builds signed blocks with per-sender nonces."""

    def __init__(self) -> None:
        self.blocks: list[list[Tx]] = []
        self._nonces: dict[str, int] = {}

    def tx(self, signer: KeyPair, family: str, op: str, payload: Mapping[str, Any]) -> Tx:
        nonce = self._nonces.get(signer.address, 0)
        self._nonces[signer.address] = nonce + 1
        return sign_tx(signer, CHAIN_ID, family, op, nonce, dict(payload))

    def block(self, *txs: Tx) -> None:
        self.blocks.append(list(txs))


def city_day() -> list[list[Tx]]:
    s = Script()
    ana, ben = Cast.citizen, Cast.citizen2
    ana_did, ben_did = did_for_address(ana.address), did_for_address(ben.address)
    commitments, _ = commit_attributes({"eligible": True, "household": 3},
                                       {"eligible": b"e" * 16, "household": b"h" * 16})
    s.block(s.tx(ana, "identity", "register", {}), s.tx(ben, "identity", "register", {}),
            s.tx(Cast.treasury, "tokens", "define_class", {
                "class_id": "social", "name": "Social", "budget": 10_000,
                "categories": ["food", "clothing"], "transferable": False,
                "expiry_height": 30, "redemption_cents_per_unit": 100,
                "eligibility_schema": "low_income_eligibility"}),
            s.tx(Cast.treasury, "tokens", "define_class", {
                "class_id": "scoin", "name": "S-Coin", "budget": 5_000,
                "categories": ["food", "transport", "bar"], "transferable": True,
                "expiry_height": 1000, "redemption_cents_per_unit": 1}))
    s.block(s.tx(Cast.social, "identity", "issue_credential", {
                "credential_id": "li-ana", "subject_did": ana_did,
                "schema_name": "low_income_eligibility", "commitments": commitments,
                "expiry_height": 500}),
            s.tx(Cast.registry, "tokens", "register_merchant",
                 {"merchant": Cast.grocer.address, "name": "Grocer", "category": "food"}),
            s.tx(Cast.registry, "tokens", "register_merchant",
                 {"merchant": Cast.bar.address, "name": "Bar", "category": "bar"}),
            s.tx(ana, "identity", "add_guardian", {"did": ana_did, "guardian": Cast.social.address}))
    s.block(s.tx(Cast.treasury, "tokens", "issue",
                 {"class_id": "social", "to": ana.address, "amount": 300, "credential_id": "li-ana"}),
            s.tx(Cast.treasury, "tokens", "issue",  # rejected: ben holds no credential
                 {"class_id": "social", "to": ben.address, "amount": 300}),
            *[s.tx(Cast.treasury, "tokens", "issue",
                   {"class_id": "scoin", "to": key(f"resident-{i}").address, "amount": 10 + i})
              for i in range(20)],
            s.tx(Cast.treasury, "tokens", "issue",
                 {"class_id": "scoin", "to": ben.address, "amount": 50}))
    s.block(s.tx(ana, "tokens", "spend",
                 {"class_id": "social", "merchant": Cast.grocer.address, "amount": 120}),
            s.tx(ana, "tokens", "spend",  # rejected: a bar is not an allowed category
                 {"class_id": "social", "merchant": Cast.bar.address, "amount": 10}),
            s.tx(ben, "tokens", "transfer", {"class_id": "scoin", "to": ana.address, "amount": 20}),
            s.tx(ben, "tokens", "spend",
                 {"class_id": "scoin", "merchant": Cast.bar.address, "amount": 5}))
    s.block(s.tx(Cast.grocer, "tokens", "redeem", {"class_id": "social", "amount": 100}),
            s.tx(Cast.treasury, "governance", "propose",
                 {"kind": "grant_role", "role": "auditor", "address": key("auditor").address}),
            s.tx(Cast.utility, "governance", "propose",
                 {"kind": "set_param", "module": "energy", "name": "interval_blocks", "value": 12,
                  "ttl_blocks": 3}))
    new_key = key("ana-new-key")
    s.block(s.tx(Cast.registry, "governance", "approve", {"proposal_id": 1}),
            s.tx(Cast.social, "governance", "approve", {"proposal_id": 1}),
            s.tx(Cast.treasury, "tokens", "settle", {"merchant": Cast.grocer.address, "cents": 4000}),
            s.tx(Cast.social, "identity", "recover", {
                "did": ana_did, "new_public_key": new_key.public_key.hex(),
                "new_key_signature": new_key.sign(key_binding_message(
                    CHAIN_ID, ana_did, new_key.public_key.hex())).hex()}))
    for _ in range(4):  # proposal 2 expires at the end of one of these
        s.block()
    s.block(s.tx(Cast.social, "identity", "revoke_credential", {"credential_id": "li-ana"}),
            s.tx(ben, "identity", "deactivate", {"did": ben_did}))
    s.block(*[s.tx(Cast.outsider, "tokens", "burn_expired", {"class_id": "social"})])  # too early
    for _ in range(20):
        s.block()
    s.block(s.tx(Cast.outsider, "tokens", "burn_expired", {"class_id": "social"}))
    return s.blocks


def run_city_day() -> list[tuple[str, str, int, int]]:
    """(state root, receipts root, accepted, rejected) after genesis and after every block."""
    return execute_city_day()[1]


def execute_city_day() -> tuple[WorldState, list[tuple[str, str, int, int]]]:
    state = WorldState.in_memory()
    modules = city_modules()
    seed = Overlay(state.reader())
    genesis = city_genesis()
    for module in modules:
        module.init_genesis(seed, dict(genesis.get(module.family, {})))
    trace = [(state.commit(seed.writes, height=0).hex(), "", 0, 0)]
    executor = Executor(CHAIN_ID, modules)
    for height, txs in enumerate(city_day(), start=1):
        context = BlockContext(CHAIN_ID, height, TIMESTAMP_BASE_MS + 1000 * height, bytes(32))
        result = executor.execute_block(state.reader(), context, txs)
        root = state.commit(result.writes, height=height)
        rejected = sum(1 for receipt in result.receipts if not receipt.ok)
        trace.append((root.hex(), result.receipts_root.hex(), len(txs) - rejected, rejected))
    return state, trace


def test_same_blocks_on_two_fresh_states_give_identical_roots() -> None:
    first, second = run_city_day(), run_city_day()
    assert first == second
    for before, after in zip(first, first[1:], strict=False):
        if after[2]:  # a block with accepted transactions must move the root
            assert after[0] != before[0]
    assert sum(rejected for *_, rejected in first) >= 3, "the script exercises rejections"


def test_roots_do_not_depend_on_the_process_hash_seed() -> None:
    expected = run_city_day()[-1]
    code = ("from tests.txtypes.test_determinism import run_city_day; "
            "print(*run_city_day()[-1])")
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True, timeout=120).stdout.split()
        assert (out[0], out[1], int(out[2]), int(out[3])) == expected


def test_read_queries_answer_from_the_committed_state_reader() -> None:
    """The RPC read methods run on the committed state's plain reader (get + scan only)."""
    state, trace = execute_city_day()
    reader = state.reader()
    height = len(trace) - 1
    ana_did = did_for_address(Cast.citizen.address)
    identity = identity_get(reader, ana_did)
    assert identity is not None and identity["credentials"] == ["li-ana"]
    assert identity["controller"] == key("ana-new-key").address
    answer = credential_verify(reader, "li-ana", "eligible", True, (b"e" * 16).hex(), height)
    assert answer["valid"] is False and answer["reason"].startswith("revoked")
    assert token_balance(reader, "scoin", Cast.citizen.address)["balance"] == 20
    social = token_class_get(reader, "social")
    assert social is not None
    assert social["supply"] == {"issued": 300, "redeemed": 100, "burned": 180, "outstanding": 20}
    assert [p["status"] for p in governance_proposals(reader)] == ["executed", "expired"]
