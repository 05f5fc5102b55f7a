"""Applies a block's transactions through the rule modules, deterministically.

Order for one block: every module's `begin_block` (genesis order), then each transaction:
chain id, nonce, family, operation, payload schema, `check`, `apply`; then every module's
`end_block`. Each transaction runs in its own child overlay of the block overlay, so a
rejected one changes nothing of what the rules wrote.

Nonces: the next nonce of an account lives at b"nonce/<address>" (canonical int, absent
means 0). A transaction whose nonce is not exactly the next one is rejected with
`bad_nonce` and changes nothing. Every transaction that passes the nonce check consumes its
nonce, even when a later step rejects it: a signed transaction that failed once (say for
lack of funds) can then never be replayed later to succeed at a moment of an attacker's
choosing. Clients re-sign with the next nonce instead.

Two kinds of failure (DESIGN.md principle 10):
- A `RuleError` (or a bad nonce, family, operation or payload) is a transaction's fault:
  the transaction gets a `rejected` receipt with the code and reason and the block goes on.
- Any other exception raised by a module (a KeyError, a CodecError on state it wrote, an
  invariant), a RuleError from a begin/end block hook (there is no transaction to reject),
  a module writing nonce keys, or a result that cannot be encoded is a programmer error: it propagates, with a note naming the module and transaction, and the
  node halts instead of committing a state that other nodes may not share.

Receipt reasons are hashed into the header, so they must be identical on every node: for
schema failures the receipt names the field and pydantic's stable error type
(`amount: int_type`), not pydantic's prose, which may change between library versions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ledger.codec import decode_stored, encode
from ledger.errors import CodecError, InvariantViolation, invariant
from ledger.overlay import CachedReader, KeyValueReader, Overlay
from ledger.receipt import Receipt, receipts_root
from ledger.rules import BlockContext, RuleError, RuleModule, TxContext
from ledger.tx import Tx, TxError

NONCE_PREFIX = b"nonce/"


def nonce_key(address: str) -> bytes:
    return NONCE_PREFIX + address.encode()


def next_nonce(state: KeyValueReader, address: str) -> int:
    """The nonce the account's next transaction must carry."""
    raw = state.get(nonce_key(address))
    if raw is None:
        return 0
    value = decode_stored(raw)
    if type(value) is not int or value < 0:  # the message only on failure: once per tx
        raise InvariantViolation(f"corrupt nonce record for {address}")
    result: int = value
    return result


def _error_location(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ())) or "payload"


def schema_reason_stable(exc: ValidationError) -> str:
    """Field and error type of each schema failure: identical on every pydantic 2.x."""
    return "; ".join(
        f"{_error_location(error)}: {error['type']}" for error in exc.errors(include_url=False)
    )


def schema_reason_readable(exc: ValidationError) -> str:
    """Field, error type and pydantic's message: for clients, never hashed."""
    return "; ".join(
        f"{_error_location(error)}: {error['type']} ({error['msg']})"
        for error in exc.errors(include_url=False)
    )


@dataclass(frozen=True, slots=True)
class BlockResult:
    receipts: list[Receipt]
    encoded_receipts: list[bytes]
    writes: dict[bytes, bytes | None]
    receipts_root: bytes


@contextmanager
def _blame(what: str) -> Iterator[None]:
    """Name the module and transaction on a programmer error; never swallows it."""
    try:
        yield
    except RuleError:
        raise
    except Exception as exc:
        exc.add_note(f"cityledger: programmer error while {what}; the node must halt")
        raise


@contextmanager
def _hook(what: str) -> Iterator[None]:
    """A block hook has no transaction to reject: any error from it is a programmer error."""
    with _blame(what):
        try:
            yield
        except RuleError as exc:
            raise InvariantViolation(f"{what} raised {exc}; hooks may not reject") from exc


class Executor:
    """Executes blocks for one chain with the rule modules genesis names, in genesis order."""

    def __init__(self, chain_id: str, modules: Sequence[RuleModule]) -> None:
        self.chain_id = chain_id
        self.modules: tuple[RuleModule, ...] = tuple(modules)
        self._by_family: dict[str, RuleModule] = {}
        for module in self.modules:
            invariant(module.family not in self._by_family,
                      f"two rule modules claim family {module.family!r}")
            self._by_family[module.family] = module

    # -- admission (mempool) ----------------------------------------------------------------
    def _schema(self, tx: Tx) -> tuple[RuleModule, type[BaseModel]] | TxError:
        module = self._by_family.get(tx.family)
        if module is None:
            return TxError("unknown_family", f"this chain runs no {tx.family!r} rule module")
        schema = module.operations.get(tx.op)
        if schema is None:
            return TxError("unknown_operation", f"{tx.family} has no operation {tx.op!r}")
        return module, schema

    def check_admission(
        self, tx: Tx, base: KeyValueReader, *, nonce_ahead_max: int | None = None
    ) -> TxError | None:
        """Whether a verified tx may enter the mempool; None when it may.

        The nonce may be ahead of the account's next nonce (the client queued several
        transactions) but not behind it; `nonce_ahead_max` bounds how far ahead.
        """
        if tx.chain_id != self.chain_id:
            return TxError("wrong_chain", f"transaction is for chain {tx.chain_id!r}")
        expected = next_nonce(base, tx.sender_address)
        if tx.nonce < expected:
            return TxError("nonce_used", f"nonce {tx.nonce} is used; the next is {expected}")
        if nonce_ahead_max is not None and tx.nonce > expected + nonce_ahead_max:
            return TxError(
                "nonce_too_far",
                f"nonce {tx.nonce} is more than {nonce_ahead_max} ahead of the next, {expected}",
            )
        found = self._schema(tx)
        if isinstance(found, TxError):
            return found
        try:
            found[1].model_validate(tx.payload)
        except ValidationError as exc:
            return TxError("invalid_payload", schema_reason_readable(exc))
        return None

    # -- execution ---------------------------------------------------------------------------
    def execute_block(
        self, base: KeyValueReader, block: BlockContext, txs: Sequence[Tx]
    ) -> BlockResult:
        """Run a block over `base` without changing it; the writes come back for the store."""
        invariant(block.chain_id == self.chain_id,
                  f"block for chain {block.chain_id!r} given to executor of {self.chain_id!r}")
        # Nothing writes `base` while a block runs, so its reads can be remembered.
        state = Overlay(CachedReader(base))
        for module in self.modules:
            with _hook(f"{module.family}.begin_block at height {block.height}"):
                module.begin_block(block, state)
        receipts: list[Receipt] = []
        encoded: list[bytes] = []
        for index, tx in enumerate(txs):
            receipt = self._execute_tx(state, block, index, tx)
            try:
                raw = receipt.encode()
            except CodecError as exc:
                raise InvariantViolation(
                    f"{tx.family}.{tx.op} returned a receipt result that cannot be encoded: "
                    f"{exc.reason}"
                ) from exc
            receipts.append(receipt)
            encoded.append(raw)
        for module in self.modules:
            with _hook(f"{module.family}.end_block at height {block.height}"):
                module.end_block(block, state)
        return BlockResult(receipts, encoded, dict(state.writes), receipts_root(encoded))

    def _execute_tx(self, state: Overlay, block: BlockContext, index: int, tx: Tx) -> Receipt:
        if tx.chain_id != self.chain_id:
            return Receipt.rejected(tx.hash, index, "wrong_chain",
                                    f"transaction is for chain {tx.chain_id!r}")
        address = tx.sender_address
        expected = next_nonce(state, address)
        if tx.nonce != expected:
            return Receipt.rejected(tx.hash, index, "bad_nonce",
                                    f"nonce {tx.nonce} given, {expected} expected")
        # From here on the nonce is consumed whatever the outcome (see module docstring).
        receipt = self._run_rules(state, block, index, tx)
        state.put(nonce_key(address), encode(expected + 1))
        return receipt

    def _run_rules(self, state: Overlay, block: BlockContext, index: int, tx: Tx) -> Receipt:
        found = self._schema(tx)
        if isinstance(found, TxError):
            return Receipt.rejected(tx.hash, index, found.code, found.reason)
        module, schema = found
        try:
            payload = schema.model_validate(tx.payload)
        except ValidationError as exc:
            return Receipt.rejected(tx.hash, index, "invalid_payload", schema_reason_stable(exc))
        ctx = TxContext(tx=tx, payload=payload, block=block, index=index)
        tx_state = state.child()
        # Inline `_blame`: the note naming the tx is built only when there is an error.
        try:
            module.check(ctx, tx_state)
            result = module.apply(ctx, tx_state)
        except RuleError as exc:
            tx_state.discard()
            return Receipt.rejected(tx.hash, index, exc.code, exc.reason)
        except Exception as exc:
            exc.add_note(
                f"cityledger: programmer error while {_tx_what(tx, block)}; the node must halt"
            )
            raise
        for key in tx_state.writes:
            if key.startswith(NONCE_PREFIX):
                raise InvariantViolation(
                    f"{_tx_what(tx, block)} wrote a nonce key; only the executor may"
                )
        if not isinstance(result, Mapping):
            raise InvariantViolation(f"{_tx_what(tx, block)} returned a non-map result")
        tx_state.merge_into(state)
        return Receipt.accepted(tx.hash, index, dict(result))


def _tx_what(tx: Tx, block: BlockContext) -> str:
    return f"{tx.family}.{tx.op} of tx {tx.hash.hex()} at height {block.height}"
