"""A validator set that starts mid-chain (a new epoch after a validator-set change).

The replica of a new epoch starts at `base_seq` as if it were a stable checkpoint that
needs no votes: it orders from base_seq+1, stays safe and live under the simulator's
faults, and refuses checkpoint proofs that claim the base with votes, another state, or
a sequence of the previous epoch.
"""

from __future__ import annotations

import random

import pytest

from consensus.certificates import check_checkpoint_proof
from consensus.config import ConfigError, ReplicaConfig
from consensus.messages import CheckpointProof
from consensus.replica import Replica
from consensus.sim import Simulation, run_seed
from consensus.sim_env import FAULT_KINDS, KeyFactory, digest_of, draw_scenario, requests_in
from ledger.crypto import sha256

BASE_DIGEST = sha256(b"state at the epoch base")


def _config(base_seq: int, base_digest: bytes = BASE_DIGEST) -> ReplicaConfig:
    keys = KeyFactory(random.Random(7), False)
    signers = [keys.make() for _ in range(4)]
    return ReplicaConfig(chain_id="city/epoch/1", validators=tuple(k.public_key for k in signers),
                         signer=signers[0], digest_of=digest_of, requests_in=requests_in,
                         verify=keys.verify, checkpoint_interval_seqs=4,
                         base_seq=base_seq, base_state_digest=base_digest)


@pytest.mark.parametrize("nodes", [4, 7])
def test_a_new_epoch_stays_safe_and_live_under_every_fault(nodes: int) -> None:
    outcomes = [run_seed(seed, nodes=nodes, base_seq=48) for seed in range(300, 340)]
    failures = [o.line() for o in outcomes if o.safety or o.liveness]
    assert failures == []
    assert all(o.executed > 0 for o in outcomes)


def test_a_new_epoch_orders_from_the_sequence_after_its_base() -> None:
    simulation = Simulation(draw_scenario(301, 4, None, FAULT_KINDS, False), base_seq=24)
    outcome = simulation.run()
    assert not outcome.safety and not outcome.liveness
    assert min(simulation.committed) == 25


def test_the_replica_starts_at_the_base_as_its_stable_checkpoint() -> None:
    replica = Replica(_config(base_seq=32))
    assert (replica.low_seq, replica.last_executed, replica.next_seq) == (32, 32, 33)
    assert replica.stable_proof == CheckpointProof(32, BASE_DIGEST, ())


def test_checkpoint_proofs_of_the_base_need_no_votes_and_the_known_state() -> None:
    config = _config(base_seq=32)
    assert check_checkpoint_proof(config, CheckpointProof(32, BASE_DIGEST, ())) is None
    other_state = check_checkpoint_proof(config, CheckpointProof(32, sha256(b"x"), ()))
    assert other_state is not None and "known state" in other_state
    earlier = check_checkpoint_proof(config, CheckpointProof(28, BASE_DIGEST, ()))
    assert earlier is not None and "precedes" in earlier
    genesis = check_checkpoint_proof(config, CheckpointProof(0, bytes(32), ()))
    assert genesis is not None and "precedes" in genesis


def test_a_negative_base_or_a_short_base_digest_is_refused() -> None:
    with pytest.raises(ConfigError):
        _config(base_seq=-1)
    with pytest.raises(ConfigError):
        _config(base_seq=4, base_digest=b"short")
