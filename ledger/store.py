"""Append-only, hash-linked block store on LevelDB (plyvel), shared with the world state.

One LevelDB database per node. The world state owns the prefixes b"s/" (state keys) and
b"m/" (state metadata); this module owns every key below, and `append` writes a block,
its certificate, tx index, receipts, the block's state changes and the tip pointer in ONE
synced write batch. LevelDB applies a batch as one log record, so after kill -9 a reopen
sees either all of a block or none of it, and the tip pointer always names a complete one.

Key layout (H8 = height as 8-byte big-endian, I4 = tx index as 4-byte big-endian):

    chain/genesis_hash       -> genesis hash (32 bytes)
    chain/genesis_state_root -> state root after genesis (32 bytes)
    chain/tip                -> H8 + tip block hash (32) + tip certificate seq (8, BE)
    chain/sync_mark          -> b"" (what `sync()` writes synced; see there)
    hdr/  + H8               -> canonical header bytes
    tx/   + H8 + I4          -> signed tx wire bytes (the block is header + these, in order)
    rcpt/ + H8 + I4          -> receipt bytes of that tx
    cert/ + H8               -> canonical commit certificate bytes
    hash/ + block hash       -> H8
    txloc/ + tx hash         -> H8 + I4 of the inclusion that accepted the tx, else of its
                                first (a byzantine primary may include a tx more than once:
                                once with its nonce ahead, rejected, and again later, or again
                                after it executed; at most one copy is accepted, since that
                                consumes the nonce, and a lookup must find it)

Height 0 is genesis: it has a hash and a state root but no stored block or certificate.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import plyvel

from ledger.block import Block, CommitCertificate, Header, receipts_root_of
from ledger.crypto import HASH_BYTES, sha256
from ledger.errors import LedgerError, invariant
from ledger.merkle import merkle_proof

StateOp = tuple[bytes, bytes | None]

STATE_PREFIXES = (b"s/", b"m/")
GENESIS_HASH_KEY = b"chain/genesis_hash"
GENESIS_STATE_ROOT_KEY = b"chain/genesis_state_root"
TIP_KEY = b"chain/tip"
SYNC_MARK_KEY = b"chain/sync_mark"  # written (synced) by sync(); its value means nothing
HEADER_PREFIX = b"hdr/"
TX_PREFIX = b"tx/"
RECEIPT_PREFIX = b"rcpt/"
CERT_PREFIX = b"cert/"
BLOCK_HASH_PREFIX = b"hash/"
TX_LOCATION_PREFIX = b"txloc/"
STORE_PREFIXES = (b"chain/", HEADER_PREFIX, TX_PREFIX, RECEIPT_PREFIX, CERT_PREFIX,
                  BLOCK_HASH_PREFIX, TX_LOCATION_PREFIX)
RANGE_BLOCKS_MAX = 256
# Most point reads miss: a new tx's txloc/ entry, a new account's state. Without a filter a
# miss reads an index block of every level's candidate table, and there are more levels as
# the chain grows; 10 bits per key lets ~99% of misses skip the table (the filter block
# costs ~1.25 bytes per key of an open table). Tables written before filters were enabled
# are still read correctly.
BLOOM_FILTER_BITS = 10
# No block compression. What we store is mostly signatures, hashes and keys derived from
# hashes, which snappy cannot shrink, yet every compaction paid to decompress its inputs
# and try to compress its outputs: with snappy, LevelDB's background thread used ~0.12
# cores per node at 700-860 committed tx/s; without, ~0.04 at 890-1,250 (PERF_FINDINGS S4).
# Tables written with snappy are still read (each block records its own compression).
COMPRESSION = None

_H8 = struct.Struct(">Q")
_LOCATION = struct.Struct(">QI")
_TIP = struct.Struct(">Q32sQ")


@dataclass(frozen=True, slots=True)
class TxInclusion:
    """Everything a light client needs to check a tx and its receipt against a header
    (with `ledger.block.verify_tx_inclusion` / `verify_receipt_inclusion`); pair it with
    the height's commit certificate for finality."""

    header: Header
    index: int
    count: int
    tx: bytes
    receipt: bytes
    tx_proof: list[bytes]
    receipt_proof: list[bytes]


class StoreError(LedgerError):
    """A block or genesis the store refuses, or a store it cannot open; nothing was written."""

    code = "store_error"


def fsync_older_logs(directory: Path) -> list[str]:
    """fsync every LevelDB log in `directory` but the newest (the one in use); their names.

    LevelDB numbers its files in creation order, so the highest-numbered `NNNNNN.log` is
    the current log. An older one exists only until its memtable is flushed to a table,
    after which LevelDB deletes it; one deleted meanwhile needs nothing (the table it
    became was synced).
    """
    logs = sorted((int(name[:-4]), name) for name in os.listdir(directory)
                  if name.endswith(".log") and name[:-4].isdigit())
    synced: list[str] = []
    for _, name in logs[:-1]:
        try:
            fd = os.open(directory / name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        synced.append(name)
    return synced


def _h8(height: int) -> bytes:
    return _H8.pack(height)


def _location_key(prefix: bytes, height: int, index: int) -> bytes:
    return prefix + _LOCATION.pack(height, index)


def _check_ops(ops: Iterable[StateOp], *, state: bool) -> list[StateOp]:
    # Runs for every op of every block: the messages are built only on failure. The state
    # prefixes and the store's are disjoint, so a state op needs only the first test.
    checked = list(ops)
    for key, value in checked:
        if not isinstance(key, bytes) or not (value is None or isinstance(value, bytes)):
            raise StoreError("a write op is (bytes key, bytes value or None)", code="bad_op")
        if state:
            if not key.startswith(STATE_PREFIXES):
                raise StoreError(f"state key {key!r} is outside the state prefixes",
                                 code="bad_op")
        elif key.startswith(STORE_PREFIXES):
            raise StoreError(f"key {key!r} is reserved for the block store", code="bad_op")
    return checked


@dataclass(frozen=True, slots=True)
class StoreMemoryLimits:
    """What LevelDB may hold in memory, stated rather than left to its defaults.

    A node's LevelDB memory is at most about
        block_cache_mb + 2 x write_buffer_mb (the memtable and the one being flushed)
        + open_files_max x ~40 KB (each open table's index and bloom filter blocks)
    and does not grow with the chain. Open tables are also memory-mapped, so pages of them
    that were read show in the process's RSS as file-backed pages; those are the kernel's
    page cache, dropped under memory pressure, and bounded by open_files_max x the table
    size (2-4 MB).
    """

    block_cache_mb: int = 8
    write_buffer_mb: int = 4
    open_files_max: int = 256

    def __post_init__(self) -> None:
        for name, (low, high) in STORE_LIMIT_RANGES.items():
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise StoreError(f"store memory limits out of range: {name} must be an "
                                 f"integer in {low}..{high}, got {value!r}",
                                 code="store_limits")


# The allowed range of each StoreMemoryLimits field (node config checks against it too).
STORE_LIMIT_RANGES: dict[str, tuple[int, int]] = {
    "block_cache_mb": (1, 4096),
    "write_buffer_mb": (1, 512),
    "open_files_max": (32, 65_536),
}


class BlockStore:
    """The node's block history; see the module docstring for the key layout."""

    def __init__(self, db: plyvel.DB) -> None:
        self.db = db
        self._tip: tuple[int, bytes, int] | None = self._read_tip()

    @classmethod
    def open(cls, path: Path, limits: StoreMemoryLimits | None = None) -> BlockStore:
        path = Path(path)
        limits = limits or StoreMemoryLimits()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = plyvel.DB(str(path), create_if_missing=True,
                           lru_cache_size=limits.block_cache_mb * 2**20,
                           write_buffer_size=limits.write_buffer_mb * 2**20,
                           max_open_files=limits.open_files_max,
                           bloom_filter_bits=BLOOM_FILTER_BITS,
                           compression=COMPRESSION)
        except (plyvel.Error, OSError) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}", code="store_open") from exc
        return cls(db)

    def close(self) -> None:
        if not self.db.closed:
            self.db.close()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------

    def init_genesis(
        self, genesis_hash: bytes, state_root: bytes, state_ops: Sequence[StateOp]
    ) -> None:
        """Record genesis and its initial state once; a no-op for the same genesis again."""
        if len(genesis_hash) != HASH_BYTES or len(state_root) != HASH_BYTES:
            raise StoreError("genesis hash and state root are 32 bytes each", code="bad_genesis")
        existing = self.genesis_hash()
        if existing is not None:
            if existing != genesis_hash:
                raise StoreError(
                    f"store holds genesis {existing.hex()}, not {genesis_hash.hex()}",
                    code="genesis_mismatch",
                )
            return
        ops = _check_ops(state_ops, state=True)
        batch = self.db.write_batch(sync=True)
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(GENESIS_HASH_KEY, genesis_hash)
        batch.put(GENESIS_STATE_ROOT_KEY, state_root)
        batch.put(TIP_KEY, _TIP.pack(0, genesis_hash, 0))
        batch.write()
        self._tip = (0, genesis_hash, 0)

    def append(
        self,
        block: Block,
        cert: CommitCertificate,
        receipts: Sequence[bytes],
        state_ops: Sequence[StateOp],
        extra_ops: Sequence[StateOp] = (),
        *,
        sync: bool = True,
        tx_hashes: Sequence[bytes] | None = None,
        accepted: Sequence[bool] | None = None,
    ) -> None:
        """Commit the next block with everything it changed in one (synced) batch.

        Refuses (StoreError, nothing written) a block that does not extend the tip, a
        certificate for another block or an older sequence, or receipts that do not match.
        `sync=False` is for a run of certified blocks written back to back: the batch is
        still atomic and ordered (a process crash loses at most a suffix of such blocks,
        never part of one; a power loss before `sync()` may also lose blocks written
        before a switch of LevelDB's log and keep later ones), and the caller makes the
        run durable with `sync()` before it tells anyone the blocks are executed.
        `tx_hashes`, when the caller has them, are the SHA-256 of each of the block's txs
        (the chain's decoded txs carry them).
        `accepted` says which receipts accept their tx: those txs are indexed here whatever
        an earlier block held; the others only if no block held them before (one read
        each). Without it every tx is treated as rejected.
        """
        if self._tip is None:
            raise StoreError("the store has no genesis yet", code="store_uninitialised")
        tip_height, tip_hash, tip_seq = self._tip
        header = block.header
        if header.height != tip_height + 1:
            raise StoreError(f"block height {header.height} does not follow tip {tip_height}",
                             code="wrong_height")
        if header.prev_hash != tip_hash:
            raise StoreError(f"block parent {header.prev_hash.hex()} is not the tip "
                             f"{tip_hash.hex()}", code="wrong_parent")
        if cert.block_hash != block.hash:
            raise StoreError("the certificate is for another block", code="cert_mismatch")
        if cert.seq <= tip_seq:
            raise StoreError(f"certificate sequence {cert.seq} is not after {tip_seq}",
                             code="cert_mismatch")
        if cert.view < header.view:
            raise StoreError(f"certificate view {cert.view} precedes the proposal view "
                             f"{header.view}", code="cert_mismatch")
        if len(receipts) != len(block.txs) or not all(isinstance(r, bytes) for r in receipts):
            raise StoreError(f"{len(receipts)} receipts for {len(block.txs)} transactions",
                             code="receipts_mismatch")
        if tx_hashes is None:
            tx_hashes = [sha256(tx) for tx in block.txs]
        elif len(tx_hashes) != len(block.txs):
            raise StoreError(f"{len(tx_hashes)} tx hashes for {len(block.txs)} transactions",
                             code="bad_op")
        if accepted is None:
            accepted = [False] * len(block.txs)
        elif len(accepted) != len(block.txs):
            raise StoreError(f"{len(accepted)} accepted flags for {len(block.txs)} "
                             "transactions", code="bad_op")
        problem = block.check_tx_root()
        if problem is not None:
            raise StoreError(problem, code="bad_tx_root")
        if receipts_root_of(receipts) != header.receipts_root:
            raise StoreError("receipts do not match the header's receipts_root",
                             code="receipts_mismatch")
        ops = _check_ops(state_ops, state=True) + _check_ops(extra_ops, state=False)

        height = header.height
        h8 = _h8(height)
        batch = self.db.write_batch(sync=sync)
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(HEADER_PREFIX + h8, header.encode())
        batch.put(CERT_PREFIX + h8, cert.encode())
        batch.put(BLOCK_HASH_PREFIX + block.hash, h8)
        get = self.db.get
        for index, (tx, receipt, tx_hash, ok) in enumerate(zip(block.txs, receipts, tx_hashes,
                                                               accepted, strict=True)):
            batch.put(_location_key(TX_PREFIX, height, index), tx)
            batch.put(_location_key(RECEIPT_PREFIX, height, index), receipt)
            location_key = TX_LOCATION_PREFIX + tx_hash
            # A block holds a tx at most once (Block checks), so the batch never needs a
            # look at itself; only a rejected copy needs the read.
            if ok or get(location_key) is None:
                batch.put(location_key, _LOCATION.pack(height, index))
        batch.put(TIP_KEY, _TIP.pack(height, block.hash, cert.seq))
        batch.write()
        self._tip = (height, block.hash, cert.seq)

    def sync(self) -> None:
        """Make every earlier write durable, unsynced block batches included.

        A synced write fsyncs only LevelDB's current log. When the memtable is full, the
        next write starts a new log and leaves the old one unsynced until its memtable is
        flushed to a (synced) table: blocks written unsynced before that switch sit in the
        old log's page cache while a synced write in the new log returns. So older logs
        still on disk are fsynced before the synced write (switches during a run) and after
        it (a switch the synced write itself started). The synced write is a mark that
        names nothing: a power loss between it and the last fsync loses at most a suffix
        of the unsynced blocks, and never leaves the tip naming a lost one.
        """
        if self._tip is None:
            raise StoreError("the store has no genesis yet", code="store_uninitialised")
        directory = Path(self.db.name)
        fsync_older_logs(directory)
        self.db.put(SYNC_MARK_KEY, b"", sync=True)
        fsync_older_logs(directory)

    # -- reads ------------------------------------------------------------------------

    def _read_tip(self) -> tuple[int, bytes, int] | None:
        raw = self.db.get(TIP_KEY)
        if raw is None:
            return None
        invariant(len(raw) == _TIP.size, f"tip record of {len(raw)} bytes is corrupt")
        height, block_hash, seq = _TIP.unpack(raw)
        return height, block_hash, seq

    def tip(self) -> tuple[int, bytes]:
        """(height, hash) of the last committed block; (0, genesis hash) before any block."""
        if self._tip is None:
            raise StoreError("the store has no genesis yet", code="store_uninitialised")
        return self._tip[0], self._tip[1]

    def tip_seq(self) -> int:
        """Consensus sequence of the tip's certificate (0 at genesis)."""
        if self._tip is None:
            raise StoreError("the store has no genesis yet", code="store_uninitialised")
        return self._tip[2]

    def genesis_hash(self) -> bytes | None:
        value: bytes | None = self.db.get(GENESIS_HASH_KEY)
        return value

    def genesis_state_root(self) -> bytes | None:
        value: bytes | None = self.db.get(GENESIS_STATE_ROOT_KEY)
        return value

    def header(self, height: int) -> Header | None:
        raw = self.db.get(HEADER_PREFIX + _h8(height)) if height >= 1 else None
        return None if raw is None else Header.decode(raw)

    def txs(self, height: int) -> list[bytes]:
        prefix = TX_PREFIX + _h8(height)
        return [value for _, value in self.db.iterator(prefix=prefix)]

    def receipts(self, height: int) -> list[bytes]:
        prefix = RECEIPT_PREFIX + _h8(height)
        return [value for _, value in self.db.iterator(prefix=prefix)]

    def block(self, height: int) -> Block | None:
        header = self.header(height)
        return None if header is None else Block(header, tuple(self.txs(height)))

    def height_of(self, block_hash: bytes) -> int | None:
        raw = self.db.get(BLOCK_HASH_PREFIX + block_hash)
        return None if raw is None else int(_H8.unpack(raw)[0])

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        height = self.height_of(block_hash)
        return None if height is None else self.block(height)

    def certificate(self, height: int) -> CommitCertificate | None:
        raw = self.db.get(CERT_PREFIX + _h8(height)) if height >= 1 else None
        return None if raw is None else CommitCertificate.decode(raw)

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        raw = self.db.get(TX_LOCATION_PREFIX + tx_hash)
        if raw is None:
            return None
        height, index = _LOCATION.unpack(raw)
        return int(height), int(index)

    def tx(self, tx_hash: bytes) -> bytes | None:
        location = self.tx_location(tx_hash)
        if location is None:
            return None
        value: bytes | None = self.db.get(_location_key(TX_PREFIX, *location))
        return value

    def receipt(self, tx_hash: bytes) -> bytes | None:
        location = self.tx_location(tx_hash)
        if location is None:
            return None
        value: bytes | None = self.db.get(_location_key(RECEIPT_PREFIX, *location))
        return value

    def tx_inclusion(self, tx_hash: bytes) -> TxInclusion | None:
        """A tx with its receipt and Merkle proofs of both against its block's header."""
        location = self.tx_location(tx_hash)
        if location is None:
            return None
        height, index = location
        header = self.header(height)
        invariant(header is not None, f"tx index points at missing block {height}")
        assert header is not None  # for the type checker
        txs, receipts = self.txs(height), self.receipts(height)
        invariant(len(txs) == len(receipts) > index, f"block {height} is stored incompletely")
        return TxInclusion(header, index, len(txs), txs[index], receipts[index],
                           merkle_proof(txs, index), merkle_proof(receipts, index))

    def blocks_range(
        self, from_height: int, to_height: int, *, limit: int = RANGE_BLOCKS_MAX
    ) -> list[tuple[Block, CommitCertificate]]:
        """Blocks from_height..to_height inclusive with their certificates, for catch-up.

        Clipped to the tip and to at most `limit` (<= RANGE_BLOCKS_MAX) blocks.
        """
        tip_height = self.tip()[0]
        first = max(from_height, 1)
        last = min(to_height, tip_height, first + min(limit, RANGE_BLOCKS_MAX) - 1)
        result: list[tuple[Block, CommitCertificate]] = []
        for height in range(first, last + 1):
            block = self.block(height)
            cert = self.certificate(height)
            invariant(block is not None and cert is not None,
                      f"height {height} is below the tip but not stored")
            assert block is not None and cert is not None  # for the type checker
            result.append((block, cert))
        return result
