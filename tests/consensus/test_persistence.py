"""The signing guard, persisted records and restart: a restarted replica never
equivocates and comes back to where it was."""

from __future__ import annotations

import pytest

from consensus.events import MessageReceived, Send
from consensus.guard import SigningGuard, SigningRefused
from consensus.messages import Commit, Prepare, PrePrepare, ViewChange
from consensus.records import (
    ExecutedRecord,
    GuardRecord,
    decode_record,
    encode_record,
)
from consensus.replica import PROGRESS_TIMER
from consensus.sim_env import SimVerifier, make_payload
from ledger.crypto import sha256
from tests.consensus.cluster import Cluster, request


def test_guard_returns_the_stored_signature_for_an_identical_request() -> None:
    guard = SigningGuard(SimVerifier().register(b"k" * 32))
    signature, record = guard.sign("prepare", 1, 2, b"bytes")
    assert record is not None and record.signature == signature
    again, none = guard.sign("prepare", 1, 2, b"bytes")
    assert (again, none) == (signature, None)


def test_guard_refuses_a_conflicting_signature_for_the_same_phase_view_and_seq() -> None:
    guard = SigningGuard(SimVerifier().register(b"k" * 32))
    guard.sign("commit", 1, 2, b"digest one")
    with pytest.raises(SigningRefused):
        guard.sign("commit", 1, 2, b"digest two")
    # Other phases, views and seqs are independent.
    guard.sign("commit", 1, 3, b"digest two")
    guard.sign("commit", 2, 2, b"digest two")
    guard.sign("prepare", 1, 2, b"digest two")


def test_guard_loaded_from_records_refuses_like_the_original() -> None:
    key = SimVerifier().register(b"k" * 32)
    _, record = SigningGuard(key).sign("prepare", 0, 1, b"a")
    assert record is not None
    reloaded = SigningGuard(key)
    reloaded.load(decode_record(encode_record(record)))  # type: ignore[arg-type]
    with pytest.raises(SigningRefused):
        reloaded.sign("prepare", 0, 1, b"b")


def test_every_persisted_record_round_trips_through_its_bytes() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2)
    cluster.filter = lambda src, dst, m: None if isinstance(m, Commit) and m.seq == 3 else m
    for number in range(3):
        cluster.submit(number)
        cluster.run()
    cluster.crash(0)
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    kinds = set()
    for node in cluster.nodes:
        for data in node.records:
            record = decode_record(data)
            kinds.add(type(record).__name__)
            assert encode_record(record) == data
    assert {"GuardRecord", "ViewRecord", "PreparedRecord", "StableRecord", "ExecutedRecord",
            "OwnViewChangeRecord", "NewViewRecord"} <= kinds


def test_restarted_replica_never_prepares_a_conflicting_proposal() -> None:
    cluster = Cluster()
    cluster.auto_execute = False
    cluster.filter = lambda src, dst, m: None if isinstance(m, Commit) else m
    cluster.submit(0)
    cluster.run()
    first = cluster.replica(1).slots[1].pre_prepare
    assert first is not None
    cluster.crash(1)
    cluster.restart(1)
    # A Byzantine primary now offers replica 1 a different proposal for the same slot.
    other = make_payload(1, 0, [request(99)])
    forged = cluster.sign_as(0, PrePrepare(0, 1, sha256(other), other, 0, bytes(64)))
    actions = cluster.step(1, MessageReceived(0, forged))
    assert not any(isinstance(a, Send) and isinstance(a.message, Prepare) for a in actions)
    guard = cluster.replica(1).guard.signed("prepare", 0, 1)
    assert guard is not None and guard.body_hash != sha256(b"")


def test_restart_during_a_view_change_resends_the_identical_view_change() -> None:
    cluster = Cluster()
    cluster.crash(0)
    cluster.submit(0)
    cluster.fire(PROGRESS_TIMER, [2])
    before = [a.message for a in cluster.nodes[2].action_lists[-1]
              if isinstance(a, Send) and isinstance(a.message, ViewChange)]
    cluster.crash(2)
    actions = cluster.restart(2)
    after = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, ViewChange)]
    assert before == after and len(after) == 1
    assert cluster.replica(2).view == 1 and cluster.replica(2).in_view_change


def test_restart_restores_view_watermarks_and_execution_height() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=4)
    for number in range(5):
        cluster.submit(number)
        cluster.run()
    original = cluster.replica(3)
    cluster.crash(3)
    cluster.restart(3)
    restored = cluster.replica(3)
    assert (restored.view, restored.low_seq, restored.last_executed) == (
        original.view, original.low_seq, original.last_executed)
    assert restored.stable_proof == original.stable_proof
    cluster.submit(5)
    cluster.run()
    assert cluster.requests_executed(3) == [request(n) for n in range(6)]


def test_compaction_keeps_only_what_is_above_the_stable_checkpoint() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=4)
    for number in range(5):
        cluster.submit(number)
        cluster.run()
    records = [decode_record(d) for d in cluster.nodes[1].records]
    low = cluster.replica(1).low_seq
    assert low == 4
    for record in records:
        if isinstance(record, GuardRecord) and record.domain != "view-change":
            assert record.seq > low or record.seq == 0
        if isinstance(record, ExecutedRecord):
            assert record.seq >= low


def test_restore_ignores_nothing_it_persisted_across_many_crashes() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=4)
    for number in range(8):
        cluster.submit(number)
        cluster.run()
        victim = number % 4
        cluster.crash(victim)
        cluster.restart(victim)
        cluster.run()
    histories = {tuple(cluster.digests(i)) for i in range(4)}
    assert len(histories) == 1
    assert cluster.requests_executed(0) == [request(n) for n in range(8)]


def test_restarted_replica_prepares_a_reproposal_of_a_block_it_already_executed() -> None:
    cluster = Cluster()
    # Only replica 2 receives the commits: it alone executes seq 1.
    cluster.filter = lambda src, dst, m: None if isinstance(m, Commit) and dst != 2 else m
    cluster.submit(0)
    cluster.run()
    assert [len(cluster.nodes[i].executed) for i in range(4)] == [0, 0, 1, 0]
    cluster.crash(2)
    cluster.restart(2)  # its commit certificate for seq 1 is gone, its store is not
    cluster.crash(0)
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    # Replicas 1 and 3 need replica 2's prepare for the re-proposal of seq 1.
    for index in (1, 2, 3):
        assert cluster.digests(index) == cluster.digests(2)
        assert len(cluster.nodes[index].executed) == 1
