"""Drive one rule module directly on an in-memory overlay: sign, check, apply, end blocks.

Shared by the family tests that exercise a module's rules one transaction at a time
(the executor-level tests use tests/txtypes/conftest.py's Chain instead).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from ledger.crypto import KeyPair
from ledger.overlay import MemoryKV, Overlay
from ledger.rules import BlockContext, RuleError, TxContext
from ledger.tx import sign_tx
from txtypes.base import TxFamily

CHAIN_ID = "test-city"


class FamilyHarness:
    def __init__(self, family: TxFamily, start_height: int) -> None:
        self.family = family
        self.state = Overlay(MemoryKV())
        self.height = start_height
        self.nonces: dict[str, int] = defaultdict(int)

    def block(self) -> BlockContext:
        return BlockContext(CHAIN_ID, self.height, self.height * 1000, b"\x00" * 32)

    def submit(self, signer: KeyPair, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        tx = sign_tx(signer, CHAIN_ID, self.family.family, op, self.nonces[signer.address],
                     payload)
        self.nonces[signer.address] += 1
        parsed = self.family.operations[op].model_validate(payload)
        ctx = TxContext(tx=tx, payload=parsed, block=self.block(), index=0)
        child = self.state.child()
        try:
            self.family.check(ctx, child)
            result = self.family.apply(ctx, child)
        except RuleError:
            child.discard()
            raise
        child.merge_into(self.state)
        return dict(result)

    def rejected(self, signer: KeyPair, op: str, payload: dict[str, Any]) -> str:
        """The rejection code; also proves the rejected transaction changed nothing."""
        before = dict(self.state.writes)
        with pytest.raises(RuleError) as info:
            self.submit(signer, op, payload)
        assert self.state.writes == before
        assert info.value.reason
        return info.value.code

    def end_block(self) -> None:
        self.family.end_block(self.block(), self.state)
        self.height += 1

    def run_to(self, height: int) -> None:
        """End blocks up to and including `height`."""
        while self.height <= height:
            self.end_block()
