"""The ledger's side of consensus: build, validate and commit blocks on top of the store.

A block's header commits to the state and receipts after executing that block. So the
primary executes its proposal before sending it, and every backup executes it while
validating it; the execution result is kept (a `Speculation`) and written as-is when the
block commits, so each block is executed once per node. A backup refuses to vote for a
block whose roots it computes differently: divergence is caught before anything commits.

Validation never trusts the proposer: heights, parent hash, chain id, proposer of the
view, timestamps, the transaction Merkle root (size and duplicates: ledger.block), and every
signature (checked by the caller, once per node) are verified before execution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ledger.block import Block, BlockError, CommitCertificate
from ledger.epochs import EpochHistory
from ledger.errors import LedgerError, invariant
from ledger.executor import BlockResult, Executor
from ledger.genesis import Genesis
from ledger.rules import BlockContext
from ledger.state import PreparedState, WorldState
from ledger.store import BlockStore
from ledger.tx import Tx, TxError, decode_and_verify

# A proposal may run ahead of the validator's own clock by this much (clock skew).
TIMESTAMP_AHEAD_MAX_MS = 30_000

# A fetched block with its commit certificate and its decoded, signature-checked txs.
CertifiedBlock = tuple[Block, CommitCertificate, Sequence[Tx]]


class ProposalRejected(LedgerError):
    """A proposed or fetched block is invalid; the reason says which rule it broke."""

    code = "proposal_rejected"


@dataclass(frozen=True, slots=True)
class Speculation:
    """A block executed on top of the current tip, ready to be written when it commits."""

    block: Block
    txs: tuple[Tx, ...]
    result: BlockResult
    prepared: PreparedState


class Chain:
    def __init__(
        self,
        genesis: Genesis,
        store: BlockStore,
        state: WorldState,
        executor: Executor,
        primary_of: Callable[[int], bytes],
        epochs: EpochHistory | None = None,
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.validators = [v.public_key_bytes for v in genesis.validators]
        # Certificates are checked against the set (and signing domain) of their
        # sequence's epoch; without a history, genesis's set certifies everything.
        self.epochs = epochs
        self.store = store
        self.state = state
        self.executor = executor
        self._primary_of = primary_of
        # (block hash, timestamp) of the last header this chain committed: every proposal
        # checks its parent's timestamp, which would otherwise be a read and a decode.
        self._tip_timestamp: tuple[bytes, int] | None = None

    # -- the tip --------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.store.tip()[0]

    @property
    def tip_hash(self) -> bytes:
        return self.store.tip()[1]

    def _parent_timestamp_ms(self) -> int:
        height, tip_hash = self.store.tip()
        if height == 0:
            return self.genesis.genesis_time_ms
        if self._tip_timestamp is not None and self._tip_timestamp[0] == tip_hash:
            return self._tip_timestamp[1]
        header = self.store.header(height)
        invariant(header is not None, f"store has no header at its tip {height}")
        assert header is not None
        self._tip_timestamp = (tip_hash, header.timestamp_ms)
        return header.timestamp_ms

    # -- building -------------------------------------------------------------------------
    def _execute(self, height: int, timestamp_ms: int, proposer: bytes,
                 txs: Sequence[Tx]) -> tuple[BlockResult, PreparedState]:
        context = BlockContext(self.chain_id, height, timestamp_ms, proposer)
        result = self.executor.execute_block(self.state.reader(), context, txs)
        return result, self.state.prepare(result.writes, height=height)

    def build(self, view: int, proposer: bytes, txs: Sequence[Tx], now_ms: int) -> Speculation:
        """Execute `txs` as the next block and return it with its execution result."""
        timestamp_ms = max(now_ms, self._parent_timestamp_ms() + 1)
        result, prepared = self._execute(self.height + 1, timestamp_ms, proposer, txs)
        block = Block.build(
            chain_id=self.chain_id,
            height=self.height + 1,
            prev_hash=self.tip_hash,
            timestamp_ms=timestamp_ms,
            proposer=proposer,
            view=view,
            txs=[tx.raw for tx in txs],
            state_root=prepared.root,
            receipts_root=result.receipts_root,
        )
        return Speculation(block, tuple(txs), result, prepared)

    # -- validating -----------------------------------------------------------------------
    @staticmethod
    def decode_proposal(payload: bytes) -> Block:
        try:
            return Block.decode(payload)
        except BlockError as exc:
            raise ProposalRejected(f"undecodable block: {exc.reason}") from exc

    def check_header(self, block: Block, now_ms: int | None) -> None:
        """Every rule a header must meet to extend the current tip (ProposalRejected)."""
        header = block.header
        if header.chain_id != self.chain_id:
            raise ProposalRejected(f"block is for chain {header.chain_id!r}")
        if header.height != self.height + 1:
            raise ProposalRejected(f"block height {header.height} does not follow {self.height}")
        if header.prev_hash != self.tip_hash:
            raise ProposalRejected("block does not extend this node's tip")
        if header.proposer != self._primary_of(header.view):
            raise ProposalRejected(f"proposer is not the primary of view {header.view}")
        if header.timestamp_ms <= self._parent_timestamp_ms():
            raise ProposalRejected("block timestamp does not increase")
        if now_ms is not None and header.timestamp_ms > now_ms + TIMESTAMP_AHEAD_MAX_MS:
            raise ProposalRejected("block timestamp is too far in the future")
        problem = block.check_tx_root()
        if problem is not None:
            raise ProposalRejected(problem)

    def validate(self, block: Block, txs: Sequence[Tx], now_ms: int | None) -> Speculation:
        """Check `block` (whose `txs` the caller decoded and verified) and execute it."""
        self.check_header(block, now_ms)
        invariant(len(txs) == len(block.txs), "verified txs do not match the block")
        for tx, raw in zip(txs, block.txs, strict=True):
            invariant(tx.raw == raw, "verified tx is not the block's tx")
            if tx.chain_id != self.chain_id:
                raise ProposalRejected(f"transaction {tx.hash.hex()} is for another chain")
        header = block.header
        result, prepared = self._execute(header.height, header.timestamp_ms, header.proposer, txs)
        if prepared.root != header.state_root:
            raise ProposalRejected("state root differs from this node's execution")
        if result.receipts_root != header.receipts_root:
            raise ProposalRejected("receipts root differs from this node's execution")
        return Speculation(block, tuple(txs), result, prepared)

    # -- committing -----------------------------------------------------------------------
    def commit(self, speculation: Speculation, cert: CommitCertificate, *,
               sync: bool = True) -> None:
        """Write the block, its certificate, receipts and state in one atomic batch.

        With `sync=False` the batch is not synced: the block is live (readers see all of
        it or none) and the caller makes it durable with `store.sync()`, e.g. on a writer
        thread, before reporting it executed to anyone.
        """
        invariant(cert.block_hash == speculation.block.hash, "certificate is for another block")
        self.store.append(
            speculation.block, cert, speculation.result.encoded_receipts,
            speculation.prepared.ops, sync=sync,
            tx_hashes=[tx.hash for tx in speculation.txs],
            accepted=[receipt.ok for receipt in speculation.result.receipts],
        )
        self._tip_timestamp = (speculation.block.hash, speculation.block.header.timestamp_ms)
        self.state.apply_prepared(speculation.prepared)

    def commit_certified_run(
        self, run: Sequence[CertifiedBlock], *,
        sync: bool = True,
    ) -> tuple[list[Speculation], ProposalRejected | None]:
        """Catch-up: validate, execute and commit consecutive certified blocks, one fsync.

        Each block's certificate must already be checked by the caller (consensus checks
        every commit proof before it asks to execute) and its `txs` decoded and verified.
        Headers and hash links are checked here, block by block, before each is written;
        every block is one atomic batch, and the run is made durable by one sync at the
        end. Stops at the first invalid block and returns the committed prefix (durable
        too) with the reason. With `sync=False` the caller makes the prefix durable with
        `store.sync()` (several slices of one run, one fsync).
        """
        committed: list[Speculation] = []
        rejected: ProposalRejected | None = None
        try:
            for block, cert, txs in run:
                if cert.block_hash != block.hash:
                    raise ProposalRejected("certificate is for another block")
                speculation = self.validate(block, txs, now_ms=None)
                self.commit(speculation, cert, sync=False)
                committed.append(speculation)
        except ProposalRejected as exc:
            rejected = exc
        if committed and sync:
            self.store.sync()
        return committed, rejected

    def apply_certified(
        self, block: Block, cert: CommitCertificate,
        verify_txs: Callable[[Sequence[bytes]], list[Tx | TxError]] | None = None,
    ) -> Speculation:
        """Catch-up: check a fetched block and its certificate, execute and commit it."""
        problem = self.check_certificate(cert)
        if problem is not None:
            raise ProposalRejected(f"commit certificate: {problem}")
        if cert.block_hash != block.hash:
            raise ProposalRejected("certificate is for another block")
        checked = (verify_txs or self._verify_all)(block.txs)
        txs: list[Tx] = []
        for item in checked:
            if isinstance(item, TxError):
                raise ProposalRejected(f"block carries a bad transaction: {item}")
            txs.append(item)
        # A certified block was accepted by a quorum: its clock check already happened.
        speculation = self.validate(block, txs, now_ms=None)
        self.commit(speculation, cert)
        return speculation

    def check_certificate(self, cert: CommitCertificate) -> str | None:
        """None when `cert` is a quorum of its epoch's validators, else the reason."""
        if self.epochs is None:
            return cert.verify(self.chain_id, self.validators)
        return cert.verify(*self.epochs.certifiers(self.chain_id, cert.seq))

    def _verify_all(self, raws: Sequence[bytes]) -> list[Tx | TxError]:
        return [decode_and_verify(raw, self.chain_id) for raw in raws]
