"""JSON-RPC 2.0 behaviour over real HTTP: every error code path, batches, notifications."""

from __future__ import annotations

import json
import logging

import pytest

from rpc.jsonrpc import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    MEMPOOL_FULL,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    PARSE_ERROR,
    TIMEOUT,
    TX_REJECTED,
    UNAVAILABLE,
)
from tests.rpc.support import MethodSet, post_json, post_raw


def call(method: str, params: object = None, request_id: object = 1) -> dict[str, object]:
    message: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        message["params"] = params
    return message


def test_named_params_reach_the_handler(rpc_url: str) -> None:
    answer = post_json(rpc_url, call("echo", {"text": "ab", "times": 3}))
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert answer.json() == {"jsonrpc": "2.0", "id": 1, "result": "ababab"}


def test_positional_params_map_onto_fields_in_order(rpc_url: str) -> None:
    assert post_json(rpc_url, call("add", [40, 2])).json()["result"] == 42
    # Trailing fields with defaults may be left out.
    assert post_json(rpc_url, call("echo", ["x"])).json()["result"] == "x"


def test_string_and_null_ids_are_echoed_back(rpc_url: str) -> None:
    assert post_json(rpc_url, call("add", [1, 1], "req-7")).json()["id"] == "req-7"
    assert post_json(rpc_url, call("add", [1, 1], None)).json() == {
        "jsonrpc": "2.0", "id": None, "result": 2}


def test_too_many_positional_params_is_invalid_params(rpc_url: str) -> None:
    error = post_json(rpc_url, call("add", [1, 2, 3])).json()["error"]
    assert error["code"] == INVALID_PARAMS
    assert "at most 2" in error["message"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"a": "1", "b": 2}, "a"),  # strict: no string-to-int coercion
        ({"a": 1.5, "b": 2}, "a"),
        ({"a": True, "b": 2}, "a"),
        ({"a": 1}, "b"),
        ({"a": 1, "b": 2, "c": 3}, "c"),
    ],
)
def test_params_that_fail_the_model_are_invalid_params_with_readable_data(
    rpc_url: str, params: dict[str, object], field: str
) -> None:
    answer = post_json(rpc_url, call("add", params)).json()
    error = answer["error"]
    assert answer["id"] == 1
    assert error["code"] == INVALID_PARAMS
    assert any(problem["field"] == field for problem in error["data"])
    assert all(isinstance(problem["problem"], str) for problem in error["data"])


def test_unknown_method_is_method_not_found(rpc_url: str) -> None:
    error = post_json(rpc_url, call("no_such_method")).json()["error"]
    assert error["code"] == METHOD_NOT_FOUND
    assert "no_such_method" in error["message"]


@pytest.mark.parametrize(
    "body",
    [b"{", b"", b"nul", b'{"jsonrpc": "2.0",}', b"\xff\xfe{}", b"NaN", b'{"a": Infinity}',
     b"[" * 100_000, b"1" * 5000],
)
def test_bytes_that_are_not_json_are_a_parse_error(rpc_url: str, body: bytes) -> None:
    answer = post_raw(rpc_url, body)
    assert answer.status == 200
    message = answer.json()
    assert message["id"] is None
    assert message["error"]["code"] == PARSE_ERROR


@pytest.mark.parametrize(
    "message, reason",
    [
        (1, "JSON object"),
        ("call", "JSON object"),
        (None, "JSON object"),
        ({"method": "add", "id": 1}, "jsonrpc"),
        ({"jsonrpc": "1.0", "method": "add", "id": 1}, "jsonrpc"),
        ({"jsonrpc": 2.0, "method": "add", "id": 1}, "jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1}, "method"),
        ({"jsonrpc": "2.0", "method": 7, "id": 1}, "method"),
        ({"jsonrpc": "2.0", "method": "", "id": 1}, "method"),
        ({"jsonrpc": "2.0", "method": "add", "id": 1.5}, "id"),
        ({"jsonrpc": "2.0", "method": "add", "id": True}, "id"),
        ({"jsonrpc": "2.0", "method": "add", "id": [1]}, "id"),
        ({"jsonrpc": "2.0", "method": "add", "id": {"x": 1}}, "id"),
        ({"jsonrpc": "2.0", "method": "add", "id": "x" * 300}, "id"),
        ({"jsonrpc": "2.0", "method": "add", "params": 5, "id": 1}, "params"),
        ({"jsonrpc": "2.0", "method": "add", "params": "a", "id": 1}, "params"),
        ({"jsonrpc": "2.0", "method": "add", "id": 1, "extra": 1}, "unknown"),
    ],
)
def test_malformed_request_objects_are_invalid_request(
    rpc_url: str, message: object, reason: str
) -> None:
    answer = post_json(rpc_url, message)
    assert answer.status == 200
    error = answer.json()["error"]
    assert error["code"] == INVALID_REQUEST
    assert reason in error["message"]


def test_invalid_request_echoes_a_valid_id_and_nulls_an_invalid_one(rpc_url: str) -> None:
    assert post_json(rpc_url, {"jsonrpc": "1.0", "method": "x", "id": 9}).json()["id"] == 9
    assert post_json(rpc_url, {"jsonrpc": "2.0", "method": "x", "id": 1.5}).json()["id"] is None


def test_empty_batch_is_one_invalid_request_error(rpc_url: str) -> None:
    message = post_json(rpc_url, []).json()
    assert isinstance(message, dict)
    assert message["error"]["code"] == INVALID_REQUEST


def test_batch_of_non_objects_gets_one_invalid_request_per_entry(rpc_url: str) -> None:
    message = post_json(rpc_url, [1, 2, 3]).json()
    assert [item["error"]["code"] for item in message] == [INVALID_REQUEST] * 3


def test_batch_mixing_good_bad_and_notification_calls(
    rpc_url: str, test_methods: MethodSet
) -> None:
    before = len(test_methods.notes)
    batch = [
        call("add", [1, 2], 1),
        {"jsonrpc": "2.0", "method": "note", "params": {"value": "in-batch"}},  # notification
        call("add", {"a": "x", "b": 1}, 2),
        call("missing", None, 3),
        {"foo": "boo"},
        call("app_error", {"code": NOT_FOUND}, 4),
        call("echo", {"text": "ok"}, "five"),
    ]
    answer = post_json(rpc_url, batch)
    assert answer.status == 200
    by_id = {item["id"]: item for item in answer.json() if item["id"] is not None}
    assert len(answer.json()) == 6  # everything but the notification is answered
    assert by_id[1]["result"] == 3
    assert by_id[2]["error"]["code"] == INVALID_PARAMS
    assert by_id[3]["error"]["code"] == METHOD_NOT_FOUND
    assert by_id[4]["error"]["code"] == NOT_FOUND
    assert by_id["five"]["result"] == "ok"
    nulls = [item for item in answer.json() if item["id"] is None]
    assert [item["error"]["code"] for item in nulls] == [INVALID_REQUEST]
    assert test_methods.notes[before:] == ["in-batch"]


def test_notification_runs_but_gets_no_response(rpc_url: str, test_methods: MethodSet) -> None:
    answer = post_json(rpc_url, {"jsonrpc": "2.0", "method": "note", "params": ["single"]})
    assert answer.status == 204
    assert answer.body == b""
    assert test_methods.notes[-1] == "single"


def test_batch_of_only_notifications_returns_no_content(
    rpc_url: str, test_methods: MethodSet
) -> None:
    batch = [{"jsonrpc": "2.0", "method": "note", "params": [f"n{i}"]} for i in range(3)]
    batch.append({"jsonrpc": "2.0", "method": "missing"})  # errors of notifications are silent
    answer = post_json(rpc_url, batch)
    assert answer.status == 204
    assert answer.body == b""
    assert test_methods.notes[-3:] == ["n0", "n1", "n2"]


def test_batch_calls_start_in_the_order_sent(rpc_url: str, test_methods: MethodSet) -> None:
    before = len(test_methods.notes)
    values = [f"order-{i}" for i in range(30)]
    answer = post_json(rpc_url, [call("note", [value], i) for i, value in enumerate(values)])
    assert answer.status == 200
    assert test_methods.notes[before:] == values


def test_batch_over_the_limit_is_refused_whole(rpc_url: str, test_methods: MethodSet) -> None:
    before = len(test_methods.notes)
    batch = [call("note", [f"v{i}"], i) for i in range(101)]
    message = post_json(rpc_url, batch).json()
    assert message["error"]["code"] == LIMIT_EXCEEDED
    assert message["error"]["data"] == {"limit": 100, "got": 101}
    assert len(test_methods.notes) == before  # nothing of it ran


def test_batch_at_the_limit_is_answered_in_full(rpc_url: str) -> None:
    batch = [call("add", [i, i], i) for i in range(100)]
    message = post_json(rpc_url, batch).json()
    assert sorted(item["result"] for item in message) == [2 * i for i in range(100)]


@pytest.mark.parametrize(
    "code", [TX_REJECTED, NOT_FOUND, MEMPOOL_FULL, TIMEOUT, UNAVAILABLE, BAD_REQUEST]
)
def test_application_errors_keep_their_code_message_and_data(rpc_url: str, code: int) -> None:
    error = post_json(rpc_url, call("app_error", {"code": code})).json()["error"]
    assert error == {"code": code, "message": f"application error {code}",
                     "data": {"why": "asked"}}


def test_handler_bug_is_internal_error_without_details_and_is_logged(
    rpc_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cityledger.rpc"):
        answer = post_json(rpc_url, call("crash"))
    error = answer.json()["error"]
    assert answer.status == 200
    assert error == {"code": INTERNAL_ERROR, "message": "internal error"}
    assert "secret" not in answer.body.decode()
    logged = [record for record in caplog.records if record.name == "cityledger.rpc"]
    assert any(record.exc_info and "secret internal detail" in str(record.exc_info[1])
               for record in logged)


def test_result_that_is_not_json_is_internal_error(rpc_url: str) -> None:
    error = post_json(rpc_url, call("bad_result")).json()["error"]
    assert error["code"] == INTERNAL_ERROR


def test_server_keeps_serving_after_every_kind_of_error(rpc_url: str) -> None:
    post_raw(rpc_url, b"\x00garbage")
    post_json(rpc_url, call("crash"))
    post_json(rpc_url, [])
    assert post_json(rpc_url, call("add", [2, 3])).json()["result"] == 5


def test_responses_are_compact_json_with_ascii_only(rpc_url: str) -> None:
    answer = post_json(rpc_url, call("echo", {"text": "Seoul 서울"}))
    assert answer.json()["result"] == "Seoul 서울"
    assert answer.body == json.dumps(answer.json(), separators=(",", ":")).encode()
