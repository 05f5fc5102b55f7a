from __future__ import annotations

import asyncio
import random
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import encode
from p2p import FrameError, backoff_delay_s, decode_frames, encode_frame
from p2p.framing import FrameReader, read_frame
from p2p.sendqueue import SendQueue

LIMIT = 4096


def test_frames_round_trip_and_empty_frames_are_keepalives() -> None:
    messages = [{"kind": "vote", "view": 3, "sig": b"\x01" * 64}, {"a": [1, 2, {"b": None}]}]
    data = encode_frame(messages[0]) + b"\x00\x00\x00\x00" + encode_frame(messages[1])
    assert decode_frames(data, LIMIT) == [messages[0], None, messages[1]]


def test_length_over_the_limit_is_refused_before_reading_the_body() -> None:
    with pytest.raises(FrameError) as caught:
        decode_frames(struct.pack(">I", LIMIT + 1), LIMIT)
    assert caught.value.code == "frame_oversize"


def test_non_canonical_body_is_refused() -> None:
    unsorted = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(FrameError) as caught:
        decode_frames(struct.pack(">I", len(unsorted)) + unsorted, LIMIT)
    assert caught.value.code == "frame_undecodable"


def test_a_body_that_is_not_a_map_is_refused() -> None:
    body = encode([1, 2, 3])
    with pytest.raises(FrameError):
        decode_frames(struct.pack(">I", len(body)) + body, LIMIT)


def test_truncated_frame_is_refused() -> None:
    with pytest.raises(FrameError) as caught:
        decode_frames(encode_frame({"a": 1})[:-1], LIMIT)
    assert caught.value.code == "frame_truncated"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_frames_or_a_frame_error_never_another_exception(data: bytes) -> None:
    try:
        decoded = decode_frames(data, LIMIT)
    except FrameError:
        return
    # Whatever was accepted must be exactly the canonical framing of what came out.
    rebuilt = b"".join(b"\x00\x00\x00\x00" if item is None else encode_frame(item) for item in decoded)
    assert rebuilt == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_frame_prefix_never_escape_as_other_errors(tail: bytes) -> None:
    data = encode_frame({"ok": True}) + struct.pack(">I", len(tail)) + tail
    try:
        decoded = decode_frames(data, LIMIT)
    except FrameError:
        return
    assert decoded[0] == {"ok": True}


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_stream_reader_gives_a_frame_error_or_a_map_for_random_bodies(body: bytes) -> None:
    async def read_one() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", len(body)) + body)
        reader.feed_eof()
        return await read_frame(reader, LIMIT)

    try:
        message = asyncio.run(read_one())
    except FrameError:
        return
    assert isinstance(message, dict)


def test_send_queue_refuses_frames_beyond_its_count_or_byte_bound() -> None:
    by_count = SendQueue(frames_max=2, bytes_max=1000)
    assert by_count.offer(b"a") and by_count.offer(b"b")
    assert not by_count.offer(b"c")
    by_bytes = SendQueue(frames_max=100, bytes_max=10)
    assert by_bytes.offer(b"x" * 6)
    assert not by_bytes.offer(b"y" * 5)
    assert by_bytes.take_all(1000) == [b"x" * 6]
    assert by_bytes.offer(b"y" * 5)


def test_send_queue_drops_frames_that_outlived_their_time_to_live() -> None:
    now = [100.0]
    queue = SendQueue(frames_max=3, bytes_max=1000, ttl_s=5.0, clock=lambda: now[0])
    assert queue.offer(b"old-1") and queue.offer(b"old-2")
    now[0] = 103.0
    assert queue.offer(b"newer")
    now[0] = 104.0
    assert not queue.offer(b"fresh")  # full, and nothing in it is old enough to go yet
    now[0] = 105.0  # old-1 and old-2 are 5 s old: they make room; "newer" is kept
    assert queue.offer(b"fresh")
    assert queue.take_all(1000) == [b"newer", b"fresh"]
    assert (queue.stale_dropped, queue.queued_bytes, len(queue)) == (2, 0, 0)
    assert queue.offer(b"last")
    now[0] = 111.0  # what waited past the time to live is not handed to the writer
    assert queue.take_all(1000) == []
    assert (queue.stale_dropped, queue.queued_bytes) == (3, 0)


def test_backoff_grows_exponentially_up_to_the_cap_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        capped = min(5.0, 0.1 * 2**attempt)
        delay = backoff_delay_s(attempt, 0.1, 5.0, rng)
        assert capped / 2 <= delay <= capped
    # Two nodes with different random sources spread their retries apart; one seed replays.
    assert backoff_delay_s(3, 0.1, 5.0, random.Random(1)) != backoff_delay_s(3, 0.1, 5.0, random.Random(2))
    assert backoff_delay_s(3, 0.1, 5.0, random.Random(1)) == backoff_delay_s(3, 0.1, 5.0, random.Random(1))


def _read_all_batches(chunks: list[bytes], limit: int) -> tuple[list[object], BaseException | None]:
    """Feed `chunks` to a FrameReader, collect messages until it stops, and say why it stopped."""

    async def run() -> tuple[list[object], BaseException | None]:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        frames = FrameReader(reader, limit)
        collected: list[object] = []
        while True:
            try:
                collected.extend(await frames.read_batch())
            except (FrameError, asyncio.IncompleteReadError) as exc:
                return collected, exc

    return asyncio.run(run())


messages_strategy = st.lists(
    st.one_of(
        st.none(),
        st.dictionaries(
            st.text(max_size=8),
            st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=64), st.text(max_size=16)),
            max_size=4,
        ),
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(messages_strategy, st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_frames_split_at_any_chunk_boundaries_come_out_whole_and_in_order(
    messages: list[dict[str, object] | None], cuts: list[int]
) -> None:
    data = b"".join(b"\x00\x00\x00\x00" if item is None else encode_frame(item) for item in messages)
    chunks, offset, index = [], 0, 0
    while offset < len(data):
        size = cuts[index % len(cuts)]
        chunks.append(data[offset : offset + size])
        offset, index = offset + size, index + 1
    collected, stopped_by = _read_all_batches(chunks, LIMIT)
    assert collected == messages
    assert isinstance(stopped_by, asyncio.IncompleteReadError) and stopped_by.partial == b""


def test_good_frames_before_a_bad_one_in_the_same_chunk_are_still_delivered() -> None:
    data = encode_frame({"n": 1}) + encode_frame({"n": 2}) + struct.pack(">I", LIMIT + 1)
    collected, stopped_by = _read_all_batches([data], LIMIT)
    assert collected == [{"n": 1}, {"n": 2}]
    assert isinstance(stopped_by, FrameError) and stopped_by.code == "frame_oversize"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_frame_reader_on_random_chunks_ends_in_a_typed_error_only(chunks: list[bytes]) -> None:
    collected, stopped_by = _read_all_batches(chunks, LIMIT)
    assert isinstance(stopped_by, FrameError | asyncio.IncompleteReadError)
    assert all(item is None or isinstance(item, dict) for item in collected)
