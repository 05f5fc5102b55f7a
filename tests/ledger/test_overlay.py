"""Overlays behave like a dict model: read-your-writes, ordered scans, clean discard and merge."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import InvariantViolation
from ledger.overlay import MemoryKV, Overlay

KEYS = st.sampled_from([b"a", b"a/", b"a/1", b"a/2", b"ab", b"b", b"b/1", b"c"])
VALUES = st.binary(min_size=0, max_size=4)
PREFIXES = st.sampled_from([b"", b"a", b"a/", b"b", b"c", b"z"])

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, VALUES),
        st.tuples(st.just("delete"), KEYS, st.just(b"")),
    ),
    max_size=30,
)


def _apply(overlay: Overlay, model: dict[bytes, bytes], ops: list[tuple[str, bytes, bytes]]) -> None:
    for op, key, value in ops:
        if op == "put":
            overlay.put(key, value)
            model[key] = value
        else:
            overlay.delete(key)
            model.pop(key, None)


def _model_scan(model: dict[bytes, bytes], prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
    return sorted((k, v) for k, v in model.items() if k.startswith(prefix))[:limit]


def _check_reads(view: Any, model: dict[bytes, bytes]) -> None:
    for key in [b"a", b"a/", b"a/1", b"a/2", b"ab", b"b", b"b/1", b"c", b"zz"]:
        assert view.get(key) == model.get(key)
    for prefix in [b"", b"a", b"a/", b"b", b"c", b"z"]:
        for limit in (0, 1, 2, 100):
            assert view.scan(prefix, limit) == _model_scan(model, prefix, limit)


BASES = st.dictionaries(KEYS, VALUES, max_size=6)


@settings(max_examples=150, deadline=None)
@given(base_items=BASES, block_ops=OPS, tx_ops=OPS, merge=st.booleans())
def test_overlay_stack_matches_dict_model(
    base_items: dict[bytes, bytes],
    block_ops: list[tuple[str, bytes, bytes]],
    tx_ops: list[tuple[str, bytes, bytes]],
    merge: bool,
) -> None:
    base = MemoryKV(base_items)
    block = Overlay(base)
    block_model = dict(base_items)
    _apply(block, block_model, block_ops)
    _check_reads(block, block_model)

    tx = block.child()
    tx_model = dict(block_model)
    _apply(tx, tx_model, tx_ops)
    _check_reads(tx, tx_model)

    if merge:
        tx.merge_into(block)
        _check_reads(block, tx_model)
    else:
        tx.discard()
        _check_reads(block, block_model)
    # Whatever the overlays did, the base is untouched until someone applies the writes.
    assert base.items() == sorted(base_items.items())
    _check_reads(base, base_items)


@settings(max_examples=100, deadline=None)
@given(base_items=BASES, ops=OPS)
def test_applying_block_writes_to_base_gives_the_overlay_view(
    base_items: dict[bytes, bytes], ops: list[tuple[str, bytes, bytes]]
) -> None:
    base = MemoryKV(base_items)
    block = Overlay(base)
    model = dict(base_items)
    _apply(block, model, ops)
    base.apply(block.writes)
    assert base.items() == sorted(model.items())


def test_scan_hides_base_entries_deleted_in_the_overlay_even_at_the_limit() -> None:
    base = MemoryKV({b"k/1": b"1", b"k/2": b"2", b"k/3": b"3", b"k/4": b"4"})
    overlay = Overlay(base)
    overlay.delete(b"k/1")
    overlay.delete(b"k/2")
    assert overlay.scan(b"k/", 2) == [(b"k/3", b"3"), (b"k/4", b"4")]


def test_discarded_overlay_refuses_further_writes() -> None:
    overlay = Overlay(MemoryKV())
    overlay.put(b"a", b"1")
    overlay.discard()
    assert overlay.writes == {}
    with pytest.raises(InvariantViolation):
        overlay.put(b"a", b"2")


def test_merged_child_refuses_a_second_merge() -> None:
    parent = Overlay(MemoryKV())
    child = parent.child()
    child.put(b"x", b"1")
    child.merge_into(parent)
    assert parent.get(b"x") == b"1"
    with pytest.raises(InvariantViolation):
        child.merge_into(parent)
