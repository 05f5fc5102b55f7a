"""World state: root determinism, prepare/apply discipline, reopening, proofs and history."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from pathlib import Path

import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import decode, encode
from ledger.errors import CodecError, InvariantViolation
from ledger.state import (
    BUCKET_COUNT,
    EMPTY_BUCKET_HASH,
    FORMAT_KEY,
    PROOF_SIBLINGS,
    ROOT_KEY,
    STATE_FORMAT,
    MemoryBackend,
    StateFormatError,
    StateProof,
    WorldState,
    bucket_hash,
    bucket_of,
    state_root_of,
    verify_state_proof,
)

KEYS = st.binary(min_size=1, max_size=12)
WRITES = st.dictionaries(KEYS, st.one_of(st.none(), st.binary(max_size=16)), max_size=20)


def apply_writes(model: dict[bytes, bytes], writes: Mapping[bytes, bytes | None]) -> None:
    """What a block's writes do to a plain dict model of the state (None deletes)."""
    for key, value in writes.items():
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value


def _same_bucket_pair() -> tuple[bytes, bytes]:
    """Two distinct keys in one bucket (found by the birthday bound, deterministically)."""
    seen: dict[int, bytes] = {}
    for i in range(5000):
        key = f"acct/{i}".encode()
        bucket = bucket_of(key)
        if bucket in seen:
            return seen[bucket], key
        seen[bucket] = key
    raise AssertionError("no bucket collision among 5000 keys")


def _open(path: Path) -> plyvel.DB:
    return plyvel.DB(str(path), create_if_missing=True)


def test_empty_state_root_is_the_tree_of_empty_buckets() -> None:
    state = WorldState.in_memory()
    assert state.root == state_root_of({})
    assert state.root != EMPTY_BUCKET_HASH
    assert state.height is None


def _root_from_the_spec(items: dict[bytes, bytes]) -> bytes:
    """docs/STATE.md spelled out: all 65,536 bucket hashes, then 16 at a time to one root."""
    buckets: dict[int, dict[bytes, bytes]] = {}
    for key, value in items.items():
        buckets.setdefault(bucket_of(key), {})[key] = hashlib.sha256(value).digest()
    level = [bucket_hash(buckets.get(index, {})) for index in range(BUCKET_COUNT)]
    while len(level) > 1:
        level = [hashlib.sha256(b"\x03" + b"".join(level[i:i + 16])).digest()
                 for i in range(0, len(level), 16)]
    return level[0]


def test_roots_match_the_tree_built_naively_from_every_bucket() -> None:
    # The live tree starts from a precomputed empty tree and rehashes only changed paths;
    # a wrong node anywhere in it would show up here.
    for items in ({}, {b"alice": b"1"}, {bytes([n]) * 3: bytes([n]) for n in range(1, 40)}):
        assert state_root_of(items) == _root_from_the_spec(items)


@settings(max_examples=60, deadline=None)
@given(items=st.dictionaries(KEYS, st.binary(max_size=16), max_size=30), seed=st.integers(0, 99))
def test_root_does_not_depend_on_write_order(items: dict[bytes, bytes], seed: int) -> None:
    shuffled = list(items.items())
    random.Random(seed).shuffle(shuffled)
    assert state_root_of(dict(shuffled)) == state_root_of(items)


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(WRITES, min_size=1, max_size=5))
def test_root_depends_only_on_final_contents_not_history(
    blocks: list[dict[bytes, bytes | None]],
) -> None:
    state = WorldState.in_memory()
    model: dict[bytes, bytes] = {}
    for writes in blocks:
        state.commit(writes)
        apply_writes(model, writes)
    assert state.root == state_root_of(model)
    reader = state.reader()
    assert reader.scan(b"", 1000) == sorted(model.items())
    for key, value in model.items():
        assert reader.get(key) == value


def test_deleting_everything_returns_to_the_empty_root() -> None:
    state = WorldState.in_memory()
    empty = state.root
    state.commit({b"a": b"1", b"b": b"2"})
    assert state.root != empty
    state.commit({b"a": None, b"b": None, b"never-there": None})
    assert state.root == empty
    assert state.reader().scan(b"", 10) == []


def test_changing_one_value_changes_the_root() -> None:
    state = WorldState.in_memory()
    state.commit({b"a": b"1"})
    before = state.root
    state.commit({b"a": b"2"})
    assert state.root != before


def test_prepare_changes_neither_root_nor_stored_entries() -> None:
    backend = MemoryBackend()
    state = WorldState(backend)
    state.commit({b"a": b"1"})
    root, stored = state.root, backend.kv.items()
    prepared = state.prepare({b"a": b"2", b"b": b"3"})
    assert prepared.root != root
    assert state.root == root
    assert backend.kv.items() == stored
    assert state.reader().get(b"a") == b"1"


def test_competing_prepared_states_only_the_applied_one_counts() -> None:
    backend = MemoryBackend()
    state = WorldState(backend)
    first = state.prepare({b"x": b"first"})
    second = state.prepare({b"x": b"second"})
    backend.write(second.ops)
    state.apply_prepared(second)
    assert state.root == second.root == state_root_of({b"x": b"second"})
    with pytest.raises(InvariantViolation):
        state.apply_prepared(first)
    assert state.root == second.root


def test_apply_prepared_refuses_when_ops_were_not_written() -> None:
    state = WorldState.in_memory()
    prepared = state.prepare({b"x": b"1"})
    with pytest.raises(InvariantViolation):
        state.apply_prepared(prepared)


def test_apply_prepared_refuses_unwritten_ops_even_when_the_root_is_unchanged() -> None:
    state = WorldState.in_memory()
    state.commit({b"x": b"1"}, height=0)
    empty_block = state.prepare({}, height=1)
    assert empty_block.root == state.root
    with pytest.raises(InvariantViolation):
        state.apply_prepared(empty_block)


def test_prepared_ops_only_touch_state_and_metadata_prefixes() -> None:
    state = WorldState.in_memory()
    prepared = state.prepare({b"x": b"1", b"y": None}, height=0)
    assert prepared.ops
    assert all(key.startswith((b"s/", b"m/")) for key, _ in prepared.ops)


def test_reopening_leveldb_gives_the_same_root_height_and_entries(tmp_path: Path) -> None:
    db = _open(tmp_path / "db")
    state = WorldState(db)
    state.commit({f"k/{i}".encode(): str(i).encode() for i in range(300)}, height=0)
    state.commit({b"k/5": None, b"k/7": b"seven"}, height=1)
    root, items = state.root, state.reader().scan(b"k/", 1000)
    db.close()

    db = _open(tmp_path / "db")
    reopened = WorldState(db)
    assert reopened.root == root
    assert reopened.height == 1
    assert reopened.reader().scan(b"k/", 1000) == items
    assert reopened.reader().get(b"k/7") == b"seven"
    db.close()


def test_plain_and_prefixed_leveldb_give_the_same_roots_as_memory(tmp_path: Path) -> None:
    db = _open(tmp_path / "db")
    states = [WorldState(db), WorldState(db.prefixed_db(b"node/")), WorldState.in_memory()]
    blocks: list[dict[bytes, bytes | None]] = [
        {f"k/{i}".encode(): str(i).encode() for i in range(200)},
        {b"k/3": None, b"k/4": b"four", b"k/new": b"n"},
    ]
    for height, writes in enumerate(blocks):
        roots = {state.commit(writes, height=height) for state in states}
        assert len(roots) == 1
    for state in states:
        assert verify_state_proof(state.root, b"k/4", b"four", state.prove(b"k/4"))
        assert state.reader().get(b"k/3") is None
    db.close()


def test_reopening_with_corrupt_metadata_halts(tmp_path: Path) -> None:
    db = _open(tmp_path / "db")
    WorldState(db).commit({b"a": b"1"})
    db.put(ROOT_KEY, b"\x00" * 32)
    with pytest.raises(InvariantViolation):
        WorldState(db)
    db.close()


def test_state_of_another_format_is_refused_at_open_with_a_typed_error(tmp_path: Path) -> None:
    db = _open(tmp_path / "db")
    WorldState(db).commit({b"a": b"1"})
    assert db.get(FORMAT_KEY) == STATE_FORMAT  # written with the first writes
    WorldState(db)  # and a reopen of the same format is fine
    db.put(FORMAT_KEY, b"tree99")
    with pytest.raises(StateFormatError, match="tree99"):
        WorldState(db)
    db.delete(FORMAT_KEY)  # what a database from before the marker looks like
    with pytest.raises(StateFormatError, match="binary-tree format"):
        WorldState(db)
    db.close()


def test_heights_must_follow_each_other() -> None:
    state = WorldState.in_memory()
    state.commit({b"a": b"1"}, height=0)
    with pytest.raises(InvariantViolation):
        state.prepare({b"a": b"2"}, height=2)


def test_reader_scans_in_key_order_with_prefix_and_limit() -> None:
    state = WorldState.in_memory()
    state.commit({b"b/2": b"2", b"a/1": b"x", b"b/1": b"1", b"b/3": b"3", b"c": b"c"})
    assert state.reader().scan(b"b/", 2) == [(b"b/1", b"1"), (b"b/2", b"2")]
    assert state.reader().scan(b"b/", 0) == []


# -- proofs -----------------------------------------------------------------------------


def _populated() -> tuple[WorldState, bytes, bytes]:
    near, other = _same_bucket_pair()
    state = WorldState.in_memory()
    writes = {f"acct/{i}".encode(): f"v{i}".encode() for i in range(200)}
    writes[near] = b"near"
    writes[other] = b"other"
    state.commit(writes)
    return state, near, other


def test_proof_of_a_present_key_verifies_against_the_root() -> None:
    state, near, _ = _populated()
    proof = state.prove(near)
    assert len(proof.siblings) == PROOF_SIBLINGS == 60
    assert len(proof.entries) >= 2
    assert verify_state_proof(state.root, near, b"near", proof)


def test_proof_of_absence_in_a_non_empty_bucket_verifies() -> None:
    state, near, other = _populated()
    state.commit({other: None})
    proof = state.prove(other)
    assert any(key == near for key, _ in proof.entries)
    assert verify_state_proof(state.root, other, None, proof)
    assert not verify_state_proof(state.root, other, b"other", proof)


def test_proof_of_absence_in_an_empty_bucket_verifies() -> None:
    state, _, _ = _populated()
    proof = state.prove(b"not-there")
    assert verify_state_proof(state.root, b"not-there", None, proof)


def test_proof_rejects_a_wrong_value_or_a_false_absence() -> None:
    state, near, _ = _populated()
    proof = state.prove(near)
    assert not verify_state_proof(state.root, near, b"forged", proof)
    assert not verify_state_proof(state.root, near, None, proof)


def test_proof_rejects_a_hidden_entry() -> None:
    state, near, other = _populated()
    proof = state.prove(other)
    without = StateProof(proof.bucket, tuple(e for e in proof.entries if e[0] != other),
                         proof.siblings)
    assert not verify_state_proof(state.root, other, None, without)
    # Hiding a neighbour breaks the bucket hash too.
    without_near = StateProof(proof.bucket, tuple(e for e in proof.entries if e[0] != near),
                              proof.siblings)
    assert not verify_state_proof(state.root, other, b"other", without_near)


def test_proof_rejects_tampered_siblings_bucket_order_and_root() -> None:
    state, near, other = _populated()
    proof = state.prove(near)
    for index in (3, 15 + 7, 30 + 14, 45):  # one sibling on each of the four levels
        flipped = bytes([proof.siblings[index][0] ^ 1]) + proof.siblings[index][1:]
        siblings = proof.siblings[:index] + (flipped,) + proof.siblings[index + 1:]
        assert not verify_state_proof(state.root, near, b"near",
                                      StateProof(proof.bucket, proof.entries, siblings))
    assert not verify_state_proof(state.root, near, b"near",
                                  StateProof(proof.bucket ^ 1, proof.entries, proof.siblings))
    assert not verify_state_proof(state.root, near, b"near",
                                  StateProof(proof.bucket, proof.entries[::-1], proof.siblings))
    assert not verify_state_proof(state.root, near, b"near",
                                  StateProof(proof.bucket, proof.entries, proof.siblings[:-1]))
    assert not verify_state_proof(b"\x00" * 32, near, b"near", proof)


def test_proof_of_a_key_from_another_bucket_fails() -> None:
    state, near, _ = _populated()
    proof = state.prove(near)
    stranger = next(k for k in (f"x{i}".encode() for i in range(100))
                    if bucket_of(k) != proof.bucket)
    assert not verify_state_proof(state.root, stranger, None, proof)


def test_proof_survives_the_canonical_wire_round_trip() -> None:
    state, near, _ = _populated()
    proof = state.prove(near)
    again = StateProof.from_wire(decode(encode(proof.to_wire())))
    assert again == proof
    assert verify_state_proof(state.root, near, b"near", again)


@pytest.mark.parametrize(
    "wire",
    [
        None,
        {"bucket": 1, "entries": []},
        {"bucket": "1", "entries": [], "siblings": []},
        {"bucket": 1, "entries": [[b"k"]], "siblings": []},
        {"bucket": 1, "entries": [[b"k", 5]], "siblings": []},
        {"bucket": 1, "entries": [], "siblings": ["nope"]},
    ],
)
def test_malformed_wire_proofs_are_refused_with_codec_error(wire: object) -> None:
    with pytest.raises(CodecError):
        StateProof.from_wire(wire)


# -- history ----------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(blocks=st.lists(WRITES, min_size=1, max_size=6), probe=KEYS)
def test_historical_proofs_match_the_root_and_value_at_each_height(
    blocks: list[dict[bytes, bytes | None]], probe: bytes
) -> None:
    state = WorldState.in_memory()
    roots: list[bytes] = []
    snapshots: list[dict[bytes, bytes]] = []
    model: dict[bytes, bytes] = {}
    for height, writes in enumerate(blocks):
        state.commit(writes, height=height)
        apply_writes(model, writes)
        roots.append(state.root)
        snapshots.append(dict(model))
    for height in range(len(blocks)):
        assert state.root_at(height) == roots[height]
        for key in [probe, *blocks[height]]:
            value, proof = state.prove_at(key, height)
            assert value == snapshots[height].get(key)
            assert verify_state_proof(roots[height], key, value, proof)


@settings(max_examples=200, deadline=None)
@given(
    bucket=st.integers(-5, 70_000),
    entries=st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=33)), max_size=4),
    siblings=st.lists(st.binary(min_size=31, max_size=33), max_size=61),
    key=st.binary(max_size=6),
    value=st.one_of(st.none(), st.binary(max_size=4)),
)
def test_verifying_any_proof_returns_a_bool_and_never_raises(
    bucket: int, entries: list[tuple[bytes, bytes]], siblings: list[bytes], key: bytes,
    value: bytes | None,
) -> None:
    proof = StateProof(bucket, tuple(entries), tuple(siblings))
    assert verify_state_proof(state_root_of({}), key, value, proof) is False
