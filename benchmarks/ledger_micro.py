"""Per-transaction cost of the ledger's hot path, on one core.

    python -m benchmarks.ledger_micro [--txs 1000] [--rounds 7] [--out bench-out/]

Each round builds one block of `--txs` token transfers from distinct senders (signing is
not timed) and measures, per transaction:
    decode+verify   ledger.tx.decode_and_verify of the wire bytes (Ed25519 verify included)
    execute         Executor.execute_block through the real rule module
    state           WorldState.prepare (new root + ops, with undo record) + apply_prepared
    store append    BlockStore.append: block, certificate, receipts and state ops in one
                    synced LevelDB batch
It uses txtypes.tokens transfers when that module is installed, otherwise a small
transfer-like module defined here. Medians over the rounds are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from ledger.crypto import KeyPair, sha256
from ledger.executor import Executor
from ledger.overlay import MemoryKV, Overlay
from ledger.rules import BlockContext, RuleError, RuleModule, StateView, TxContext
from ledger.state import PlyvelBackend, PreparedState, WorldState
from ledger.tx import Tx, TxError, decode_and_verify, sign_tx

CHAIN_ID = "bench-chain"
CLASS_ID = "bench"
COLUMNS = ("decode_verify", "execute", "state", "store_append")


# -- fallback rule module ------------------------------------------------------------------
class _SendPayload(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    to: str = Field(pattern=r"^[0-9a-f]{40}$")
    amount: int = Field(ge=1)


class SimpleTransfers:
    """Balances under b"simple/bal/<address>"; `send` moves units between them."""

    family = "simple"
    operations: Mapping[str, type[BaseModel]] = {"send": _SendPayload}

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        for address, amount in params.get("balances", {}).items():
            state.put_obj(b"simple/bal/" + address.encode(), amount)

    def check(self, ctx: TxContext, state: StateView) -> None:
        payload = ctx.payload
        assert isinstance(payload, _SendPayload)
        if int(state.get_obj(b"simple/bal/" + ctx.sender_address.encode()) or 0) < payload.amount:
            raise RuleError("insufficient_funds", "not enough units")

    def apply(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        payload = ctx.payload
        assert isinstance(payload, _SendPayload)
        source = b"simple/bal/" + ctx.sender_address.encode()
        target = b"simple/bal/" + payload.to.encode()
        state.put_obj(source, int(state.get_obj(source) or 0) - payload.amount)
        state.put_obj(target, int(state.get_obj(target) or 0) + payload.amount)
        return {"amount": payload.amount}

    def begin_block(self, block: BlockContext, state: StateView) -> None:
        return None

    def end_block(self, block: BlockContext, state: StateView) -> None:
        return None


# -- workload --------------------------------------------------------------------------------
class Workload:
    """The rule module, the genesis writes and the setup/round transactions."""

    def __init__(self, senders: list[KeyPair], treasury: KeyPair) -> None:
        self.senders = senders
        self.treasury = treasury
        self.uses_tokens = importlib.util.find_spec("txtypes.tokens") is not None
        self.module: RuleModule
        if self.uses_tokens:
            from txtypes.roles import grant_role
            from txtypes.tokens import TokensFamily

            # cast: RuleModule declares `family` as an instance attribute, TxFamily as a
            # ClassVar; a read-only property in the Protocol would accept both.
            self.module = cast(RuleModule, TokensFamily())
            genesis = Overlay(MemoryKV())
            grant_role(genesis, treasury.address, "treasury")
            self.genesis_writes = dict(genesis.writes)
        else:
            self.module = SimpleTransfers()
            genesis = Overlay(MemoryKV())
            self.module.init_genesis(genesis, {"balances": {k.address: 10**9 for k in senders}})
            self.genesis_writes = dict(genesis.writes)
        self.name = "tokens.transfer" if self.uses_tokens else "simple.send (fallback)"

    def setup_txs(self) -> list[Tx]:
        if not self.uses_tokens:
            return []
        txs = [sign_tx(self.treasury, CHAIN_ID, "tokens", "define_class", 0, {
            "class_id": CLASS_ID, "name": "bench token", "budget": 2**40,
            "categories": ["food"], "transferable": True, "expiry_height": 10**9,
            "redemption_cents_per_unit": 1})]
        for nonce, key in enumerate(self.senders, start=1):
            txs.append(sign_tx(self.treasury, CHAIN_ID, "tokens", "issue", nonce,
                               {"class_id": CLASS_ID, "to": key.address, "amount": 10**6}))
        return txs

    def round_txs(self, nonce: int) -> list[Tx]:
        txs = []
        count = len(self.senders)
        for i, key in enumerate(self.senders):
            target = self.senders[(i + 1) % count].address
            if self.uses_tokens:
                txs.append(sign_tx(key, CHAIN_ID, "tokens", "transfer", nonce,
                                   {"class_id": CLASS_ID, "to": target, "amount": 1}))
            else:
                txs.append(sign_tx(key, CHAIN_ID, "simple", "send", nonce,
                                   {"to": target, "amount": 1}))
        return txs


# -- the chain being driven ----------------------------------------------------------------
class Chain:
    """A WorldState and, when ledger.store exists, a BlockStore on one LevelDB."""

    def __init__(self, path: Path, workload: Workload, validators: list[KeyPair]) -> None:
        self.validators = validators
        self.store: Any = None
        if importlib.util.find_spec("ledger.store") is not None:
            from ledger.store import BlockStore

            self.store = BlockStore.open(path)
            self.db: Any = self.store.db
        else:
            import plyvel

            self.db = plyvel.DB(str(path), create_if_missing=True)
        self.state = WorldState(self.db)
        self.executor = Executor(CHAIN_ID, [workload.module])
        prepared = self.state.prepare(workload.genesis_writes, height=0)
        self.prev_hash = sha256(b"bench genesis")
        if self.store is not None:
            self.store.init_genesis(self.prev_hash, prepared.root, prepared.ops)
        else:
            PlyvelBackend(self.db).write(prepared.ops)
        self.state.apply_prepared(prepared)
        self.height = 0

    def block_context(self) -> BlockContext:
        return BlockContext(CHAIN_ID, self.height + 1, 1_000 * (self.height + 1),
                            self.validators[0].public_key)

    def append(self, txs: list[Tx], encoded_receipts: list[bytes], receipts_root: bytes,
               prepared: PreparedState) -> Callable[[], None]:
        """The store write for this block, ready to be timed."""
        height = self.height + 1
        if self.store is None:
            def write_plain() -> None:
                PlyvelBackend(self.db).write(prepared.ops)
            return write_plain
        from ledger.block import Block, CommitCertificate, commit_vote_bytes

        block = Block.build(chain_id=CHAIN_ID, height=height, prev_hash=self.prev_hash,
                            timestamp_ms=1_000 * height, proposer=self.validators[0].public_key,
                            view=0, txs=[tx.raw for tx in txs], state_root=prepared.root,
                            receipts_root=receipts_root)
        vote = commit_vote_bytes(CHAIN_ID, 0, height, block.hash)
        cert = CommitCertificate(height, 0, block.hash, tuple(
            (key.public_key, key.sign(vote)) for key in self.validators[:3]))

        def write_block() -> None:
            self.store.append(block, cert, encoded_receipts, prepared.ops)
            self.prev_hash = block.hash
        return write_block

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        else:
            self.db.close()


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def run_block(chain: Chain, txs: list[Tx]) -> dict[str, float]:
    """Push one block through every stage; seconds spent per stage."""
    raws = [tx.raw for tx in txs]

    def decode_all() -> list[Tx]:
        out = []
        for raw in raws:
            tx = decode_and_verify(raw, CHAIN_ID)
            if isinstance(tx, TxError):
                raise SystemExit(f"benchmark tx refused: {tx}")
            out.append(tx)
        return out

    decode_s, decoded = _timed(decode_all)
    execute_s, result = _timed(
        lambda: chain.executor.execute_block(chain.state.reader(), chain.block_context(), decoded))
    rejected = [r for r in result.receipts if not r.ok]
    if rejected:
        raise SystemExit(f"benchmark tx rejected: {rejected[0].code} {rejected[0].reason}")
    prepare_s, prepared = _timed(lambda: chain.state.prepare(result.writes,
                                                              height=chain.height + 1))
    write = chain.append(decoded, result.encoded_receipts, result.receipts_root, prepared)
    store_s, _ = _timed(write)
    apply_s, _ = _timed(lambda: chain.state.apply_prepared(prepared))
    chain.height += 1
    return {"decode_verify": decode_s, "execute": execute_s, "state": prepare_s + apply_s,
            "store_append": store_s, "writes": float(len(result.writes))}


# -- the node's edge: codec, tx decode, RPC batch, verifier cache (--edge) --------------------
class _EdgeNode:
    """Just enough node for rpc.node_methods' tx_submit: admits known txs, commits at once."""

    halted: str | None = None

    def __init__(self, txs: list[Tx]) -> None:
        from rpc.node_methods import TxWaiters

        self.waiters = TxWaiters()
        self._by_hash = {tx.hash: tx for tx in txs}

    async def admit(self, raw: bytes, *, forward: bool = True) -> Tx | TxError:
        from rpc.methods import jsonable

        tx = self._by_hash[sha256(raw)]
        receipt = {"hash": tx.hash.hex(), "height": 1, "index": 0,
                   "receipt": jsonable({"status": "ok", "code": "ok", "result": {}})}
        asyncio.get_running_loop().call_soon(self.waiters.resolve, tx.hash, receipt)
        return tx


def edge_costs(txs_count: int = 1000, repeats: int = 9) -> dict[str, float]:
    """Per-tx CPU microseconds (best of `repeats`) of the node's edge work for transfers."""
    from ledger.codec import decode, encode
    from ledger.tx import decode_tx
    from ledger.tx_verifier import TxVerifier
    from p2p.framing import encode_frame, split_frames
    from rpc.jsonrpc import RpcDispatcher
    from rpc.node_methods import build_node_methods

    keys = [KeyPair(sha256(f"edge sender {i}".encode())) for i in range(100)]
    txs = [sign_tx(keys[i % 100], CHAIN_ID, "tokens", "transfer", i // 100,
                   {"class_id": CLASS_ID, "to": "ab" * 20, "amount": 1})
           for i in range(txs_count)]
    raws = [tx.raw for tx in txs]
    costs: dict[str, float] = {}

    def best(action: Callable[[], object], per: int) -> float:
        times = []
        for _ in range(repeats):
            started = time.process_time()
            action()
            times.append((time.process_time() - started) / per * 1e6)
        return min(times)

    costs["decode_tx"] = best(lambda: [decode_tx(raw) for raw in raws], txs_count)
    block = encode({"height": 1, "txs": raws})
    costs["strict block decode /tx"] = best(lambda: decode(block), txs_count)
    frame = encode_frame({"k": "txs", "txs": raws})
    costs["gossip frame decode /tx"] = best(lambda: split_frames(frame, 8 << 20), txs_count)
    costs["encode(int)"] = best(lambda: [encode(n) for n in range(txs_count)], txs_count)

    def batch_bodies(wait: bool) -> list[bytes]:
        flag = "true" if wait else "false"
        return [("[" + ",".join(
            f'{{"jsonrpc":"2.0","method":"tx_submit","params":{{"tx":"{raw.hex()}",'
            f'"wait":{flag}}},"id":{i}}}' for i, raw in enumerate(raws[start:start + 100]))
            + "]").encode() for start in range(0, txs_count, 100)]

    async def submit(bodies: list[bytes]) -> None:
        dispatcher = RpcDispatcher.of(build_node_methods(_EdgeNode(txs)))
        await asyncio.gather(*(dispatcher.dispatch(body) for body in bodies))

    for wait in (True, False):
        bodies = batch_bodies(wait)
        costs[f"rpc tx_submit wait={str(wait).lower()} /call"] = best(
            lambda bodies=bodies: asyncio.run(submit(bodies)), txs_count)

    async def verify_cached() -> float:
        verifier = TxVerifier(CHAIN_ID)
        try:
            await verifier.verify_many(raws)  # now every one is known
            times = []
            for _ in range(repeats):
                started = time.process_time()
                await verifier.verify_many(raws)
                times.append((time.process_time() - started) / txs_count * 1e6)
            return min(times)
        finally:
            verifier.close()

    costs["verify_many of known txs /tx"] = asyncio.run(verify_cached())
    return costs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", type=int, default=1000, help="transactions per block")
    parser.add_argument("--rounds", type=int, default=7, help="measured blocks")
    parser.add_argument("--out", default="bench-out", help="directory for the JSON report")
    parser.add_argument("--edge", action="store_true",
                        help="also time the edge: tx decode, codec, RPC tx_submit batches, "
                             "the verifier's cache")
    args = parser.parse_args(argv)

    validators = [KeyPair(sha256(f"bench validator {i}".encode())) for i in range(4)]
    senders = [KeyPair(sha256(f"bench sender {i}".encode())) for i in range(args.txs)]
    workload = Workload(senders, KeyPair(sha256(b"bench treasury")))
    samples: dict[str, list[float]] = {column: [] for column in COLUMNS}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ledger-micro-") as tmp:
        chain = Chain(Path(tmp) / "db", workload, validators)
        try:
            setup = workload.setup_txs()
            if setup:
                run_block(chain, setup)
            run_block(chain, workload.round_txs(0))  # warm-up, not counted
            for round_index in range(1, args.rounds + 1):
                seconds = run_block(chain, workload.round_txs(round_index))
                for column in COLUMNS:
                    samples[column].append(seconds[column] / args.txs * 1e6)
        finally:
            chain.close()

    medians = {column: statistics.median(values) for column, values in samples.items()}
    total = sum(medians.values())
    store_label = "BlockStore.append" if chain.store is not None else "n/a (no ledger.store)"
    report = {
        "benchmark": "ledger_micro",
        "workload": workload.name,
        "txs_per_block": args.txs,
        "rounds": args.rounds,
        "python": platform.python_version(),
        # Other processes on the machine inflate every column; the load says how much.
        "load_average_1m_before_after": [load_before, os.getloadavg()[0]],
        "store": store_label,
        "median_us_per_tx": medians,
        "total_us_per_tx": total,
        "single_core_tx_per_s": 1e6 / total if total else None,
        "samples_us_per_tx": samples,
    }
    print(f"ledger micro-benchmark: {workload.name}, {args.txs} txs/block, "
          f"median of {args.rounds} blocks, one core, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"{'stage':<16}{'us/tx (median)':>16}{'min':>10}{'max':>10}")
    for column in COLUMNS:
        values = samples[column]
        print(f"{column:<16}{medians[column]:>16.1f}{min(values):>10.1f}{max(values):>10.1f}")
    print(f"{'total':<16}{total:>16.1f}   -> {1e6 / total:,.0f} tx/s on one core")
    if chain.store is None:
        print("store_append: n/a (ledger.store not available; plain state batch timed)")
    if args.edge:
        edge = edge_costs()
        report["edge_us"] = edge
        print(f"{'edge (best of 9)':<36}{'CPU us':>10}")
        for name, value in edge.items():
            print(f"{name:<36}{value:>10.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ledger_micro.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'ledger_micro.json'}")
    return report


if __name__ == "__main__":
    main()



