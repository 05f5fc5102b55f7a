"""The node writes consensus records off the event-loop thread without breaking persist-before-send.

A real Node (its own LevelDB, replica, chain) performs hand-made action lists; its record
log is slowed down so that writes overlap with later lists, and a recording transport
notes how many records were durable when each message left.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import plyvel
import pytest

from consensus.events import Action, Compact, Persist, Send
from consensus.messages import Prepare, decode_message
from consensus.records import ViewRecord, decode_record
from ledger.record_log import RecordLog, RecordWrite
from node import Node

WRITE_DELAY_S = 0.15


class SlowRecordLog(RecordLog):
    """A record log on the node's own LevelDB whose synced writes take WRITE_DELAY_S."""

    def __init__(self, db: Any, fail: bool = False) -> None:
        super().__init__(db)
        self.groups: list[list[RecordWrite]] = []
        self.writer_threads: set[str] = set()
        self.fail = fail

    def write_group(self, steps: Sequence[RecordWrite]) -> None:
        self.writer_threads.add(threading.current_thread().name)
        time.sleep(WRITE_DELAY_S)
        if self.fail:
            raise plyvel.IOError("disk gone")
        super().write_group(steps)
        self.groups.append(list(steps))


class RecordingPeers:
    """Stands in for p2p: remembers each sent message and the durable records at that moment."""

    def __init__(self, records: RecordLog) -> None:
        self.records = records
        self.sent: list[tuple[int, list[int]]] = []

    def _note(self, frame: dict[str, Any]) -> None:
        message = decode_message(frame["m"])
        durable = [decode_record(raw) for raw in self.records.load()]
        self.sent.append((message.seq, [r.view for r in durable if isinstance(r, ViewRecord)]))

    def send(self, peer: bytes, frame: dict[str, Any]) -> None:
        self._note(frame)

    def broadcast(self, frame: dict[str, Any]) -> None:
        self._note(frame)


@pytest.fixture
def node(local_node: Node) -> Node:
    local_node.records.replace([])  # start from an empty log; the replica is not run here
    return local_node


def persist(view: int) -> Persist:
    return Persist(ViewRecord(view, False))


def send(seq: int) -> Send:
    return Send(-1, Prepare(0, seq, b"\x01" * 32, 0, b"\x02" * 64))


def use_slow_log(node: Node, *, fail: bool = False) -> tuple[SlowRecordLog, RecordingPeers]:
    slow = SlowRecordLog(node.store.db, fail=fail)
    node.records = slow
    peers = RecordingPeers(slow)
    node.p2p = peers  # type: ignore[assignment]
    return slow, peers


async def settle(node: Node) -> None:
    while node._writing or node._held:
        await asyncio.sleep(0.01)


def test_no_message_leaves_before_the_records_listed_before_it_are_durable(node: Node) -> None:
    slow, peers = use_slow_log(node)

    async def scenario() -> None:
        lists: list[list[Action]] = [
            [persist(1), send(1)],
            [send(2)],                        # no record of its own, but after list 1's
            [persist(2), persist(3), send(3)],
            [persist(4), send(4), send(5)],
        ]
        for actions in lists:
            node.perform(actions)
        assert peers.sent == []  # nothing may leave while the first record is in flight
        await settle(node)

    asyncio.run(scenario())
    assert [seq for seq, _ in peers.sent] == [1, 2, 3, 4, 5]  # list order kept
    durable_at = dict(peers.sent)
    assert set(durable_at[1]) >= {1} and set(durable_at[2]) >= {1}
    assert set(durable_at[3]) >= {1, 2, 3}
    assert set(durable_at[4]) == set(durable_at[5]) == {1, 2, 3, 4}
    # Group commit: records 2..4 arrived while record 1 was being written, so they went
    # out together in one synced batch; every write ran on the writer thread.
    assert [sum(len(step.records) for step in group) for group in slow.groups] == [1, 3]
    assert all(name.startswith("record-writer") for name in slow.writer_threads)
    assert [r.view for r in map(decode_record, node.records.load())
            if isinstance(r, ViewRecord)] == [1, 2, 3, 4]


def test_event_loop_keeps_running_while_a_record_is_written(node: Node) -> None:
    use_slow_log(node)

    async def scenario() -> int:
        ticks = 0
        node.perform([persist(1), send(1)])
        while node._writing:
            await asyncio.sleep(0.005)
            ticks += 1
        await settle(node)
        return ticks

    # A write on the loop thread would allow no tick at all before it finished.
    assert asyncio.run(scenario()) >= 5


def test_compaction_in_a_group_replaces_what_came_before_it(node: Node) -> None:
    slow, peers = use_slow_log(node)

    async def scenario() -> None:
        node.perform([persist(1), send(1)])
        node.perform([persist(2), Compact((ViewRecord(7, False),)), persist(8), send(2)])
        await settle(node)

    asyncio.run(scenario())
    views = [r.view for r in map(decode_record, node.records.load())
             if isinstance(r, ViewRecord)]
    assert views == [7, 8]
    assert [seq for seq, _ in peers.sent] == [1, 2]
    assert set(dict(peers.sent)[2]) == {7, 8}


def test_a_failed_record_write_halts_the_node_and_nothing_after_it_is_sent(node: Node) -> None:
    _, peers = use_slow_log(node, fail=True)

    async def scenario() -> None:
        node.perform([send(1), persist(1), send(2)])
        node.perform([send(3)])
        await settle(node)

    asyncio.run(scenario())
    assert [seq for seq, _ in peers.sent] == [1]
    assert node.halted is not None and "cannot persist" in node.halted
