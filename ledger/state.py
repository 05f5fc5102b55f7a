"""World state: committed key-value state with a bucketed Merkle commitment (docs/STATE.md).

Every user key K lives at b"s/" + K. Keys fall into 2^16 buckets by the first two bytes of
SHA-256(K). A bucket's hash covers its entries in key order; a complete 16-ary Merkle tree
(four levels) over the 65,536 bucket hashes gives the state root that goes into every
header. The tree is held in memory (4,369 inner hashes, rebuilt at open from the persisted
bucket hashes), so a block costs work in proportion to the buckets it touches, and a proof
of K (present or absent) is the (key, value hash) pairs of K's bucket plus 4 x 15 sibling
hashes.

LevelDB layout (all under this module's prefixes b"s/" and b"m/"):
    s/<K>                      -> value
    m/e/<bucket:2><K>          -> SHA-256(value) || leaf hash   (a bucket's entries, contiguous)
    m/b/<bucket:2>             -> bucket hash          (absent = empty bucket)
    m/root                     -> state root after the last applied block
    m/height                   -> canonical int: height of the last applied writes
    m/format                   -> STATE_FORMAT, written with the first writes
    m/diff/<height:8 BE>       -> undo record: previous values and bucket hashes

Writes reach disk only through `PreparedState.ops`, which the block store writes in the
same synced batch as the block; `apply_prepared` then advances the in-memory tree.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from ledger.codec import decode, encode
from ledger.errors import CodecError, LedgerError, invariant
from ledger.overlay import MemoryKV

BUCKET_BITS = 16
BUCKET_COUNT = 1 << BUCKET_BITS
# Each inner node hashes 16 children: a path is 4 nodes instead of a binary tree's 16, and
# a block's commit hashes ~2.5x fewer, larger messages (the per-call cost of SHA-256 in
# Python dominates; benchmarks/PERF_FINDINGS.md S11). Proofs grow to 60 sibling hashes.
TREE_ARITY_BITS = 4
TREE_ARITY = 1 << TREE_ARITY_BITS
TREE_DEPTH = BUCKET_BITS // TREE_ARITY_BITS
PROOF_SIBLINGS = TREE_DEPTH * (TREE_ARITY - 1)
HASH_BYTES = 32
KEY_BYTES_MAX = 0xFFFF  # keys are length-prefixed with two bytes in leaf hashes

STATE_PREFIX = b"s/"
ENTRY_PREFIX = b"m/e/"
BUCKET_PREFIX = b"m/b/"
DIFF_PREFIX = b"m/diff/"
ROOT_KEY = b"m/root"
HEIGHT_KEY = b"m/height"
FORMAT_KEY = b"m/format"
# Names the commitment and layout; a database holding state in another format is refused
# at open rather than read wrongly. (Before m/format existed the tree was binary.)
STATE_FORMAT = b"tree16-v1"

# One LevelDB operation: (key, value) puts, (key, None) deletes. The block store writes a
# list of these in the same synced batch as the block.
StateOp = tuple[bytes, bytes | None]

# Our own undo records can hold many large values; they never come from a peer.
_DIFF_DECODE_BYTES_MAX = 1 << 32


class StateFormatError(LedgerError):
    """The database holds state written in another format than this code reads."""

    code = "state_format"


def bucket_of(key: bytes) -> int:
    return int.from_bytes(hashlib.sha256(key).digest()[:2], "big") >> (16 - BUCKET_BITS)


def value_hash(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def entry_leaf_hash(key: bytes, value_digest: bytes) -> bytes:
    """0x00 || u16 len(K) || K || SHA-256(V): hashing V first keeps proofs small."""
    return hashlib.sha256(b"\x00" + len(key).to_bytes(2, "big") + key + value_digest).digest()


def bucket_hash(entries: Mapping[bytes, bytes]) -> bytes:
    """0x02 || leaf hashes in key order; an empty bucket hashes to SHA-256(0x02)."""
    digest = hashlib.sha256(b"\x02")
    for key in sorted(entries):
        digest.update(entry_leaf_hash(key, entries[key]))
    return digest.digest()


EMPTY_BUCKET_HASH = bucket_hash({})


def _entry_record(key: bytes, value_digest: bytes) -> bytes:
    """What m/e/ stores: the value hash for proofs and the leaf hash for rehashing buckets."""
    return value_digest + entry_leaf_hash(key, value_digest)


def _bucket_hash_of_records(records: Mapping[bytes, bytes]) -> bytes:
    """bucket_hash from stored entry records, without rehashing the leaves."""
    return hashlib.sha256(
        b"\x02" + b"".join(records[key][HASH_BYTES:] for key in sorted(records))
    ).digest()


def _bucket_bytes(bucket: int) -> bytes:
    return bucket.to_bytes(2, "big")


def _height_bytes(height: int) -> bytes:
    return height.to_bytes(8, "big")


# --- the in-memory tree --------------------------------------------------------------------
# Flat layout, level by level from the root: nodes[0] is the root, level d (d = 0..4) starts
# at _LEVEL_START[d], and the children of node j of level d are nodes 16j .. 16j + 15 of
# level d + 1. Level 4 holds the bucket hashes: bucket b is nodes[_BUCKETS_START + b].

_LEVEL_START = tuple((TREE_ARITY ** depth - 1) // (TREE_ARITY - 1) for depth in range(TREE_DEPTH + 1))
_BUCKETS_START = _LEVEL_START[TREE_DEPTH]
ROOT_INDEX = 0


def tree_node_hash(children: list[bytes]) -> bytes:
    """0x03 || the 16 child hashes in order."""
    return hashlib.sha256(b"\x03" + b"".join(children)).digest()


_empty_tree_cache: list[bytes] = []


def _empty_tree() -> list[bytes]:
    if not _empty_tree_cache:
        # Every node of one level of the empty tree has the same hash: 5 hashes, not 4,369.
        nodes = [b""] * (_BUCKETS_START + BUCKET_COUNT)
        level_hash = EMPTY_BUCKET_HASH
        for depth in range(TREE_DEPTH, -1, -1):
            start = _LEVEL_START[depth]
            nodes[start:start + TREE_ARITY ** depth] = [level_hash] * TREE_ARITY ** depth
            level_hash = tree_node_hash([level_hash] * TREE_ARITY)
        _empty_tree_cache.extend(nodes)
    return list(_empty_tree_cache)


def _tree_updates(nodes: list[bytes], buckets: Mapping[int, bytes]) -> dict[int, bytes]:
    """Node index -> new hash for every node on the paths from the changed buckets."""
    changed: dict[int, bytes] = {}
    sha = hashlib.sha256
    level: Mapping[int, bytes] = buckets  # position within the level -> new hash
    for depth in range(TREE_DEPTH, 0, -1):
        start = _LEVEL_START[depth]
        parents: dict[int, bytes] = {}
        row: list[bytes] = []
        parent = -1
        # Positions ascend, so the children of one parent come one after another.
        for position in sorted(level):
            digest = level[position]
            changed[start + position] = digest
            if position >> TREE_ARITY_BITS != parent:
                if parent >= 0:
                    # inline tree_node_hash: this loop is the hot part of a block's commit
                    parents[parent] = sha(b"\x03" + b"".join(row)).digest()
                parent = position >> TREE_ARITY_BITS
                first = start + (parent << TREE_ARITY_BITS)
                row = nodes[first:first + TREE_ARITY]
            row[position & (TREE_ARITY - 1)] = digest
        if parent >= 0:
            parents[parent] = sha(b"\x03" + b"".join(row)).digest()
        level = parents
    for position, digest in level.items():
        changed[position] = digest  # the root: level 0 starts at index 0
    return changed


def _siblings(nodes: list[bytes], changed: Mapping[int, bytes], bucket: int) -> list[bytes]:
    """The 15 other children of each node on the path, bottom level first, in order."""
    out: list[bytes] = []
    position = bucket
    for depth in range(TREE_DEPTH, 0, -1):
        first = _LEVEL_START[depth] + ((position >> TREE_ARITY_BITS) << TREE_ARITY_BITS)
        own = _LEVEL_START[depth] + position
        out.extend(changed.get(index, nodes[index])
                   for index in range(first, first + TREE_ARITY) if index != own)
        position >>= TREE_ARITY_BITS
    return out


# --- proofs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateProof:
    """Everything needed to recompute the root from K's bucket.

    `entries` are (key, SHA-256(value)) for every key in the bucket, in key order: K's own
    entry when present, and all the others so that absence can be shown. `siblings` are the
    60 sibling hashes from the bucket up to the root: at each of the 4 levels, bottom first,
    the 15 other children of the path's node, in order.
    """

    bucket: int
    entries: tuple[tuple[bytes, bytes], ...]
    siblings: tuple[bytes, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "entries": [[key, digest] for key, digest in self.entries],
            "siblings": list(self.siblings),
        }

    @classmethod
    def from_wire(cls, data: Any) -> StateProof:
        """Shape-check a proof received from elsewhere; CodecError when malformed."""
        if not isinstance(data, dict) or set(data) != {"bucket", "entries", "siblings"}:
            raise CodecError("a state proof is a map of bucket, entries and siblings")
        bucket, entries, siblings = data["bucket"], data["entries"], data["siblings"]
        if type(bucket) is not int or not isinstance(entries, list) or not isinstance(
            siblings, list
        ):
            raise CodecError("state proof fields have the wrong types")
        pairs: list[tuple[bytes, bytes]] = []
        for entry in entries:
            if (not isinstance(entry, list) or len(entry) != 2
                    or not all(isinstance(part, bytes) for part in entry)):
                raise CodecError("a state proof entry is [key bytes, value hash bytes]")
            pairs.append((entry[0], entry[1]))
        if not all(isinstance(sibling, bytes) for sibling in siblings):
            raise CodecError("state proof siblings must be bytes")
        return cls(bucket, tuple(pairs), tuple(siblings))


def verify_state_proof(root: bytes, key: bytes, value: bytes | None, proof: StateProof) -> bool:
    """True when `proof` shows that `key` maps to `value` (None: absent) under `root`.

    Pure and total: a malformed proof gives False, never an exception.
    """
    if not isinstance(key, bytes) or not 0 < len(key) <= KEY_BYTES_MAX:
        return False
    if proof.bucket != bucket_of(key) or len(proof.siblings) != PROOF_SIBLINGS:
        return False
    entries: dict[bytes, bytes] = {}
    previous: bytes | None = None
    for entry_key, digest in proof.entries:
        if not isinstance(entry_key, bytes) or not isinstance(digest, bytes):
            return False
        if len(digest) != HASH_BYTES or not 0 < len(entry_key) <= KEY_BYTES_MAX:
            return False
        if previous is not None and entry_key <= previous:
            return False  # keys must be strictly ascending: no duplicates, one order
        if bucket_of(entry_key) != proof.bucket:
            return False
        entries[entry_key] = digest
        previous = entry_key
    if value is None:
        if key in entries:
            return False
    elif entries.get(key) != value_hash(value):
        return False
    if not all(isinstance(sibling, bytes) and len(sibling) == HASH_BYTES
               for sibling in proof.siblings):
        return False
    node = bucket_hash(entries)
    position = proof.bucket
    for level in range(TREE_DEPTH):
        others = list(proof.siblings[level * (TREE_ARITY - 1):(level + 1) * (TREE_ARITY - 1)])
        slot = position & (TREE_ARITY - 1)
        node = tree_node_hash(others[:slot] + [node] + others[slot:])
        position >>= TREE_ARITY_BITS
    return node == root


# --- storage backends ----------------------------------------------------------------------


class PlyvelLike(Protocol):
    """The part of a plyvel DB (or prefixed DB) that the state uses."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterator(self, *, prefix: bytes) -> Any: ...

    def write_batch(self, *, sync: bool = ...) -> Any: ...


class StateBackend(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose key starts with `prefix`, in ascending key order."""
        ...

    def items_of_prefixes(self, prefixes: list[bytes]) -> list[list[tuple[bytes, bytes]]]:
        """`items` of each prefix (given in ascending order), read in one pass."""
        ...

    def write(self, ops: list[StateOp]) -> None: ...


class PlyvelBackend:
    def __init__(self, db: PlyvelLike) -> None:
        self.db = db

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        with self.db.iterator(prefix=prefix) as entries:
            yield from entries

    def items_of_prefixes(self, prefixes: list[bytes]) -> list[list[tuple[bytes, bytes]]]:
        # One raw iterator and a seek per prefix: about half the cost of an iterator per
        # prefix, and one consistent snapshot for the whole block. A plyvel PrefixedDB has
        # no raw iterator, so it takes the slower path.
        if not hasattr(self.db, "raw_iterator"):
            return [list(self.items(prefix)) for prefix in prefixes]
        cursor = self.db.raw_iterator()
        out: list[list[tuple[bytes, bytes]]] = []
        try:
            for prefix in prefixes:
                found: list[tuple[bytes, bytes]] = []
                cursor.seek(prefix)
                while cursor.valid():
                    key = cursor.key()
                    if not key.startswith(prefix):
                        break
                    found.append((key, cursor.value()))
                    cursor.next()
                out.append(found)
        finally:
            cursor.close()
        return out

    def write(self, ops: list[StateOp]) -> None:
        with self.db.write_batch(sync=True) as batch:
            for key, value in ops:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)


class MemoryBackend:
    """A sorted in-memory stand-in for LevelDB (tests, simulations, genesis roots)."""

    def __init__(self) -> None:
        self.kv = MemoryKV()

    def get(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.kv.scan(prefix, 1 << 62))

    def items_of_prefixes(self, prefixes: list[bytes]) -> list[list[tuple[bytes, bytes]]]:
        return [self.kv.scan(prefix, 1 << 62) for prefix in prefixes]

    def write(self, ops: list[StateOp]) -> None:
        self.kv.apply(dict(ops))


# Bounds of the state's read caches (kept across blocks; docs/STATE.md "Read caches"):
# values of up to 2^16 keys, each value at most 256 bytes (balances, nonces, small
# records; larger ones are read each time); entry records of buckets, 2^16 entries in all
# and 2^12 in one; and state prefixes known to hold nothing. About 15-30 MB at most,
# whatever the state.
VALUES_CACHED_MAX = 1 << 16
VALUE_CACHED_BYTES_MAX = 256
BUCKET_ENTRIES_CACHED_MAX = 1 << 16
ONE_BUCKET_CACHED_ENTRIES_MAX = 1 << 12  # a crowded (ground) bucket is read each time
EMPTY_PREFIXES_CACHED_MAX = 256


def _trim_oldest(cache: dict[Any, Any], limit: int) -> None:
    """Keep a cache at most `limit` entries by dropping its oldest half (insertion order)."""
    if len(cache) >= limit:
        for key in list(itertools.islice(cache, len(cache) // 2 or 1)):
            del cache[key]


class _StateReader:
    """Committed state as a KeyValueReader (for ledger.overlay.Overlay).

    Reads go through the state's value cache, which holds committed values of the current
    version and is updated by every apply with the block's own writes: a sender's nonce
    read at admission, or an account written by the last block, is not read from LevelDB
    again, and `prepare` finds the previous values for its undo record there (the executor
    has just read nearly every key a block writes). A reader made before an apply may go on
    reading (it sees the newer values, as LevelDB itself would show it) but adds nothing to
    the caches: what it read may already be stale.
    """

    def __init__(self, state: WorldState) -> None:
        self._state = state
        self._version = state._version

    def get(self, key: bytes) -> bytes | None:
        state = self._state
        values = state._values
        if key in values:
            return values[key]
        read = state._backend.get(STATE_PREFIX + key)
        if self._version == state._version and (
                read is None or len(read) <= VALUE_CACHED_BYTES_MAX):
            _trim_oldest(values, VALUES_CACHED_MAX)
            values[key] = read
        return read

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        # Rules' end-of-block hooks look for due work under a prefix every block, and it is
        # usually empty: an empty prefix is remembered until a block writes under it.
        state = self._state
        if prefix in state._empty_prefixes:
            return []
        skip = len(STATE_PREFIX)
        entries = state._backend.items(STATE_PREFIX + prefix)
        found = [(key[skip:], value) for key, value in itertools.islice(entries, max(limit, 0))]
        if not found and limit > 0 and self._version == state._version:
            _trim_oldest(state._empty_prefixes, EMPTY_PREFIXES_CACHED_MAX)
            state._empty_prefixes[prefix] = None
        return found


# --- the world state -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedState:
    """The outcome of applying a block's writes, not yet live.

    `ops` go into the block's LevelDB batch; `apply_prepared` advances the tree afterwards.
    """

    root: bytes
    ops: list[StateOp]
    height: int | None
    base_version: int
    node_updates: dict[int, bytes] = field(repr=False)
    # For the read caches once applied: the written values, and each dirty bucket's
    # entry records after the writes.
    values: dict[bytes, bytes | None] = field(repr=False, default_factory=dict)
    bucket_entries: dict[int, dict[bytes, bytes]] = field(repr=False, default_factory=dict)


class WorldState:
    """Committed state plus the in-memory bucket tree whose root goes into headers."""

    def __init__(self, db: PlyvelLike | PlyvelBackend | MemoryBackend) -> None:
        """`db` is a plyvel DB (or prefixed DB), or a backend such as `MemoryBackend()`."""
        backend: StateBackend = (
            db if isinstance(db, PlyvelBackend | MemoryBackend) else PlyvelBackend(db)
        )
        self._backend = backend
        self._version = 0  # bumped by every apply; a PreparedState is valid for one version
        # Read caches of the committed state, all bounded and kept current by every apply
        # (the only way state changes): key -> value (None = absent); bucket -> its entry
        # records (key -> value hash || leaf hash); prefixes with no keys (a set, ordered).
        self._values: dict[bytes, bytes | None] = {}
        self._buckets: dict[int, dict[bytes, bytes]] = {}
        self._bucket_entries_cached = 0  # entries in all of _buckets
        self._empty_prefixes: dict[bytes, None] = {}
        stored_format = backend.get(FORMAT_KEY)
        self._format_written = backend.get(ROOT_KEY) is not None
        if self._format_written and stored_format != STATE_FORMAT:
            found = "the binary-tree format" if stored_format is None else repr(stored_format)
            raise StateFormatError(
                f"the database holds state in {found}, this node reads {STATE_FORMAT!r}; "
                "headers commit to state roots, so a network begun in another format "
                "must be begun again (a local testnet: `cityledger testnet up --fresh`); "
                "a node whose peers already run this format syncs into an empty data "
                "directory")
        self._nodes = _empty_tree()
        persisted = {
            int.from_bytes(key[len(BUCKET_PREFIX):], "big"): digest
            for key, digest in backend.items(BUCKET_PREFIX)
        }
        for digest in persisted.values():
            invariant(len(digest) == HASH_BYTES, "corrupt bucket hash in state metadata")
        for index, digest in _tree_updates(self._nodes, persisted).items():
            self._nodes[index] = digest
        stored_root = backend.get(ROOT_KEY)
        invariant(
            stored_root is None or stored_root == self._nodes[ROOT_INDEX],
            "state root rebuilt from bucket hashes differs from the stored root: state "
            "metadata is corrupt, or was written by a version with another state commitment",
        )
        raw_height = backend.get(HEIGHT_KEY)
        self._height: int | None = None if raw_height is None else decode(raw_height)

    @classmethod
    def in_memory(cls) -> WorldState:
        return cls(MemoryBackend())

    # -- reading ----------------------------------------------------------------------------
    @property
    def root(self) -> bytes:
        return self._nodes[ROOT_INDEX]

    @property
    def height(self) -> int | None:
        """Height of the last block applied with `height=`, or None if none was."""
        return self._height

    def reader(self) -> _StateReader:
        return _StateReader(self)

    def get(self, key: bytes) -> bytes | None:
        return self._backend.get(STATE_PREFIX + key)

    def _bucket_records(self, bucket: int) -> dict[bytes, bytes]:
        """Key -> stored entry record (value hash || leaf hash) for one bucket."""
        prefix = ENTRY_PREFIX + _bucket_bytes(bucket)
        skip = len(prefix)
        return {key[skip:]: record for key, record in self._backend.items(prefix)}

    def prove(self, key: bytes) -> StateProof:
        """Proof of K's current value (or absence) under `root`."""
        bucket = bucket_of(key)
        records = self._bucket_records(bucket)
        return StateProof(
            bucket,
            tuple((entry_key, records[entry_key][:HASH_BYTES]) for entry_key in sorted(records)),
            tuple(_siblings(self._nodes, {}, bucket)),
        )

    # -- writing ----------------------------------------------------------------------------
    def prepare(
        self, writes: Mapping[bytes, bytes | None], *, height: int | None = None
    ) -> PreparedState:
        """The root and LevelDB ops after `writes` (None deletes); the live state is unchanged.

        With `height`, an undo record for historical queries is added under m/diff/.
        """
        if height is not None:
            invariant(
                self._height is None or height == self._height + 1,
                f"state at height {self._height} cannot take writes for height {height}",
            )
        by_bucket: dict[int, list[bytes]] = {}
        sha = hashlib.sha256
        for key in writes:
            # The message is built only on failure: this loop runs for every written key.
            if type(key) is not bytes or not 0 < len(key) <= KEY_BYTES_MAX:
                invariant(
                    isinstance(key, bytes) and 0 < len(key) <= KEY_BYTES_MAX,
                    f"state key {key!r} is not 1..{KEY_BYTES_MAX} bytes",
                )
            # inline bucket_of
            bucket = int.from_bytes(sha(key).digest()[:2], "big") >> (16 - BUCKET_BITS)
            by_bucket.setdefault(bucket, []).append(key)
        remembered = self._values
        ops: list[StateOp] = []
        new_buckets: dict[int, bytes] = {}
        undo_values: list[list[bytes | None]] = []
        undo_buckets: list[list[int | bytes]] = []
        dirty = sorted(by_bucket)
        cached = self._buckets
        prefixes = [ENTRY_PREFIX + _bucket_bytes(bucket) for bucket in dirty]
        # Buckets not in the cache are read in ascending order with one iterator.
        skip = len(ENTRY_PREFIX) + 2
        stored = iter(self._backend.items_of_prefixes(
            [prefix for bucket, prefix in zip(dirty, prefixes, strict=True)
             if bucket not in cached]))
        bucket_entries: dict[int, dict[bytes, bytes]] = {}
        for bucket, entry_prefix in zip(dirty, prefixes, strict=True):
            known = cached.get(bucket)
            # A copy: this prepare may lose to a competing one and must not touch the cache.
            entries = dict(known) if known is not None else {
                key[skip:]: record for key, record in next(stored)}
            bucket_entries[bucket] = entries
            for key in sorted(by_bucket[bucket]):
                value = writes[key]
                existed = key in entries
                if height is not None:
                    previous: bytes | None = None
                    if existed:
                        previous = (remembered[key] if key in remembered
                                    else self._backend.get(STATE_PREFIX + key))
                    undo_values.append([key, previous])
                if value is None:
                    if not existed:
                        continue
                    del entries[key]
                    ops.append((STATE_PREFIX + key, None))
                    ops.append((entry_prefix + key, None))
                else:
                    if type(value) is not bytes:
                        invariant(isinstance(value, bytes), f"state value for {key!r} is not bytes")
                    # inline _entry_record(key, value_hash(value)): once per written key
                    digest = sha(value).digest()
                    record = digest + sha(
                        b"\x00" + len(key).to_bytes(2, "big") + key + digest).digest()
                    entries[key] = record
                    ops.append((STATE_PREFIX + key, value))
                    ops.append((entry_prefix + key, record))
            # inline _bucket_hash_of_records(entries)
            new_hash = sha(b"\x02" + b"".join(
                [entries[key][HASH_BYTES:] for key in sorted(entries)])).digest()
            old_hash = self._nodes[_BUCKETS_START + bucket]
            if new_hash != old_hash:
                new_buckets[bucket] = new_hash
                undo_buckets.append([bucket, old_hash])
                ops.append((BUCKET_PREFIX + _bucket_bytes(bucket), new_hash if entries else None))
        updates = _tree_updates(self._nodes, new_buckets)
        root = updates.get(ROOT_INDEX, self._nodes[ROOT_INDEX])
        ops.append((ROOT_KEY, root))
        if not self._format_written:
            ops.append((FORMAT_KEY, STATE_FORMAT))
        if height is not None:
            # Keys in sorted order and only bytes/None/int inside: msgpack's own output is
            # already canonical, and skipping the codec's checks halves this step.
            undo = {"buckets": undo_buckets, "values": undo_values}
            ops.append((DIFF_PREFIX + _height_bytes(height), msgpack.packb(undo, use_bin_type=True)))
            ops.append((HEIGHT_KEY, encode(height)))
        return PreparedState(root, ops, height, self._version, updates, dict(writes),
                             bucket_entries)

    def apply_prepared(self, prepared: PreparedState) -> None:
        """Make `prepared` live once its ops are durably written."""
        invariant(
            prepared.base_version == self._version,
            "prepared state was built on an older state (a competing proposal was applied)",
        )
        written = self._backend.get(ROOT_KEY) == prepared.root and (
            prepared.height is None
            or self._backend.get(HEIGHT_KEY) == encode(prepared.height)
        )
        invariant(written, "apply_prepared called before the prepared ops were written")
        for index, digest in prepared.node_updates.items():
            self._nodes[index] = digest
        if prepared.height is not None:
            self._height = prepared.height
        self._format_written = True
        self._version += 1
        self._update_caches(prepared)

    def _update_caches(self, prepared: PreparedState) -> None:
        values = self._values
        for key, value in prepared.values.items():
            if value is not None and len(value) > VALUE_CACHED_BYTES_MAX:
                values.pop(key, None)
                continue
            if key not in values:
                _trim_oldest(values, VALUES_CACHED_MAX)
            values[key] = value
        buckets = self._buckets
        for bucket, entries in prepared.bucket_entries.items():
            held = buckets.pop(bucket, None)
            if held is not None:
                self._bucket_entries_cached -= len(held)
            if len(entries) > ONE_BUCKET_CACHED_ENTRIES_MAX:
                continue  # evicting nothing for it
            if self._bucket_entries_cached + len(entries) > BUCKET_ENTRIES_CACHED_MAX:
                for old in list(itertools.islice(buckets, len(buckets) // 2 + 1)):
                    self._bucket_entries_cached -= len(buckets.pop(old))
            buckets[bucket] = entries
            self._bucket_entries_cached += len(entries)
        empty = self._empty_prefixes
        if empty:
            prefixes = tuple(empty)
            for key, value in prepared.values.items():
                if value is not None and key.startswith(prefixes):
                    for prefix in prefixes:
                        if key.startswith(prefix):
                            empty.pop(prefix, None)

    def commit(self, writes: Mapping[bytes, bytes | None], *, height: int | None = None) -> bytes:
        """prepare + write + apply in one step, for use without a block store."""
        prepared = self.prepare(writes, height=height)
        self._backend.write(prepared.ops)
        self.apply_prepared(prepared)
        return prepared.root

    # -- history ----------------------------------------------------------------------------
    def _undo(self, height: int) -> dict[str, Any]:
        raw = self._backend.get(DIFF_PREFIX + _height_bytes(height))
        invariant(raw is not None, f"no undo record for height {height}")
        assert raw is not None
        undo = decode(raw, max_bytes=_DIFF_DECODE_BYTES_MAX)
        invariant(isinstance(undo, dict), f"corrupt undo record for height {height}")
        result: dict[str, Any] = undo
        return result

    def prove_at(self, key: bytes, height: int) -> tuple[bytes | None, StateProof]:
        """K's value at `height` and a proof against that height's state root.

        Walks the undo records from the current height back to `height`, so the cost grows
        with the number of writes since then (docs/STATE.md).
        """
        invariant(self._height is not None, "state has no recorded height")
        assert self._height is not None
        invariant(0 <= height <= self._height, f"height {height} outside 0..{self._height}")
        bucket = bucket_of(key)
        entries = {k: r[:HASH_BYTES] for k, r in self._bucket_records(bucket).items()}
        value = self.get(key)
        old_buckets: dict[int, bytes] = {}
        for undo_height in range(self._height, height, -1):
            undo = self._undo(undo_height)
            for entry_key, previous in undo["values"]:
                if entry_key == key:
                    value = previous
                if bucket_of(entry_key) == bucket:
                    if previous is None:
                        entries.pop(entry_key, None)
                    else:
                        entries[entry_key] = value_hash(previous)
            for changed_bucket, old_hash in undo["buckets"]:
                old_buckets[changed_bucket] = old_hash
        changed = _tree_updates(self._nodes, old_buckets)
        proof = StateProof(
            bucket, tuple(sorted(entries.items())), tuple(_siblings(self._nodes, changed, bucket))
        )
        return value, proof

    def root_at(self, height: int) -> bytes:
        """The state root after the writes of `height` (rebuilt from undo records)."""
        invariant(self._height is not None, "state has no recorded height")
        assert self._height is not None
        invariant(0 <= height <= self._height, f"height {height} outside 0..{self._height}")
        old_buckets: dict[int, bytes] = {}
        for undo_height in range(self._height, height, -1):
            for changed_bucket, old_hash in self._undo(undo_height)["buckets"]:
                old_buckets[changed_bucket] = old_hash
        return _tree_updates(self._nodes, old_buckets).get(ROOT_INDEX, self._nodes[ROOT_INDEX])


def state_root_of(items: Mapping[bytes, bytes]) -> bytes:
    """The state root of a state holding exactly `items` (genesis, tests)."""
    return WorldState.in_memory().prepare(dict(items)).root
