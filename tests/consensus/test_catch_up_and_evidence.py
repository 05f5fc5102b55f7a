"""Catch-up through verified commit certificates, and evidence of equivocation."""

from __future__ import annotations

from dataclasses import replace

from consensus.certificates import check_commit_proof, commit_proof_signatures
from consensus.events import CommitProof, CommittedFetched, MessageReceived, Send
from consensus.messages import NULL_DIGEST, Checkpoint, Commit, Prepare, ViewChange
from consensus.replica import FETCH_TIMER, PROGRESS_TIMER
from consensus.sim_env import make_payload
from ledger.crypto import sha256
from tests.consensus.cluster import Cluster, request


def commit_without_replica_3(cluster: Cluster, requests: int) -> None:
    """Replica 3 is down while the others commit `requests` requests; then it restarts."""
    cluster.crash(3)
    for number in range(requests):
        cluster.submit(number, to=[0, 1, 2])
        cluster.run()
    cluster.restart(3)


def test_a_replica_that_missed_blocks_fetches_them_with_certificates_and_executes() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=4)
    commit_without_replica_3(cluster, 6)
    cluster.submit(6)
    cluster.run()
    # Replica 3 sees only messages above its watermarks; with work pending and no
    # progress it asks to change view, and the others answer with their status.
    cluster.fire(PROGRESS_TIMER, [3])
    cluster.run()
    cluster.fire(FETCH_TIMER, [3])
    cluster.run()
    assert cluster.nodes[3].fetches, "replica 3 never asked for the blocks it missed"
    assert cluster.digests(3) == cluster.digests(0)
    assert len(cluster.digests(3)) == 7


def test_far_behind_replica_fetches_at_once_beyond_its_watermarks() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=2)
    commit_without_replica_3(cluster, 8)
    cluster.submit(8)
    cluster.run()
    cluster.fire(PROGRESS_TIMER, [3])
    cluster.run()  # no fetch timer needed: far beyond the window it fetches at once
    assert cluster.nodes[3].fetches
    assert cluster.digests(3) == cluster.digests(0)


def test_an_idle_cluster_still_tells_a_lagging_replica_how_far_it_got() -> None:
    cluster = Cluster(checkpoint_interval_seqs=8, watermark_window_seqs=16)
    commit_without_replica_3(cluster, 3)
    cluster.submit(0, to=[3])  # replica 3 thinks request 0 is still pending
    cluster.fire(PROGRESS_TIMER, [3])  # no progress: it asks for a view change ...
    cluster.run()  # ... and the others answer with a signed status checkpoint
    cluster.fire(FETCH_TIMER, [3])
    cluster.run()
    assert cluster.digests(3) == cluster.digests(0) and len(cluster.digests(3)) == 3
    assert cluster.replica(0).view == 0  # one replica alone did not move the others


def _fetched(cluster: Cluster) -> CommittedFetched:
    done = cluster.nodes[0].executed[0]
    return CommittedFetched(1, done.payload, done.certificate)


def _lagging_cluster() -> Cluster:
    cluster = Cluster()
    cluster.crash(3)
    cluster.submit(0, to=[0, 1, 2])
    cluster.run()
    cluster.restart(3)
    cluster.replica(3).fetch_target = 1  # as if it had asked for seq 1
    return cluster


def test_fetched_block_whose_payload_does_not_match_the_certificate_is_rejected() -> None:
    cluster = _lagging_cluster()
    good = _fetched(cluster)
    cluster.step(3, replace(good, payload=make_payload(1, 0, [request(77)])))
    assert cluster.nodes[3].executed == []
    cluster.step(3, good)
    assert cluster.digests(3) == cluster.digests(0)


def test_fetched_block_with_too_few_or_forged_signatures_is_rejected() -> None:
    cluster = _lagging_cluster()
    good = _fetched(cluster)
    proof = good.certificate
    short = replace(proof, signatures=proof.signatures[:2])
    forged = CommitProof(proof.view, 1, proof.digest,
                         tuple((key, bytes(64)) for key, _ in proof.signatures))
    duplicated = replace(proof, signatures=(proof.signatures[0],) * 3)
    for bad in (short, forged, duplicated):
        cluster.step(3, replace(good, certificate=bad))
    assert cluster.nodes[3].executed == []
    cluster.step(3, good)
    assert len(cluster.nodes[3].executed) == 1


def test_two_prepares_for_different_digests_from_one_validator_are_evidence() -> None:
    cluster = Cluster()
    cluster.auto_validate = False
    cluster.submit(0)
    cluster.run()
    digest = cluster.replica(1).slots[1].pre_prepare.digest  # type: ignore[union-attr]
    first = cluster.sign_as(2, Prepare(0, 1, digest, 2, bytes(64)))
    second = cluster.sign_as(2, Prepare(0, 1, sha256(b"other"), 2, bytes(64)))
    cluster.step(1, MessageReceived(2, first))
    cluster.step(1, MessageReceived(2, first))  # a duplicate is not evidence
    assert cluster.nodes[1].evidence == []
    cluster.step(1, MessageReceived(2, second))
    [evidence] = cluster.nodes[1].evidence
    assert (evidence.offender, evidence.first, evidence.second) == (2, first, second)
    cluster.step(1, MessageReceived(2, second))
    assert len(cluster.nodes[1].evidence) == 1  # reported once


def test_conflicting_commits_and_checkpoints_are_evidence_but_unsigned_ones_are_not() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2)
    a = cluster.sign_as(3, Commit(0, 1, sha256(b"a"), 3, bytes(64)))
    b = cluster.sign_as(3, Commit(0, 1, sha256(b"b"), 3, bytes(64)))
    c1 = cluster.sign_as(3, Checkpoint(2, sha256(b"s1"), 3, bytes(64)))
    c2 = cluster.sign_as(3, Checkpoint(2, sha256(b"s2"), 3, bytes(64)))
    unsigned = Commit(0, 1, sha256(b"c"), 3, bytes(64))
    cluster.step(1, MessageReceived(3, a))
    cluster.step(1, MessageReceived(3, unsigned))
    assert cluster.nodes[1].evidence == []
    cluster.step(1, MessageReceived(3, b))
    cluster.step(1, MessageReceived(3, c1))
    cluster.step(1, MessageReceived(3, c2))
    assert [(e.offender, type(e.second).__name__) for e in cluster.nodes[1].evidence] == [
        (3, "Commit"), (3, "Checkpoint")]


def test_a_restarted_replica_fills_the_gap_below_a_commit_certificate_without_a_view_change() -> None:
    cluster = Cluster(checkpoint_interval_seqs=8, watermark_window_seqs=16)
    commit_without_replica_3(cluster, 2)
    cluster.submit(2)
    cluster.run()  # replica 3 takes part in seq 3 and holds its certificate, but not 1..2
    assert cluster.nodes[3].executed == []
    cluster.fire(FETCH_TIMER, [3])
    cluster.run()
    assert cluster.digests(3) == cluster.digests(0) and len(cluster.digests(3)) == 3
    assert all(not isinstance(m, ViewChange) for lst in cluster.nodes[3].action_lists
               for a in lst if isinstance(a, Send) for m in [a.message])


def test_a_certificate_above_a_never_committed_gap_does_not_stop_the_view_change() -> None:
    # With pipelining, seq 2 can commit while seq 1 never does (its prepares are lost).
    cluster = Cluster(pipeline_window=2, checkpoint_interval_seqs=8, watermark_window_seqs=16)
    cluster.filter = lambda src, dst, m: None if isinstance(m, Prepare) and m.seq == 1 else m
    cluster.submit(0)
    cluster.submit(1)
    cluster.run()
    assert all(cluster.replica(i).slots[2].committed is not None for i in range(4))
    assert all(node.executed == [] for node in cluster.nodes)
    cluster.filter = None
    cluster.fire(PROGRESS_TIMER)  # nobody is ahead: this is the primary's fault
    cluster.run()
    for index in range(4):
        assert cluster.replica(index).view == 1
        assert cluster.digests(index)[0] == NULL_DIGEST  # seq 1 was never committed
        assert sorted(cluster.requests_executed(index)) == sorted([request(0), request(1)])


def test_a_replica_catching_up_is_handed_the_stable_checkpoint_and_votes_again() -> None:
    cluster = Cluster(checkpoint_interval_seqs=2, watermark_window_seqs=4)
    cluster.crash(3)
    for number in range(6):
        cluster.submit(number, to=[0, 1, 2])
        cluster.run()
    assert cluster.replica(0).low_seq == 6
    cluster.restart(3)
    # The node catches up on its own (e.g. from peers' announced tips): seqs 1 and 2.
    for seq in (1, 2):
        done = cluster.nodes[0].executed[seq - 1]
        cluster.step(3, CommittedFetched(seq, done.payload, done.certificate))
    cluster.run()  # its checkpoint for seq 2 reaches the others, who are at 6 ...
    replica = cluster.replica(3)
    assert replica.low_seq == 6  # ... and answer with their stable checkpoint's quorum
    cluster.fire(FETCH_TIMER, [3])
    cluster.run()
    assert cluster.digests(3) == cluster.digests(0)
    cluster.submit(6)
    cluster.run()  # seq 7 lies above its old high watermark (4): it takes part again
    assert any(isinstance(a, Send) and isinstance(a.message, Prepare) and a.message.seq == 7
               for lst in cluster.nodes[3].action_lists for a in lst)
    assert len(cluster.digests(3)) == 7


def test_a_replica_that_caught_up_holds_no_slots_below_its_stable_checkpoint() -> None:
    # A node joining a long, now quiet chain learns the network's stable checkpoint first,
    # then executes thousands of fetched seqs below it; no new checkpoint comes to collect
    # them. Holding every one (payload and certificate) grew a syncing node's memory and
    # made each replica step scan them all (100k blocks: +250 MB, the loop thread 73% in
    # that scan).
    cluster = Cluster(checkpoint_interval_seqs=4, watermark_window_seqs=8, fetch_seqs_max=4)
    commit_without_replica_3(cluster, 40)
    cluster.submit(40)
    cluster.run()
    cluster.fire(PROGRESS_TIMER, [3])
    cluster.run()
    lagger = cluster.replica(3)
    assert lagger.low_seq == 40 and lagger.last_executed < 40  # learnt before it executed
    for _ in range(20):  # a fetch of 4 seqs per round
        cluster.fire(FETCH_TIMER, [3])
        cluster.run()
    assert cluster.digests(3) == cluster.digests(0) and len(cluster.digests(3)) == 41
    assert sorted(lagger.slots) == [41]


def test_commit_proof_signatures_are_exactly_what_the_certificate_check_verifies() -> None:
    # The node verifies these on its pool before feeding a fetched range, so the replica's
    # check finds them there: they must be the very bytes it checks, and none for a proof
    # refused before any signature is checked (a peer cannot make it verify more).
    cluster = _lagging_cluster()
    proof = _fetched(cluster).certificate
    checked: list[tuple[bytes, bytes, bytes]] = []

    def recording(key: bytes, message: bytes, signature: bytes) -> bool:
        checked.append((key, message, signature))
        return True

    config = replace(cluster.replica(3).config, verify=recording)
    assert check_commit_proof(config, proof) is None
    assert commit_proof_signatures(config, proof) == checked and len(checked) == 3
    stranger = (sha256(b"not a validator"), bytes(64))
    for refused in (replace(proof, signatures=proof.signatures[:2]),
                    replace(proof, signatures=(proof.signatures[0],) * 3),
                    replace(proof, signatures=proof.signatures * 50),
                    replace(proof, signatures=(*proof.signatures[:2], stranger))):
        checked.clear()
        assert check_commit_proof(config, refused) is not None and checked == []
        assert commit_proof_signatures(config, refused) == []
