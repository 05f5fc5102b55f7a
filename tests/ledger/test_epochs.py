"""Validator-set epochs: which set certifies which sequences, durably, and checked offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger.block import Block, CommitCertificate, commit_vote_bytes
from ledger.chain import ProposalRejected
from ledger.crypto import KeyPair
from ledger.epochs import (
    Epoch,
    EpochError,
    EpochHistory,
    due_epoch,
    epoch_domain,
    genesis_epoch,
    parse_validator_set,
)
from ledger.errors import InvariantViolation
from ledger.quorum import quorum_size
from ledger.verify import verify_chain, verify_epochs
from tests.ledger.test_chain import CHAIN, NOW_MS, _genesis, _open_chain, _txs


def _entries(keys: list[KeyPair], base_port: int = 28000) -> list[dict[str, Any]]:
    return [{"name": f"agency-{i}", "public_key": key.public_key.hex(),
             "p2p_address": f"127.0.0.1:{base_port + i}",
             "rpc_address": f"127.0.0.1:{base_port + 100 + i}"} for i, key in enumerate(keys)]


def _cert(block: Block, keys: list[KeyPair], seq: int, domain: str) -> CommitCertificate:
    vote = commit_vote_bytes(domain, 0, seq, block.hash)
    signers = keys[:quorum_size(len(keys))]
    return CommitCertificate(seq, 0, block.hash,
                             tuple((k.public_key, k.sign(vote)) for k in signers))


@pytest.fixture
def old_keys() -> list[KeyPair]:
    return [KeyPair.generate() for _ in range(4)]


@pytest.fixture
def new_keys(old_keys: list[KeyPair]) -> list[KeyPair]:
    # Agency 3 leaves, two new agencies join.
    return old_keys[:3] + [KeyPair.generate(), KeyPair.generate()]


def test_history_starts_with_genesis_and_remembers_recorded_epochs_across_reopen(
        tmp_path: Path, old_keys: list[KeyPair], new_keys: list[KeyPair]) -> None:
    genesis = _genesis(old_keys)
    chain = _open_chain(tmp_path / "db", genesis)
    history = EpochHistory(chain.store.db, genesis)
    assert history.current == genesis_epoch(genesis) and history.current.first_seq == 1
    epoch = Epoch(1, 17, parse_validator_set(_entries(new_keys)))
    history.record(epoch)
    chain.store.close()
    reopened = EpochHistory(_open_chain(tmp_path / "db", genesis).store.db, genesis)
    assert reopened.current == epoch
    assert [reopened.at_seq(s).number for s in (1, 16, 17, 500)] == [0, 0, 1, 1]


def test_history_refuses_an_epoch_that_does_not_follow_the_current_one(
        tmp_path: Path, old_keys: list[KeyPair]) -> None:
    genesis = _genesis(old_keys)
    history = EpochHistory(_open_chain(tmp_path / "db", genesis).store.db, genesis)
    history.record(Epoch(2, 33, parse_validator_set(_entries(old_keys))))
    for number, first_seq in ((2, 49), (3, 33), (1, 49)):
        with pytest.raises(InvariantViolation):
            history.record(Epoch(number, first_seq, parse_validator_set(_entries(old_keys))))
    assert history.current.number == 2


def test_a_change_is_due_only_at_a_checkpoint_boundary_and_only_when_newer(
        old_keys: list[KeyPair], new_keys: list[KeyPair]) -> None:
    current = Epoch(1, 17, parse_validator_set(_entries(old_keys)))
    pending = {"change_id": 2, "validators": _entries(new_keys), "approved_height": 20}
    assert due_epoch(47, 16, pending, current) is None  # not a boundary
    assert due_epoch(48, 16, None, current) is None  # nothing approved
    assert due_epoch(48, 16, {**pending, "change_id": 1}, current) is None  # already active
    due = due_epoch(48, 16, pending, current)
    assert due is not None and (due.number, due.first_seq) == (2, 49)
    assert due.keys == tuple(k.public_key for k in new_keys)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda e: e[:0], "at least one"),
    (lambda e: [e[0], e[0]], "appears twice"),
    (lambda e: [{**e[0], "name": "Not An Agency"}], "invalid validator entry"),
    (lambda e: [{**e[0], "public_key": "zz" * 32}], "invalid validator entry"),
    (lambda e: [e[0], {**e[1], "p2p_address": e[0]["p2p_address"]}], "appears twice"),
])
def test_a_set_genesis_would_refuse_cannot_start_an_epoch(
        old_keys: list[KeyPair], change: Any, reason: str) -> None:
    with pytest.raises(EpochError, match=reason):
        due_epoch(16, 16, {"change_id": 1, "validators": change(_entries(old_keys))},
                  genesis_epoch(_genesis(old_keys)))


def test_catch_up_checks_each_certificate_against_its_own_epoch(
        tmp_path: Path, old_keys: list[KeyPair], new_keys: list[KeyPair]) -> None:
    genesis = _genesis(old_keys)
    primary = _open_chain(tmp_path / "a", genesis)
    lagging = _open_chain(tmp_path / "b", genesis)
    history = EpochHistory(lagging.store.db, genesis)
    history.record(Epoch(1, 2, parse_validator_set(_entries(new_keys))))
    lagging.epochs = history
    user = KeyPair.generate()
    first = primary.build(0, old_keys[0].public_key, _txs(user, 0, 1), NOW_MS)
    primary.commit(first, _cert(first.block, old_keys, 1, CHAIN))
    lagging.apply_certified(first.block, _cert(first.block, old_keys, 1, CHAIN))
    second = primary.build(0, old_keys[0].public_key, _txs(user, 1, 1), NOW_MS + 5)
    old_set = _cert(second.block, old_keys, 2, CHAIN)
    old_domain = _cert(second.block, new_keys, 2, CHAIN)
    for refused in (old_set, old_domain):
        with pytest.raises(ProposalRejected, match="commit certificate"):
            lagging.apply_certified(second.block, refused)
    assert lagging.height == 1
    lagging.apply_certified(second.block,
                            _cert(second.block, new_keys, 2, epoch_domain(CHAIN, 1)))
    assert lagging.tip_hash == second.block.hash


def test_verify_chain_checks_certificates_per_epoch_and_catches_a_forged_epoch(
        tmp_path: Path, old_keys: list[KeyPair], new_keys: list[KeyPair]) -> None:
    genesis = _genesis(old_keys)
    chain = _open_chain(tmp_path / "a", genesis)
    user = KeyPair.generate()
    for height in range(1, 5):
        spec = chain.build(0, old_keys[0].public_key, _txs(user, height - 1, 1), NOW_MS + height)
        keys, domain = (old_keys, CHAIN) if height <= 2 else (new_keys, epoch_domain(CHAIN, 1))
        chain.commit(spec, _cert(spec.block, keys, height, domain))
    keys = [v.public_key_bytes for v in genesis.validators]
    history = EpochHistory(chain.store.db, genesis)
    without = verify_chain(chain.store, genesis.hash, CHAIN, keys)
    assert not without.ok and without.first_bad_height == 3
    history.record(Epoch(1, 3, parse_validator_set(_entries(new_keys))))
    report = verify_chain(chain.store, genesis.hash, CHAIN, keys, history)
    assert report.ok and report.blocks_checked == 4, str(report)
    assert EpochHistory(chain.store.db, genesis).current.number == 1  # durable
    # An epoch record naming other keys (a tampered disk) makes the certificates fail.
    tampered = [KeyPair.generate() for _ in range(4)]
    bad_history = EpochHistory(_open_chain(tmp_path / "c", genesis).store.db, genesis)
    bad_history.record(Epoch(1, 3, parse_validator_set(_entries(tampered))))
    report = verify_chain(chain.store, genesis.hash, CHAIN, keys, bad_history)
    assert not report.ok and report.first_bad_height == 3


def test_recorded_epochs_must_be_what_the_state_at_their_boundary_approved(
        old_keys: list[KeyPair], new_keys: list[KeyPair], tmp_path: Path) -> None:
    genesis = _genesis(old_keys)
    history = EpochHistory(_open_chain(tmp_path / "a", genesis).store.db, genesis)
    history.record(Epoch(1, 33, parse_validator_set(_entries(new_keys))))
    approved = {"change_id": 1, "validators": _entries(new_keys)}

    def approved_from(first_seq: int) -> Any:
        return lambda seq: approved if seq >= first_seq else None

    assert verify_epochs(history, 16, approved_from(20)) is None  # due at 32, switched at 32
    problem = verify_epochs(history, 16, approved_from(10))  # due at 16 already
    assert problem is not None and "earlier" in problem
    problem = verify_epochs(history, 16, lambda seq: None)  # nothing approved at all
    assert problem is not None and "not what the state" in problem
    other = {"change_id": 1, "validators": _entries(old_keys)}
    problem = verify_epochs(history, 16, lambda seq: other if seq >= 20 else None)
    assert problem is not None and "not what the state" in problem
