"""Chain: the primary builds and executes a block; a backup validates it by re-executing."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from ledger.block import Block, CommitCertificate, Header, commit_vote_bytes
from ledger.chain import Chain, ProposalRejected
from ledger.codec import encode
from ledger.crypto import KeyPair
from ledger.executor import Executor
from ledger.genesis import Genesis, build_genesis_state, parse_genesis
from ledger.receipt import decode_receipt
from ledger.rules import BlockContext, StateView, TxContext
from ledger.state import WorldState
from ledger.store import TX_LOCATION_PREFIX, BlockStore
from ledger.tx import Tx, sign_tx
from ledger.verify import verify_chain

CHAIN = "chain-test"
NOW_MS = 1_700_000_000_000


class AddPayload(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    amount: int = Field(ge=0)


class CounterModule:
    family = "counter"

    @property
    def operations(self) -> Mapping[str, type[BaseModel]]:
        return {"add": AddPayload}

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        state.put_obj(b"counter/start", params.get("start", 0))

    def check(self, ctx: TxContext, state: StateView) -> None:
        return None

    def apply(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        assert isinstance(ctx.payload, AddPayload)
        key = f"counter/{ctx.sender_address}".encode()
        total = (state.get_obj(key) or 0) + ctx.payload.amount
        state.put_obj(key, total)
        return {"total": total}

    def begin_block(self, block: BlockContext, state: StateView) -> None:
        return None

    def end_block(self, block: BlockContext, state: StateView) -> None:
        return None


@pytest.fixture
def validators() -> list[KeyPair]:
    return [KeyPair.generate() for _ in range(4)]


def _genesis(validators: list[KeyPair]) -> Genesis:
    return parse_genesis({
        "chain_id": CHAIN,
        "genesis_time_ms": NOW_MS - 10_000,
        "consensus": {"checkpoint_interval_blocks": 16, "view_change_timeout_ms": 2000,
                      "batch_txs_max": 100, "batch_interval_ms": 10},
        "validators": [
            {"name": f"agency-{i}", "public_key": key.public_key.hex(),
             "p2p_address": f"127.0.0.1:{27000 + i}", "rpc_address": f"127.0.0.1:{27100 + i}"}
            for i, key in enumerate(validators)
        ],
        "modules": [{"name": "counter", "params": {"start": 7}}],
    })


def _open_chain(path: Path, genesis: Genesis) -> Chain:
    store = BlockStore.open(path)
    state = WorldState(store.db)
    executor = Executor(CHAIN, [CounterModule()])
    if store.genesis_hash() is None:
        writes, root = build_genesis_state(genesis, [CounterModule()])
        store.init_genesis(genesis.hash, root, state.prepare(writes).ops)
        state = WorldState(store.db)
    validators = [v.public_key_bytes for v in genesis.validators]
    return Chain(genesis, store, state, executor, lambda view: validators[view % len(validators)])


def _cert(block: Block, keys: list[KeyPair], seq: int, view: int = 0) -> CommitCertificate:
    vote = commit_vote_bytes(CHAIN, view, seq, block.hash)
    return CommitCertificate(seq, view, block.hash,
                             tuple((k.public_key, k.sign(vote)) for k in keys[:3]))


def _txs(user: KeyPair, start_nonce: int, count: int) -> list[Tx]:
    return [sign_tx(user, CHAIN, "counter", "add", start_nonce + i, {"amount": i + 1})
            for i in range(count)]


def test_backup_validates_primary_block_and_both_commit_identical_state(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    genesis = _genesis(validators)
    primary = _open_chain(tmp_path / "a", genesis)
    backup = _open_chain(tmp_path / "b", genesis)
    user = KeyPair.generate()
    for height in (1, 2):
        spec = primary.build(0, validators[0].public_key, _txs(user, (height - 1) * 3, 3), NOW_MS)
        payload = spec.block.encode()
        block = Chain.decode_proposal(payload)
        checked = backup.validate(block, list(spec.txs), NOW_MS)
        cert = _cert(spec.block, validators, seq=height)
        primary.commit(spec, cert)
        backup.commit(checked, cert)
    assert primary.tip_hash == backup.tip_hash and primary.height == 2
    assert primary.state.root == backup.state.root == primary.store.header(2).state_root
    receipt = primary.store.receipt(spec.txs[-1].hash)
    assert receipt is not None


def test_backup_refuses_block_whose_state_root_it_computes_differently(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    genesis = _genesis(validators)
    primary = _open_chain(tmp_path / "a", genesis)
    backup = _open_chain(tmp_path / "b", genesis)
    spec = primary.build(0, validators[0].public_key, _txs(KeyPair.generate(), 0, 2), NOW_MS)
    header = spec.block.header
    forged = Block(Header(**{**_fields(header), "state_root": b"\x01" * 32}), spec.block.txs)
    with pytest.raises(ProposalRejected, match="state root"):
        backup.validate(forged, list(spec.txs), NOW_MS)
    assert backup.height == 0


def _fields(header: Header) -> dict[str, Any]:
    return {name: getattr(header, name) for name in (
        "chain_id", "height", "prev_hash", "timestamp_ms", "proposer", "view", "tx_root",
        "state_root", "receipts_root")}


@pytest.mark.parametrize("change, reason", [
    ({"height": 5}, "height"),
    ({"prev_hash": b"\x02" * 32}, "tip"),
    ({"view": 1}, "primary"),
    ({"timestamp_ms": 1}, "timestamp"),
    ({"timestamp_ms": NOW_MS + 10**9}, "future"),
    ({"tx_root": b"\x03" * 32}, "root"),
])
def test_header_rules_reject_bad_proposals(tmp_path: Path, validators: list[KeyPair],
                                           change: dict[str, Any], reason: str) -> None:
    genesis = _genesis(validators)
    primary = _open_chain(tmp_path / "a", genesis)
    spec = primary.build(0, validators[0].public_key, _txs(KeyPair.generate(), 0, 1), NOW_MS)
    bad = Block(Header(**{**_fields(spec.block.header), **change}), spec.block.txs)
    with pytest.raises(ProposalRejected, match=reason):
        primary.check_header(bad, NOW_MS)


def test_proposal_repeating_a_transaction_is_refused_at_decode(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    genesis = _genesis(validators)
    primary = _open_chain(tmp_path / "a", genesis)
    tx = _txs(KeyPair.generate(), 0, 1)[0]
    spec = primary.build(0, validators[0].public_key, [tx], NOW_MS)
    payload = encode({"header": spec.block.header.to_map(), "txs": [tx.raw, tx.raw]})
    with pytest.raises(ProposalRejected, match="same transaction"):
        Chain.decode_proposal(payload)


def test_catch_up_applies_certified_block_and_refuses_weak_certificate(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    genesis = _genesis(validators)
    primary = _open_chain(tmp_path / "a", genesis)
    lagging = _open_chain(tmp_path / "b", genesis)
    spec = primary.build(0, validators[0].public_key, _txs(KeyPair.generate(), 0, 2), NOW_MS)
    cert = _cert(spec.block, validators, seq=1)
    primary.commit(spec, cert)
    weak = CommitCertificate(1, 0, cert.block_hash, cert.signatures[:2])
    with pytest.raises(ProposalRejected, match="certificate"):
        lagging.apply_certified(spec.block, weak)
    assert lagging.height == 0
    lagging.apply_certified(spec.block, cert)
    assert lagging.tip_hash == primary.tip_hash
    assert lagging.state.root == primary.state.root


def test_a_tx_rejected_once_and_accepted_later_is_found_committed(
        tmp_path: Path, validators: list[KeyPair]) -> None:
    """A byzantine primary includes a tx while its nonce is ahead (rejected, nonce not
    consumed), then again once it is next (accepted). A lookup must find the payment that
    executed, not the early rejection; a copy after that is rejected and changes nothing."""
    chain = _open_chain(tmp_path / "a", _genesis(validators))
    user = KeyPair.generate()
    first, ahead = _txs(user, 0, 2)
    for seq, txs in enumerate([[ahead], [first, ahead], [ahead]], start=1):
        spec = chain.build(0, validators[0].public_key, txs, NOW_MS)
        chain.commit(spec, _cert(spec.block, validators, seq=seq))
    codes = [decode_receipt(raw).code for height in (1, 2, 3)
             for raw in chain.store.receipts(height)]
    assert codes == ["bad_nonce", "ok", "ok", "bad_nonce"]
    assert chain.store.tx_location(ahead.hash) == (2, 1)
    receipt = chain.store.receipt(ahead.hash)
    assert receipt is not None and decode_receipt(receipt).ok
    genesis = _genesis(validators)
    keys = [v.public_key_bytes for v in genesis.validators]
    assert verify_chain(chain.store, genesis.hash, CHAIN, keys).ok
    # verify-chain holds the index to that rule: neither rejected copy may be named.
    for wrong in ((1, 0), (3, 0)):
        chain.store.db.put(TX_LOCATION_PREFIX + ahead.hash, struct.pack(">QI", *wrong))
        assert not verify_chain(chain.store, genesis.hash, CHAIN, keys).ok
