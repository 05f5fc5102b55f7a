"""JSON-RPC 2.0 request handling, independent of any HTTP framework.

`RpcDispatcher.dispatch(body)` takes the raw request body and returns the response body
(or None when nothing must be sent back: a notification, or a batch of only
notifications). It never raises for anything a client can send: every bad input becomes
a JSON-RPC error object with a stable code (docs/RPC.md, "Error codes").

Params are validated by each method's pydantic model before the handler runs, so a
handler only ever sees well-typed input. Params may be passed by name (an object) or by
position (an array mapped onto the model's fields in declaration order).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

log = logging.getLogger("cityledger.rpc")

# -- error codes --------------------------------------------------------------------
# The first five are fixed by the JSON-RPC 2.0 specification.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application codes (the spec reserves -32000..-32099 for the server). Stable: clients
# branch on them, so a code is never reused for another meaning.
TX_REJECTED = -32000
NOT_FOUND = -32001
MEMPOOL_FULL = -32002
TIMEOUT = -32003
UNAVAILABLE = -32004
BAD_REQUEST = -32005
LIMIT_EXCEEDED = -32006

ERROR_NAMES: dict[int, str] = {
    PARSE_ERROR: "parse_error",
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
    INTERNAL_ERROR: "internal_error",
    TX_REJECTED: "tx_rejected",
    NOT_FOUND: "not_found",
    MEMPOOL_FULL: "mempool_full",
    TIMEOUT: "timeout",
    UNAVAILABLE: "unavailable",
    BAD_REQUEST: "bad_request",
    LIMIT_EXCEEDED: "limit_exceeded",
}

BATCH_CALLS_MAX = 100
ID_STRING_CHARS_MAX = 256
METHOD_NAME_CHARS_MAX = 128
REQUEST_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


class RpcAppError(Exception):
    """An application error a handler raises to answer with a stable code and a reason."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{ERROR_NAMES.get(self.code, self.code)}: {self.message}"


class RpcParams(BaseModel):
    """Base for params models: strict types, no unknown fields, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class NoParams(RpcParams):
    """For methods that take no params."""


Handler = Callable[[Any], Awaitable[Any]]


BatchHandler = Callable[[list[Any]], Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class RpcMethod:
    """One callable method: its params schema, its async handler and a line of docs.

    Optionally a batch fast path for methods clients send in bulk (tx_submit):
    `batch_params(raw_params)` returns the handler input when the params plainly satisfy
    `params_model` (a subset of what the model accepts, never more), else None so that
    the model judges them and names the problem; `batch_handler(inputs)` answers many
    calls at once, one outcome per input (a result, or an RpcAppError for that call).
    """

    name: str
    params_model: type[BaseModel]
    handler: Handler
    doc: str = ""
    batch_params: Callable[[Any], Any | None] | None = None
    batch_handler: BatchHandler | None = None


def error_object(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error_object(code, message, data)}


# allow_nan=False: NaN and Infinity are not JSON and other clients would choke on them.
# One encoder for all calls: json.dumps with options builds a new encoder every time.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_json(value: Any) -> bytes:
    return _JSON_ENCODER.encode(value).encode()


def error_body(code: int, message: str, data: Any = None) -> bytes:
    """A complete response body for an error not tied to any request id."""
    return encode_json(error_response(None, code, message, data))


def validation_problems(exc: ValidationError) -> list[dict[str, str]]:
    """Readable, JSON-safe validation problems (without echoing the client's input)."""
    problems = []
    for item in exc.errors(include_url=False, include_input=False, include_context=False):
        location = ".".join(str(part) for part in item["loc"])
        problems.append({"field": location or "(params)", "problem": item["msg"]})
    return problems


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """The decoded JSON value, or ValueError with the reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise ValueError("invalid JSON: nested too deeply") from exc
    # int() of a number with more than sys.get_int_max_str_digits() digits.
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return len(value) <= ID_STRING_CHARS_MAX
    # bool is a subclass of int but is not a valid id; fractional ids are discouraged by
    # the spec and refused here so that ids round-trip exactly.
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


@dataclass(frozen=True, slots=True)
class _Call:
    """A structurally valid request."""

    method: str
    params: dict[str, Any] | list[Any] | None
    request_id: Any
    is_notification: bool


def _check_request(item: Any) -> _Call | dict[str, Any]:
    """A valid call, or the invalid-request error response for it."""
    if not isinstance(item, dict):
        return error_response(
            None, INVALID_REQUEST, f"a request must be a JSON object, not {_json_type(item)}"
        )
    request_id = item.get("id")
    method = item.get("method")
    params = item.get("params")
    # The common case in one pass of cheap checks; any doubt takes the path that names it.
    if (type(method) is str and 0 < len(method) <= METHOD_NAME_CHARS_MAX
            and item.get("jsonrpc") == "2.0" and REQUEST_MEMBERS.issuperset(item)
            and (type(params) is dict or type(params) is list
                 or (params is None and "params" not in item))
            and (type(request_id) is int and -(2**63) <= request_id < 2**63
                 or (type(request_id) is str and len(request_id) <= ID_STRING_CHARS_MAX)
                 or request_id is None)):
        return _Call(method, params, request_id, "id" not in item)
    echo_id = request_id if _valid_id(request_id) else None

    def invalid(reason: str) -> dict[str, Any]:
        return error_response(echo_id, INVALID_REQUEST, reason)

    if "id" in item and not _valid_id(request_id):
        return invalid(
            f"id must be a string (at most {ID_STRING_CHARS_MAX} chars), an integer or null, "
            f"not {_json_type(request_id)}"
        )
    if item.get("jsonrpc") != "2.0":
        return invalid('"jsonrpc" must be exactly "2.0"')
    if not isinstance(method, str) or not method:
        return invalid('"method" must be a non-empty string')
    if len(method) > METHOD_NAME_CHARS_MAX:
        return invalid(f'"method" is longer than {METHOD_NAME_CHARS_MAX} characters')
    unknown = sorted(set(item) - REQUEST_MEMBERS)
    if unknown:
        return invalid(f"unknown request members {unknown}")
    if "params" in item and not isinstance(params, dict | list):
        return invalid(f'"params" must be an object or an array, not {_json_type(params)}')
    return _Call(method, params, request_id, "id" not in item)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


@dataclass
class RpcDispatcher:
    """Routes parsed requests to registered methods; safe to share between requests."""

    methods: dict[str, RpcMethod] = field(default_factory=dict)
    batch_calls_max: int = BATCH_CALLS_MAX

    @classmethod
    def of(cls, methods: Iterable[RpcMethod], *, batch_calls_max: int = BATCH_CALLS_MAX
           ) -> RpcDispatcher:
        dispatcher = cls(batch_calls_max=batch_calls_max)
        for method in methods:
            dispatcher.register(method)
        return dispatcher

    def register(self, method: RpcMethod) -> None:
        if method.name in self.methods:
            raise ValueError(f"RPC method {method.name!r} registered twice")
        if method.name.startswith("rpc."):
            raise ValueError("method names starting with 'rpc.' are reserved by JSON-RPC 2.0")
        self.methods[method.name] = method

    async def dispatch(self, body: bytes) -> bytes | None:
        """The response body for a request body, or None when no response is due."""
        try:
            message = parse_json(body)
        except ValueError as exc:
            return error_body(PARSE_ERROR, "parse error", str(exc))
        if isinstance(message, list):
            return await self._dispatch_batch(message)
        return await self._dispatch_one(message)

    async def _dispatch_batch(self, items: list[Any]) -> bytes | None:
        if not items:
            return error_body(INVALID_REQUEST, "a batch must contain at least one request")
        if len(items) > self.batch_calls_max:
            return error_body(
                LIMIT_EXCEEDED,
                f"a batch of {len(items)} requests exceeds the limit of "
                f"{self.batch_calls_max}",
                {"limit": self.batch_calls_max, "got": len(items)},
            )
        at_once = self._batch_at_once(items)
        if at_once is not None:
            return await self._answer_at_once(*at_once)
        # Calls start in batch order (gather schedules them first-in first-out), so each
        # handler's work before its first await runs in the order the client sent.
        parts = await asyncio.gather(*(self._dispatch_one(item) for item in items))
        answered = [part for part in parts if part is not None]
        if not answered:
            return None
        return b"[" + b",".join(answered) + b"]"

    def _batch_at_once(self, items: list[Any]
                       ) -> tuple[RpcMethod, list[_Call], list[Any]] | None:
        """The method, calls and handler inputs when every call of the batch is well formed,
        for one method with a batch handler, with plainly valid params; None for any other
        batch, which then takes the per-call path and its exact error answers."""
        first = items[0]
        name = first.get("method") if type(first) is dict else None
        method = self.methods.get(name) if type(name) is str else None
        if method is None or method.batch_handler is None or method.batch_params is None:
            return None
        calls: list[_Call] = []
        inputs: list[Any] = []
        for item in items:
            call = _check_request(item)
            if isinstance(call, dict) or call.method != method.name:
                return None
            value = method.batch_params(call.params)
            if value is None:
                return None
            calls.append(call)
            inputs.append(value)
        return method, calls, inputs

    async def _answer_at_once(self, method: RpcMethod, calls: list[_Call], inputs: list[Any]
                              ) -> bytes | None:
        """One handler call for the whole batch: no task, params model or response
        encoding per call."""
        assert method.batch_handler is not None
        try:
            outcomes = await method.batch_handler(inputs)
            if len(outcomes) != len(inputs):
                raise ValueError(f"{len(outcomes)} outcomes for {len(inputs)} calls")
        # As in _run: a bug in a handler is logged in full and answered as internal error.
        except Exception:
            log.exception("RPC method %s failed on a batch", method.name)
            failed = RpcAppError(INTERNAL_ERROR, "internal error")
            outcomes = [failed] * len(inputs)
        responses = []
        for call, outcome in zip(calls, outcomes, strict=True):
            if call.is_notification:
                continue
            if isinstance(outcome, RpcAppError):
                responses.append(error_response(call.request_id, outcome.code, outcome.message,
                                                outcome.data))
            else:
                responses.append({"jsonrpc": "2.0", "id": call.request_id, "result": outcome})
        if not responses:
            return None
        try:
            return encode_json(responses)
        except (TypeError, ValueError, RecursionError):
            return b"[" + b",".join(self._encode_response(r) for r in responses) + b"]"

    def _encode_response(self, response: dict[str, Any]) -> bytes:
        try:
            return encode_json(response)
        except (TypeError, ValueError, RecursionError):
            log.exception("RPC batch answer is not JSON")
            return encode_json(error_response(response["id"], INTERNAL_ERROR, "internal error"))

    async def _dispatch_one(self, item: Any) -> bytes | None:
        call = _check_request(item)
        if isinstance(call, dict):
            return encode_json(call)
        response = await self._run(call)
        if call.is_notification:
            return None
        try:
            return encode_json(response)
        except (TypeError, ValueError, RecursionError):
            log.exception("RPC method %s returned a result that is not JSON", call.method)
            return encode_json(error_response(call.request_id, INTERNAL_ERROR, "internal error"))

    async def _run(self, call: _Call) -> dict[str, Any]:
        method = self.methods.get(call.method)
        if method is None:
            return error_response(
                call.request_id, METHOD_NOT_FOUND, f"method {call.method!r} does not exist"
            )
        params = self._validate(method, call)
        if isinstance(params, dict):
            return params
        try:
            result = await method.handler(params)
        except RpcAppError as exc:
            return error_response(call.request_id, exc.code, exc.message, exc.data)
        # The RPC edge must survive a bug in one handler: log it in full for the operator,
        # tell the client nothing about internals.
        except Exception:
            log.exception("RPC method %s failed", call.method)
            return error_response(call.request_id, INTERNAL_ERROR, "internal error")
        return {"jsonrpc": "2.0", "id": call.request_id, "result": result}

    def _validate(self, method: RpcMethod, call: _Call) -> BaseModel | dict[str, Any]:
        """The validated params model, or the invalid-params error response."""
        raw = call.params
        if isinstance(raw, list):
            names = list(method.params_model.model_fields)
            if len(raw) > len(names):
                return error_response(
                    call.request_id,
                    INVALID_PARAMS,
                    f"{method.name} takes at most {len(names)} positional params, "
                    f"got {len(raw)}",
                    {"params": names},
                )
            raw = dict(zip(names, raw, strict=False))
        try:
            return method.params_model.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            problems = validation_problems(exc)
            summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:3])
            return error_response(
                call.request_id, INVALID_PARAMS, f"invalid params for {method.name}: {summary}",
                problems,
            )
