"""Which consensus sequence each committed block (or null proposal) occupies.

Consensus orders sequences; the chain stores blocks by height. They differ because a view
change may commit a null proposal at a sequence, which executes nothing and so has no
block. Every block's certificate carries its sequence (strictly increasing with height);
null sequences get a small record of their own. Together they let a node say how far it
has executed, answer a lagging peer's request for a range of sequences, and name the
state digest that a checkpoint at any executed sequence signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.block import Block, CommitCertificate
from ledger.codec import decode, encode
from ledger.errors import invariant
from ledger.store import BlockStore

NULL_PREFIX = b"cons/null/"


def _null_key(seq: int) -> bytes:
    return NULL_PREFIX + seq.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class CommittedSeq:
    """One executed sequence: a block with its certificate, or a null proposal's proof."""

    seq: int
    block: Block | None
    certificate: CommitCertificate | None
    null_proof: Any = None  # the consensus commit proof of a null proposal, as a map


class CommittedSequences:
    def __init__(self, store: BlockStore, genesis_hash: bytes) -> None:
        self.store = store
        self.genesis_hash = genesis_hash
        self.null_tip = 0
        with store.db.iterator(prefix=NULL_PREFIX, reverse=True, include_value=False) as keys:
            for key in keys:
                self.null_tip = int.from_bytes(key[len(NULL_PREFIX):], "big")
                break

    @property
    def executed_seq(self) -> int:
        return max(self.store.tip_seq(), self.null_tip)

    def record_null(self, seq: int, proof: Any) -> None:
        """Durably note that `seq` committed a null proposal (with its commit proof)."""
        invariant(seq == self.executed_seq + 1, f"null seq {seq} after {self.executed_seq}")
        batch = self.store.db.write_batch(sync=True)
        batch.put(_null_key(seq), encode(proof))
        batch.write()
        self.null_tip = seq

    def height_at(self, seq: int) -> int:
        """The highest height whose certificate sequence is <= seq (binary search)."""
        low, high = 0, self.store.tip()[0]
        while low < high:
            middle = (low + high + 1) // 2
            cert = self.store.certificate(middle)
            invariant(cert is not None, f"no certificate at height {middle}")
            assert cert is not None
            if cert.seq <= seq:
                low = middle
            else:
                high = middle - 1
        return low

    def state_digest_at(self, seq: int) -> bytes:
        """What a checkpoint at `seq` signs: the hash of the last block at or before it."""
        height = self.height_at(seq)
        if height == 0:
            return self.genesis_hash
        header = self.store.header(height)
        invariant(header is not None, f"no header at height {height}")
        assert header is not None
        return header.hash

    def committed_range(self, first: int, last: int, bytes_max: int) -> list[CommittedSeq]:
        """Executed sequences first..last (stopping early at `bytes_max` of blocks)."""
        last = min(last, self.executed_seq)
        out: list[CommittedSeq] = []
        size = 0
        height = self.height_at(first - 1) + 1
        for seq in range(first, last + 1):
            null = self.store.db.get(_null_key(seq))
            if null is not None:
                out.append(CommittedSeq(seq, None, None, decode(null)))
                continue
            cert = self.store.certificate(height)
            if cert is None or cert.seq != seq:
                break  # neither a block nor a null here: this node does not know it
            block = self.store.block(height)
            invariant(block is not None, f"certificate without block at height {height}")
            assert block is not None
            size += len(block.encode())
            if size > bytes_max and out:
                break
            out.append(CommittedSeq(seq, block, cert))
            height += 1
        return out
