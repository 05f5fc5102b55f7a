"""Binary Merkle trees over ordered leaves, with inclusion proofs.

Leaves and inner nodes are hashed with different one-byte prefixes (0x00 leaf, 0x01 inner)
so an inner node can never be passed off as a leaf. An odd node at the end of a level is
promoted unchanged to the next level (no duplication, so no CVE-2012-2459-style ambiguity).
The root of zero leaves is SHA-256 of the empty string.
"""

from __future__ import annotations

import hashlib

from ledger.errors import invariant

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    paired = [inner_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])
    return paired


def merkle_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(leaf) for leaf in leaves]
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from the leaf at `index` up to the root (promoted levels skipped)."""
    invariant(0 <= index < len(leaves), f"leaf index {index} outside 0..{len(leaves) - 1}")
    level = [leaf_hash(leaf) for leaf in leaves]
    proof: list[bytes] = []
    position = index
    while len(level) > 1:
        sibling = position ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        level = _next_level(level)
        position //= 2
    return proof


def verify_proof(root: bytes, leaf: bytes, index: int, count: int, proof: list[bytes]) -> bool:
    """True when `leaf` is the `index`-th of `count` leaves under `root`."""
    if not 0 <= index < count:
        return False
    node = leaf_hash(leaf)
    position, width, used = index, count, 0
    while width > 1:
        sibling = position ^ 1
        if sibling < width:
            if used >= len(proof):
                return False
            other = proof[used]
            used += 1
            node = inner_hash(other, node) if position & 1 else inner_hash(node, other)
        position //= 2
        width = (width + 1) // 2
    return used == len(proof) and node == root
