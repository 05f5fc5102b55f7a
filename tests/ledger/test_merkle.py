"""Merkle roots and inclusion proofs."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    inner_hash,
    leaf_hash,
    merkle_proof,
    merkle_root,
    verify_proof,
)

leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=40)


def test_root_of_no_leaves_one_leaf_and_three_leaves() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert merkle_root([b"a"]) == hashlib.sha256(b"\x00a").digest()
    ab = inner_hash(leaf_hash(b"a"), leaf_hash(b"b"))
    # The odd third leaf is promoted unchanged, not paired with a copy of itself.
    assert merkle_root([b"a", b"b", b"c"]) == inner_hash(ab, leaf_hash(b"c"))


def test_duplicating_the_last_leaf_changes_the_root() -> None:
    assert merkle_root([b"a", b"b", b"c"]) != merkle_root([b"a", b"b", b"c", b"c"])


def test_an_inner_node_cannot_pose_as_a_leaf() -> None:
    ab = inner_hash(leaf_hash(b"a"), leaf_hash(b"b"))
    assert merkle_root([b"a", b"b"]) == ab
    assert not verify_proof(ab, ab[1:], 0, 1, [])
    assert merkle_root([leaf_hash(b"a") + leaf_hash(b"b")]) != ab


@settings(deadline=None)
@given(leaf_lists, st.data())
def test_every_leaf_has_a_proof_and_a_wrong_leaf_or_index_fails(
    leaves: list[bytes], data: st.DataObject
) -> None:
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle_proof(leaves, index)
    assert verify_proof(root, leaves[index], index, len(leaves), proof)
    assert not verify_proof(root, leaves[index] + b"!", index, len(leaves), proof)
    if leaves.count(leaves[index]) == 1 and len(leaves) > 1:
        other = data.draw(st.integers(0, len(leaves) - 1).filter(lambda i: i != index))
        assert not verify_proof(root, leaves[index], other, len(leaves), proof)
    assert not verify_proof(root, leaves[index], len(leaves), len(leaves), proof)
    assert not verify_proof(root, leaves[index], -1, len(leaves), proof)


@settings(deadline=None)
@given(leaf_lists, st.data())
def test_a_tampered_or_truncated_proof_fails(leaves: list[bytes], data: st.DataObject) -> None:
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle_proof(leaves, index)
    if proof:
        step = data.draw(st.integers(0, len(proof) - 1))
        tampered = list(proof)
        tampered[step] = bytes([tampered[step][0] ^ 1]) + tampered[step][1:]
        assert not verify_proof(root, leaves[index], index, len(leaves), tampered)
        assert not verify_proof(root, leaves[index], index, len(leaves), proof[:-1])
    assert not verify_proof(root, leaves[index], index, len(leaves), [*proof, root])


@settings(deadline=None)
@given(st.integers(1, 120))
def test_proof_length_is_at_most_the_tree_depth(count: int) -> None:
    leaves = [i.to_bytes(2, "big") for i in range(count)]
    depth = (count - 1).bit_length()
    assert all(len(merkle_proof(leaves, i)) <= depth for i in range(0, count, 7))
