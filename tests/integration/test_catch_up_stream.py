"""A lagging node fetches each range of history once and never runs far ahead of execution.

Two real Nodes in one process: a source that commits certified (empty) blocks, and a
fresh node fed the source's own `fetched` answers; a recording transport stands in for p2p.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import node as node_module
from consensus.events import CommittedFetched
from consensus.messages import VALIDATORS_MAX, MessageError
from ledger.block import Block, CommitCertificate, commit_vote_bytes
from ledger.crypto import KeyPair, sha256
from ledger.network_setup import init_network
from ledger.tx import Tx, sign_tx
from node import (
    FETCH_AHEAD_SEQS_MAX,
    FETCH_SEQS_MAX,
    FETCHED_FRAMES_PER_PEER_MAX,
    STREAM_ANSWER_WAIT_S,
    Node,
)
from tests.counting_verify import CountingVerify

HISTORY_SEQS = FETCH_AHEAD_SEQS_MAX + 2 * FETCH_SEQS_MAX


class RecordingPeers:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []

    def send(self, peer: bytes, frame: dict[str, Any]) -> None:
        self.sent.append((peer, frame))

    def broadcast(self, frame: dict[str, Any]) -> None:
        pass

    def connected_peers(self) -> list[bytes]:
        return []

    def fetches_to(self, peer: bytes) -> list[tuple[int, int]]:
        return [(f["from"], f["to"]) for p, f in self.sent if p == peer and f["k"] == "fetch"]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node, list[KeyPair]]]:
    layout = init_network(tmp_path / "net", 4)
    for home in layout.homes[:2]:
        # Nodes with verify threads, as on machines of their own: these tests follow
        # certificate checks from the loop onto the threads.
        config = json.loads((home / "config.json").read_text())
        config["verify_threads"] = 2
        (home / "config.json").write_text(json.dumps(config))
    keys = [KeyPair.load(home / "node_key.json") for home in layout.homes]
    source, lagging = Node(layout.homes[0]), Node(layout.homes[1])
    try:
        yield source, lagging, keys
    finally:
        for made in (source, lagging):
            made.verifier.close()
            made._record_writer.shutdown(wait=True)
            made.store.close()


def commit_history(source: Node, keys: list[KeyPair], count: int,
                   txs_of: Callable[[int], list[Tx]] = lambda seq: []) -> None:
    """`count` certified blocks (empty unless `txs_of(seq)` gives their txs)."""
    domain = source.epochs.current.domain(source.chain_id)
    for seq in range(1, count + 1):
        spec = source.chain.build(0, source.key.public_key, txs_of(seq),
                                  int(time.time() * 1000))
        vote = commit_vote_bytes(domain, 0, seq, spec.block.hash)
        signatures = tuple(sorted((k.public_key, k.sign(vote)) for k in keys[:3]))
        source.chain.commit(spec, CommitCertificate(seq, 0, spec.block.hash, signatures))


def transfers(source: Node, seq: int, count: int) -> list[Tx]:
    """`count` signed transfers for block `seq`, each from a sender of its own."""
    return [sign_tx(KeyPair(sha256(f"sender {seq} {i}".encode())), source.chain_id,
                    "tokens", "transfer", 0, {"class_id": "none", "to": "ab" * 20,
                                              "amount": 1}) for i in range(count)]


async def execute_until(node: Node, seq: int, timeout_s: float = 30) -> None:
    """Run the node's job worker until it has executed `seq` (or the timeout passes)."""
    worker = asyncio.create_task(node._job_worker())
    try:
        deadline = time.monotonic() + timeout_s
        while node.executed_seq < seq and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        worker.cancel()


async def reported_until(node: Node, seq: int, timeout_s: float = 30) -> None:
    """Run the node's job worker until its replica has heard that `seq` is executed."""
    worker = asyncio.create_task(node._job_worker())
    try:
        deadline = time.monotonic() + timeout_s
        while (node.replica is None or node.replica.last_executed < seq) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        worker.cancel()


async def take(node: Node, peer: bytes, items: list[dict[str, Any]]) -> None:
    """Deliver a fetched frame and wait until it (and any queued before it) is taken."""
    node._on_fetched(peer, items)
    consumer = node._fetched_consumer
    if consumer is not None:
        await consumer


def answer(source: Node, first: int, last: int) -> list[dict[str, Any]]:
    peers = RecordingPeers()
    source.p2p = peers  # type: ignore[assignment]
    source._serve_fetch(b"asker", {"from": first, "to": last})
    (_, frame), = peers.sent
    items: list[dict[str, Any]] = frame["items"]
    return items


def test_each_range_is_streamed_from_one_peer_and_at_most_the_ahead_limit_waits(
        nodes: tuple[Node, Node, list[KeyPair]]) -> None:
    source, lagging, keys = nodes
    commit_history(source, keys, HISTORY_SEQS)
    first_peer, second_peer = keys[2].public_key, keys[3].public_key
    peers = RecordingPeers()
    lagging.p2p = peers  # type: ignore[assignment]

    async def scenario() -> None:
        lagging._peer_seq[first_peer] = lagging._peer_seq[second_peer] = HISTORY_SEQS
        first_range = answer(source, 1, FETCH_SEQS_MAX)
        await take(lagging, first_peer, first_range)
        # The same range from a second peer moves nothing on: that peer is not asked again.
        await take(lagging, second_peer, first_range)
        assert peers.fetches_to(second_peer) == []
        assert peers.fetches_to(first_peer) == [(FETCH_SEQS_MAX + 1, 2 * FETCH_SEQS_MAX)]
        # Nothing executes yet (no job worker): the stream stops at the ahead limit.
        for _ in range(FETCH_AHEAD_SEQS_MAX // FETCH_SEQS_MAX):
            if lagging._issued_seq() >= FETCH_AHEAD_SEQS_MAX:
                break
            await take(lagging, first_peer, answer(source, *peers.fetches_to(first_peer)[-1]))
        assert lagging._issued_seq() == FETCH_AHEAD_SEQS_MAX and lagging.executed_seq == 0
        # What waits for execution stays decoded: executing it will not decode it again.
        assert len(lagging._decoded) == FETCH_AHEAD_SEQS_MAX
        asked = len(peers.fetches_to(first_peer))
        await take(lagging, first_peer, answer(source, FETCH_AHEAD_SEQS_MAX - 1,
                                               FETCH_AHEAD_SEQS_MAX))  # nothing new
        lagging._on_peer_tip(first_peer, HISTORY_SEQS)  # a tip does not bypass the limit
        assert len(peers.fetches_to(first_peer)) == asked
        # Executing what waits resumes the stream where it stopped.
        await execute_until(lagging, FETCH_AHEAD_SEQS_MAX)
        assert lagging.executed_seq == FETCH_AHEAD_SEQS_MAX
        assert peers.fetches_to(first_peer)[-1][0] == FETCH_AHEAD_SEQS_MAX + 1

    asyncio.run(scenario())
    assert lagging.store.tip()[1] == source.store.block(FETCH_AHEAD_SEQS_MAX).hash  # type: ignore[union-attr]


def test_a_peer_that_connects_is_told_the_tip_at_once_and_a_lagging_node_fetches(
        nodes: tuple[Node, Node, list[KeyPair]]) -> None:
    # Without this a fresh or restarted node on a quiet network waited for the next
    # periodic tip announcement (up to TIP_INTERVAL_S) before fetching anything.
    source, lagging, keys = nodes
    commit_history(source, keys, 3)
    told = RecordingPeers()
    source.p2p = told  # type: ignore[assignment]
    newcomer = keys[1].public_key
    source.on_peer_change(newcomer, True)
    source.on_peer_change(newcomer, False)  # a departure tells nobody anything
    assert told.sent == [(newcomer, {"k": "tip", "seq": source.executed_seq})]

    asking = RecordingPeers()
    lagging.p2p = asking  # type: ignore[assignment]
    lagging.on_peer_message(keys[0].public_key, {"k": "tip", "seq": 3})
    assert asking.fetches_to(keys[0].public_key) == [(1, 3)]


def test_a_block_validated_here_is_committed_from_that_validation_not_run_again(
        nodes: tuple[Node, Node, list[KeyPair]], monkeypatch: pytest.MonkeyPatch) -> None:
    # A backup one block behind has block 1 validated (its speculation) when the commits of
    # blocks 1..3 arrive together. The catch-up run re-validates every block it takes, so
    # block 1 is committed from its speculation and only blocks 2 and 3 form the run.
    source, lagging, keys = nodes
    commit_history(source, keys, 3)
    validated: list[int] = []
    validate = lagging.chain.validate

    def counting_validate(block: Block, txs: Any, now_ms: int | None) -> Any:
        validated.append(block.header.height)
        return validate(block, txs, now_ms)

    monkeypatch.setattr(lagging.chain, "validate", counting_validate)
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    peer = keys[2].public_key

    async def scenario() -> None:
        items = answer(source, 1, 3)
        first = items[0]
        assert await lagging._speculate(first["payload"], first["cert"]["digest"],
                                        now_ms=None) is not None
        lagging._peer_seq[peer] = 3
        await take(lagging, peer, items)
        assert lagging._jobs.qsize() == 3
        await execute_until(lagging, 3)

    asyncio.run(scenario())
    assert lagging.executed_seq == 3
    assert validated == [1, 2, 3]  # the old way: [1, 1, 2, 3]
    assert lagging.store.tip()[1] == source.store.block(3).hash  # type: ignore[union-attr]


def test_fetched_blocks_are_signature_checked_before_their_run_and_only_once(
        nodes: tuple[Node, Node, list[KeyPair]]) -> None:
    # The checks start when a certified range arrives, on the verify pool, while earlier
    # runs execute on the loop thread (a 20k-block sync: +7-21% in three pairs); a range
    # whose certificate fails is not checked at all.
    source, lagging, keys = nodes
    commit_history(source, keys, 2, lambda seq: transfers(source, seq, 3))
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    peer = keys[2].public_key

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        lagging._peer_seq[peer] = 2
        items = answer(source, 1, 2)
        forged = [{**item, "cert": {**item["cert"], "signatures": [
            [key, bytes(64)] for key, _ in item["cert"]["signatures"]]}} for item in items]
        await take(lagging, peer, forged)
        await settle()
        assert lagging.verifier.checked == 0
        await take(lagging, peer, items)
        await settle()
        assert lagging.verifier.checked == 6 and lagging.executed_seq == 0
        await execute_until(lagging, 2)

    asyncio.run(scenario())
    assert lagging.executed_seq == 2 and lagging.verifier.checked == 6
    assert lagging.store.tip()[1] == source.store.block(2).hash  # type: ignore[union-attr]


def test_a_long_run_lets_the_loop_read_between_its_slices(
        nodes: tuple[Node, Node, list[KeyPair]], monkeypatch: pytest.MonkeyPatch) -> None:
    # A catch-up run held the event loop until its last block: the next fetched range sat
    # unread in the socket and its signature checks started late, so each run waited
    # 30-350 ms for the pool (trace of a 2,000-block sync of 100-tx blocks; ~2 ms now).
    source, lagging, keys = nodes
    blocks = 6
    commit_history(source, keys, blocks, lambda seq: transfers(source, seq, 2))
    monkeypatch.setattr(node_module, "RUN_SLICE_TXS", 4)  # two blocks a slice
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    peer = keys[2].public_key
    seen: list[tuple[int, int]] = []  # (stored height, replica's executed) each iteration

    async def watch() -> None:
        assert lagging.replica is not None
        while True:
            seen.append((lagging.store.tip()[0], lagging.replica.last_executed))
            await asyncio.sleep(0)

    async def scenario() -> None:
        lagging._peer_seq[peer] = blocks
        await take(lagging, peer, answer(source, 1, blocks))
        watcher = asyncio.create_task(watch())
        await execute_until(lagging, blocks)
        watcher.cancel()

    asyncio.run(scenario())
    assert lagging.store.tip()[1] == source.store.block(blocks).hash  # type: ignore[union-attr]
    # The loop ran while the run was half done; the replica heard of no execution until
    # the whole run was durable (Executed is reported only then).
    assert (2, 0) in seen and (4, 0) in seen
    assert {executed for _, executed in seen} <= {0, blocks}


def test_tips_ask_for_nothing_while_the_stream_waits_for_its_answer(
        nodes: tuple[Node, Node, list[KeyPair]]) -> None:
    # Each peer's tip announcement (every second) asked for the range the stream had just
    # asked for: a 2,000-block sync received some ranges three and four times.
    source, lagging, keys = nodes
    commit_history(source, keys, 2 * FETCH_SEQS_MAX)
    streaming, other = keys[2].public_key, keys[3].public_key
    peers = RecordingPeers()
    lagging.p2p = peers  # type: ignore[assignment]
    rest = (FETCH_SEQS_MAX + 1, 2 * FETCH_SEQS_MAX)

    async def scenario() -> None:
        lagging._peer_seq[streaming] = 2 * FETCH_SEQS_MAX
        await take(lagging, streaming, answer(source, 1, FETCH_SEQS_MAX))
        assert peers.fetches_to(streaming) == [rest]
        lagging._on_peer_tip(other, 2 * FETCH_SEQS_MAX)
        assert peers.fetches_to(other) == []
        # A stream whose answer does not come gives way: the next tip asks again.
        lagging._stream_asked_s -= STREAM_ANSWER_WAIT_S
        lagging._on_peer_tip(other, 2 * FETCH_SEQS_MAX)
        assert peers.fetches_to(other) == [rest]

    asyncio.run(scenario())


def with_forged_signature(item: dict[str, Any], which: int) -> dict[str, Any]:
    signatures = [list(pair) for pair in item["cert"]["signatures"]]
    signature = signatures[which][1]
    signatures[which][1] = bytes([signature[0] ^ 1]) + signature[1:]
    return {**item, "cert": {**item["cert"], "signatures": signatures}}


def test_a_fetched_ranges_certificates_are_verified_on_the_pool_not_on_the_loop(
        nodes: tuple[Node, Node, list[KeyPair]]) -> None:
    # ~0.3 ms of Ed25519 per block ran on the event-loop thread, the sync's bottleneck.
    source, lagging, keys = nodes
    commit_history(source, keys, FETCH_SEQS_MAX)
    counting = CountingVerify()
    lagging.verifier.signatures.real_verify = counting  # what the pool and the replica call
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    assert lagging.replica is not None

    async def scenario() -> None:
        await take(lagging, keys[2].public_key, answer(source, 1, FETCH_SEQS_MAX))

    asyncio.run(scenario())
    assert lagging.replica.last_issued == FETCH_SEQS_MAX  # every certificate accepted
    assert len(counting.calls) == 3 * FETCH_SEQS_MAX and all(ok for _, ok, _ in counting.calls)
    assert counting.on_loop() == []  # the replica's own check ran no Ed25519
    assert len(lagging.verifier.signatures) == 0  # each entry answered its one check


def test_fetched_frames_are_fed_in_arrival_order_and_a_forged_certificate_is_refused(
        nodes: tuple[Node, Node, list[KeyPair]], monkeypatch: pytest.MonkeyPatch) -> None:
    source, lagging, keys = nodes
    commit_history(source, keys, FETCH_SEQS_MAX + 3)
    counting = CountingVerify()
    lagging.verifier.signatures.real_verify = counting
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    replica = lagging.replica
    assert replica is not None
    fed: list[int] = []
    feed = lagging.feed

    def recording_feed(event: Any) -> None:
        if isinstance(event, CommittedFetched):
            fed.append(event.seq)
        feed(event)

    monkeypatch.setattr(lagging, "feed", recording_feed)
    forged_seq = FETCH_SEQS_MAX + 2

    async def scenario() -> None:
        # The first frame's certificates go to the pool (a real wait); the second's are
        # few enough to be checked inline: it still waits for the first to be fed.
        later = answer(source, FETCH_SEQS_MAX + 1, FETCH_SEQS_MAX + 3)
        later[1] = with_forged_signature(later[1], 1)
        lagging._on_fetched(keys[2].public_key, answer(source, 1, FETCH_SEQS_MAX))
        lagging._on_fetched(keys[3].public_key, later)
        assert fed == []
        consumer = lagging._fetched_consumer
        assert consumer is not None
        await consumer
        assert fed == list(range(1, FETCH_SEQS_MAX + 4))
        # Each good signature was checked once, in the batch; the forged one failed there,
        # was not cached, so the replica checked it for real again and refused the
        # certificate. The seq after it waits, taken but not issued.
        forged_signature = later[1]["cert"]["signatures"][1][1]
        checks = Counter((triple[2], ok) for triple, ok, _ in counting.calls)
        assert checks.pop((forged_signature, False)) == 2
        assert set(checks.values()) == {1} and all(ok for _, ok in checks)
        assert len(checks) == 3 * (FETCH_SEQS_MAX + 3) - 1
        assert all(name.startswith("verify") for _, _, name in counting.calls[:3 * FETCH_SEQS_MAX])
        forged = next(triple for triple, _, _ in counting.calls if triple[2] == forged_signature)
        assert forged not in lagging.verifier.signatures
        assert replica.last_issued == forged_seq - 1
        slot = replica.slots.get(forged_seq)
        assert slot is None or slot.committed is None
        # The honest copy is taken, and what waited behind it is issued with it.
        await take(lagging, keys[2].public_key, answer(source, forged_seq, forged_seq))
        assert replica.last_issued == FETCH_SEQS_MAX + 3

    asyncio.run(scenario())


def test_malformed_frames_are_refused_at_once_and_a_peer_gets_two_frames_waiting(
        nodes: tuple[Node, Node, list[KeyPair]], caplog: pytest.LogCaptureFixture) -> None:
    source, lagging, keys = nodes
    commit_history(source, keys, 3)
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    hostile, honest = keys[2].public_key, keys[3].public_key
    assert lagging.replica is not None

    async def scenario() -> None:
        good = answer(source, 1, 3)
        with pytest.raises(MessageError):  # raised before anything is queued or fed
            lagging._on_fetched(hostile, [*good, {"seq": 4}])
        cert = good[0]["cert"]
        for bad_cert in ({"view": 0}, {**cert, "digest": 2**40},
                         {**cert, "signatures": [[2**63, b"s"]]},  # was an OverflowError
                         {**cert, "signatures": [[b"k", 10**9]]},  # was a 1 GB allocation
                         {**cert, "signatures": [[b"k", b"s"]] * (VALIDATORS_MAX + 1)}):
            with pytest.raises(MessageError):
                lagging._on_fetched(hostile, [{**good[0], "cert": bad_cert}])
        assert not lagging._fetched and lagging._fetched_consumer is None
        with caplog.at_level(logging.INFO, logger="cityledger.node"):
            for _ in range(FETCHED_FRAMES_PER_PEER_MAX + 3):
                lagging._on_fetched(hostile, good[:1])
            lagging._on_fetched(honest, good)
        assert len(lagging._fetched) == FETCHED_FRAMES_PER_PEER_MAX + 1
        assert sum("dropping a fetched frame" in r.getMessage() for r in caplog.records) == 3
        consumer = lagging._fetched_consumer
        assert consumer is not None
        await consumer
        assert lagging._fetched_waiting == {} and lagging._fetched_consumer is None
        assert lagging.replica is not None and lagging.replica.last_issued == 3

    asyncio.run(scenario())


def test_a_frame_cancelled_while_its_certificates_are_checked_is_never_fed(
        nodes: tuple[Node, Node, list[KeyPair]]) -> None:
    # What Node.run does on stop: cancel the consumer; no frame may be fed after that.
    source, lagging, keys = nodes
    commit_history(source, keys, FETCH_SEQS_MAX)
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    replica = lagging.replica
    assert replica is not None

    async def scenario() -> None:
        lagging._on_fetched(keys[2].public_key, answer(source, 1, FETCH_SEQS_MAX))
        consumer = lagging._fetched_consumer
        assert consumer is not None
        await asyncio.sleep(0)  # it starts, and waits for the pool
        consumer.cancel()
        await asyncio.wait([consumer])
        assert consumer.cancelled() and replica.last_issued == 0
        assert lagging._fetched_consumer is None and lagging._fetched_waiting == {}

    asyncio.run(scenario())


def _counting_syncs(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the stored height at each fsync the node asks of its store."""
    heights: list[int] = []
    real_sync = node.store.sync

    def sync() -> None:
        heights.append(node.store.tip()[0])
        real_sync()

    monkeypatch.setattr(node.store, "sync", sync)
    return heights


async def _fetch_all(source: Node, lagging: Node, peer: bytes, blocks: int) -> None:
    """Hand `lagging` the source's first `blocks` seqs as one answer from `peer`."""
    lagging.p2p = RecordingPeers()  # type: ignore[assignment]
    lagging._peer_seq[peer] = blocks
    await take(lagging, peer, answer(source, 1, blocks))


def test_a_run_crosses_checkpoint_boundaries_with_one_fsync(
        nodes: tuple[Node, Node, list[KeyPair]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # Runs used to end at every checkpoint boundary: with 16-block intervals a syncing node
    # waited for an fsync (~15 ms) every 16 blocks, a quarter of its time (S11).
    source, lagging, keys = nodes
    interval = lagging.genesis.consensus.checkpoint_interval_blocks
    blocks = 2 * interval
    assert blocks <= FETCH_SEQS_MAX
    commit_history(source, keys, blocks, lambda seq: transfers(source, seq, 1))
    syncs = _counting_syncs(lagging, monkeypatch)

    async def scenario() -> None:
        await _fetch_all(source, lagging, keys[2].public_key, blocks)
        await reported_until(lagging, blocks)

    with caplog.at_level(logging.INFO, logger="cityledger.node"):
        asyncio.run(scenario())
    commits = [r.getMessage() for r in caplog.records if "committed height" in r.getMessage()]
    assert len(commits) == 1 and commits[0].startswith(f"committed heights 1..{blocks} ")
    assert lagging.store.tip()[1] == source.store.block(blocks).hash  # type: ignore[union-attr]
    assert syncs == [blocks]  # one run over both boundaries
    assert lagging.replica is not None and lagging.replica.last_executed == blocks
    # Each boundary was still reported on its own: the replica took a checkpoint at both.
    for seq in (interval, blocks):
        assert lagging.replica.state_digests[seq] == source.store.block(seq).hash  # type: ignore[union-attr]


def test_a_run_ends_at_the_boundary_where_an_approved_validator_set_takes_over(
        nodes: tuple[Node, Node, list[KeyPair]], monkeypatch: pytest.MonkeyPatch) -> None:
    # Governance in the history approves a three-validator set early on; the change takes
    # over after the first checkpoint boundary. A run over that boundary must stop there,
    # judged on the state right after it, and hand over to the new set, whose replica does
    # not take the old set's later jobs.
    source, lagging, keys = nodes
    interval = lagging.genesis.consensus.checkpoint_interval_blocks
    blocks = 2 * interval
    accounts = source.home.parent / "accounts"
    genesis_set = json.loads((source.home.parent / "genesis.json").read_text())["validators"]

    def governance(seq: int) -> list[Tx]:
        if seq == 1:
            return [sign_tx(KeyPair.load(accounts / "treasury.json"), source.chain_id,
                            "governance", "propose", 0,
                            {"kind": "set_validators", "validators": genesis_set[:3]})]
        if seq in (2, 3):
            agency = "civil-registry" if seq == 2 else "utility"
            return [sign_tx(KeyPair.load(accounts / f"{agency}.json"), source.chain_id,
                            "governance", "approve", 0, {"proposal_id": 1})]
        return []

    commit_history(source, keys, blocks, governance)
    syncs = _counting_syncs(lagging, monkeypatch)

    async def scenario() -> None:
        await _fetch_all(source, lagging, keys[2].public_key, blocks)
        deadline = time.monotonic() + 30
        worker = asyncio.create_task(lagging._job_worker())
        while lagging.epochs.current.number == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # let the worker go on, were it to take more
        worker.cancel()

    asyncio.run(scenario())
    assert lagging.halted is None
    assert lagging.epochs.current.number == 1
    assert lagging.epochs.current.first_seq == interval + 1
    assert len(lagging.validators) == 3
    assert syncs == [interval]  # the run stopped at the boundary
    assert lagging.store.tip()[1] == source.store.block(interval).hash  # type: ignore[union-attr]
    assert lagging._jobs.empty()
