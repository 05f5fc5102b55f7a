"""Validator-set epochs: which validators order (and certify) which consensus sequences.

Epoch 0 is genesis's validator set; it orders sequences from 1. Governance writes an
approved set change to state (txtypes.governance `validators_pending`, carrying a
`change_id` that grows by one per approved change). The change takes effect at a
checkpoint boundary: right after a node executes sequence S with S a multiple of the
checkpoint interval, if the state at S holds a change_id above the current epoch's number,
epoch `change_id` begins and orders sequences from S+1. Every node decides this from
agreed history alone, so all switch at the same sequence.

Consensus messages of epoch n are signed in the domain `epoch_domain(chain_id, n)`, so no
vote, checkpoint or view change of one epoch can count in another, and a commit
certificate is checked against the set and domain of the epoch of its sequence (see
docs/CONSENSUS.md "Validator-set changes").

Stored in the node's LevelDB: epoch/<first_seq:016d> -> canonical msgpack of `to_map()`,
one synced put per epoch, written before the new epoch signs anything.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ledger.codec import decode_stored, encode
from ledger.errors import LedgerError, invariant
from ledger.genesis import Genesis, ValidatorSpec

EPOCH_PREFIX = b"epoch/"


class EpochError(LedgerError):
    """A validator set that cannot start an epoch (the reason says why)."""

    code = "bad_epoch"


def epoch_domain(chain_id: str, number: int) -> str:
    """The signing domain of consensus messages in epoch `number` (genesis: the chain id)."""
    return chain_id if number == 0 else f"{chain_id}/epoch/{number}"


def parse_validator_set(entries: Iterable[Mapping[str, Any]]) -> tuple[ValidatorSpec, ...]:
    """Validators as genesis.json would accept them; EpochError names the first problem."""
    parsed: list[ValidatorSpec] = []
    for index, entry in enumerate(entries):
        try:
            parsed.append(ValidatorSpec.model_validate(dict(entry)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise EpochError(f"invalid validator entry {index} ({where}): {first['msg']}") from exc
        except (TypeError, ValueError) as exc:
            raise EpochError(f"invalid validator entry {index}: {exc}") from exc
    validators = tuple(parsed)
    if not validators:
        raise EpochError("a validator set needs at least one validator")
    for what, values in (("name", [v.name for v in validators]),
                         ("public key", [v.public_key for v in validators]),
                         ("address", [v.p2p_address for v in validators]
                          + [v.rpc_address for v in validators])):
        if len(set(values)) != len(values):
            raise EpochError(f"a validator {what} appears twice")
    return validators


@dataclass(frozen=True, slots=True)
class Epoch:
    number: int
    first_seq: int
    validators: tuple[ValidatorSpec, ...]

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(v.public_key_bytes for v in self.validators)

    def domain(self, chain_id: str) -> str:
        return epoch_domain(chain_id, self.number)

    def to_map(self) -> dict[str, Any]:
        return {"number": self.number, "first_seq": self.first_seq,
                "validators": [v.model_dump() for v in self.validators]}

    @classmethod
    def from_map(cls, data: Any) -> Epoch:
        if not isinstance(data, dict) or set(data) != {"number", "first_seq", "validators"}:
            raise EpochError("stored epoch record is malformed")
        number, first_seq = data["number"], data["first_seq"]
        if type(number) is not int or type(first_seq) is not int or number < 0 or first_seq < 1:
            raise EpochError("stored epoch number or first seq is malformed")
        if not isinstance(data["validators"], list):
            raise EpochError("stored epoch validators must be a list")
        return cls(number, first_seq, parse_validator_set(data["validators"]))


def genesis_epoch(genesis: Genesis) -> Epoch:
    return Epoch(0, 1, tuple(genesis.validators))


def due_epoch(executed_seq: int, checkpoint_interval_seqs: int,
              pending: Mapping[str, Any] | None, current: Epoch) -> Epoch | None:
    """The epoch that starts after `executed_seq`, given the pending change in its state.

    None unless `executed_seq` is a checkpoint boundary and governance approved a change
    newer than the current epoch. A set that cannot form an epoch (governance validates
    the same rules, so only corrupt state gets here) raises EpochError.
    """
    if executed_seq <= 0 or executed_seq % checkpoint_interval_seqs or pending is None:
        return None
    change_id = pending.get("change_id")
    if type(change_id) is not int or change_id <= current.number:
        return None
    entries = pending.get("validators")
    if not isinstance(entries, list):
        raise EpochError("the pending validator change has no validator list")
    return Epoch(change_id, executed_seq + 1, parse_validator_set(entries))


class EpochHistory:
    """Every epoch this node knows of, by first sequence; epoch 0 comes from genesis."""

    def __init__(self, db: Any, genesis: Genesis) -> None:
        self._db = db
        self._epochs: list[Epoch] = [genesis_epoch(genesis)]
        for _, raw in db.iterator(prefix=EPOCH_PREFIX):
            self._epochs.append(Epoch.from_map(decode_stored(raw)))
        for before, after in zip(self._epochs, self._epochs[1:], strict=False):
            if after.number <= before.number or after.first_seq <= before.first_seq:
                raise EpochError("stored epochs are out of order")
        self._firsts = [epoch.first_seq for epoch in self._epochs]

    @property
    def current(self) -> Epoch:
        return self._epochs[-1]

    def all(self) -> list[Epoch]:
        return list(self._epochs)

    def at_seq(self, seq: int) -> Epoch:
        """The epoch that ordered (or orders) consensus sequence `seq`."""
        return self._epochs[max(0, bisect.bisect_right(self._firsts, seq) - 1)]

    def certifiers(self, chain_id: str, seq: int) -> tuple[str, tuple[bytes, ...]]:
        """The signing domain and validator keys a certificate for `seq` must match."""
        epoch = self.at_seq(seq)
        return epoch.domain(chain_id), epoch.keys

    def record(self, epoch: Epoch) -> None:
        """Make `epoch` the current one, durably (synced) before it is used."""
        current = self.current
        invariant(epoch.number > current.number and epoch.first_seq > current.first_seq,
                  f"epoch {epoch.number} from seq {epoch.first_seq} does not follow "
                  f"epoch {current.number} from seq {current.first_seq}")
        self._db.put(EPOCH_PREFIX + f"{epoch.first_seq:016d}".encode(), encode(epoch.to_map()),
                     sync=True)
        self._epochs.append(epoch)
        self._firsts.append(epoch.first_seq)
