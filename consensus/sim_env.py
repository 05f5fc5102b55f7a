"""Pieces of the deterministic simulator: fast simulated keys, the proposal format the
simulated application uses, and a fault schedule drawn from a seed.

Simulated signatures are SHA-256 based and can only be produced by the holder of the
secret, which is all the simulation needs (Byzantine replicas cannot forge honest keys);
they verify about 20x faster than Ed25519, which is what lets hundreds of seeds run inside
`make test`. `--real-crypto` runs the same seeds with Ed25519 keys.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ledger.codec import decode_map, encode
from ledger.crypto import KeyPair, sha256
from ledger.crypto import verify as ed25519_verify
from ledger.errors import CodecError


class SimKey:
    """A simulated signing key: signature = SHA-256(secret||m) || SHA-256(m||secret)."""

    __slots__ = ("_secret", "public_key")

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.public_key = sha256(b"sim-public-key" + secret)

    def sign(self, message: bytes) -> bytes:
        return sha256(self._secret + message) + sha256(message + self._secret)


class SimVerifier:
    """Verifies SimKey signatures for every key it was told about (one per party)."""

    def __init__(self) -> None:
        self._secrets: dict[bytes, bytes] = {}

    def register(self, secret: bytes) -> SimKey:
        key = SimKey(secret)
        self._secrets[key.public_key] = secret
        return key

    def __call__(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        secret = self._secrets.get(public_key)
        if secret is None or len(signature) != 64:
            return False
        return signature == sha256(secret + message) + sha256(message + secret)


class KeyFactory:
    """Makes the keys of one run: simulated by default, Ed25519 with real_crypto."""

    def __init__(self, rng: random.Random, real_crypto: bool) -> None:
        self._rng = rng
        self._real = real_crypto
        self._sim = SimVerifier()

    def make(self) -> KeyPair | SimKey:
        secret = self._rng.getrandbits(256).to_bytes(32, "big")
        return KeyPair(secret) if self._real else self._sim.register(secret)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if self._real:
            return ed25519_verify(public_key, message, signature)
        return self._sim(public_key, message, signature)


# -- the simulated application: proposals are canonical maps ----------------------------

PROPOSAL_FIELDS = frozenset({"seq", "proposer", "reqs"})


def make_payload(seq: int, proposer: int, requests: list[bytes]) -> bytes:
    return encode({"seq": seq, "proposer": proposer, "reqs": list(requests)})


def parse_payload(payload: bytes) -> dict[str, Any] | None:
    try:
        fields = decode_map(payload)
    except CodecError:
        return None
    if set(fields) != PROPOSAL_FIELDS or not isinstance(fields["reqs"], list):
        return None
    if not all(isinstance(r, bytes) and len(r) == 32 for r in fields["reqs"]):
        return None
    if not isinstance(fields["seq"], int) or not isinstance(fields["proposer"], int):
        return None
    return fields


def digest_of(payload: bytes) -> bytes | None:
    return sha256(payload) if parse_payload(payload) is not None else None


def requests_in(payload: bytes) -> list[bytes] | None:
    fields = parse_payload(payload)
    return None if fields is None else list(fields["reqs"])


# -- the fault schedule of one seed -----------------------------------------------------

BYZANTINE_BEHAVIOURS = ("equivocate", "garbage", "replay", "mute-primary", "non-validator",
                        "bad-fetch")
FAULT_KINDS = frozenset({"loss", "dup", "reorder", "partition", "crash", "byzantine", "twins"})


@dataclass
class Scenario:
    seed: int
    nodes: int
    byzantine: list[int]  # validator indices that are faulty
    behaviours: dict[int, list[str]]  # per Byzantine index (empty list = twins)
    twins: list[int]
    checkpoint_interval: int
    watermark_window: int
    pipeline_window: int
    batch_requests_max: int
    gst_tick: int
    loss: float
    dup: float
    delay_max_ticks: int
    partitions: list[tuple[int, int, list[int]]]  # (start, end, hosts on side A)
    crashes: list[tuple[int, int, int]]  # (validator index, crash tick, restart tick)
    mid_step_crash: float
    requests_before_gst: int
    requests_after_gst: int
    quorum_delta: int = 0
    notes: list[str] = field(default_factory=list)


def draw_scenario(seed: int, nodes: int, byzantine: int | None, faults: frozenset[str],
                  canary: bool) -> Scenario:
    rng = random.Random(f"scenario:{seed}")
    f = (nodes - 1) // 3
    count = f if byzantine is None else byzantine
    if "byzantine" not in faults and "twins" not in faults:
        count = 0
    faulty = sorted(rng.sample(range(nodes), count))
    if canary and count and 0 not in faulty:
        # The canary must meet an equivocating primary: make view 0's primary faulty.
        faulty = sorted([0, *faulty[1:]])
    behaviours: dict[int, list[str]] = {}
    twins: list[int] = []
    for index in faulty:
        twin_odds = 0.0 if canary else 0.25
        if "twins" in faults and (rng.random() < twin_odds or "byzantine" not in faults):
            twins.append(index)
            behaviours[index] = []
            continue
        chosen = [b for b in BYZANTINE_BEHAVIOURS if rng.random() < 0.4]
        if canary or rng.random() < 0.5:
            chosen.append("equivocate")
        if canary and "mute-primary" in chosen:
            chosen.remove("mute-primary")  # a mute primary never gets to equivocate
        behaviours[index] = sorted(set(chosen)) or ["garbage"]
    interval = rng.choice([2, 3, 4])
    window = interval * rng.choice([2, 3])
    gst = rng.randint(60, 300)
    honest = [i for i in range(nodes) if i not in faulty]
    crashes: list[tuple[int, int, int]] = []
    if "crash" in faults:
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            victim = rng.choice(honest)
            at = rng.randint(5, gst)
            crashes.append((victim, at, rng.randint(at + 1, gst + 20)))
    partitions: list[tuple[int, int, list[int]]] = []
    if "partition" in faults:
        for _ in range(rng.choice([0, 1, 2])):
            start = rng.randint(0, gst - 1)
            side = sorted(rng.sample(range(nodes), rng.randint(1, nodes - 1)))
            partitions.append((start, rng.randint(start + 1, gst), side))
    return Scenario(
        seed=seed,
        nodes=nodes,
        byzantine=faulty,
        behaviours=behaviours,
        twins=twins,
        checkpoint_interval=interval,
        watermark_window=window,
        pipeline_window=rng.randint(1, min(3, window)),
        batch_requests_max=rng.randint(1, 3),
        gst_tick=gst,
        loss=rng.uniform(0.0, 0.3) if "loss" in faults else 0.0,
        dup=rng.uniform(0.0, 0.1) if "dup" in faults else 0.0,
        delay_max_ticks=rng.randint(2, 15) if "reorder" in faults else 1,
        partitions=partitions,
        crashes=crashes,
        mid_step_crash=0.3 if crashes else 0.0,
        requests_before_gst=rng.randint(3, 8),
        requests_after_gst=3,
        quorum_delta=-1 if canary else 0,
    )
