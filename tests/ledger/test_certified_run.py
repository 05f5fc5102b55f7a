"""Catch-up commits a run of certified blocks block by block, with one sync for the run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import plyvel
import pytest

from ledger.block import Block, CommitCertificate
from ledger.chain import Chain
from ledger.crypto import KeyPair
from ledger.executor import Executor
from ledger.genesis import Genesis, build_genesis_state
from ledger.state import WorldState
from ledger.store import BlockStore, StateOp
from ledger.tx import Tx
from tests.ledger.test_chain import CHAIN, NOW_MS, CounterModule, _cert, _genesis, _txs


class CountingStore(BlockStore):
    """A BlockStore that notes which appends were synced and how often `sync` ran."""

    def __init__(self, db: plyvel.DB) -> None:
        super().__init__(db)
        self.append_syncs: list[bool] = []
        self.syncs = 0

    def append(self, block: Block, cert: CommitCertificate, receipts: Sequence[bytes],
               state_ops: Sequence[StateOp], extra_ops: Sequence[StateOp] = (), *,
               sync: bool = True, tx_hashes: Sequence[bytes] | None = None,
               accepted: Sequence[bool] | None = None) -> None:
        super().append(block, cert, receipts, state_ops, extra_ops, sync=sync,
                       tx_hashes=tx_hashes, accepted=accepted)
        self.append_syncs.append(sync)

    def sync(self) -> None:
        super().sync()
        self.syncs += 1


def _chain(path: Path, genesis: Genesis) -> Chain:
    store = CountingStore(plyvel.DB(str(path), create_if_missing=True))
    if store.genesis_hash() is None:
        writes, root = build_genesis_state(genesis, [CounterModule()])
        store.init_genesis(genesis.hash, root, WorldState(store.db).prepare(writes).ops)
    keys = [v.public_key_bytes for v in genesis.validators]
    return Chain(genesis, store, WorldState(store.db), Executor(CHAIN, [CounterModule()]),
                 lambda view: keys[view % len(keys)])


def _history(primary: Chain, validators: list[KeyPair],
             blocks: int) -> list[tuple[Block, CommitCertificate, list[Tx]]]:
    user = KeyPair.generate()
    run = []
    for height in range(1, blocks + 1):
        spec = primary.build(0, validators[0].public_key, _txs(user, (height - 1) * 2, 2),
                             NOW_MS + height)
        cert = _cert(spec.block, validators, seq=height)
        primary.commit(spec, cert)
        run.append((spec.block, cert, list(spec.txs)))
    return run


@pytest.fixture
def validators() -> list[KeyPair]:
    return [KeyPair.generate() for _ in range(4)]


def test_run_of_certified_blocks_reaches_the_same_state_with_one_sync(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    genesis = _genesis(validators)
    primary = _chain(tmp_path / "a", genesis)
    run = _history(primary, validators, 5)
    lagging = _chain(tmp_path / "b", genesis)
    committed, rejected = lagging.commit_certified_run(run)
    assert rejected is None
    assert [s.block.hash for s in committed] == [block.hash for block, _, _ in run]
    assert (lagging.tip_hash, lagging.state.root) == (primary.tip_hash, primary.state.root)
    store = lagging.store
    assert isinstance(store, CountingStore)
    assert store.append_syncs == [False] * 5 and store.syncs == 1
    store.close()
    reopened = BlockStore.open(tmp_path / "b")
    assert reopened.tip() == (5, primary.tip_hash) and reopened.tip_seq() == 5
    reopened.close()


def test_run_stops_at_the_first_block_that_does_not_extend_the_tip_and_keeps_the_prefix(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    genesis = _genesis(validators)
    primary = _chain(tmp_path / "a", genesis)
    run = _history(primary, validators, 5)
    lagging = _chain(tmp_path / "b", genesis)
    committed, rejected = lagging.commit_certified_run(run[:2] + run[3:])  # block 3 missing
    assert len(committed) == 2
    assert rejected is not None and "does not follow" in rejected.reason
    assert lagging.height == 2
    store = lagging.store
    assert isinstance(store, CountingStore) and store.syncs == 1  # the prefix is durable


def test_run_refuses_a_certificate_for_another_block_before_writing_it(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    genesis = _genesis(validators)
    primary = _chain(tmp_path / "a", genesis)
    run = _history(primary, validators, 2)
    lagging = _chain(tmp_path / "b", genesis)
    (first, _, first_txs), (_, second_cert, _) = run
    committed, rejected = lagging.commit_certified_run([(first, second_cert, first_txs)])
    assert committed == [] and rejected is not None and "another block" in rejected.reason
    assert lagging.height == 0
    store = lagging.store
    assert isinstance(store, CountingStore) and store.syncs == 0
