"""A small hand-driven cluster for targeted consensus tests.

Unlike the seeded simulator, nothing happens unless the test says so: messages are
delivered in FIFO order by `run()`, timers fire only through `fire()`, and a test can
crash a replica, drop or rewrite messages in flight, and look at every action list.
The node side (build, validate, execute, fetch) is answered immediately and honestly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from consensus.config import ReplicaConfig
from consensus.events import (
    BROADCAST,
    Action,
    BuildProposal,
    CancelTimer,
    CommitProof,
    CommittedFetched,
    Compact,
    Event,
    Execute,
    Executed,
    FetchCommitted,
    MessageReceived,
    Persist,
    ProposalBuilt,
    ProposalValidated,
    ReportEvidence,
    RequestReceived,
    Send,
    SetTimer,
    TimerFired,
    ValidateProposal,
)
from consensus.messages import Message, decode_message, encode_message
from consensus.records import Record, decode_record, encode_record
from consensus.replica import Replica
from consensus.sim_env import KeyFactory, SimKey, digest_of, make_payload, requests_in
from ledger.crypto import KeyPair, sha256

CHAIN = "test-chain"
Filter = Callable[[int, int, Message], "Message | None"]


def request(number: int) -> bytes:
    return sha256(f"request {number}".encode())


@dataclass
class Node:
    index: int
    key: KeyPair | SimKey
    config: ReplicaConfig
    replica: Replica | None
    records: list[bytes] = field(default_factory=list)
    timers: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> token, delay
    executed: list[Execute] = field(default_factory=list)
    action_lists: list[list[Action]] = field(default_factory=list)
    evidence: list[ReportEvidence] = field(default_factory=list)
    fetches: list[FetchCommitted] = field(default_factory=list)
    validations: list[ValidateProposal] = field(default_factory=list)
    builds: list[BuildProposal] = field(default_factory=list)


class Cluster:
    def __init__(self, n: int = 4, *, real_crypto: bool = False, seed: int = 1,
                 invalid_payloads: frozenset[bytes] = frozenset(), **settings: int) -> None:
        import random

        self.keys = KeyFactory(random.Random(seed), real_crypto)
        self.node_keys = [self.keys.make() for _ in range(n)]
        self.validators = tuple(k.public_key for k in self.node_keys)
        defaults = {"checkpoint_interval_seqs": 4, "watermark_window_seqs": 8,
                    "pipeline_window": 1, "batch_requests_max": 1, "batch_interval_ticks": 5,
                    "view_timeout_ticks": 10, "request_timeout_ticks": 30}
        defaults.update(settings)
        self.settings = defaults
        self.nodes = [Node(i, key, self.config(key), None) for i, key in enumerate(self.node_keys)]
        self.queue: deque[tuple[int, int, Message]] = deque()
        self.filter: Filter | None = None
        self.down: set[int] = set()
        self.invalid = set(invalid_payloads)
        self.auto_execute = True
        self.auto_validate = True
        for node in self.nodes:
            node.replica = Replica(node.config)
            self.apply(node.index, node.replica.start())

    def config(self, key: KeyPair | SimKey, **overrides: int) -> ReplicaConfig:
        settings = {**self.settings, **overrides}
        return ReplicaConfig(chain_id=CHAIN, validators=self.validators, signer=key,
                             digest_of=digest_of, requests_in=requests_in,
                             verify=self.keys.verify, **settings)  # type: ignore[arg-type]

    def replica(self, index: int) -> Replica:
        replica = self.nodes[index].replica
        assert replica is not None
        return replica

    # -- driving ----------------------------------------------------------------------------

    def step(self, index: int, event: Event) -> list[Action]:
        if index in self.down:
            return []
        actions = self.replica(index).step(event)
        self.apply(index, actions)
        return actions

    def submit(self, number: int, to: list[int] | None = None) -> bytes:
        digest = request(number)
        for index in to if to is not None else range(len(self.nodes)):
            self.step(index, RequestReceived(digest))
        return digest

    def fire(self, kind: str, nodes: list[int] | None = None) -> list[int]:
        """Fire the armed `kind` timer at these nodes; returns the nodes it fired at."""
        fired = []
        for index in nodes if nodes is not None else range(len(self.nodes)):
            armed = self.nodes[index].timers.pop(kind, None)
            if armed is not None and index not in self.down:
                fired.append(index)
                self.step(index, TimerFired(kind, armed[0]))
        return fired

    def run(self, max_messages: int = 100_000) -> int:
        delivered = 0
        while self.queue and delivered < max_messages:
            src, dst, message = self.queue.popleft()
            if dst in self.down:
                continue
            delivered += 1
            # Through the real wire format, as the node would do it.
            self.step(dst, MessageReceived(src, decode_message(encode_message(message))))
        return delivered

    def crash(self, index: int) -> None:
        self.down.add(index)
        self.nodes[index].replica = None
        self.nodes[index].timers = {}
        self.queue = deque(item for item in self.queue if item[1] != index)

    def restart(self, index: int) -> list[Action]:
        node = self.nodes[index]
        records: list[Record] = [decode_record(data) for data in node.records]
        node.replica = Replica.restore(node.config, records, executed_seq=len(node.executed))
        self.down.discard(index)
        actions = node.replica.start()
        self.apply(index, actions)
        return actions

    # -- the node's side --------------------------------------------------------------------

    def apply(self, index: int, actions: list[Action]) -> None:
        node = self.nodes[index]
        node.action_lists.append(actions)
        for action in actions:
            if index in self.down:
                return
            if isinstance(action, Send):
                self._send(index, action.to, action.message)
            elif isinstance(action, Persist):
                node.records.append(encode_record(action.record))
            elif isinstance(action, Compact):
                node.records = [encode_record(r) for r in action.records]
            elif isinstance(action, SetTimer):
                node.timers[action.kind] = (action.token, action.delay_ticks)
            elif isinstance(action, CancelTimer):
                node.timers.pop(action.kind, None)
            elif isinstance(action, BuildProposal):
                node.builds.append(action)
                payload = make_payload(action.seq, index, list(action.requests))
                self.step(index, ProposalBuilt(action.view, action.seq, payload))
            elif isinstance(action, ValidateProposal):
                node.validations.append(action)
                if self.auto_validate:
                    ok = action.payload not in self.invalid
                    if action.seq <= len(node.executed):
                        ok = node.executed[action.seq - 1].digest == action.digest
                    self.step(index, ProposalValidated(action.view, action.seq, action.digest, ok))
            elif isinstance(action, Execute):
                self._execute(index, action)
            elif isinstance(action, FetchCommitted):
                node.fetches.append(action)
                self._serve(index, action)
            elif isinstance(action, ReportEvidence):
                node.evidence.append(action)

    def _send(self, src: int, to: int, message: Message) -> None:
        targets = [i for i in range(len(self.nodes)) if i != src] if to == BROADCAST else [to]
        for dst in targets:
            rewritten: Message | None = message
            if self.filter is not None:
                rewritten = self.filter(src, dst, message)
            if rewritten is not None:
                self.queue.append((src, dst, rewritten))

    def _execute(self, index: int, action: Execute) -> None:
        node = self.nodes[index]
        assert action.seq == len(node.executed) + 1, "executions must be gap-free and in order"
        node.executed.append(action)
        if self.auto_execute:
            self.step(index, Executed(action.seq, self.state_digest(index)))

    def state_digest(self, index: int) -> bytes:
        state = b"genesis"
        for action in self.nodes[index].executed:
            state = sha256(state + action.digest)
        return state

    def _serve(self, index: int, action: FetchCommitted) -> None:
        for peer in action.peers:
            if peer in self.down:
                continue
            executed = self.nodes[peer].executed
            for seq in range(action.from_seq, action.to_seq + 1):
                if seq <= len(executed):
                    done = executed[seq - 1]
                    self.step(index, CommittedFetched(seq, done.payload, done.certificate))
            return

    # -- inspection -------------------------------------------------------------------------

    def digests(self, index: int) -> list[bytes]:
        return [e.digest for e in self.nodes[index].executed]

    def requests_executed(self, index: int) -> list[bytes]:
        out: list[bytes] = []
        for e in self.nodes[index].executed:
            out.extend(requests_in(e.payload) or [] if e.payload else [])
        return out

    def sign_as(self, index: int, message: Message) -> Message:
        from dataclasses import replace

        from consensus.messages import signed_bytes

        key = self.node_keys[index]
        return replace(message, signature=key.sign(signed_bytes(message, CHAIN)))


def proof_of(execute: Execute) -> CommitProof:
    return execute.certificate
