"""Every view-change path the issue names, driven by hand."""

from __future__ import annotations

from dataclasses import replace

from consensus.events import MessageReceived, Send, SetTimer
from consensus.messages import (
    NULL_DIGEST,
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
)
from consensus.replica import PROGRESS_TIMER, REQUEST_TIMER
from consensus.sim_env import make_payload
from ledger.crypto import sha256
from tests.consensus.cluster import Cluster, request


def sent(cluster: Cluster, index: int) -> list[object]:
    return [a.message for lst in cluster.nodes[index].action_lists for a in lst if isinstance(a, Send)]


def test_primary_crash_before_pre_prepare_commits_in_next_view() -> None:
    cluster = Cluster()
    cluster.crash(0)
    cluster.submit(0)
    cluster.run()
    assert all(node.executed == [] for node in cluster.nodes)
    assert cluster.fire(PROGRESS_TIMER) == [1, 2, 3]
    cluster.run()
    for index in (1, 2, 3):
        replica = cluster.replica(index)
        assert (replica.view, replica.in_view_change) == (1, False)
        assert cluster.requests_executed(index) == [request(0)]
        assert cluster.nodes[index].executed[0].view == 1


def test_primary_crash_after_prepare_commits_the_prepared_digest_in_next_view() -> None:
    cluster = Cluster()
    # Commits are lost: replicas prepare seq 1 but cannot commit it in view 0.
    cluster.filter = lambda src, dst, m: None if isinstance(m, Commit) else m
    cluster.submit(0)
    cluster.run()
    prepared = {cluster.replica(i).slots[1].prepared.digest for i in (1, 2, 3)}  # type: ignore[union-attr]
    assert len(prepared) == 1
    assert all(node.executed == [] for node in cluster.nodes)
    cluster.crash(0)
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    for index in (1, 2, 3):
        executed = cluster.nodes[index].executed
        assert [e.digest for e in executed] == list(prepared)
        assert executed[0].view == 1  # committed again, in the new view, same digest


def test_primary_crash_during_checkpoint_keeps_the_stable_checkpoint_and_goes_on() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=4)
    cluster.submit(0)
    cluster.run()
    # Seq 2 executes, but the checkpoint messages of seq 2 are lost while the primary dies.
    cluster.filter = lambda src, dst, m: None if isinstance(m, Checkpoint) else m
    cluster.submit(1)
    cluster.run()
    assert all(cluster.replica(i).low_seq == 0 for i in range(4))
    cluster.crash(0)
    cluster.filter = None
    cluster.submit(2, to=[1, 2, 3])
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    for index in (1, 2, 3):
        replica = cluster.replica(index)
        assert replica.view == 1 and not replica.in_view_change
        assert replica.low_seq == 2  # the view change repeated the checkpoints
        assert cluster.requests_executed(index) == [request(0), request(1), request(2)]


def test_equivocating_primary_is_reported_and_replaced_without_a_fork() -> None:
    cluster = Cluster()
    alternative = make_payload(1, 0, [request(42)])
    forged_pp: list[PrePrepare] = []

    def equivocate(src: int, dst: int, message: object) -> object:
        if src == 0 and isinstance(message, PrePrepare) and dst == 3:
            forged = cluster.sign_as(0, replace(message, digest=sha256(alternative), payload=alternative))
            assert isinstance(forged, PrePrepare)
            forged_pp.append(forged)
            return forged
        return message

    cluster.filter = equivocate  # type: ignore[assignment]
    cluster.submit(0)
    cluster.run()
    cluster.filter = None
    # Replica 3 also learns the pre-prepare the others saw: that is evidence.
    original = next(m for m in sent(cluster, 0) if isinstance(m, PrePrepare))
    cluster.step(3, MessageReceived(0, original))
    evidence = cluster.nodes[3].evidence
    assert len(evidence) == 1 and evidence[0].offender == 0
    assert {evidence[0].first, evidence[0].second} == {original, forged_pp[0]}
    # Replicas 1 and 2 and the primary hold the original; nothing forked, and after a
    # view change every honest replica runs the same history.
    cluster.crash(0)
    cluster.submit(1, to=[1, 2, 3])
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    histories = {tuple(cluster.digests(i)) for i in (1, 2, 3)}
    assert len(histories) == 1
    assert sha256(alternative) not in histories.pop()


def test_two_view_changes_in_a_row_reach_a_live_primary_with_doubled_timeout() -> None:
    cluster = Cluster(n=7)
    cluster.crash(0)
    cluster.crash(1)  # the primary of view 1 is dead too
    cluster.submit(0)
    cluster.run()
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    assert all(cluster.replica(i).view == 1 and cluster.replica(i).in_view_change for i in range(2, 7))
    # Having a quorum of view changes for view 1 but no NEW-VIEW, they move to view 2.
    delays = [t for t in cluster.nodes[2].action_lists[-1] if isinstance(t, SetTimer)]
    first_delay = cluster.nodes[2].timers[PROGRESS_TIMER][1]
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    for index in range(2, 7):
        replica = cluster.replica(index)
        assert (replica.view, replica.in_view_change) == (2, False)
        assert cluster.requests_executed(index) == [request(0)]
    del delays
    assert first_delay == 2 * cluster.settings["view_timeout_ticks"]


def test_view_timeout_doubles_per_failed_view_and_resets_after_progress() -> None:
    cluster = Cluster(backoff_exponent_max=3)
    cluster.crash(0)
    cluster.filter = lambda src, dst, m: None if isinstance(m, NewView) else m  # NEW-VIEWs lost
    cluster.submit(0)
    observed = []
    for _ in range(5):
        cluster.fire(PROGRESS_TIMER)
        cluster.run()
        observed.append(cluster.nodes[2].timers[PROGRESS_TIMER][1])
    base = cluster.settings["view_timeout_ticks"]
    assert observed == [2 * base, 4 * base, 8 * base, 8 * base, 8 * base]
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    assert cluster.requests_executed(2) == [request(0)]
    cluster.submit(1, to=[1, 2, 3])
    assert cluster.nodes[2].timers[PROGRESS_TIMER][1] == base  # progress reset the backoff


def test_f_plus_one_view_changes_for_a_higher_view_make_a_replica_join() -> None:
    cluster = Cluster()
    cluster.submit(0, to=[1, 2])  # only replicas 1 and 2 know of the request
    cluster.crash(0)
    cluster.fire(PROGRESS_TIMER, [1, 2])
    assert cluster.replica(3).view == 0
    cluster.run()
    own = [m for m in sent(cluster, 3) if isinstance(m, ViewChange)]
    assert [m.new_view for m in own] == [1]  # joined without its own timer firing
    assert cluster.replica(3).view == 1 and not cluster.replica(3).in_view_change


def test_a_single_view_change_does_not_make_others_join() -> None:
    cluster = Cluster()
    cluster.submit(0, to=[1])
    cluster.crash(0)
    cluster.fire(PROGRESS_TIMER, [1])
    cluster.run()
    assert cluster.replica(2).view == 0 and cluster.replica(3).view == 0


def test_a_censored_request_triggers_a_view_change() -> None:
    cluster = Cluster()
    # The primary's node never hands it request 5; the other nodes know it. Other requests flow.
    cluster.submit(5, to=[1, 2, 3])
    cluster.submit(0)
    cluster.run()
    assert cluster.requests_executed(1) == [request(0)]
    assert cluster.fire(REQUEST_TIMER, [1, 2, 3]) == [1, 2, 3]
    cluster.run()
    for index in (1, 2, 3):
        assert cluster.replica(index).view == 1
        assert cluster.requests_executed(index) == [request(0), request(5)]


def test_new_view_fills_unprepared_gaps_with_null_proposals() -> None:
    cluster = Cluster(pipeline_window=2, batch_requests_max=1)
    # Seq 1's prepares are lost (nobody prepares it); seq 2 prepares but cannot commit.
    cluster.filter = lambda src, dst, m: (
        None if (isinstance(m, Prepare) and m.seq == 1) or isinstance(m, Commit) else m)
    cluster.submit(0)
    cluster.submit(1)
    cluster.run()
    assert all(cluster.replica(i).slots[2].prepared is not None for i in (1, 2, 3))
    assert all(cluster.replica(i).slots[1].prepared is None for i in (1, 2, 3))
    cluster.crash(0)
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    new_view = next(m for m in sent(cluster, 1) if isinstance(m, NewView))
    assert [(pp.seq, pp.digest == NULL_DIGEST) for pp in new_view.pre_prepares] == [(1, True), (2, False)]
    for index in (1, 2, 3):
        executed = cluster.nodes[index].executed
        assert executed[0].digest == NULL_DIGEST and executed[0].payload == b""
        assert request(1) in cluster.requests_executed(index)
        # Request 0 was only in the lost seq-1 proposal: it is proposed again.
        assert request(0) in cluster.requests_executed(index)


def test_a_new_view_that_drops_a_prepared_request_is_rejected() -> None:
    cluster = Cluster()
    cluster.filter = lambda src, dst, m: None if isinstance(m, Commit) else m
    cluster.submit(0)
    cluster.run()
    cluster.crash(0)
    held: list[NewView] = []
    cluster.filter = lambda src, dst, m: (held.append(m), None)[1] if isinstance(m, NewView) else m  # type: ignore[func-returns-value]
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    honest = held[0]
    # The new primary (1) lies: a null proposal where seq 1 was prepared.
    null_pp = cluster.sign_as(1, PrePrepare(1, 1, NULL_DIGEST, b"", 1, bytes(64)))
    forged = cluster.sign_as(1, replace(honest, pre_prepares=(null_pp,)))
    actions = cluster.replica(2).step(MessageReceived(1, forged))
    assert cluster.replica(2).in_view_change
    assert not any(isinstance(a, Send) and isinstance(a.message, Prepare) for a in actions)
    cluster.replica(2).step(MessageReceived(1, honest))
    assert not cluster.replica(2).in_view_change


def test_a_new_view_from_a_replica_that_is_not_the_new_primary_is_ignored() -> None:
    cluster = Cluster()
    cluster.crash(0)
    cluster.submit(0)
    held: list[NewView] = []
    cluster.filter = lambda src, dst, m: (held.append(m), None)[1] if isinstance(m, NewView) else m  # type: ignore[func-returns-value]
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    forged = cluster.sign_as(2, replace(held[0], sender=2))
    cluster.replica(3).step(MessageReceived(2, forged))
    assert cluster.replica(3).in_view_change


def test_a_replica_that_missed_the_new_view_gets_it_again_by_repeating_its_view_change() -> None:
    cluster = Cluster()
    cluster.crash(0)
    cluster.submit(0)
    # Replica 3 hears neither the others' view changes nor the NEW-VIEW.
    cluster.filter = lambda src, dst, m: None if dst == 3 and isinstance(m, ViewChange | NewView) else m
    cluster.fire(PROGRESS_TIMER)
    cluster.run()
    assert cluster.replica(1).view == 1 and not cluster.replica(1).in_view_change
    assert cluster.replica(3).in_view_change and cluster.replica(3).view == 1
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER, [3])  # too few view changes to move on: it repeats its own
    cluster.run()
    assert cluster.replica(3).view == 1 and not cluster.replica(3).in_view_change
    assert cluster.digests(3) == cluster.digests(1) and len(cluster.digests(3)) == 1


def test_a_replica_stuck_in_an_older_view_change_is_brought_into_the_current_view() -> None:
    cluster = Cluster(n=7)
    cluster.crash(0)
    cut_off = {6}
    cluster.filter = lambda src, dst, m: (
        None if dst in cut_off and isinstance(m, ViewChange | NewView) else m)
    cluster.submit(0)
    cluster.fire(PROGRESS_TIMER)
    cluster.run()  # replicas 1..5 install view 1; replica 6 waits alone in its view change
    assert cluster.replica(6).in_view_change and cluster.replica(6).view == 1
    # View 1 stops making progress (prepares lost): replicas 1..5 move on to view 2.
    cluster.filter = lambda src, dst, m: (
        None if (dst in cut_off and isinstance(m, ViewChange | NewView)) or isinstance(m, Prepare)
        else m)
    cluster.submit(1, to=[1, 2, 3, 4, 5])
    cluster.run()
    cluster.fire(PROGRESS_TIMER, [1, 2, 3, 4, 5])
    cluster.filter = lambda src, dst, m: (
        None if dst in cut_off and isinstance(m, ViewChange | NewView) else m)
    cluster.run()
    assert all(cluster.replica(i).view == 2 and not cluster.replica(i).in_view_change
               for i in range(1, 6))
    # The votes of view 2 took it into a view change for view 2, whose NEW-VIEW it missed.
    assert cluster.replica(6).view == 2 and cluster.replica(6).in_view_change
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER, [6])  # it repeats its view change ...
    cluster.run()  # ... and the primary of view 2 answers with its NEW-VIEW
    assert cluster.replica(6).view == 2 and not cluster.replica(6).in_view_change


def test_a_replica_jumping_to_a_new_view_forgets_proposals_of_the_old_one() -> None:
    cluster = Cluster(n=7)
    # Seq 1 (request 0, known only to replicas 0 and 6) is proposed but never prepared;
    # replica 6 misses every VIEW-CHANGE.
    cluster.filter = lambda src, dst, m: (
        None if isinstance(m, Prepare) or (dst == 6 and isinstance(m, ViewChange)) else m)
    cluster.submit(0, to=[0, 6])
    cluster.run()
    assert cluster.replica(6).in_flight == {request(0): 1}
    cluster.crash(0)
    cluster.fire(PROGRESS_TIMER, [1, 2, 3, 4, 5])
    cluster.filter = lambda src, dst, m: None if dst == 6 and isinstance(m, ViewChange) else m
    cluster.run()
    replica = cluster.replica(6)
    assert replica.view == 1 and not replica.in_view_change  # jumped on the NEW-VIEW
    # The old proposal is void, so request 0 is waiting again: when the new primary never
    # proposes it, replica 6 sees censorship.
    assert replica.in_flight == {}
    cluster.fire(REQUEST_TIMER, [6])
    assert replica.view == 2 and replica.in_view_change


def test_a_backlog_of_full_blocks_in_arrival_order_is_not_taken_for_censorship() -> None:
    cluster = Cluster()  # one request per block: every block is full
    for number in range(4):
        cluster.submit(number)
    cluster.run(max_messages=30)  # the primary has ordered request 0 only
    assert all(len(cluster.requests_executed(i)) == 1 for i in (1, 2, 3))
    cluster.fire(REQUEST_TIMER, [1, 2, 3])  # re-armed: requests 1..3 are now the old ones
    cluster.run(max_messages=30)  # request 1 ordered; 2 and 3 waited a whole timeout
    assert all(len(cluster.requests_executed(i)) == 2 for i in (1, 2, 3))
    assert cluster.fire(REQUEST_TIMER, [1, 2, 3]) == [1, 2, 3]
    assert all(not cluster.replica(i).in_view_change for i in (1, 2, 3))
    cluster.run()
    for index in (1, 2, 3):
        assert cluster.replica(index).view == 0
        assert cluster.requests_executed(index) == [request(n) for n in range(4)]


def test_later_requests_jumping_the_queue_still_count_as_censorship() -> None:
    cluster = Cluster()  # full blocks, but request 9 is passed over for later ones
    cluster.submit(9, to=[1, 2, 3])
    for number in range(3):
        cluster.submit(number)
    cluster.run()
    assert cluster.requests_executed(1) == [request(n) for n in range(3)]
    assert cluster.fire(REQUEST_TIMER, [1, 2, 3]) == [1, 2, 3]
    cluster.run()
    for index in (1, 2, 3):
        assert cluster.replica(index).view == 1
        assert request(9) in cluster.requests_executed(index)


def test_a_replica_alone_one_view_ahead_does_not_strand_the_others_view_change() -> None:
    """Seen on real nodes: a replica changed view alone; later the others' view change
    went to a dead primary, the lone replica moved on first, and then no view had a quorum
    of view changes. Counting view changes for this view or any higher one keeps the
    others' timer running, so they follow it instead of waiting for each other forever."""
    cluster = Cluster()
    cluster.submit(0)
    cluster.run()
    cluster.submit(1, to=[3])  # only replica 3 ever hears of request 1
    assert cluster.fire(PROGRESS_TIMER, [3]) == [3]
    cluster.run()
    assert (cluster.replica(3).view, cluster.replica(3).in_view_change) == (1, True)
    assert [cluster.replica(i).view for i in (0, 1, 2)] == [0, 0, 0]
    cluster.crash(1)  # the primary of view 1 goes down, so view 0 stalls too
    cluster.submit(2, to=[0, 2, 3])
    cluster.run()
    assert cluster.fire(PROGRESS_TIMER, [2]) == [2]
    cluster.run()
    # Replica 0 joined on f+1 view changes for view 1: three of them, a dead primary.
    assert all(cluster.replica(i).view == 1 and cluster.replica(i).in_view_change
               for i in (0, 2, 3))
    # The lone replica's timer was armed first, so it moves on to view 2 first...
    assert cluster.fire(PROGRESS_TIMER, [3]) == [3]
    cluster.run()
    assert cluster.replica(3).view == 2
    # ...and the others, now holding two view changes for view 1 and one for view 2, follow.
    assert sorted(cluster.fire(PROGRESS_TIMER, [0, 2])) == [0, 2]
    cluster.run()
    for index in (0, 2, 3):
        replica = cluster.replica(index)
        assert (replica.view, replica.in_view_change) == (2, False)
        # Request 1 reached no primary (this harness does not gossip); request 2 did.
        assert cluster.requests_executed(index) == [request(0), request(2)]


def test_a_replica_left_in_an_older_view_follows_f_plus_one_replicas_voting_in_a_later_one() -> None:
    """Seen on real nodes: a wiped node restarts in view 0 while the others run view 1. It
    catches up by fetching, so no timer of its own ever fires, and it never hears the view
    it should vote in. Votes signed in a later view by f+1 replicas (one at least honest,
    hence a NEW-VIEW exists) make it ask for that view; the primary repeats its NEW-VIEW."""
    cluster = Cluster()
    cluster.crash(0)
    cluster.submit(0, to=[1, 2, 3])
    cluster.fire(PROGRESS_TIMER, [1, 2, 3])
    cluster.run()
    assert all(cluster.replica(i).view == 1 and not cluster.replica(i).in_view_change
               for i in (1, 2, 3))
    cluster.nodes[0].records = []  # wiped: it remembers no view
    cluster.restart(0)
    assert cluster.replica(0).view == 0
    cluster.submit(1)
    cluster.run()
    replica = cluster.replica(0)
    assert (replica.view, replica.in_view_change) == (1, False)
    cluster.submit(2)
    cluster.run()
    assert any(isinstance(m, Commit) and m.view == 1 for m in sent(cluster, 0))  # it votes


def test_votes_of_f_replicas_in_a_later_view_move_nobody() -> None:
    cluster = Cluster()
    cluster.submit(0)
    cluster.run()
    # Replica 3 (Byzantine, or alone) signs votes for view 5: one sender is not f+1.
    for seq in (5, 6):
        vote = cluster.sign_as(3, Prepare(5, seq, sha256(b"x"), 3, bytes(64)))
        for index in (0, 1, 2):
            cluster.step(index, MessageReceived(3, vote))
    assert all(cluster.replica(i).view == 0 and not cluster.replica(i).in_view_change
               for i in (0, 1, 2))
