"""The world state's read caches (values, bucket entries, empty prefixes) never change an answer.

A long-lived state that reads, scans and is written block after block must give the same
roots, reads, scans, undo records and proofs as a state opened afresh on the same database
(nothing cached), with the caches at their real sizes and squeezed small enough to evict.
"""

from __future__ import annotations

from pathlib import Path

import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.state as state_module
from ledger.state import (
    MemoryBackend,
    WorldState,
    bucket_of,
    state_root_of,
    verify_state_proof,
)
from tests.ledger.test_state import apply_writes


def _crowded_keys(prefix: str, buckets: int, per_bucket: int) -> list[bytes]:
    """Keys under `prefix` that share buckets, `per_bucket` to each of `buckets` buckets:
    a cache holding a wrong entry then shows when another key of its bucket is written."""
    by_bucket: dict[int, list[bytes]] = {}
    for i in range(1_000_000):
        key = f"{prefix}{i}".encode()
        found = by_bucket.setdefault(bucket_of(key), [])
        found.append(key)
        if len(found) == per_bucket:
            chosen = [keys for keys in by_bucket.values() if len(keys) >= per_bucket]
            if len(chosen) == buckets:
                return [key for keys in chosen for key in keys[:per_bucket]]
    raise AssertionError("not enough crowded buckets")


# Few keys under three prefixes, four to a bucket, so blocks rewrite, delete and re-create
# the same keys next to others; scans of "due/" and "open/" start empty and fill up.
ALL_KEYS = [key for prefix in ("acct/", "due/", "open/") for key in _crowded_keys(prefix, 3, 4)]
KEYS = st.sampled_from(ALL_KEYS)
BLOCK = st.tuples(
    st.dictionaries(KEYS, st.one_of(st.none(), st.binary(min_size=1, max_size=8)), max_size=8),
    st.lists(KEYS, max_size=6),  # read before the block runs
    st.lists(st.sampled_from([b"acct/", b"due/", b"open/", b"none/"]), max_size=3),  # scanned
)


def _check_against_fresh(state: WorldState, backend: MemoryBackend,
                         model: dict[bytes, bytes], height: int) -> None:
    fresh = WorldState(backend)
    assert state.root == fresh.root == state_root_of(model)
    reader, fresh_reader = state.reader(), fresh.reader()
    for key in sorted(model) + [b"acct/99", b"due/99"]:
        assert reader.get(key) == fresh_reader.get(key) == model.get(key)
    for prefix in (b"acct/", b"due/", b"open/", b"none/"):
        expected = sorted((k, v) for k, v in model.items() if k.startswith(prefix))
        assert reader.scan(prefix, 100) == fresh_reader.scan(prefix, 100) == expected
    for key in list(model)[:3]:
        assert verify_state_proof(state.root, key, model[key], state.prove(key))
    assert state.root_at(height) == fresh.root_at(height)
    # Rewriting every key with its own value (and deleting the absent ones) changes no
    # bucket: prepare sees every cached bucket exactly as stored.
    touch: dict[bytes, bytes | None] = {key: model.get(key) for key in ALL_KEYS}
    assert state.prepare(touch).root == state.root


def _run_blocks(blocks: list[tuple[dict[bytes, bytes | None], list[bytes], list[bytes]]]
                ) -> None:
    backend = MemoryBackend()
    state = WorldState(backend)
    model: dict[bytes, bytes] = {}
    state.commit({}, height=0)
    for height, (writes, reads, scans) in enumerate(blocks, start=1):
        reader = state.reader()
        for key in reads:
            assert reader.get(key) == model.get(key)
        for prefix in scans:
            assert reader.scan(prefix, 1) == sorted(
                (k, v) for k, v in model.items() if k.startswith(prefix))[:1]
        # A competing proposal prepared on the same state and dropped changes nothing.
        state.prepare({**dict.fromkeys(list(model)[:4]), **dict.fromkeys(writes, b"lost")},
                      height=height)
        state.commit(writes, height=height)
        apply_writes(model, writes)
        _check_against_fresh(state, backend, model, height - 1)


@settings(max_examples=60, deadline=None)
@given(blocks=st.lists(BLOCK, min_size=1, max_size=8))
def test_cached_state_answers_as_a_fresh_one(
    blocks: list[tuple[dict[bytes, bytes | None], list[bytes], list[bytes]]],
) -> None:
    _run_blocks(blocks)


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(BLOCK, min_size=1, max_size=8))
def test_cached_state_answers_as_a_fresh_one_while_caches_evict(
    blocks: list[tuple[dict[bytes, bytes | None], list[bytes], list[bytes]]],
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_module, "VALUES_CACHED_MAX", 4)
        patch.setattr(state_module, "BUCKET_ENTRIES_CACHED_MAX", 6)
        patch.setattr(state_module, "ONE_BUCKET_CACHED_ENTRIES_MAX", 3)
        patch.setattr(state_module, "VALUE_CACHED_BYTES_MAX", 4)
        patch.setattr(state_module, "EMPTY_PREFIXES_CACHED_MAX", 2)
        _run_blocks(blocks)


def test_caches_stay_within_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "VALUES_CACHED_MAX", 64)
    monkeypatch.setattr(state_module, "BUCKET_ENTRIES_CACHED_MAX", 32)
    monkeypatch.setattr(state_module, "EMPTY_PREFIXES_CACHED_MAX", 4)
    state = WorldState.in_memory()
    for block in range(40):
        reader = state.reader()
        for i in range(20):
            reader.get(f"read/{block}/{i}".encode())
            reader.scan(f"empty/{block}/{i}/".encode(), 1)
        state.commit({f"write/{block}/{i}".encode(): b"v" for i in range(20)})
    assert len(state._values) <= 64
    assert sum(len(entries) for entries in state._buckets.values()) <= 32
    assert state._bucket_entries_cached == sum(len(e) for e in state._buckets.values())
    assert len(state._empty_prefixes) <= 4


def test_a_crowded_bucket_is_not_held_and_evicts_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "ONE_BUCKET_CACHED_ENTRIES_MAX", 3)
    crowded = _crowded_keys("ground/", 1, 4)
    state = WorldState.in_memory()
    state.commit({b"acct/1": b"1", b"acct/2": b"2"})
    held = dict(state._buckets)
    state.commit(dict.fromkeys(crowded, b"x"))
    assert state._buckets == held  # the 4-entry bucket is read each time instead
    state.commit({crowded[0]: None, b"acct/1": b"one"})
    assert state.root == state_root_of({b"acct/1": b"one", b"acct/2": b"2",
                                        **dict.fromkeys(crowded[1:], b"x")})


def test_an_empty_prefix_seen_by_a_scan_shows_keys_written_under_it_later() -> None:
    state = WorldState.in_memory()
    assert state.reader().scan(b"due/", 1) == []
    state.commit({b"due/7": b"x", b"other": b"y"})
    assert state.reader().scan(b"due/", 1) == [(b"due/7", b"x")]
    state.commit({b"due/7": None})
    assert state.reader().scan(b"due/", 1) == []


def test_caches_agree_with_leveldb_after_reopening(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    state = WorldState(db)
    state.commit({f"acct/{i}".encode(): b"%d" % i for i in range(100)}, height=0)
    for height in range(1, 20):
        reader = state.reader()
        for i in range(0, 100, 7):
            reader.get(f"acct/{i}".encode())
        state.commit({f"acct/{(height * 13) % 100}".encode(): b"h%d" % height,
                      f"acct/{(height * 29) % 100}".encode(): None}, height=height)
    root, items = state.root, state.reader().scan(b"acct/", 1000)
    db.close()
    db = plyvel.DB(str(tmp_path / "db"))
    reopened = WorldState(db)
    assert reopened.root == root
    assert reopened.reader().scan(b"acct/", 1000) == items
    db.close()
