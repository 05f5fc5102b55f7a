"""Shared fixtures for rule-module tests: a small in-memory chain driven by the real executor.

`Chain` seeds genesis through each module's `init_genesis`, signs transactions with real
keys, executes them block by block with `ledger.executor.Executor` (nonces, schema
validation, check, apply, begin/end-block hooks, per-transaction rollback) and folds the
writes into a `MemoryKV`. Any family's tests can use it:

    chain = Chain([GovernanceFamily(), TokensFamily()], {"governance": {...}})
    receipt = chain.run(alice, "tokens", "transfer", {...})
    chain.ok(alice, "tokens", "transfer", {...})          # asserts accepted, returns result
    chain.reject(alice, "tokens", "transfer", {...}, code="not_transferable")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ledger.crypto import KeyPair
from ledger.executor import Executor, next_nonce
from ledger.overlay import MemoryKV, Overlay
from ledger.receipt import Receipt
from ledger.rules import BlockContext, RuleModule
from ledger.tx import Tx, sign_tx
from txtypes.governance import GovernanceFamily
from txtypes.identity import IdentityFamily
from txtypes.tokens import TokensFamily

CHAIN_ID = "test-city"
TIMESTAMP_BASE_MS = 1_800_000_000_000
BLOCK_INTERVAL_MS = 1000
PROPOSER = bytes(32)


def key(name: str) -> KeyPair:
    """A deterministic test key per name (public seeds: tests only)."""
    return KeyPair(name.encode().ljust(32, b".")[:32])


class Chain:
    """A single-node, consensus-free chain: the executor plus an in-memory state."""

    def __init__(self, modules: Sequence[RuleModule],
                 genesis: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.modules = list(modules)
        self.executor = Executor(CHAIN_ID, self.modules)
        self.kv = MemoryKV()
        seed = Overlay(self.kv)
        for module in self.modules:
            module.init_genesis(seed, dict((genesis or {}).get(module.family, {})))
        self.kv.apply(seed.writes)
        self.height = 0
        self._nonces: dict[str, int] = {}

    # -- reading ------------------------------------------------------------------------
    @property
    def state(self) -> Overlay:
        """A read view of committed state (writes to it are never kept)."""
        return Overlay(self.kv)

    @property
    def next_height(self) -> int:
        return self.height + 1

    # -- writing ------------------------------------------------------------------------
    def sign(self, signer: KeyPair, family: str, op: str, payload: Mapping[str, Any],
             nonce: int | None = None) -> Tx:
        """Sign with the signer's next nonce (tracked across signed-but-unexecuted txs)."""
        address = signer.address
        if nonce is None:
            nonce = max(self._nonces.get(address, 0), next_nonce(self.kv, address))
            self._nonces[address] = nonce + 1
        return sign_tx(signer, CHAIN_ID, family, op, nonce, dict(payload))

    def block(self, *txs: Tx) -> list[Receipt]:
        """Execute one block holding `txs` (empty blocks run the end-block hooks)."""
        self.height += 1
        context = BlockContext(CHAIN_ID, self.height,
                               TIMESTAMP_BASE_MS + self.height * BLOCK_INTERVAL_MS, PROPOSER)
        result = self.executor.execute_block(self.kv, context, list(txs))
        self.kv.apply(result.writes)
        return result.receipts

    def advance_to(self, height: int) -> None:
        """Run empty blocks until the last executed block has `height`."""
        while self.height < height:
            self.block()

    def run(self, signer: KeyPair, family: str, op: str, payload: Mapping[str, Any],
            nonce: int | None = None) -> Receipt:
        (receipt,) = self.block(self.sign(signer, family, op, payload, nonce))
        return receipt

    def ok(self, signer: KeyPair, family: str, op: str,
           payload: Mapping[str, Any]) -> dict[str, Any]:
        receipt = self.run(signer, family, op, payload)
        assert receipt.ok, f"{family}.{op} rejected: {receipt.code}: {receipt.reason}"
        return receipt.result

    def reject(self, signer: KeyPair, family: str, op: str, payload: Mapping[str, Any],
               *, code: str) -> str:
        """Assert the tx is rejected with `code` and that it changed no rule state."""
        before = [(k, v) for k, v in self.kv.items() if not k.startswith(b"nonce/")]
        receipt = self.run(signer, family, op, payload)
        assert not receipt.ok, f"{family}.{op} was accepted, expected {code}"
        assert receipt.code == code, f"expected {code}, got {receipt.code}: {receipt.reason}"
        assert receipt.reason, "a rejection must say why"
        after = [(k, v) for k, v in self.kv.items() if not k.startswith(b"nonce/")]
        assert before == after, "a rejected transaction changed state"
        return receipt.reason


# -- the standard cast ----------------------------------------------------------------------
AGENCY_NAMES = ("treasury", "registry", "utility", "social")


class Cast:
    """Named keys for the city's accounts."""

    treasury = key("treasury-agency")
    registry = key("civil-registry")
    utility = key("utility-agency")
    social = key("social-services")
    citizen = key("citizen-ana")
    citizen2 = key("citizen-ben")
    grocer = key("grocer-shop")
    bar = key("bar-shop")
    outsider = key("outsider")

    @classmethod
    def agencies(cls) -> list[KeyPair]:
        return [cls.treasury, cls.registry, cls.utility, cls.social]


def city_genesis(quorum: int = 3, ttl_blocks: int = 50) -> dict[str, dict[str, Any]]:
    """Four agencies; treasury holds treasury, registry holds registrar and issuer."""
    return {
        "governance": {
            "agencies": sorted(k.address for k in Cast.agencies()),
            "roles": {
                "treasury": [Cast.treasury.address],
                "registrar": [Cast.registry.address],
                "issuer": [Cast.registry.address, Cast.social.address],
                "utility": [Cast.utility.address],
            },
            "approval_quorum": quorum,
            "proposal_ttl_blocks": ttl_blocks,
        },
    }


def city_modules() -> list[RuleModule]:
    return [GovernanceFamily(), IdentityFamily(), TokensFamily()]


@pytest.fixture
def cast() -> type[Cast]:
    return Cast


@pytest.fixture
def chain() -> Chain:
    return Chain(city_modules(), city_genesis())
