"""Fixtures: one real RPC server per test module, serving the test method set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpc.server import create_rpc_app
from tests.rpc.support import MethodSet, ServerThread


@pytest.fixture(scope="module")
def test_methods() -> MethodSet:
    return MethodSet()


@pytest.fixture(scope="module")
def rpc_server(test_methods: MethodSet) -> Iterator[ServerThread]:
    server = ServerThread(create_rpc_app(test_methods.methods())).start()
    yield server
    server.stop()


@pytest.fixture
def rpc_url(rpc_server: ServerThread) -> str:
    return rpc_server.url
