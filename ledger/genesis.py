"""Genesis: the chain id, validator set, consensus parameters and rule modules a chain starts with.

`load_genesis` reads genesis.json strictly: unknown fields, duplicate JSON keys, floats,
bad hex, duplicate validators and the like each give a `GenesisError` naming the field
and the problem. `Genesis.hash` is SHA-256 of the canonical encoding of the normalised
genesis (domain "genesis"), so it pins every field, including the module list and every
module parameter: the block store records it and refuses a data dir of another genesis,
and two nodes can compare one hash instead of a file.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ledger.codec import encode
from ledger.crypto import PUBLIC_KEY_BYTES, address_of, sha256, signing_payload
from ledger.errors import CodecError, LedgerError
from ledger.overlay import MemoryKV, Overlay
from ledger.rules import RuleError, RuleModule
from ledger.state import state_root_of
from ledger.tx import CHAIN_ID_PATTERN, NAME_PATTERN

GENESIS_BYTES_MAX = 16 * 1024 * 1024
VALIDATORS_MAX = 100
AGENCY_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
HOST_PATTERN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)$")
PORT_PATTERN = re.compile(r"^[1-9][0-9]{0,4}$")
HEX_PATTERN = re.compile(r"^[0-9a-f]*$")
DEV_SEED_DOMAIN = b"cityledger dev key/"


class GenesisError(LedgerError):
    """A genesis file or value that cannot start a chain; the reason names the field."""

    code = "genesis_error"


def _check_endpoint(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not HOST_PATTERN.match(host) or not PORT_PATTERN.match(port):
        raise ValueError(f"{text!r} is not host:port")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} of {text!r} is outside 1..65535")
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ConsensusParams(_Strict):
    checkpoint_interval_blocks: int = Field(ge=1, le=1_000_000)
    view_change_timeout_ms: int = Field(ge=10, le=3_600_000)
    batch_txs_max: int = Field(ge=1, le=100_000)
    batch_interval_ms: int = Field(ge=1, le=60_000)


class ValidatorSpec(_Strict):
    """One agency's validator node."""

    name: str
    public_key: str
    p2p_address: str
    rpc_address: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not AGENCY_NAME_PATTERN.match(value):
            raise ValueError(f"agency name {value!r} must match {AGENCY_NAME_PATTERN.pattern}")
        return value

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str) -> str:
        if len(value) != 2 * PUBLIC_KEY_BYTES or not HEX_PATTERN.match(value):
            raise ValueError(
                f"public key must be {2 * PUBLIC_KEY_BYTES} lowercase hex characters"
            )
        return value

    @field_validator("p2p_address", "rpc_address")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _check_endpoint(value)

    @property
    def public_key_bytes(self) -> bytes:
        return bytes.fromhex(self.public_key)

    @property
    def address(self) -> str:
        return address_of(self.public_key_bytes)


class ModuleSpec(_Strict):
    """A rule module the chain runs, and its genesis parameters."""

    name: str
    params: dict[str, Any]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"module name {value!r} must match {NAME_PATTERN.pattern}")
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            encode(value)
        except CodecError as exc:
            raise ValueError(f"params cannot be encoded canonically: {exc.reason}") from exc
        return value


def _duplicates(values: Sequence[str]) -> list[str]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return sorted(value for value, count in counts.items() if count > 1)


class Genesis(_Strict):
    chain_id: str
    genesis_time_ms: int = Field(ge=0, le=2**63 - 1)
    consensus: ConsensusParams
    validators: list[ValidatorSpec] = Field(min_length=1, max_length=VALIDATORS_MAX)
    modules: list[ModuleSpec]

    @field_validator("chain_id")
    @classmethod
    def _chain_id(cls, value: str) -> str:
        if not CHAIN_ID_PATTERN.match(value):
            raise ValueError(f"chain id {value!r} must match {CHAIN_ID_PATTERN.pattern}")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Genesis:
        checks = [
            ("validator name", [v.name for v in self.validators]),
            ("validator public key", [v.public_key for v in self.validators]),
            ("validator network address",
             [v.p2p_address for v in self.validators] + [v.rpc_address for v in self.validators]),
            ("module name", [m.name for m in self.modules]),
        ]
        for what, values in checks:
            repeated = _duplicates(values)
            if repeated:
                raise ValueError(f"duplicate {what}: {', '.join(repeated)}")
        return self

    def to_canonical(self) -> dict[str, Any]:
        """The normalised genesis as hashed: keys as bytes, everything else as read."""
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "consensus": self.consensus.model_dump(),
            "validators": [
                {"name": v.name, "public_key": v.public_key_bytes,
                 "p2p_address": v.p2p_address, "rpc_address": v.rpc_address}
                for v in self.validators
            ],
            "modules": [{"name": m.name, "params": m.params} for m in self.modules],
        }

    @property
    def hash(self) -> bytes:
        return sha256(signing_payload("genesis", self.chain_id, self.to_canonical()))

    @property
    def module_names(self) -> list[str]:
        return [m.name for m in self.modules]


def _location(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ())) or "genesis"


def parse_genesis(data: Any) -> Genesis:
    """A Genesis from already-parsed JSON data, or GenesisError with every problem found."""
    if not isinstance(data, dict):
        raise GenesisError(f"genesis must be a JSON object, got {type(data).__name__}")
    try:
        return Genesis.model_validate(data, strict=True)
    except ValidationError as exc:
        problems = [
            f"{_location(error)}: {str(error['msg']).removeprefix('Value error, ')}"
            for error in exc.errors(include_url=False)
        ]
        raise GenesisError("; ".join(problems)) from None


def _reject_float(text: str) -> NoReturn:
    raise GenesisError(f"number {text} is not an integer; genesis holds integers only")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise GenesisError(f"JSON key {key!r} appears twice in one object")
        out[key] = value
    return out


def loads_genesis(text: str) -> Genesis:
    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except json.JSONDecodeError as exc:
        raise GenesisError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                           ) from None
    except RecursionError:
        raise GenesisError("JSON nested too deeply") from None
    return parse_genesis(data)


def load_genesis(path: Path | str) -> Genesis:
    """Read and validate a genesis file; GenesisError with a precise reason if it is bad."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(GENESIS_BYTES_MAX + 1)
    except OSError as exc:
        raise GenesisError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > GENESIS_BYTES_MAX:
        raise GenesisError(f"{path} is larger than {GENESIS_BYTES_MAX} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GenesisError(f"{path} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    return loads_genesis(text)


def build_genesis_state(
    genesis: Genesis, modules: Sequence[RuleModule]
) -> tuple[dict[bytes, bytes | None], bytes]:
    """Run every module's init_genesis in genesis order; the writes and the state root.

    `modules` must be the modules genesis names, in the same order (txtypes.base.load_modules).
    """
    families = [module.family for module in modules]
    if families != genesis.module_names:
        raise GenesisError(
            f"genesis names modules {genesis.module_names} but {families} were loaded"
        )
    state = Overlay(MemoryKV())
    for spec, module in zip(genesis.modules, modules, strict=True):
        try:
            module.init_genesis(state, copy.deepcopy(spec.params))
        except (ValueError, RuleError, CodecError) as exc:
            raise GenesisError(f"modules.{spec.name}.params rejected: {exc}") from exc
    writes = dict(state.writes)
    present = {key: value for key, value in writes.items() if value is not None}
    return writes, state_root_of(present)


def dev_key_seed(name: str) -> bytes:
    """The PUBLIC seed of a local-network dev key: never use such keys for a real chain."""
    return sha256(DEV_SEED_DOMAIN + name.encode())
