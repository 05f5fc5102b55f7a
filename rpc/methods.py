"""Names and params schemas of the node's RPC methods, shared by the node and the client.

The node implements the handlers (node.py); this module fixes what each method accepts,
so the server validates it before a handler runs and the client sends the same shape.
Bytes travel in JSON as lowercase hex strings without a 0x prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, StringConstraints, model_validator

from ledger.crypto import ADDRESS_BYTES, HASH_BYTES
from ledger.tx import TX_BYTES_MAX
from rpc.jsonrpc import NoParams, RpcParams

NODE_STATUS = "node_status"
TX_SUBMIT = "tx_submit"
TX_GET = "tx_get"
BLOCK_GET = "block_get"
BLOCK_LATEST = "block_latest"
VALIDATORS_LIST = "validators_list"
VALIDATOR_EPOCHS = "validator_epochs"
STATE_GET = "state_get"
ACCOUNT_GET = "account_get"

STATE_KEY_BYTES_MAX = 1024
HEIGHT_MAX = 2**63 - 1

HexBytes = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{2})*$")]
HashHex = Annotated[str, StringConstraints(pattern=rf"^[0-9a-f]{{{2 * HASH_BYTES}}}$")]
AddressHex = Annotated[str, StringConstraints(pattern=rf"^[0-9a-f]{{{2 * ADDRESS_BYTES}}}$")]


class NodeStatusParams(NoParams):
    pass


class TxSubmitParams(RpcParams):
    """`tx`: the signed wire bytes (ledger.tx) as hex; `wait`: answer after commit."""

    tx: Annotated[HexBytes, Field(min_length=2, max_length=2 * TX_BYTES_MAX)]
    wait: bool = False


@dataclass(frozen=True, slots=True)
class TxSubmit:
    """One tx_submit call as its handler uses it: the wire bytes, and whether to wait."""

    raw: bytes
    wait: bool


def tx_submit_fast(params: Any) -> TxSubmit | None:
    """The call when `params` plainly satisfy TxSubmitParams, else None.

    The rule is the model's: `tx` a string of lowercase hex of 1..TX_BYTES_MAX bytes,
    `wait` a JSON boolean (default false), nothing else, by name or by position. None
    only means "let the model judge" (it then names the problem): this check accepts
    nothing the model refuses. About a third of the model's cost, for the RPC batch path.
    """
    if type(params) is dict:
        count = len(params)
        if count == 2 and "wait" not in params or not 0 < count <= 2:
            return None
        tx, wait = params.get("tx"), params.get("wait", False)
    elif type(params) is list:
        if not 0 < len(params) <= 2:
            return None
        tx, wait = params[0], params[1] if len(params) == 2 else False
    else:
        return None
    if type(tx) is not str or type(wait) is not bool or not 2 <= len(tx) <= 2 * TX_BYTES_MAX:
        return None
    try:
        raw = bytes.fromhex(tx)
    except ValueError:
        return None
    # fromhex also takes uppercase digits and whitespace, which the model refuses.
    return TxSubmit(raw, wait) if raw.hex() == tx else None


class TxGetParams(RpcParams):
    hash: HashHex


class BlockGetParams(RpcParams):
    """Exactly one of `height` and `hash`."""

    height: Annotated[int, Field(ge=0, le=HEIGHT_MAX)] | None = None
    hash: HashHex | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BlockGetParams:
        if (self.height is None) == (self.hash is None):
            raise ValueError("give exactly one of height and hash")
        return self


class BlockLatestParams(NoParams):
    pass


class ValidatorsListParams(NoParams):
    pass


class ValidatorEpochsParams(NoParams):
    pass


class StateGetParams(RpcParams):
    """`key`: the raw state key as hex (e.g. hex of b"tokens/bal/<class>/<holder>")."""

    key: Annotated[HexBytes, Field(min_length=2, max_length=2 * STATE_KEY_BYTES_MAX)]


class AccountGetParams(RpcParams):
    address: AddressHex


PARAMS_MODELS: dict[str, type[RpcParams]] = {
    NODE_STATUS: NodeStatusParams,
    TX_SUBMIT: TxSubmitParams,
    TX_GET: TxGetParams,
    BLOCK_GET: BlockGetParams,
    BLOCK_LATEST: BlockLatestParams,
    VALIDATORS_LIST: ValidatorsListParams,
    VALIDATOR_EPOCHS: ValidatorEpochsParams,
    STATE_GET: StateGetParams,
    ACCOUNT_GET: AccountGetParams,
}


def jsonable(value: Any) -> Any:
    """`value` with bytes turned into lowercase hex and tuples into lists, for a result.

    Use it on ledger values (decoded msgpack, receipts, headers) before returning them
    from a handler; anything else that is not JSON is left for the dispatcher to refuse
    as an internal error.
    """
    kind = type(value)
    # Exact types first: this runs for every committed tx a caller waits for.
    if kind in _JSON_LEAVES:
        return value
    if kind is bytes:
        return value.hex()
    if kind is dict:
        return {key if type(key) is str else str(key):
                item if type(item) in _JSON_LEAVES else jsonable(item)
                for key, item in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


_JSON_LEAVES = frozenset({str, int, bool, float, type(None)})
