"""The normal case: batching, pipelining, validation before PREPARE, ordered execution,
commit certificates the ledger accepts, persist-before-send, checkpoints and GC."""

from __future__ import annotations

from consensus.events import (
    BuildProposal,
    Execute,
    Persist,
    ProposalValidated,
    RequestsReceived,
    Send,
)
from consensus.messages import Checkpoint, Commit, Prepare, PrePrepare, ViewChange
from consensus.records import GuardRecord
from consensus.replica import BATCH_TIMER, PROGRESS_TIMER
from ledger.block import CommitCertificate
from tests.consensus.cluster import CHAIN, Cluster, request


def test_four_replicas_commit_and_execute_the_same_requests_in_order() -> None:
    cluster = Cluster()
    for number in range(3):
        cluster.submit(number)
        cluster.run()
    expected = [request(0), request(1), request(2)]
    for index in range(4):
        assert cluster.requests_executed(index) == expected
        assert [e.seq for e in cluster.nodes[index].executed] == [1, 2, 3]
    assert cluster.digests(0) == cluster.digests(1) == cluster.digests(2) == cluster.digests(3)


def test_primary_proposes_when_the_batch_is_full_without_waiting_for_the_interval() -> None:
    cluster = Cluster(batch_requests_max=3)
    cluster.submit(0)
    cluster.submit(1)
    assert cluster.nodes[0].builds == []
    cluster.submit(2)
    assert [b.requests for b in cluster.nodes[0].builds] == [(request(0), request(1), request(2))]


def test_primary_proposes_a_partial_batch_when_the_batch_interval_passes() -> None:
    cluster = Cluster(batch_requests_max=10)
    cluster.submit(0)
    assert cluster.nodes[0].builds == []
    assert BATCH_TIMER in cluster.nodes[0].timers
    cluster.fire(BATCH_TIMER, [0])
    assert [b.requests for b in cluster.nodes[0].builds] == [(request(0),)]
    cluster.run()
    assert cluster.requests_executed(3) == [request(0)]


def test_pipelining_keeps_at_most_the_window_of_proposals_beyond_execution() -> None:
    cluster = Cluster(pipeline_window=3, batch_requests_max=1)
    cluster.auto_execute = False  # the node has not reported any execution yet
    for number in range(6):
        cluster.submit(number)
    assert [b.seq for b in cluster.nodes[0].builds] == [1, 2, 3]
    cluster.run()
    # Seqs 1..3 commit and execute (Execute issued) while proposals stay within the window.
    assert [e.seq for e in cluster.nodes[1].executed] == [1, 2, 3]
    assert [b.seq for b in cluster.nodes[0].builds] == [1, 2, 3]


def test_window_one_builds_the_next_block_only_after_the_previous_one_executed() -> None:
    cluster = Cluster(pipeline_window=1)
    cluster.auto_execute = False
    cluster.submit(0)
    cluster.submit(1)
    assert [b.seq for b in cluster.nodes[0].builds] == [1]
    cluster.run()
    from consensus.events import Executed

    cluster.step(0, Executed(1, cluster.state_digest(0)))
    assert [b.seq for b in cluster.nodes[0].builds] == [1, 2]


def test_backups_send_prepare_only_after_the_node_validated_the_proposal() -> None:
    cluster = Cluster()
    cluster.auto_validate = False
    cluster.submit(0)
    cluster.run()
    for index in (1, 2, 3):
        assert [v.seq for v in cluster.nodes[index].validations] == [1]
        sent = [a.message for lst in cluster.nodes[index].action_lists for a in lst
                if isinstance(a, Send)]
        assert not any(isinstance(m, Prepare) for m in sent)
    validation = cluster.nodes[1].validations[0]
    cluster.step(1, ProposalValidated(0, 1, validation.digest, True))
    sent = [a.message for a in cluster.nodes[1].action_lists[-1] if isinstance(a, Send)]
    assert [type(m) for m in sent] == [Prepare]


def test_an_invalid_proposal_gets_no_prepare_and_starts_a_view_change() -> None:
    from consensus.sim_env import make_payload

    bad = make_payload(1, 0, [request(0)])
    cluster = Cluster(invalid_payloads=frozenset({bad}))
    cluster.submit(0)
    cluster.run()
    for index in (1, 2, 3):
        sent = [a.message for lst in cluster.nodes[index].action_lists for a in lst
                if isinstance(a, Send)]
        assert not any(isinstance(m, Prepare) and m.view == 0 for m in sent)
        assert any(isinstance(m, ViewChange) and m.new_view == 1 for m in sent)
    # The new primary proposes the request again, validly, in view 1.
    for index in range(4):
        assert [e.view for e in cluster.nodes[index].executed] == [1]
        assert cluster.nodes[index].executed[0].payload != bad


def test_commit_certificate_is_accepted_by_the_ledger_block_certificate() -> None:
    cluster = Cluster(real_crypto=True)
    cluster.submit(0)
    cluster.run()
    execute: Execute = cluster.nodes[2].executed[0]
    proof = execute.certificate
    cert = CommitCertificate(proof.seq, proof.view, proof.digest, proof.signatures)
    assert cert.verify(CHAIN, list(cluster.validators)) is None
    assert proof.digest == execute.digest and proof.seq == 1


def test_every_signature_is_persisted_in_the_guard_before_it_is_sent() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2)
    for number in range(5):
        cluster.submit(number)
        cluster.run()
    for node in cluster.nodes:
        guarded: set[tuple[str, int, int]] = set()
        for actions in node.action_lists:
            for action in actions:
                if isinstance(action, Persist) and isinstance(action.record, GuardRecord):
                    r = action.record
                    guarded.add((r.domain, r.view, r.seq))
                elif isinstance(action, Send) and action.message.sender == node.index:
                    m = action.message
                    if isinstance(m, Checkpoint):
                        key = ("checkpoint", 0, m.seq)
                    elif isinstance(m, ViewChange):
                        key = ("view-change", m.new_view, 0)
                    elif isinstance(m, PrePrepare | Prepare | Commit):
                        key = (m.kind, m.view, m.seq)
                    else:
                        key = ("new-view", m.view, 0)
                    assert key in guarded, f"replica {node.index} sent {key} before persisting it"


def test_checkpoints_become_stable_move_the_watermarks_and_collect_garbage() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=4)
    for number in range(5):
        cluster.submit(number)
        cluster.run()
    for index in range(4):
        replica = cluster.replica(index)
        assert replica.low_seq == 4
        assert replica.stable_proof.seq == 4 and len(replica.stable_proof.checkpoints) >= 3
        assert min(replica.slots, default=5) > 4
        assert all(seq > 4 for seq in replica.checkpoint_votes)
    assert [e.seq for e in cluster.nodes[3].executed] == [1, 2, 3, 4, 5]


def test_lost_checkpoints_pin_the_high_watermark_until_a_view_change_repeats_them() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=2, pipeline_window=2)
    # Checkpoint messages are lost, so the low watermark cannot move past 0.
    cluster.filter = lambda src, dst, m: None if isinstance(m, Checkpoint) else m
    for number in range(4):
        cluster.submit(number)
        cluster.run()
    assert [b.seq for b in cluster.nodes[0].builds] == [1, 2]
    cluster.filter = None
    # Stuck with work pending: the view change repeats the checkpoints and unblocks it.
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    assert all(cluster.replica(i).low_seq >= 2 for i in range(4))
    assert all(cluster.requests_executed(i) == [request(n) for n in range(4)] for i in range(4))


def test_messages_signed_by_a_non_validator_change_nothing() -> None:
    cluster = Cluster()
    outsider = cluster.keys.make()
    from dataclasses import replace

    from consensus.events import MessageReceived
    from consensus.messages import signed_bytes
    from consensus.sim_env import make_payload

    payload = make_payload(1, 0, [request(9)])
    from ledger.crypto import sha256

    forged = PrePrepare(0, 1, sha256(payload), payload, 0, bytes(64))
    forged = replace(forged, signature=outsider.sign(signed_bytes(forged, CHAIN)))
    actions = cluster.replica(1).step(MessageReceived(0, forged))
    assert not any(isinstance(a, Send) for a in actions)
    assert 1 not in cluster.replica(1).slots or cluster.replica(1).slots[1].pre_prepare is None


def test_build_proposal_carries_the_requests_in_arrival_order() -> None:
    cluster = Cluster(batch_requests_max=2)
    cluster.submit(7)
    cluster.submit(3)
    builds = cluster.nodes[0].builds
    assert builds == [BuildProposal(0, 1, (request(7), request(3)))]


def test_a_batch_of_requests_is_the_same_as_receiving_them_one_by_one() -> None:
    one_by_one, batched = Cluster(batch_requests_max=3), Cluster(batch_requests_max=3)
    numbers = [5, 1, 5, 9, 2, 4, 8]  # a duplicate is ignored either way
    for number in numbers:
        one_by_one.submit(number)
    for index in range(4):
        batched.step(index, RequestsReceived(tuple(request(n) for n in numbers)))
    for cluster in (one_by_one, batched):
        cluster.run()
        cluster.fire(BATCH_TIMER, [0])
        cluster.run()
    assert [b.requests for b in batched.nodes[0].builds] == \
        [b.requests for b in one_by_one.nodes[0].builds]
    assert batched.requests_executed(2) == one_by_one.requests_executed(2) == [
        request(n) for n in (5, 1, 9, 2, 4, 8)]
